"""``python -m paxoskv.bench_gc``: does a node shrink back after many keys are deleted?

The claim checked: N keys written and then deleted, once the tombstone grace is over and
the collector has removed every row, leave each node's data directory and resident memory
within a tolerance (10 %) of what the same node held empty.

1. Starts 3 real ``paxoskv serve`` processes on 127.0.0.1 over fresh data directories
   (fsync on, ``--tombstone-grace`` short) and records each node's RSS (VmRSS) and
   data-directory bytes (the database with its -wal and -shm files) once ready: "empty".
   Then, unless ``--warmup 0``, writes, deletes and waits for the collection of a few keys
   (100) and samples again: "warm", a second baseline with imports done and first-use
   caches filled. The claim is judged against "empty"; "warm" only says how much of the
   difference is a node having served at all.
2. Writes ``--keys`` keys of ``--value-bytes`` through the HTTP API from ``--clients``
   workers spread over the nodes, then deletes each of them (one DELETE per key, no token:
   the nodes run without auth). RSS and bytes again: "full".
3. Waits (bounded by ``--wait-seconds``) until no node's database holds a row (but the
   acceptor-set record's, which is never collected), then until the directories stop
   shrinking (the storage returns free pages between batches; bounded by
   ``--settle-seconds``), and at least until the nodes' memory of forwarded writes (a
   minute) has run out since the last request. RSS and bytes again: "after".

Prints a table per node (empty / full / after, after/empty; warm, after/warm) and writes
``reports/bench-gc.json``. Everything is real and every process is stopped by PID; the
temporary directories are removed unless ``--keep``. The machine may be shared, so the
load average goes into the output. With ``PAXOSKV_DEBUG_MEMORY=<dir>`` in the environment
(the nodes inherit it), every node also writes a memory report there after each sample
(``paxoskv/memdebug.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
import orjson

from paxoskv.bench import start_cluster, stop_cluster
from paxoskv.bench_compare import _loadavg, _sigterm_as_exit, nan_to_none
from paxoskv.bench_preload import dir_bytes, proc_status
from paxoskv.core.reconfig import CONFIG_KEY
from paxoskv.memdebug import ENV as MEMORY_DUMP_ENV
from paxoskv.node import FORWARD_MEMORY_S

__all__ = ["NodeFigures", "Sample", "format_table", "main", "parse_args", "to_json"]

NODES = 3
TOLERANCE = 0.10
"""The claim's bound: after/empty at most 1 + this, for bytes and for RSS."""
ATTEMPTS = 5
"""Tries per request before a key counts as failed (503 while the nodes are busy)."""
STATUS_TIMEOUT_S = 5.0


@dataclass
class Sample:
    """One node at one moment."""

    rss: int
    dir_bytes: int
    files: dict[str, int] = field(default_factory=dict)
    """Bytes of each file of the data directory (database, -wal, -shm)."""


@dataclass
class NodeFigures:
    node: int
    empty: Sample
    full: Sample
    after: Sample | None = None
    """None when the run stopped before collection ended (the table says so)."""
    tables_after: dict[str, int] = field(default_factory=dict)
    """What the database holds after collection, read once the node has stopped: bytes
    of each table and index (``dbstat``), rows of ``registers`` and ``gc_floors``, free
    pages. Says which part of "after" is by design (the floors) and which is not."""
    warm: Sample | None = None
    """The same node after a small warm-up (``--warmup`` keys written, deleted and
    collected before the run): imports done, first-use caches filled. A second baseline
    beside "empty", never instead of it."""

    def ratio(self, what: str) -> float:
        """after / empty of ``what`` ("rss" or "dir_bytes"); NaN when not measured."""
        if self.after is None:
            return math.nan
        base = getattr(self.empty, what)
        return getattr(self.after, what) / base if base else math.nan

    def ratio_warm(self, what: str) -> float:
        """after / warm of ``what``; NaN when either was not measured."""
        if self.after is None or self.warm is None:
            return math.nan
        base = getattr(self.warm, what)
        return getattr(self.after, what) / base if base else math.nan

    def within(self, tolerance: float = TOLERANCE) -> bool:
        return all(self.ratio(w) <= 1 + tolerance for w in ("rss", "dir_bytes"))


@dataclass
class Phase:
    """Counts of one load phase (writes or deletes)."""

    name: str
    ok: int = 0
    failed: int = 0
    seconds: float = 0.0
    retries: int = 0


@dataclass
class Collection:
    """How the wait for collection went."""

    seconds_to_no_rows: float = math.nan
    seconds_to_settled: float = math.nan
    collected_rows: list[int] = field(default_factory=list)
    """paxoskv_tombstones_collected_total per node at the end."""
    rows_left: list[int] = field(default_factory=list)
    complete: bool = False


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m paxoskv.bench_gc",
                                 description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--keys", type=int, default=100_000, help="keys written, then deleted")
    ap.add_argument("--value-bytes", type=int, default=100)
    ap.add_argument("--clients", type=int, default=32, help="concurrent HTTP requests")
    ap.add_argument("--grace", type=float, default=10.0,
                    help="each node's --tombstone-grace, seconds")
    ap.add_argument("--wait-seconds", type=float, default=1800.0,
                    help="longest wait for every row to be collected")
    ap.add_argument("--settle-seconds", type=float, default=120.0,
                    help="longest wait, after that, for the directories to stop shrinking")
    ap.add_argument("--warmup", type=int, default=100,
                    help="keys written, deleted and collected before the run, for a second "
                    "baseline (\"warm\") beside the cold empty one; 0: none")
    ap.add_argument("--node-arg", action="append", default=[], metavar="ARG",
                    help="extra argument for every node (repeatable), e.g. "
                    "--node-arg=--cache-bytes=8000000")
    ap.add_argument("--json", default="reports/bench-gc.json", help="JSON output path")
    ap.add_argument("--dir", default=None, help="parent directory (default: temporary)")
    ap.add_argument("--keep", action="store_true", help="keep the data directories")
    args = ap.parse_args(argv)
    if args.keys < 1:
        ap.error("--keys must be positive")
    if args.value_bytes < 1:
        ap.error("--value-bytes must be positive")
    if not 1 <= args.clients <= 1024:
        ap.error("--clients must be between 1 and 1024")
    if not 0 < args.grace <= 3600:
        ap.error("--grace must be above 0 and at most 3600 seconds (0 keeps tombstones)")
    if args.warmup < 0:
        ap.error("--warmup must not be negative")
    if args.wait_seconds <= 0 or args.settle_seconds <= 0:
        ap.error("--wait-seconds and --settle-seconds must be positive")
    return args


def _mb(n: float) -> str:
    return "-" if math.isnan(n) else f"{n / 1e6:.2f}"


def _ratio(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.2f}"


def format_table(figures: Sequence[NodeFigures], tolerance: float = TOLERANCE) -> str:
    """One line per node and measure: MB empty, full, after, and after/empty (the claim's
    verdict); then, when a warm-up ran, MB warm and after/warm (a second baseline)."""
    warm = any(f.warm is not None for f in figures)
    lines = [f"{'node':>4} | {'measure':<13} | {'empty MB':>9} | {'full MB':>9} | "
             f"{'after MB':>9} | {'after/empty':>11} | within {tolerance:.0%}"
             + (f" | {'warm MB':>9} | {'after/warm':>10}" if warm else "")]
    for f in figures:
        for what, label in (("dir_bytes", "data dir"), ("rss", "RSS")):
            after = math.nan if f.after is None else float(getattr(f.after, what))
            ratio = f.ratio(what)
            verdict = "-" if math.isnan(ratio) else ("yes" if ratio <= 1 + tolerance
                                                     else "NO")
            line = (f"{f.node:>4} | {label:<13} | {_mb(getattr(f.empty, what)):>9} | "
                    f"{_mb(getattr(f.full, what)):>9} | {_mb(after):>9} | "
                    f"{_ratio(ratio):>11} | {verdict:<10}")
            if warm:
                w = math.nan if f.warm is None else float(getattr(f.warm, what))
                line += f" | {_mb(w):>9} | {_ratio(f.ratio_warm(what)):>10}"
            lines.append(line.rstrip())
    return "\n".join(lines)


def to_json(figures: Sequence[NodeFigures], phases: Sequence[Phase], collection: Collection,
            meta: dict[str, Any], tolerance: float = TOLERANCE) -> str:
    nodes = []
    for f in figures:
        row: dict[str, Any] = asdict(f)
        row["ratio_rss"] = f.ratio("rss")
        row["ratio_dir_bytes"] = f.ratio("dir_bytes")
        row["ratio_rss_to_warm"] = f.ratio_warm("rss")
        row["ratio_dir_bytes_to_warm"] = f.ratio_warm("dir_bytes")
        row["within"] = None if f.after is None else f.within(tolerance)
        nodes.append(row)
    return json.dumps(nan_to_none({
        "meta": {**meta, "tolerance": tolerance},
        "nodes": nodes,
        "phases": [asdict(p) for p in phases],
        "collection": asdict(collection),
    }), indent=2) + "\n"


def metric_value(text: str, name: str) -> float | None:
    """The value of an unlabelled sample ``name`` in Prometheus text, or None."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            try:
                return float(line.split()[1])
            except (IndexError, ValueError):
                return None
    return None


def _log(line: str) -> None:
    print(f"bench_gc: {line}", flush=True)


def _key(i: int) -> str:
    return f"gcbench/{i:08d}"


def _files(path: Path) -> dict[str, int]:
    return {f.name: f.stat().st_size for f in sorted(path.iterdir()) if f.is_file()}


def _sample(procs: Sequence[subprocess.Popen[bytes]], dirs: Sequence[Path]) -> list[Sample]:
    samples = [Sample(proc_status(p.pid)["VmRSS"], dir_bytes(d), _files(d))
               for p, d in zip(procs, dirs, strict=True)]
    if os.environ.get(MEMORY_DUMP_ENV):
        # Debug (paxoskv/memdebug.py): each node writes where its memory is, after the
        # figures were taken.
        for p in procs:
            p.send_signal(signal.SIGUSR2)
    return samples


def db_tables(path: Path) -> dict[str, int]:
    """Bytes per table and index of a stopped node's database, its row counts and free
    pages (empty when it cannot be read, e.g. SQLite built without ``dbstat``)."""
    out: dict[str, int] = {}
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            for name, size in conn.execute(
                    "SELECT name, SUM(pgsize) FROM dbstat GROUP BY name ORDER BY name"):
                out[f"bytes:{name}"] = int(size)
            for table in ("registers", "gc_floors"):
                out[f"rows:{table}"] = int(
                    conn.execute(f"SELECT COUNT(*) FROM {table}").fetchall()[0][0])
            page = int(conn.execute("PRAGMA page_size").fetchall()[0][0])
            out["bytes:free pages"] = page * int(
                conn.execute("PRAGMA freelist_count").fetchall()[0][0])
        finally:
            conn.close()
    except sqlite3.Error:
        return {}
    return out


def format_breakdown(figures: Sequence[NodeFigures]) -> str:
    """Per node: the files at "after" and what the database holds (``tables_after``)."""
    lines = []
    for f in figures:
        if f.after is None:
            continue
        files = ", ".join(f"{name} {size / 1e3:,.0f} kB" for name, size in f.after.files.items())
        lines.append(f"node {f.node} after: {files}")
        t = f.tables_after
        if t:
            floors = t.get("bytes:gc_floors", 0)
            lines.append(f"  gc_floors {t.get('rows:gc_floors', 0):,} rows, "
                         f"{floors / 1e3:,.0f} kB; registers {t.get('rows:registers', 0):,} "
                         f"rows, {t.get('bytes:registers', 0) / 1e3:,.0f} kB; free pages "
                         f"{t.get('bytes:free pages', 0) / 1e3:,.0f} kB; data dir without "
                         f"the floors: {(f.after.dir_bytes - floors) / 1e6:.2f} MB "
                         f"({(f.after.dir_bytes - floors) / max(1, f.empty.dir_bytes):.2f}"
                         " x empty)")
    return "\n".join(lines)


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=STATUS_TIMEOUT_S) as r:
        data: bytes = r.read()
        return data


async def _load(name: str, urls: Sequence[str], keys: int, clients: int, value_bytes: int,
                procs: Sequence[subprocess.Popen[bytes]], first: int = 0) -> Phase:
    """PUT (or DELETE, by ``name``) every key once, ``clients`` at a time: ``keys`` of
    them from index ``first``."""
    phase = Phase(name)
    value = b"g" * value_bytes
    ok_status = (200, 201, 204) if name == "write" else (200, 204, 404)
    next_index = 0
    started = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=clients * 2)
    done = asyncio.Event()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        async def worker(w: int) -> None:
            nonlocal next_index
            while next_index < keys:
                i = next_index
                next_index += 1
                url = f"{urls[(w + i) % len(urls)]}/v1/kv/{_key(first + i)}"
                for attempt in range(ATTEMPTS):
                    try:
                        if name == "write":
                            resp = await session.put(url, data=value)
                        else:
                            resp = await session.delete(url)
                        await resp.read()
                        if resp.status in ok_status:
                            phase.ok += 1
                            break
                    except (TimeoutError, aiohttp.ClientError):
                        pass
                    phase.retries += 1
                    await asyncio.sleep(0.2 * (attempt + 1))
                else:
                    phase.failed += 1

        async def progress() -> None:
            while not done.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), 10.0)
                dead = [i + 1 for i, p in enumerate(procs) if p.poll() is not None]
                if dead:
                    raise SystemExit(f"bench_gc: node(s) {dead} exited during the {name}s")
                elapsed = time.monotonic() - started
                _log(f"{name}: {phase.ok:,}/{keys:,} ok, {phase.failed:,} failed, "
                     f"{phase.retries:,} retries, {elapsed:.0f}s "
                     f"({phase.ok / max(elapsed, 1e-9):,.0f}/s)")

        async def workers() -> None:
            try:
                await asyncio.gather(*(worker(w) for w in range(clients)))
            finally:
                done.set()

        await asyncio.gather(progress(), workers())
    phase.seconds = time.monotonic() - started
    return phase


def key_rows(path: Path) -> int:
    """Rows of a (running) node's database other than the acceptor-set record's
    (``CONFIG_KEY``), which is never collected: a collection sweep may read the record
    through a round, which leaves its row (seen once in a 10,000-key run, where the run
    then waited for a row that cannot go). -1 when it cannot be read."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=STATUS_TIMEOUT_S)
        try:
            return int(conn.execute("SELECT COUNT(*) FROM registers WHERE key != ?",
                                    (CONFIG_KEY,)).fetchall()[0][0])
        finally:
            conn.close()
    except sqlite3.Error:
        return -1


def _rows_left(urls: Sequence[str], dirs: Sequence[Path]
               ) -> tuple[list[int], list[int], list[int]]:
    """Per node: rows its storage holds (``key_rows``), tombstones it is waiting to
    collect, rows it removed (-1 for a node that did not answer)."""
    rows, pending, collected = [], [], []
    for url, d in zip(urls, dirs, strict=True):
        try:
            status = orjson.loads(_get(url + "/v1/status"))
            rows.append(key_rows(d / "paxoskv.sqlite3"))
            pending.append(int(status["tombstone_collection"]["pending"]))
            value = metric_value(_get(url + "/metrics").decode(),
                                 "paxoskv_tombstones_collected_total")
            collected.append(-1 if value is None else int(value))
        except (OSError, ValueError, KeyError):
            rows.append(-1)
            pending.append(-1)
            collected.append(-1)
    return rows, pending, collected


def wait_collected(urls: Sequence[str], procs: Sequence[subprocess.Popen[bytes]],
                   dirs: Sequence[Path], wait_s: float, settle_s: float,
                   clock: Callable[[], float] = time.monotonic) -> Collection:
    """Until no node holds a row (bounded by ``wait_s``), then until the directories
    stop shrinking: unchanged over ``STABLE_S`` (bounded by ``settle_s``)."""
    result = Collection()
    started = clock()
    next_report = started
    rows: list[int] = []
    collected: list[int] = []
    while clock() - started < wait_s:
        if any(p.poll() is not None for p in procs):
            raise SystemExit("bench_gc: a node exited while waiting for collection")
        rows, pending, collected = _rows_left(urls, dirs)
        if clock() >= next_report:
            next_report = clock() + 15
            _log(f"collection {clock() - started:4.0f}s: rows left {rows}, pending "
                 f"{pending}, collected {collected}, data dir MB "
                 f"{[round(dir_bytes(d) / 1e6, 2) for d in dirs]}")
        if rows and all(r == 0 for r in rows):
            result.seconds_to_no_rows = clock() - started
            result.complete = True
            break
        time.sleep(2)
    result.rows_left, result.collected_rows = rows, collected
    if not result.complete:
        _log(f"collection not done after {wait_s:.0f}s: rows left {rows}")
        return result
    _log(f"no rows left after {result.seconds_to_no_rows:.0f}s; waiting for the "
         "directories to stop shrinking")
    settle_start = clock()
    last = [dir_bytes(d) for d in dirs]
    stable_since = clock()
    while clock() - settle_start < settle_s:
        time.sleep(2)
        now = [dir_bytes(d) for d in dirs]
        if now != last:
            last, stable_since = now, clock()
            _log(f"settling: data dir MB {[round(b / 1e6, 2) for b in now]}")
        elif clock() - stable_since >= STABLE_S:
            break
    result.seconds_to_settled = clock() - started
    return result


WINDOWS_S: Final = FORWARD_MEMORY_S + 5.0
"""The longest a node remembers anything of a client request by design: the ids of the
writes it ran for another node (``FORWARD_MEMORY_S``), forgotten between heartbeats. The
phase-1-skip entries (``--phase1-skip-lifetime``, 60 s by default) go within it too."""


def _wait_windows(loaded_at: float) -> None:
    """Sleep until ``WINDOWS_S`` after the last client request: "after" measures a node
    that has nothing of the load left to forget, not one inside a window it keeps on
    purpose (with 10,000 keys the ids of the last minute of forwarded deletes were about
    600 strings and their times, still held when the directories had settled)."""
    left = loaded_at + WINDOWS_S - time.monotonic()
    if left > 0:
        _log(f"waiting {left:.0f}s more: the nodes remember forwarded writes for "
             f"{FORWARD_MEMORY_S:.0f}s")
        time.sleep(left)


def _warm_up(urls: Sequence[str], procs: Sequence[subprocess.Popen[bytes]],
             dirs: Sequence[Path], args: argparse.Namespace) -> list[Sample] | None:
    """``--warmup`` keys (after the run's own) written, deleted and collected, then the
    directories settled: the "warm" sample; None when collection did not end."""
    for name in ("write", "delete"):
        asyncio.run(_load(name, urls, args.warmup, min(args.clients, args.warmup),
                          args.value_bytes, procs, first=args.keys))
    done = wait_collected(urls, procs, dirs, args.wait_seconds, args.settle_seconds)
    if not done.complete:
        _log("warm-up keys not collected: no warm baseline")
        return None
    warm = _sample(procs, dirs)
    _log(f"warm ({args.warmup} keys written, deleted, collected): RSS MB "
         f"{[round(s.rss / 1e6, 1) for s in warm]}, data dir MB "
         f"{[round(s.dir_bytes / 1e6, 2) for s in warm]}")
    return warm


STABLE_S = 25.0
"""Directories unchanged this long count as settled: over two of the storage's
maintenance intervals (10 s), so a trim that has not started yet is not missed."""


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="paxoskv-bench-gc-", dir=args.dir))
    dirs = [base / f"n{i + 1}" for i in range(NODES)]
    node_args = ("--tombstone-grace", str(args.grace), *args.node_arg)
    load_before = _loadavg()
    procs: list[subprocess.Popen[bytes]] = []
    figures: list[NodeFigures] = []
    phases: list[Phase] = []
    collection = Collection()
    try:
        with _sigterm_as_exit():
            procs, urls = start_cluster(base, NODES, dirs, node_args)
            time.sleep(3)  # identity, first heartbeats and commits: "empty and ready"
            empty = _sample(procs, dirs)
            _log(f"empty: RSS MB {[round(s.rss / 1e6, 1) for s in empty]}, data dir MB "
                 f"{[round(s.dir_bytes / 1e6, 2) for s in empty]}")
            warm = _warm_up(urls, procs, dirs, args) if args.warmup else None
            for name in ("write", "delete"):
                phases.append(asyncio.run(_load(name, urls, args.keys, args.clients,
                                                args.value_bytes, procs)))
            full = _sample(procs, dirs)
            figures = [NodeFigures(i + 1, e, f) for i, (e, f) in enumerate(zip(empty, full,
                                                                                 strict=True))]
            for i, f in enumerate(figures):
                f.warm = None if warm is None else warm[i]
            _log(f"full: RSS MB {[round(s.rss / 1e6, 1) for s in full]}, data dir MB "
                 f"{[round(s.dir_bytes / 1e6, 2) for s in full]}; waiting for collection "
                 f"(grace {args.grace:g}s, at most {args.wait_seconds:.0f}s)")
            loaded_at = time.monotonic()
            collection = wait_collected(urls, procs, dirs, args.wait_seconds,
                                        args.settle_seconds)
            if collection.complete:
                _wait_windows(loaded_at)
                for f, s in zip(figures, _sample(procs, dirs), strict=True):
                    f.after = s
    finally:
        stop_cluster(procs)
        for f, d in zip(figures, dirs, strict=False):
            if f.after is not None:
                f.tables_after = db_tables(d / "paxoskv.sqlite3")
        if args.keep:
            _log(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    meta = {"keys": args.keys, "value_bytes": args.value_bytes, "clients": args.clients,
            "warmup_keys": args.warmup,
            "grace_s": args.grace, "node_args": list(node_args), "nodes": NODES,
            "cpus": os.cpu_count(), "loadavg_before": load_before,
            "loadavg_after": _loadavg()}
    print()
    print(f"{args.keys:,} keys of {args.value_bytes} B written and deleted on {NODES} nodes "
          f"(fsync on, grace {args.grace:g}s); load average {load_before} before, "
          f"{meta['loadavg_after']} after")
    for p in phases:
        print(f"{p.name}: {p.ok:,} ok, {p.failed:,} failed in {p.seconds:.0f}s "
              f"({p.ok / max(p.seconds, 1e-9):,.0f}/s, {p.retries:,} retries)")
    if collection.complete:
        print(f"collection: no rows left after {collection.seconds_to_no_rows:.0f}s, "
              f"directories settled after {collection.seconds_to_settled:.0f}s")
    else:
        print(f"collection: NOT complete; rows left per node {collection.rows_left}")
    print(format_table(figures))
    print(format_breakdown(figures))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(to_json(figures, phases, collection, meta))
    holds = collection.complete and all(f.within() for f in figures)
    print(f"\nevery node within {TOLERANCE:.0%} of empty: {'yes' if holds else 'NO'}; "
          f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
