"""Durable acceptor state in SQLite (WAL, ``synchronous=FULL``) with group commit.

Why SQLite: it ships with Python, survives power loss when its WAL is fsync'd at commit
(``synchronous=FULL``), and one transaction can carry many keys' changes, so one fsync
serves every request that arrived while the previous one was running (group commit). A
single writer thread owns the connection; the event loop never blocks on the disk.

Every row carries a CRC32 of its fields, computed before it is written and checked again
when it is read back at start-up (TigerBeetle's paired assertions).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
import time
import zlib
from pathlib import Path

import orjson

from paxoskv.core.acceptor import EMPTY_STATE, AcceptorState
from paxoskv.core.ballot import Ballot
from paxoskv.core.register import Value
from paxoskv.limits import STORAGE_BATCH_MAX
from paxoskv.storage.base import CommitObserver

__all__ = ["CorruptRecord", "SqliteStorage"]

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS registers (
  key TEXT PRIMARY KEY,
  bp_counter INTEGER NOT NULL, bp_node INTEGER NOT NULL, bp_inc INTEGER NOT NULL,
  ba_counter INTEGER NOT NULL, ba_node INTEGER NOT NULL, ba_inc INTEGER NOT NULL,
  version INTEGER NOT NULL, data BLOB, recent TEXT NOT NULL, crc INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_UPSERT = (
    "INSERT INTO registers VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(key) DO UPDATE SET "
    "bp_counter=excluded.bp_counter, bp_node=excluded.bp_node, bp_inc=excluded.bp_inc, "
    "ba_counter=excluded.ba_counter, ba_node=excluded.ba_node, ba_inc=excluded.ba_inc, "
    "version=excluded.version, data=excluded.data, recent=excluded.recent, crc=excluded.crc"
)

_Row = tuple[str, int, int, int, int, int, int, int, bytes | None, str, int]


class CorruptRecord(RuntimeError):
    """A stored row whose checksum does not match: the disk or the code is broken."""


def _recent_text(value: Value) -> str:
    return orjson.dumps([[rid, v] for rid, v in value.recent]).decode()


def _crc(key: str, state: AcceptorState) -> int:
    bp, ba, v = state.ballot_promised, state.ballot_accepted, state.value
    head = (f"{key}\0{bp}\0{ba}\0{v.version}\0{'-' if v.data is None else len(v.data)}"
            f"\0{_recent_text(v)}")
    return zlib.crc32(v.data or b"", zlib.crc32(head.encode()))


def _to_row(key: str, state: AcceptorState) -> _Row:
    bp, ba = state.ballot_promised, state.ballot_accepted
    return (key, bp.counter, bp.node_id, bp.incarnation, ba.counter, ba.node_id,
            ba.incarnation, state.value.version, state.value.data,
            _recent_text(state.value), _crc(key, state))


def _from_row(row: _Row) -> tuple[str, AcceptorState]:
    key, bpc, bpn, bpi, bac, ban, bai, version, data, recent_text, crc = row
    try:
        recent = tuple((str(rid), int(v)) for rid, v in orjson.loads(recent_text))
    except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
        raise CorruptRecord(f"unreadable request ids for key {key!r}") from exc
    state = AcceptorState(Ballot(bpc, bpn, bpi), Ballot(bac, ban, bai),
                          Value(version, data, recent))
    if _crc(key, state) != crc:
        raise CorruptRecord(f"checksum mismatch for key {key!r}")
    return key, state


class _Write:
    __slots__ = ("future", "key", "meta", "state")

    def __init__(self, key: str, state: AcceptorState | None, meta: str | None,
                 future: asyncio.Future[None]) -> None:
        self.key, self.state, self.meta, self.future = key, state, meta, future


class SqliteStorage:
    """Implements ``paxoskv.storage.base.Storage``."""

    def __init__(self, data_dir: Path, observer: CommitObserver | None = None,
                 batch_max: int = STORAGE_BATCH_MAX) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / "paxoskv.sqlite3"
        self._observer = observer
        self._batch_max = batch_max
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(_SCHEMA)
        self._cache: dict[str, AcceptorState] = {}
        for row in self._conn.execute("SELECT * FROM registers"):
            key, state = _from_row(row)
            self._cache[key] = state
        self._meta: dict[str, str] = dict(self._conn.execute("SELECT name, value FROM meta"))
        # Listings read committed rows through a connection of the event loop's own (WAL
        # lets it read while the writer thread commits).
        self._reader = sqlite3.connect(self.path, isolation_level=None,
                                       check_same_thread=False)
        self._queue: queue.SimpleQueue[_Write | None] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._writer, name="paxoskv-storage", daemon=True)
        self._thread.start()
        self._closed = False

    # reads come from memory: the cache holds only what has been committed
    def load(self, key: str) -> AcceptorState:
        return self._cache.get(key, EMPTY_STATE)

    def keys(self, prefix: str, after: str | None, limit: int) -> list[str]:
        # SQLite's BINARY order is UTF-8 byte order, which is Python's code point order.
        start = prefix if after is None or after < prefix else after
        rows = self._reader.execute(
            "SELECT key FROM registers WHERE key >= ? ORDER BY key LIMIT ?",
            (start, limit + 1))
        out: list[str] = []
        for (key,) in rows:
            if not key.startswith(prefix):
                break
            if key == after:
                continue
            out.append(key)
            if len(out) == limit:
                break
        return out

    def key_count(self) -> int:
        return len(self._cache)

    def get_meta(self, name: str) -> str | None:
        return self._meta.get(name)

    async def save(self, key: str, state: AcceptorState) -> None:
        await self._submit(_Write(key, state, None, self._new_future()))
        self._cache[key] = state

    async def set_meta(self, name: str, value: str) -> None:
        await self._submit(_Write(name, None, value, self._new_future()))
        self._meta[name] = value

    def _new_future(self) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        self._loop = loop
        return loop.create_future()

    async def _submit(self, write: _Write) -> None:
        if self._closed:
            raise RuntimeError("storage is closed")
        self._queue.put(write)
        await write.future

    def _writer(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self._batch_max:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)  # finish this batch, then stop
                    break
                batch.append(nxt)
            started = time.perf_counter()
            error: BaseException | None = None
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                rows = [_to_row(w.key, w.state) for w in batch if w.state is not None]
                if rows:
                    self._conn.executemany(_UPSERT, rows)
                metas = [(w.key, w.meta) for w in batch if w.meta is not None]
                if metas:
                    self._conn.executemany(
                        "INSERT OR REPLACE INTO meta(name, value) VALUES (?, ?)", metas)
                self._conn.execute("COMMIT")  # synchronous=FULL: fsync of the WAL
            except BaseException as exc:  # reported to every waiter, never swallowed
                error = exc
                log.error("storage commit failed: %s", exc)
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
            elapsed = time.perf_counter() - started
            if self._observer is not None and error is None:
                self._observer(len(batch), elapsed)
            loop = self._loop
            if loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(_resolve, batch, error)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
        self._reader.close()
        self._conn.close()


def _resolve(batch: list[_Write], error: BaseException | None) -> None:
    for w in batch:
        if w.future.done():
            continue
        if error is None:
            w.future.set_result(None)
        else:
            w.future.set_exception(RuntimeError(f"storage commit failed: {error}"))
