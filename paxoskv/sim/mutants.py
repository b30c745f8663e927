"""Deliberately broken variants of the protocol; the simulator must catch every one.

A mutant changes one rule through a seam the node already offers (``AcceptorRules``, the
``quorum`` argument, the storage, the identity it is given), never node.py itself.
"""

from __future__ import annotations

from typing import Final

from paxoskv.core.acceptor import AcceptorState, CollectStep, Floor, Step, on_collect
from paxoskv.core.ballot import Ballot
from paxoskv.core.identity import (
    META_REJOIN,
    SERVES,
    HelloClaim,
    IdentityMachine,
    InUse,
    Mode,
    PeerRecord,
    Refused,
    Verdict,
    Welcome,
    judge_hello,
)
from paxoskv.core.messages import Accept, Accepted, Collect, Prepare, Promise
from paxoskv.core.proposer import (
    Abort,
    Prepared,
    ProposerRound,
    QueryRound,
    RequestProgress,
    RoundStep,
    SendAccept,
    Unknown,
    prepared_after,
)
from paxoskv.core.reconfig import Config, EpochVerdict
from paxoskv.core.register import Value, apply_change
from paxoskv.node import AcceptorRules, IdentityRules, ProposerRules

__all__ = [
    "ACCEPTOR_MUTANT_RULES", "FAST_MUTANTS", "GC_MUTANTS", "IDENTITY_MUTANT_RULES", "MUTANTS",
    "NODE_RECONF_MUTANTS", "NODE_RECONF_MUTANT_RULES", "NO_PROMISE_CHECK_RULES",
    "PROPOSER_MUTANT_RULES", "SCRIPTED_MUTANTS", "TTL_MUTANTS",
]

MUTANTS: Final[dict[str, str]] = {
    "no-fsync": "storage acknowledges a write before it is durable; a crash loses it",
    "no-promise-check": "acceptors promise every prepare and accept below their promise",
    "small-quorum": "quorum size is one less than a majority",
    "reuse-ballot": "a restarted node keeps its first incarnation, so reuses its old ballots",
    "rejoin-accepts-early": "a fencing (rejoining) acceptor answers prepares and accepts",
    "rejoin-not-durable": "the rejoin marker is not persisted: a restart mid-rejoin without "
                          "--rejoin serves with a half-empty state",
    "no-incarnation-check": "a hello that should be refused (a restored old copy) is welcomed",
    "no-config-check": "nodes with another membership (acceptor set) take part",
    "no-duplicate-check": "a second process claiming a live node's id is welcomed",
    "stale-piggyback-ballot": "a refused phase-1-skip accept is retried above the refusal "
                              "on the cached value, still skipping phase 1",
    "batch-from-base": "a round of several changes to one key applies each to the value it "
                       "started from, not to the previous change's result",
    "forward-lost-is-failed": "a write forwarded to a proposer that never answered is run "
                              "again here as if it had never been sent",
    "forward-runs-twice": "a proposer runs every copy of a duplicated forwarded write",
    "fast-quorum-too-small": "the fast quorum is one acceptor smaller (2 of 3): a fast round "
                             "commits on two accepts, and a recovery cannot tell which of "
                             "two values of one fast ballot was chosen",
    "fast-read-as-classic": "a one-round-trip read takes a classic quorum of identical "
                            "reports at a fast ballot for a chosen value",
    "ttl-delete-without-compare": "the TTL sweeper deletes a key its local (maybe stale) "
                                  "copy shows expired unconditionally, not by a compare on "
                                  "the version it saw",
    "ttl-read-without-delete": "a linearizable read that finds a value past its TTL by its "
                               "own clock answers absent without first deleting it in a "
                               "round",
    "gc-without-fence": "a collected tombstone's row is removed without raising its bucket's "
                        "floor: the key reads as never written (promise and version zero)",
    "gc-before-all-accepted": "a tombstone is collected once a quorum (not every acceptor) "
                              "accepted it: an acceptor that missed it keeps the older value",
}
"""Each mutant's one broken rule; the identity ones go through `IdentityRules`."""

SCRIPTED_MUTANTS: Final[dict[str, str]] = {
    "rebuild-ignores-copy-age": "a rebuild after a quorum loss runs on a data directory "
                                "older than the tombstone grace: a key deleted and collected "
                                "since the copy comes back",
    "gc-grace-from-first-sight": "a tombstone's grace counts from when the collector first "
                                 "saw its own row, not from when every acceptor held it: a "
                                 "young copy of a lagging acceptor brings the key back",
    "fence-before-cached-ballots-expire": "a rejoining acceptor's fence lasts twice the "
                                          "message lifetime, shorter than a phase-1-skip "
                                          "ballot's life: a proposer's ballot cached before "
                                          "the loss is accepted over a lost promise",
}
"""Mutants only a scripted scenario reaches (a rebuild from old copies after a majority
loss, a rejoin beside a proposer cut off since before it, which the random runs never do):
tests/sim/test_gc_floor_loss.py and tests/sim/test_rejoin_fence.py catch them; they are
not among ``MUTANTS``, whose random-seed budget could not."""

FAST_MUTANTS: Final = frozenset({"fast-quorum-too-small", "fast-read-as-classic"})
TTL_MUTANTS: Final = frozenset({"ttl-delete-without-compare", "ttl-read-without-delete"})
"""Mutants of the TTL rules: their runs have the TTL workload on (``SimOptions.ttl``)."""

GC_MUTANTS: Final = frozenset({"gc-without-fence", "gc-before-all-accepted"})
"""Mutants of tombstone collection (docs/gc.md): their runs need it on."""
"""Mutants of Fast Paxos rules: their runs have fast Paxos on (``SimOptions.fast_paxos``)."""


def _promise_always(state: AcceptorState, msg: Prepare) -> Step:
    """Broken invariant 2: promise whatever the ballot, even below an earlier promise."""
    promised = max(msg.ballot, state.ballot_accepted)  # AcceptorState insists on this
    new = AcceptorState(promised, state.ballot_accepted, state.value)
    return Step(new, True, Promise(msg.key, msg.ballot, state.ballot_accepted, state.value))


def _accept_always(state: AcceptorState, msg: Accept) -> Step:
    """Broken invariant 2: accept whatever the ballot, even below the promise."""
    if msg.ballot == state.ballot_accepted:
        return Step(state, False, Accepted(msg.key, msg.ballot))
    new = AcceptorState(max(msg.ballot, state.ballot_promised), msg.ballot, msg.value)
    return Step(new, True, Accepted(msg.key, msg.ballot))


NO_PROMISE_CHECK_RULES: Final = AcceptorRules(on_prepare=_promise_always,
                                              on_accept=_accept_always)


def _collect_without_fence(state: AcceptorState, floor: Floor, msg: Collect, has_row: bool
                           ) -> CollectStep:
    """Broken rule: the row goes, the bucket's floor stays where it was (the CASPaxos
    paper's first proposal): a delayed or cached lower ballot is promised and accepted
    again, and the key's version starts over."""
    step = on_collect(state, floor, msg, has_row)
    return CollectStep(step.remove, floor, step.reply)


def _admit_any(own: Config, acceptor_id: int, msg_config: Config) -> EpochVerdict:
    """Broken rule: the node's acceptor still adopts a newer config that names it (so
    installs work), but serves a message of an older epoch instead of refusing it, so a
    proposer that missed two changes still gets a quorum of the set it knew, removed
    acceptors included."""
    if msg_config.epoch > own.epoch and acceptor_id in msg_config.members:
        return EpochVerdict.ADOPT
    return EpochVerdict.SERVE


NODE_RECONF_MUTANTS: Final[dict[str, str]] = {
    "node-no-epoch-fence": "the node's acceptor ignores the config epoch of the messages it "
                           "serves (and never retires)",
}
"""Node-level mutants of acceptor-set changes. Only runs with acceptor-set changes
exercise them (``SimOptions.spares``, which such a mutant turns on), so they are kept out of
``MUTANTS``; tests/sim/test_reconf_node.py catches each with a scripted scenario and within
the default seed budget of random changes."""

NODE_RECONF_MUTANT_RULES: Final[dict[str, AcceptorRules]] = {
    "node-no-epoch-fence": AcceptorRules(admit=_admit_any),
}


ACCEPTOR_MUTANT_RULES: Final[dict[str, AcceptorRules]] = {
    "gc-without-fence": AcceptorRules(on_collect=_collect_without_fence),
}
"""The acceptor mutants besides no-promise-check, one rule swapped each."""


def _start_without_marker(is_acceptor: bool, rejoin_flag: bool, rebuild_flag: bool,
                          meta_rejoin: str | None, meta_refused: str | None
                          ) -> tuple[IdentityMachine, tuple[tuple[str, str], ...]]:
    """Broken rule: the rejoin marker is left out of what a start persists."""
    machine, persist = IdentityMachine.start(is_acceptor, rejoin_flag, rebuild_flag,
                                             meta_rejoin, meta_refused)
    return machine, tuple(record for record in persist if record[0] != META_REJOIN)


def _trust_any_copy(has_rows: bool, alive_at_ms: int | None, now_ms: int,
                    grace_s: float) -> str | None:
    """Broken rule: a rebuild after a quorum loss trusts a data directory of any age."""
    return None


def _judge_welcoming(known: PeerRecord | None, claim: HelloClaim, known_alive: bool) -> Verdict:
    """Broken rule: no incarnation check; what would be refused is welcomed."""
    verdict = judge_hello(known, claim, known_alive)
    if isinstance(verdict, Refused):
        return Welcome(claim.record, True)
    return verdict


def _judge_no_duplicate_check(known: PeerRecord | None, claim: HelloClaim,
                              known_alive: bool) -> Verdict:
    """Broken rule: a different data directory under a live process's id is welcomed."""
    verdict = judge_hello(known, claim, known_alive)
    if isinstance(verdict, InUse):
        return Welcome(claim.record, True)
    return verdict


def _prepared_after_refusal(rnd: ProposerRound, step: RoundStep) -> Prepared | None:
    """Broken rule: a fast accept refused for a higher ballot keeps its cached value, and
    the retry goes straight to an accept above the refusal, never learning what the other
    proposer wrote."""
    kept = prepared_after(rnd, step)
    if kept is None and isinstance(step, Abort) and rnd.prepared is not None:
        top = max(step.ballot_seen, rnd.next_ballot or rnd.ballot)
        return Prepared(Ballot(top.counter + 1, rnd.ballot.node_id, rnd.ballot.incarnation),
                        rnd.prepared.value)
    return kept


class _BatchFromBase(ProposerRound):
    """Broken rule: every change of a batch is applied to the round's starting value, so
    all but the last are lost while each caller is told it was applied."""

    def _accept_from(self, highest: Value) -> SendAccept | Unknown:
        step = super()._accept_from(highest)
        if isinstance(step, SendAccept):
            last = highest
            for item in self.items:
                if not item.abandoned:
                    last, _ = apply_change(highest, item.change, item.request_id)
            self.accept = Accept(self.key, self.ballot, last, self.next_ballot)
            return SendAccept(self.accept)
        return step


class _FastReadAsClassic(QueryRound):
    """Broken rule: a classic quorum of identical reports at a fast ballot is taken for a
    chosen value, though a fast quorum would be needed (two of three may hold a value that
    lost its collision and is never chosen)."""

    def needed(self, ballot: Ballot) -> int:
        return self.config.quorum


PROPOSER_MUTANT_RULES: Final[dict[str, ProposerRules]] = {
    "stale-piggyback-ballot": ProposerRules(prepared_after=_prepared_after_refusal),
    "batch-from-base": ProposerRules(round=_BatchFromBase),
    "forward-lost-is-failed": ProposerRules(after_lost_forward=RequestProgress),
    "forward-runs-twice": ProposerRules(remember_forwards=False),
    "fast-read-as-classic": ProposerRules(query_round=_FastReadAsClassic),
    "ttl-read-without-delete": ProposerRules(read_deletes_expired=False),
    "gc-before-all-accepted": ProposerRules(gc_everyone=False),
    "gc-grace-from-first-sight": ProposerRules(gc_pins=False),
}
"""The proposer mutants, each one rule swapped through the `ProposerRules` seam."""


IDENTITY_MUTANT_RULES: Final[dict[str, IdentityRules]] = {
    "rejoin-accepts-early": IdentityRules(
        serves={**SERVES, Mode.FENCING: frozenset({"prepare", "accept"})}),
    "rejoin-not-durable": IdentityRules(start=_start_without_marker),
    "no-incarnation-check": IdentityRules(judge_hello=_judge_welcoming),
    "no-config-check": IdentityRules(check_membership=False),
    "no-duplicate-check": IdentityRules(judge_hello=_judge_no_duplicate_check),
    "rebuild-ignores-copy-age": IdentityRules(judge_rebuild_copy=_trust_any_copy),
    "fence-before-cached-ballots-expire": IdentityRules(fence_outlasts_cached_ballots=False),
}
"""The identity mutants, each one rule swapped through the `IdentityRules` seam."""
