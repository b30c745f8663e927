"""The peer channel (paxoskv/transport/channel.py and PeerServer's /internal/channel):
real aiohttp servers on 127.0.0.1, one WebSocket per peer."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from paxoskv.core.acceptor import Floor
from paxoskv.core.ballot import Ballot
from paxoskv.core.identity import PeerRecord
from paxoskv.core.messages import Accept, Accepted, Query, QueryReply, Reply, Request
from paxoskv.core.register import Value
from paxoskv.transport.base import KeyPage, PeerUnreachable, Refusal
from paxoskv.transport.channel import ChannelTransport, _Socket
from paxoskv.transport.codec import Sender
from paxoskv.transport.server import PeerServer

SENDER = Sender(1, PeerRecord("d1", 1, "b1"), "fp")


class FakeNode:
    """A PeerHandler: answers queries with the key as the value; ``slow`` keys take 1 s."""

    message_ttl_ms_max = 10_000

    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse
        self.seen: list[Request] = []

    def admit(self, sender: Sender) -> None:
        if self.refuse:
            raise Refusal("not a member")

    async def handle(self, msg: Request, deadline: float) -> Reply:
        self.seen.append(msg)
        if msg.key.startswith("slow"):
            await asyncio.sleep(1.0)
        if isinstance(msg, Accept):
            return Accepted(msg.key, msg.ballot)
        return QueryReply(msg.key, Ballot(1, 1), Value(1, msg.key.encode()))

    def handle_soon(self, msg: Request, deadline: float) -> Awaitable[Reply]:
        return self.handle(msg, deadline)

    async def on_hello(self, info: dict[str, Any]) -> dict[str, Any]:
        return {"hello": info}

    def key_page(self, prefix: str, after: str | None, limit: int) -> KeyPage | None:
        return [], False

    def floor_page(self, after: int, limit: int) -> list[tuple[int, Floor]] | None:
        return [(b, Floor(Ballot(b, 1), b)) for b in (3, 7, 9) if b > after][:limit]


class CountingServer(PeerServer):
    def __init__(self, node: FakeNode, secret: str) -> None:
        super().__init__(node, secret)
        self.frames = 0
        self.upgrades = 0

    async def frame(self, body: bytes) -> tuple[int, bytes]:
        self.frames += 1
        return await super().frame(body)

    async def _serve_channel(self, request: web.Request) -> web.WebSocketResponse:
        self.upgrades += 1
        return await super()._serve_channel(request)


class Peer:
    """One real server on 127.0.0.1 that can be stopped and started on the same port."""

    def __init__(self, node: FakeNode, secret: str = "s") -> None:
        self.server = CountingServer(node, secret)
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        self.server.add_routes(app)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _deadline(seconds: float = 5.0) -> float:
    return asyncio.get_running_loop().time() + seconds


@contextlib.asynccontextmanager
async def _setup(node: FakeNode | None = None, secret: str = "s", **kw: Any
                 ) -> AsyncIterator[tuple[Peer, ChannelTransport]]:
    peer = Peer(node or FakeNode())
    await peer.start()
    t = ChannelTransport(1, {2: peer.url}, secret, **kw)
    t.set_sender(SENDER)
    try:
        yield peer, t
    finally:
        await t.close()
        await peer.stop()


def _run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(test())


def test_many_concurrent_messages_share_one_socket_in_few_frames() -> None:
    """Goal: 300 concurrent messages to one peer travel on one WebSocket in far fewer
    frames, each caller gets its own reply, and a 1 MiB value crosses intact."""
    async def run() -> None:
        async with _setup(inflight_max=2) as (peer, t):
            replies = await asyncio.gather(*(t.send(2, Query(f"k{i}"), _deadline())
                                             for i in range(300)))
            for i, r in enumerate(replies):
                assert isinstance(r, QueryReply) and r.value.data == f"k{i}".encode()
            big = Value(1, bytes(range(256)) * 4096)
            assert await t.send(2, Accept("big", Ballot(2, 1), big), _deadline()) == \
                Accepted("big", Ballot(2, 1))
            assert await t.hello(2, {"x": 1}) == {"hello": {"x": 1}}
            assert await t.list_keys(2, "", None, 10) == ([], False)
            assert await t.list_floors(2, 3, 1) == [(7, Floor(Ballot(7, 1), 7))]
            assert peer.server.upgrades == 1
            assert peer.server.frames < 60

    _run(run)


def test_a_slow_frame_does_not_hold_back_the_next() -> None:
    """Goal: frames on one socket are served concurrently: a reply for a fast message
    overtakes a slow one (an fsync) sent before it."""
    async def run() -> None:
        async with _setup() as (_, t):
            await t.send(2, Query("warm"), _deadline())
            slow = asyncio.ensure_future(t.send(2, Query("slow"), _deadline()))
            await asyncio.sleep(0.05)
            started = time.monotonic()
            await t.send(2, Query("fast"), _deadline())
            assert time.monotonic() - started < 0.5
            assert not slow.done()
            assert isinstance(await slow, QueryReply)

    _run(run)


def test_peer_restart_fails_pending_at_once_then_recovers() -> None:
    """Goal: when the peer goes away, frames waiting on its socket fail with
    PeerUnreachable at once (not after the timeout), sends fail fast while it is down,
    and the channel is dialled again once it is back."""
    async def run() -> None:
        async with _setup(timeout_s=5.0) as (peer, t):
            await t.send(2, Query("a"), _deadline())
            pending = asyncio.ensure_future(t.send(2, Query("slow"), _deadline()))
            await asyncio.sleep(0.05)
            started = time.monotonic()
            await peer.stop()
            with pytest.raises(PeerUnreachable):
                await pending
            for _ in range(3):
                with pytest.raises(PeerUnreachable):
                    await t.send(2, Query("b"), _deadline())
            assert time.monotonic() - started < 2.5
            await peer.start()
            for _ in range(50):
                try:
                    reply = await t.send(2, Query("c"), _deadline())
                    break
                except PeerUnreachable:
                    await asyncio.sleep(0.05)
            else:
                raise AssertionError("the channel never came back")
            assert isinstance(reply, QueryReply) and reply.value.data == b"c"
            assert peer.server.upgrades == 2

    _run(run)


def test_wrong_secret_and_refused_sender_are_peer_unreachable() -> None:
    """Goal: the upgrade is refused without the secret (401), and a sender the peer does
    not admit gets the refusal answer (409), both as PeerUnreachable; nothing is handled."""
    async def run() -> None:
        node = FakeNode()
        async with _setup(node, secret="wrong") as (_, t):
            with pytest.raises(PeerUnreachable, match="401"):
                await t.send(2, Query("a"), _deadline())
        refusing = FakeNode(refuse=True)
        async with _setup(refusing) as (_, t):
            with pytest.raises(PeerUnreachable, match="409"):
                await t.send(2, Query("a"), _deadline())
        assert node.seen == [] and refusing.seen == []

    _run(run)


def test_a_peer_gone_during_the_handshake_is_no_server_error(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Goal: a peer that closes its connection before the upgrade's answer is written (as
    aiohttp reports it: ``ClientConnectionResetError`` out of ``prepare``) costs the peer
    its channel, never an ERROR with a traceback in this server's log. A real server;
    only the reset is forced, since its timing cannot be on loopback."""
    async def gone(self: web.WebSocketResponse, request: web.Request) -> None:
        raise aiohttp.ClientConnectionResetError("Cannot write to closing transport")

    async def run() -> None:
        node = FakeNode()
        async with _setup(node) as (peer, t):
            monkeypatch.setattr(web.WebSocketResponse, "prepare", gone)
            with caplog.at_level("DEBUG"), pytest.raises(PeerUnreachable):
                await t.send(2, Query("a"), _deadline(1))
            assert peer.server.upgrades >= 1
        assert node.seen == []

    _run(run)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
    assert any("closed during the handshake" in r.getMessage() for r in caplog.records)


def test_expired_messages_are_dropped_not_sent() -> None:
    """Goal: a message already past its deadline fails at once, and one that expires
    while queued behind a frame in flight is dropped, never reaching the peer."""
    async def run() -> None:
        node = FakeNode()
        async with _setup(node, inflight_max=1) as (_, t):
            with pytest.raises(PeerUnreachable, match="expired"):
                await t.send(2, Query("a"), _deadline(-1))
            slow = asyncio.ensure_future(t.send(2, Query("slow"), _deadline()))
            await asyncio.sleep(0.05)
            with pytest.raises(PeerUnreachable, match="expired"):
                await t.send(2, Query("late"), _deadline(0.2))
            await slow
            assert [m.key for m in node.seen] == ["slow"]

    _run(run)


def test_socket_outlives_the_request_timeout() -> None:
    """Goal: the channel stays open while idle longer than the peer timeout (the session's
    timeout bounds the upgrade only), so a quiet cluster does not redial."""
    async def run() -> None:
        async with _setup(timeout_s=0.3) as (peer, t):
            await t.send(2, Query("a"), _deadline())
            await asyncio.sleep(0.8)
            await t.send(2, Query("b"), _deadline())
            assert peer.server.upgrades == 1

    _run(run)


def test_heartbeat_notices_a_silent_peer() -> None:
    """Goal: a peer that stops answering without closing (a blackholed link) is noticed
    by the heartbeat: the frame waiting on it fails well before the request timeout."""
    async def run() -> None:
        peer = Peer(FakeNode())
        await peer.start()
        frozen = False
        conns: list[asyncio.StreamWriter] = []

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await r.read(65536):
                    if not frozen:
                        w.write(data)

        async def proxy(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            ur, uw = await asyncio.open_connection("127.0.0.1", peer.port)
            conns.extend((w, uw))
            await asyncio.gather(pipe(r, uw), pipe(ur, w))

        front = await asyncio.start_server(proxy, "127.0.0.1", 0)
        port = front.sockets[0].getsockname()[1]
        t = ChannelTransport(1, {2: f"http://127.0.0.1:{port}"}, "s", timeout_s=10.0,
                             heartbeat_s=0.4)
        t.set_sender(SENDER)
        try:
            await t.send(2, Query("a"), _deadline(20))
            frozen = True
            started = time.monotonic()
            with pytest.raises(PeerUnreachable):
                await t.send(2, Query("slow"), _deadline(20))
            assert time.monotonic() - started < 3.0
        finally:
            await t.close()
            for w in conns:
                w.close()
            front.close()
            await front.wait_closed()
            await peer.stop()

    _run(run)


class _BlockedWS:
    """send_bytes suspends (as in a drain of a full buffer) until the socket closes."""

    def __init__(self) -> None:
        self.closed = asyncio.Event()
        self.sends = 0

    async def send_bytes(self, data: bytes) -> None:
        self.sends += 1
        await self.closed.wait()
        raise aiohttp.ClientConnectionResetError("Cannot write to closing transport")

    async def close(self) -> None:
        self.closed.set()


class _Session:
    async def close(self) -> None:
        pass


def test_dropped_socket_leaves_no_unretrieved_answer() -> None:
    """Goal: frames whose sends fail when the peer goes away leave no answer future with
    an exception nobody retrieves ("Future exception was never retrieved" in the log at
    shutdown or a peer restart; found by review, failed before the fix)."""
    reported: list[dict[str, Any]] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: reported.append(ctx))
        t = ChannelTransport(1, {2: "http://127.0.0.1:1"}, "s")
        p = t._peers[2]
        ws = _BlockedWS()
        sock = _Socket(_Session(), ws)  # type: ignore[arg-type]
        t._links[id(p)].socket = sock
        a = asyncio.ensure_future(t._exchange(p, b"a"))
        b = asyncio.ensure_future(t._exchange(p, b"b"))
        await asyncio.sleep(0)
        assert ws.sends == 2 and len(sock.pending) == 2
        ws.closed.set()  # the peer goes away: both sends fail, the first drops the socket
        for fut in (a, b):
            with contextlib.suppress(PeerUnreachable):
                await fut
        del a, b, fut, sock
        await asyncio.sleep(0.01)
        await t.close()
        gc.collect()
        await asyncio.sleep(0)
    asyncio.run(main())
    assert not reported, [str(c.get("exception") or c.get("message")) for c in reported]


class _ClosingWS(_BlockedWS):
    async def send_bytes(self, data: bytes) -> None:  # the transport is already closing
        raise aiohttp.ClientConnectionResetError("Cannot write to closing transport")


def test_one_frame_on_a_closing_socket_leaves_no_unretrieved_answer() -> None:
    """Goal: the same for a single frame sent on a socket that is already closing."""
    reported: list[dict[str, Any]] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: reported.append(ctx))
        t = ChannelTransport(1, {2: "http://127.0.0.1:1"}, "s")
        p = t._peers[2]
        t._links[id(p)].socket = _Socket(_Session(), _ClosingWS())  # type: ignore[arg-type]
        with contextlib.suppress(PeerUnreachable):
            await t._exchange(p, b"a")
        await t.close()
        gc.collect()
        await asyncio.sleep(0)
    asyncio.run(main())
    assert not reported, [str(c.get("exception") or c.get("message")) for c in reported]


def test_a_dial_cut_short_by_close_leaves_no_unclosed_session() -> None:
    """Goal: a node stopping while it dials a peer that accepted the connection but has
    not answered the upgrade closes the dial's session: no "Unclosed client session"."""
    async def run() -> None:
        complaints: list[str] = []
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, ctx: complaints.append(ctx["message"]))
        held: list[asyncio.StreamWriter] = []

        async def mute(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            held.append(w)  # reads the upgrade request, never answers it
            with contextlib.suppress(ConnectionError):
                while await r.read(65536):
                    pass

        front = await asyncio.start_server(mute, "127.0.0.1", 0)
        port = front.sockets[0].getsockname()[1]
        t = ChannelTransport(1, {2: f"http://127.0.0.1:{port}"}, "s", timeout_s=10.0)
        t.set_sender(SENDER)
        sending = asyncio.ensure_future(t.send(2, Query("a"), _deadline(20)))
        for _ in range(200):  # until the upgrade request has reached the mute peer
            if held:
                break
            await asyncio.sleep(0.01)
        assert held, "the dial never reached the peer"
        await t.close()
        with pytest.raises(PeerUnreachable):
            await sending
        for w in held:
            w.close()
        front.close()
        await front.wait_closed()
        gc.collect()
        await asyncio.sleep(0)
        assert not [c for c in complaints if "Unclosed" in c], complaints

    _run(run)
