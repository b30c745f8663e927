"""Learners and watchers: which chosen versions of keys this node has heard of, and who
wants to hear of them (docs/watch.md).

A proposer whose accept reached a quorum has a chosen value; it tells itself (``publish``)
and every peer that advertised watchers in its hello (a ``Learn`` message). Nothing here
touches acceptor state, and nothing here makes a read linearizable: an event only says
"this value was chosen at this version". A learn without its data (a large value) is
fetched with a linearizable read before anyone sees it; a version that cannot be confirmed
is skipped, never guessed.

A ``Watcher`` is one subscriber (an SSE stream, or a long-poll on one key). It keeps the
last version it was given of each key, so a key's versions reach it in increasing order
and at most once; it may skip versions (a register keeps no history). Its queue is
bounded: a subscriber that does not keep up is cut off (``SlowConsumer``) and must
reconnect and resume, rather than make the node buffer without end.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Final

from paxoskv.core.messages import Learn
from paxoskv.core.register import Outcome, Value

__all__ = [
    "LEARN_INLINE_MAX",
    "Event",
    "SlowConsumer",
    "StreamEnded",
    "TooManyWatchers",
    "WatchHub",
    "WatchLimits",
    "Watcher",
    "learn_of",
]

log = logging.getLogger(__name__)

LEARN_INLINE_MAX: Final = 4096
"""Values up to this many bytes travel inside a learn; a larger one is read by the learner
that wants it (most learns go to nodes whose watchers do not care about the key)."""


@dataclass(frozen=True, slots=True)
class Event:
    """``key`` had ``data`` chosen at ``version`` (``data`` None: deleted or absent)."""

    key: str
    version: int
    data: bytes | None


@dataclass(frozen=True, slots=True)
class WatchLimits:
    watchers_max: int = 256
    """Subscribers (streams and long-polls) at once on a node; beyond it, 503."""
    queue_max: int = 1024
    """Events waiting for one subscriber; one more and it is cut off (slow consumer)."""
    keys_max: int = 100_000
    """Keys one subscriber tracks versions of; beyond it, it is cut off too."""
    fetches_max: int = 64
    """Reads of large learned values in flight at once; a learn beyond it is skipped (the
    stream's periodic resync or the key's next change brings the key up to date)."""
    newest_max: int = 100_000
    """Keys whose newest learned version this node remembers (least recent dropped)."""


class TooManyWatchers(Exception):
    """The node already serves ``watchers_max`` subscribers."""


class SlowConsumer(Exception):
    """A subscriber's queue overflowed: its stream ends, and its client resumes."""


class StreamEnded(Exception):
    """The node is shutting down: its streams end at once, rather than holding the
    shutdown for its whole timeout, and their clients resume elsewhere with ``since``."""


class Watcher:
    """One subscriber: the keys under ``prefix`` (or the one key ``prefix`` with
    ``exact``), the last version of each that it was given, and its queue."""

    def __init__(self, prefix: str, exact: bool, since: Mapping[str, int],
                 limits: WatchLimits) -> None:
        self.prefix, self.exact, self._limits = prefix, exact, limits
        self.seen: dict[str, int] = dict(since)
        self._queue: deque[Event] = deque()
        self._wake = asyncio.Event()
        self.overflowed: str | None = None
        self.ended: str | None = None

    def matches(self, key: str) -> bool:
        return key == self.prefix if self.exact else key.startswith(self.prefix)

    def offer(self, event: Event) -> bool:
        """Queue ``event`` if it is newer than what this watcher has of its key."""
        if self.overflowed is not None or event.version <= self.seen.get(event.key, 0):
            return False
        if len(self._queue) >= self._limits.queue_max:
            return self._cut(f"more than {self._limits.queue_max} events waiting")
        if event.key not in self.seen and len(self.seen) >= self._limits.keys_max:
            return self._cut(f"more than {self._limits.keys_max} keys tracked")
        self.seen[event.key] = event.version
        self._queue.append(event)
        self._wake.set()
        return True

    def _cut(self, why: str) -> bool:
        self.overflowed = why
        self._queue.clear()
        self._wake.set()
        return False

    def end(self, why: str) -> None:
        """Wake the subscriber: once its queue is drained, ``next`` raises ``StreamEnded``."""
        self.ended = why
        self._wake.set()

    async def next(self, timeout: float) -> Event | None:
        """The next event, or None after ``timeout`` seconds; raises ``SlowConsumer``, or
        ``StreamEnded`` once ``end`` was called and nothing is left to hand out."""
        if not self._queue and self.overflowed is None and self.ended is None:
            self._wake.clear()
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                return None
        if self.overflowed is not None:
            raise SlowConsumer(self.overflowed)
        if self._queue:
            return self._queue.popleft()
        if self.ended is not None:
            raise StreamEnded(self.ended)
        return None

    def pending(self) -> int:
        return len(self._queue)


def learn_of(key: str, value: Value) -> Learn:
    """The learn message for ``value`` chosen at ``key``: the data only when small."""
    if value.data is None:
        return Learn(key, value.version, False, True)
    if len(value.data) <= LEARN_INLINE_MAX:
        return Learn(key, value.version, True, True, value.data)
    return Learn(key, value.version, True, False)


class WatchHub:
    """This node's subscribers, the newest chosen version it learned of each key, and the
    reads it runs to fetch learned values it was not sent."""

    def __init__(self, fetch: Callable[[str], Awaitable[Outcome]] | None = None,
                 limits: WatchLimits | None = None) -> None:
        self.limits = limits or WatchLimits()
        self._fetch = fetch
        self._watchers: set[Watcher] = set()
        self._fetching: dict[str, asyncio.Task[None]] = {}
        self._newest: OrderedDict[str, int] = OrderedDict()
        self.skipped = 0
        """Learned versions never delivered: their fetch failed or was over the bound."""
        self.ending: str | None = None
        """Set by ``end_all``: every subscriber, later ones too, is ended with this."""

    @property
    def has_watchers(self) -> bool:
        return bool(self._watchers)

    def __len__(self) -> int:
        return len(self._watchers)

    def subscribe(self, prefix: str, since: Mapping[str, int] | None = None,
                  exact: bool = False) -> Watcher:
        if len(self._watchers) >= self.limits.watchers_max:
            raise TooManyWatchers(f"this node serves {self.limits.watchers_max} watchers "
                                  "already")
        watcher = Watcher(prefix, exact, since or {}, self.limits)
        if self.ending is not None:
            watcher.end(self.ending)
        self._watchers.add(watcher)
        return watcher

    def end_all(self, why: str) -> None:
        """End every subscriber (the node is shutting down): streams close once their queued
        events are written, long-polls answer the current value."""
        self.ending = why
        for watcher in self._watchers:
            watcher.end(why)

    def unsubscribe(self, watcher: Watcher) -> None:
        self._watchers.discard(watcher)

    def interested(self, key: str) -> bool:
        return any(w.matches(key) for w in self._watchers)

    def newest(self, key: str) -> int | None:
        """The newest version of ``key`` this node learned was chosen (None: unknown)."""
        return self._newest.get(key)

    def _note(self, key: str, version: int) -> bool:
        """Remember ``version``; False if it is not newer than one already learned."""
        known = self._newest.get(key)
        if known is not None and known >= version:
            return False
        self._newest[key] = version
        self._newest.move_to_end(key)
        while len(self._newest) > self.limits.newest_max:
            self._newest.popitem(last=False)
        return True

    def publish(self, key: str, value: Value) -> None:
        """``value`` was chosen at ``key``: hand it to every watcher of the key."""
        if not self._watchers:
            return
        self._note(key, value.version)
        event = Event(key, value.version, value.data)
        for watcher in self._watchers:
            if watcher.matches(key):
                watcher.offer(event)

    def on_learn(self, msg: Learn) -> None:
        """A peer's learn: publish it, or fetch the value first when it was left out."""
        if not self._watchers or not self.interested(msg.key):
            return
        if msg.inline or not msg.exists:
            self.publish(msg.key, Value(msg.version, msg.data if msg.exists else None))
            return
        if not self._note(msg.key, msg.version) or msg.key in self._fetching:
            return  # a fetch in flight reads a version at least as new
        if self._fetch is None or len(self._fetching) >= self.limits.fetches_max:
            self.skipped += 1
            return
        self._fetching[msg.key] = asyncio.ensure_future(self._fetch_and_publish(msg.key))

    async def _fetch_and_publish(self, key: str) -> None:
        assert self._fetch is not None
        try:
            outcome = await self._fetch(key)
        except Exception as exc:  # not confirmed: skipped, never guessed
            self.skipped += 1
            log.debug("could not read learned key %r: %s", key, exc)
            return
        finally:
            self._fetching.pop(key, None)
        self._publish_fetched(key, outcome.value)

    def _publish_fetched(self, key: str, value: Value) -> None:
        self._note(key, value.version)
        event = Event(key, value.version, value.data)
        for watcher in self._watchers:
            if watcher.matches(key):
                watcher.offer(event)

    async def close(self) -> None:
        tasks = list(self._fetching.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
