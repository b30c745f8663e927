"""Idempotency records (paxoskv/core/idempotency.py): Claim / Finish / Release as pure
change functions, alone and through ``register.apply_change``."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paxoskv.core.idempotency import (
    RESERVED_PREFIX,
    Claim,
    Finish,
    IdemChange,
    Record,
    RecordOutcome,
    Release,
    apply_record_change,
    decode_record,
    encode_record,
    fingerprint,
    record_key,
)
from paxoskv.core.register import RECENT_MAX, Read, Set, Value, apply_change

WINDOW = 1000
APPLIED = RecordOutcome("applied", 7)


def claimed(fp: str = "f1", token: str = "t1", at: int = 100) -> bytes:
    changed, data = apply_record_change(None, Claim(fp, token, at, WINDOW))
    assert changed
    return data or b""


def test_claim_of_an_absent_key_makes_a_pending_record() -> None:
    """Goal: the first Claim owns the key: a pending record with its fp, token and time."""
    record = decode_record(claimed())
    assert record == Record("f1", "t1", 100, WINDOW, "pending")


@pytest.mark.parametrize("fp", ["f1", "f2"])
def test_claim_of_a_live_record_changes_nothing(fp: str) -> None:
    """Goal: a second Claim, same request or another, leaves the record as it is."""
    data = claimed()
    assert apply_record_change(data, Claim(fp, "t2", 100 + WINDOW - 1, WINDOW)) == (False, data)
    finished = apply_record_change(data, Finish("t1", APPLIED))[1]
    assert apply_record_change(finished, Claim(fp, "t2", 150, WINDOW)) == (False, finished)


def test_claim_after_the_window_starts_afresh() -> None:
    """Goal: a record is kept for its window from its claim; then it can be claimed again."""
    data = apply_record_change(claimed(), Finish("t1", APPLIED))[1]
    changed, new = apply_record_change(data, Claim("f2", "t2", 100 + WINDOW, WINDOW))
    assert changed
    assert decode_record(new) == Record("f2", "t2", 100 + WINDOW, WINDOW, "pending")


def test_finish_records_the_owners_outcome_once() -> None:
    """Goal: only the owner's pending record is finished, and the first outcome stays."""
    data = claimed()
    assert apply_record_change(data, Finish("other", APPLIED)) == (False, data)
    changed, done = apply_record_change(data, Finish("t1", APPLIED))
    assert changed
    assert decode_record(done) == Record("f1", "t1", 100, WINDOW, "done", APPLIED)
    later = Finish("t1", RecordOutcome("rejected", None))
    assert apply_record_change(done, later) == (False, done)
    assert apply_record_change(None, Finish("t1", APPLIED)) == (False, None)


def test_release_frees_only_the_owners_pending_claim() -> None:
    """Goal: Release (the write definitely did not happen) empties the owner's pending
    record, and nothing else."""
    data = claimed()
    assert apply_record_change(data, Release("other")) == (False, data)
    assert apply_record_change(data, Release("t1")) == (True, None)
    done = apply_record_change(data, Finish("t1", APPLIED))[1]
    assert apply_record_change(done, Release("t1")) == (False, done)


@pytest.mark.parametrize("junk", [b"", b"[]", b"{}", b"not json", b'{"fp": 1}',
                                  b'{"fp":"a","token":"t","claimed_at_ms":1,"window_ms":2,'
                                  b'"state":"done","outcome":null}'])
def test_malformed_bytes_read_as_absent(junk: bytes) -> None:
    """Goal: the functions are total; bytes that are not a record read as absent."""
    assert decode_record(junk) is None
    assert apply_record_change(junk, Claim("f", "t", 0, 1))[0] is True


def test_through_apply_change_versions_and_request_ids() -> None:
    """Goal: wired into the register: a claim is an applied change (new version, request id
    remembered, so the round's own retry reports it instead of claiming twice); a claim that
    finds a record is 'rejected' with the record as the value."""
    start = Value(0, None)
    new, outcome = apply_change(start, Claim("f1", "t1", 5, WINDOW), "r1")
    assert outcome.kind == "applied"
    assert new.version == 1 and new.applied_version("r1") == 1
    again, outcome2 = apply_change(new, Claim("f1", "t1", 5, WINDOW), "r1")
    assert again == new and outcome2.kind == "applied" and outcome2.value.version == 1
    other, outcome3 = apply_change(new, Claim("f9", "t9", 6, WINDOW), "r2")
    assert other == new and outcome3.kind == "rejected"
    assert decode_record(outcome3.value.data) == decode_record(new.data)


def test_a_record_expires_when_its_window_ends_and_not_before() -> None:
    """Goal: a record carries the TTL of its window, counted from the claim: finishing
    keeps it, so the TTL sweeper deletes the record (and collection then removes its row)
    once the window is over; a round inside the window still sees it, one at its end sees
    a tombstone, and a fresh claim there owns the key anew."""
    claim = Claim("f1", "t1", 100, WINDOW)
    pending, _ = apply_change(Value(0, None), claim, "r1", now_ms=100)
    assert pending.expires_ms == 100 + WINDOW
    done, outcome = apply_change(pending, Finish("t1", APPLIED), "r2", now_ms=500)
    assert outcome.kind == "applied" and done.expires_ms == 100 + WINDOW
    released, _ = apply_change(pending, Release("t1"), "r3", now_ms=500)
    assert released.data is None and released.expires_ms is None

    inside, _ = apply_change(done, Read(), now_ms=100 + WINDOW - 1)
    assert inside == done
    after, _ = apply_change(done, Read(), now_ms=100 + WINDOW)
    assert after.data is None and after.version == done.version + 1
    again, outcome = apply_change(done, Claim("f2", "t2", 100 + WINDOW, WINDOW), "r4",
                                  now_ms=100 + WINDOW)
    assert outcome.kind == "applied" and again.expires_ms == 100 + 2 * WINDOW
    assert decode_record(again.data) == Record("f2", "t2", 100 + WINDOW, WINDOW, "pending")


def test_fingerprint_covers_method_key_body_and_conditions() -> None:
    """Goal: any difference in what the request would do gives another fingerprint; the
    framing keeps key and body apart."""
    base = fingerprint("PUT", "k", b"v", None, False)
    assert base == fingerprint("put", "k", b"v", None, False)
    variants = [fingerprint("DELETE", "k", b"v", None, False),
                fingerprint("PUT", "k2", b"v", None, False),
                fingerprint("PUT", "k", b"v2", None, False),
                fingerprint("PUT", "k", b"v", 1, False),
                fingerprint("PUT", "k", b"v", None, True)]
    assert len({base, *variants}) == 6
    assert fingerprint("PUT", "ab", b"c", None, False) != fingerprint("PUT", "a", b"bc", None,
                                                                       False)


def test_record_keys_are_reserved_and_sort_after_client_keys() -> None:
    """Goal: record registers live where no client key can, after every client key."""
    key = record_key("a1")
    assert key.startswith(RESERVED_PREFIX)
    assert max("z", "\U0010fffe-anything", "\uffff") < key


# ------------------------------------------------------------------ property test

_outcomes = st.builds(RecordOutcome, st.sampled_from(["applied", "rejected", "absent"]),
                      st.one_of(st.none(), st.integers(0, 10**12)))
_tokens = st.sampled_from(["t1", "t2", "t3"])
_changes: st.SearchStrategy[IdemChange] = st.one_of(
    st.builds(Claim, st.sampled_from(["f1", "f2"]), _tokens, st.integers(0, 5000),
              st.sampled_from([1, 50, 1000])),
    st.builds(Finish, _tokens, _outcomes),
    st.builds(Release, _tokens),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_changes, max_size=25))
def test_property_one_owner_per_window_and_first_outcome_wins(changes: list[IdemChange]
                                                              ) -> None:
    """Goal: over any sequence of changes (clock values in any order, as proposers' clocks
    may disagree):
    - the bytes always decode to a record or are absent;
    - a Claim takes effect only on an absent or expired record, and then the claimer owns it;
    - Finish and Release change only the owner's pending record;
    - a finished record keeps its first outcome until it is claimed afresh.
    """
    data: bytes | None = None
    for change in changes:
        before = decode_record(data)
        assert (before is None) == (data is None)
        changed, data = apply_record_change(data, change)
        after = decode_record(data)
        if not changed:
            assert after == before
            continue
        match change:
            case Claim(fp=fp, token=token, now_ms=now, window_ms=window):
                assert before is None or before.expired(now)
                assert after == Record(fp, token, now, window, "pending")
            case Finish(token=token, outcome=outcome):
                assert before is not None and before.token == token
                assert before.state == "pending"
                assert after is not None and after.state == "done"
                assert after.outcome == outcome
                assert (after.fp, after.claimed_at_ms) == (before.fp, before.claimed_at_ms)
            case Release(token=token):
                assert before is not None and before.token == token
                assert before.state == "pending" and after is None


@settings(max_examples=200, deadline=None)
@given(st.builds(Record, st.text(max_size=70), st.text(max_size=20),
                 st.integers(-2**62, 2**62), st.integers(0, 2**62),
                 st.just("done"), _outcomes))
def test_property_records_round_trip(record: Record) -> None:
    """Goal: encode/decode is lossless for every record."""
    assert decode_record(encode_record(record)) == record
    pending = Record(record.fp, record.token, record.claimed_at_ms, record.window_ms,
                     "pending")
    assert decode_record(encode_record(pending)) == pending


def test_record_request_ids_differ_per_claim() -> None:
    """Goal: a key claimed afresh after its window writes under a new request id, so the
    data register's memory of the old write cannot stand in for the new one."""
    a = decode_record(claimed(token="t1"))
    b = decode_record(claimed(token="t2"))
    assert a is not None and b is not None
    assert a.request_id("k") != b.request_id("k")
    assert len(a.request_id("k" * 64)) < 100
    assert RECENT_MAX >= 1
    assert apply_change(Value(0, None), Set(b"x"), a.request_id("k"))[0].applied_version(
        b.request_id("k")) is None
