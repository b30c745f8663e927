"""The peer wire format, shared by the transports and the simulator's network.

A request frame is ``{"h": header, "m": [message, ...]}``: the header names the sending
process (node id, data id, incarnation, boot id) and the membership fingerprint, so a
receiver serves only the process its hello made it remember; each message carries ``ttl``,
the milliseconds its sender will still wait for it, so a receiver drops a message that has
outlived its round (a rejoining acceptor's fence relies on that bound). A reply frame is
``{"r": [reply, ...]}`` in the same order. Anything malformed raises ``PeerProtocolError``.

Frames travel binary: a 7-byte header (magic ``b"\xb7P"``, kind, metadata length), the
frame above as JSON with every ``bytes`` in it (value data) replaced by ``{"$b": [offset,
length]}``, then those bytes back to back. Which fields hold bytes is whatever
``messages.to_wire(raw=True)`` says, so a new message type needs no codec change. The JSON
form (values in base64) is still decoded, and answered in kind, for peers and tools that
post it to ``/internal/batch``.
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from paxoskv.core.acceptor import FLOOR_BUCKETS, LEGACY_FLOOR_BUCKETS, Floor, coarsen_floors
from paxoskv.core.ballot import WIRE_INT_MAX, Ballot
from paxoskv.core.identity import PeerRecord
from paxoskv.core.messages import (
    PeerProtocolError,
    Reply,
    Request,
    config_from_wire,
    from_wire,
    to_wire,
)
from paxoskv.core.reconfig import Config

__all__ = [
    "AUTH_HEADER",
    "CHANNEL_PATH",
    "FLOOR_PAGE_MAX",
    "Sender",
    "channel_reply",
    "channel_request",
    "check_peer_auth",
    "decode_floor_page",
    "decode_floor_reply",
    "decode_frame",
    "decode_key_page",
    "decode_replies",
    "encode_floor_page",
    "encode_frame",
    "encode_key_page",
    "encode_legacy_floor_page",
    "encode_replies",
    "floor_page_query",
    "is_binary_frame",
    "key_page_query",
    "parse_channel_reply",
    "parse_channel_request",
    "read_floor_page",
]

AUTH_HEADER = "Authorization"


@dataclass(frozen=True, slots=True)
class Sender:
    node_id: int
    record: PeerRecord
    fingerprint: str
    config: Config | None = None
    """The acceptor-set config the sender's messages are sent under; None is epoch 0, the
    flag-configured set (docs/reconfiguration.md). Only an epoch above 0 is put on the
    wire (``cfg``), so a cluster that never reconfigures sends the header it always did."""

    def to_wire(self) -> dict[str, Any]:
        r = self.record
        out: dict[str, Any] = {"from": self.node_id, "data": r.data_id, "inc": r.incarnation,
                               "boot": r.boot_id, "fp": self.fingerprint}
        if self.config is not None and self.config.epoch > 0:
            out["cfg"] = self.config.to_json()
        return out

    @property
    def epoch(self) -> int:
        return 0 if self.config is None else self.config.epoch

    @staticmethod
    def from_wire(raw: object) -> Sender:
        if not isinstance(raw, dict):
            raise PeerProtocolError("frame header must be an object")
        node_id, data, inc, boot, fp = (raw.get(k) for k in ("from", "data", "inc", "boot",
                                                              "fp"))
        if not (isinstance(node_id, int) and not isinstance(node_id, bool) and node_id >= 0):
            raise PeerProtocolError("header 'from' must be a node id")
        if not (isinstance(inc, int) and not isinstance(inc, bool) and inc >= 0):
            raise PeerProtocolError("header 'inc' must be a non-negative integer")
        for name, part in (("data", data), ("boot", boot), ("fp", fp)):
            if not isinstance(part, str) or not 1 <= len(part) <= 64 or " " in part:
                raise PeerProtocolError(f"header {name!r} must be a short string")
        assert isinstance(data, str) and isinstance(boot, str) and isinstance(fp, str)
        config: Config | None = None
        if "cfg" in raw:
            config = config_from_wire(raw["cfg"])
            if config.epoch == 0:
                raise PeerProtocolError("header 'cfg' is sent only above epoch 0")
        return Sender(node_id, PeerRecord(data, inc, boot), fp, config)


def check_peer_auth(header: str | None, secret: str) -> bool:
    """Constant-time check of ``Authorization: Bearer <secret>``; any bytes are safe (a
    header aiohttp could not decode arrives with surrogates, which ``surrogatepass``
    encodes, and which then simply do not match)."""
    if not header or not header.startswith("Bearer "):
        return False
    given = header[7:].encode("utf-8", "surrogatepass")
    return hmac.compare_digest(given, secret.encode("utf-8", "surrogatepass"))


BINARY_MAGIC = b"\xb7P"
"""First bytes of a binary frame; a JSON frame starts with ``{`` or whitespace."""
_HEAD = struct.Struct(">2sBI")
"""magic, kind, length of the metadata that follows."""
_KIND_REQUEST = 0x51
_KIND_REPLY = 0x52
_BLOB = "$b"
"""Metadata stands ``{"$b": [offset, length]}`` in for ``bytes``; offsets count from the
first byte after the metadata."""
_NESTING_MAX = 16
"""Message dicts are a few levels deep; a deeper frame is garbage, not a recursion error."""


def is_binary_frame(body: bytes) -> bool:
    return body[:2] == BINARY_MAGIC


def _encode_binary(kind: int, meta: dict[str, Any]) -> bytes:
    """Header, then ``meta`` as JSON with every ``bytes`` in it pulled out to the tail."""
    blobs: list[bytes] = []
    size = 0

    def pull_out(obj: object) -> dict[str, list[int]]:
        nonlocal size
        if not isinstance(obj, bytes):
            raise TypeError(f"{type(obj).__name__} in a peer frame")
        blobs.append(obj)
        ref = {_BLOB: [size, len(obj)]}
        size += len(obj)
        return ref

    body = orjson.dumps(meta, default=pull_out)
    return b"".join((_HEAD.pack(BINARY_MAGIC, kind, len(body)), body, *blobs))


def _decode_binary(body: bytes, kind: int) -> tuple[object, memoryview]:
    """The metadata and the blob area of a binary frame."""
    if len(body) < _HEAD.size:
        raise PeerProtocolError("binary frame shorter than its header")
    magic, got_kind, length = _HEAD.unpack_from(body)
    if magic != BINARY_MAGIC or got_kind != kind:
        raise PeerProtocolError("binary frame of the wrong kind")
    end = _HEAD.size + length
    if end > len(body):
        raise PeerProtocolError("binary frame metadata runs past its end")
    view = memoryview(body)
    try:
        return orjson.loads(view[_HEAD.size:end]), view[end:]
    except orjson.JSONDecodeError as exc:
        raise PeerProtocolError(f"binary frame metadata is not JSON: {exc}") from exc


def _put_back(obj: object, blobs: memoryview, depth: int = 0) -> object:
    """``obj`` with every blob reference replaced by its bytes (in place)."""
    if depth > _NESTING_MAX:
        raise PeerProtocolError("peer message nested too deep")
    if type(obj) is dict:
        if _BLOB in obj:
            ref = obj[_BLOB]
            if not (len(obj) == 1 and type(ref) is list and len(ref) == 2
                    and type(ref[0]) is int and type(ref[1]) is int
                    and ref[0] >= 0 and ref[1] >= 0 and ref[0] + ref[1] <= len(blobs)):
                raise PeerProtocolError("bad blob reference in a binary frame")
            return bytes(blobs[ref[0]:ref[0] + ref[1]])
        for k, v in obj.items():
            if type(v) is dict or type(v) is list:
                obj[k] = _put_back(v, blobs, depth + 1)
    elif type(obj) is list:
        for i, v in enumerate(obj):
            if type(v) is dict:
                obj[i] = _put_back(v, blobs, depth + 1)
            elif type(v) is list:
                # A list of scalars (a ballot, a request id and version) holds no blob:
                # looked over here rather than in a call of its own for each.
                for x in v:
                    if type(x) is dict or type(x) is list:
                        obj[i] = _put_back(v, blobs, depth + 1)
                        break
    return obj


def encode_frame(sender: Sender, messages: list[tuple[Request, int]],
                 binary: bool = True) -> bytes:
    """``messages``: (request, ttl in milliseconds). ``binary``: the compact frame (value
    bytes raw, after the JSON metadata) rather than the JSON one (values in base64)."""
    body = []
    for msg, ttl_ms in messages:
        assert ttl_ms > 0
        item = to_wire(msg, raw=binary)
        item["ttl"] = ttl_ms
        body.append(item)
    frame = {"h": sender.to_wire(), "m": body}
    return _encode_binary(_KIND_REQUEST, frame) if binary else orjson.dumps(frame)


def _parse(body: bytes, kind: int, what: str) -> tuple[Any, memoryview | None]:
    """A frame's metadata and, when binary, the area its value bytes are in."""
    if is_binary_frame(body):
        return _decode_binary(body, kind)
    try:
        return orjson.loads(body), None
    except orjson.JSONDecodeError as exc:
        raise PeerProtocolError(f"{what} is not JSON: {exc}") from exc


def decode_frame(body: bytes, ttl_ms_max: int) -> tuple[Sender, list[tuple[Request, int]]]:
    """Parse a request frame, binary or JSON; a ``ttl`` above ``ttl_ms_max`` is cut down
    to it."""
    raw, blobs = _parse(body, _KIND_REQUEST, "frame")
    if not isinstance(raw, dict) or not isinstance(raw.get("m"), list):
        raise PeerProtocolError("frame must be an object with a list 'm'")
    sender = Sender.from_wire(raw.get("h"))
    out: list[tuple[Request, int]] = []
    for item in raw["m"]:
        if not isinstance(item, dict):
            raise PeerProtocolError("message must be an object")
        if blobs is not None:
            _put_back(item, blobs)
        ttl = item.get("ttl")
        if not isinstance(ttl, int) or isinstance(ttl, bool) or ttl <= 0:
            raise PeerProtocolError("message 'ttl' must be a positive integer (ms)")
        msg = from_wire(item)
        if not isinstance(msg, Request):
            raise PeerProtocolError(f"{type(msg).__name__} is not a request")
        out.append((msg, min(ttl, ttl_ms_max)))
    return sender, out


def encode_replies(replies: list[Reply], binary: bool = True) -> bytes:
    """A reply frame, in the format of the request frame it answers."""
    if binary:
        return _encode_binary(_KIND_REPLY, {"r": [to_wire(r, raw=True) for r in replies]})
    return orjson.dumps({"r": [to_wire(r) for r in replies]})


def decode_replies(body: bytes, count: int) -> list[Reply]:
    """Parse a reply frame (binary or JSON) answering ``count`` messages;
    PeerProtocolError otherwise."""
    raw, blobs = _parse(body, _KIND_REPLY, "reply frame")
    items = raw.get("r") if isinstance(raw, dict) else None
    if not isinstance(items, list) or len(items) != count:
        raise PeerProtocolError("reply frame does not match the batch")
    out: list[Reply] = []
    for item in items:
        if blobs is not None:
            item = _put_back(item, blobs)
        reply = from_wire(item)
        if not isinstance(reply, Reply):
            raise PeerProtocolError(f"{type(reply).__name__} is not a reply")
        out.append(reply)
    return out


CHANNEL_PATH = "/internal/channel"
"""The peer channel: a WebSocket whose binary messages are request frames, each behind a
request id, answered by that id, the status ``/internal/batch`` would give, and its body."""
_CHANNEL_REQUEST = struct.Struct(">I")
_CHANNEL_REPLY = struct.Struct(">IH")


def channel_request(request_id: int, frame: bytes) -> bytes:
    return _CHANNEL_REQUEST.pack(request_id) + frame


def parse_channel_request(message: bytes) -> tuple[int, bytes]:
    if len(message) < _CHANNEL_REQUEST.size:
        raise PeerProtocolError("channel message shorter than its request id")
    return _CHANNEL_REQUEST.unpack_from(message)[0], message[_CHANNEL_REQUEST.size:]


def channel_reply(request_id: int, status: int, body: bytes) -> bytes:
    return _CHANNEL_REPLY.pack(request_id, status) + body


def parse_channel_reply(message: bytes) -> tuple[int, int, bytes]:
    if len(message) < _CHANNEL_REPLY.size:
        raise PeerProtocolError("channel reply shorter than its header")
    request_id, status = _CHANNEL_REPLY.unpack_from(message)
    return request_id, status, message[_CHANNEL_REPLY.size:]


def key_page_query(prefix: str, after: str | None, limit: int) -> dict[str, str]:
    """The query of a ``/internal/keys`` request for one page."""
    query = {"prefix": prefix, "limit": str(limit)}
    if after is not None:
        query["after"] = after
    return query


def encode_key_page(entries: list[tuple[str, Ballot, bool]], more: bool) -> dict[str, Any]:
    return {"keys": [[k, b.to_wire(), live] for k, b, live in entries], "more": more}


def decode_key_page(raw: object) -> tuple[list[tuple[str, Ballot, bool]], bool]:
    """Parse a ``/internal/keys`` answer; PeerProtocolError on anything malformed."""
    entries = raw.get("keys") if isinstance(raw, dict) else None
    more = raw.get("more") if isinstance(raw, dict) else None
    if not isinstance(entries, list) or not isinstance(more, bool):
        raise PeerProtocolError("keys reply must be an object with 'keys' and 'more'")
    out: list[tuple[str, Ballot, bool]] = []
    for item in entries:
        if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)
                and isinstance(item[2], bool)):
            raise PeerProtocolError("keys reply entries must be [key, ballot, live]")
        try:
            out.append((item[0], Ballot.from_wire(item[1]), item[2]))
        except ValueError as exc:
            raise PeerProtocolError(f"keys reply ballot: {exc}") from exc
    return out, more


FLOOR_PAGE_MAX = 4096
"""Bucket floors one ``/internal/floors`` answer holds at most."""


def floor_page_query(after: int, limit: int) -> dict[str, str]:
    """The query of a ``/internal/floors`` request: floors of buckets above ``after``, in
    our bucket count (a peer of an earlier release ignores ``buckets`` and answers in its
    own 65,536: ``read_floor_page``)."""
    return {"after": str(after), "limit": str(limit), "buckets": str(FLOOR_BUCKETS)}


def encode_floor_page(floors: list[tuple[int, Floor]]) -> dict[str, Any]:
    """Floors of our ``FLOOR_BUCKETS``, under ``bucket_floors`` with the count: a
    receiver of an earlier release finds no ``floors`` list and refuses the whole page
    (400), where the old name would have had it raise bucket 5 of 65,536 for bucket 5 of
    256 and leave the keys of the 255 other buckets it covers without their floor."""
    return {"buckets": FLOOR_BUCKETS,
            "bucket_floors": [[bucket, f.ballot.to_wire(), f.version] for bucket, f in floors]}


def encode_legacy_floor_page(floors: list[tuple[int, Floor]]) -> dict[str, Any]:
    """Floors of ``LEGACY_FLOOR_BUCKETS`` in the format of earlier releases, for a peer of
    one (a request without ``buckets``)."""
    return {"floors": [[bucket, f.ballot.to_wire(), f.version] for bucket, f in floors]}


def decode_floor_reply(raw: object) -> tuple[int, list[tuple[int, Floor]]]:
    """A floor page as sent: (its bucket count, its floors); PeerProtocolError on anything
    malformed. A page without a count is of an earlier release (65,536 buckets)."""
    if isinstance(raw, dict) and "bucket_floors" in raw:
        buckets, entries = raw.get("buckets"), raw.get("bucket_floors")
        if type(buckets) is not int or not 1 <= buckets <= LEGACY_FLOOR_BUCKETS:
            raise PeerProtocolError("floors reply 'buckets' must be a positive integer")
    else:
        buckets, entries = LEGACY_FLOOR_BUCKETS, (raw.get("floors")
                                                  if isinstance(raw, dict) else None)
    if not isinstance(entries, list):
        raise PeerProtocolError("floors reply must be an object with 'floors'")
    out: list[tuple[int, Floor]] = []
    for item in entries:
        if not (isinstance(item, list) and len(item) == 3 and type(item[0]) is int
                and 0 <= item[0] < buckets and type(item[2]) is int
                and 0 <= item[2] <= WIRE_INT_MAX):
            raise PeerProtocolError("floors reply entries must be [bucket, ballot, version]")
        try:
            out.append((item[0], Floor(Ballot.from_wire(item[1]), item[2])))
        except ValueError as exc:
            raise PeerProtocolError(f"floors reply ballot: {exc}") from exc
    return buckets, out


def decode_floor_page(raw: object) -> list[tuple[int, Floor]]:
    """A floor page as floors of our buckets (``coarsen_floors``); PeerProtocolError on
    anything malformed, or from a peer whose bucket count does not fold onto ours."""
    buckets, floors = decode_floor_reply(raw)
    if buckets == FLOOR_BUCKETS:
        return floors
    try:
        return coarsen_floors(floors, buckets)
    except ValueError as exc:
        raise PeerProtocolError(f"floors reply: {exc}; upgrade every member") from exc


async def read_floor_page(fetch: Callable[[dict[str, str]], Awaitable[object]], after: int,
                          limit: int) -> list[tuple[int, Floor]]:
    """Up to ``limit`` of a peer's floors above our bucket ``after``, ``fetch`` sending one
    ``/internal/floors`` query and returning the decoded JSON. A peer of an earlier release
    answers in its 65,536 buckets, whatever we asked: all its pages are read and folded
    into ours (``coarsen_floors``), since any of them may raise any of our buckets."""
    buckets, floors = decode_floor_reply(await fetch(floor_page_query(after, limit)))
    if buckets == FLOOR_BUCKETS:
        return floors
    every, asked = list(floors), limit
    for _ in range(buckets // min(limit, FLOOR_PAGE_MAX) + 2):
        if len(floors) < asked or not floors:
            break
        asked = FLOOR_PAGE_MAX
        more = await fetch(floor_page_query(floors[-1][0], asked))
        page_buckets, floors = decode_floor_reply(more)
        if page_buckets != buckets:
            raise PeerProtocolError("floors reply changed its bucket count between pages")
        every.extend(floors)
    else:
        raise PeerProtocolError("floors reply did not end")
    try:
        folded = coarsen_floors(every, buckets)
    except ValueError as exc:
        raise PeerProtocolError(f"floors reply: {exc}; upgrade every member") from exc
    return [(b, f) for b, f in folded if b > after][:limit]
