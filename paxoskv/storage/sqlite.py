"""Durable acceptor state in SQLite (WAL, ``synchronous=FULL``) with group commit.

Why SQLite: it ships with Python, survives power loss when its WAL is fsync'd at commit
(``synchronous=FULL``), and one transaction can carry many keys' changes, so one fsync
serves every request that arrived while the previous one was running (group commit).
A batch that only overwrites is one statement with no transaction around it
(``_overwrite_rows``). A single writer thread owns the connection; the event loop never
waits for a commit.
docs/storage.md has the measurements behind the choice (SQLite against LMDB).

Values live on disk; memory holds a bounded cache of recently used states (``cache_bytes``,
``StateCache``: packed, oldest write evicted first),
so a node's footprint does not grow with the number of keys. A miss is a point read by
primary key through a read connection of the event loop's own (WAL lets it read while the
writer commits): tens of microseconds, so ``load()`` stays synchronous.

What ``load()`` may return: only committed state, and after ``save()`` returns, that state
or a newer one. SQLite makes a WAL commit visible to readers only after its fsync. The cache
holds only committed states: it is updated on the event loop when a batch's commit is
reported, before its waiters wake, so evicting an entry never loses anything. The writer
does not begin the next batch until the loop has applied the previous one, so a read from
disk can be ahead of the cache by at most the one batch whose report comes next; whatever
such a read returns or caches is therefore never followed by an older state.

Every row carries a CRC32 of its fields, computed before it is written and checked again
whenever it is read back from disk (TigerBeetle's paired assertions).

Pages freed by overwrites and deletes go back to the volume: new files are created with
``auto_vacuum=INCREMENTAL``, and when the free list passes a threshold the writer thread
runs ``PRAGMA incremental_vacuum`` in small steps between batches, each step its own short
transaction that carries no acceptor state (docs/storage.md, "Disk space").
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import ctypes.util
import functools
import logging
import os
import platform
import queue
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson

from paxoskv.core.acceptor import (
    FLOOR_BUCKETS,
    LEGACY_FLOOR_BUCKETS,
    NO_FLOOR,
    AcceptorState,
    Floor,
    absent_state,
    coarsen_floors,
    floor_bucket,
)
from paxoskv.core.ballot import Ballot
from paxoskv.core.register import Value
from paxoskv.limits import STORAGE_BATCH_MAX, STORAGE_CACHE_BYTES
from paxoskv.storage.base import CommitObserver, DiskUsage
from paxoskv.storage.statecache import StateCache

__all__ = ["CorruptRecord", "SqliteStorage"]

log = logging.getLogger(__name__)

# A rowid table with a unique key rather than WITHOUT ROWID: a 1 KiB row is larger than an
# index b-tree cell may be on a 4 KiB page, so WITHOUT ROWID spilled every such row into an
# overflow page of its own (4.7 KB on disk per 1 KiB value, against 1.4 KB here; measured in
# docs/storage.md); and COUNT(*) can read the small key index instead of every value.
# Directories made before keep their WITHOUT ROWID table: the statements below suit both.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS registers (
  key TEXT NOT NULL UNIQUE,
  bp_counter INTEGER NOT NULL, bp_node INTEGER NOT NULL, bp_inc INTEGER NOT NULL,
  ba_counter INTEGER NOT NULL, ba_node INTEGER NOT NULL, ba_inc INTEGER NOT NULL,
  version INTEGER NOT NULL, data BLOB, recent TEXT NOT NULL, crc INTEGER NOT NULL,
  bp_fast INTEGER NOT NULL DEFAULT 0, ba_fast INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS gc_floors (
  bucket INTEGER PRIMARY KEY,
  b_counter INTEGER NOT NULL, b_node INTEGER NOT NULL, b_inc INTEGER NOT NULL,
  b_fast INTEGER NOT NULL, version INTEGER NOT NULL, crc INTEGER NOT NULL
);
"""
"""``gc_floors`` (docs/gc.md) came with tombstone collection: a directory made before gets it
empty at its first open (CREATE TABLE IF NOT EXISTS), which is what it holds anyway."""

_TOMBSTONES_WHERE = "data IS NULL"
_EXPIRING_WHERE = "substr(recent, 1, 1) = '{'"
_SWEEP_INDEXES = {"registers_tombstones": _TOMBSTONES_WHERE,
                  "registers_expiring": _EXPIRING_WHERE}
"""Partial indexes of the rows each background sweep looks for: tombstones (the collector)
and values with a TTL (their expiry rides in ``recent``'s object form, ``_recent_text``).
Without them each sweep paged through every key and decoded each row on the event loop:
with 30,000 live keys and no tombstone, the collector's sweep took over half of a node's
samples during a write load. Each index holds only the rows it names: live values
without TTLs have no entry (a write still evaluates both conditions on the row it
replaces). A directory made before builds them at its first open (one scan of the table).
A listing must use the very condition of its index (``_indexed_page``), or SQLite would
not read that index."""

_FLOOR_COLUMNS = "bucket, b_counter, b_node, b_inc, b_fast, version, crc"

_FAST_COLUMNS = ("bp_fast", "ba_fast")
"""The ballots' fast parts (core/ballot.py), added after the first release: a directory
made before gets them by ``ALTER TABLE`` at open, as 0 (every ballot it holds is classic),
and its checksums still verify, since a classic ballot's text is unchanged."""

_COLUMNS = ("key, bp_counter, bp_node, bp_inc, ba_counter, ba_node, ba_inc, version, data, "
            "recent, crc, bp_fast, ba_fast")

_UPSERT = (
    f"INSERT INTO registers ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?) "
    "ON CONFLICT(key) DO UPDATE SET "
    "bp_counter=excluded.bp_counter, bp_node=excluded.bp_node, bp_inc=excluded.bp_inc, "
    "ba_counter=excluded.ba_counter, ba_node=excluded.ba_node, ba_inc=excluded.ba_inc, "
    "version=excluded.version, data=excluded.data, recent=excluded.recent, crc=excluded.crc, "
    "bp_fast=excluded.bp_fast, ba_fast=excluded.ba_fast"
)
_ROWS_PER_STATEMENT = (1, 2, 4, 8, 16, 32, 64, 128, 256)
"""The row counts a batch's write statements are made for (a batch is padded up to the
next one, and split by the last): a few fixed texts in the statement cache, and at most
256 * 13 parameters in one statement."""
_STATEMENT_DATA_BYTES = 1 << 20
"""A statement ends once its rows' values reach this many bytes: the sqlite3 module copies
every bound value, and SQLite copies the rows once more (``MATERIALIZE``), so 256 values
of 1 MiB would briefly cost over 500 MiB."""
_ROWS_FROM_VALUES = sqlite3.sqlite_version_info >= (3, 33, 0)
"""``UPDATE ... FROM`` came in SQLite 3.33 (Debian 12 has 3.40). With an older library
(RHEL 8: 3.26) the writer steps once per row (``executemany``): the same rows, more
waits for the GIL on a busy node."""


assert _COLUMNS.startswith("key,")
_STATE_COLUMNS = [c.strip() for c in _COLUMNS.split(",")][1:]
"""A row's columns after its key."""
_UPDATE = (f"UPDATE registers SET {', '.join(f'{c}=?' for c in _STATE_COLUMNS)} "
           "WHERE key=?")
"""One row's UPDATE, its parameters a row's with the key moved last (``_write_rows``
without ``_ROWS_FROM_VALUES``)."""


def _chunks(rows: list[_Row]) -> Iterator[list[_Row]]:
    """``rows`` in runs of at most ``_ROWS_PER_STATEMENT[-1]`` rows, each ending once its
    values reach ``_STATEMENT_DATA_BYTES`` (a large value is a run of its own)."""
    chunk: list[_Row] = []
    size = 0
    for row in rows:
        chunk.append(row)
        data = row[8]
        size += len(data) if data is not None else 0
        if len(chunk) == _ROWS_PER_STATEMENT[-1] or size >= _STATEMENT_DATA_BYTES:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _last_per_key(rows: list[_Row]) -> list[_Row]:
    """``rows`` with one row per key, its last (a key saved twice in a batch)."""
    return list({row[0]: row for row in rows}.values()) if len(rows) > 1 else rows


@functools.cache
def _update_rows(size: int) -> str:
    """Overwrite the rows of up to ``size`` keys in one statement; a padding row (a NULL
    key) matches none."""
    values = ",".join(["(?,?,?,?,?,?,?,?,?,?,?,?,?)"] * size)
    sets = ", ".join(f"{c}=v.column{i}" for i, c in enumerate(_STATE_COLUMNS, 2))
    return (f"UPDATE registers SET {sets} FROM (VALUES {values}) AS v "
            "WHERE registers.key = v.column1")


@functools.cache
def _insert_rows(size: int) -> str:
    """A row for each of up to ``size`` keys that have none, in one statement. Only a
    clash on the key is passed over (any other constraint still fails the batch); padding
    rows are left out."""
    values = ",".join(["(?,?,?,?,?,?,?,?,?,?,?,?,?)"] * size)
    return (f"INSERT INTO registers ({_COLUMNS}) SELECT * FROM (VALUES {values}) "
            "WHERE column1 IS NOT NULL ON CONFLICT(key) DO NOTHING")

_Row = tuple[str, int, int, int, int, int, int, int, bytes | None, str, int, int, int]

_IN_CHUNK = 500
"""Keys per ``key IN (...)`` query, under SQLite's bound-parameter limit."""

_IN_SIZES = (16, 128, _IN_CHUNK)
"""The only lengths an ``IN (...)`` list takes (padded with NULL, which matches no key). A
list as long as each batch made one SQL text per batch size, up to 500 of them, and the
connection's cache of 128 prepared statements kept evicting one to prepare the next: a
prepare per batch, and statement objects made all through a load and kept after it,
scattered over the small-object allocator's arenas (docs/gc.md)."""

VACUUM_THRESHOLD_BYTES = 8 << 20
"""Free pages inside the file above which the writer starts returning them; it stops at
half this, so the next writes still find free pages to reuse instead of growing the file,
or at ``VACUUM_KEEP_FRACTION`` of the pages in use if that is less."""

VACUUM_KEEP_FRACTION = 16
"""Trimming stops once at most 1/16 of the pages in use are free (when that is under half
the threshold): the slack kept for reuse scales with the data. With a fixed 4 MiB kept, a
node whose keys were all deleted stayed many times its empty size (0.1 MB of data)."""

VACUUM_STEP_PAGES = 256
"""Pages one ``incremental_vacuum`` step returns (1 MiB of 4 KiB pages, about 2.5 ms with
its fsync here): the longest a batch arriving meanwhile waits for it."""

VACUUM_STEP_PAUSE_S = 0.05
"""Between two steps, so trimming a large free list (20 MiB/s) leaves the disk's bandwidth
to the acceptor's commits."""

OVERWRITE_AFTER_BATCHES = 8
"""Batches of saves in a row that added no key before a batch of saves goes without a
transaction (``_overwrite_rows``): a load that adds keys now and then pays the second
statement and fsync at most once every this many batches."""

MAINTAIN_INTERVAL_S = 10.0
"""How often the writer looks at the free list when it is not trimming."""
IDLE_WAL_TRUNCATE_BYTES = 32 << 10
"""A WAL at least this large is truncated once the writer has committed nothing for a whole
maintenance interval (one checkpoint and fsync per quiet spell; with 1 MiB here, up to that
much stayed next to an emptied database of 0.1 MB). SQLite's automatic checkpoints copy
the WAL into the database but keep the file at its size for reuse, so a node gone quiet
after a burst (a mass delete and its collection, say) kept megabytes of WAL for as long as
it ran."""

RELEASE_MEMORY_AFTER_ROWS = 1000
"""Rows removed (collections) since the last release of memory above which an idle writer
releases it (``_release_memory``): a mass delete's collection frees a state per key, but
the C heap (SQLite's page caches, the writer thread's malloc arena) keeps the freed pages
mapped. Measured in one process, 20,000 keys written, deleted and collected: resident
memory 46.8 MB empty, 67.0 MB after; 61.9 MB once released."""

_WAL_SIZE_LIMIT = 64 << 20
"""``journal_size_limit``: the WAL file is cut back to this when it is reset after a
checkpoint, instead of keeping the size of the largest batch ever written."""

_AUTO_VACUUM_INCREMENTAL = 2


def _load_malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None elsewhere (musl, macOS): it gives the free pages of
    every malloc arena back to the system, which ``free`` alone does only for the top of
    the main heap."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_MALLOC_TRIM = _load_malloc_trim()


def release_c_heap() -> bool:
    """``malloc_trim(0)`` where there is one (glibc); whether it ran. Never on a request's
    path: it walks every arena (milliseconds on a large heap)."""
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True


class CorruptRecord(RuntimeError):
    """A stored row whose checksum does not match: the disk or the code is broken."""


def _recent_text(value: Value) -> str:
    """The ``recent`` column: the request ids as a JSON list, or, for a value with a TTL,
    ``{"r": that list, "e": expires_ms}``. The expiry rides in this column rather than a
    new one: rows without a TTL are byte for byte what they were (old rows and their
    checksums read as before), and the checksum covers the expiry."""
    recent = [[rid, v] for rid, v in value.recent]
    if value.expires_ms is None:
        return orjson.dumps(recent).decode()
    return orjson.dumps({"r": recent, "e": value.expires_ms}).decode()


def _parse_recent(text: str) -> tuple[tuple[tuple[str, int], ...], int | None]:
    raw = orjson.loads(text)
    expires: int | None = None
    if isinstance(raw, dict):
        expires = int(raw["e"])
        raw = raw["r"]
    return tuple((str(rid), int(v)) for rid, v in raw), expires


def _crc(key: str, state: AcceptorState, recent: str | None = None) -> int:
    """``recent``: the value's ``_recent_text``, when the caller has it already."""
    bp, ba, v = state.ballot_promised, state.ballot_accepted, state.value
    if recent is None:
        recent = _recent_text(v)
    head = (f"{key}\0{bp}\0{ba}\0{v.version}\0{'-' if v.data is None else len(v.data)}"
            f"\0{recent}")
    return zlib.crc32(v.data or b"", zlib.crc32(head.encode()))


def _to_row(key: str, state: AcceptorState) -> _Row:
    bp, ba, value = state.ballot_promised, state.ballot_accepted, state.value
    recent = _recent_text(value)
    return (key, bp.counter, bp.node_id, bp.incarnation, ba.counter, ba.node_id,
            ba.incarnation, value.version, value.data, recent, _crc(key, state, recent),
            bp.fast, ba.fast)


def _from_row(row: _Row) -> tuple[str, AcceptorState]:
    key, bpc, bpn, bpi, bac, ban, bai, version, data, recent_text, crc, bpf, baf = row
    try:
        recent, expires = _parse_recent(recent_text)
    except (orjson.JSONDecodeError, TypeError, ValueError, KeyError) as exc:
        raise CorruptRecord(f"unreadable request ids for key {key!r}") from exc
    try:
        state = AcceptorState(Ballot(bpc, bpn, bpi, bpf), Ballot(bac, ban, bai, baf),
                              Value(version, data, recent, expires))
    except (AssertionError, TypeError) as exc:  # fields no save() could have written
        raise CorruptRecord(f"impossible state stored for key {key!r}") from exc
    if _crc(key, state) != crc:
        raise CorruptRecord(f"checksum mismatch for key {key!r}")
    return key, state




def _floor_crc(bucket: int, floor: Floor, buckets: int = FLOOR_BUCKETS) -> int:
    """The checksum of a floor row; it covers the table's bucket count (but for the
    65,536 of earlier releases, whose rows keep their checksum), so a row is only ever
    read as a floor of the count it was written for. An earlier release opening a table
    of ours stops at its first row (checksum mismatch) rather than reading bucket 5 of
    256 as bucket 5 of 65,536, which would leave the keys of buckets 261, 517, ... without
    their floor."""
    tag = "floor" if buckets == LEGACY_FLOOR_BUCKETS else f"floor/{buckets}"
    return zlib.crc32(f"{tag}\0{bucket}\0{floor.ballot}\0{floor.version}".encode())


def _floor_row(bucket: int, floor: Floor) -> tuple[int, int, int, int, int, int, int]:
    b = floor.ballot
    return (bucket, b.counter, b.node_id, b.incarnation, b.fast, floor.version,
            _floor_crc(bucket, floor))


def _floor_from_row(row: tuple[int, int, int, int, int, int, int],
                    buckets: int = FLOOR_BUCKETS) -> tuple[int, Floor]:
    bucket, bc, bn, bi, bf, version, crc = row
    try:
        floor = Floor(Ballot(bc, bn, bi, bf), version)
    except (AssertionError, TypeError) as exc:
        raise CorruptRecord(f"impossible floor stored for bucket {bucket}") from exc
    if not 0 <= bucket < buckets or _floor_crc(bucket, floor, buckets) != crc:
        raise CorruptRecord(f"checksum mismatch for the floor of bucket {bucket}")
    return bucket, floor




class _Write:
    __slots__ = ("buckets", "floor", "future", "key", "meta", "state")

    def __init__(self, key: str, state: AcceptorState | None, meta: str | None,
                 future: asyncio.Future[None], floor: Floor | None = None,
                 buckets: list[tuple[int, Floor]] | None = None) -> None:
        self.key, self.state, self.meta, self.future = key, state, meta, future
        self.floor = floor
        """With ``floor``: remove ``key``'s row and make it its bucket's floor."""
        self.buckets = buckets
        """With ``buckets``: raise these buckets' floors (no row changes)."""


class _Done:
    """A batch whose transaction has ended, on its way from the writer to the loop."""

    __slots__ = ("batch", "error", "inserted", "removed", "unsure")

    def __init__(self, batch: list[_Write], error: BaseException | None, inserted: int,
                 removed: int = 0, unsure: bool = False) -> None:
        self.batch, self.error, self.inserted = batch, error, inserted
        self.removed = removed
        self.unsure = unsure
        """A failed batch that may have left some of its states on disk
        (``_overwrite_rows``)."""


class SqliteStorage:
    """Implements ``paxoskv.storage.base.Storage``.

    ``cache_bytes`` bounds the memory of the cache of recently used states
    (``StateCache``); 0 turns it off and every ``load()`` reads the disk. The
    ``vacuum_*`` and ``maintain_interval_s`` arguments exist for tests (module constants).
    """

    def __init__(self, data_dir: Path, observer: CommitObserver | None = None,
                 batch_max: int = STORAGE_BATCH_MAX,
                 cache_bytes: int = STORAGE_CACHE_BYTES,
                 vacuum_threshold_bytes: int = VACUUM_THRESHOLD_BYTES,
                 vacuum_step_pages: int = VACUUM_STEP_PAGES,
                 vacuum_step_pause_s: float = VACUUM_STEP_PAUSE_S,
                 maintain_interval_s: float = MAINTAIN_INTERVAL_S) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir
        self.path = data_dir / "paxoskv.sqlite3"
        self._observer = observer
        self._batch_max = batch_max
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._wcur = self._conn.cursor()
        """The writer's one cursor (see ``_rcur``)."""
        self._incremental = self._auto_vacuum()
        self._wcur.execute("PRAGMA journal_mode=WAL")
        self._wcur.execute("PRAGMA synchronous=FULL")
        self._wcur.execute(f"PRAGMA journal_size_limit={_WAL_SIZE_LIMIT}")
        self._wcur.executescript(_SCHEMA)
        present = {row[1] for row in self._wcur.execute("PRAGMA table_info(registers)")}
        for column in _FAST_COLUMNS:
            if column not in present:
                self._wcur.execute(
                    f"ALTER TABLE registers ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0")
        indexes = {row[0] for row in self._wcur.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index'").fetchall()}
        if not _SWEEP_INDEXES.keys() <= indexes:
            log.info("building the sweep indexes of %s (once: one scan of its rows)", self.path)
        for name, where in _SWEEP_INDEXES.items():
            self._wcur.execute(
                f"CREATE INDEX IF NOT EXISTS {name} ON registers(key) WHERE {where}")
        # The loop's own connection: point reads on a cache miss, listings, the count.
        # Every statement on it runs to completion (fetchall), so no
        # read transaction stays open and each read sees the latest commit.
        self._reader = sqlite3.connect(self.path, isolation_level=None,
                                       check_same_thread=False)
        self._rcur = self._reader.cursor()
        """The loop's one cursor: ``Connection.execute`` makes a cursor per statement and
        keeps a weak reference to each in a list it prunes only every 200 cursors, so a
        load left a few hundred of them alive, made all through it and scattered over the
        small-object allocator's arenas (docs/gc.md); a cursor of our own makes none."""
        # Exact without holding the keys: counted once here (the key index, not the
        # values), then moved by the rows each committed batch inserted.
        self._count: int = self._rcur.execute("SELECT COUNT(*) FROM registers").fetchall()[0][0]
        self._meta: dict[str, str] = dict(
            self._rcur.execute("SELECT name, value FROM meta").fetchall())
        # Floors stay on disk, read when needed (``_disk_floor``). Each is checked once
        # here, so a damaged one stops the start as it did when they were all loaded; a
        # table of an earlier release's 65,536 buckets is first folded into ours.
        self._migrate_floors()
        self._cache = StateCache(max(0, cache_bytes))
        # Ended batches, writer to loop; the writer waits until _applied counts each one
        # before it begins the next.
        self._done: collections.deque[_Done] = collections.deque()
        self._ended = 0  # writer thread only
        self._ended_at_maintain = -1  # writer thread only: batches ended at the last look
        self._ended_at = 0.0  # writer thread only: when the last batch ended (monotonic)
        self._applied = 0
        self._applied_cond = threading.Condition()
        self._queue: queue.SimpleQueue[list[_Write] | None] = queue.SimpleQueue()
        self._pending: list[_Write] = []  # submitted this turn of the loop, not handed over
        self._loop: asyncio.AbstractEventLoop | None = None
        self._page_size: int = self._rcur.execute("PRAGMA page_size").fetchall()[0][0]
        self._vacuum_high = max(1, vacuum_threshold_bytes)
        self._vacuum_step_pages = max(1, vacuum_step_pages)
        self._vacuum_step_pause_s = vacuum_step_pause_s
        self._maintain_interval_s = maintain_interval_s
        self._maintain_at = time.monotonic() + maintain_interval_s  # writer thread only
        self._trimming = False  # writer thread only
        self._batches_without_new_keys = 0  # writer thread only: see _overwrite_rows
        self._removed_since_release = 0  # writer thread only
        self.memory_releases = 0
        """Times the idle writer released memory after collections (``_release_memory``)."""
        self._thread = threading.Thread(target=self._writer, name="paxoskv-storage", daemon=True)
        self._thread.start()
        self._closed = False

    # ---------------------------------------------------------------- reads (event loop)

    def load(self, key: str) -> AcceptorState:
        if self._done:  # an ended batch whose report has not run yet (or never will:
            self._apply_done()  # its loop went away): apply it before reading
        state = self._cache.get(key)
        if state is not None:
            return state
        state, has_row = self._read_disk(key)
        if has_row:  # a key without a row is not cached: misses would crowd out the
            self._remember(key, state)  # states in use
        return state

    def peek(self, key: str) -> AcceptorState:
        """``load`` for a sweep: a miss is read from the disk but not cached: through
        ``load``, the rows a sweep only looks at evicted the states in use."""
        if self._done:
            self._apply_done()
        state = self._cache.get(key)
        if state is not None:
            return state
        return self._read_disk(key)[0]

    def _read_disk(self, key: str) -> tuple[AcceptorState, bool]:
        """``key``'s state as the disk has it (its floor's state without a row), and
        whether it has a row."""
        rows = self._rcur.execute(
            f"SELECT {_COLUMNS} FROM registers WHERE key = ?", (key,)).fetchall()
        if not rows:
            return absent_state(self._disk_floor(key)), False
        return _from_row(rows[0])[1], True

    def _disk_floor(self, key: str) -> Floor:
        """The floor of ``key``'s bucket, read from the disk: only committed floors are
        there, possibly one batch ahead of what the loop has applied, which for a floor
        only means a higher one (floors only go up). A read that found no row may have
        seen a collection not yet applied here, so its floor is never older than the row."""
        rows = self._rcur.execute(
            f"SELECT {_FLOOR_COLUMNS} FROM gc_floors WHERE bucket = ?",
            (floor_bucket(key),)).fetchall()
        return _floor_from_row(rows[0])[1] if rows else NO_FLOOR

    def has_row(self, key: str) -> bool:
        if self._done:
            self._apply_done()
        if key in self._cache:
            return True
        return bool(self._rcur.execute(
            "SELECT 1 FROM registers WHERE key = ?", (key,)).fetchall())

    def floor(self, key: str) -> Floor:
        if self._done:
            self._apply_done()
        return self._disk_floor(key)

    def floor_page(self, after: int, limit: int) -> list[tuple[int, Floor]]:
        if self._done:
            self._apply_done()
        return [_floor_from_row(row) for row in self._rcur.execute(
            f"SELECT {_FLOOR_COLUMNS} FROM gc_floors WHERE bucket > ? ORDER BY bucket "
            "LIMIT ?", (after, limit)).fetchall()]

    async def raise_floors(self, floors: list[tuple[int, Floor]]) -> None:
        await self._submit(_Write("", None, None, self._new_future(), None, list(floors)))

    def floors_raised(self) -> int:
        """Buckets with a floor (for tests and the status page)."""
        return int(self._rcur.execute("SELECT COUNT(*) FROM gc_floors").fetchall()[0][0])

    def keys(self, prefix: str, after: str | None, limit: int) -> list[str]:
        # SQLite's BINARY order is UTF-8 byte order, which is Python's code point order.
        start = prefix if after is None or after < prefix else after
        rows = self._rcur.execute(
            "SELECT key FROM registers WHERE key >= ? ORDER BY key LIMIT ?",
            (start, limit + 1)).fetchall()
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

    def tombstones(self, after: str | None, limit: int) -> list[str]:
        return self._indexed_page(_TOMBSTONES_WHERE, after, limit)

    def expiring(self, after: str | None, limit: int) -> list[str]:
        return self._indexed_page(_EXPIRING_WHERE, after, limit)

    def _indexed_page(self, where: str, after: str | None, limit: int) -> list[str]:
        """Keys after ``after`` whose row matches ``where``: the exact condition of one
        of ``_SWEEP_INDEXES``, so SQLite reads that index alone."""
        return [key for (key,) in self._rcur.execute(
            f"SELECT key FROM registers WHERE {where} AND key > ? ORDER BY key LIMIT ?",
            ("" if after is None else after, limit)).fetchall()]

    def key_count(self) -> int:
        if self._done:
            self._apply_done()
        return self._count

    def get_meta(self, name: str) -> str | None:
        if self._done:
            self._apply_done()
        return self._meta.get(name)

    def disk_usage(self) -> DiskUsage:
        """For the metrics, at scrape time: a stat of each file in the data directory, a
        statvfs and one page-1 read, so tens of microseconds and no request waits on it."""
        data_bytes, dirs = 0, [str(self.data_dir)]
        while dirs:
            with os.scandir(dirs.pop()) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            dirs.append(entry.path)
                        else:  # allocated blocks, as du counts and the volume fills
                            data_bytes += entry.stat(follow_symlinks=False).st_blocks * 512
                    except OSError:  # gone meanwhile (e.g. -shm at close)
                        continue
        vfs = os.statvfs(self.data_dir)
        free_pages = self._rcur.execute("PRAGMA freelist_count").fetchall()[0][0]
        return DiskUsage(data_dir_bytes=data_bytes,
                         volume_free_bytes=vfs.f_bavail * vfs.f_frsize,
                         volume_size_bytes=vfs.f_blocks * vfs.f_frsize,
                         freelist_bytes=free_pages * self._page_size)

    def cache_stats(self) -> tuple[int, int]:
        """(states cached, bytes of memory mapped for them)."""
        return len(self._cache), self._cache.mapped_bytes

    def verify(self, page: int = 1000) -> int:
        """Read every row back and check its checksum (CorruptRecord if one fails); the
        number of rows. Reads pages of ``page`` rows, never all at once."""
        rows_seen, after = 0, ""
        while True:
            rows = self._rcur.execute(
                f"SELECT {_COLUMNS} FROM registers WHERE key > ? ORDER BY key LIMIT ?",
                (after, page)).fetchall()
            for row in rows:
                _from_row(row)
            rows_seen += len(rows)
            if len(rows) < page:
                return rows_seen
            after = rows[-1][0]

    def _remember(self, key: str, state: AcceptorState) -> None:
        # Only committed states are cached, so one evicted loses nothing; one too large to
        # cache still drops its stale copy, and the disk answers.
        self._cache.put(key, state)

    # ---------------------------------------------------------------- writes

    async def save(self, key: str, state: AcceptorState) -> None:
        await self._submit(_Write(key, state, None, self._new_future()))

    def save_soon(self, key: str, state: AcceptorState) -> asyncio.Future[None]:
        write = _Write(key, state, None, self._new_future())
        self._enqueue(write)
        return write.future

    async def set_meta(self, name: str, value: str) -> None:
        await self._submit(_Write(name, None, value, self._new_future()))

    async def collect(self, key: str, floor: Floor) -> None:
        await self._submit(_Write(key, None, None, self._new_future(), floor))

    def _new_future(self) -> asyncio.Future[None]:
        loop = self._loop
        if loop is None or not loop.is_running():  # once per loop (see paxoskv.loopref)
            loop = self._loop = asyncio.get_running_loop()
        return loop.create_future()

    async def _submit(self, write: _Write) -> None:
        self._enqueue(write)
        await write.future

    def _enqueue(self, write: _Write) -> None:
        if self._closed:
            raise RuntimeError("storage is closed")
        # Writes submitted in one turn of the loop reach the writer as one list: one
        # hand-over (and at most one wake-up of the writer thread) per turn, not per write.
        if not self._pending:
            write.future.get_loop().call_soon(self._hand_over)
        self._pending.append(write)

    def _hand_over(self) -> None:
        pending, self._pending = self._pending, []
        for i in range(0, len(pending), self._batch_max):
            self._queue.put(pending[i:i + self._batch_max])

    def _writer(self) -> None:
        carry: list[_Write] | None = None
        while True:
            if carry is None and time.monotonic() >= self._maintain_at:
                self._maintain()  # between batches, never inside one
            first: list[_Write] | None
            if carry is not None:
                first, carry = carry, None
            else:
                try:
                    first = self._queue.get(
                        timeout=max(0.0, self._maintain_at - time.monotonic()))
                except queue.Empty:
                    continue
            if first is None:
                return
            batch, carry = self._fill(first)
            self._commit(batch)
            # Idle, the writer keeps no reference to the batch it ended: its writes (values
            # too) are the loop's to free once their callers are answered.
            del first, batch

    def _fill(self, first: list[_Write]) -> tuple[list[_Write], list[_Write] | None]:
        """``first`` and what else is queued, up to ``batch_max`` writes; returns the batch
        and the queued chunk that did not fit (the next batch's start)."""
        batch = list(first)
        while len(batch) < self._batch_max:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                break
            if nxt is None:
                self._queue.put(None)  # finish this batch, then stop
                break
            if len(batch) + len(nxt) > self._batch_max:
                return batch, nxt  # a batch stays within batch_max
            batch.extend(nxt)
        return batch, None

    def _commit(self, batch: list[_Write]) -> None:
        """``batch`` on disk (one statement, or one transaction: ``_overwrite_rows``),
        then its report to the loop."""
        # The loop must have applied the batch before this one (module doc: the disk is
        # at most one batch ahead of the cache). Waiting here, not right after that
        # commit, lets the loop apply it while this batch gathers: usually no wait.
        self._await_applied(self._ended)
        started = time.perf_counter()
        error: BaseException | None = None
        inserted = removed = 0
        overwrite: list[_Row] | None = None
        try:
            rows = [_to_row(w.key, w.state) for w in batch if w.state is not None]
            overwrite = self._overwrite_rows(batch, rows)
            if overwrite is not None:
                inserted = self._write_chunk(overwrite)  # no BEGIN/COMMIT: see _overwrite_rows
                if self._conn.in_transaction:  # never acknowledge what is not committed
                    raise sqlite3.OperationalError("an overwrite ran inside a transaction")
            else:
                inserted, removed = self._write_transaction(batch, rows)
            if rows:
                self._batches_without_new_keys = 0 if inserted else \
                    self._batches_without_new_keys + 1
        except BaseException as exc:  # reported to every waiter, never swallowed
            error = exc
            log.error("storage commit failed: %s%s", exc, "" if overwrite is None else
                      " (an overwrite: its UPDATE may have committed; its keys are read "
                      "from disk again)")
            with contextlib.suppress(sqlite3.Error):
                self._wcur.execute("ROLLBACK")
        elapsed = time.perf_counter() - started
        if self._observer is not None and error is None:
            self._observer(len(batch), elapsed)
        if error is None:
            self._removed_since_release += removed
        self._done.append(_Done(batch, error, inserted, removed,
                                unsure=error is not None and overwrite is not None))
        self._ended += 1
        self._ended_at = time.monotonic()
        self._report()

    def _overwrite_rows(self, batch: list[_Write], rows: list[_Row]) -> list[_Row] | None:
        """The rows of a batch that can go in one statement with no transaction around it
        (autocommit: the statement is its own transaction, and its one step does the
        commit and the fsync), or None for ``_write_transaction``.

        Why: each statement step gives up the GIL, and on a busy node every time costs the
        writer a wait for the event loop; BEGIN and COMMIT were two of the three steps of
        a steady batch. Only a batch of saves alone, whose rows fit one statement, and
        only once ``OVERWRITE_AFTER_BATCHES`` batches of saves in a row added no key: one
        whose UPDATE misses keys inserts them in a second statement, a second transaction
        and fsync, and the count starts again. If the
        INSERT fails, the UPDATE's states stay on disk though the batch failed; the
        loop then drops the batch's keys from the cache (``_Done.unsure``), and reads go
        to the disk."""
        if (not _ROWS_FROM_VALUES or self._batches_without_new_keys < OVERWRITE_AFTER_BATCHES
                or len(rows) != len(batch) or len(rows) > _ROWS_PER_STATEMENT[-1]
                or self._conn.in_transaction):
            # (A transaction left open by a failed COMMIT and ROLLBACK would take the
            # UPDATE in: acknowledged, never committed. _maintain ends it.)
            return None
        chunks = _chunks(_last_per_key(rows))
        first = next(chunks)
        return first if next(chunks, None) is None else None

    def _write_transaction(self, batch: list[_Write], rows: list[_Row]) -> tuple[int, int]:
        """``batch`` in one write transaction (its caller rolls back on failure); returns
        (keys that got a row, keys that lost theirs)."""
        inserted = removed = 0
        self._wcur.execute("BEGIN IMMEDIATE")
        collected = list(dict.fromkeys(w.key for w in batch if w.floor is not None))
        if not collected:
            if rows:
                inserted = self._write_rows(rows)
        else:
            inserted, removed = self._write_in_order(batch, rows, collected)
        metas = [(w.key, w.meta) for w in batch if w.meta is not None]
        if metas:
            self._wcur.executemany(
                "INSERT OR REPLACE INTO meta(name, value) VALUES (?, ?)", metas)
        for w in batch:
            for bucket, given in w.buckets or ():
                self._raise_floor(bucket, given)
        self._wcur.execute("COMMIT")  # synchronous=FULL: fsync of the WAL
        return inserted, removed

    def _report(self) -> None:
        """Have the loop apply the batch just ended (``_apply_done``)."""
        loop = self._loop
        with contextlib.suppress(RuntimeError):  # closed meanwhile
            if loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(self._apply_done)

    def _migrate_floors(self) -> None:
        """At open: fold a floor table of ``LEGACY_FLOOR_BUCKETS`` (rows written by an
        earlier release) into ``FLOOR_BUCKETS`` rows, each the highest of the floors that
        map to it (``coarsen_floors``: no floor goes down), in one transaction, so a crash
        leaves the old table or the new one, never a mix or a gap. Rows that check under
        neither count are CorruptRecord."""
        # Read inside the transaction: a floor written between the read and the DELETE
        # (another process on the same directory) would otherwise go down.
        self._wcur.execute("BEGIN IMMEDIATE")
        try:
            rows = self._wcur.execute(f"SELECT {_FLOOR_COLUMNS} FROM gc_floors").fetchall()
            legacy: list[tuple[int, Floor]] = []
            current: list[tuple[int, Floor]] = []
            for row in rows:
                try:
                    current.append(_floor_from_row(row))
                except CorruptRecord:
                    legacy.append(_floor_from_row(row, LEGACY_FLOOR_BUCKETS))
            if not legacy:
                self._wcur.execute("COMMIT")
                return
            folded = coarsen_floors([*legacy, *current], LEGACY_FLOOR_BUCKETS)
            self._wcur.execute("DELETE FROM gc_floors")
            self._wcur.executemany(
                f"INSERT INTO gc_floors({_FLOOR_COLUMNS}) VALUES (?,?,?,?,?,?,?)",
                [_floor_row(bucket, floor) for bucket, floor in folded])
            self._wcur.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self._wcur.execute("ROLLBACK")
            raise
        log.info("folded the floors of %d of %d buckets into %d of %d (docs/gc.md)",
                 len(legacy), LEGACY_FLOOR_BUCKETS, len(folded), FLOOR_BUCKETS)

    def _auto_vacuum(self) -> bool:
        """Ask for ``auto_vacuum=INCREMENTAL`` if the file is new (it only takes before
        the first table, and before WAL mode writes the header); whether it is in force.
        Files made before keep NONE: docs/storage.md says why they are not converted."""
        if self._wcur.execute("PRAGMA page_count").fetchall()[0][0] == 0:
            self._wcur.execute(f"PRAGMA auto_vacuum={_AUTO_VACUUM_INCREMENTAL}")
        mode: int = self._wcur.execute("PRAGMA auto_vacuum").fetchall()[0][0]
        if mode != _AUTO_VACUUM_INCREMENTAL and self._wcur.execute(
                "PRAGMA page_count").fetchall()[0][0] > 0:
            log.info("%s was created without auto_vacuum=INCREMENTAL: pages freed inside it "
                     "are reused but not returned to the volume (docs/storage.md, "
                     "\"Disk space\")", self.path)
        return mode == _AUTO_VACUUM_INCREMENTAL

    def _maintain(self) -> None:
        """Writer thread, between batches: return free pages to the volume, one bounded
        ``incremental_vacuum`` step per call, once the free list passes the threshold (or a
        quarter of the pages in use, at least 1/8 of the threshold: ``_trim_from``) and
        until it is under half of it, or under 1/16 of the pages in use if that is less;
        then a TRUNCATE checkpoint, which shrinks the database file in WAL mode and empties
        the WAL the steps went through. Each step is its own transaction with no acceptor state in
        it, so a batch waits for at most one step, and a failed step loses nothing."""
        now = time.monotonic()
        self._maintain_at = now + self._maintain_interval_s
        # Idle: nothing ended for a whole interval. Not merely since the last look: while
        # trimming, looks come every VACUUM_STEP_PAUSE_S, between the batches of a load.
        idle = self._ended == self._ended_at_maintain \
            and now - self._ended_at >= self._maintain_interval_s
        self._ended_at_maintain = self._ended
        if not self._incremental and not idle:
            return
        if self._conn.in_transaction:
            # A batch whose COMMIT and ROLLBACK both failed left its transaction open;
            # executescript would COMMIT it, making durable what its waiters were told had
            # failed (and what the cache does not hold). Throw it away instead, or skip.
            try:
                self._wcur.execute("ROLLBACK")
            except sqlite3.Error as exc:
                log.error("storage: cannot roll back a failed batch (%s); no vacuum", exc)
                return
            if self._conn.in_transaction:
                return
        if idle:
            self._truncate_idle_wal()
            if self._removed_since_release >= RELEASE_MEMORY_AFTER_ROWS:
                self._release_memory()
        if not self._incremental:
            return
        try:
            free = self._wcur.execute("PRAGMA freelist_count").fetchall()[0][0] * self._page_size
            pages = self._wcur.execute("PRAGMA page_count").fetchall()[0][0]
            used = pages * self._page_size - free
            # Idle, everything over the slack goes back, however little: below the
            # start threshold (1 MiB at least), a node whose keys were all deleted kept
            # up to that much free inside a file of 0.1 MB of data, for ever.
            if not self._trimming and free < self._trim_from(used) and not (
                    idle and free > self._trim_to(used)):
                return
            if free > self._trim_to(used):
                if not self._trimming:
                    log.info("returning free pages of %s to the volume (%d bytes free inside "
                             "it)", self.path, free)
                self._trimming = True
                # executescript steps the pragma to its end; execute() would run one step,
                # which frees a single page.
                self._wcur.executescript(f"PRAGMA incremental_vacuum({self._vacuum_step_pages})")
                self._maintain_at = time.monotonic() + self._vacuum_step_pause_s
                return
            self._trimming = False
            # TRUNCATE, not PASSIVE: the steps went through the WAL, which otherwise keeps
            # their size (up to journal_size_limit) after the database file has shrunk.
            # It waits for no writer (this thread is the only one) and for readers only
            # through the busy timeout; busy, it leaves the WAL as PASSIVE would.
            busy = self._wcur.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()[0][0]
            log.info("returned free pages of %s: %d bytes now%s", self.path,
                     self.path.stat().st_size, " (WAL busy, not truncated)" if busy else "")
        except (sqlite3.Error, OSError) as exc:  # e.g. a full disk: try again later
            self._trimming = False
            log.warning("returning free pages of %s failed: %s", self.path, exc)

    def _release_memory(self) -> None:
        """Writer thread, idle after many rows were removed: have SQLite free the page
        caches of both connections (``PRAGMA shrink_memory``; the reader's on the loop,
        which owns it), then give the C heap's free pages back (``release_c_heap``, here:
        it walks every arena, a quarter of a second on a large heap, which on the loop
        would stall every request). Once per burst of collections."""
        self._removed_since_release = 0
        try:
            self._wcur.execute("PRAGMA shrink_memory").fetchall()
        except sqlite3.Error as exc:
            log.warning("storage: shrink_memory failed: %s", exc)
        loop = self._loop
        with contextlib.suppress(RuntimeError):  # closed meanwhile
            if loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(self._shrink_reader)
        release_c_heap()
        self.memory_releases += 1

    def _shrink_reader(self) -> None:
        """On the loop (``_release_memory``): the reader's page cache only."""
        if not self._closed:
            with contextlib.suppress(sqlite3.Error):
                self._rcur.execute("PRAGMA shrink_memory").fetchall()

    def _truncate_idle_wal(self) -> None:
        """Writer thread, nothing committed since the last look: empty a large WAL
        (``IDLE_WAL_TRUNCATE_BYTES``). Only the size changes: a TRUNCATE checkpoint first
        copies every frame into the database, as the automatic ones do."""
        wal = self.path.with_name(self.path.name + "-wal")
        try:
            if not wal.exists() or wal.stat().st_size < IDLE_WAL_TRUNCATE_BYTES:
                return
            busy = self._wcur.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()[0][0]
            log.debug("truncated the idle WAL of %s%s", self.path, " (busy)" if busy else "")
        except (sqlite3.Error, OSError) as exc:
            log.warning("truncating the idle WAL of %s failed: %s", self.path, exc)

    def _trim_from(self, used_bytes: int) -> int:
        """Free bytes at which trimming starts: the threshold, or a quarter of the pages
        in use if that is less, but never under an eighth of the threshold (1 MiB), so
        small amounts are not trimmed over and over. With the threshold alone, a node whose
        10,000 keys were deleted and collected kept 2 MB of free pages (and 4 MB of WAL)
        next to 0.25 MB of data for ever."""
        high = self._vacuum_high
        return min(high, max(high // 8, used_bytes // 4))

    def _trim_to(self, used_bytes: int) -> int:
        """Free bytes at which trimming stops (``VACUUM_KEEP_FRACTION``)."""
        return min(self._vacuum_high // 2, used_bytes // VACUUM_KEEP_FRACTION)

    def _await_applied(self, ended: int) -> None:
        """Wait until the loop has applied the first ``ended`` batches (module doc: this
        keeps the disk at most one batch ahead of the cache). A loop that has gone away
        (its ``asyncio.run`` ended) is not waited for."""
        loop = self._loop
        if self._applied >= ended or loop is None or loop.is_closed():
            return
        with self._applied_cond:
            while not self._applied_cond.wait_for(lambda: self._applied >= ended, 0.5):
                if loop.is_closed():
                    return

    def _write_in_order(self, batch: list[_Write], rows: list[_Row], collected: list[str]
                        ) -> tuple[int, int]:
        """The states and collections of ``batch`` in submission order (inside the write
        transaction), so that a state saved after a collection of its key is kept, and one
        saved before it is removed, as the cache applies them (``_apply_done``). Returns
        (keys that got a row, keys that lost theirs) for the key count."""
        removing = set(collected)
        saved_only = list(dict.fromkeys(r[0] for r in rows if r[0] not in removing))
        inserted = self._new_keys(saved_only) if saved_only else 0
        present_before = len(collected) - self._new_keys(collected)
        pending: list[_Row] = []
        it = iter(rows)
        for w in batch:
            if w.state is not None:
                pending.append(next(it))
            elif w.floor is not None:  # a collection: row and floor in one commit
                if pending:
                    self._wcur.executemany(_UPSERT, pending)
                    pending = []
                self._wcur.execute("DELETE FROM registers WHERE key = ?", (w.key,))
                self._raise_floor(floor_bucket(w.key), w.floor)
        if pending:
            self._wcur.executemany(_UPSERT, pending)
        present_after = len(collected) - self._new_keys(collected)
        return inserted, present_before - present_after

    def _raise_floor(self, bucket: int, floor: Floor) -> None:
        """Make ``bucket``'s floor at least ``floor`` (inside the write transaction)."""
        assert 0 <= bucket < FLOOR_BUCKETS, bucket
        for row in self._wcur.execute(  # another key's collection may
                f"SELECT {_FLOOR_COLUMNS} FROM gc_floors WHERE bucket = ?",
                (bucket,)).fetchall():  # have raised it meanwhile
            floor = floor.merged(_floor_from_row(row)[1])
        self._wcur.execute(
            f"INSERT OR REPLACE INTO gc_floors({_FLOOR_COLUMNS}) "
            "VALUES (?,?,?,?,?,?,?)", _floor_row(bucket, floor))

    def _write_rows(self, rows: list[_Row]) -> int:
        """Store ``rows`` (of a key written twice, the last), inside the write transaction;
        returns how many keys got a row they had not.

        Few statements, whatever the batch's size: the sqlite3 module lets go of the GIL
        around each step of a statement, a row each for ``executemany``, and while the
        event loop is busy each time can cost the writer a wait for it. An UPDATE of them
        all first, whose row count says whether any key is new (a steady load only
        overwrites); only then an INSERT of those without a row."""
        rows = _last_per_key(rows)
        if not _ROWS_FROM_VALUES:
            self._wcur.executemany(_UPDATE, [row[1:] + row[:1] for row in rows])
            if self._wcur.rowcount == len(rows):
                return 0
            self._wcur.executemany(_insert_rows(1), rows)
            return int(self._wcur.rowcount)
        return sum(self._write_chunk(chunk) for chunk in _chunks(rows))

    def _write_chunk(self, chunk: list[_Row]) -> int:
        """``_write_rows`` for at most one statement's rows (``_chunks``)."""
        size = next(n for n in _ROWS_PER_STATEMENT if n >= len(chunk))
        params = [field for row in chunk for field in row]
        params += [None] * (len(chunk[0]) * (size - len(chunk)))
        self._wcur.execute(_update_rows(size), params)
        if self._wcur.rowcount == len(chunk):
            return 0
        self._wcur.execute(_insert_rows(size), params)
        return int(self._wcur.rowcount)

    def _new_keys(self, keys: list[str]) -> int:
        """How many distinct ``keys`` have no row yet (inside the write transaction)."""
        wanted = list(dict.fromkeys(keys))
        present = 0
        for i in range(0, len(wanted), _IN_CHUNK):
            chunk: list[str | None] = list(wanted[i:i + _IN_CHUNK])
            size = next(n for n in _IN_SIZES if n >= len(chunk))
            chunk += [None] * (size - len(chunk))
            marks = ",".join("?" * size)
            present += self._wcur.execute(
                f"SELECT COUNT(*) FROM registers WHERE key IN ({marks})", chunk).fetchall()[0][0]
        return len(wanted) - present

    def _apply_done(self) -> None:
        """On the loop, in commit order: put what each ended batch made durable into the
        cache, meta and count, then wake its waiters (also those no longer waiting: a
        cancelled save may still have committed)."""
        while self._done:
            done = self._done.popleft()
            if done.error is None:
                self._count += done.inserted - done.removed
                for w in done.batch:
                    if w.state is not None:
                        self._remember(w.key, w.state)
                    elif w.meta is not None:
                        self._meta[w.key] = w.meta
                    elif w.floor is not None:
                        self._cache.pop(w.key)
            elif done.unsure:  # the disk may hold some of its states: reads go there
                for w in done.batch:
                    self._cache.pop(w.key)
            with self._applied_cond:
                self._applied += 1
                self._applied_cond.notify()
            for w in done.batch:
                if w.future.done() or w.future.get_loop().is_closed():
                    continue
                if done.error is None:
                    w.future.set_result(None)
                else:
                    w.future.set_exception(RuntimeError(f"storage commit failed: {done.error}"))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._hand_over()  # writes submitted this turn still commit before the writer stops
        self._queue.put(None)
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
        self._apply_done()
        self._reader.close()
        self._conn.close()
