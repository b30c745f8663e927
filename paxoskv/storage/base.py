"""The storage interface node.py depends on; the server and the simulator each implement it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from paxoskv.core.acceptor import AcceptorState, Floor

__all__ = ["CommitObserver", "DiskUsage", "NodeIdentity", "Storage"]

CommitObserver = Callable[[int, float], None]
"""Called with (keys in the batch, seconds the commit and fsync took)."""


@dataclass(frozen=True, slots=True)
class DiskUsage:
    """What the data directory takes and what its volume has left, for the metrics: a
    volume that fills up stops every commit, and every replica fills at the same pace."""

    data_dir_bytes: int
    """Allocated bytes of every file under the data directory (db, -wal, -shm, others)."""
    volume_free_bytes: int
    """Bytes an unprivileged process may still write on the directory's filesystem."""
    volume_size_bytes: int
    freelist_bytes: int
    """Unused pages inside the database file: what a vacuum could give back."""


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    """Who this data directory belongs to.

    ``data_id`` is random, made once when the directory is first initialised: a peer that
    remembers another ``data_id`` for our node id knows we lost our state (amnesia).
    ``incarnation`` goes up by one, durably, at every start, so ballots never repeat.
    ``fresh`` is true when this start created the directory's state.
    """

    cluster_id: str
    node_id: int
    data_id: str
    incarnation: int
    fresh: bool


class Storage(Protocol):
    def load(self, key: str) -> AcceptorState:
        """The durable state of ``key``; never blocks. A key without a row reads as
        ``absent_state`` of its bucket's floor (EMPTY_STATE where nothing was collected)."""
        ...

    def peek(self, key: str) -> AcceptorState:
        """What ``load`` returns, without making ``key`` a recently used one (sweeps and
        scans: a cache of states in use must not fill with every key they pass)."""
        ...

    def has_row(self, key: str) -> bool:
        """Whether ``key`` has a row (``load`` of a key without one is its floor's state)."""
        ...

    def floor(self, key: str) -> Floor:
        """The floor of ``key``'s bucket (docs/gc.md); NO_FLOOR if none was raised."""
        ...

    def floor_page(self, after: int, limit: int) -> list[tuple[int, Floor]]:
        """Up to ``limit`` raised floors of buckets above ``after``, in bucket order."""
        ...

    async def raise_floors(self, floors: list[tuple[int, Floor]]) -> None:
        """Raise each bucket's floor to at least the one given (each part the higher), in
        one durable step; return once that is durable. A rejoining acceptor copies its
        peers' floors so (docs/gc.md)."""
        ...

    async def collect(self, key: str, floor: Floor) -> None:
        """Remove ``key``'s row and make ``floor`` its bucket's floor, in one durable step
        (docs/gc.md); return once that is durable."""
        ...

    async def save(self, key: str, state: AcceptorState) -> None:
        """Return only once ``state`` is durable (fsync'd)."""
        ...

    def save_soon(self, key: str, state: AcceptorState) -> asyncio.Future[None]:
        """``save`` without a coroutine: the write is submitted now, and the future
        completes only once ``state`` is durable (the acceptor's hot path, which answers
        without a task per message)."""
        ...

    def keys(self, prefix: str, after: str | None, limit: int) -> list[str]:
        """Up to ``limit`` keys under ``prefix`` that sort after ``after``, in key order
        (tombstones included): listings and sweeps page through this, never load all."""
        ...

    def tombstones(self, after: str | None, limit: int) -> list[str]:
        """``keys`` of the rows that hold no value (tombstones, and rows with only a
        promise), in key order: the collector's candidates. The listing may be a batch
        ahead of ``load``: a sweep decides on what ``peek`` returns, not on this."""
        ...

    def expiring(self, after: str | None, limit: int) -> list[str]:
        """``keys`` of the rows whose value has a TTL, in key order: the TTL sweeper's
        candidates (it decides on ``peek``, as above)."""
        ...

    def key_count(self) -> int: ...

    def get_meta(self, name: str) -> str | None: ...

    async def set_meta(self, name: str, value: str) -> None:
        """Durable on return, like ``save``."""
        ...

    async def close(self) -> None: ...
