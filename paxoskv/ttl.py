"""TTL keys: parsing a TTL, the node's wall clock, and the background sweeper.

Expiry itself is decided inside rounds (``core.register.expire``): a round whose
proposer's clock is past a value's ``expires_ms`` deletes it in the value it accepts, so
whoever is told "absent" because of a TTL is told so only after the tombstone is chosen.
The sweeper here only makes sure expired keys get deleted (and their storage reclaimed by
the tombstone rules) even when nobody touches them again. docs/ttl.md has the semantics.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from paxoskv.core.errors import NoQuorum, Overloaded, UnknownOutcome
from paxoskv.core.register import Delete, Expire

if TYPE_CHECKING:
    from paxoskv.node import Node

__all__ = ["TTL_MS_MAX", "TTL_MS_MIN", "Sweeper", "parse_ttl", "system_clock_ms"]

log = logging.getLogger(__name__)

TTL_MS_MIN: Final = 100
"""Shorter TTLs would be below the clock bound docs/ttl.md states: refused (400)."""
TTL_MS_MAX: Final = 365 * 24 * 3600 * 1000
"""A year; longer is almost certainly a unit mistake."""

_TTL = re.compile(r"([0-9]{1,12})(ms|s|m|h|d)?")
_UNIT_MS: Final = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_ttl(text: str) -> int:
    """``30s``, ``1500ms``, ``5m``, ``2h``, ``1d`` or bare seconds (``30``) as milliseconds;
    ValueError outside TTL_MS_MIN..TTL_MS_MAX or when malformed."""
    m = _TTL.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"bad TTL {text!r}: use e.g. 30s, 1500ms, 5m, 2h, 1d")
    ms = int(m.group(1)) * _UNIT_MS[m.group(2) or "s"]
    if not TTL_MS_MIN <= ms <= TTL_MS_MAX:
        raise ValueError(f"TTL {text!r} outside {TTL_MS_MIN} ms .. 365 days")
    return ms


def system_clock_ms() -> int:
    """The proposer's wall clock in Unix ms: what TTLs count on (docs/ttl.md: clocks)."""
    return time.time_ns() // 1_000_000


class Sweeper:
    """Deletes expired keys through the protocol, a bounded batch at a time.

    Each batch reads the next ``batch`` keys with a TTL of the local acceptor (its
    ``expiring`` listing, a cursor that wraps)
    and, for every one whose local copy looks expired and that this node sweeps
    (``Node.sweeps``: the preferred proposer among the live acceptors), runs
    ``Expire(version)``: a compare-and-delete that a round applies only if the
    version is still the one seen here and is expired at that round's time. A local copy
    may be stale (a renew this acceptor missed): the compare makes that harmless, the key
    stays. ``unconditional`` is the simulator's mutant ``ttl-delete-without-compare``.
    """

    def __init__(self, node: Node, clock_ms: Callable[[], int], batch: int,
                 unconditional: bool = False) -> None:
        self.node, self.clock_ms, self.batch = node, clock_ms, batch
        self.unconditional = unconditional
        self._after: str | None = None

    async def sweep_once(self) -> int:
        """One batch; returns how many keys it deleted."""
        node = self.node
        keys = node.storage.expiring(self._after, self.batch)
        self._after = keys[-1] if len(keys) == self.batch else None
        now = self.clock_ms()
        deleted = 0
        for key in keys:
            value = node.storage.peek(key).value
            if not value.expired(now) or not node.sweeps(key):
                continue
            change = Delete() if self.unconditional else Expire(value.version)
            try:
                outcome = await node.execute(key, change, forward=False)
            except (NoQuorum, UnknownOutcome, Overloaded) as exc:
                node.metrics.ttl_expired("failed")
                log.debug("ttl sweep of %r: %s", key, exc)
                continue
            if outcome.kind == "applied":
                deleted += 1
                node.metrics.ttl_expired("deleted")
            else:
                node.metrics.ttl_expired("kept")
        return deleted

    async def run(self, interval_s: float) -> None:
        """Sweep forever, one batch every ``interval_s`` (while a quorum is reachable)."""
        while True:
            await asyncio.sleep(interval_s)
            if self.node.machine.may_propose and self.node.quorum_reachable():
                await self.node._guarded("ttl sweep", self._sweep())

    async def _sweep(self) -> None:
        await self.sweep_once()
