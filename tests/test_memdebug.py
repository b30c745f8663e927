"""paxoskv/memdebug.py: the debug-only memory report (off unless PAXOSKV_DEBUG_MEMORY)."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from paxoskv.memdebug import ENV, dump, install, smaps_summary

SMAPS = """\
55d0c0000000-55d0c1000000 rw-p 00000000 00:00 0                          [heap]
Size:              16384 kB
Rss:                1200 kB
7f0000000000-7f0000100000 rw-p 00000000 00:00 0
Size:               1024 kB
Rss:                1024 kB
7f0000100000-7f0000200000 rw-p 00000000 00:00 0
Rss:                 512 kB
7f1000000000-7f1000010000 r-xp 00000000 08:01 1234                       /usr/lib/libc.so.6
Rss:                  64 kB
"""


def test_smaps_summary_sorts_resident_bytes_by_kind_of_mapping() -> None:
    assert smaps_summary(SMAPS) == {"[heap]": 1200 * 1024, "anon": 1536 * 1024,
                                    "file:libc.so.6": 64 * 1024}


def test_dump_writes_a_report(tmp_path: Path) -> None:
    path = dump(tmp_path / "d", "test")
    text = path.read_text()
    for part in ("VmRSS", "resident by mapping", "sys.getallocatedblocks()", "gc.get_count()",
                 "--- sys._debugmallocstats ---", "arenas allocated current"):
        assert part in text
    assert dump(tmp_path / "d").name != path.name  # never overwrites


def test_install_does_nothing_without_the_variable(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    added: list[Any] = []
    monkeypatch.delenv(ENV, raising=False)
    assert install(lambda *a: added.append(a)) is None and not added
    monkeypatch.setenv(ENV, str(tmp_path))
    assert install(lambda *a: added.append(a)) == tmp_path
    assert added[0][0] == signal.SIGUSR2


JEMALLOC = Path("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")


def test_jemalloc_totals_only_where_jemalloc_is_the_malloc(tmp_path: Path) -> None:
    """Goal: the report's jemalloc line (live bytes against resident ones) is there when a
    node runs with jemalloc preloaded, and absent under glibc, where ``mallctl`` is no
    symbol of the process."""
    import subprocess
    import sys

    from paxoskv.memdebug import jemalloc_stats
    assert jemalloc_stats() is None or "jemalloc" in Path("/proc/self/maps").read_text()
    if not JEMALLOC.exists():
        pytest.skip("Debian's libjemalloc2 is not installed here")
    code = ("from paxoskv.memdebug import jemalloc_stats; s = jemalloc_stats(); "
            "assert s is not None and 0 < s['allocated'] <= s['active'] <= s['resident'], s")
    env = {"LD_PRELOAD": str(JEMALLOC), "PYTHONMALLOC": "malloc", "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)


def test_census_names_the_objects_in_arenas_made_since_the_first_report(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Goal: the census (PAXOSKV_DEBUG_MEMORY_CENSUS) reports objects that sit in address
    windows the first report had none in, named with what holds them: how docs/gc.md found
    which objects keep the arenas of a load."""
    from paxoskv import memdebug

    monkeypatch.setattr(memdebug, "_first_windows", None)
    assert memdebug.census_lines()[0].endswith("(the baseline)")
    kept = [(i, str(i)) for i in range(300_000)]  # several MB of new small objects
    lines = memdebug.census_lines()
    assert "not in the first report" in lines[0]
    counts = {line.split()[0] + " " + " ".join(line.split()[1:-1]): line.split()[-1]
              for line in lines[1:] if line.startswith("  ") and not line.startswith("  0x")}
    assert int(counts["tuple in list"].replace(",", "")) > 100_000, lines[:10]
    assert kept
