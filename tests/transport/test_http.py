"""HTTP transport (paxoskv/transport/http.py): batching and deadlines over a real socket."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from paxoskv.core.ballot import Ballot
from paxoskv.core.identity import PeerRecord
from paxoskv.core.messages import Forward, Forwarded, Prepare, Promise, Query, QueryReply
from paxoskv.core.register import Set, Value
from paxoskv.transport.base import PeerNotReached, PeerUnreachable
from paxoskv.transport.codec import Sender, check_peer_auth, decode_frame, encode_replies
from paxoskv.transport.http import HttpTransport

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


def test_prepares_and_accepts_travel_one_frame_at_a_time_and_queries_do_not_wait() -> None:
    """Goal: a peer's durable lane (steps answered after an fsync) has one frame on the
    wire: prepares sent one by one while it is out leave together in the next frame, once
    its answer is back; queries, in a lane of their own, are answered meanwhile. With
    ``durable_inflight_max=4`` each of those prepares would leave in a frame of its own,
    at once."""
    frames: list[tuple[float, list[str]]] = []

    async def handler(request: web.Request) -> web.Response:
        _, items = decode_frame(await request.read(), ttl_ms_max=10_000)
        msgs = [m for m, _ in items]
        frames.append((asyncio.get_running_loop().time(), [m.key for m in msgs]))
        replies: list[Any] = []
        for m in msgs:
            if isinstance(m, Prepare):
                await asyncio.sleep(0.3)  # the peer's fsync
                replies.append(Promise(m.key, m.ballot, Ballot.ZERO, Value(0, None)))
            else:
                replies.append(QueryReply(m.key, Ballot(1, 1), Value(1, b"v")))
        return web.Response(body=encode_replies(replies), content_type="application/json")

    async def run() -> None:
        loop = asyncio.get_running_loop()
        async with _peer(handler, inflight_max=4) as t:
            first = asyncio.ensure_future(t.send(2, Prepare("p0", Ballot(1, 1)), _deadline()))
            later = []
            for i in range(1, 5):
                await asyncio.sleep(0.02)  # one turn of the loop or more apart
                later.append(asyncio.ensure_future(
                    t.send(2, Prepare(f"p{i}", Ballot(1, 1)), _deadline())))
            started = loop.time()
            queries = await asyncio.gather(*(t.send(2, Query(f"q{i}"), _deadline())
                                             for i in range(3)))
            assert loop.time() - started < 0.2, "a query waited behind a prepare's frame"
            assert all(isinstance(q, QueryReply) for q in queries)
            answered = await first
            first_back = loop.time()
            assert isinstance(answered, Promise)
            assert all(isinstance(p, Promise) for p in await asyncio.gather(*later))
            prepares = [(at, keys) for at, keys in frames if keys[0].startswith("p")]
            assert [keys for _, keys in prepares] == [["p0"], ["p1", "p2", "p3", "p4"]]
            assert prepares[1][0] >= first_back - 0.05

    asyncio.run(run())
