"""The peer wire format, shared by the HTTP transport and the simulator's network.

A request frame is ``{"h": header, "m": [message, ...]}``: the header names the sending
process (node id, data id, incarnation, boot id) and the membership fingerprint, so a
receiver serves only the process its hello made it remember; each message carries ``ttl``,
the milliseconds its sender will still wait for it, so a receiver drops a message that has
outlived its round (a rejoining acceptor's fence relies on that bound). A reply frame is
``{"r": [reply, ...]}`` in the same order. Anything malformed raises ``PeerProtocolError``.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

import orjson

from paxoskv.core.ballot import Ballot
from paxoskv.core.identity import PeerRecord
from paxoskv.core.messages import PeerProtocolError, Reply, Request, from_wire, to_wire

__all__ = [
    "AUTH_HEADER",
    "Sender",
    "check_peer_auth",
    "decode_frame",
    "decode_key_page",
    "decode_replies",
    "encode_frame",
    "encode_key_page",
    "encode_replies",
    "key_page_query",
]

AUTH_HEADER = "Authorization"


@dataclass(frozen=True, slots=True)
class Sender:
    node_id: int
    record: PeerRecord
    fingerprint: str

    def to_wire(self) -> dict[str, Any]:
        r = self.record
        return {"from": self.node_id, "data": r.data_id, "inc": r.incarnation,
                "boot": r.boot_id, "fp": self.fingerprint}

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
        return Sender(node_id, PeerRecord(data, inc, boot), fp)


def check_peer_auth(header: str | None, secret: str) -> bool:
    """Constant-time check of ``Authorization: Bearer <secret>``; any bytes are safe (a
    header aiohttp could not decode arrives with surrogates, which ``surrogatepass``
    encodes, and which then simply do not match)."""
    if not header or not header.startswith("Bearer "):
        return False
    given = header[7:].encode("utf-8", "surrogatepass")
    return hmac.compare_digest(given, secret.encode("utf-8", "surrogatepass"))


def encode_frame(sender: Sender, messages: list[tuple[Request, int]]) -> bytes:
    """``messages``: (request, ttl in milliseconds)."""
    body = []
    for msg, ttl_ms in messages:
        assert ttl_ms > 0
        item = to_wire(msg)
        item["ttl"] = ttl_ms
        body.append(item)
    return orjson.dumps({"h": sender.to_wire(), "m": body})


def decode_frame(body: bytes, ttl_ms_max: int) -> tuple[Sender, list[tuple[Request, int]]]:
    """Parse a request frame; a ``ttl`` above ``ttl_ms_max`` is cut down to it."""
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise PeerProtocolError(f"frame is not JSON: {exc}") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("m"), list):
        raise PeerProtocolError("frame must be an object with a list 'm'")
    sender = Sender.from_wire(raw.get("h"))
    out: list[tuple[Request, int]] = []
    for item in raw["m"]:
        if not isinstance(item, dict):
            raise PeerProtocolError("message must be an object")
        ttl = item.get("ttl")
        if not isinstance(ttl, int) or isinstance(ttl, bool) or ttl <= 0:
            raise PeerProtocolError("message 'ttl' must be a positive integer (ms)")
        msg = from_wire(item)
        if not isinstance(msg, Request):
            raise PeerProtocolError(f"{type(msg).__name__} is not a request")
        out.append((msg, min(ttl, ttl_ms_max)))
    return sender, out


def encode_replies(replies: list[Reply]) -> bytes:
    return orjson.dumps({"r": [to_wire(r) for r in replies]})


def decode_replies(body: bytes, count: int) -> list[Reply]:
    """Parse a reply frame answering ``count`` messages; PeerProtocolError otherwise."""
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise PeerProtocolError(f"reply frame is not JSON: {exc}") from exc
    items = raw.get("r") if isinstance(raw, dict) else None
    if not isinstance(items, list) or len(items) != count:
        raise PeerProtocolError("reply frame does not match the batch")
    out: list[Reply] = []
    for item in items:
        reply = from_wire(item)
        if not isinstance(reply, Reply):
            raise PeerProtocolError(f"{type(reply).__name__} is not a reply")
        out.append(reply)
    return out


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
