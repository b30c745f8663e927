"""The peer endpoints (``/internal/``), served the same way in both worlds.

``PeerServer`` turns bytes into calls on a ``PeerHandler`` (the node) and answers bytes:
the real server mounts it on aiohttp, the simulator's network calls it directly with the
frames its transport encoded, so the two cannot drift apart. It imports nothing above the
transport layer. Every answer is ``(status, body)``: a reply frame in the format of the
request frame (binary or JSON), else a JSON error; a rejected frame changes nothing.

The peer channel (``/internal/channel``, a WebSocket) carries the same frames as
``/internal/batch``, each behind a request id, and answers each with its id and the status
and body ``/internal/batch`` would have given; frames are served concurrently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import orjson
from aiohttp import HttpVersion11, WSCloseCode, WSMsgType, web

from paxoskv.core.acceptor import FLOOR_BUCKETS, LEGACY_FLOOR_BUCKETS, Floor
from paxoskv.core.messages import REPLY_TYPES, PeerProtocolError, Reply, Request
from paxoskv.core.reconfig import Config
from paxoskv.limits import KEYS_PAGE_MAX, Limits
from paxoskv.loopref import LoopRef
from paxoskv.transport.base import KeyPage, Refusal
from paxoskv.transport.codec import (
    AUTH_HEADER,
    CHANNEL_PATH,
    FLOOR_PAGE_MAX,
    Sender,
    channel_reply,
    check_peer_auth,
    decode_floor_page,
    decode_floor_reply,
    decode_frame,
    encode_floor_page,
    encode_key_page,
    encode_legacy_floor_page,
    encode_replies,
    is_binary_frame,
    parse_channel_request,
)

__all__ = ["CHANNEL_HEARTBEAT_S", "KEYS_PAGE_MAX", "PeerHandler", "PeerServer", "Refusal",
           "expect_handler"]

CHANNEL_HEARTBEAT_S = 2.0
"""Ping a quiet peer channel this often; no pong within half of it and the socket is
dropped. Any frame counts as a sign of life, so a busy channel sends no pings."""

log = logging.getLogger(__name__)

Answer = tuple[int, bytes]


class PeerHandler(Protocol):
    @property
    def message_ttl_ms_max(self) -> int:
        """The longest time-to-live a message may claim (the cluster's round lifetime)."""
        ...

    def admit(self, sender: Sender) -> None:
        """Raise ``Refusal`` unless ``sender`` is the process this node remembers."""
        ...

    async def handle(self, msg: Request, deadline: float) -> Reply:
        """Answer one request; ``deadline`` is loop time after which it must not act."""
        ...

    def handle_soon(self, msg: Request, deadline: float, config: Config | None = None
                    ) -> Reply | Awaitable[Reply]:
        """``handle`` started now: the reply, or an awaitable of it (a future where no
        coroutine is needed, so a frame's messages need no task each). ``config``: the
        acceptor-set config the frame's header names (None: epoch 0), which the acceptor's
        epoch fence judges (docs/reconfiguration.md)."""
        ...

    async def on_hello(self, info: dict[str, Any]) -> dict[str, Any]: ...

    def floor_page(self, after: int, limit: int) -> list[tuple[int, Floor]] | None:
        """Up to ``limit`` bucket floors above bucket ``after``; None when not serving as
        an acceptor."""
        ...

    def key_page(self, prefix: str, after: str | None, limit: int) -> KeyPage | None:
        """Up to ``limit`` entries after ``after`` and whether more follow; None when not
        serving as an acceptor."""
        ...

    async def install_floors(self, floors: list[tuple[int, Floor]]) -> bool:
        """Raise these bucket floors (an acceptor-set change adding this acceptor brings
        them); False when this node is no acceptor of the config it holds."""
        ...


def _json(status: int, body: dict[str, Any]) -> Answer:
    return status, orjson.dumps(body)


def _error(status: int, code: str, message: str) -> Answer:
    return _json(status, {"error": code, "message": message})


class PeerServer:
    def __init__(self, handler: PeerHandler, secret: str,
                 frame_bytes_max: int = Limits().frame_bytes_max,
                 count_bytes: Callable[[int, int], None] | None = None) -> None:
        """``count_bytes(received, sent)``: told the size of each frame or hello served and
        of its answer (``paxoskv_peer_bytes``)."""
        self._handler = handler
        self._count_bytes = count_bytes or _no_count
        self._secret = secret
        self._frame_bytes_max = frame_bytes_max
        self._channels: set[web.WebSocketResponse] = set()
        self._loop = LoopRef()

    def _authorized(self, auth: str | None) -> bool:
        return check_peer_auth(auth, self._secret)

    async def batch(self, auth: str | None, body: bytes) -> Answer:
        if not self._authorized(auth):
            return _error(401, "unauthorized", "peer credentials missing or wrong")
        return await self.frame(body)

    async def frame(self, body: bytes) -> Answer:
        """One request frame from an authenticated peer (a POST, or a channel message)."""
        try:
            sender, items = decode_frame(body, self._handler.message_ttl_ms_max)
        except PeerProtocolError as exc:
            log.warning("malformed peer frame: %s", exc)
            return _error(400, "bad_frame", str(exc))
        try:
            self._handler.admit(sender)
        except Refusal as exc:
            return _error(409, "refused", str(exc))
        now = self._loop.get().time()
        # Every message is started now, in frame order; only those still waiting (for an
        # fsync, a lock, a forwarded round) are awaited, together.
        config = sender.config
        if config is None:  # epoch 0: the call as it always was
            replies: list[Any] = [self._handler.handle_soon(msg, now + ttl_ms / 1000)
                                  for msg, ttl_ms in items]
        else:
            replies = [self._handler.handle_soon(msg, now + ttl_ms / 1000, config)
                       for msg, ttl_ms in items]
        waiting = [i for i, r in enumerate(replies) if not isinstance(r, REPLY_TYPES)]
        if waiting:
            done = await asyncio.gather(*(replies[i] for i in waiting))
            for i, reply in zip(waiting, done, strict=True):
                replies[i] = reply
        answer = encode_replies(replies, binary=is_binary_frame(body))
        self._count_bytes(len(body), len(answer))
        return 200, answer

    async def hello(self, auth: str | None, body: bytes) -> Answer:
        if not self._authorized(auth):
            return _error(401, "unauthorized", "peer credentials missing or wrong")
        try:
            info = orjson.loads(body)
        except orjson.JSONDecodeError:
            return _error(400, "bad_frame", "hello must be a JSON object")
        if not isinstance(info, dict):
            return _error(400, "bad_frame", "hello must be a JSON object")
        status, answer = _json(200, await self._handler.on_hello(info))
        self._count_bytes(len(body), len(answer))
        return status, answer

    async def keys(self, auth: str | None, query: Mapping[str, str]) -> Answer:
        if not self._authorized(auth):
            return _error(401, "unauthorized", "peer credentials missing or wrong")
        raw_limit = query.get("limit", str(KEYS_PAGE_MAX))
        if not (raw_limit.isascii() and raw_limit.isdigit()) or \
                not 1 <= int(raw_limit) <= KEYS_PAGE_MAX:
            return _error(400, "bad_request", f"limit must be an integer within "
                                              f"1..{KEYS_PAGE_MAX}")
        prefix = query.get("prefix", "")
        after = query.get("after")
        limit = int(raw_limit)
        found = self._handler.key_page(prefix, after, limit)
        if found is None:
            # An acceptor without its state must not be counted as one that has no keys.
            return _error(503, "not_acceptor", "this node is not serving as an acceptor")
        return _json(200, encode_key_page(*found))

    async def floors(self, auth: str | None, query: Mapping[str, str]) -> Answer:
        """The bucket floors a rejoining acceptor copies (docs/gc.md)."""
        if not self._authorized(auth):
            return _error(401, "unauthorized", "peer credentials missing or wrong")
        raw_after, raw_limit = query.get("after", "-1"), query.get("limit", "")
        # A peer of an earlier release sends no "buckets": it gets our floors copied onto
        # its 65,536 buckets, in its format (``_legacy_floor_page``).
        buckets = FLOOR_BUCKETS if "buckets" in query else LEGACY_FLOOR_BUCKETS
        try:
            after, limit = int(raw_after), int(raw_limit)
        except ValueError:
            after = limit = -2
        if not (-1 <= after < buckets and 1 <= limit <= FLOOR_PAGE_MAX):
            return _error(400, "bad_request", f"after must be within -1..{buckets - 1} "
                                              f"and limit within 1..{FLOOR_PAGE_MAX}")
        if buckets == FLOOR_BUCKETS:
            found = self._handler.floor_page(after, limit)
            if found is None:
                return _error(503, "not_acceptor", "this node is not serving as an acceptor")
            return _json(200, encode_floor_page(found))
        ours = self._handler.floor_page(-1, FLOOR_BUCKETS)
        if ours is None:
            return _error(503, "not_acceptor", "this node is not serving as an acceptor")
        return _json(200, encode_legacy_floor_page(_legacy_floor_page(ours, after, limit)))

    async def raise_floors(self, auth: str | None, body: bytes) -> Answer:
        """Bucket floors an acceptor-set change brings to an acceptor it adds
        (docs/reconfiguration.md, GC): raised durably before the answer."""
        if not self._authorized(auth):
            return _error(401, "unauthorized", "peer credentials missing or wrong")
        try:
            raw = orjson.loads(body)
            sent = len(decode_floor_reply(raw)[1])
            floors = decode_floor_page(raw)
        except (orjson.JSONDecodeError, PeerProtocolError) as exc:
            return _error(400, "bad_request", f"floors: {exc}")
        if sent > FLOOR_PAGE_MAX:
            return _error(400, "bad_request", f"at most {FLOOR_PAGE_MAX} floors at once")
        if not await self._handler.install_floors(floors):
            return _error(503, "not_acceptor", "this node is no acceptor of its config")
        # The count sent, which its sender checks: an earlier release's page of 65,536
        # buckets may fold into fewer of ours.
        return _json(200, {"raised": sent})

    def add_routes(self, app: web.Application) -> None:
        """Mount the endpoints on an aiohttp application (the real server)."""
        async def batch(request: web.Request) -> web.StreamResponse:
            return _response(await self.batch(request.headers.get(AUTH_HEADER),
                                              await request.read()))

        async def hello(request: web.Request) -> web.StreamResponse:
            return _response(await self.hello(request.headers.get(AUTH_HEADER),
                                              await request.read()))

        async def keys(request: web.Request) -> web.StreamResponse:
            return _response(await self.keys(request.headers.get(AUTH_HEADER),
                                             request.query))

        async def floors(request: web.Request) -> web.StreamResponse:
            return _response(await self.floors(request.headers.get(AUTH_HEADER),
                                               request.query))

        async def raise_floors(request: web.Request) -> web.StreamResponse:
            return _response(await self.raise_floors(request.headers.get(AUTH_HEADER),
                                                     await request.read()))

        async def channel(request: web.Request) -> web.StreamResponse:
            if not self._authorized(request.headers.get(AUTH_HEADER)):
                return _response(_error(401, "unauthorized",
                                        "peer credentials missing or wrong"))
            return await self._serve_channel(request)

        async def close_channels(_: web.Application) -> None:
            # Else each open channel holds the server's shutdown for its whole timeout.
            for ws in list(self._channels):
                await ws.close(code=WSCloseCode.GOING_AWAY, message=b"shutting down")

        app.on_shutdown.append(close_channels)
        app.router.add_get(CHANNEL_PATH, channel, expect_handler=expect_handler)
        app.router.add_post("/internal/batch", batch, expect_handler=expect_handler)
        app.router.add_post("/internal/hello", hello, expect_handler=expect_handler)
        app.router.add_get("/internal/keys", keys, expect_handler=expect_handler)
        app.router.add_get("/internal/floors", floors, expect_handler=expect_handler)
        app.router.add_post("/internal/floors", raise_floors, expect_handler=expect_handler)


    async def _serve_channel(self, request: web.Request) -> web.WebSocketResponse:
        """Read frames off one peer's channel; each is served by a task of its own, so a
        slow frame (an fsync) does not hold back the ones behind it."""
        ws = web.WebSocketResponse(max_msg_size=self._frame_bytes_max + 64, compress=False,
                                   heartbeat=CHANNEL_HEARTBEAT_S)
        try:
            await ws.prepare(request)
        except ConnectionResetError:
            # The peer gave up (its connect timed out, it stopped) before the handshake's
            # answer went out: nothing to serve and nothing wrong here. It was logged as an
            # unhandled error with a traceback; aiohttp drops the unprepared response.
            log.debug("peer channel from %s closed during the handshake", request.remote)
            return ws
        self._channels.add(ws)
        tasks: set[asyncio.Task[None]] = set()
        loop = self._loop.get()  # (asyncio.ensure_future would look it up per frame)
        try:
            async for message in ws:
                if message.type is not WSMsgType.BINARY:
                    await ws.close(code=WSCloseCode.UNSUPPORTED_DATA,
                                   message=b"binary frames only")
                    break
                task = loop.create_task(self._channel_frame(ws, message.data))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        finally:
            self._channels.discard(ws)
            if tasks:  # let frames already taken finish: a shutdown waits for them
                await asyncio.gather(*tasks, return_exceptions=True)
        return ws

    async def _channel_frame(self, ws: web.WebSocketResponse, message: bytes) -> None:
        try:
            request_id, body = parse_channel_request(message)
        except PeerProtocolError as exc:
            log.warning("malformed peer channel message: %s", exc)
            await ws.close(code=WSCloseCode.PROTOCOL_ERROR, message=b"bad channel message")
            return
        try:
            status, answer = await self.frame(body)
        except Exception:
            log.exception("peer frame failed")
            status, answer = _error(500, "internal", "the frame could not be served")
        if ws.closed:
            return  # the sender has given up on this socket and failed the frame itself
        with contextlib.suppress(ConnectionError):  # closed meanwhile: same as above
            await ws.send_bytes(channel_reply(request_id, status, answer))


def _no_count(received: int, sent: int) -> None:
    pass


def _response(answer: Answer) -> web.Response:
    status, body = answer
    return web.Response(status=status, body=body,
                        content_type="application/octet-stream" if is_binary_frame(body)
                        else "application/json")


async def expect_handler(request: web.Request) -> web.StreamResponse | None:
    """``Expect``: 100-continue, else 417. aiohttp's default handler puts the header's value
    into its error text, which fails to encode (a 500, outside any middleware) when the value
    holds bytes that are not UTF-8. Every route of the server is added with this handler."""
    expect = request.headers.get("Expect", "")
    if request.version != HttpVersion11:
        return None
    if expect.lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0
        return None
    return _response(_error(417, "expectation_failed", "only Expect: 100-continue is supported"))


def _legacy_floor_page(ours: list[tuple[int, Floor]], after: int, limit: int
                       ) -> list[tuple[int, Floor]]:
    """Our floors as floors of ``LEGACY_FLOOR_BUCKETS``, buckets above ``after``, at most
    ``limit``: each of its buckets takes the floor of ours it maps into (its number mod
    ours), which is at least what its own floor would have been, since ours took the
    highest of every key that maps to it."""
    floors = dict(ours)
    out: list[tuple[int, Floor]] = []
    for bucket in range(after + 1, LEGACY_FLOOR_BUCKETS):
        floor = floors.get(bucket % FLOOR_BUCKETS)
        if floor is not None:
            out.append((bucket, floor))
            if len(out) == limit:
                break
    return out
