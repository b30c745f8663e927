"""HTTP transport (paxoskv/transport/http.py): batching and deadlines over a real socket."""

from __future__ import annotations

import asyncio
import contextlib
import typing
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from paxoskv.core.ballot import Ballot
from paxoskv.core.identity import PeerRecord
from paxoskv.core.messages import (
    Accept,
    Collect,
    Forward,
    Forwarded,
    Learn,
    Prepare,
    Promise,
    Query,
    QueryReply,
    Request,
)
from paxoskv.core.register import Set, Value
from paxoskv.limits import Limits
from paxoskv.transport.base import PeerNotReached, PeerUnreachable
from paxoskv.transport.codec import Sender, check_peer_auth, decode_frame, encode_replies
from paxoskv.transport.http import HttpTransport, _Peer, _wire_size

SENDER = Sender(1, PeerRecord("d1", 1, "b1"), "fp")


@contextlib.asynccontextmanager
async def _peer(handler: Callable[[web.Request], Awaitable[web.Response]],
                inflight_max: int) -> AsyncIterator[HttpTransport]:
    """A transport from node 1 to a peer 2 whose /internal/batch is ``handler``."""
    app = web.Application()
    app.router.add_post("/internal/batch", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    t = HttpTransport(1, {2: f"http://127.0.0.1:{port}"}, "s", inflight_max=inflight_max)
    t.set_sender(SENDER)
    try:
        yield t
    finally:
        await t.close()
        await runner.cleanup()


def _deadline(seconds: float = 5.0) -> float:
    return asyncio.get_running_loop().time() + seconds


def test_concurrent_sends_are_coalesced_into_few_requests() -> None:
    """Goal: batching: 100 concurrent messages to one peer travel in far fewer than 100
    HTTP requests, and each caller gets its own reply."""
    requests_seen: list[int] = []

    async def handler(request: web.Request) -> web.Response:
        assert check_peer_auth(request.headers.get("Authorization"), "s")
        sender, items = decode_frame(await request.read(), ttl_ms_max=10_000)
        assert sender == SENDER
        msgs = [m for m, _ in items]
        requests_seen.append(len(msgs))
        await asyncio.sleep(0.01)
        replies = [QueryReply(m.key, Ballot(1, 1), Value(1, m.key.encode())) for m in msgs]
        return web.Response(body=encode_replies(list(replies)),
                            content_type="application/json")

    async def run() -> None:
        async with _peer(handler, inflight_max=2) as t:
            replies = await asyncio.gather(*(t.send(2, Query(f"k{i}"), _deadline())
                                             for i in range(100)))
            for i, r in enumerate(replies):
                assert isinstance(r, QueryReply)
                assert r.value.data == f"k{i}".encode()

    asyncio.run(run())
    assert sum(requests_seen) == 100
    assert len(requests_seen) < 20


def test_unreachable_peer_raises_peer_unreachable() -> None:
    """Goal: a refused connection surfaces as PeerUnreachable, never as a raw aiohttp error."""
    async def run() -> None:
        t = HttpTransport(1, {2: "http://127.0.0.1:9"}, "s", timeout_s=1)
        t.set_sender(SENDER)
        try:
            with pytest.raises(PeerUnreachable):
                await t.send(2, Prepare("k", Ballot(1, 1)), _deadline())
            with pytest.raises(PeerUnreachable):
                await t.hello(2, {})
            with pytest.raises(PeerUnreachable):
                await t.send(7, Prepare("k", Ballot(1, 1)), _deadline())
            with pytest.raises(PeerUnreachable, match="expired"):
                await t.send(2, Prepare("k", Ballot(1, 1)), _deadline(-1))
        finally:
            await t.close()
    asyncio.run(run())


def test_forwarded_writes_travel_in_frames_of_their_own() -> None:
    """Goal: a forwarded write (answered after a whole round) never shares a frame with
    acceptor messages, so their replies never wait for it: while a slow forward is on the
    wire, queries to the same peer are answered at once. A refused connection is
    PeerNotReached (the peer acted on nothing)."""
    frames: list[set[str]] = []

    async def handler(request: web.Request) -> web.Response:
        _, items = decode_frame(await request.read(), ttl_ms_max=10_000)
        msgs = [m for m, _ in items]
        frames.append({type(m).__name__ for m in msgs})
        replies: list[Any] = []
        for m in msgs:
            if isinstance(m, Forward):
                await asyncio.sleep(0.5)
                replies.append(Forwarded(m.key, "applied", 1, True))
            else:
                replies.append(QueryReply(m.key, Ballot(1, 1), Value(1, b"v")))
        return web.Response(body=encode_replies(replies), content_type="application/json")

    async def run() -> None:
        loop = asyncio.get_running_loop()
        async with _peer(handler, inflight_max=1) as t:
            forward = asyncio.ensure_future(
                t.send(2, Forward("f", Set(b"x"), "r", "b"), _deadline()))
            await asyncio.sleep(0.05)
            started = loop.time()
            queries = await asyncio.gather(*(t.send(2, Query(f"q{i}"), _deadline())
                                             for i in range(5)))
            assert loop.time() - started < 0.4
            assert all(isinstance(q, QueryReply) for q in queries)
            assert isinstance(await forward, Forwarded)
        closed = HttpTransport(1, {2: "http://127.0.0.1:9"}, "s", timeout_s=1)
        closed.set_sender(SENDER)
        try:
            with pytest.raises(PeerNotReached):
                await closed.send(2, Forward("f", Set(b"x"), "r", "b"), _deadline())
        finally:
            await closed.close()

    asyncio.run(run())
    assert {"Forward"} in frames
    assert all(f == {"Forward"} or "Forward" not in f for f in frames)


def test_each_message_type_travels_in_the_lane_of_its_answer() -> None:
    """Goal: steps answered once durable share the one-frame lane; those answered at once,
    and forwarded writes (answered after a round), never wait in a frame behind them. A
    new message type must be placed here on purpose."""
    peer = _Peer("http://p", inflight_max=4, durable_inflight_max=1)
    b = Ballot(1, 1)
    placed = {
        Prepare("k", b): peer.durable,
        Accept("k", b, Value(1, b"v")): peer.durable,
        Collect("k", b, 1): peer.durable,
        Query("k"): peer.prompt,
        Learn("k", 1, True, True, b"v"): peer.prompt,
        Forward("k", Set(b"x"), "r", "b"): peer.forward,
    }
    assert {type(m) for m in placed} == set(typing.get_args(Request))
    for msg, lane in placed.items():
        assert peer.lane(msg) is lane, type(msg).__name__
    assert (peer.durable.inflight_max, peer.prompt.inflight_max,
            peer.forward.inflight_max) == (1, 4, 4)


def _promising_peer(frames: list[tuple[float, list[str]]]
                    ) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A peer that answers a frame's prepares after one 0.3 s "fsync" (the whole frame's,
    as a group commit) and its queries at once."""
    async def handler(request: web.Request) -> web.Response:
        _, items = decode_frame(await request.read(), ttl_ms_max=10_000)
        msgs = [m for m, _ in items]
        frames.append((asyncio.get_running_loop().time(), [m.key for m in msgs]))
        if any(isinstance(m, Prepare) for m in msgs):
            await asyncio.sleep(0.3)
        replies: list[Any] = [
            Promise(m.key, m.ballot, Ballot.ZERO, Value(0, None)) if isinstance(m, Prepare)
            else QueryReply(m.key, Ballot(1, 1), Value(1, b"v")) for m in msgs]
        return web.Response(body=encode_replies(replies), content_type="application/json")
    return handler


def test_prepares_and_accepts_travel_one_frame_at_a_time_and_queries_do_not_wait() -> None:
    """Goal: a peer's durable lane (steps answered after an fsync) has one frame on the
    wire: prepares sent one by one while it is out leave together in the next frame, once
    its answer is back; queries, in a lane of their own, are answered meanwhile. With
    ``durable_inflight_max=4`` each of those prepares would leave in a frame of its own,
    at once."""
    frames: list[tuple[float, list[str]]] = []

    async def run() -> None:
        loop = asyncio.get_running_loop()
        async with _peer(_promising_peer(frames), inflight_max=4) as t:
            first = asyncio.ensure_future(t.send(2, Prepare("p0", Ballot(1, 1)), _deadline()))
            later = []
            for i in range(1, 5):
                await asyncio.sleep(0.02)  # one turn of the loop or more apart
                later.append(asyncio.ensure_future(
                    t.send(2, Prepare(f"p{i}", Ballot(1, 1)), _deadline())))
            started = loop.time()
            queries = await asyncio.gather(*(t.send(2, Query(f"q{i}"), _deadline())
                                             for i in range(3)))
            assert loop.time() - started < 0.25, "a query waited behind a prepare's frame"
            assert all(isinstance(q, QueryReply) for q in queries)
            assert isinstance(await first, Promise)
            assert all(isinstance(p, Promise) for p in await asyncio.gather(*later))
            prepares = [keys for _, keys in frames if keys[0].startswith("p")]
            assert prepares == [["p0"], ["p1", "p2", "p3", "p4"]]

    asyncio.run(run())


def test_prepares_that_fill_a_frame_do_not_wait_for_the_one_out() -> None:
    """Goal: the one-frame limit never leaves a full frame waiting (many rounds at once, or
    large values): with frames of at most 2 messages, 6 prepares queued behind one frame
    leave at once, in up to ``inflight_max`` frames."""
    frames: list[tuple[float, list[str]]] = []

    async def run() -> None:
        loop = asyncio.get_running_loop()
        async with _peer(_promising_peer(frames), inflight_max=4) as t:
            t._limits = Limits(batch_messages_max=2)
            first = asyncio.ensure_future(t.send(2, Prepare("p0", Ballot(1, 1)), _deadline()))
            await asyncio.sleep(0.05)
            sent = loop.time()
            rest = await asyncio.gather(*(t.send(2, Prepare(f"p{i}", Ballot(1, 1)),
                                                 _deadline()) for i in range(1, 7)))
            assert all(isinstance(p, Promise) for p in rest)
            assert isinstance(await first, Promise)
            starts = {keys[0]: at for at, keys in frames}
            # p1..p4 filled two frames and left while p0's was out; p5, p6 (one frame,
            # not full) waited for an answer.
            assert starts["p1"] - sent < 0.15 and starts["p3"] - sent < 0.15
            assert sorted(len(keys) for _, keys in frames) == [1, 2, 2, 2]

    asyncio.run(run())


def test_waiting_bytes_are_counted_as_messages_come_and_go(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Goal: a lane keeps the bytes of the messages waiting in it as they are queued,
    sent and dropped as expired, so whether they fill a frame is known without going
    through them: prepares whose bytes fill a frame leave at once behind the one out, and
    once all is answered the lane holds no bytes."""
    monkeypatch.setattr(HttpTransport, "_batch_bytes_max", property(lambda self: 2000))
    frames: list[tuple[float, list[str]]] = []

    async def run() -> None:
        loop = asyncio.get_running_loop()
        async with _peer(_promising_peer(frames), inflight_max=4) as t:
            lane = t._peers[2].durable
            first = asyncio.ensure_future(t.send(2, Prepare("p0", Ballot(1, 1)), _deadline()))
            await asyncio.sleep(0.05)  # p0's frame is out for 0.3 s
            doomed = Prepare("x0", Ballot(1, 1))
            expired = asyncio.ensure_future(t.send(2, doomed, loop.time() + 0.01))
            await asyncio.sleep(0.02)
            assert lane.queued_bytes == _wire_size(doomed)
            sent = loop.time()
            # four more of about 514 bytes: more than 2000 bytes (the expired one's bytes
            # are checked by the count falling back to 0 once it is dropped)
            rest = await asyncio.gather(*(t.send(2, Prepare(f"p{i}", Ballot(1, 1)),
                                                 _deadline()) for i in range(1, 5)))
            assert all(isinstance(p, Promise) for p in rest)
            assert isinstance(await first, Promise)
            with pytest.raises(PeerNotReached, match="expired"):
                await expired
            starts = {keys[0]: at for at, keys in frames}
            assert starts["p1"] - sent < 0.15, "a frame's worth of bytes waited"
            assert [keys for _, keys in frames] == [["p0"], ["p1", "p2", "p3"], ["p4"]]
            assert lane.queued_bytes == 0 and not lane.queue

    asyncio.run(run())


def test_close_sends_nothing_more_and_answers_every_caller() -> None:
    """Goal: once close() begins, a message queued behind a frame on the wire is failed,
    not sent (a cancelled frame must not start the next one), and the frame's own caller
    is answered too."""
    frames: list[tuple[float, list[str]]] = []

    async def run() -> None:
        async with _peer(_promising_peer(frames), inflight_max=4) as t:
            out = asyncio.ensure_future(t.send(2, Prepare("p0", Ballot(1, 1)), _deadline()))
            await asyncio.sleep(0.05)
            queued = asyncio.ensure_future(t.send(2, Prepare("p1", Ballot(1, 1)), _deadline()))
            await asyncio.sleep(0.01)
            await t.close()
            with pytest.raises(PeerUnreachable, match="transport closed"):
                await queued
            with pytest.raises(PeerUnreachable, match="transport closed"):
                await out
            await asyncio.sleep(0.5)  # long enough for a frame started by mistake to land
            with pytest.raises(PeerNotReached, match="transport closed"):
                await t.send(2, Prepare("p2", Ballot(1, 1)), _deadline())
        assert [keys for _, keys in frames] == [["p0"]]

    asyncio.run(run())
