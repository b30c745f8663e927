"""The peer wire format (paxoskv/transport/codec.py): auth, frames, deadlines, replies."""

from __future__ import annotations

import orjson
import pytest

from paxoskv.core.ballot import Ballot
from paxoskv.core.identity import PeerRecord
from paxoskv.core.messages import PeerProtocolError, Promise, Query
from paxoskv.core.register import Value
from paxoskv.transport.codec import (
    Sender,
    check_peer_auth,
    decode_frame,
    decode_replies,
    encode_frame,
    encode_replies,
)

SENDER = Sender(2, PeerRecord("d2", 3, "b2"), "fp")


def test_auth_header_check() -> None:
    """Goal: only the exact bearer secret passes; undecodable bytes are refused, not a
    crash (aiohttp hands them over as surrogate escapes)."""
    assert check_peer_auth("Bearer s3cret", "s3cret")
    assert not check_peer_auth("Bearer wrong", "s3cret")
    assert not check_peer_auth("s3cret", "s3cret")
    assert not check_peer_auth(None, "s3cret")
    assert not check_peer_auth("Bearer \udcff", "s3cret")


def test_frame_round_trip_keeps_sender_and_deadlines() -> None:
    """Goal: the header and each message's time-to-live survive the trip; a ttl above the
    receiver's bound is cut to it."""
    body = encode_frame(SENDER, [(Query("a"), 500), (Query("b"), 90_000)])
    sender, items = decode_frame(body, ttl_ms_max=5000)
    assert sender == SENDER
    assert items == [(Query("a"), 500), (Query("b"), 5000)]


@pytest.mark.parametrize("bad", [
    b"{", b"[]", b'{"m": 1}',
    b'{"h": {"from": 2, "data": "d", "inc": 1, "boot": "b", "fp": "f"}, "m": '
    b'[{"t": "accepted", "k": "a", "b": [1,1,1], "ttl": 5}]}',
    b'{"h": {"from": 2, "data": "d", "inc": 1, "boot": "b", "fp": "f"}, "m": '
    b'[{"t": "query", "k": "a"}]}',
    b'{"h": {"from": 2, "data": "d", "inc": 1, "boot": "b", "fp": "f"}, "m": '
    b'[{"t": "query", "k": "a", "ttl": 0}]}',
    b'{"h": {"from": "2", "data": "d", "inc": 1, "boot": "b", "fp": "f"}, "m": []}',
    b'{"m": [{"t": "query", "k": "a", "ttl": 5}]}',
])
def test_decode_frame_rejects_replies_and_garbage(bad: bytes) -> None:
    """Goal: replies inside a request frame, missing deadlines, a missing or malformed
    header and plain junk are all refused as the peer's fault."""
    with pytest.raises(PeerProtocolError):
        decode_frame(bad, ttl_ms_max=5000)


def test_replies_round_trip() -> None:
    """Goal: replies encode to the frame shape the sending side decodes, in order."""
    replies = [Promise("k", Ballot(2, 1), Ballot.ZERO, Value(0, None))]
    body = encode_replies(list(replies))
    assert orjson.loads(body) == {"r": [{"t": "promise", "k": "k", "b": [2, 1, 0],
                                         "ba": [0, 0, 0], "v": [0, None, []]}]}
    assert decode_replies(body, 1) == replies
    with pytest.raises(PeerProtocolError):
        decode_replies(body, 2)
