"""HTTP transport (paxoskv/transport/http.py): batching and deadlines over a real socket."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from paxoskv.core.ballot import Ballot
from paxoskv.core.identity import PeerRecord
from paxoskv.core.messages import Prepare, Query, QueryReply
from paxoskv.core.register import Value
from paxoskv.transport.base import PeerUnreachable
from paxoskv.transport.codec import Sender, check_peer_auth, decode_frame, encode_replies
from paxoskv.transport.http import HttpTransport

SENDER = Sender(1, PeerRecord("d1", 1, "b1"), "fp")


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
        app = web.Application()
        app.router.add_post("/internal/batch", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        t = HttpTransport(1, {2: f"http://127.0.0.1:{port}"}, "s", inflight_max=2)
        t.set_sender(SENDER)
        try:
            replies = await asyncio.gather(*(t.send(2, Query(f"k{i}"), _deadline())
                                             for i in range(100)))
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
