"""Wire codec (paxoskv/core/messages.py): round trips, and strict rejection of bad frames."""

import pytest

from paxoskv.core.ballot import Ballot
from paxoskv.core.messages import (
    Accept,
    Accepted,
    Forward,
    Forwarded,
    Learn,
    Learned,
    Nack,
    PeerProtocolError,
    Prepare,
    Promise,
    Query,
    QueryReply,
    Unavailable,
    from_wire,
    to_wire,
)
from paxoskv.core.register import Cas, Delete, Value

B = Ballot(7, 2, 3)
MESSAGES = [
    Prepare("k", B),
    Promise("k", B, Ballot(1, 1, 1), Value(2, b"\x00\xffbin")),
    Promise("k", B, Ballot.ZERO, Value(0, None)),
    Accept("ключ/λ", B, Value(1, b"")),
    Accept("k", B, Value(9, b"v", (("req-2", 9), ("c:retry", 8)))),
    Accepted("k", B),
    Accept("k", B, Value(1, b"v"), Ballot(8, 2, 3)),
    Accepted("k", B, Ballot(8, 2, 3)),
    Forward("k", Cas(3, b"\x00v"), "req-1", "boot"),
    Forward("k", Delete(None), "req-2", "boot"),
    Forwarded("k", "rejected", 4, True),
    Forwarded("k", None, error="duplicate", detail="x"),
    Nack("k", B, Ballot(9, 1, 1)),
    Query("k"),
    QueryReply("k", B, Value(5, None)),
    Unavailable("k", "amnesia"),
    Learn("k", 3, True, True, b"\x00v"),
    Learn("k", 4, False, True),
    Learn("k", 5, True, False),
    Learned("k"),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip(msg: object) -> None:
    """Goal: decode(encode(m)) == m for every message type, binary and empty values included."""
    assert from_wire(to_wire(msg)) == msg  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "raw",
    [
        None, [], "prepare", {"t": "prepare"}, {"t": "prepare", "k": "k"},
        {"t": "prepare", "k": "", "b": [1, 1, 1]},
        {"t": "prepare", "k": "k", "b": [1, 1]},
        {"t": "prepare", "k": "k", "b": [-1, 1, 1]},
        {"t": "prepare", "k": "k", "b": [True, 1, 1]},
        {"t": "accept", "k": "k", "b": [1, 1, 1], "v": [1, "!!not base64!!", []]},
        {"t": "accept", "k": "k", "b": [1, 1, 1], "v": [-1, None, []]},
        {"t": "accept", "k": "k", "b": [1, 1, 1], "v": [1, None]},
        {"t": "accept", "k": "k", "b": [1, 1, 1], "v": [1, None, [["r", -1]]]},
        {"t": "accept", "k": "k", "b": [1, 1, 1], "v": [1, None, [[5, 1]]]},
        {"t": "accept", "k": "k", "b": [1, 1, 1], "v": [1, None, [["r", 1]] * 17]},
        {"t": "accept", "k": "k", "b": [1, 1, 1], "v": "x"},
        {"t": "accept", "k": "k", "b": [2, 1, 1], "v": [1, None, []], "n": [2, 1, 1]},
        {"t": "accept", "k": "k", "b": [2, 1, 1], "v": [1, None, []], "n": [1, 9, 9]},
        {"t": "accepted", "k": "k", "b": [2, 1, 1], "n": "x"},
        {"t": "bogus", "k": "k"},
        {"t": "unavailable", "k": "k", "r": 5},
        {"t": "learn", "k": "k", "ver": -1, "x": True, "i": True, "d": "AA=="},
        {"t": "learn", "k": "k", "ver": 1, "x": True, "i": True, "d": None},
        {"t": "learn", "k": "k", "ver": 1, "x": False, "i": True, "d": "AA=="},
        {"t": "learn", "k": "k", "ver": 1, "x": True, "i": False, "d": "AA=="},
        {"t": "learn", "k": "k", "ver": 1, "x": 1, "i": True, "d": "AA=="},
        {"t": "learn", "k": "k", "ver": 1, "x": True, "i": True, "d": "!!"},
    ],
)
def test_malformed_frames_raise_peer_protocol_error(raw: object) -> None:
    """Goal: the peer is blamed with PeerProtocolError; nothing malformed reaches the core."""
    with pytest.raises(PeerProtocolError):
        from_wire(raw)


def test_ballot_order_is_total_and_zero_is_least() -> None:
    """Goal: ballots compare by counter, then node, then incarnation; ZERO is below all."""
    assert Ballot(1, 2, 0) < Ballot(2, 1, 0)
    assert Ballot(1, 1, 5) < Ballot(1, 2, 0)
    assert Ballot(1, 1, 1) < Ballot(1, 1, 2)
    assert Ballot(0, 0, 1) > Ballot.ZERO


def test_ballot_parts_and_versions_beyond_sqlite_integers_are_refused() -> None:
    """Goal: a peer frame with a ballot part or a version SQLite cannot store (2**63 and up)
    is a protocol error, not a failed group commit (found by tests/api/test_fuzz.py: a
    prepare with counter 2**63 answered 500 and failed every write of its batch)."""
    from paxoskv.core.ballot import WIRE_INT_MAX

    ok = {"t": "prepare", "k": "k", "b": [WIRE_INT_MAX, 1, 0]}
    assert from_wire(ok) == Prepare("k", Ballot(WIRE_INT_MAX, 1, 0))
    for ballot in ([2**63, 1, 0], [1, 2**63, 0], [1, 1, 2**64 - 1], [WIRE_INT_MAX + 1, 1, 0]):
        with pytest.raises(PeerProtocolError):
            from_wire({"t": "prepare", "k": "k", "b": ballot})
    for value in ([2**63, None, []], [1, None, [["r", 2**63]]]):
        with pytest.raises(PeerProtocolError):
            from_wire({"t": "accept", "k": "k", "b": [1, 1, 0], "v": value})


def test_fast_ballots_sort_right_after_their_base() -> None:
    """Goal: the fast part is the lowest-order one, so ``b.successor()`` is above ``b`` and
    below every other ballot above ``b`` (nothing sorts between them)."""
    b = Ballot(5, 2, 1)
    f = b.successor()
    assert f == Ballot(5, 2, 1, 1) and f.is_fast and not b.is_fast
    assert b < f < f.successor() < Ballot(5, 2, 2) < Ballot(5, 3, 0) < Ballot(6, 0, 0)
    assert Ballot(5, 2, 0, 9) < b


def test_ballot_wire_keeps_three_parts_for_classic_ballots() -> None:
    """Goal: peers and frames from before fast ballots still parse: a classic ballot is
    three integers on the wire and in text (the storage checksum hashes the text); a fast
    one has a fourth part, and both forms parse."""
    b = Ballot(5, 2, 1)
    assert b.to_wire() == [5, 2, 1] and str(b) == "5.2.1"
    assert b.successor().to_wire() == [5, 2, 1, 1] and str(b.successor()) == "5.2.1.f1"
    assert Ballot.from_wire([5, 2, 1]) == b
    assert Ballot.from_wire([5, 2, 1, 1]) == b.successor()
    for bad in ([5, 2], [5, 2, 1, 1, 1], [5, 2, 1, -1], [5, 2, 1, True]):
        with pytest.raises(ValueError):
            Ballot.from_wire(bad)
