"""Data directories pre-loaded without the HTTP API, and what a node costs, for benchmarks.

Why: writing 10^6 keys through the cluster takes far longer than the measurement it sets
up. ``build_accepted`` writes the rows through ``SqliteStorage`` itself, in large batches,
as an acceptor holds each key after one accepted write (promised = accepted = ballot 1 of
node 1 at incarnation 0, version 1; incarnation 0 is no real process's, whose first is 1,
so no proposer can reuse that ballot for another value). ``build_replicas`` copies that
directory for every other node, so all of them hold the same accepted state. No identity
meta is written: each node creates its own at its first start, as in production.

Shared by ``bench_memory`` and ``bench_scale``.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from paxoskv.core.acceptor import AcceptorState
from paxoskv.core.ballot import Ballot
from paxoskv.core.register import Value
from paxoskv.storage.sqlite import SqliteStorage

__all__ = ["build_accepted", "build_replicas", "dir_bytes", "proc_status"]

CHUNK_KEYS = 20_000
"""Keys per group of concurrent saves while building: one or a few commits each."""

CHUNK_BYTES = 64 * 1024 * 1024
"""Value bytes per group at most, so 100 KB values do not hold gigabytes in memory."""


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in bytes (0 once it has exited)."""
    out: dict[str, int] = {"VmRSS": 0, "VmHWM": 0}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(rest.split()[0]) * 1024
    return out


def dir_bytes(path: Path) -> int:
    """Bytes of the files directly in ``path`` (a node's data directory is flat)."""
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


async def build_accepted(path: Path, keys: int, value_bytes: int, key: Callable[[int], str],
                         log: Callable[[str], None] = print,
                         deadline_s: float | None = None) -> None:
    """``keys`` keys named ``key(i)`` with random values of ``value_bytes`` in ``path``,
    each as accepted at ballot 1 of node 1 (see the module docstring)."""
    ballot = Ballot(1, 1, 0)
    rng = random.Random(7)
    chunk = max(1, min(CHUNK_KEYS, CHUNK_BYTES // max(1, value_bytes)))
    storage = SqliteStorage(path, batch_max=chunk, cache_bytes=0)
    started = time.monotonic()
    next_report = 100_000
    try:
        for first in range(0, keys, chunk):
            if deadline_s is not None and time.monotonic() - started > deadline_s:
                raise TimeoutError(f"building {keys:,} keys took over {deadline_s:.0f} s")
            await asyncio.gather(*(
                storage.save(key(i), AcceptorState(ballot, ballot,
                                                   Value(1, rng.randbytes(value_bytes))))
                for i in range(first, min(keys, first + chunk))))
            done = min(keys, first + chunk)
            if done >= next_report or done == keys:
                next_report = done + 100_000
                rate = done / max(1e-9, time.monotonic() - started)
                log(f"built {done:,}/{keys:,} keys ({rate:,.0f} keys/s)")
        assert storage.key_count() == keys
    finally:
        await storage.close()


def build_replicas(dirs: Sequence[Path], keys: int, value_bytes: int,
                   key: Callable[[int], str], log: Callable[[str], None] = print,
                   deadline_s: float | None = None) -> None:
    """``dirs[0]`` built by ``build_accepted``, the others file copies of it."""
    asyncio.run(build_accepted(dirs[0], keys, value_bytes, key, log, deadline_s))
    for d in dirs[1:]:
        shutil.copytree(dirs[0], d)
