"""Linearizability of per-key register histories: a Wing-Gong / Lowe search per key.

Linearizability is compositional (Herlihy & Wing, "locality"): a history is linearizable iff
each key's sub-history is, so `check` splits by key and searches each key alone.

The search is the Wing & Gong backtracking algorithm with Lowe's memoization ("Testing for
linearizability", 2017), the shape Porcupine uses. Call and return events sit in one
doubly-linked list in time order. Scanning from the front, a call whose op the model accepts
is linearized: its call and return are unlinked and we restart from the front. Reaching a
return means the op it belongs to was never linearized, so we undo the last choice. A set of
(linearized ops, model state) pairs already seen prunes the search. An ``unknown`` op has no
return event: it may be linearized at any point after its call, or never. The search succeeds
once every op with a return event is linearized. On top of that, `_search` uses facts of this
register model to cut the search without changing any verdict (each is checked against a
brute-force enumeration in the tests): reads and rejected ops are taken as soon as they fit,
unknown writes are tried only when nothing definite fits and twins among them only once,
and no unknown write may push the version past what a later definite op reported.

Budgets. One key's search stops after ``steps_max_per_key`` steps and the key is reported
as inconclusive, never hung on. Shrinking a counterexample has its own step and check budgets.

Counterexamples. A violating key is shrunk (delta debugging, complement steps only) to a small
set of ops that still cannot be linearized. First the history is cut at the earliest time at
which what had happened so far already fails (ops still running at the cut become unknown).
Then ops are removed while the rest still fails. If the open model of `model.step_open` (other
writes may have happened at any time) rejects the key, removal uses it, so the result fails
whatever writes are missing from it. Otherwise (or when that leaves more than a few ops) the
exact model is used too: a removed write is kept as an ``unknown`` write that may or may not
have taken effect, and the smaller result is reported.

Measured on the 2-core development machine (Python 3.11; `test_scale_100k_ops_1k_keys`):
100,000 ops over 1,000 keys (`synth.linearizable_history`: four clients per key, each call
spread up to two mean gaps either side of its linearization point, 5% unknown and 2% failed
writes) check in 0.35 s of CPU time, 0.5-1.0 s wall while the machine was shared (load ~12).
The same 100,000 ops on one key take about 1.5 s wall; with five times the overlap (spread
10) on 1,000 keys, about 1.2 s.

Limits. Versions in the answers pin each write to its place, which keeps the search near
linear. Without them, a key with about 20 calls in flight at once and cas ops in the mix
can need exponentially many steps (every subset of the overlapping writes is a state), and
some such keys end inconclusive: in the same 100,000-op workload with spread 10 and no
versions, about 100 of 1,000 keys at a budget of 200,000 steps. Record versions.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Final

from paxoskv.check.history import KINDS, STATUSES, Op
from paxoskv.check.model import (
    INITIAL,
    KIND_CODES,
    OK,
    READ,
    REJECTED,
    UNKNOWN,
    EncodedOp,
    State,
    step_exact,
    step_open,
    version_bound,
)

__all__ = [
    "STEPS_MAX_PER_KEY",
    "CheckResult",
    "Verdict",
    "Violation",
    "check",
    "check_key",
]

STEPS_MAX_PER_KEY: Final = 2_000_000
"""Search steps for one key before it is called inconclusive: a few seconds of CPython. A key
of n ops with at most c calls in flight at once takes about n * c steps when nothing
backtracks."""

SHRINK_CHECK_STEPS_MAX: Final = 20_000
"""Steps for one candidate while shrinking; a candidate that runs out counts as passing.
Small on purpose: a candidate that needs more is usually one whose relaxed writes made the
search exponential, and would not finish with ten times more either."""

SHRINK_CHECKS_MAX: Final = 2_000
"""Candidates tried while shrinking one key's counterexample."""

SHRINK_STEPS_MAX: Final = 1_000_000
"""Search steps spent shrinking one key's counterexample, all candidates together."""

OPEN_SHRUNK_OPS_MAX: Final = 4
"""A counterexample shrunk under the open model with more ops than this is shrunk again
under the exact model, which needs fewer ops when the anomaly is about values, not versions
(a stale read in a history without versions)."""

MINIMAL_CHECK_OPS_MAX: Final = 32
"""Largest counterexample whose 1-minimality is checked op by op."""

SHRINK_KEYS_MAX: Final = 16
"""Violating keys shrunk per check; shrinking one key costs up to a few seconds."""

BITSET_OPS_MAX: Final = 4_096
"""Above this many ops in one key, the set of linearized ops is memoized as a 128-bit XOR of
random words instead of an exact bitset: an exact bitset per cache entry would cost
O(ops^2) memory. Two distinct sets collide with probability about 2^-128 per pair."""

SUMMARY_KEYS_MAX: Final = 20
"""Keys listed by `CheckResult.summary` per kind of finding."""

VERSION_UNBOUNDED: Final = 2**63
"""Stands for "no bound" among version bounds."""

StepFn = Callable[[State, EncodedOp], State | None]


class Verdict(enum.Enum):
    LINEARIZABLE = "linearizable"
    VIOLATION = "violation"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True, slots=True)
class Violation:
    """A key whose history cannot be linearized, with a small counterexample.

    ``ops``: a subset of the key's ops (by invoke time) that cannot be linearized.
    ``explanation`` says under which assumption it was shrunk. ``minimal``: shrinking ran to
    the end within its budgets, so no single op of ``ops`` can be removed (under that
    assumption) with the rest still failing. False when the key was not shrunk at all.
    """

    key: str
    ops: tuple[Op, ...]
    key_ops: int
    explanation: str
    minimal: bool


@dataclass(frozen=True, slots=True)
class CheckResult:
    """``ok``: no violation and no inconclusive key."""

    keys_checked: int
    ops_checked: int
    violations: list[Violation] = field(default_factory=list)
    inconclusive: list[str] = field(default_factory=list)
    steps: int = 0

    @property
    def ok(self) -> bool:
        return not self.violations and not self.inconclusive

    def summary(self) -> str:
        verdict = "OK" if self.ok else ("VIOLATION" if self.violations else "INCONCLUSIVE")
        lines = [
            f"{verdict}: {self.ops_checked} ops over {self.keys_checked} keys, "
            f"{len(self.violations)} violating, {len(self.inconclusive)} inconclusive "
            f"({self.steps} search steps)"
        ]
        for v in self.violations[:SUMMARY_KEYS_MAX]:
            lines.append(
                f"  key {v.key!r}: {len(v.ops)} of {v.key_ops} ops cannot be linearized"
                f"{'' if v.minimal else ' (not minimal)'}"
            )
        if len(self.violations) > SUMMARY_KEYS_MAX:
            lines.append(f"  ... and {len(self.violations) - SUMMARY_KEYS_MAX} more violating keys")
        for key in self.inconclusive[:SUMMARY_KEYS_MAX]:
            lines.append(f"  key {key!r}: inconclusive (search budget exhausted)")
        if len(self.inconclusive) > SUMMARY_KEYS_MAX:
            lines.append(f"  ... and {len(self.inconclusive) - SUMMARY_KEYS_MAX} more inconclusive")
        return "\n".join(lines)


def _validate(op: Op) -> None:
    """Reject ops no recorder should produce; these are caller bugs, not store bugs."""
    if op.kind not in KINDS:
        raise ValueError(f"op {op!r}: bad kind")
    if op.status not in STATUSES:
        raise ValueError(f"op {op!r}: bad status")
    if math.isnan(op.invoke) or math.isinf(op.invoke):
        raise ValueError(f"op {op!r}: invoke must be finite")
    if op.kind == "cas" and op.expected_version is None:
        raise ValueError(f"op {op!r}: cas needs expected_version")
    if op.kind in ("set", "cas", "create") and op.value is None:
        raise ValueError(f"op {op!r}: {op.kind} needs a value")
    if op.kind == "set" and op.status == "rejected":
        raise ValueError(f"op {op!r}: set has no condition and cannot be rejected")
    if op.status in ("ok", "rejected") and not op.complete >= op.invoke:
        raise ValueError(f"op {op!r}: completes before it is invoked")


def _encode(op: Op) -> EncodedOp:
    kind = KIND_CODES[op.kind]
    if op.status == "unknown":
        return (kind, UNKNOWN, op.value, op.expected_version, None, None)
    status = OK if op.status == "ok" else REJECTED
    return (kind, status, op.value, op.expected_version, op.out_version, op.out_value)


def _canonical(encoded: list[EncodedOp]) -> list[EncodedOp]:
    """Replace every written value no read returned by one stand-in.

    The model compares data only with what reads returned, and with None. A value no read
    returned compares unequal to all of them, like the stand-in, so this changes no verdict;
    it lets states that differ only in such values share a cache entry, and makes unknown
    writes of unread values interchangeable.
    """
    observed = {o[5] for o in encoded if o[0] == READ and o[5] is not None}
    stand_in = b"\x00unread"
    while stand_in in observed:
        stand_in += b"\x00"
    return [
        o if o[2] is None or o[2] in observed else (o[0], o[1], stand_in, o[3], o[4], o[5])
        for o in encoded
    ]


def _without_version(state: State, op: EncodedOp) -> State | None:
    after = step_exact(state, op)
    return None if after is None else (0, after[1])


def _search(ops: Sequence[Op], step: StepFn, steps_max: int) -> tuple[Verdict, int]:
    """Wing-Gong / Lowe search of one key's ops; returns the verdict and the steps used.

    ``ops`` holds only ``ok``, ``rejected`` and ``unknown`` ops. Ops with a return event live
    as call and return entries, in time order, in one linked list. At each point the
    candidates are the calls before the first return, tried first; only when none fits are
    unknown ops sent no later than that return tried, so an unknown op is linearized only
    when something definite needs it.

    Pruning, each exact (`test_search_agrees_with_brute_force_on_small_histories`):

    - memoization of (linearized ops, state), as Lowe and Porcupine do;
    - an op that fits and leaves the state unchanged is taken at once and never revisited;
    - written values no read returned are merged into one (`_canonical`);
    - unknown ops with equal encodings are twins: only the earliest unused one is tried;
    - a read of a value nothing writes fails at once (exact model only);
    - an unknown op is not taken where the state it leads to was reached without it;
    - when no op names a version (no cas, no reported version), versions are dropped;
    - a conditional unknown op is tried only at its expected version, and no unknown op may
      push the version past `model.version_bound` of a definite op still to come (versions
      never decrease). The first rule holds for the exact model only: with `step_open`,
      ``ops`` must hold no unknown op (`_shrink` drops them; the open model subsumes them).

    Each loop iteration is one step.
    """
    assert step is step_exact or all(op.status != "unknown" for op in ops)
    encoded = _canonical([_encode(op) for op in ops])
    if step is step_exact:
        # A read of a value that no op in the set writes fits nowhere: no search needed.
        written = {o[2] for o in encoded if o[0] != READ}
        if any(
            o[0] == READ and o[1] == OK and o[5] not in written and o[5] is not None
            for o in encoded
        ):
            return Verdict.VIOLATION, 0
    if step is step_exact and all(o[3] is None and o[4] is None for o in encoded):
        # No op names a version, so the version cannot matter: drop it, and states that
        # differ only in how many writes happened merge.
        step = _without_version
    events: list[tuple[float, int, int]] = []
    unknowns: list[tuple[float, int]] = []
    remaining = 0
    for i, op in enumerate(ops):
        if op.status == "unknown":
            unknowns.append((op.invoke, i))
        else:
            # Calls sort before returns at equal times: touching calls count as concurrent.
            events.append((op.invoke, 0, i))
            events.append((op.complete, 1, i))
            remaining += 1
    if remaining == 0:
        return Verdict.LINEARIZABLE, 0
    events.sort()
    unknowns.sort()

    # Definite list: entries 0..n-1, tail n, head n + 1.
    n_entries = len(events)
    tail = n_entries
    head = n_entries + 1
    nxt = [*range(1, n_entries + 1), -1, 0]
    prv = [*range(-1, n_entries - 1), n_entries - 1, -1]
    prv[0] = head
    ent_op = [i for _, _, i in events]
    ent_time = [t for t, _, _ in events]
    is_call = [kind == 0 for _, kind, _ in events] + [False, False]
    ret_of_op = [-1] * len(ops)
    for e, (_, kind, i) in enumerate(events):
        if kind == 1:
            ret_of_op[i] = e
    ent_ret = [ret_of_op[i] if is_call[e] else -1 for e, i in enumerate(ent_op)]

    # Unknown ops in classes of twins, each class in invoke order; class_used[c] members of
    # class c are linearized, always the first ones. Conditional classes are indexed by
    # their expected version (sorted), the others are always tried.
    class_of: dict[EncodedOp, int] = {}
    members: list[list[int]] = []
    member_time: list[list[float]] = []
    for t, i in unknowns:
        c = class_of.setdefault(encoded[i], len(class_of))
        if c == len(members):
            members.append([])
            member_time.append([])
        members[c].append(i)
        member_time[c].append(t)
    class_used = [0] * len(members)
    class_of_op = {i: c for c, ms in enumerate(members) for i in ms}
    # Unconditional classes by the invoke time of their first member, in a linked list from
    # which a class is unlinked while all its members are linearized.
    free_order = sorted(
        (c for o, c in class_of.items() if o[3] is None), key=lambda c: member_time[c][0]
    )
    n_free = len(free_order)
    free_pos = [-1] * len(members)
    for pos, c in enumerate(free_order):
        free_pos[c] = pos
    free_first = [member_time[c][0] for c in free_order]
    f_tail = n_free
    f_head = n_free + 1
    f_nxt = [*range(1, n_free + 1), -1, 0]
    f_prv = [*range(-1, n_free - 1), n_free - 1, -1]
    if n_free:
        f_prv[0] = f_head
    else:
        f_prv[f_tail] = f_head
    by_expected: dict[int, list[int]] = {}
    for o, c in class_of.items():
        if o[3] is not None:
            by_expected.setdefault(o[3], []).append(c)

    # Definite ops by the highest version they tolerate: an unknown op may not push the
    # version past the lowest bound of the definite ops still to come.
    bounded = sorted(
        (b, i)
        for i, o in enumerate(encoded)
        if o[1] != UNKNOWN and (b := version_bound(o)) is not None
    )
    bound_value = [b for b, _ in bounded] + [VERSION_UNBOUNDED]
    bound_op = [i for _, i in bounded] + [-1]
    bound_pos = [-1] * len(ops)
    for pos, i in enumerate(bound_op[:-1]):
        bound_pos[i] = pos
    done = [False] * (len(ops) + 1)
    done[-1] = False  # the sentinel at the end of bound_op is never done
    bound_next = 0  # no op before this position of bound_op is still to be linearized

    if len(ops) <= BITSET_OPS_MAX:
        marks = [1 << i for i in range(len(ops))]
    else:
        rng = random.Random(len(ops))
        marks = [rng.getrandbits(128) for _ in range(len(ops))]

    cache: set[tuple[int, State]] = {(0, INITIAL)}
    # Each choice: (definite call entry, or -1 - position in cands for an unknown op; the
    # unknown candidates then; state and linearized set before the choice).
    stack: list[tuple[int, list[int], State, int]] = []
    no_cands: list[int] = []
    # Marks a definite op that left the state unchanged (a read, a rejected op). Taking such
    # an op as soon as it fits is never worse than taking it later: the rest of the search
    # is the same with one constraint fewer. So it is never a choice to revisit.
    forced: list[int] = []
    cands = no_cands  # unknown ops to try at the current point, once the definite ones failed
    k = -1  # >= 0 while trying cands[k]
    state: State = INITIAL
    linearized = 0
    e = nxt[head]
    steps = 0
    while steps < steps_max:
        steps += 1
        if k < 0:
            assert e != tail, "ran past the last return with ops left to linearize"
            if not is_call[e]:
                # Nothing definite fits here: the unknown ops sent by now are the candidates.
                frontier = ent_time[e]
                version = state[0]
                cands = []
                pos = f_nxt[f_head]
                while pos != f_tail and free_first[pos] <= frontier:
                    c = free_order[pos]
                    used = class_used[c]
                    if member_time[c][used] <= frontier:
                        cands.append(members[c][used])
                    pos = f_nxt[pos]
                for c in by_expected.get(version, no_cands):
                    used = class_used[c]
                    if used < len(members[c]) and member_time[c][used] <= frontier:
                        cands.append(members[c][used])
                k = 0
                continue
            i = ent_op[e]
        elif k < len(cands):
            i = cands[k]
        else:
            if not stack:
                return Verdict.VIOLATION, steps
            choice, cands, state, linearized = stack.pop()
            if choice < 0:
                k = -1 - choice
                c = class_of_op[cands[k]]
                pos = free_pos[c]
                if pos >= 0 and class_used[c] == len(members[c]):
                    f_nxt[f_prv[pos]] = pos
                    f_prv[f_nxt[pos]] = pos
                class_used[c] -= 1
                k += 1
            else:
                e = choice
                i = ent_op[e]
                done[i] = False
                if 0 <= bound_pos[i] < bound_next:
                    bound_next = bound_pos[i]
                r = ent_ret[e]
                nxt[prv[r]] = r
                prv[nxt[r]] = r
                remaining += 1
                nxt[prv[e]] = e
                prv[nxt[e]] = e
                if cands is forced:
                    # The state did not change, so not taking this op here cannot do better.
                    cands = no_cands
                    k = 0
                else:
                    e = nxt[e]
                    k = -1
            continue
        new_state = step(state, encoded[i])
        if new_state is not None and k >= 0:
            while done[bound_op[bound_next]]:
                bound_next += 1
            if new_state[0] > bound_value[bound_next]:
                new_state = None  # some definite op still to come could never fit
            elif (linearized, new_state) in cache:
                # Reaching this state without the unknown op (and so keeping it for later)
                # was tried already, or is where we stand.
                new_state = None
        if new_state is not None:
            new_linearized = linearized ^ marks[i]
            memo = (new_linearized, new_state)
            if memo in cache:
                if k < 0 and new_state == state:
                    cands = no_cands  # that config failed and it dominates this one
                    k = 0
                    continue
            else:
                cache.add(memo)
                if k < 0:
                    stack.append((e, forced if new_state == state else no_cands, state, linearized))
                    before, after = prv[e], nxt[e]
                    nxt[before] = after
                    prv[after] = before
                    r = ent_ret[e]
                    before, after = prv[r], nxt[r]
                    nxt[before] = after
                    prv[after] = before
                    remaining -= 1
                    if remaining == 0:
                        return Verdict.LINEARIZABLE, steps
                    done[i] = True
                else:
                    stack.append((-1 - k, cands, state, linearized))
                    c = class_of_op[i]
                    class_used[c] += 1
                    pos = free_pos[c]
                    if pos >= 0 and class_used[c] == len(members[c]):
                        before, after = f_prv[pos], f_nxt[pos]
                        f_nxt[before] = after
                        f_prv[after] = before
                state = new_state
                linearized = new_linearized
                cands = no_cands
                e = nxt[head]
                k = -1
                continue
        if k < 0:
            e = nxt[e]
        else:
            k += 1
    return Verdict.INCONCLUSIVE, steps


def _is_write(op: Op) -> bool:
    return op.kind != "read"


def _as_unknown(op: Op) -> Op:
    return replace(op, status="unknown", complete=math.inf, out_version=None, out_value=None)


def _cut(ops: Sequence[Op], t: float) -> list[Op]:
    """What had happened by time ``t``: ops still running become unknown writes or vanish."""
    out: list[Op] = []
    for op in ops:
        if op.invoke > t:
            continue
        if op.status == "unknown" or op.complete <= t:
            out.append(op)
        elif _is_write(op):
            out.append(_as_unknown(op))
    return out


@dataclass(slots=True)
class _Shrinker:
    """Bounded search for a small failing subset; every candidate costs a search."""

    step: StepFn
    steps_left: int = SHRINK_STEPS_MAX
    checks_left: int = SHRINK_CHECKS_MAX
    exhausted: bool = False

    def fails(self, core: Sequence[Op], context: Sequence[Op]) -> bool:
        """Whether ``core`` plus ``context`` (unknown ops) surely cannot be linearized."""
        if self.checks_left <= 0 or self.steps_left <= 0:
            self.exhausted = True
            return False
        self.checks_left -= 1
        ops = [*core, *context]
        verdict, steps = _search(ops, self.step, min(SHRINK_CHECK_STEPS_MAX, self.steps_left))
        self.steps_left -= steps
        if verdict is Verdict.INCONCLUSIVE:
            self.exhausted = True
        return verdict is Verdict.VIOLATION


def _shrink(key: str, ops: Sequence[Op]) -> Violation:
    """A small subset of a violating key's ops that still cannot be linearized.

    The open model gives the stronger statement (it fails whatever writes are missing), so it
    is tried first; when it does not reject the key, or its result is larger than
    OPEN_SHRUNK_OPS_MAX, the exact model is tried too and the smaller result wins.
    """
    open_ops = [op for op in ops if op.status != "unknown"]
    open_verdict, _ = _search(open_ops, step_open, SHRINK_CHECK_STEPS_MAX)
    best: Violation | None = None
    if open_verdict is Verdict.VIOLATION:
        best = _shrink_with(key, ops, use_open=True)
        if len(best.ops) <= OPEN_SHRUNK_OPS_MAX:
            return best
    exact = _shrink_with(key, ops, use_open=False)
    if best is None or len(exact.ops) < len(best.ops):
        return exact
    return best


def _shrink_with(key: str, ops: Sequence[Op], *, use_open: bool) -> Violation:
    """`_shrink` under one model: the open one, or the exact one with relaxed writes."""

    def context_for(history: Sequence[Op], core: Sequence[Op]) -> list[Op]:
        if use_open:
            return []
        kept = {id(op) for op in core}
        return [
            op if op.status == "unknown" else _as_unknown(op)
            for op in history
            if id(op) not in kept and _is_write(op) and op.status != "rejected"
        ]

    shrinker = _Shrinker(step_open if use_open else step_exact)

    # 1. The earliest cut that already fails (failing is monotone in the cut time).
    # The cut at the last completion is the whole history but for unknown ops sent after
    # every answer came, which cannot matter: it fails. The search keeps the invariant that
    # the cut at times[hi] fails.
    times = sorted({op.complete for op in ops if op.status != "unknown"})
    lo, hi = 0, len(times) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        candidate = _cut(ops, times[mid])
        core = [op for op in candidate if op.status != "unknown"]
        if shrinker.fails(core, context_for(candidate, core)):
            hi = mid
        else:
            lo = mid + 1
    history = _cut(ops, times[hi])
    core = [op for op in history if op.status != "unknown"]

    # 2. Delta debugging by complements: drop a chunk while the rest still fails.
    chunks_n = 2
    while len(core) >= 2 and not (shrinker.checks_left <= 0 or shrinker.steps_left <= 0):
        size = math.ceil(len(core) / chunks_n)
        reduced = False
        for start in range(0, len(core), size):
            candidate = core[:start] + core[start + size :]
            if shrinker.fails(candidate, context_for(history, candidate)):
                core = candidate
                chunks_n = max(chunks_n - 1, 2)
                reduced = True
                break
        if not reduced:
            if chunks_n >= len(core):
                break
            chunks_n = min(2 * chunks_n, len(core))

    core.sort(key=lambda op: (op.invoke, op.complete, op.client))
    if use_open:
        explanation = (
            f"these {len(core)} ops cannot be linearized in any order their real-time order "
            "allows, even if writes not shown here happened at any time"
        )
    else:
        explanation = (
            f"these {len(core)} ops cannot be linearized starting from the initial state "
            "(version 0, absent), even if the key's other writes took effect at any time "
            "after they were sent, or never"
        )
    # Paired with the checks above: the result still fails ...
    assert (
        _search([*core, *context_for(history, core)], shrinker.step, SHRINK_CHECK_STEPS_MAX)[0]
        is not Verdict.LINEARIZABLE
    )
    # ... and is 1-minimal if removing any one op gives a history that surely passes.
    minimal = len(core) <= MINIMAL_CHECK_OPS_MAX and all(
        _search([*rest, *context_for(history, rest)], shrinker.step, SHRINK_CHECK_STEPS_MAX)[0]
        is Verdict.LINEARIZABLE
        for rest in (core[:n] + core[n + 1 :] for n in range(len(core)))
    )
    return Violation(key, tuple(core), len(ops), explanation, minimal)


def check_key(
    key: str,
    ops: Sequence[Op],
    *,
    steps_max: int = STEPS_MAX_PER_KEY,
    shrink: bool = True,
) -> tuple[Verdict, int, Violation | None]:
    """Check one key's ops (already filtered to that key); see `check`."""
    live = [
        op
        for op in ops
        if op.status != "failed" and not (op.status == "unknown" and op.kind == "read")
    ]
    verdict, steps = _search(live, step_exact, steps_max)
    if verdict is not Verdict.VIOLATION:
        return verdict, steps, None
    if not shrink:
        explanation = f"these {len(live)} ops cannot be linearized (not shrunk)"
        return verdict, steps, Violation(key, tuple(live), len(live), explanation, False)
    return verdict, steps, _shrink(key, live)


def check(
    ops: Iterable[Op],
    *,
    steps_max_per_key: int = STEPS_MAX_PER_KEY,
    shrink: bool = True,
    shrink_keys_max: int = SHRINK_KEYS_MAX,
) -> CheckResult:
    """Check a history of register ops for linearizability, key by key.

    The first ``shrink_keys_max`` violating keys (in key order) get a shrunk counterexample;
    later ones report all their ops, so a badly broken store is still checked quickly.

    Raises ValueError for ops no client could have seen (a cas without an expected version,
    a rejected set, a completion before the invocation).
    """
    if steps_max_per_key < 1:
        raise ValueError("steps_max_per_key must be positive")
    by_key: dict[str, list[Op]] = {}
    ops_checked = 0
    for op in ops:
        _validate(op)
        ops_checked += 1
        by_key.setdefault(op.key, []).append(op)
    violations: list[Violation] = []
    inconclusive: list[str] = []
    steps_total = 0
    for key in sorted(by_key):
        verdict, steps, violation = check_key(
            key,
            by_key[key],
            steps_max=steps_max_per_key,
            shrink=shrink and len(violations) < shrink_keys_max,
        )
        steps_total += steps
        if violation is not None:
            violations.append(violation)
        elif verdict is Verdict.INCONCLUSIVE:
            inconclusive.append(key)
    return CheckResult(
        keys_checked=len(by_key),
        ops_checked=ops_checked,
        violations=violations,
        inconclusive=inconclusive,
        steps=steps_total,
    )
