"""A simulated disk: durable only after a seeded fsync delay, and a crash loses the rest.

One `SimStorage` is one node's data directory; it outlives the node's processes. It keeps
two views of the acceptor state and the meta table:

- ``durable``: what survives a crash. A write joins it when its fsync lands.
- ``memory``: what the running process reads (``load``/``get_meta``), like the SQLite
  storage's cache. A crash resets it to ``durable``.

Writes land in submission order (one disk, one queue, like group commit): a write's fsync
lands at ``max(now + delay, previous landing)``. In the correct mode ``save`` returns when its
write has landed, and ``memory`` takes the write at that moment. In the ``no-fsync`` mutant
``save`` returns at once with ``memory`` updated, and durability lands later (or never, if a
crash comes first): docs/design.md invariant 1 broken on purpose.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

from paxoskv.core.acceptor import NO_FLOOR, AcceptorState, Floor, absent_state, floor_bucket

__all__ = ["DiskOptions", "SimStorage", "StorageCrashed", "StorageStats"]

_CLOCK_SLACK_S = 1e-9
"""asyncio fires a timer up to its clock resolution early; a write due within it has landed."""


class StorageCrashed(Exception):
    """The process using this storage crashed; it can no longer write."""


@dataclass(frozen=True, slots=True)
class DiskOptions:
    fsync_ms_min: float = 0.5
    fsync_ms_max: float = 10.0
    fsync_slow_probability: float = 0.02
    """A write whose fsync takes ``fsync_slow_ms`` more (a stalled disk)."""
    fsync_slow_ms: float = 40.0
    ack_before_fsync: bool = False
    """The ``no-fsync`` mutant: acknowledge writes before they are durable."""

    def __post_init__(self) -> None:
        if not 0 <= self.fsync_ms_min <= self.fsync_ms_max:
            raise ValueError("need 0 <= fsync_ms_min <= fsync_ms_max")
        if not 0 <= self.fsync_slow_probability <= 1:
            raise ValueError("fsync_slow_probability must be a probability")


@dataclass(slots=True)
class _Write:
    key: str | None
    state: AcceptorState | None
    meta: tuple[str, str] | None
    waiter: asyncio.Future[None] | None
    landing: float = 0.0
    collect: Floor | None = None
    """Remove ``key``'s row and make this its bucket's floor (docs/gc.md)."""
    buckets: list[tuple[int, Floor]] | None = None
    """Raise these buckets' floors (a rejoin copying its peers' floors)."""
    timer: asyncio.TimerHandle | None = None


@dataclass(slots=True)
class StorageStats:
    writes: int = 0
    writes_lost: int = 0
    """Writes submitted but not durable when the process crashed."""
    acked_writes_lost: int = 0
    """Of those, writes already acknowledged (only the ``no-fsync`` mutant has any)."""
    slow_fsyncs: int = 0


@dataclass(slots=True)
class _Tables:
    states: dict[str, AcceptorState] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)
    floors: dict[int, Floor] = field(default_factory=dict)

    def copy(self) -> _Tables:
        return _Tables(dict(self.states), dict(self.meta), dict(self.floors))

    def state(self, key: str) -> AcceptorState:
        found = self.states.get(key)
        if found is not None:
            return found
        return absent_state(self.floors.get(floor_bucket(key), NO_FLOOR))


class SimStorage:
    """The `Storage` protocol over a simulated disk; see the module docstring."""

    def __init__(self, rng: random.Random, options: DiskOptions) -> None:
        self._rng = rng
        self._options = options
        self._durable = _Tables()
        self._memory = _Tables()
        self._queue: list[_Write] = []
        self._last_landing = 0.0
        self._crashed = False
        self.stats = StorageStats()

    # -------------------------------------------------------------- the Storage protocol

    def load(self, key: str) -> AcceptorState:
        return self._memory.state(key)

    def peek(self, key: str) -> AcceptorState:
        return self._memory.state(key)

    def has_row(self, key: str) -> bool:
        return key in self._memory.states

    def floor(self, key: str) -> Floor:
        return self._memory.floors.get(floor_bucket(key), NO_FLOOR)

    def floor_page(self, after: int, limit: int) -> list[tuple[int, Floor]]:
        return sorted(item for item in self._memory.floors.items() if item[0] > after)[:limit]

    async def raise_floors(self, floors: list[tuple[int, Floor]]) -> None:
        await self._submit(_Write(None, None, None, None, buckets=list(floors)))

    async def collect(self, key: str, floor: Floor) -> None:
        await self._submit(_Write(key, None, None, None, collect=floor))

    def keys(self, prefix: str, after: str | None, limit: int) -> list[str]:
        found = sorted(k for k in self._memory.states
                       if k.startswith(prefix) and (after is None or k > after))
        return found[:limit]

    def tombstones(self, after: str | None, limit: int) -> list[str]:
        return sorted(k for k, state in self._memory.states.items()
                      if state.value.data is None and (after is None or k > after))[:limit]

    def expiring(self, after: str | None, limit: int) -> list[str]:
        return sorted(k for k, state in self._memory.states.items()
                      if state.value.expires_ms is not None
                      and (after is None or k > after))[:limit]

    def key_count(self) -> int:
        return len(self._memory.states)

    def get_meta(self, name: str) -> str | None:
        return self._memory.meta.get(name)

    async def save(self, key: str, state: AcceptorState) -> None:
        await self._submit(_Write(key, state, None, None))

    def save_soon(self, key: str, state: AcceptorState) -> asyncio.Future[None]:
        waiter = self._enqueue(_Write(key, state, None, None))
        if waiter is None:  # acknowledged before the fsync (a mutant's broken disk)
            waiter = asyncio.get_running_loop().create_future()
            waiter.set_result(None)
        return waiter

    async def set_meta(self, name: str, value: str) -> None:
        await self._submit(_Write(None, None, (name, value), None))

    async def close(self) -> None:
        return None

    # -------------------------------------------------------------- the simulated disk

    def crash(self) -> None:
        """The process died: unsynced writes are lost, and nobody waits for them any more."""
        for write in self._queue:
            self.stats.writes_lost += 1
            if write.waiter is None:
                self.stats.acked_writes_lost += 1
            if write.timer is not None:
                write.timer.cancel()
            if write.waiter is not None and not write.waiter.done():
                write.waiter.cancel()
        self._queue.clear()
        self._memory = self._durable.copy()
        self._crashed = True

    def restart(self) -> None:
        """A new process opens the data directory: it sees exactly the durable state."""
        assert not self._queue
        assert self._memory == self._durable
        self._crashed = False

    def wipe(self) -> None:
        """A new, empty data directory replaces this one (a lost disk); the process is down."""
        assert self._crashed and not self._queue
        self._durable = _Tables()
        self._memory = _Tables()

    def snapshot(self) -> _Tables:
        """A copy of the durable tables (of a stopped node: a copy of its data directory)."""
        assert self._crashed and not self._queue
        return self._durable.copy()

    def restore(self, copy: _Tables) -> None:
        """Put an old copy of the data directory back; the process is down."""
        assert self._crashed and not self._queue
        self._durable = copy.copy()
        self._memory = copy.copy()

    def durable_state(self, key: str) -> AcceptorState:
        return self._durable.state(key)

    async def _submit(self, write: _Write) -> None:
        waiter = self._enqueue(write)
        if waiter is not None:
            await waiter

    def _enqueue(self, write: _Write) -> asyncio.Future[None] | None:
        """Queue ``write`` for its simulated fsync; the future its writer waits for (None
        when the options acknowledge before the fsync)."""
        if self._crashed:
            raise StorageCrashed("write after crash")
        loop = asyncio.get_running_loop()
        options = self._options
        delay_s = self._rng.uniform(options.fsync_ms_min, options.fsync_ms_max) / 1000
        if self._rng.random() < options.fsync_slow_probability:
            delay_s += options.fsync_slow_ms / 1000
            self.stats.slow_fsyncs += 1
        landing = max(loop.time() + delay_s, self._last_landing)
        self._last_landing = landing
        self.stats.writes += 1
        if options.ack_before_fsync:
            self._apply(self._memory, write)
        else:
            write.waiter = loop.create_future()
        write.landing = landing
        write.timer = loop.call_at(landing, self._land)
        self._queue.append(write)
        return write.waiter

    def _land(self) -> None:
        """Land every queued write that is due, in submission order.

        Timers with equal deadlines may fire in any order, so each timer lands the whole
        due prefix of the queue rather than "its" write.
        """
        now = asyncio.get_running_loop().time()
        while self._queue and self._queue[0].landing <= now + _CLOCK_SLACK_S:
            write = self._queue.pop(0)
            self._apply(self._durable, write)
            if not self._options.ack_before_fsync:
                self._apply(self._memory, write)
            if write.waiter is not None and not write.waiter.done():
                write.waiter.set_result(None)

    @staticmethod
    def _apply(tables: _Tables, write: _Write) -> None:
        if write.meta is not None:
            name, value = write.meta
            tables.meta[name] = value
        elif write.buckets is not None:
            for bucket, given in write.buckets:
                tables.floors[bucket] = tables.floors.get(bucket, NO_FLOOR).merged(given)
        elif write.collect is not None:
            assert write.key is not None
            tables.states.pop(write.key, None)
            bucket = floor_bucket(write.key)
            tables.floors[bucket] = tables.floors.get(bucket, NO_FLOOR).merged(write.collect)
        else:
            assert write.key is not None and write.state is not None
            tables.states[write.key] = write.state
