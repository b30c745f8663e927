"""``python -m paxoskv.bench_writer``: the node's storage writer while its event loop is busy.

A node's SQLite writer thread shares the GIL with the event loop. Every time the writer
gives the GIL up (the ``sqlite3`` module does so around each step of a statement) it has
to win it back, and on a busy node that is a wait for the loop to block and a thread
wake-up. This measures that cost apart from a cluster, whose run-to-run spread hides it:
one process, a real ``SqliteStorage`` (fsync on) with ``--keys`` keys stored, driven from
the event loop a node runs (``--event-loop``) by ``--writers`` loops that each save
``--batch`` keys at once and wait for them, while a chain of other callbacks keeps the
loop busy: a callback of ``--work-us`` of CPU after another, and every ``--gap-every``
callbacks a pause of ``--gap-us`` (the loop then waits in epoll, as a node does between
bursts). ``--work-us 0`` leaves the loop idle. Reports per committed batch the writer
thread's CPU, the loop's, and the wall time (``/proc``, Linux). Numbers move with the
machine's load: compare versions within one run, back to back.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from paxoskv.bench import thread_cpu_s
from paxoskv.cli import loop_factory
from paxoskv.core.acceptor import AcceptorState
from paxoskv.core.ballot import Ballot
from paxoskv.core.register import Value
from paxoskv.storage.sqlite import SqliteStorage

__all__ = ["Result", "main", "measure"]

@dataclass(frozen=True)
class Result:
    batches: int
    saves: int
    """Writes the committed batches held (the writer's own count)."""
    writer_cpu_us: float
    """The storage writer thread's CPU per committed batch."""
    loop_cpu_us: float
    """The event loop thread's CPU per committed batch (its busy work included)."""
    wall_us: float
    work_callbacks: int


def _state(n: int, value_bytes: int) -> AcceptorState:
    ballot = Ballot(n, 1, 1)
    return AcceptorState(ballot, ballot, Value(n, b"v" * value_bytes))


def _spin(us: float) -> None:
    end = time.perf_counter() + us / 1e6
    while time.perf_counter() < end:
        pass


async def measure(directory: Path, *, keys: int, batch: int, writers: int, batches: int,
                  value_bytes: int, work_us: float, gap_every: int, gap_us: float) -> Result:
    commits = [0, 0]  # batches, writes

    def count(size: int, _seconds: float) -> None:  # the writer thread's, per commit
        commits[0] += 1
        commits[1] += size

    storage = SqliteStorage(directory, observer=count)
    try:
        for start in range(0, keys, 500):
            await asyncio.gather(*(storage.save(f"k{i}", _state(1, value_bytes))
                                   for i in range(start, min(keys, start + 500))))
        loop = asyncio.get_running_loop()
        busy = {"callbacks": 0, "stop": False}

        def work() -> None:
            if busy["stop"]:
                return
            _spin(work_us)
            busy["callbacks"] += 1
            if gap_every and busy["callbacks"] % gap_every == 0:
                loop.call_later(gap_us / 1e6, work)
            else:
                loop.call_soon(work)

        if work_us > 0:
            loop.call_soon(work)
            await asyncio.sleep(0.05)
        # Its own writer, not the first thread of that name (other storages may live); by
        # the attribute, so that the script also measures releases before this one.
        writer_id = storage._thread.native_id
        assert writer_id is not None
        loop_id = threading.get_native_id()

        async def client(first: int) -> None:
            for n in range(first, batches, writers):
                await asyncio.gather(*(storage.save(f"k{(n * batch + i) % keys}",
                                                    _state(n + 2, value_bytes))
                                       for i in range(batch)))

        (ended0, saved0), callbacks0 = commits, busy["callbacks"]
        w0, l0, t0 = thread_cpu_s(writer_id), thread_cpu_s(loop_id), time.perf_counter()
        await asyncio.gather(*(client(k) for k in range(writers)))
        w1, l1, t1 = thread_cpu_s(writer_id), thread_cpu_s(loop_id), time.perf_counter()
        busy["stop"] = True
        ended = commits[0] - ended0
        return Result(ended, commits[1] - saved0, (w1 - w0) * 1e6 / ended,
                      (l1 - l0) * 1e6 / ended, (t1 - t0) * 1e6 / ended,
                      busy["callbacks"] - callbacks0)
    finally:
        await storage.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m paxoskv.bench_writer",
                                 description=__doc__.split("\n\n")[0].strip("`"))
    ap.add_argument("--keys", type=int, default=10_000, help="keys stored before (default "
                    "10000)")
    ap.add_argument("--batch", type=int, default=4, help="saves each writer loop makes at "
                    "once (default 4)")
    ap.add_argument("--writers", type=int, default=4, help="writer loops (default 4)")
    ap.add_argument("--batches", type=int, default=2000, help="rounds of saves in all "
                    "(default 2000)")
    ap.add_argument("--value-bytes", type=int, default=100)
    ap.add_argument("--work-us", type=float, default=10.0, help="CPU of each busy callback; "
                    "0: an idle loop (default 10)")
    ap.add_argument("--gap-every", type=int, default=50, help="busy callbacks between "
                    "pauses (default 50)")
    ap.add_argument("--gap-us", type=float, default=300.0, help="each pause (default 300)")
    ap.add_argument("--event-loop", choices=("uvloop", "asyncio"), default="uvloop")
    ap.add_argument("--dir", default=None, help="parent of the data directory (default: "
                    "the system's temporary directory)")
    args = ap.parse_args(argv)
    for name in ("keys", "batch", "writers", "batches"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.work_us < 0 or args.gap_us < 0 or args.gap_every < 0 or args.value_bytes < 0:
        ap.error("--work-us, --gap-us, --gap-every and --value-bytes must not be negative")
    if not os.path.exists("/proc/self/task"):
        ap.error("needs Linux's /proc for per-thread CPU")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        print(f"bench-writer: {args.keys} keys, {args.writers} x {args.batch} saves at once, "
              f"{args.batches} rounds, loop {args.event_loop}, busy {args.work_us:g} us "
              f"callbacks, a {args.gap_us:g} us pause every {args.gap_every}", flush=True)
        with asyncio.Runner(loop_factory=loop_factory(args.event_loop)) as runner:
            r = runner.run(measure(Path(tmp), keys=args.keys, batch=args.batch,
                                   writers=args.writers, batches=args.batches,
                                   value_bytes=args.value_bytes, work_us=args.work_us,
                                   gap_every=args.gap_every, gap_us=args.gap_us))
    print(f"{r.saves} saves in {r.batches} batches ({r.saves / r.batches:.1f} a batch): "
          f"writer CPU {r.writer_cpu_us:.0f} us, loop CPU {r.loop_cpu_us:.0f} us, wall "
          f"{r.wall_us:.0f} us per batch; {r.work_callbacks} busy callbacks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
