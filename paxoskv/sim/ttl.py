"""TTL in the simulator: skewed node clocks, and a workload whose invariants are TTL's.

Clocks. Each node's wall clock is the virtual time plus an offset and a drift, drawn per
node within ``CLOCK_OFFSET_S_MAX`` and ``CLOCK_DRIFT_MAX`` from a generator of its own (so
the rest of a seed's run is the same with or without TTL). Two clocks differ by at most
``2 * skew_bound(t)``: that is the "max skew" of docs/ttl.md.

Invariants (checked on what the workload's clients saw, on keys of their own, ``ttl*``;
the linearizability checker does not model TTL, so these keys stay out of its history):

1. Renewed, never expired. A key renewed by a call that began at ``s`` (and succeeded)
   must not read or renew as absent in a call that ended before ``s + TTL - 2*skew``:
   no proposer's clock can be past its expiry before then, so only a delete that ignores
   the renew (a sweeper without its compare) can remove it.
2. Absent stays absent. Once a read of a key said absent, a read that begins afterwards
   must not return the value (nobody writes the key again).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from paxoskv.core.errors import NoQuorum, Overloaded, UnknownOutcome
from paxoskv.core.register import Change, Outcome, Renew, Set

if TYPE_CHECKING:
    from paxoskv.sim.runner import _Simulation

__all__ = ["CLOCK_DRIFT_MAX", "CLOCK_OFFSET_S_MAX", "SimClock", "TtlWorkload", "skew_bound"]

CLOCK_OFFSET_S_MAX: Final = 0.1
"""A node clock's offset from true (virtual) time, at most (uniform in +-)."""
CLOCK_DRIFT_MAX: Final = 2e-4
"""A node clock's rate error, at most (200 ppm; a real quartz is within ~50)."""
EPOCH_S: Final = 1_700_000_000.0
"""What the wall clocks read at virtual time 0."""

TTL_S: Final = 1.5
RENEW_EVERY_S: Final = TTL_S / 3
SWEEP_INTERVAL_S: Final = 0.25
"""The nodes' sweeper interval in TTL runs (short, so that expiry is mostly the sweeper's)."""


def skew_bound(t: float) -> float:
    """How far any node clock may be from true time at virtual time ``t``."""
    return CLOCK_OFFSET_S_MAX + CLOCK_DRIFT_MAX * t


@dataclass(frozen=True, slots=True)
class SimClock:
    """One node's wall clock over the event loop's virtual time."""

    offset_s: float
    drift: float
    now: Callable[[], float]

    def __call__(self) -> int:
        return int((EPOCH_S + self.offset_s + self.now() * (1 + self.drift)) * 1000)

    @staticmethod
    def draw(rng: random.Random, now: Callable[[], float]) -> SimClock:
        return SimClock(rng.uniform(-CLOCK_OFFSET_S_MAX, CLOCK_OFFSET_S_MAX),
                        rng.uniform(-CLOCK_DRIFT_MAX, CLOCK_DRIFT_MAX), now)


RENEWERS: Final = 4
"""Keys renewed at once (one client each)."""
EXPIRERS: Final = 3
"""Short-lived keys read at once (one client each)."""


class TtlWorkload:
    """Renewers and an expirer, each on keys of its own, until the safety phase ends."""

    def __init__(self, sim: _Simulation, rng: random.Random) -> None:
        self.sim, self.rng = sim, rng
        self.failures: list[str] = []
        self.calls = 0

    def tasks(self) -> list[asyncio.Task[None]]:
        return [*(asyncio.ensure_future(self.renewer(str(i))) for i in range(RENEWERS)),
                *(asyncio.ensure_future(self.expirer(str(i))) for i in range(EXPIRERS))]

    def _fail(self, message: str) -> None:
        if len(self.failures) < 20:
            self.failures.append(f"ttl: {message}")

    async def _call(self, key: str, change: Change | None) -> tuple[str, Outcome | None]:
        """One call to a random live node: ("ok", outcome), ("failed"|"unknown", None)."""
        sim = self.sim
        up = [i for i in sim.ids if sim.hosts[i].up and sim.hosts[i].node is not None]
        if not up:
            await asyncio.sleep(0.05)
            return "failed", None
        host = sim.hosts[self.rng.choice(up)]
        node = host.node
        assert node is not None
        self.calls += 1
        coro = node.read(key) if change is None else node.execute(key, change)
        call = host.spawn(coro, report_errors=False)
        await asyncio.wait([call])
        status = "unknown"
        kind = "ttl_read" if change is None else "ttl_write"
        if not call.cancelled():
            exc = call.exception()
            if exc is None:
                sim.statuses[f"{kind}:ok"] += 1
                return "ok", call.result()
            if isinstance(exc, NoQuorum | Overloaded):
                status = "failed"
            elif not isinstance(exc, UnknownOutcome):
                raise exc
        sim.statuses[f"{kind}:{status}"] += 1
        return status, None

    async def renewer(self, name: str) -> None:
        """Invariant 1: write a key with a TTL, renew it every TTL/3 from random nodes."""
        loop = asyncio.get_running_loop()
        ttl_ms = int(TTL_S * 1000)
        n = 0
        while self.sim.in_safety_phase():
            key, n = f"ttl-renew-{name}-{n}", n + 1
            safe_until = -1.0
            for _ in range(1000):
                if not self.sim.in_safety_phase():
                    return
                start = loop.time()
                change: Change = Set(b"r", ttl_ms) if safe_until < 0 else Renew(ttl_ms)
                status, outcome = await self._call(key, change)
                end = loop.time()
                if status == "ok" and outcome is not None:
                    if outcome.kind == "applied":
                        safe_until = start + TTL_S - 2 * skew_bound(end + TTL_S)
                    elif outcome.kind == "absent":
                        if end < safe_until:
                            self._fail(f"{key!r} renewed at or after {safe_until - TTL_S:.3f}"
                                       f" (+skew) read as expired at {end:.3f}, "
                                       f"{safe_until - end:.3f}s before it could expire")
                        break  # it expired (renews were late): a new key
                if self.rng.random() < 0.5:  # and a read in between, from another node
                    status, outcome = await self._call(key, None)
                    end = loop.time()
                    if status == "ok" and outcome is not None and not outcome.value.exists \
                            and safe_until >= 0 and end < safe_until:
                        self._fail(f"{key!r} read as absent at {end:.3f}, "
                                   f"{safe_until - end:.3f}s before it could expire")
                        break
                await asyncio.sleep(max(0.0, RENEW_EVERY_S - (loop.time() - start)))

    async def expirer(self, name: str) -> None:
        """Invariant 2: write a key with a short TTL, read it from random nodes (whose
        clocks differ) until it reads absent, then a few more times."""
        loop = asyncio.get_running_loop()
        ttl_ms = int(TTL_S * 1000) // 2
        n = 0
        while self.sim.in_safety_phase():
            key, n = f"ttl-expire-{name}-{n}", n + 1
            status, outcome = await self._call(key, Set(b"e", ttl_ms))
            if status != "ok":
                # A write of unknown fate could land later: another key, after a pause (a
                # node may fail a call at once, and virtual time moves only by sleeping).
                await asyncio.sleep(self.rng.uniform(0.05, 0.3))
                continue
            absent_at: float | None = None
            after = 0
            for _ in range(200):
                if after >= 6 or not self.sim.in_safety_phase():
                    break
                await asyncio.sleep(self.rng.uniform(0.0, TTL_S / 6))
                start = loop.time()
                status, outcome = await self._call(key, None)
                if status != "ok" or outcome is None:
                    continue
                if absent_at is not None:
                    after += 1
                    if outcome.value.exists and start > absent_at:
                        self._fail(f"{key!r} read back (version {outcome.value.version}) at "
                                   f"{start:.3f}, after a read said absent at {absent_at:.3f}")
                elif not outcome.value.exists:
                    absent_at = loop.time()
