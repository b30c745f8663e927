"""``paxoskv backup`` and ``paxoskv restore``: every live key to a file and back.

A backup pages through range reads (``GET /v1/kv?values=true``, each key read
linearizably at its own time), so it is NOT a point-in-time snapshot across keys: a key
written while the backup runs may be in it at its old or new value, or (if created behind
the cursor) not at all. docs/backup.md has the format and the guarantees.

The file is JSON lines, UTF-8, one object per line::

    {"format": "paxoskv-backup", "version": 1, "cluster_id": "paxoskv" | null,
     "created": "2026-12-01T06:00:00Z", "prefix": ""}
    {"key": "app/a", "version": 3, "value_base64": "aGVsbG8="}
    ...
    {"end": true, "records": 2, "sha256": "<hex>"}

The trailer's ``sha256`` is of every byte before the trailer line (header and records);
a file without a trailer is an unfinished backup (``--resume`` continues it). Keys come in
key order, so the last complete record names where to continue.

Restore reads and checks the whole file before it writes anything, then creates each key
(``If-None-Match: *``, never overwriting) with an Idempotency-Key derived from the file's
checksum and the key, so a retried or re-run restore applies each write at most once.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import os
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final

import orjson

from paxoskv.client import (
    AsyncClient,
    Forbidden,
    PaxosKVError,
    PreconditionFailed,
)
from paxoskv.ttl import TTL_MS_MIN

__all__ = ["FORMAT", "FORMAT_VERSION", "BackupError", "BackupFileError", "BackupInfo",
           "BackupStats", "Progress", "RestoreStats", "backup", "cursor_after", "read_backup",
           "restore"]

FORMAT: Final = "paxoskv-backup"
FORMAT_VERSION: Final = 1
PAGE_KEYS: Final = 500
"""Keys asked per range read (the server may answer fewer: its byte and time bounds)."""
COUNT_PAGE_KEYS: Final = 10_000
PAGES_MAX: Final = 10_000_000
"""Range-read pages one backup asks for at most: far more than any cluster holds."""
RESTORE_AT_ONCE: Final = 32
"""Writes a restore keeps in flight: enough to hide round trips, few enough to leave the
cluster room for other clients."""
LINE_BYTES_MAX: Final = 8 * 1024 * 1024
"""A longer line is refused as corrupt: a 1 MiB value is about 1.4 MB in base64, and the
server's value bound is at most 64 MiB only when raised on purpose."""


class BackupError(Exception):
    """What went wrong, in one sentence for the user (never a traceback)."""


class BackupFileError(BackupError):
    """The backup file is unreadable, truncated or corrupted."""


def cursor_after(key: str) -> str:
    """The API's cursor that continues a listing after ``key`` (its ``next`` is the last
    key returned, URL-safe base64 without padding)."""
    return base64.urlsafe_b64encode(key.encode("utf-8")).decode("ascii").rstrip("=")


def _now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Progress:
    """Progress lines on ``stream`` (stderr), at most one per ``interval_s``: keys done,
    keys a second, and the time left when the total is known."""

    what: str
    total: int | None = None
    stream: IO[str] | None = None
    interval_s: float = 1.0
    done: int = 0
    started: float = field(default_factory=time.monotonic)
    _shown: float = 0.0

    def add(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._shown >= self.interval_s:
            self._shown = now
            self.show()

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = self.done / elapsed
        text = f"{self.what}: {self.done}"
        if self.total is not None:
            text += f"/{self.total}"
        text += f" keys, {rate:.0f} keys/s"
        if self.total is not None and rate > 0 and self.done <= self.total:
            text += f", ETA {(self.total - self.done) / rate:.0f}s"
        return text

    def show(self) -> None:
        if self.stream is not None:
            print(self.line(), file=self.stream, flush=True)


# ------------------------------------------------------------------ the file

@dataclass(frozen=True, slots=True)
class BackupInfo:
    header: dict[str, Any]
    records: int
    sha256: str
    complete: bool
    """A trailer ends the file and its checksum and count match."""
    last_key: str | None
    good_bytes: int
    """Bytes up to the end of the last complete record (where a resumed backup appends)."""


Record = tuple[str, int, bytes, int | None]
"""key, version, value, and a TTL key's ``expires_ms`` (None: no expiry)."""


def _record(line: bytes, where: str) -> Record:
    try:
        doc = orjson.loads(line)
        key, version, value = doc["key"], doc["version"], doc["value_base64"]
        expires = doc.get("expires_ms")
        if not isinstance(key, str) or not key or isinstance(version, bool) \
                or not isinstance(version, int) or not isinstance(value, str) \
                or (expires is not None and (not isinstance(expires, int)
                                             or isinstance(expires, bool))):
            raise TypeError("key, version, value_base64 or expires_ms has the wrong type")
        return key, version, base64.b64decode(value, validate=True), expires
    except (orjson.JSONDecodeError, KeyError, TypeError, binascii.Error, ValueError) as exc:
        raise BackupFileError(f"{where}: not a backup record ({exc})") from None


def _header(line: bytes, path: Path) -> dict[str, Any]:
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError:
        doc = None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise BackupFileError(f"{path}: not a paxoskv backup (its first line is not a "
                              f"{FORMAT} header)")
    if doc.get("version") != FORMAT_VERSION:
        raise BackupFileError(f"{path}: backup format version {doc.get('version')!r}; this "
                              f"paxoskv reads version {FORMAT_VERSION}")
    return doc


def _lines(f: IO[bytes], path: Path) -> Iterator[tuple[int, bytes, bool]]:
    """(line number, line without its newline, whether it ended with one)."""
    for number in range(1, sys.maxsize):
        line = f.readline(LINE_BYTES_MAX + 1)
        if not line:
            return
        if len(line) > LINE_BYTES_MAX:
            raise BackupFileError(f"{path}: line {number} is longer than {LINE_BYTES_MAX} "
                                  "bytes: the file is corrupted")
        ended = line.endswith(b"\n")
        yield number, line.rstrip(b"\n"), ended


def scan(path: Path, records: list[tuple[str, int, bytes]] | None = None,
         resumable: bool = False) -> BackupInfo:
    """Read the whole file and check it; ``records``, if given, receives every record.

    ``resumable``: a missing trailer (or a torn last line) is allowed and reported as
    ``complete=False``; otherwise it is a ``BackupFileError`` saying so."""
    digest = hashlib.sha256()
    count = 0
    last_key: str | None = None
    good = 0
    header: dict[str, Any] | None = None
    trailer: dict[str, Any] | None = None
    try:
        f = path.open("rb")
    except OSError as exc:
        raise BackupFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    with f:
        for number, line, ended in _lines(f, path):
            where = f"{path}: line {number}"
            if trailer is not None:
                raise BackupFileError(f"{where}: data after the trailer: the file is "
                                      "corrupted")
            if not ended:  # a torn last line: the backup stopped while writing it
                if resumable:
                    break
                raise BackupFileError(f"{where}: the file ends in the middle of a line: it "
                                      "is truncated (an unfinished or cut-off backup)")
            if header is None:
                header = _header(line, path)
            elif line.startswith(b'{"end"'):
                try:
                    trailer = orjson.loads(line)
                except orjson.JSONDecodeError:
                    raise BackupFileError(f"{where}: the trailer is not JSON: the file is "
                                          "corrupted") from None
                if not isinstance(trailer, dict):
                    raise BackupFileError(f"{where}: the trailer is not an object")
                continue
            else:
                key, version, value, _ = _record(line, where)
                if last_key is not None and key <= last_key:
                    raise BackupFileError(f"{where}: key {key!r} is out of order: the file "
                                          "is corrupted")
                last_key = key
                count += 1
                if records is not None:
                    records.append((key, version, value))
            digest.update(line + b"\n")
            good += len(line) + 1
    if header is None:
        raise BackupFileError(f"{path}: empty, or no complete header line: not a backup")
    sha = digest.hexdigest()
    if trailer is None:
        if resumable:
            return BackupInfo(header, count, sha, False, last_key, good)
        raise BackupFileError(f"{path}: no trailer after {count} record(s): the backup is "
                              "truncated or did not finish (paxoskv backup --resume "
                              "continues it)")
    if trailer.get("sha256") != sha:
        raise BackupFileError(f"{path}: checksum mismatch (trailer sha256 "
                              f"{str(trailer.get('sha256'))[:16]}..., content {sha[:16]}...): "
                              "the file is corrupted")
    if trailer.get("records") != count:
        raise BackupFileError(f"{path}: the trailer counts {trailer.get('records')!r} "
                              f"records, the file holds {count}: the file is corrupted")
    return BackupInfo(header, count, sha, True, last_key, good)


def read_backup(path: Path) -> BackupInfo:
    """Check a finished backup file (header, records, trailer, checksum)."""
    return scan(path)


def _iter_records(path: Path) -> Iterator[Record]:
    """The records of a file already checked by ``scan`` (read again: memory stays one
    line, whatever the file's size)."""
    with path.open("rb") as f:
        f.readline()
        for number, line, _ in _lines(f, path):
            if line.startswith(b'{"end"'):
                return
            yield _record(line, f"{path}: line {number + 1}")


# ------------------------------------------------------------------ backup

@dataclass(frozen=True, slots=True)
class BackupStats:
    records: int
    """Records in the finished file (those of a resumed run's earlier part included)."""
    written: int
    """Records this run wrote."""
    sha256: str
    seconds: float


async def _cluster_id(client: AsyncClient) -> str | None:
    """The cluster id from /v1/status, where the token may see it (admin)."""
    try:
        doc = (await client.status()).json()
    except (PaxosKVError, ValueError):
        return None
    value = doc.get("cluster_id") if isinstance(doc, dict) else None
    return value if isinstance(value, str) else None


async def count_keys(client: AsyncClient, prefix: str) -> int:
    """Live keys under ``prefix`` now (a listing pass: keys only, cheap)."""
    total = 0
    cursor: str | None = None
    for _ in range(PAGES_MAX):
        doc = (await client.list(prefix, COUNT_PAGE_KEYS, cursor)).json()
        total += len(doc["keys"])
        cursor = doc["next"]
        if cursor is None:
            break
    return total


async def _pages(client: AsyncClient, prefix: str, cursor: str | None
                 ) -> AsyncIterator[list[Record]]:
    for _ in range(PAGES_MAX):
        page = await client.range(prefix, PAGE_KEYS, cursor)
        yield [(i.key, i.version, i.value, i.expires_ms) for i in page.items]
        if page.next is None:
            return
        cursor = page.next


def _line(doc: dict[str, Any]) -> bytes:
    return orjson.dumps(doc) + b"\n"


def _record_doc(key: str, version: int, data: bytes, expires_ms: int | None
                ) -> dict[str, Any]:
    doc: dict[str, Any] = {"key": key, "version": version,
                           "value_base64": base64.b64encode(data).decode("ascii")}
    if expires_ms is not None:  # a TTL key: restore gives it what is left of its TTL
        doc["expires_ms"] = expires_ms
    return doc


async def backup(client: AsyncClient, out: Path, prefix: str = "", resume: bool = False,
                 count: bool = True, progress_stream: IO[str] | None = None) -> BackupStats:
    """Write every live key under ``prefix`` to ``out``. ``resume``: continue an unfinished
    ``out`` after its last complete record; ``count``: a listing pass first, for an ETA."""
    started = time.monotonic()
    digest = hashlib.sha256()
    records = 0
    cursor: str | None = None
    if resume and out.exists():
        info = scan(out, resumable=True)
        if info.complete:
            raise BackupError(f"{out} is a finished backup ({info.records} records); nothing "
                              "to resume")
        if info.header.get("prefix", "") != prefix:
            raise BackupError(f"{out} is a backup of prefix {info.header.get('prefix')!r}, "
                              f"not {prefix!r}")
        with out.open("rb") as f:  # the checksum so far: of the part that is kept
            digest.update(f.read(info.good_bytes))
        records = info.records
        cursor = cursor_after(info.last_key) if info.last_key is not None else None
        mode = "r+b"
        keep = info.good_bytes
    elif out.exists() and not resume:
        raise BackupError(f"{out} exists: remove it, or pass --resume to continue it")
    else:
        mode, keep = "wb", 0
    total = await count_keys(client, prefix) if count else None
    progress = Progress("backup", total, progress_stream)
    progress.done = records
    written = 0
    try:
        sink = out.open(mode)
    except OSError as exc:
        raise BackupError(f"cannot write {out}: {exc.strerror or exc}") from None
    with sink:
        sink.seek(keep)
        sink.truncate()
        if keep == 0:
            header = _line({"format": FORMAT, "version": FORMAT_VERSION,
                            "cluster_id": await _cluster_id(client), "created": _now_text(),
                            "prefix": prefix})
            digest.update(header)
            sink.write(header)
        async for page in _pages(client, prefix, cursor):
            chunk = b"".join(_line(_record_doc(k, v, d, e)) for k, v, d, e in page)
            digest.update(chunk)
            sink.write(chunk)
            sink.flush()  # a resumed run trusts only whole lines on disk
            records += len(page)
            written += len(page)
            progress.add(len(page))
        sha = digest.hexdigest()
        sink.write(_line({"end": True, "records": records, "sha256": sha}))
        sink.flush()
        os.fsync(sink.fileno())
    progress.show()
    return BackupStats(records, written, sha, time.monotonic() - started)


# ------------------------------------------------------------------ restore

@dataclass
class RestoreStats:
    written: int = 0
    skipped: int = 0
    """Keys that already existed (restore never overwrites)."""
    replayed: int = 0
    """Keys an earlier run of this restore (same file) wrote: its write's outcome was
    replayed (Idempotency-Key), nothing was written again. Not in ``written``."""
    failed: int = 0
    expired: int = 0
    """TTL keys whose expiry passed between the backup and the restore: not written."""
    errors: list[str] = field(default_factory=list)
    """The first few failures, for the report."""


ERRORS_KEPT = 10


def _idempotency_key(sha: str, key: str) -> str:
    """Same file, same key: same Idempotency-Key, so a re-run restore within the server's
    idempotency window applies each write at most once."""
    return "rst-" + hashlib.sha256(f"{sha}\0{key}".encode()).hexdigest()[:48]


async def existing_keys(client: AsyncClient, prefix: str, limit: int = 5) -> list[str]:
    """A few live keys under ``prefix`` (a cluster-wide check when ``prefix`` is empty)."""
    doc = (await client.list(prefix, limit)).json()
    keys = doc["keys"]
    return [k for k in keys if isinstance(k, str)]


async def restore(client: AsyncClient, path: Path, force: bool = False,
                  at_once: int = RESTORE_AT_ONCE,
                  progress_stream: IO[str] | None = None) -> RestoreStats:
    """Check ``path`` whole, then create each of its keys. Refuses (``BackupError``) a
    cluster that already holds keys under the backup's prefix unless ``force``; existing
    keys are then skipped, never overwritten."""
    info = read_backup(path)
    prefix = str(info.header.get("prefix", ""))
    try:
        found = await existing_keys(client, prefix)
    except Forbidden:
        raise BackupError(f"the token may not list prefix {prefix!r}, so the cluster cannot "
                          "be checked for keys before restoring") from None
    if found and not force:
        shown = ", ".join(repr(k) for k in found)
        raise BackupError(f"the cluster is not empty: it holds keys under {prefix!r} (first "
                          f"{len(found)}: {shown}{', ...' if len(found) >= 5 else ''}); "
                          "--force restores anyway, creating only the keys that are absent "
                          "(existing keys are skipped, never overwritten)")
    stats = RestoreStats()
    progress = Progress("restore", info.records, progress_stream)
    queue: asyncio.Queue[tuple[str, bytes, int | None] | None] = \
        asyncio.Queue(maxsize=at_once * 2)

    async def worker() -> None:
        while (item := await queue.get()) is not None:
            key, value, expires_ms = item
            ttl: str | None = None
            if expires_ms is not None:
                left_ms = expires_ms - time.time_ns() // 1_000_000
                if left_ms <= 0:  # it expired since the backup: it is absent, as it would be
                    stats.expired += 1
                    progress.add()
                    continue
                ttl = f"{max(left_ms, TTL_MS_MIN)}ms"
            try:
                # A TTL is part of what an Idempotency-Key promises to repeat, and what is
                # left of one differs per run: a re-run's TTL key gets a key of its own
                # (it finds the key created, 412, and counts it skipped)
                idem = _idempotency_key(info.sha256, key if ttl is None else f"{key}\0{ttl}")
                result = await client.put(key, value, if_none_match=True,
                                          idempotency_key=idem, ttl=ttl)
                if result.replayed:
                    stats.replayed += 1
                else:
                    stats.written += 1
            except PreconditionFailed:
                stats.skipped += 1
            except PaxosKVError as exc:
                stats.failed += 1
                if len(stats.errors) < ERRORS_KEPT:
                    stats.errors.append(f"{key!r}: {exc}")
            progress.add()

    workers = [asyncio.create_task(worker()) for _ in range(at_once)]
    try:
        for key, _version, value, expires_ms in _iter_records(path):
            await queue.put((key, value, expires_ms))
        for _ in workers:
            await queue.put(None)
        await asyncio.gather(*workers)
    finally:
        for w in workers:
            w.cancel()
    progress.show()
    return stats
