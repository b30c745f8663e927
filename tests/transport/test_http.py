"""HTTP transport (paxoskv/transport/http.py): frames, auth, batching over a real socket."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from paxoskv.core.ballot import Ballot
from paxoskv.core.messages import PeerProtocolError, Prepare, Promise, Query, QueryReply
from paxoskv.core.register import Value
from paxoskv.transport.base import PeerUnreachable
from paxoskv.transport.http import (
    HttpTransport,
    check_peer_auth,
    decode_batch,
    encode_replies,
)


def test_auth_header_check() -> None:
    """Goal: only the exact bearer secret passes."""
    assert check_peer_auth("Bearer s3cret", "s3cret")
    assert not check_peer_auth("Bearer wrong", "s3cret")
    assert not check_peer_auth("s3cret", "s3cret")
    assert not check_peer_auth(None, "s3cret")


def test_decode_batch_rejects_replies_and_garbage() -> None:
    """Goal: a frame of requests decodes; replies or junk inside a frame are refused."""
    msgs = decode_batch(b'{"m": [{"t": "query", "k": "a"}]}')
    assert msgs == [Query("a")]
    for bad in (b"{", b"[]", b'{"m": 1}', b'{"m": [{"t": "accepted", "k": "a", "b": [1,1,1]}]}'):
        with pytest.raises(PeerProtocolError):
            decode_batch(bad)


def test_concurrent_sends_are_coalesced_into_few_requests() -> None:
    """Goal: batching: 100 concurrent messages to one peer travel in far fewer than 100
    HTTP requests, and each caller gets its own reply."""
    requests_seen: list[int] = []

    async def handler(request: web.Request) -> web.Response:
        assert check_peer_auth(request.headers.get("Authorization"), "s")
        msgs = decode_batch(await request.read())
        requests_seen.append(len(msgs))
        await asyncio.sleep(0.01)
        replies = [QueryReply(m.key, Ballot(1, 1), Value(1, m.key.encode())) for m in msgs]
        return web.Response(body=encode_replies(list(replies)),
                            content_type="application/json")

    async def run() -> None:
        app = web.Application()
        app.router.add_post("/internal/batch", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        t = HttpTransport(1, {2: f"http://127.0.0.1:{port}"}, "s", inflight_max=2)
        try:
            replies = await asyncio.gather(*(t.send(2, Query(f"k{i}")) for i in range(100)))
            for i, r in enumerate(replies):
                assert isinstance(r, QueryReply)
                assert r.value.data == f"k{i}".encode()
        finally:
            await t.close()
            await runner.cleanup()

    asyncio.run(run())
    assert sum(requests_seen) == 100
    assert len(requests_seen) < 20


def test_unreachable_peer_raises_peer_unreachable() -> None:
    """Goal: a refused connection surfaces as PeerUnreachable, never as a raw aiohttp error."""
    async def run() -> None:
        t = HttpTransport(1, {2: "http://127.0.0.1:9"}, "s", timeout_s=1)
        try:
            with pytest.raises(PeerUnreachable):
                await t.send(2, Prepare("k", Ballot(1, 1)))
            with pytest.raises(PeerUnreachable):
                await t.hello(2, {})
            with pytest.raises(PeerUnreachable):
                await t.send(7, Prepare("k", Ballot(1, 1)))
        finally:
            await t.close()
    asyncio.run(run())


def test_promise_round_trips_through_encode_replies() -> None:
    """Goal: replies encode to the frame shape the client side decodes."""
    import orjson
    body = encode_replies([Promise("k", Ballot(2, 1), Ballot.ZERO, Value(0, None))])
    assert orjson.loads(body) == {"r": [{"t": "promise", "k": "k", "b": [2, 1, 0],
                                         "ba": [0, 0, 0], "v": [0, None, []]}]}
