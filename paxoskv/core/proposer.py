"""The proposer's side of one round, and of one fast read, as state machines.

A round is fed replies one at a time and answers with what to do next. It never sends or
waits: the node does. Retry policy (ballot fast-forward, jittered backoff) lives in
``ballots_after`` and the node; what a retry may safely assume about the previous attempt
lives in ``Previous`` (see ``ProposerRound.__init__``).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from paxoskv.core.acceptor import AcceptorState
from paxoskv.core.ballot import Ballot
from paxoskv.core.messages import (
    Accept,
    Accepted,
    Nack,
    Prepare,
    Promise,
    Query,
    QueryReply,
    Reply,
    Unavailable,
)
from paxoskv.core.quorum import QuorumConfig
from paxoskv.core.register import Change, Outcome, Read, Value, apply_change

__all__ = [
    "Abort",
    "Committed",
    "FailureKind",
    "FastBase",
    "Pending",
    "Phase",
    "Prepared",
    "ProposerRound",
    "QueryRound",
    "RequestProgress",
    "RoundStep",
    "SendAccept",
    "Unknown",
    "Wait",
    "choose_value",
    "classify_failure",
    "fast_base",
    "held_since_pin",
    "next_ballot",
    "prepared_after",
]


class Phase(enum.Enum):
    PREPARE = "prepare"
    ACCEPT = "accept"
    DONE = "done"


@dataclass(frozen=True, slots=True)
class Wait:
    """Nothing to do until more replies arrive."""


@dataclass(frozen=True, slots=True)
class SendAccept:
    accept: Accept


@dataclass(frozen=True, slots=True)
class Committed:
    outcome: Outcome


@dataclass(frozen=True, slots=True)
class Abort:
    """This attempt cannot reach a quorum; retry above ``ballot_seen``."""

    phase: Phase
    ballot_seen: Ballot
    conflict: bool
    """True when an acceptor refused us for a higher ballot (contention), false when
    acceptors were merely unavailable."""


@dataclass(frozen=True, slots=True)
class Unknown:
    """An earlier attempt of this request may have taken effect, and the newest value has
    forgotten which requests it holds: whether the change took effect cannot be told
    (docs/design.md invariant 5)."""


RoundStep = Wait | SendAccept | Committed | Abort | Unknown


@dataclass(frozen=True, slots=True)
class Prepared:
    """Phase 1 of ``ballot`` is already done for one key: a quorum promised it when it
    accepted ``value`` (which is therefore chosen), and none of those acceptors had
    accepted anything newer. A round at ``ballot`` may start with its accept (phase-1 skip,
    docs/design.md invariant 8)."""

    ballot: Ballot
    value: Value


@dataclass(frozen=True, slots=True)
class FastBase:
    """What this node's own acceptor holds for a key: ``value`` accepted at ``ballot`` and
    no promise above ``ballot.successor()``. A fast round builds on it at that successor,
    with no phase 1 and no forward hop, and commits only if a fast quorum of acceptors
    holds exactly the same (docs/design.md invariant 9)."""

    ballot: Ballot
    value: Value


def fast_base(state: AcceptorState, config: QuorumConfig) -> FastBase | None:
    """What a fast round may build on, given this node's own acceptor state for the key, or
    None (a classic round): its accepted value, unless a promise above the base's successor
    would refuse the round anyway, or the base is itself a fast ballot that a fast quorum
    smaller than every acceptor may have decided for another value.

    The second rule is what keeps a chosen value: with five acceptors, four may choose `u`
    at a fast ballot `b` while the fifth holds the losing `v`; a fast round of the fifth's
    node at `b.successor()` on `v` is accepted by its own acceptor (the digest is its own),
    and a classic round whose promises include that acceptor then sees one value at the
    highest ballot and picks it: `u` is lost (found by review; tests/core/test_fast.py). With
    `q_f` = n a value chosen at a fast `b` is held by every acceptor, so any base is one.
    """
    if state.ballot_promised > state.ballot_accepted.successor():
        return None
    if state.ballot_accepted.is_fast and config.fast < len(config.acceptors):
        return None
    return FastBase(state.ballot_accepted, state.value)


@dataclass(slots=True, eq=False)
class Pending:
    """One client request waiting for its key's next round; rounds apply several in order
    (each caller gets its own outcome), so concurrent changes to a key share one round."""

    change: Change
    request_id: str | None = None
    progress: RequestProgress = field(default_factory=lambda: RequestProgress())
    abandoned: bool = False
    """Its caller has been answered (timed out): no accept may apply it any more."""


class ProposerRound:
    """One attempt of one key's pending changes: prepare -> quorum -> accept -> quorum
    (or, with ``prepared``, accept -> quorum)."""

    def __init__(
        self,
        key: str,
        ballot: Ballot,
        change: Change,
        config: QuorumConfig,
        request_id: str | None = None,
        sent_from_version: int | None = None,
        next_ballot: Ballot | None = None,
        prepared: Prepared | None = None,
        items: Sequence[Pending] | None = None,
        fast: FastBase | None = None,
        clock_ms: Callable[[], int] | None = None,
        accept_config: QuorumConfig | None = None,
    ) -> None:
        """``request_id`` identifies the client request across retries (and across client
        retries with an Idempotency-Key). ``sent_from_version``: an earlier attempt sent an
        accept applying the change, which may have taken effect; had it, the version it
        produced would be at least this (the lowest new version any attempt proposed).
        ``next_ballot``: piggyback the prepare of this ballot on the accept, so that a
        commit leaves ``prepared_after`` a ``Prepared`` for the key's next change.
        ``prepared``: phase 1 of ``ballot`` is done (``Prepared``); ``start`` goes straight
        to the accept. ``items``: several requests to apply in order, each with its own id
        and progress (``change``, ``request_id`` and ``sent_from_version`` are then unused);
        ``results`` holds each one's outcome once the accept is built. ``fast``: a fast
        round at ``ballot`` (``fast.ballot.successor()``) built on ``fast.value``; it
        needs a fast quorum of accepts, carries no piggybacked prepare, and any refusal
        ends it (the node then runs a classic round). ``clock_ms``: the proposer's wall
        clock (Unix ms), read when the accept is built: TTLs count from it and a value
        expired at it is deleted by this round (``register.expire``, docs/ttl.md).
        ``accept_config``: where accepts go and how many choose the value, when that is not
        ``config`` (a change of the acceptor set in progress: prepares to the old set,
        accepts to the new one; docs/reconfiguration.md); such a round is never fast."""
        assert next_ballot is None or next_ballot > ballot
        assert prepared is None or prepared.ballot == ballot
        assert fast is None or (fast.ballot.successor() == ballot and next_ballot is None
                                and prepared is None)
        if items is None:
            items = [Pending(change, request_id, RequestProgress(
                sent_from_version=sent_from_version if request_id is not None else None))]
        assert items
        self.key = key
        self.ballot = ballot
        self.items = list(items)
        self.change = self.items[0].change
        self.request_id = self.items[0].request_id
        self.config = config
        self.accept_config = accept_config or config
        assert fast is None or self.accept_config is config
        assert fast is None or not config.parts, "a joint quorum (mid-change) is never fast"
        self.next_ballot = next_ballot
        self.prepared = prepared
        self.fast = fast
        self.clock_ms = clock_ms
        self._needed = config.fast if fast is not None else self.accept_config.quorum
        """Accepts that choose this round's value: a fast quorum for a fast round."""
        self.phase = Phase.PREPARE
        self._promises: dict[int, Promise] = {}
        self._accepted: set[int] = set()
        self._promised_next: set[int] = set()
        self._refused: set[int] = set()
        self._ballot_seen = ballot
        self._conflict = False
        self.accept: Accept | None = None
        self._fresh: set[int] = set()
        """Items whose change this round's accept newly applies."""
        self.results: list[Outcome | Unknown | None] = [None] * len(self.items)
        """Per item: its outcome in this round's accept, ``Unknown``, or None (abandoned)."""

    @property
    def promises(self) -> tuple[Promise, ...]:
        """The promises received so far (the collector checks them against its pin)."""
        return tuple(self._promises.values())

    @property
    def outcome(self) -> Outcome | None:
        """The first item's outcome (the whole round's, with one item)."""
        first = self.results[0]
        return first if isinstance(first, Outcome) else None

    def start(self) -> Prepare | SendAccept | Unknown:
        """The round's first move: its prepare, or with ``prepared`` its accept."""
        if self.fast is not None:
            return self._accept_from(self.fast.value)
        if self.prepared is None:
            return self.prepare()
        return self._accept_from(self.prepared.value)

    def prepare(self) -> Prepare:
        return Prepare(self.key, self.ballot)

    @property
    def next_promised(self) -> bool:
        """Whether a quorum of the acceptors that accepted also promised ``next_ballot``: a
        *prepare* quorum (accept replies may come from acceptors outside the prepare set)."""
        config = self.config
        if self.accept_config is config:
            return config.met(self._promised_next)
        return config.is_quorum(self._promised_next)

    def on_reply(self, acceptor_id: int, reply: Reply) -> RoundStep:
        members = (self.accept_config if self.phase is Phase.ACCEPT else self.config).acceptors
        if acceptor_id not in members or self.phase is Phase.DONE:
            return Wait()
        match reply:
            case Promise(ballot=b) if b == self.ballot and self.phase is Phase.PREPARE:
                self._promises[acceptor_id] = reply
                if self.config.met(self._promises):
                    return self._promised()
            case Accepted(ballot=b, next=n) if b == self.ballot and self.phase is Phase.ACCEPT:
                self._accepted.add(acceptor_id)
                if n is not None and n == self.next_ballot:
                    self._promised_next.add(acceptor_id)
                if len(self._accepted) >= self._needed and (
                        not self.accept_config.parts or self.accept_config.met(self._accepted)):
                    assert self.accept is not None
                    self.phase = Phase.DONE
                    return Committed(self.outcome or Outcome("read", self.accept.value))
            case Nack(ballot=b, ballot_promised=bp) if b == self.ballot:
                self._conflict = True
                self._ballot_seen = max(self._ballot_seen, bp)
                return self._refuse(acceptor_id)
            case Unavailable():
                return self._refuse(acceptor_id)
            case _:
                pass  # stale reply of an earlier ballot or phase: ignore
        return Wait()

    def on_timeout(self) -> Abort:
        """The node gave up waiting for this attempt."""
        phase = self.phase
        self.phase = Phase.DONE
        return Abort(phase, self._ballot_seen, self._conflict)

    def _refuse(self, acceptor_id: int) -> RoundStep:
        self._refused.add(acceptor_id)
        accepting = self.phase is Phase.ACCEPT
        answered = self._accepted if accepting else self._promises.keys()
        config = self.accept_config if accepting else self.config
        lost = self._refused - set(answered)
        still_possible = len(config.acceptors) - len(lost)
        needed = self._needed if self.phase is Phase.ACCEPT else self.config.quorum
        if still_possible < needed or (config.parts and
                                       not config.is_quorum(config.acceptors - lost)):
            return self.on_timeout()
        return Wait()

    def _promised(self) -> RoundStep:
        return self._accept_from(choose_value(list(self._promises.values()), self.config))

    def _accept_from(self, highest: Value) -> SendAccept | Unknown:
        """The accept of this round, given the newest value a promise quorum holds: every
        live item's change applied to it in order."""
        value = highest
        now_ms = self.clock_ms() if self.clock_ms is not None else None
        self._fresh.clear()
        for i, item in enumerate(self.items):
            self.results[i] = None
            if item.abandoned:
                continue
            rid, since = item.request_id, item.progress.sent_from_version
            if (since is not None and rid is not None and not isinstance(item.change, Read)
                    and highest.applied_version(rid) is None
                    and not highest.remembers_from(since)):
                # Had an earlier attempt been chosen (or picked up by another proposer), the
                # newest value would descend from it; this one has forgotten requests that
                # far back.
                self.results[i] = Unknown()
                continue
            if rid is not None and (done := highest.applied_version(rid)) is not None:
                # An earlier attempt took effect: report its outcome, change nothing (checked
                # on the newest value itself: this round's other items may push the id out).
                self.results[i] = Outcome("applied", Value(done, highest.data))
                continue
            # If not remembered, no earlier attempt can ever be chosen: this quorum promised
            # above them all.
            before = value
            value, self.results[i] = apply_change(value, item.change, rid, now_ms)
            if value is not before and not isinstance(item.change, Read):
                self._fresh.add(i)
        if any(isinstance(r, Unknown) for r in self.results) and \
                all(r is None or isinstance(r, Unknown) for r in self.results):
            self.phase = Phase.DONE  # nothing left to apply
            return Unknown()
        self.phase = Phase.ACCEPT
        if self.fast is not None:
            self.accept = Accept(self.key, self.ballot, value, None, self.fast.ballot,
                                 self.fast.value.digest())
        else:
            self.accept = Accept(self.key, self.ballot, value, self.next_ballot)
        self._refused.clear()
        return SendAccept(self.accept)

    def note_accept_sent(self) -> None:
        """Record, before the accept leaves, which items it may apply (each item's
        ``RequestProgress``): they can no longer be reported as "failed"."""
        for i in self._fresh:
            result = self.results[i]
            assert isinstance(result, Outcome)
            self.items[i].progress.on_accept_sent(result.value.version)


def choose_value(promises: Sequence[Promise], config: QuorumConfig) -> Value:
    """The value a classic round must build on, given the promises of a quorum ``Q``.

    Only the highest accepted ballot ``k`` among them counts: a value chosen below ``k`` is
    extended by every value at ``k``. At ``Ballot.ZERO`` (no accept at all) every value is
    absent and the highest version is taken (collected tombstones, docs/gc.md). A classic
    ``k`` carries one value. A fast ``k`` may carry several; one that a fast quorum accepted
    is reported by at least ``q_f - (n - |Q|)`` of ``Q`` (the rest of its quorum may be
    outside ``Q``), which at most one value can be (2*q_f + q_c > 2n), and then it must be
    picked. Otherwise none was chosen at ``k``, and any value reported at ``k`` is safe: the
    one reported most, ties broken by digest so every proposer picks alike (docs/design.md
    invariant 9).
    """
    assert promises
    k = max(p.ballot_accepted for p in promises)
    at_k = [p.value for p in promises if p.ballot_accepted == k]
    if k.is_zero():
        # Nothing accepted, or only tombstones collected (docs/gc.md): each acceptor reports
        # its bucket floor's version, all absent; the highest keeps versions from going back.
        return max(at_k, key=lambda v: v.version)
    if not k.is_fast:
        return at_k[0]
    counts: dict[Value, int] = {}
    for value in at_k:
        counts[value] = counts.get(value, 0) + 1
    if len(counts) == 1:
        return at_k[0]
    could_be_chosen = config.fast - (len(config.acceptors) - len(promises))
    ranked = sorted(counts.items(), key=lambda vc: (-vc[1], vc[0].digest()))
    must = [v for v, c in ranked if c >= could_be_chosen]
    return must[0] if must else ranked[0][0]


def held_since_pin(reports: Iterable[tuple[Ballot, Value]], pinned: Ballot) -> bool:
    """Whether every acceptor's report (accepted ballot, value) of a key still shows the
    tombstone the collector pinned at ``pinned``, or no row at all (docs/gc.md).

    A tombstone's grace counts from a moment every acceptor was seen holding it at
    ``pinned`` (the pin), and collection needs every acceptor to report it again: accepted
    ballots only grow, so each acceptor then held exactly that tombstone for the whole
    grace, and a copy of its data directory taken in that time holds it too. That is what
    lets a rebuild trust a copy younger than the grace (``identity.judge_rebuild_copy``).
    "Nothing accepted" is a row already removed by an earlier, partial collection (or a
    key this acceptor never held): it has no old value to give back.
    """
    return all((ballot == pinned and not value.exists) or ballot.is_zero()
               for ballot, value in reports)


def prepared_after(rnd: ProposerRound, step: RoundStep) -> Prepared | None:
    """What a finished round leaves for the next change to its key: a ``Prepared`` only
    when it committed and every acceptor of a quorum promised its piggybacked ballot.

    Anything else (an abort, a timeout, an unknown) leaves nothing, since another proposer
    may have prepared and written the key since, and its value must be learned by a full
    round before anything is built on it.
    """
    if (isinstance(step, Committed) and rnd.next_ballot is not None and rnd.next_promised
            and rnd.accept is not None):
        return Prepared(rnd.next_ballot, rnd.accept.value)
    return None


class QueryRound:
    """A one-round-trip linearizable read.

    If a quorum reports the same accepted classic ballot, its value is chosen, and no newer
    value can have been chosen before the read began (that quorum would intersect this
    one). A fast ballot may carry several values, and a classic quorum of them agreeing
    does not make one chosen: it takes a fast quorum reporting the same ballot and the same
    value (docs/design.md invariant 9). Otherwise the caller falls back to a full identity
    round, which also repairs the key.
    """

    def __init__(self, key: str, config: QuorumConfig) -> None:
        assert not config.parts, "one-round-trip reads count plain quorums (stable configs)"
        self.key = key
        self.config = config
        self._replies: dict[int, QueryReply] = {}
        self._refused: set[int] = set()
        self.done = False

    def query(self) -> Query:
        return Query(self.key)

    def needed(self, ballot: Ballot) -> int:
        """Identical reports that make the value at ``ballot`` chosen."""
        if ballot.is_fast:
            return max(self.config.quorum, self.config.fast)
        return self.config.quorum

    def on_reply(self, acceptor_id: int, reply: Reply) -> Committed | Abort | Wait:
        if acceptor_id not in self.config.acceptors or self.done:
            return Wait()
        if isinstance(reply, QueryReply) and reply.key == self.key:
            self._replies[acceptor_id] = reply
        else:
            self._refused.add(acceptor_id)
        counts = self._counts()
        for (ballot, value), n in counts.items():
            if n >= self.needed(ballot):
                self.done = True
                return Committed(Outcome("read", value))
        pending = len(self.config.acceptors) - len(self._replies) - len(self._refused)
        if pending < self.config.quorum and all(
                n + pending < self.needed(ballot) for (ballot, _), n in counts.items()):
            self.done = True
            return Abort(Phase.PREPARE, Ballot.ZERO, conflict=bool(self._replies))
        return Wait()

    def disagreed(self) -> bool:
        return len(self._counts()) > 1

    def _counts(self) -> dict[tuple[Ballot, Value], int]:
        """How many acceptors report each accepted ballot with each value (a classic
        ballot has one value, so this counts ballots)."""
        counts: dict[tuple[Ballot, Value], int] = {}
        for r in self._replies.values():
            slot = (r.ballot_accepted, r.value)
            counts[slot] = counts.get(slot, 0) + 1
        return counts


def next_ballot(counter_floor: int, seen: Ballot, node_id: int, incarnation: int) -> Ballot:
    """The smallest ballot of ours above both our own counter and anything seen."""
    counter = max(counter_floor, seen.counter) + 1
    return Ballot(counter, node_id, incarnation)


@dataclass(slots=True)
class RequestProgress:
    """How far one client request got across its attempts: whether an accept that applies
    its change left this node, which decides "failed" against "unknown" (docs/design.md,
    invariant 5).
    """

    accept_sent: bool = False
    sent_from_version: int | None = None
    """The lowest version an accept of this request's change proposed."""
    runs_elsewhere: bool = False
    """Another proposer got this request and may still apply it (a forward it never
    answered): it must not also run here, since once the value forgot its id the two
    could apply it twice, and a condition failing here may hold there later."""

    @staticmethod
    def after_lost_forward() -> RequestProgress:
        """A request forwarded to another proposer that never answered: it may have applied
        the change at any version, or may still (the caller answers "unknown")."""
        return RequestProgress(accept_sent=True, sent_from_version=1, runs_elsewhere=True)

    def on_accept_sent(self, version: int) -> None:
        """Note, before it is sent, an accept that newly applies this request's change and
        makes it ``version`` (identity accepts, a failed condition, a read, or an earlier
        write of ours re-accepted, cannot apply it and do not count)."""
        self.accept_sent = True
        if self.sent_from_version is None or version < self.sent_from_version:
            self.sent_from_version = version


FailureKind = Literal["no_quorum", "contention", "unknown"]


def classify_failure(change: Change, progress: RequestProgress, conflict: bool
                     ) -> FailureKind:
    """What the client is told when a request ends without a commit.

    Once an accept carrying the change has left, a quorum may have accepted it even though
    we never heard: "unknown". Before that nothing can have taken effect: "contention" when
    acceptors refused us for higher ballots, else "no_quorum" (both: definitely not).
    """
    if progress.accept_sent and not isinstance(change, Read):
        return "unknown"
    if conflict:
        return "contention"
    return "no_quorum"
