"""The peer wire format (paxoskv/transport/codec.py): auth, frames, deadlines, replies."""

from __future__ import annotations

import contextlib

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paxoskv.core.ballot import WIRE_INT_MAX, Ballot
from paxoskv.core.identity import PeerRecord
from paxoskv.core.messages import (
    Accept,
    Accepted,
    Nack,
    PeerProtocolError,
    Prepare,
    Promise,
    Query,
    QueryReply,
    Reply,
    Request,
    Unavailable,
)
from paxoskv.core.register import RECENT_MAX, Value
from paxoskv.transport import codec
from paxoskv.transport.codec import (
    Sender,
    check_peer_auth,
    decode_frame,
    decode_replies,
    encode_frame,
    encode_replies,
    is_binary_frame,
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
    """Goal: replies encode to the frame shape the sending side decodes, in order (the
    JSON form, still answered to JSON request frames)."""
    replies = [Promise("k", Ballot(2, 1), Ballot.ZERO, Value(0, None))]
    body = encode_replies(list(replies), binary=False)
    assert orjson.loads(body) == {"r": [{"t": "promise", "k": "k", "b": [2, 1, 0],
                                         "ba": [0, 0, 0], "v": [0, None, []]}]}
    assert decode_replies(body, 1) == replies
    with pytest.raises(PeerProtocolError):
        decode_replies(body, 2)


values = st.builds(Value, st.integers(0, WIRE_INT_MAX), st.none() | st.binary(max_size=300),
                   st.lists(st.tuples(st.text(max_size=8), st.integers(0, WIRE_INT_MAX)),
                            max_size=RECENT_MAX).map(tuple))
ballots = st.builds(Ballot, st.integers(0, 2**40), st.integers(0, 9), st.integers(0, 99))
keys = st.text(min_size=1, max_size=20)
requests = st.one_of(st.builds(Prepare, keys, ballots), st.builds(Accept, keys, ballots, values),
                     st.builds(Query, keys))
replies_ = st.one_of(st.builds(Promise, keys, ballots, ballots, values),
                     st.builds(Accepted, keys, ballots), st.builds(Nack, keys, ballots, ballots),
                     st.builds(QueryReply, keys, ballots, values),
                     st.builds(Unavailable, keys, st.text(max_size=20)))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(requests, st.integers(1, 10_000)), max_size=20))
def test_binary_frame_round_trip(items: list[tuple[Request, int]]) -> None:
    """Goal: any batch of requests survives the binary frame unchanged, value bytes raw
    (not base64) after the metadata."""
    body = encode_frame(SENDER, items)
    assert is_binary_frame(body)
    assert decode_frame(body, ttl_ms_max=10_000) == (SENDER, items)
    for msg, _ in items:
        data = getattr(msg, "value", Value(0, None)).data
        if data and len(data) > 8:
            assert data in body


@settings(max_examples=200, deadline=None)
@given(st.lists(replies_, max_size=20))
def test_binary_replies_round_trip(replies: list[Reply]) -> None:
    body = encode_replies(replies)
    assert is_binary_frame(body)
    assert decode_replies(body, len(replies)) == replies


def test_binary_frame_is_smaller_than_json_for_values() -> None:
    """Goal: the point of the binary codec: a value costs its bytes, not 4/3 of them."""
    msgs: list[tuple[Request, int]] = [
        (Accept(f"k{i}", Ballot(1, 1), Value(1, bytes(1000))), 100) for i in range(10)]
    binary, json = encode_frame(SENDER, msgs), encode_frame(SENDER, msgs, binary=False)
    assert decode_frame(binary, 1000) == decode_frame(json, 1000)
    assert len(binary) < 10_000 + 1500 < len(json)


def test_a_base64_value_in_binary_metadata_still_decodes() -> None:
    """Goal: a message type whose encoder does not pass bytes through (base64 text in the
    metadata) still travels in a binary frame: the codec needs no change per type."""
    meta = {"h": SENDER.to_wire(), "m": [{"t": "accept", "k": "k", "b": [1, 1, 0],
                                          "v": [1, "aGk=", []], "ttl": 5}]}
    body = codec._encode_binary(codec._KIND_REQUEST, meta)
    assert decode_frame(body, 1000)[1] == [(Accept("k", Ballot(1, 1), Value(1, b"hi")), 5)]


def _binary(meta: object, tail: bytes = b"", kind: int = 0x51) -> bytes:
    raw = orjson.dumps(meta)
    return codec._HEAD.pack(codec.BINARY_MAGIC, kind, len(raw)) + raw + tail


_H = SENDER.to_wire()
_DEEP: list[object] = []
for _ in range(30):
    _DEEP = [_DEEP]


@pytest.mark.parametrize("bad", [
    b"\xb7P", b"\xb7PQ\x00\x00", b"\xb7PQ\x00\x00\x00\x10{}",
    _binary({"h": _H, "m": []}, kind=0x52),
    _binary({"h": _H, "m": []})[:-1],
    b"\xb7PQ\x00\x00\x00\x02{x",
    _binary([1, 2]),
    _binary({"h": _H, "m": [{"t": "accept", "k": "k", "b": [1, 1, 0],
                             "v": [1, {"$b": [0, 5]}, []], "ttl": 5}]}, b"1234"),
    _binary({"h": _H, "m": [{"t": "accept", "k": "k", "b": [1, 1, 0],
                             "v": [1, {"$b": [-1, 2]}, []], "ttl": 5}]}, b"1234"),
    _binary({"h": _H, "m": [{"t": "accept", "k": "k", "b": [1, 1, 0],
                             "v": [1, {"$b": [0, 1], "x": 1}, []], "ttl": 5}]}, b"1234"),
    _binary({"h": _H, "m": [{"t": "accept", "k": "k", "b": [1, 1, 0],
                             "v": [1, {"$b": "0"}, []], "ttl": 5}]}, b"1234"),
    _binary({"h": _H, "m": [{"t": "query", "k": {"$b": [0, 1]}, "ttl": 5}]}, b"1234"),
    _binary({"h": _H, "m": [{"$b": [0, 1]}]}, b"1234"),
    _binary({"h": _H, "m": [{"t": "query", "k": "k", "ttl": 5, "x": _DEEP}]}),
    _binary({"h": _H, "m": [{"t": "accepted", "k": "a", "b": [1, 1, 1], "ttl": 5}]}),
])
def test_decode_binary_frame_rejects_garbage(bad: bytes) -> None:
    """Goal: truncated headers, lengths past the end, the wrong kind, blob references out
    of bounds or malformed, bytes where text belongs, runaway nesting and replies inside a
    request frame are all the peer's fault (PeerProtocolError), never a crash."""
    with pytest.raises(PeerProtocolError):
        decode_frame(bad, ttl_ms_max=5000)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 300))
def test_decode_never_crashes_on_mangled_frames(noise: bytes, cut: int) -> None:
    """Goal: a valid frame with any bytes spliced in, or cut short, decodes or raises
    PeerProtocolError; nothing else escapes."""
    good = encode_frame(SENDER, [(Accept("k", Ballot(1, 1), Value(1, b"abc")), 5)])
    for body in (good[:cut] + noise, good[:cut] + noise + good[cut:], codec.BINARY_MAGIC + noise):
        for decode in (lambda b: decode_frame(b, 5000), lambda b: decode_replies(b, 1)):
            with contextlib.suppress(PeerProtocolError):
                decode(body)


def test_floor_pages_round_trip_and_refuse_garbage() -> None:
    """Goal: the bucket floors a rejoining acceptor copies (docs/gc.md) cross the wire
    intact, fast ballots included, and a malformed answer is refused, never half-used.

    Method: encode a page through JSON and decode it; then decode answers with a bucket out
    of range, a negative version, a bad ballot and a missing list."""
    from paxoskv.core.acceptor import FLOOR_BUCKETS, LEGACY_FLOOR_BUCKETS, Floor
    from paxoskv.transport.codec import decode_floor_page, encode_floor_page

    page = [(0, Floor(Ballot(3, 1, 2), 7)), (FLOOR_BUCKETS - 1, Floor(Ballot(9, 2, 1, 4), 0))]
    assert decode_floor_page(orjson.loads(orjson.dumps(encode_floor_page(page)))) == page
    for bad in ({"floors": [[LEGACY_FLOOR_BUCKETS, [1, 1, 1], 1]]},
                {"buckets": FLOOR_BUCKETS, "bucket_floors": [[FLOOR_BUCKETS, [1, 1, 1], 1]]},
                {"buckets": 0, "bucket_floors": []}, {"buckets": "256", "bucket_floors": []},
                {"floors": [[1, [1, 1, 1], -1]]},
                {"floors": [[1, [1, -1, 1], 1]]}, {"floors": [[True, [1, 1, 1], 1]]},
                {"floors": None}, []):
        with pytest.raises(PeerProtocolError):
            decode_floor_page(bad)


def test_floor_pages_of_another_bucket_count_only_ever_raise_floors() -> None:
    """Goal: mixed releases never make a floor go down or land on the wrong keys. An
    earlier release's page (65,536 buckets, no count) folds into ours, each bucket the
    highest of those mapping to it; a count that does not fold onto ours is refused; and
    our page is one an earlier release's decoder refuses (no ``floors`` list), rather than
    reading our bucket 5 as its bucket 5 of 65,536.

    Method: decode a legacy page whose buckets 5 and 5 + 256 * 3 map onto our bucket 5;
    decode a page of 100 buckets; look at what we send."""
    from paxoskv.core.acceptor import FLOOR_BUCKETS, Floor, floor_bucket
    from paxoskv.transport.codec import decode_floor_page, encode_floor_page

    low, high = Floor(Ballot(9, 1, 1), 2), Floor(Ballot(4, 2, 1), 30)
    legacy = {"floors": [[5, low.ballot.to_wire(), low.version],
                         [5 + FLOOR_BUCKETS * 3, high.ballot.to_wire(), high.version]]}
    assert decode_floor_page(legacy) == [(5, Floor(Ballot(9, 1, 1), 30))]
    with pytest.raises(PeerProtocolError, match="upgrade"):
        decode_floor_page({"buckets": 100, "bucket_floors": [[5, [1, 1, 1], 1]]})
    sent = encode_floor_page([(5, low)])
    assert "floors" not in sent and sent["buckets"] == FLOOR_BUCKETS
    # the fold is the key's own bucket: its hash mod 65,536, then mod ours
    import hashlib
    digest = hashlib.blake2b(b"some-key", digest_size=8).digest()
    assert int.from_bytes(digest, "big") % (1 << 16) % FLOOR_BUCKETS == floor_bucket("some-key")


def test_an_earlier_release_asking_for_floors_gets_them_on_its_buckets() -> None:
    """Goal: a rejoining acceptor of an earlier release (65,536 buckets, no ``buckets`` in
    its query) copies, for each of its buckets, a floor at least what its own would be:
    the floor of ours its bucket maps into. Paging by its bucket numbers works.

    Method: call the server's handler with a fake acceptor holding floors of our buckets 0
    and 7, page through with a limit of 300, and check every returned bucket."""

    from paxoskv.core.acceptor import FLOOR_BUCKETS, LEGACY_FLOOR_BUCKETS, Floor
    from paxoskv.transport.codec import decode_floor_reply
    from paxoskv.transport.server import _legacy_floor_page

    ours = [(0, Floor(Ballot(3, 1, 1), 4)), (7, Floor(Ballot(5, 2, 1), 9))]
    got, after = [], -1
    for _ in range(LEGACY_FLOOR_BUCKETS):
        page = _legacy_floor_page(ours, after, 300)
        buckets, floors = decode_floor_reply({"floors": [[b, f.ballot.to_wire(), f.version]
                                                         for b, f in page]})
        assert buckets == LEGACY_FLOOR_BUCKETS
        got.extend(floors)
        if len(page) < 300:
            break
        after = page[-1][0]
    assert len(got) == 2 * LEGACY_FLOOR_BUCKETS // FLOOR_BUCKETS
    assert all(f == dict(ours)[b % FLOOR_BUCKETS] for b, f in got)


def test_floors_read_from_an_earlier_release_are_folded_from_all_its_pages() -> None:
    """Goal: copying floors from a peer of an earlier release (which ignores ``buckets``
    and answers in 65,536 buckets, 4,096 a page) reads every page, since any of them may
    raise any of our buckets, and folds them (highest wins).

    Method: a fake peer with a floor on each of its 65,536 buckets, version = bucket."""
    import asyncio

    from paxoskv.core.acceptor import FLOOR_BUCKETS, LEGACY_FLOOR_BUCKETS, Floor
    from paxoskv.transport.codec import read_floor_page

    asked: list[dict[str, str]] = []

    async def fetch(query: dict[str, str]) -> object:
        asked.append(query)
        after, limit = int(query["after"]), int(query["limit"])
        top = min(LEGACY_FLOOR_BUCKETS, after + 1 + limit)
        return {"floors": [[b, [1, 1, 1], b] for b in range(after + 1, top)]}

    got = asyncio.run(read_floor_page(fetch, -1, 4096))
    assert len(got) == FLOOR_BUCKETS and len(asked) == LEGACY_FLOOR_BUCKETS // 4096 + 1
    assert all(f == Floor(Ballot(1, 1, 1), LEGACY_FLOOR_BUCKETS - FLOOR_BUCKETS + b)
               for b, f in got)
    assert asyncio.run(read_floor_page(fetch, 10, 2))[0][0] == 11
