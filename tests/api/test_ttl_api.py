"""TTL over HTTP on a one-node cluster whose wall clock the test sets (docs/ttl.md).

Method: the node of tests/api/test_app.py, built with ``clock_ms`` reading a list the test
moves, so expiry is exact and instantaneous; the real-process timing is in
tests/integration/test_ttl_expiry.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from paxoskv.api.app import NODE, make_app
from paxoskv.api.openapi import openapi_document
from paxoskv.limits import Limits
from paxoskv.metrics import Metrics
from paxoskv.node import Node, NodeConfig, PeerSpec
from paxoskv.storage.base import NodeIdentity
from tests.api.test_app import MemoryStorage, NoPeers

T0 = 1_700_000_000_000


def run(test: Any) -> None:
    async def main() -> None:
        now = [T0]
        limits = Limits()
        config = NodeConfig(1, {1: PeerSpec(1, "http://127.0.0.1:1")}, limits=limits)
        node = Node(config, NodeIdentity("c", 1, "d", 1, False), MemoryStorage(), NoPeers(),
                    clock_ms=lambda: now[0])
        await node.start()
        app = make_app(node, "secret", limits, Metrics())
        async with TestClient(TestServer(app)) as client:
            await test(client, now)
    asyncio.run(main())


def test_put_with_ttl_expires_to_404_and_leaves_listings() -> None:
    async def t(c: TestClient[Any, Any], now: list[int]) -> None:
        assert (await c.put("/v1/kv/a?ttl=2s", data=b"x")).status == 200
        assert (await c.put("/v1/kv/b", data=b"y")).status == 200
        r = await c.get("/v1/kv/a")
        assert r.status == 200 and r.headers["Expires-At-Ms"] == str(T0 + 2000)
        now[0] = T0 + 1999
        assert (await c.get("/v1/kv/a")).status == 200
        assert (await (await c.get("/v1/kv")).json())["keys"] == ["a", "b"]
        now[0] = T0 + 2000
        assert (await (await c.get("/v1/kv")).json())["keys"] == ["b"]
        assert (await c.get("/v1/kv/a?consistency=stale")).status == 404
        assert (await c.get("/v1/kv/a")).status == 404
    run(t)


def test_a_read_that_said_absent_deleted_it_first() -> None:
    """Goal: once a read answered 404 for expiry, a clock that goes back does not bring
    the value back: the read committed a tombstone before answering."""
    async def t(c: TestClient[Any, Any], now: list[int]) -> None:
        await c.put("/v1/kv/a?ttl=1s", data=b"x")
        now[0] = T0 + 5000
        assert (await c.get("/v1/kv/a")).status == 404
        now[0] = T0  # a proposer whose clock is behind
        assert (await c.get("/v1/kv/a")).status == 404
        node: Node = c.server.app[NODE]
        assert not node.storage.load("a").value.exists
    run(t)


def test_renew_extends_and_bumps_version_and_404s_when_expired() -> None:
    async def t(c: TestClient[Any, Any], now: list[int]) -> None:
        v1 = (await (await c.put("/v1/kv/a?ttl=1s", data=b"x")).json())["version"]
        now[0] = T0 + 900
        r = await c.post("/v1/kv/a/renew?ttl=1s")
        assert r.status == 200 and (await r.json())["version"] == v1 + 1
        r = await c.post("/v1/kv/a/renew?ttl=1s", headers={"If-Match": str(v1)})
        assert r.status == 412
        now[0] = T0 + 1800  # past the first expiry, before the renewed one
        r = await c.get("/v1/kv/a")
        assert (r.status, await r.read()) == (200, b"x")
        now[0] = T0 + 1900
        assert (await c.post("/v1/kv/a/renew?ttl=1s")).status == 404
        assert (await c.post("/v1/kv/a/renew")).status == 400  # ttl is required
        assert (await c.put("/v1/kv/a?ttl=1y", data=b"x")).status == 400
    run(t)


def test_lock_can_be_taken_once_the_holder_expired() -> None:
    async def t(c: TestClient[Any, Any], now: list[int]) -> None:
        create = {"If-None-Match": "*"}
        assert (await c.put("/v1/kv/lock?ttl=1s", data=b"A", headers=create)).status == 200
        assert (await c.put("/v1/kv/lock?ttl=1s", data=b"B", headers=create)).status == 412
        now[0] = T0 + 1000
        assert (await c.put("/v1/kv/lock?ttl=1s", data=b"B", headers=create)).status == 200
        r = await c.get("/v1/kv/lock")
        assert await r.read() == b"B"
    run(t)


def test_sweeper_deletes_expired_but_not_renewed_keys() -> None:
    async def t(c: TestClient[Any, Any], now: list[int]) -> None:
        node: Node = c.server.app[NODE]
        for key in ("a", "b", "c"):
            await c.put(f"/v1/kv/{key}?ttl=1s", data=b"x")
        await c.put("/v1/kv/plain", data=b"x")
        now[0] = T0 + 500
        await c.post("/v1/kv/b/renew?ttl=10s")
        now[0] = T0 + 1000
        assert await node.sweeper.sweep_once() == 2
        assert [k for k, s in sorted(node.storage.data.items()) if s.value.exists] == [
            "b", "plain"]
    run(t)


def test_sweeper_compare_keeps_a_key_renewed_behind_its_back() -> None:
    """Goal: the sweeper's local copy may be stale; its delete is a compare on the version
    it saw, so a renew that landed in between wins."""
    async def t(c: TestClient[Any, Any], now: list[int]) -> None:
        from paxoskv.core.register import Expire, Renew

        node: Node = c.server.app[NODE]
        await c.put("/v1/kv/a?ttl=1s", data=b"x")
        seen = node.storage.load("a").value.version
        await node.execute("a", Renew(10_000))
        now[0] = T0 + 1000
        outcome = await node.execute("a", Expire(seen))
        assert outcome.kind == "rejected" and outcome.value.exists
    run(t)


def test_openapi_documents_ttl_and_renew() -> None:
    doc = openapi_document()
    assert "/v1/kv/{key}/renew" in doc["paths"]
    assert any(p["name"] == "ttl" for p in doc["paths"]["/v1/kv/{key}"]["put"]["parameters"])


def test_a_long_poll_on_a_ttl_key_answers_404_once_it_expires() -> None:
    """Goal: a long-poll waiting for a TTL key's next version learns of its expiry (a
    lock holder's successor waits this way) when it happens, not at the end of ``wait``:
    an expiry is no write, so before, nothing woke the poll until some round (the sweeper
    of a large keyspace, maybe minutes later) deleted the key. Its 200 answers carry
    Expires-At-Ms as GET's do."""
    async def t(c: TestClient[Any, Any], now: list[int]) -> None:
        node: Node = c.server.app[NODE]
        node.sweeper.sweep_once = _no_sweep  # type: ignore[method-assign]
        await c.put("/v1/kv/a?ttl=1s", data=b"x")
        r = await c.get("/v1/kv/a?index=0&wait=1s")
        assert r.status == 200 and r.headers["Expires-At-Ms"] == str(T0 + 1000)
        loop = asyncio.get_running_loop()
        started = loop.time()
        poll = asyncio.ensure_future(c.get("/v1/kv/a?index=1&wait=20s"))
        await asyncio.sleep(0.2)
        now[0] = T0 + 5000
        r = await asyncio.wait_for(poll, 10)
        assert r.status == 404 and r.headers["X-Paxoskv-Version"] == "2"
        assert loop.time() - started < 5
    run(t)


async def _no_sweep() -> int:
    return 0
