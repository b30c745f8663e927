"""Watch endpoints (docs/watch.md): the long-poll form of ``GET /v1/kv/{key}`` and the
server-sent-events stream ``GET /v1/watch``.

Both subscribe first, then wait for the node's "I have watchers" flag to reach its peers,
then read: a change committed after that read is learned here, and one committed before it
is in what the read returns, so nothing falls in between. Neither makes a read
linearizable: an event's value is one that was chosen at its version, nothing more.
aiohttp does not cancel a handler whose client left, so both check the connection at least
every ``POLL_S`` and end (unsubscribing) once it is gone.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import re
from typing import Any, Final

import orjson
from aiohttp import web

from paxoskv.api import app as api
from paxoskv.core.idempotency import is_reserved
from paxoskv.core.register import Value
from paxoskv.node import Node, NoQuorum, Overloaded, UnknownOutcome
from paxoskv.watch import Event, SlowConsumer, StreamEnded, TooManyWatchers, Watcher

__all__ = ["WAIT_DEFAULT_S", "WAIT_MAX_S", "decode_since", "encode_since", "long_poll",
           "parse_wait", "watch_stream"]

WAIT_DEFAULT_S: Final = 30.0
WAIT_MAX_S: Final = 300.0
"""The longest a long-poll waits (a longer ``wait`` is cut to this)."""
POLL_S: Final = 1.0
"""How often a waiting handler checks that its client is still connected."""
KEEPALIVE_S: Final = 5.0
"""A stream with nothing to say sends a comment line this often (finds dead clients)."""
RESYNC_S: Final = 30.0
"""A stream reads its keys again this often: a learn lost to a network fault delays an
event by at most this long, never loses the key's latest state."""
SCAN_READS: Final = 16
"""Keys read at once while a stream scans its prefix."""
SINCE_KEYS_MAX: Final = 10_000
EXPIRY_SLACK_S: Final = 0.05
"""A long-poll on a TTL key reads again this long after the key's expiry."""

_WAIT = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m)?")


def parse_wait(raw: str | None) -> float:
    """``30s``, ``500ms``, ``2m`` or plain seconds; capped at ``WAIT_MAX_S``."""
    if raw is None or raw == "":
        return WAIT_DEFAULT_S
    match = _WAIT.fullmatch(raw)
    if match is None:
        raise api.ApiError(400, "bad_request", "wait must look like 30s, 500ms or 2m")
    number, unit = float(match.group(1)), match.group(2) or "s"
    seconds = number / 1000 if unit == "ms" else number * 60 if unit == "m" else number
    return min(seconds, WAIT_MAX_S)


def _index(raw: str | None) -> int:
    if raw is None or raw == "":
        return 0
    if not api._DIGITS.fullmatch(raw) or len(raw) > 18:
        raise api.ApiError(400, "bad_request", "index must be a non-negative integer")
    return int(raw)


def encode_since(seen: dict[str, int]) -> str:
    """The resume token: the last version seen of each key, as base64url JSON."""
    return base64.urlsafe_b64encode(orjson.dumps(seen)).decode("ascii").rstrip("=")


def decode_since(raw: str | None) -> dict[str, int]:
    if raw is None or raw == "":
        return {}
    try:
        seen = orjson.loads(base64.urlsafe_b64decode(raw.encode("ascii") + b"=="))
    except (binascii.Error, UnicodeError, ValueError, orjson.JSONDecodeError):
        raise api.ApiError(400, "bad_request", "since is not a token a watch gave") from None
    if not isinstance(seen, dict) or len(seen) > SINCE_KEYS_MAX or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
            for k, v in seen.items()):
        raise api.ApiError(400, "bad_request", "since must map keys to versions")
    return seen


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _subscribe(node: Node, prefix: str, since: dict[str, int], exact: bool) -> Watcher:
    try:
        return node.watch.subscribe(prefix, since, exact)
    except TooManyWatchers as exc:
        raise api.ApiError(503, "overloaded", str(exc),
                           {"Retry-After": api.RETRY_AFTER_S}) from None


def _value_response(key: str, value: Value) -> web.Response:
    headers = {"X-Paxoskv-Version": str(value.version)}
    if value.data is None:
        return api._error(404, "not_found", f"key {key!r} does not exist", headers)
    if value.expires_ms is not None:  # as GET answers a TTL key
        headers["Expires-At-Ms"] = str(value.expires_ms)
    return web.Response(status=200, body=value.data,
                        headers={"ETag": api._etag(value.version), **headers},
                        content_type="application/octet-stream")


async def long_poll(request: web.Request, key: str) -> web.Response:
    """``GET /v1/kv/{key}?index=N&wait=30s``: the key as soon as its version passes N, or
    its current value (a linearizable read) once ``wait`` is over."""
    index, wait = _index(request.query.get("index")), parse_wait(request.query.get("wait"))
    node = request.app[api.NODE]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    watcher = _subscribe(node, key, {key: index}, exact=True)
    try:
        await node.announce_watchers()
        value = (await node.read(key)).value
        if value.version > index:
            return _value_response(key, value)
        if value.expires_ms is not None:
            # A TTL running out is no write: nothing would wake this poll when it does
            # (only a round deletes the key, e.g. the sweeper's, maybe much later). So wait
            # no longer than the expiry, then read: that read deletes it and answers 404.
            left_s = max(0.0, (value.expires_ms - node.clock_ms()) / 1000) + EXPIRY_SLACK_S
            deadline = min(deadline, loop.time() + left_s)
        with contextlib.suppress(StreamEnded):  # shutting down: answer what is there now
            while (remaining := deadline - loop.time()) > 0 and not _gone(request):
                event = await watcher.next(min(POLL_S, remaining))
                if event is not None:
                    return _value_response(key, Value(event.version, event.data))
        return _value_response(key, (await node.read(key)).value)
    finally:
        node.watch.unsubscribe(watcher)


def _event_bytes(event: Event) -> bytes:
    body: dict[str, Any] = {"key": event.key, "version": event.version,
                            "deleted": event.data is None}
    if event.data is not None:
        body["value"] = base64.b64encode(event.data).decode("ascii")
    kind = b"delete" if event.data is None else b"put"
    return b"event: " + kind + b"\ndata: " + orjson.dumps(body) + b"\n\n"


def _error_bytes(code: str, message: str) -> bytes:
    return b"event: error\ndata: " + orjson.dumps({"error": code, "message": message}) + \
        b"\n\n"


async def _flush(response: web.StreamResponse, watcher: Watcher) -> None:
    """Write every queued event (raises ``SlowConsumer`` if the queue overflowed)."""
    while (event := await watcher.next(0)) is not None:
        await response.write(_event_bytes(event))


async def _scan(node: Node, response: web.StreamResponse, watcher: Watcher,
                extra: list[str]) -> None:
    """Read every live key under the prefix (and ``extra``, keys the watcher saw, which
    may have been deleted since), offering each chosen value to the watcher: it keeps
    only what is newer than what its client saw. Live events are written in between."""
    keys: list[str] = []
    if watcher.exact:
        keys = [watcher.prefix]
    else:
        cursor: str | None = None
        for _ in range(node.watch.limits.keys_max // 1000 + 1):
            page, cursor = await node.list_keys(watcher.prefix, 1000, cursor)
            keys.extend(k for k in page if not is_reserved(k))
            if cursor is None:
                break
    listed = set(keys)
    # ``extra`` comes from the client's ``since`` token: reserved keys (idempotency
    # records) are nobody's to watch, whatever the token names
    keys.extend(k for k in extra if k not in listed and watcher.matches(k)
                and not is_reserved(k))
    for start in range(0, len(keys), SCAN_READS):
        chunk = keys[start:start + SCAN_READS]
        outcomes = await asyncio.gather(*(node.read(k) for k in chunk))
        for key, outcome in zip(chunk, outcomes, strict=True):
            watcher.offer(Event(key, outcome.value.version, outcome.value.data))
        await _flush(response, watcher)


async def watch_stream(request: web.Request) -> web.StreamResponse:
    """``GET /v1/watch?prefix=P&since=TOKEN`` (or ``key=K``): server-sent events, first
    the keys newer than ``since``, then a ``synced`` event, then changes as they are
    learned; ``error`` then the end when the client falls behind."""
    node = request.app[api.NODE]
    key = request.query.get("key")
    if key is not None:
        prefix, exact = api._valid_key(request, key), True
    else:
        prefix, exact = request.query.get("prefix", ""), False
        api._check_listing(request, prefix)
    since = decode_since(request.query.get("since"))
    watcher = _subscribe(node, prefix, since, exact)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
    try:
        await response.prepare(request)
        try:
            await _serve_stream(request, node, response, watcher, list(since))
        except SlowConsumer as exc:
            await response.write(_error_bytes("slow_consumer", f"stream dropped: {exc}; "
                                              "reconnect with since= to resume"))
        except StreamEnded as exc:
            await response.write(_error_bytes("shutting_down", f"{exc}; reconnect with "
                                              "since= (to another node) to resume"))
        except (NoQuorum, UnknownOutcome, Overloaded) as exc:
            await response.write(_error_bytes("unavailable", str(exc)))
    except ConnectionError:
        pass  # the client left: nothing more can be sent
    finally:
        node.watch.unsubscribe(watcher)
    return response


async def _serve_stream(request: web.Request, node: Node, response: web.StreamResponse,
                        watcher: Watcher, extra: list[str]) -> None:
    loop = asyncio.get_running_loop()
    await node.announce_watchers()
    await _scan(node, response, watcher, extra)
    await response.write(b"event: synced\ndata: {}\n\n")
    next_scan = loop.time() + RESYNC_S
    quiet_since = loop.time()
    while not _gone(request):
        event = await watcher.next(POLL_S)
        if event is not None:
            await response.write(_event_bytes(event))
            await _flush(response, watcher)
            quiet_since = loop.time()
        elif loop.time() - quiet_since >= KEEPALIVE_S:
            await response.write(b": keepalive\n\n")
            quiet_since = loop.time()
        if loop.time() >= next_scan:
            await _scan(node, response, watcher, list(watcher.seen))
            next_scan = loop.time() + RESYNC_S
