"""``python -m paxoskv.bench_storage``: group commit in SQLite against LMDB, fsync on.

The measurement behind the storage engine choice (docs/storage.md). Each cell writes
batches of ``batch`` puts, one transaction and one durable commit per batch, as the
node's writer thread does, for ``--seconds``: commits/s and puts/s. Then random point
reads of stored keys, the cost of a cache miss.

* SQLite: WAL, ``synchronous=FULL`` (the WAL is fsync'd at every commit), the node's
  rowid table with a unique key, an upsert per put.
* LMDB (the ``lmdb`` binding, ``pip install 'paxoskv[bench]'``): ``sync=True`` and
  ``metasync=True``, its durable default: data pages and then the meta page are flushed
  at every commit.

Both get the same keys (random among ``--keys``) and the same random values. Without the
``lmdb`` package only SQLite is measured.
"""

from __future__ import annotations

import argparse
import importlib
import os
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["main"]

Put = Callable[[list[tuple[bytes, bytes]]], None]
Get = Callable[[bytes], bytes | None]


@dataclass
class Cell:
    engine: str
    value_bytes: int
    batch: int
    commits: int
    seconds: float
    commit_s: list[float]

    @property
    def commits_per_s(self) -> float:
        return self.commits / self.seconds

    @property
    def puts_per_s(self) -> float:
        return self.commits * self.batch / self.seconds

    @property
    def p99_ms(self) -> float:
        data = sorted(self.commit_s)
        return data[min(len(data) - 1, int(0.99 * len(data)))] * 1000


class _Sqlite:
    name = "sqlite"

    def __init__(self, directory: Path) -> None:
        self.conn = sqlite3.connect(directory / "bench.sqlite3", isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute("CREATE TABLE kv (k BLOB NOT NULL UNIQUE, v BLOB NOT NULL)")

    def put(self, items: list[tuple[bytes, bytes]]) -> None:
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.executemany(
            "INSERT INTO kv (k, v) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v=excluded.v",
            items)
        self.conn.execute("COMMIT")

    def get(self, key: bytes) -> bytes | None:
        rows = self.conn.execute("SELECT v FROM kv WHERE k = ?", (key,)).fetchall()
        return bytes(rows[0][0]) if rows else None

    def close(self) -> None:
        self.conn.close()


class _Lmdb:
    name = "lmdb"

    def __init__(self, directory: Path, lmdb: Any) -> None:
        self.env = lmdb.open(str(directory / "bench.lmdb"), map_size=8 << 30, sync=True,
                             metasync=True, max_dbs=0)

    def put(self, items: list[tuple[bytes, bytes]]) -> None:
        with self.env.begin(write=True) as txn:
            for k, v in items:
                txn.put(k, v)

    def get(self, key: bytes) -> bytes | None:
        with self.env.begin() as txn:
            value = txn.get(key)
        return None if value is None else bytes(value)

    def close(self) -> None:
        self.env.close()


def _run_cell(engine: _Sqlite | _Lmdb, value_bytes: int, batch: int, seconds: float,
              keys: int, rng: random.Random) -> Cell:
    values = [rng.randbytes(value_bytes) for _ in range(64)]
    commit_s: list[float] = []
    end = time.perf_counter() + seconds
    started = time.perf_counter()
    while time.perf_counter() < end:
        items = [(f"bench/{rng.randrange(keys):08d}".encode(), values[rng.randrange(64)])
                 for _ in range(batch)]
        t0 = time.perf_counter()
        engine.put(items)
        commit_s.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - started
    return Cell(engine.name, value_bytes, batch, len(commit_s), elapsed, commit_s)


def _reads(engine: _Sqlite | _Lmdb, keys: int, count: int, rng: random.Random) -> float:
    """Microseconds per random point read of a stored key."""
    engine.put([(f"bench/{i:08d}".encode(), rng.randbytes(1024)) for i in range(keys)])
    sample = [f"bench/{rng.randrange(keys):08d}".encode() for _ in range(count)]
    t0 = time.perf_counter()
    for key in sample:
        if engine.get(key) is None:
            raise AssertionError("a stored key was not found")
    return (time.perf_counter() - t0) / count * 1e6


def _open(name: str, directory: Path) -> _Sqlite | _Lmdb:
    directory.mkdir(parents=True)
    if name == "sqlite":
        return _Sqlite(directory)
    return _Lmdb(directory, importlib.import_module("lmdb"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m paxoskv.bench_storage",
                                 description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--seconds", type=float, default=1.0, help="duration of each cell")
    ap.add_argument("--rounds", type=int, default=3, help="runs of each cell (median shown)")
    ap.add_argument("--batches", default="1,16,64,256", help="puts per commit, comma list")
    ap.add_argument("--values", default="100,1024", help="value bytes, comma list")
    ap.add_argument("--keys", type=int, default=100_000, help="key space")
    ap.add_argument("--dir", default=None, help="parent directory (default: a temporary one "
                    "on the same disk as $TMPDIR); the disk is what is being measured")
    args = ap.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    values = [int(v) for v in args.values.split(",")]
    engines = ["sqlite"]
    try:
        lmdb = importlib.import_module("lmdb")
        engines.append("lmdb")
        lmdb_version = ".".join(map(str, lmdb.version()))
    except ImportError:
        print("bench_storage: the lmdb package is missing (pip install 'paxoskv[bench]'); "
              "measuring SQLite only", file=sys.stderr)
        lmdb_version = "-"
    base = Path(tempfile.mkdtemp(prefix="paxoskv-bench-storage-", dir=args.dir))
    rng = random.Random(1)
    cells: dict[tuple[int, int, str], list[Cell]] = {}
    reads: dict[str, float] = {}
    try:
        for value_bytes in values:
            opened = [_open(name, base / f"{name}-{value_bytes}") for name in engines]
            try:
                # Engines alternate cell by cell, and every cell runs --rounds times: this
                # disk's fsync time drifts by an order of magnitude within a minute, so only
                # interleaved runs compare the engines under the same conditions.
                for r in range(args.rounds):
                    print(f"bench_storage: {value_bytes} B values, round {r + 1}/"
                          f"{args.rounds} ...", file=sys.stderr, flush=True)
                    for batch in batches:
                        for engine in opened:
                            cells.setdefault((value_bytes, batch, engine.name), []).append(
                                _run_cell(engine, value_bytes, batch, args.seconds,
                                          args.keys, rng))
            finally:
                for engine in opened:
                    engine.close()
        for name in engines:
            engine = _open(name, base / f"{name}-reads")
            try:
                reads[name] = _reads(engine, 20_000, 20_000, rng)
            finally:
                engine.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"\nSQLite {sqlite3.sqlite_version}, LMDB {lmdb_version}, Python "
          f"{sys.version.split()[0]}, {os.cpu_count()} cores, directory {base.parent}; "
          f"median of {args.rounds} interleaved runs of {args.seconds:g}s (min-max)")
    print(f"{'value B':>7} {'batch':>5} {'engine':7} {'commits/s':>10} {'puts/s':>9} "
          f"{'puts/s min-max':>16} {'commit p99 ms':>14}")
    for (value_bytes, batch, name), runs in cells.items():
        mid = sorted(runs, key=lambda c: c.puts_per_s)[len(runs) // 2]
        low = min(c.puts_per_s for c in runs)
        high = max(c.puts_per_s for c in runs)
        print(f"{value_bytes:7d} {batch:5d} {name:7} {mid.commits_per_s:10.0f} "
              f"{mid.puts_per_s:9.0f} {f'{low:.0f}-{high:.0f}':>16} {mid.p99_ms:14.2f}")
    print()
    for name, us in reads.items():
        print(f"{name}: random point read of a 1 KiB value among 20,000 keys: {us:.1f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
