"""Peer transport over one persistent WebSocket per peer (the peer channel).

Batching is `HttpTransport`'s (a bounded queue per peer, batches capped by count and bytes,
expired messages dropped, a lane's limit of frames in flight, the rest coalescing
behind them); only the carriage differs: each batch is one binary WebSocket message on a
socket this node keeps open to the peer, tagged with a request id, and the peer answers by
that id, so many frames share the socket and no HTTP request is built per batch. Hello and
key pages stay on HTTP (rare, and JSON).

The socket is dialled on first use, with the shared secret on the upgrade request (each
frame's sender header is still checked by the peer's ``admit``). When it drops, every frame
waiting on it fails at once with `PeerUnreachable` and the next batch dials again, through a
new connector (no DNS cache: a restarted pod has a new address); a failed dial backs off
(``BACKOFF_MIN_S`` doubling to ``BACKOFF_MAX_S``), failing batches at once meanwhile. A
quiet socket is pinged (``CHANNEL_HEARTBEAT_S``); no pong in half that and it is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass, field

import aiohttp

from paxoskv.core.messages import PeerProtocolError
from paxoskv.limits import Limits
from paxoskv.metrics import Metrics
from paxoskv.transport.base import PeerNotReached, PeerUnreachable
from paxoskv.transport.codec import (
    AUTH_HEADER,
    CHANNEL_PATH,
    channel_request,
    parse_channel_reply,
)
from paxoskv.transport.http import DURABLE_INFLIGHT_MAX, HttpTransport, _Peer, not_acted_on
from paxoskv.transport.server import CHANNEL_HEARTBEAT_S

__all__ = ["BACKOFF_MAX_S", "BACKOFF_MIN_S", "ChannelTransport"]

log = logging.getLogger(__name__)

BACKOFF_MIN_S = 0.05
BACKOFF_MAX_S = 1.0
"""Between failed dials of one peer: a restarted peer is back within about a second, and
meanwhile batches fail at once instead of each waiting for a connect timeout."""


@dataclass(eq=False)
class _Socket:
    """One open channel: its socket, its own session, and the frames awaiting answers."""

    session: aiohttp.ClientSession
    ws: aiohttp.ClientWebSocketResponse
    pending: dict[int, asyncio.Future[tuple[int, bytes]]] = field(default_factory=dict)
    next_id: int = 0
    dropped: bool = False


@dataclass(eq=False)
class _Link:
    """A peer's channel over time: the socket if open, and when a dial may be tried again."""

    socket: _Socket | None = None
    dialing: asyncio.Lock = field(default_factory=asyncio.Lock)
    retry_at: float = 0.0
    backoff_s: float = BACKOFF_MIN_S


def _time_out(answer: asyncio.Future[tuple[int, bytes]]) -> None:
    if not answer.done():
        answer.set_exception(TimeoutError())


class ChannelTransport(HttpTransport):
    """Implements ``paxoskv.transport.base.Transport``; batches ride the peer channel."""

    def __init__(self, node_id: int, peer_urls: dict[int, str], secret: str,
                 timeout_s: float = 2.0, limits: Limits | None = None,
                 metrics: Metrics | None = None, inflight_max: int = 4,
                 heartbeat_s: float = CHANNEL_HEARTBEAT_S,
                 ssl_context: ssl.SSLContext | None = None,
                 durable_inflight_max: int = DURABLE_INFLIGHT_MAX) -> None:
        super().__init__(node_id, peer_urls, secret, timeout_s=timeout_s, limits=limits,
                         metrics=metrics, inflight_max=inflight_max, ssl_context=ssl_context,
                         durable_inflight_max=durable_inflight_max)
        self._timeout_s = timeout_s
        self._heartbeat_s = heartbeat_s
        self._links: dict[int, _Link] = {id(p): _Link() for p in self._peers.values()}

    async def _exchange(self, p: _Peer, frame: bytes) -> bytes:
        sock = self._links[id(p)].socket  # (open: no coroutine to look it up)
        if sock is None:
            sock = await self._socket(p)
        loop = self._loop.get()
        sock.next_id = (sock.next_id + 1) & 0xFFFF_FFFF
        request_id = sock.next_id
        answer: asyncio.Future[tuple[int, bytes]] = loop.create_future()
        sock.pending[request_id] = answer
        timer: asyncio.TimerHandle | None = None
        try:
            await sock.ws.send_bytes(channel_request(request_id, frame))
            # The wait for the answer is bounded by a timer that fails the answer future,
            # rather than asyncio.timeout around it, which costs a Timeout, a lookup of the
            # current task and a cancel-and-convert of this task on expiry.
            timer = loop.call_later(self._timeout_s, _time_out, answer)
            status, body = await answer
        except TimeoutError:
            # A slow frame (an fsync) on a live peer: the socket stays; a dead peer is
            # the heartbeat's to notice.
            raise PeerUnreachable(f"no answer on the peer channel within "
                                  f"{self._timeout_s:.3f}s") from None
        except ConnectionError as exc:
            self._drop(p, sock, f"{type(exc).__name__}: {exc}")
            raise PeerUnreachable(f"peer channel: {type(exc).__name__}: {exc}") from None
        finally:
            if timer is not None:
                timer.cancel()
            sock.pending.pop(request_id, None)
            if answer.done() and not answer.cancelled():
                answer.exception()  # a drop may have failed it after we stopped waiting
        if status != 200:
            raise not_acted_on(status)(f"HTTP {status}: {body[:200]!r}")
        return body

    async def _socket(self, p: _Peer) -> _Socket:
        """The peer's open channel, dialled now if there is none."""
        link = self._links[id(p)]
        if link.socket is not None:
            return link.socket
        async with link.dialing:
            return await self._dial(p, link)

    async def _dial(self, p: _Peer, link: _Link) -> _Socket:
        """Under the link's lock: the socket another dial just opened, or a new one."""
        if link.socket is not None:
            return link.socket
        loop = asyncio.get_running_loop()
        if loop.time() < link.retry_at:
            raise PeerNotReached("peer channel down; dialling again shortly")
        # A fresh connector per dial: it resolves the name again (no DNS cache).
        connector = aiohttp.TCPConnector(limit=1, use_dns_cache=False, ssl=self._ssl)
        session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        try:
            ws = await session.ws_connect(
                f"{p.url}{CHANNEL_PATH}", headers={AUTH_HEADER: f"Bearer {self._secret}"},
                heartbeat=self._heartbeat_s, compress=0, autoping=True,
                max_msg_size=self._limits.frame_bytes_max + 64,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None,
                                                ws_close=self._timeout_s))
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            await session.close()
            link.retry_at = loop.time() + link.backoff_s
            link.backoff_s = min(link.backoff_s * 2, BACKOFF_MAX_S)
            if isinstance(exc, aiohttp.WSServerHandshakeError):
                raise PeerNotReached(f"peer channel refused: HTTP {exc.status}") from None
            raise PeerNotReached(f"peer channel: {type(exc).__name__}: {exc}") from None
        except (asyncio.CancelledError, Exception):
            # Cancelled mid-dial (the node stopping): the session closes in the
            # background, and ``close`` waits for it (else "Unclosed client session").
            self._close_later(session.close())
            raise
        link.backoff_s = BACKOFF_MIN_S
        sock = _Socket(session, ws)
        link.socket = sock
        self._track(asyncio.ensure_future(self._read(p, sock)))
        return sock

    async def _read(self, p: _Peer, sock: _Socket) -> None:
        """Hand each answer to the frame waiting for it, until the socket closes."""
        reason = "the peer channel closed"
        try:
            async for message in sock.ws:
                if message.type is not aiohttp.WSMsgType.BINARY:
                    reason = f"unexpected {message.type.name} on the peer channel"
                    break
                try:
                    request_id, status, body = parse_channel_reply(message.data)
                except PeerProtocolError as exc:
                    reason = str(exc)
                    break
                answer = sock.pending.pop(request_id, None)
                if answer is not None and not answer.done():
                    answer.set_result((status, body))
        finally:
            self._drop(p, sock, reason)

    def _drop(self, p: _Peer, sock: _Socket, reason: str) -> None:
        """Forget a socket: its waiting frames fail now, and it closes in the background."""
        if sock.dropped:
            return
        sock.dropped = True
        link = self._links[id(p)]
        if link.socket is sock:
            link.socket = None
        err = PeerUnreachable(reason)
        for answer in sock.pending.values():
            if not answer.done():
                answer.set_exception(err)
        sock.pending.clear()
        self._close_later(self._shut(sock))

    @staticmethod
    async def _shut(sock: _Socket) -> None:
        try:
            await sock.ws.close()
        finally:
            await sock.session.close()

    async def close(self) -> None:
        self._closed = True  # the frames failed below start no new ones (nor a new dial)
        for p in self._peers.values():
            sock = self._links[id(p)].socket
            if sock is not None:
                self._drop(p, sock, "transport closed")
        await super().close()
