"""Who this node is, and whether it may take part. Rule 1: every identity rule lives here.

Two questions decide whether a node may touch the protocol, and both are answered from
what its peers durably remember about it:

* **Identity** (every node): may this process issue ballots? Ballots are unique only if no
  other process ever used this node id with this incarnation, so a process waits until
  enough peers have confirmed its ``(data_id, incarnation, boot_id)`` is newer than
  anything they saw from its node id. ``verifying -> verified``, or ``refused``.
* **Acceptor mode** (acceptors only): may it answer prepares and accepts? An acceptor whose
  durable state was lost or rolled back would break quorum intersection (docs/design.md,
  invariants 4 and 6), so it refuses until a rejoin, itself durable at every step, has
  brought it back.

``TRANSITIONS`` is the whole acceptor state machine as data. ``IdentityMachine.apply`` is the
only way the mode changes; it returns the meta records that must be durable BEFORE the new
mode takes effect (like ``acceptor.Step.persist``). ``judge_hello`` is the receiving side:
what a peer concludes from another node's hello. No clock, no I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Final, Literal

__all__ = [
    "SERVES",
    "TRANSITIONS",
    "CaughtUp",
    "Confirmed",
    "Event",
    "FenceElapsed",
    "HelloClaim",
    "IdentityMachine",
    "IdentityState",
    "InUse",
    "LostState",
    "Mode",
    "PeerRecord",
    "RaiseIncarnation",
    "Refused",
    "Transition",
    "Verdict",
    "Welcome",
    "judge_frame",
    "judge_hello",
    "judge_rebuild_copy",
    "rebuild_copy_bound_s",
    "supersedes",
]

META_REJOIN: Final = "rejoin"
"""``"1"``: a rejoin is in progress; ``"rebuild"``: one after a quorum loss; ``""``: none.
Written before a rejoin does anything else, cleared as its last step."""
META_REFUSED: Final = "refused"
"""Why this data directory may never vote again without a rejoin; ``""`` when it may."""
META_VERIFIED: Final = "verified"
META_ALIVE_AT: Final = "alive_at"
"""Unix ms (the node's wall clock) at which this data directory last served as a normal
acceptor; refreshed about once a minute, never on the write path. A copy of the directory
holds the last value written before the copy, so it never makes a copy look younger."""

REBUILD_CLOCK_MARGIN_S: Final = 300.0
"""What a rebuild allows for wall clocks: the node that wrote ``alive_at`` and the one
rebuilding may disagree by this much (NTP keeps them within milliseconds)."""
REBUILD_RATE_MARGIN: Final = 1e-3
"""And for clock rates, per second of grace: the collector counts the grace on its own
monotonic clock (a quartz runs within 50 ppm; the simulator's nodes within 200)."""


class Mode(enum.Enum):
    NONE = "none"
    """Not an acceptor (a proposer-only front end)."""
    VERIFYING = "verifying"
    """Waiting until enough peers confirm this state is the newest they know of ours."""
    NORMAL = "normal"
    AMNESIA = "amnesia"
    """A peer remembers another data directory of this node: the state was lost."""
    FENCING = "fencing"
    """Rejoining: waiting out every round that may hold a promise of the lost state."""
    CATCHING_UP = "catching_up"
    """Rejoining: accept-only while an identity round runs on every key the others hold."""
    REBUILDING = "rebuilding"
    """Rejoining after a quorum of acceptors lost their disks: serve as an empty acceptor
    and catch up from whatever survived (README: two disks lost at once)."""
    REFUSED = "refused"
    """This state is older than one peers have seen (a restored copy) or is used by another
    process: never vote again without ``--rejoin``."""


Request = Literal["prepare", "accept", "promise_next", "query", "list"]
"""``promise_next``: the prepare an accept may carry (phase-1 skip); a mode that does not
serve it accepts such a value without promising."""

SERVES: Final[dict[Mode, frozenset[Request]]] = {
    Mode.NONE: frozenset(),
    Mode.VERIFYING: frozenset(),
    Mode.NORMAL: frozenset({"prepare", "accept", "promise_next", "query", "list"}),
    Mode.AMNESIA: frozenset(),
    Mode.FENCING: frozenset(),
    # Accepts only: prepare quorums come from the other acceptors, and each accept quorum
    # still intersects them; promising with an empty state could forget a lost promise.
    Mode.CATCHING_UP: frozenset({"accept"}),
    # The operator has declared the lost promises gone (a majority of disks is lost).
    Mode.REBUILDING: frozenset({"prepare", "accept", "promise_next"}),
    Mode.REFUSED: frozenset(),
}
"""Which peer requests each mode answers; everything else gets ``Unavailable``."""


# ---------------------------------------------------------------------------- events

@dataclass(frozen=True, slots=True)
class Confirmed:
    """Enough peers accepted this process's identity as the newest of its node id."""


@dataclass(frozen=True, slots=True)
class LostState:
    """A peer remembers another data directory of this node (amnesia)."""

    detail: str


@dataclass(frozen=True, slots=True)
class Refused:
    """A peer saw a newer state of this node, or the same incarnation from another process."""

    detail: str


@dataclass(frozen=True, slots=True)
class InUse:
    """A live process already holds this node id; retried, since it may be gone later."""

    detail: str


@dataclass(frozen=True, slots=True)
class FenceElapsed:
    """Every round that could hold a promise of the lost state has ended."""


@dataclass(frozen=True, slots=True)
class CaughtUp:
    """This acceptor holds the chosen value of every key the surviving acceptors list."""


Event = Confirmed | LostState | Refused | InUse | FenceElapsed | CaughtUp

TRANSITIONS: Final[dict[Mode, dict[type[Event], Mode]]] = {
    Mode.NONE: {Refused: Mode.NONE},
    Mode.VERIFYING: {Confirmed: Mode.NORMAL, LostState: Mode.AMNESIA, Refused: Mode.REFUSED},
    Mode.NORMAL: {LostState: Mode.AMNESIA, Refused: Mode.REFUSED},
    Mode.AMNESIA: {},
    Mode.FENCING: {FenceElapsed: Mode.CATCHING_UP, Refused: Mode.REFUSED},
    Mode.CATCHING_UP: {CaughtUp: Mode.NORMAL, Refused: Mode.REFUSED},
    Mode.REBUILDING: {CaughtUp: Mode.NORMAL, Refused: Mode.REFUSED},
    Mode.REFUSED: {},
}
"""Acceptor mode changes. An event missing from a mode's row leaves the mode unchanged
(``Confirmed`` while fencing, a late ``LostState`` while rejoining); ``FenceElapsed`` and
``CaughtUp`` anywhere but their own row are our bugs (``apply`` asserts)."""

_ONLY_IN: Final[dict[type[Event], frozenset[Mode]]] = {
    FenceElapsed: frozenset({Mode.FENCING}),
    CaughtUp: frozenset({Mode.CATCHING_UP, Mode.REBUILDING}),
}

IdentityState = Literal["verifying", "verified", "refused"]


@dataclass(frozen=True, slots=True)
class Transition:
    mode: Mode
    identity: IdentityState
    persist: tuple[tuple[str, str], ...] = ()
    """Meta records to make durable, in order, BEFORE ``mode`` takes effect."""


@dataclass(slots=True)
class IdentityMachine:
    """The node's identity and acceptor mode; changed only through ``apply``."""

    mode: Mode
    identity: IdentityState = "verifying"
    reason: str | None = None
    """Why the node is refused or in amnesia, for logs and ``/v1/status``."""
    rebuild: bool = False
    """This rejoin follows a quorum loss (``--rejoin-after-quorum-loss``)."""
    permanent: bool = field(default=False)

    def __post_init__(self) -> None:
        if self.mode in (Mode.AMNESIA, Mode.REFUSED):
            self.identity = "refused"
        if self.mode is Mode.REFUSED:
            self.permanent = True

    @staticmethod
    def start(is_acceptor: bool, rejoin_flag: bool, rebuild_flag: bool,
              meta_rejoin: str | None, meta_refused: str | None
              ) -> tuple[IdentityMachine, tuple[tuple[str, str], ...]]:
        """The mode a process starts in, and what to persist before anything else.

        A rejoin in progress (on disk) continues whether or not the flag is given again: a
        crash in the middle of a rejoin must not bring the node back as a normal acceptor
        with half its state. A refusal on disk holds until ``--rejoin``.
        """
        if not is_acceptor:
            return IdentityMachine(Mode.NONE), ()
        if rejoin_flag:
            marker = "rebuild" if rebuild_flag else "1"
            machine = IdentityMachine(Mode.FENCING, rebuild=rebuild_flag)
            return machine, ((META_REJOIN, marker), (META_REFUSED, ""))
        if meta_refused:  # a refusal met during a rejoin holds too, until --rejoin again
            return IdentityMachine(Mode.REFUSED, "refused", meta_refused, permanent=True), ()
        if meta_rejoin in ("1", "rebuild"):
            return IdentityMachine(Mode.FENCING, rebuild=meta_rejoin == "rebuild"), ()
        return IdentityMachine(Mode.VERIFYING), ()

    def apply(self, event: Event) -> Transition:
        """The transition ``event`` causes; the caller persists, then calls ``commit``."""
        only = _ONLY_IN.get(type(event))
        assert only is None or self.mode in only, f"{event!r} in mode {self.mode}"
        mode = TRANSITIONS[self.mode].get(type(event), self.mode)
        identity = self.identity
        persist: tuple[tuple[str, str], ...] = ()
        match event:
            case Confirmed():
                if mode not in (Mode.AMNESIA, Mode.REFUSED):
                    identity = "verified"
                if self.mode is Mode.VERIFYING and mode is Mode.NORMAL:
                    persist = ((META_VERIFIED, "1"),)
            case LostState():
                if mode is Mode.AMNESIA:
                    identity = "refused"
            case Refused(detail=detail):
                identity = "refused"
                if mode is Mode.REFUSED and self.mode is not Mode.REFUSED:
                    persist = ((META_REFUSED, detail),)  # the first reason is the cause
            case InUse():
                if identity != "verified":
                    identity = "refused"
            case FenceElapsed():
                if self.rebuild:
                    mode = Mode.REBUILDING
            case CaughtUp():
                # verified first: a crash between the two leaves the rejoin marker, so the
                # next start rejoins again rather than serving half caught up.
                persist = ((META_VERIFIED, "1"), (META_REJOIN, ""))
        if self.permanent:
            identity = "refused"
        return Transition(mode, identity, persist)

    def commit(self, event: Event, transition: Transition) -> None:
        """Take ``transition`` (its ``persist`` records are durable now)."""
        self.mode = transition.mode
        self.identity = transition.identity
        match event:
            case LostState(detail=detail) if transition.mode is Mode.AMNESIA:
                self.reason = detail
            case Refused(detail=detail):
                if not self.permanent:
                    self.reason = detail
                self.permanent = True
            case InUse(detail=detail) if transition.identity == "refused":
                self.reason = detail
            case Confirmed() if not self.permanent:
                self.reason = None
            case _:
                pass
        if self.mode in (Mode.AMNESIA, Mode.REFUSED):
            assert self.identity == "refused"

    @property
    def counts_as_acceptor(self) -> bool:
        """Whether this node's own acceptor counts towards its quorum and readiness."""
        return self.mode is Mode.NORMAL

    @property
    def may_propose(self) -> bool:
        return self.identity == "verified"

    @property
    def may_raise_incarnation(self) -> bool:
        """A new, never used incarnation keeps every later ballot unique whenever it is
        taken (a peer that never knew the old state may have confirmed us first)."""
        return not self.permanent

    @property
    def rejoining(self) -> bool:
        return self.mode in (Mode.FENCING, Mode.CATCHING_UP, Mode.REBUILDING)


# ---------------------------------------------------------------------------- peers' side

@dataclass(frozen=True, slots=True)
class PeerRecord:
    """What a node durably remembers about another node id's newest process."""

    data_id: str
    incarnation: int
    boot_id: str

    def to_meta(self) -> str:
        return f"{self.data_id} {self.incarnation} {self.boot_id}"

    @staticmethod
    def from_meta(text: str) -> PeerRecord | None:
        parts = text.split(" ")
        if len(parts) != 3 or not parts[1].isascii() or not parts[1].isdigit():
            return None
        return PeerRecord(parts[0], int(parts[1]), parts[2])


@dataclass(frozen=True, slots=True)
class HelloClaim:
    """What a hello says about its sender."""

    record: PeerRecord
    acceptor: bool
    rejoin: bool


@dataclass(frozen=True, slots=True)
class Welcome:
    """The sender is the newest process of its node id: remember it (durably) and answer."""

    record: PeerRecord
    changed: bool


@dataclass(frozen=True, slots=True)
class RaiseIncarnation:
    """The sender may take over this node id once its incarnation exceeds ``floor``."""

    floor: int


Verdict = Welcome | RaiseIncarnation | LostState | Refused | InUse


def judge_hello(known: PeerRecord | None, claim: HelloClaim, known_alive: bool) -> Verdict:
    """What a node concludes from another node's hello, given what it remembers of that id.

    ``known_alive``: the remembered process was heard from recently, so a different data
    directory claiming its id is a second process, not a replacement.
    """
    new = claim.record
    if known is None or new == known:
        return Welcome(new, known is None)
    if new.data_id == known.data_id:
        if new.incarnation > known.incarnation:
            return Welcome(new, True)  # a restart of the same data directory
        if known_alive:
            return InUse(f"node id in use by a live process (data {known.data_id}, "
                         f"incarnation {known.incarnation}) with this very data directory")
        if claim.rejoin:
            return RaiseIncarnation(known.incarnation)
        return Refused(
            f"incarnation {new.incarnation} of data {new.data_id} is not newer than "
            f"incarnation {known.incarnation} seen before: this data directory was restored "
            "from an older copy, or another process runs on it")
    if known_alive:
        return InUse(f"node id in use by a live process (data {known.data_id}, "
                     f"incarnation {known.incarnation})")
    if claim.acceptor and not claim.rejoin:
        return LostState(
            f"peers remember this node with state {known.data_id}, but this data directory "
            f"holds {new.data_id}: the state was lost or replaced")
    # A rejoining acceptor, or a proposer-only node that lost its directory (it held no
    # acceptor state): it may take over, with ballots above any the old state issued.
    if new.incarnation > known.incarnation:
        return Welcome(new, True)
    return RaiseIncarnation(known.incarnation)


def supersedes(known: PeerRecord | None, heard: PeerRecord) -> bool:
    """Whether a record another peer passed on is newer than ours for that node id.

    Every legitimate process of a node id has a higher incarnation than any before it (a
    restart bumps it, a rejoin raises it above what peers remember), so the highest one
    is the newest. Passing records on closes most of the gap a partition leaves: a peer
    that never heard a node's newer start still learns of it, and refuses an older copy.
    """
    return known is None or heard.incarnation > known.incarnation


def judge_frame(known: PeerRecord | None, sender: PeerRecord) -> bool:
    """Serve a peer's messages only from the process its hello made us remember: anything
    else may be a restored copy or a second process reusing ballots."""
    return known is not None and known == sender


def rebuild_copy_bound_s(grace_s: float) -> float:
    """How old (by ``alive_at``) a data directory may be for a rebuild after a quorum loss
    to trust it: the tombstone grace less the clock margins."""
    return grace_s - REBUILD_CLOCK_MARGIN_S - REBUILD_RATE_MARGIN * grace_s


def judge_rebuild_copy(has_rows: bool, alive_at_ms: int | None, now_ms: int,
                       grace_s: float) -> str | None:
    """Why a rebuild after a quorum loss must not run on this data directory, or None.

    A rebuilding acceptor answers prepares with its rows (``Mode.REBUILDING``), and the
    survivors hold only a bucket floor for a key deleted and collected after those rows
    were last current: its old row would then be the highest accepted value, and the key
    would come back (docs/gc.md). A collection needs every acceptor to have held the
    tombstone for a whole grace (``proposer.held_since_pin``), so a directory that served
    as a normal acceptor less than a grace ago holds the tombstone of every key collected
    since, or no row. The floors cannot tell stale rows apart: a live key of the same
    bucket may sit below its floor. A directory without rows has nothing to bring back;
    with a grace of 0 (collection off, on every member) nothing was collected.
    """
    if not has_rows or grace_s <= 0:
        return None
    bound = rebuild_copy_bound_s(grace_s)
    if alive_at_ms is None:
        return ("it holds rows but no record of when it last served as a normal acceptor "
                "(made by an older release, or never caught up)")
    age_s = (now_ms - alive_at_ms) / 1000
    if age_s < bound:
        return None
    return (f"it last served as a normal acceptor {age_s:.0f}s ago by this clock, and a "
            f"rebuild trusts only copies younger than {max(bound, 0.0):.0f}s "
            f"(--tombstone-grace {grace_s:g}s less a clock margin)")
