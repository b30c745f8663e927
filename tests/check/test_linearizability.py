"""Tests of paxoskv.check.linearizability and paxoskv.check.model: the checker must accept
every linearizable history and reject each kind of anomaly with a small counterexample."""

from __future__ import annotations

import dataclasses
import math
import os
import random
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from paxoskv.check import Op, Verdict, check, check_key
from paxoskv.check.model import (
    CAS,
    CREATE,
    DELETE,
    OK,
    READ,
    REJECTED,
    SET,
    UNKNOWN_DATA,
    EncodedOp,
    State,
    step_exact,
    step_open,
)
from paxoskv.check.synth import SynthOptions, linearizable_history

INF = math.inf


def op(
    client: int,
    kind: str,
    invoke: float,
    complete: float,
    status: str = "ok",
    *,
    value: bytes | None = None,
    expected: int | None = None,
    out_version: int | None = None,
    out_value: bytes | None = None,
    key: str = "k",
) -> Op:
    return Op(
        client=client,
        key=key,
        kind=kind,  # type: ignore[arg-type]
        invoke=invoke,
        complete=complete,
        status=status,  # type: ignore[arg-type]
        value=value,
        expected_version=expected,
        out_version=out_version,
        out_value=out_value,
    )


def put(client: int, t0: float, t1: float, data: bytes, version: int | None, **kw: object) -> Op:
    return op(client, "set", t0, t1, value=data, out_version=version, **kw)  # type: ignore[arg-type]


def get(client: int, t0: float, t1: float, data: bytes | None, version: int | None = None) -> Op:
    return op(client, "read", t0, t1, out_value=data, out_version=version)


def assert_linearizable(ops: list[Op]) -> None:
    result = check(ops)
    assert result.violations == [], result.summary()
    assert result.inconclusive == []
    assert result.ok


def violation_of(ops: list[Op]) -> tuple[Op, ...]:
    result = check(ops)
    assert not result.ok
    assert len(result.violations) == 1, result.summary()
    violation = result.violations[0]
    assert violation.minimal
    return violation.ops


# --- histories that must pass -------------------------------------------------------------


def test_sequential_history_of_every_kind_passes() -> None:
    """Goal: the model's rules for each op kind. Method: one client runs set, read, cas,
    delete, rejected delete, create and reads back, each op after the previous one."""
    ops = [
        put(1, 0, 1, b"a", 1),
        get(1, 2, 3, b"a", 1),
        op(1, "cas", 4, 5, value=b"b", expected=1, out_version=2),
        get(1, 6, 7, b"b", 2),
        op(1, "delete", 8, 9, out_version=3),
        op(1, "delete", 10, 11, "rejected"),
        get(1, 12, 13, None),
        op(1, "create", 14, 15, value=b"c", out_version=4),
        get(1, 16, 17, b"c", 4),
        op(1, "delete", 18, 19, expected=4, out_version=5),
    ]
    assert_linearizable(ops)


def test_concurrent_writes_may_take_effect_in_either_order() -> None:
    """Goal: overlapping calls may be linearized in any order. Method: two concurrent sets,
    then a read that saw the one with the earlier call as the last (version 2), and a read
    concurrent with both that saw the key still absent."""
    ops = [
        put(1, 0, 10, b"a", 2),
        put(2, 1, 9, b"b", 1),
        get(3, 2, 3, None),
        get(3, 11, 12, b"a", 2),
    ]
    assert_linearizable(ops)


def test_read_concurrent_with_write_may_see_old_or_new_value() -> None:
    """Goal: a read overlapping a write may see either value, and two such reads may see
    old then new. Method: set b overlaps two reads; the first sees a, the second b."""
    ops = [
        put(1, 0, 1, b"a", 1),
        put(1, 2, 10, b"b", 2),
        get(2, 3, 4, b"a", 1),
        get(2, 5, 6, b"b", 2),
        get(3, 3, 9, b"a", 1),
    ]
    assert_linearizable(ops)


def test_calls_touching_in_time_count_as_concurrent() -> None:
    """Goal: a call sent at the same instant another completes may be ordered before it.
    Method: a read starting exactly when a set returns still sees the old value."""
    ops = [put(1, 0, 5, b"a", 1), get(2, 5, 6, None)]
    assert_linearizable(ops)


def test_unknown_write_that_took_effect_passes() -> None:
    """Goal: a timed-out write may have applied. Method: an unknown set, then a read of its
    value at version 1."""
    ops = [op(1, "set", 0, INF, "unknown", value=b"a"), get(2, 5, 6, b"a", 1)]
    assert_linearizable(ops)


def test_unknown_write_that_did_not_take_effect_passes() -> None:
    """Goal: a timed-out write may never apply. Method: an unknown set followed by reads
    that see the key absent."""
    ops = [
        op(1, "set", 0, INF, "unknown", value=b"a"),
        get(2, 5, 6, None),
        get(2, 7, 8, None),
    ]
    assert_linearizable(ops)


def test_unknown_write_may_take_effect_long_after_it_was_sent() -> None:
    """Goal: an unknown write may be linearized after later ops. Method: unknown set a at 0,
    then set b completes and is read at v1, and only a later read sees a at v2."""
    ops = [
        op(1, "set", 0, INF, "unknown", value=b"a"),
        put(2, 1, 2, b"b", 1),
        get(2, 3, 4, b"b", 1),
        get(2, 5, 6, b"a", 2),
    ]
    assert_linearizable(ops)


def test_rejected_ops_observing_the_current_version_pass() -> None:
    """Goal: rejected conditions are identity steps that observed the state. Method: a cas
    on an absent key, a create on a present key reporting its version, a cas with the wrong
    version reporting the right one, a delete of an absent key, and a cas that names the
    tombstone's version (rejected: the key is absent)."""
    ops = [
        op(1, "cas", 0, 1, "rejected", value=b"x", expected=0),
        put(1, 2, 3, b"a", 1),
        op(1, "create", 4, 5, "rejected", value=b"y", out_version=1),
        op(1, "cas", 6, 7, "rejected", value=b"z", expected=7, out_version=1),
        op(1, "delete", 8, 9, out_version=2),
        op(1, "delete", 10, 11, "rejected"),
        op(1, "cas", 12, 13, "rejected", value=b"w", expected=2),
        op(1, "create", 14, 15, value=b"c", out_version=3),
    ]
    assert_linearizable(ops)


def test_failed_ops_are_ignored() -> None:
    """Goal: a failed op had no effect. Method: a failed set, then a read of absent."""
    ops = [op(1, "set", 0, 1, "failed", value=b"a"), get(1, 2, 3, None)]
    assert_linearizable(ops)


# --- histories that must fail ---------------------------------------------------------------


@pytest.mark.parametrize("with_versions", [True, False])
def test_stale_read_fails(with_versions: bool) -> None:
    """Goal: a read may not see a value overwritten before it started. Method: set a, set b,
    then a read of a; with and without versions on the ops."""
    v = (lambda n: n) if with_versions else (lambda n: None)
    stale = get(2, 4, 5, b"a", v(1))
    newer = put(1, 2, 3, b"b", v(2))
    ops = [put(1, 0, 1, b"a", v(1)), newer, stale]
    counterexample = violation_of(ops)
    assert stale in counterexample
    assert newer in counterexample
    assert len(counterexample) <= 3


def test_lost_write_fails() -> None:
    """Goal: an acknowledged write must be visible to a read that starts after it. Method:
    an ok set, then a read of absent."""
    write = put(1, 0, 1, b"a", 1)
    read = get(2, 2, 3, None)
    assert set(violation_of([write, read])) == {write, read}


def test_lost_write_among_many_fails_with_a_small_counterexample() -> None:
    """Goal: shrinking finds the anomaly in a long history. Method: 60 sequential sets and
    reads on the key, one write whose effect a later read does not see, then more traffic;
    the counterexample must hold the lost write and the stale read and be small."""
    ops: list[Op] = []
    t = 0.0
    for n in range(1, 31):
        ops.append(put(n % 3, t, t + 1, f"v{n}".encode(), n))
        ops.append(get(n % 3, t + 2, t + 3, f"v{n}".encode(), n))
        t += 4
    lost = put(1, t, t + 1, b"lost", 31)
    stale = get(2, t + 2, t + 3, b"v30", 30)
    ops += [lost, stale]
    for n in range(32, 40):
        t += 4
        ops.append(put(n % 3, t, t + 1, f"v{n}".encode(), n))
    counterexample = violation_of(ops)
    assert lost in counterexample
    assert stale in counterexample
    assert len(counterexample) <= 3


@pytest.mark.parametrize("version", [1, None])
def test_read_of_a_value_never_written_fails(version: int | None) -> None:
    """Goal: a read can only return a written value. Method: set a, then a read of zzz."""
    bogus = get(2, 2, 3, b"zzz", version)
    counterexample = violation_of([put(1, 0, 1, b"a", 1), bogus])
    assert bogus in counterexample
    assert len(counterexample) <= 2


def test_read_of_a_value_never_written_on_a_fresh_key_fails() -> None:
    """Goal: the initial state is (0, absent). Method: the only op reads a value."""
    bogus = get(1, 0, 1, b"zzz")
    assert violation_of([bogus]) == (bogus,)


def test_two_cas_winners_for_one_version_fail() -> None:
    """Goal: only one cas can win a given expected version. Method: two concurrent cas on
    version 1 both report ok at version 2."""
    cas_b = op(1, "cas", 2, 5, value=b"b", expected=1, out_version=2)
    cas_c = op(2, "cas", 2, 5, value=b"c", expected=1, out_version=2)
    counterexample = violation_of([put(1, 0, 1, b"a", 1), cas_b, cas_c])
    assert cas_b in counterexample
    assert cas_c in counterexample
    assert len(counterexample) <= 3


def test_two_cas_winners_without_reported_versions_fail() -> None:
    """Goal: the cas winners are caught by the condition alone. Method: as above but the
    store reports no versions."""
    cas_b = op(1, "cas", 2, 5, value=b"b", expected=1)
    cas_c = op(2, "cas", 2, 5, value=b"c", expected=1)
    counterexample = violation_of([put(1, 0, 1, b"a", None), cas_b, cas_c])
    assert {cas_b, cas_c} <= set(counterexample)


@pytest.mark.parametrize("observer", ["read", "write"])
def test_version_going_backwards_fails(observer: str) -> None:
    """Goal: versions only grow. Method: after set reports v2, a read reports v1 (with the
    newer data), or a later set reports v2 again."""
    newer = put(1, 2, 3, b"b", 2)
    late = get(2, 4, 5, b"b", 1) if observer == "read" else put(2, 4, 5, b"c", 2)
    counterexample = violation_of([put(1, 0, 1, b"a", 1), newer, late])
    assert late in counterexample
    assert len(counterexample) <= 3


def test_rejected_cas_reporting_an_impossible_version_fails() -> None:
    """Goal: a rejected cas observed the state, so its reported version must have been
    current during the call. Method: after set reports v2, a rejected cas reports v1."""
    newer = put(1, 2, 3, b"b", 2)
    rejected = op(2, "cas", 4, 5, "rejected", value=b"x", expected=9, out_version=1)
    counterexample = violation_of([put(1, 0, 1, b"a", 1), newer, rejected])
    assert rejected in counterexample
    assert newer in counterexample
    assert len(counterexample) <= 3


def test_rejected_cas_whose_condition_held_fails() -> None:
    """Goal: a cas rejected while its condition held is an anomaly (docs/design.md pitfall 3).
    Method: set v1, then a cas on version 1 rejected reporting version 1."""
    rejected = op(2, "cas", 2, 3, "rejected", value=b"x", expected=1, out_version=1)
    counterexample = violation_of([put(1, 0, 1, b"a", 1), rejected])
    assert rejected in counterexample


def test_unknown_write_cannot_explain_a_read_before_it_was_sent() -> None:
    """Goal: an unknown op takes effect only after its invoke. Method: a read of a completes
    before the unknown set a is sent."""
    read = get(1, 0, 1, b"a", 1)
    late = op(2, "set", 2, INF, "unknown", value=b"a")
    assert read in violation_of([read, late])


def test_only_the_violating_key_is_reported() -> None:
    """Goal: P-compositionality: keys are checked alone. Method: a clean history on ten keys
    plus a stale read on one of them."""
    ops = linearizable_history(random.Random(3), SynthOptions(keys=10, ops=500))
    ops += [
        put(1, 1000, 1001, b"a", None, key="bad"),
        put(1, 1002, 1003, b"b", None, key="bad"),
        op(2, "read", 1004, 1005, out_value=b"a", key="bad"),
    ]
    result = check(ops)
    assert [v.key for v in result.violations] == ["bad"]
    assert result.keys_checked == 11
    assert result.ops_checked == 503


def test_search_budget_makes_a_key_inconclusive_not_hang() -> None:
    """Goal: exponential keys stop at the budget. Method: 24 concurrent unknown sets of
    distinct values, then reads without versions that see u0, u1 and u0 again: no subset
    explains the second u0 (each write happens at most once), and the search must try every
    subset of the other writes to be sure. With a budget of 2,000 steps the key is reported
    inconclusive, not a violation, within a bounded time."""
    ops = [op(c, "set", 0, INF, "unknown", value=f"u{c}".encode()) for c in range(24)]
    ops += [get(99, 1, 2, b"u0"), get(99, 3, 4, b"u1"), get(99, 5, 6, b"u0")]
    ops += [get(98, 7, 8, f"u{c}".encode()) for c in range(2, 24)]  # every value is read
    started = time.perf_counter()
    result = check(ops, steps_max_per_key=2_000)
    assert result.inconclusive == ["k"]
    assert result.violations == []
    assert not result.ok
    assert result.steps <= 2_000
    assert time.perf_counter() - started < 60  # bounded, not a speed claim
    verdict, steps, _ = check_key("k", ops, steps_max=2_000)
    assert verdict is Verdict.INCONCLUSIVE
    assert steps == 2_000


@pytest.mark.parametrize(
    "bad",
    [
        op(1, "cas", 0, 1, value=b"x"),
        op(1, "set", 0, 1, "rejected", value=b"x"),
        op(1, "set", 0, 1),
        op(1, "read", 2, 1),
    ],
    ids=["cas-without-expected", "rejected-set", "set-without-value", "complete-first"],
)
def test_malformed_ops_are_rejected(bad: Op) -> None:
    """Goal: recorder bugs are reported as such, not as store violations. Method: each
    malformed op makes check raise ValueError."""
    with pytest.raises(ValueError):
        check([bad])


# --- properties -----------------------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    ops=st.integers(0, 150),
    keys=st.integers(1, 4),
    spread=st.sampled_from([0.0, 0.3, 1.0, 3.0]),
    unknown=st.sampled_from([0.0, 0.05, 0.2]),
    versions=st.booleans(),
)
def test_histories_of_a_sequential_register_are_linearizable(
    seed: int, ops: int, keys: int, spread: float, unknown: float, versions: bool
) -> None:
    """Goal: no false alarms. Method: run a sequential register, draw each op's interval
    around its linearization point (so intervals overlap), time some writes out (applied or
    not) and fail some, with or without versions in the answers; the checker must find no
    violation."""
    options = SynthOptions(
        keys=keys, ops=ops, spread=spread, unknown_probability=unknown, versions=versions
    )
    history = linearizable_history(random.Random(seed), options)
    result = check(history)
    assert result.violations == [], result.summary()
    assert result.inconclusive == []


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    ops=st.integers(1, 120),
    spread=st.sampled_from([0.0, 0.3, 1.0, 3.0]),
    unknown=st.sampled_from([0.0, 0.05, 0.2]),
    data=st.data(),
)
def test_a_read_of_a_value_never_written_is_always_caught(
    seed: int, ops: int, spread: float, unknown: float, data: st.DataObject
) -> None:
    """Goal: every mutation of one read to an unwritten value is caught, on the right key,
    with the read in the counterexample. Method: as above, then replace one read's result."""
    options = SynthOptions(keys=2, ops=ops, spread=spread, unknown_probability=unknown)
    history = linearizable_history(random.Random(seed), options)
    reads = [i for i, o in enumerate(history) if o.kind == "read"]
    if not reads:
        return
    i = data.draw(st.sampled_from(reads))
    history[i] = dataclasses.replace(history[i], out_value=b"never written")
    result = check(history)
    assert [v.key for v in result.violations] == [history[i].key]
    assert history[i] in result.violations[0].ops


_data = st.sampled_from([None, b"a", b"b", UNKNOWN_DATA])
_version = st.integers(0, 4)
_maybe_version = st.none() | _version


@st.composite
def _encoded_ops(draw: st.DrawFn) -> EncodedOp:
    kind = draw(st.sampled_from([SET, CAS, CREATE, DELETE, READ]))
    status = draw(st.sampled_from([OK, REJECTED]))
    if kind == SET:
        status = OK
    expected = None
    if kind == CAS:
        expected = draw(_version)
    elif kind == DELETE:
        expected = draw(_maybe_version)
    value = draw(st.sampled_from([b"a", b"b", b"c"])) if kind in (SET, CAS, CREATE) else None
    out_value = draw(st.sampled_from([None, b"a", b"b", b"c"])) if kind == READ else None
    return (kind, status, value, expected, draw(_maybe_version), out_value)


def _in_open(state: State, open_state: State) -> bool:
    version, data = state
    open_version, open_data = open_state
    if version > open_version:
        return True
    return version == open_version and (open_data is UNKNOWN_DATA or open_data == data)


@settings(max_examples=600, deadline=None)
@given(
    version=_version,
    data=st.sampled_from([None, b"a", b"b"]),
    base_version=_version,
    base_data=_data,
    encoded=_encoded_ops(),
)
def test_open_model_over_approximates_the_exact_model(
    version: int, data: bytes | None, base_version: int, base_data: object, encoded: EncodedOp
) -> None:
    """Goal: the soundness of shrinking with the open model: whatever the exact model can do
    from any state the open state stands for, the open model allows. Method: for an exact
    state inside an open state and any op, the exact successor (if any) must lie inside the
    open successor."""
    open_state: State = (base_version, base_data)  # type: ignore[assignment]
    exact: State = (version, data)
    if not _in_open(exact, open_state):
        return
    after = step_exact(exact, encoded)
    if after is None:
        return
    open_after = step_open(open_state, encoded)
    assert open_after is not None
    assert _in_open(after, open_after)


def test_scale_100k_ops_1k_keys() -> None:
    """Goal: the checker handles a large history. Method: 100,000 ops over 1,000 keys, four
    clients per key, overlapping calls and unknown writes; it must check clean. The time is
    printed (run with -s), not asserted: see the module docstring for the measured figure."""
    history = linearizable_history(
        random.Random(2026), SynthOptions(keys=1_000, ops=100_000, clients=4, spread=2.0)
    )
    started = time.perf_counter()
    cpu_started = time.process_time()
    result = check(history)
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    print(f"\n100k ops / 1k keys checked in {elapsed:.2f} s wall, {cpu:.2f} s CPU")
    assert result.ok, result.summary()
    assert result.keys_checked == 1_000
    assert result.ops_checked == 100_000


def _brute_force(ops: list[Op], step: object) -> bool:
    """Linearizable iff some subset of the unknown ops, together with every definite op,
    has an order that respects real time (a before b when a completes before b is invoked)
    and that the model accepts from the initial state."""
    from itertools import combinations, permutations

    from paxoskv.check.linearizability import _encode

    step_fn = step_exact if step is step_exact else step_open
    live = [
        o for o in ops if o.status != "failed" and not (o.status == "unknown" and o.kind == "read")
    ]
    definite = [o for o in live if o.status != "unknown"]
    unknown = [o for o in live if o.status == "unknown"]
    for k in range(len(unknown) + 1):
        for chosen in combinations(unknown, k):
            group = definite + list(chosen)
            for order in permutations(group):
                if any(
                    later.complete < earlier.invoke
                    for n, earlier in enumerate(order)
                    for later in order[n + 1 :]
                ):
                    continue
                state: State | None = (0, None)
                for o in order:
                    assert state is not None
                    state = step_fn(state, _encode(o))
                    if state is None:
                        break
                if state is not None:
                    return True
    return False


@st.composite
def _small_histories(draw: st.DrawFn) -> list[Op]:
    """Up to six ops on one key with small times, values and versions, so that both
    linearizable and non-linearizable histories are common."""
    ops: list[Op] = []
    for client in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["set", "cas", "create", "delete", "read"]))
        status = draw(st.sampled_from(["ok", "ok", "rejected", "unknown", "failed"]))
        if kind == "set" and status == "rejected":
            status = "ok"
        invoke = float(draw(st.integers(0, 6)))
        complete = INF if status == "unknown" else invoke + draw(st.integers(0, 4))
        value = draw(st.sampled_from([b"a", b"b"])) if kind in ("set", "cas", "create") else None
        expected = None
        if kind == "cas":
            expected = draw(st.integers(0, 3))
        elif kind == "delete":
            expected = draw(st.none() | st.integers(0, 3))
        out_version = None if status == "unknown" else draw(st.none() | st.integers(0, 4))
        out_value = None
        if kind == "read" and status == "ok":
            out_value = draw(st.sampled_from([None, b"a", b"b"]))
        ops.append(
            op(
                client,
                kind,
                invoke,
                complete,
                status,
                value=value,
                expected=expected,
                out_version=out_version,
                out_value=out_value,
            )
        )
    return ops


@settings(
    max_examples=int(os.environ.get("CHECK_BRUTE_EXAMPLES", "400")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(history=_small_histories())
def test_search_agrees_with_brute_force_on_small_histories(history: list[Op]) -> None:
    """Goal: the search (with its pruning: memoization, interchangeable unknown ops, version
    bounds, unread values merged) decides exactly like the definition. Method: for random
    histories of up to six ops, compare its verdict, under both models, with an exhaustive
    enumeration of subsets of unknown ops and orders that respect real time. Set
    CHECK_BRUTE_EXAMPLES for a longer run."""
    from paxoskv.check.linearizability import _search

    live = [
        o
        for o in history
        if o.status != "failed" and not (o.status == "unknown" and o.kind == "read")
    ]
    for step in (step_exact, step_open):
        ops = live if step is step_exact else [o for o in live if o.status != "unknown"]
        verdict, _ = _search(ops, step, 1_000_000)
        assert verdict is not Verdict.INCONCLUSIVE
        assert (verdict is Verdict.LINEARIZABLE) == _brute_force(ops, step), (step, ops)
    verdict, _, violation = check_key("k", history)
    if violation is not None:
        # The shrunk counterexample is a subset of the history that still cannot be linearized.
        assert set(violation.ops) <= set(history)
        assert not _brute_force(list(violation.ops), step_exact)
