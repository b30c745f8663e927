"""TTL values in the register, the codec and storage (docs/ttl.md)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from paxoskv.core.acceptor import AcceptorState
from paxoskv.core.ballot import Ballot
from paxoskv.core.messages import _value_from_wire, _value_to_wire
from paxoskv.core.register import (
    Cas,
    Create,
    Delete,
    Expire,
    Read,
    Renew,
    Set,
    Value,
    apply_change,
)
from paxoskv.ttl import parse_ttl

LIVE = Value(3, b"v", (("a", 3),), expires_ms=1_000)


def test_set_with_ttl_counts_from_the_round_time() -> None:
    new, out = apply_change(Value(0, None), Set(b"x", ttl_ms=500), "r1", now_ms=10_000)
    assert out.kind == "applied" and new.expires_ms == 10_500 and new.data == b"x"


def test_plain_set_clears_the_expiry() -> None:
    new, _ = apply_change(LIVE, Set(b"y"), "r2", now_ms=500)
    assert new.expires_ms is None


def test_round_past_the_expiry_deletes_before_anything_else() -> None:
    # A read in a round after expiry commits a tombstone: the next version, no data.
    new, out = apply_change(LIVE, Read(), None, now_ms=1_000)
    assert out.kind == "read" and new.version == 4 and not new.exists
    # ...one just before does not.
    same, _ = apply_change(LIVE, Read(), None, now_ms=999)
    assert same is LIVE


def test_create_succeeds_on_an_expired_key_and_cas_fails() -> None:
    new, out = apply_change(LIVE, Create(b"mine", ttl_ms=200), "r3", now_ms=2_000)
    assert out.kind == "applied" and new.version == 5 and new.expires_ms == 2_200
    kept, out = apply_change(LIVE, Cas(3, b"z"), "r4", now_ms=2_000)
    assert out.kind == "rejected" and not kept.exists  # the tombstone is still written
    _, out = apply_change(LIVE, Delete(), "r5", now_ms=2_000)
    assert out.kind == "absent"


def test_renew_extends_keeps_data_and_bumps_version() -> None:
    new, out = apply_change(LIVE, Renew(5_000), "r6", now_ms=900)
    assert out.kind == "applied" and new.data == b"v" and new.version == 4
    assert new.expires_ms == 5_900
    _, out = apply_change(LIVE, Renew(5_000, expected_version=2), "r7", now_ms=900)
    assert out.kind == "rejected"
    _, out = apply_change(LIVE, Renew(5_000), "r8", now_ms=1_000)  # too late
    assert out.kind == "absent"


def test_expire_deletes_only_the_expired_version() -> None:
    new, out = apply_change(LIVE, Expire(3), "r9", now_ms=1_000)
    assert out.kind == "applied" and not new.exists
    renewed, _ = apply_change(LIVE, Renew(5_000), "r10", now_ms=900)
    after, out = apply_change(renewed, Expire(3), "r11", now_ms=1_000)
    assert out.kind == "rejected" and after is renewed


def test_no_clock_means_no_expiry() -> None:
    same, out = apply_change(LIVE, Read(), None, now_ms=None)
    assert same is LIVE and out.value.exists


def test_wire_keeps_old_values_and_carries_expiry() -> None:
    old = Value(2, b"d", (("x", 2),))
    assert len(_value_to_wire(old)) == 3  # framed exactly as before TTLs
    assert _value_from_wire(_value_to_wire(old)) == old
    assert _value_from_wire(_value_to_wire(LIVE)) == LIVE
    assert _value_from_wire(_value_to_wire(LIVE, raw=True)) == LIVE
    assert LIVE.digest() != Value(3, b"v", (("a", 3),)).digest()


def test_sqlite_round_trips_expiry_and_reads_old_rows(tmp_path: Path) -> None:
    from paxoskv.storage.sqlite import SqliteStorage, _recent_text

    assert _recent_text(Value(1, b"a", (("r", 1),))) == '[["r",1]]'  # old row format

    async def run() -> None:
        storage = SqliteStorage(tmp_path)
        await storage.save("k", AcceptorState(Ballot(1, 1), Ballot(1, 1), LIVE))
        await storage.save("old", AcceptorState(Ballot(1, 1), Ballot(1, 1),
                                                Value(1, b"a", (("r", 1),))))
        await storage.close()
        again = SqliteStorage(tmp_path)
        assert again.load("k").value == LIVE
        assert again.load("old").value.expires_ms is None
        await again.close()

    asyncio.run(run())


@pytest.mark.parametrize(("text", "ms"), [("30s", 30_000), ("1500ms", 1_500), ("2", 2_000),
                                          ("5m", 300_000), ("1h", 3_600_000)])
def test_parse_ttl(text: str, ms: int) -> None:
    assert parse_ttl(text) == ms


@pytest.mark.parametrize("text", ["", "-1s", "1.5s", "10ms", "1y", "400d", "s"])
def test_parse_ttl_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_ttl(text)
