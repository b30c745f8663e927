"""Debug only: where a running node's memory is, written to a file on a signal.

Off unless ``PAXOSKV_DEBUG_MEMORY`` names a directory when the node starts (nothing is
installed otherwise, and nothing of this runs on a request's path). Then:

* ``SIGUSR2`` writes ``memory-<pid>-<n>.txt`` there: resident memory by kind of mapping
  (``/proc/self/smaps``: the main heap, anonymous mappings, which include the other
  threads' glibc arenas and CPython's 1 MiB arenas, files), glibc's per-arena figures
  (``malloc_stats``), CPython's small-object allocator (``sys._debugmallocstats``: arenas,
  pools, blocks), jemalloc's totals when it is preloaded as the process's malloc (live
  bytes against the pages holding them), the cyclic collector's counts, the most numerous
  tracked objects by type, and, when ``tracemalloc`` is tracing (``PYTHONTRACEMALLOC=1``),
  the largest allocation sites; with ``PAXOSKV_DEBUG_MEMORY_SNAPSHOT=1`` also the
  tracemalloc snapshot itself (``.snapshot``, for diffing two of them); with
  ``PAXOSKV_DEBUG_MEMORY_COLLECT=1``, then runs ``gc.collect()`` and appends what the
  allocator holds after it; with ``PAXOSKV_DEBUG_MEMORY_CENSUS=1``, which small objects
  sit in the 1 MiB address windows that the first report had none in (``census``).

``python -m paxoskv.memdebug A.snapshot B.snapshot`` prints what grew from A to B.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import ctypes.util
import gc
import os
import signal
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["ENV", "dump", "install", "jemalloc_stats", "smaps_summary"]

ENV = "PAXOSKV_DEBUG_MEMORY"
SNAPSHOT_ENV = "PAXOSKV_DEBUG_MEMORY_SNAPSHOT"
COLLECT_ENV = "PAXOSKV_DEBUG_MEMORY_COLLECT"


def smaps_summary(text: str) -> dict[str, int]:
    """Resident bytes (``Rss``) of ``/proc/<pid>/smaps`` text by kind of mapping:
    ``[heap]``, ``anon`` (anonymous, e.g. thread arenas, CPython arenas, stacks),
    ``file:<basename>`` for mapped files, other bracketed names as they are."""
    out: collections.Counter[str] = collections.Counter()
    kind = "?"
    for line in text.splitlines():
        head = line.split(None, 1)[0] if line else ""
        if "-" in head and not head.endswith(":"):
            parts = line.split()
            name = parts[5] if len(parts) > 5 else ""
            if not name:
                kind = "anon"
            elif name.startswith("["):
                kind = name
            else:
                kind = "file:" + os.path.basename(name)
        elif head == "Rss:":
            out[kind] += int(line.split()[1]) * 1024
    return dict(out)


@contextlib.contextmanager
def _stderr_to(path: Path) -> Iterator[None]:
    """File descriptor 2 into ``path`` (C functions that print there)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as f:
        os.dup2(f.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _malloc_stats() -> Callable[[], None] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.malloc_stats
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [], None
    return fn


def jemalloc_stats() -> dict[str, int] | None:
    """jemalloc's own totals when it is the process's malloc (``LD_PRELOAD``), else None:
    ``allocated`` (live bytes asked for) against ``resident`` tells live memory from pages
    that free space keeps mapped."""
    try:
        mallctl = ctypes.CDLL(None).mallctl
    except AttributeError:
        return None
    mallctl.restype = ctypes.c_int
    epoch = ctypes.c_uint64(1)
    mallctl(b"epoch", None, None, ctypes.byref(epoch), ctypes.c_size_t(8))
    out: dict[str, int] = {}
    for name in ("allocated", "active", "metadata", "resident", "mapped", "retained"):
        value, size = ctypes.c_size_t(0), ctypes.c_size_t(ctypes.sizeof(ctypes.c_size_t))
        if mallctl(f"stats.{name}".encode(), ctypes.byref(value), ctypes.byref(size),
                   None, ctypes.c_size_t(0)) == 0:
            out[name] = value.value
    return out


def dump(directory: Path, label: str = "") -> Path:
    """Write one report (see the module's docstring) and return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    n = 0
    while (path := directory / f"memory-{os.getpid()}-{n}.txt").exists():
        n += 1
    lines = [f"pid {os.getpid()} at {time.time():.3f} {label}".rstrip()]
    status = Path("/proc/self/status").read_text()
    lines += [line for line in status.splitlines() if line.startswith(("Vm", "Rss"))]
    smaps = smaps_summary(Path("/proc/self/smaps").read_text())
    lines.append("resident by mapping (bytes):")
    lines += [f"  {k:<40} {v:>12,}" for k, v in sorted(smaps.items(), key=lambda kv: -kv[1])
              if v >= 64 << 10]
    lines.append(f"sys.getallocatedblocks() {sys.getallocatedblocks():,}")
    je = jemalloc_stats()
    if je is not None:
        lines.append("jemalloc (bytes): " + ", ".join(f"{k} {v:,}" for k, v in je.items()))
    lines.append(f"gc.get_count() {gc.get_count()} gc.get_freeze_count() "
                 f"{gc.get_freeze_count():,} gc.get_threshold() {gc.get_threshold()}")
    lines.append(f"gc.get_stats() {gc.get_stats()}")
    types = collections.Counter(type(o).__name__ for o in gc.get_objects())
    lines.append("tracked objects by type (not frozen ones' children):")
    lines += [f"  {name:<40} {count:>10,}" for name, count in types.most_common(30)]
    if tracemalloc.is_tracing():
        snap = tracemalloc.take_snapshot()
        lines.append(f"tracemalloc traced {tracemalloc.get_traced_memory()}")
        lines += [f"  {stat}" for stat in snap.statistics("lineno")[:40]]
        if os.environ.get(SNAPSHOT_ENV):
            snap.dump(str(path.with_suffix(".snapshot")))
    path.write_text("\n".join(lines) + "\n")
    with open(path, "a") as f:
        f.write("\n--- malloc_stats (glibc, per arena) ---\n")
    stats = _malloc_stats()
    with _stderr_to(path):
        if stats is not None:
            stats()
    with open(path, "a") as f:
        f.write("\n--- sys._debugmallocstats ---\n")
    with _stderr_to(path):
        sys._debugmallocstats()
    if os.environ.get(CENSUS_ENV):
        with open(path, "a") as f:
            f.write("\n--- census of small objects by address ---\n"
                    + "\n".join(census_lines()) + "\n")
    if os.environ.get(COLLECT_ENV):
        # What a full collection would give back on top (it changes the process, so it
        # comes after everything above was written).
        found = gc.collect()
        with open(path, "a") as f:
            f.write(f"\n--- after gc.collect() (found {found:,} unreachable) ---\n"
                    f"{_rss_line()}\nsys.getallocatedblocks() "
                    f"{sys.getallocatedblocks():,}\n")
        with _stderr_to(path):
            sys._debugmallocstats()
    return path


CENSUS_ENV = "PAXOSKV_DEBUG_MEMORY_CENSUS"
_first_windows: set[int] | None = None


def census() -> dict[int, collections.Counter[str]]:
    """Small objects (up to 512 bytes: those CPython's own allocator serves) that the
    cyclic collector tracks, and the objects they refer to directly ("str in dict"),
    counted by type per 1 MiB window of their address: which objects keep the allocator's
    arenas (1 MiB each, page-aligned only, so one window may overlap two) in use. Objects
    that nothing tracked refers to are not seen."""
    objects = gc.get_objects()
    seen: set[int] = {id(objects)}
    out: dict[int, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for obj in objects:
        if obj is _first_windows:
            continue  # the census's own (``seen`` and ``out`` are made after the list)
        owner = type(obj).__name__
        for x in (obj, *gc.get_referents(obj)):
            address = id(x)
            if address in seen:
                continue
            seen.add(address)
            if _object_bytes(x) <= 512:
                name = type(x).__name__
                out[address >> 20][name if x is obj else f"{name} in {owner}"] += 1
    return out


def _object_bytes(x: object) -> int:
    """The bytes of the object itself, without what a container allocates apart (a dict's
    table, a list's items), which ``sys.getsizeof`` adds: a large dict's head sits in an
    arena all the same."""
    kind = type(x)
    size = kind.__basicsize__
    if kind.__itemsize__:
        try:
            size += kind.__itemsize__ * len(x)  # type: ignore[arg-type]
        except TypeError:
            return sys.getsizeof(x)
    return size


def census_lines() -> list[str]:
    """The census of the windows that the process's first call did not find objects in
    (its first report is the node's empty state): what holds the arenas made since."""
    global _first_windows
    found = census()
    if _first_windows is None:
        _first_windows = set(found)
        return [f"census: {len(found)} windows with small objects (the baseline)"]
    new = {w: c for w, c in found.items() if w not in _first_windows}
    total: collections.Counter[str] = collections.Counter()
    for counts in new.values():
        total.update(counts)
    lines = [f"census: {len(found)} windows with small objects, {len(new)} not in the "
             f"first report, with {sum(total.values()):,} objects:"]
    lines += [f"  {name:<48} {count:>8,}" for name, count in total.most_common(40)]
    lines.append("per window:")
    lines += [f"  {w:#x}: {sum(c.values()):,} (" + ", ".join(
        f"{n} {k}" for k, n in c.most_common(5)) + ")" for w, c in sorted(new.items())]
    return lines


def _rss_line() -> str:
    status = Path("/proc/self/status").read_text()
    return " ".join(line for line in status.splitlines() if line.startswith("VmRSS"))


def install(loop_add_signal_handler: Callable[..., None]) -> Path | None:
    """With ``PAXOSKV_DEBUG_MEMORY`` set: dump on SIGUSR2 (through the event loop's
    ``add_signal_handler``). Returns the directory, or None when not set."""
    where = os.environ.get(ENV)
    if not where:
        return None
    directory = Path(where)
    loop_add_signal_handler(signal.SIGUSR2, lambda: dump(directory, "SIGUSR2"))
    return directory


def _diff(a: str, b: str, top: int = 40) -> None:
    old = tracemalloc.Snapshot.load(a)
    new = tracemalloc.Snapshot.load(b)
    for stat in new.compare_to(old, "traceback")[:top]:
        print(stat)
        for line in stat.traceback.format()[-8:]:
            print("   ", line)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print("usage: python -m paxoskv.memdebug OLD.snapshot NEW.snapshot", file=sys.stderr)
        sys.exit(2)
    _diff(sys.argv[1], sys.argv[2])
