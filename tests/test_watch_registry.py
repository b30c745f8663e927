"""The watch registry and learners (paxoskv/watch.py), and the watch endpoints over a
one-node cluster in memory (paxoskv/api/watch.py)."""

from __future__ import annotations

import asyncio
import base64
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient
from api.test_app import with_client

sys.path.insert(0, str(Path(__file__).parent / "api"))  # test_api_auth imports test_app

from paxoskv.api.app import NODE
from paxoskv.api.watch import decode_since, encode_since, parse_wait
from paxoskv.core.messages import Learn, Learned
from paxoskv.core.register import Outcome, Value
from paxoskv.watch import (
    LEARN_INLINE_MAX,
    Event,
    SlowConsumer,
    StreamEnded,
    TooManyWatchers,
    WatchHub,
    WatchLimits,
    learn_of,
)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_versions_reach_a_watcher_in_order_once_and_only_under_its_prefix() -> None:
    """Goal: a key's versions arrive increasing and at most once (a late or repeated one is
    dropped), other prefixes never arrive, and ``since`` hides what the client saw."""
    async def t() -> None:
        hub = WatchHub()
        w = hub.subscribe("a/", {"a/x": 2})
        for key, version in [("a/x", 1), ("a/x", 2), ("a/x", 3), ("b/x", 9), ("a/x", 3),
                             ("a/x", 2), ("a/y", 1), ("a/x", 5), ("a/x", 4)]:
            hub.publish(key, Value(version, f"{key}@{version}".encode()))
        got = []
        while (e := await w.next(0)) is not None:
            got.append((e.key, e.version, e.data))
        assert got == [("a/x", 3, b"a/x@3"), ("a/y", 1, b"a/y@1"), ("a/x", 5, b"a/x@5")]
        exact = hub.subscribe("a/x", exact=True)
        hub.publish("a/xy", Value(1, b"no"))
        hub.publish("a/x", Value(6, None))
        assert await exact.next(0) == Event("a/x", 6, None)
        assert await exact.next(0.01) is None
    run(t())


def test_watcher_count_is_bounded_and_unsubscribe_frees_a_place() -> None:
    async def t() -> None:
        hub = WatchHub(limits=WatchLimits(watchers_max=2))
        a, _ = hub.subscribe(""), hub.subscribe("")
        with pytest.raises(TooManyWatchers):
            hub.subscribe("")
        hub.unsubscribe(a)
        hub.subscribe("")
        assert len(hub) == 2
    run(t())


def test_slow_consumer_is_cut_off_and_others_go_on() -> None:
    """Goal: one event over the queue bound ends that watcher with SlowConsumer (its queue
    freed); a watcher that keeps up gets every event."""
    async def t() -> None:
        hub = WatchHub(limits=WatchLimits(queue_max=3))
        slow, fast = hub.subscribe("k"), hub.subscribe("k")
        for v in range(1, 6):
            hub.publish("k", Value(v, b"x"))
            assert (await fast.next(0)) == Event("k", v, b"x")
        assert slow.pending() == 0 and slow.overflowed
        with pytest.raises(SlowConsumer):
            await slow.next(0)
        hub.publish("k", Value(9, b"x"))
        assert slow.pending() == 0
    run(t())


def test_keys_tracked_per_watcher_are_bounded() -> None:
    async def t() -> None:
        hub = WatchHub(limits=WatchLimits(keys_max=2))
        w = hub.subscribe("")
        hub.publish("a", Value(1, b""))
        hub.publish("b", Value(1, b""))
        hub.publish("a", Value(2, b""))  # a key already tracked is fine
        hub.publish("c", Value(1, b""))
        with pytest.raises(SlowConsumer):
            await w.next(0)
    run(t())


def test_next_waits_for_a_publish() -> None:
    async def t() -> None:
        hub = WatchHub()
        w = hub.subscribe("k")
        asyncio.get_running_loop().call_later(0.05, hub.publish, "k", Value(1, b"v"))
        assert await w.next(2) == Event("k", 1, b"v")
    run(t())


def test_learn_carries_small_values_and_leaves_large_ones_to_a_read() -> None:
    assert learn_of("k", Value(3, b"v")) == Learn("k", 3, True, True, b"v")
    assert learn_of("k", Value(4, None)) == Learn("k", 4, False, True)
    assert learn_of("k", Value(5, b"x" * (LEARN_INLINE_MAX + 1))) == Learn("k", 5, True, False)


def test_a_learn_without_its_value_is_published_only_as_read() -> None:
    """Goal: a learn without data never becomes an event with invented data: the event is
    what the read returned (its version may be newer); a failed read is skipped."""
    async def t() -> None:
        reads: list[str] = []
        answer: list[Value | Exception] = [Value(7, b"read")]

        async def fetch(key: str) -> Outcome:
            reads.append(key)
            got = answer[0]
            if isinstance(got, Exception):
                raise got
            return Outcome("read", got)

        hub = WatchHub(fetch)
        hub.on_learn(Learn("k", 6, True, False))  # no watcher: ignored, no read
        assert reads == []
        w = hub.subscribe("k")
        hub.on_learn(Learn("other", 6, True, False))  # not watched here
        hub.on_learn(Learn("k", 6, True, False))
        assert await w.next(2) == Event("k", 7, b"read")
        assert reads == ["k"] and hub.newest("k") == 7
        answer[0] = RuntimeError("no quorum")
        hub.on_learn(Learn("k", 8, True, False))
        assert await w.next(0.2) is None
        assert hub.skipped == 1
        hub.on_learn(Learn("k", 9, True, True, b"inline"))
        assert await w.next(0) == Event("k", 9, b"inline")
        await hub.close()
    run(t())


def test_learn_is_answered_and_never_touches_acceptor_state() -> None:
    """Goal: a node answers a learn with Learned and its storage is unchanged."""
    async def t(c: TestClient[Any, Any]) -> None:
        node = c.server.app[NODE]
        assert (await c.put("/v1/kv/k", data=b"v")).status in (200, 201, 204)
        before = dict(node.storage.data)
        w = node.watch.subscribe("k")
        reply = await node.handle(Learn("k", 42, True, True, b"forged"), 1e18)
        assert reply == Learned("k")
        assert node.storage.data == before
        assert (await w.next(0)) == Event("k", 42, b"forged")  # a hint, delivered as such
        r = await c.get("/v1/kv/k")
        assert await r.read() == b"v" and r.headers["ETag"] == '"1"'
    with_client(t)


def test_since_token_round_trip_and_wait_parsing() -> None:
    assert decode_since(encode_since({"a": 1, "ключ": 2})) == {"a": 1, "ключ": 2}
    assert decode_since(None) == {}
    assert parse_wait("500ms") == 0.5 and parse_wait("2m") == 120 and parse_wait("3") == 3
    assert parse_wait("1h".replace("h", "m") * 1) == 60
    assert parse_wait("999m") == 300


def test_long_poll_answers_when_the_version_passes_index() -> None:
    """Goal: ``index`` below the version answers at once; at the version it waits for the
    next write; with no write it answers the current value at the timeout."""
    async def t(c: TestClient[Any, Any]) -> None:
        assert (await c.put("/v1/kv/k", data=b"one")).status in (200, 201, 204)
        r = await c.get("/v1/kv/k?index=0&wait=5s")
        assert r.status == 200 and await r.read() == b"one"
        assert r.headers["X-Paxoskv-Version"] == "1"
        waiting = asyncio.ensure_future(c.get("/v1/kv/k?index=1&wait=5s"))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        assert (await c.put("/v1/kv/k", data=b"two")).status in (200, 201, 204)
        r = await asyncio.wait_for(waiting, 3)
        assert await r.read() == b"two" and r.headers["ETag"] == '"2"'
        loop = asyncio.get_running_loop()
        started = loop.time()
        r = await c.get("/v1/kv/k?index=2&wait=300ms")
        assert r.status == 200 and await r.read() == b"two"
        assert loop.time() - started >= 0.25
        assert (await c.delete("/v1/kv/k")).status in (200, 201, 204)
        r = await c.get("/v1/kv/k?index=2&wait=1s")
        assert r.status == 404 and r.headers["X-Paxoskv-Version"] == "3"
        assert (await c.get("/v1/kv/k?index=x")).status == 400
        assert len(c.server.app[NODE].watch) == 0
    with_client(t)


async def _events(resp: Any, count: int) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    kind = ""
    while len(out) < count:
        line = (await asyncio.wait_for(resp.content.readline(), 5)).decode().rstrip("\n")
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            out.append((kind, orjson.loads(line[6:])))
    return out


def test_stream_sends_state_newer_than_since_then_live_events() -> None:
    """Goal: a stream first sends each key under the prefix newer than ``since`` (a key
    deleted since it was seen too), then ``synced``, then writes as they commit."""
    async def t(c: TestClient[Any, Any]) -> None:
        for key, body in [("p/a", b"a1"), ("p/b", b"b1"), ("q/x", b"no"), ("p/gone", b"g")]:
            assert (await c.put(f"/v1/kv/{key}", data=body)).status in (200, 201, 204)
        assert (await c.put("/v1/kv/p/b", data=b"b2")).status in (200, 201, 204)
        assert (await c.delete("/v1/kv/p/gone")).status in (200, 201, 204)
        since = encode_since({"p/a": 1, "p/gone": 1})
        resp = await c.get(f"/v1/watch?prefix=p/&since={since}")
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        first = await _events(resp, 3)
        assert sorted((k, e.get("key"), e.get("version")) for k, e in first) == [
            ("delete", "p/gone", 2), ("put", "p/b", 2), ("synced", None, None)]
        assert first[-1][0] == "synced"
        assert (await c.put("/v1/kv/q/y", data=b"no")).status in (200, 201, 204)
        assert (await c.put("/v1/kv/p/a", data=b"a2")).status in (200, 201, 204)
        [(kind, event)] = await _events(resp, 1)
        assert (kind, event["key"], event["version"]) == ("put", "p/a", 2)
        assert base64.b64decode(event["value"]) == b"a2"
        resp.close()
        for _ in range(40):
            if len(c.server.app[NODE].watch) == 0:
                break
            await asyncio.sleep(0.1)
        assert len(c.server.app[NODE].watch) == 0  # the client left: unsubscribed
    with_client(t)


def test_stream_slow_consumer_gets_an_error_event() -> None:
    async def t(c: TestClient[Any, Any]) -> None:
        node = c.server.app[NODE]
        node.watch.limits = WatchLimits(queue_max=2)
        resp = await c.get("/v1/watch?key=k")
        assert (await _events(resp, 1))[0][0] == "synced"
        [w] = list(node.watch._watchers)
        for v in range(1, 5):  # published faster than the handler runs
            node.watch.publish("k", Value(v, b"x"))
        assert w.overflowed
        events = await _events(resp, 1)
        assert events[0][0] == "error" and events[0][1]["error"] == "slow_consumer"
    with_client(t)


def test_ending_the_hub_drains_then_ends_every_watcher_and_later_ones_too() -> None:
    """Goal: a node shutting down ends its streams at once: queued events first, then
    StreamEnded; a watcher that subscribes afterwards is ended too."""
    async def t() -> None:
        hub = WatchHub()
        w = hub.subscribe("k")
        hub.publish("k", Value(1, b"v"))
        waiting = asyncio.ensure_future(hub.subscribe("other").next(30))
        await asyncio.sleep(0)
        hub.end_all("bye")
        assert await w.next(30) == Event("k", 1, b"v")
        with pytest.raises(StreamEnded):
            await w.next(30)
        with pytest.raises(StreamEnded):
            await asyncio.wait_for(waiting, 1)  # woken, not left to its 30 s
        with pytest.raises(StreamEnded):
            await hub.subscribe("k").next(30)
    run(t())


def test_stream_ends_with_a_shutting_down_error_event() -> None:
    async def t(c: TestClient[Any, Any]) -> None:
        node = c.server.app[NODE]
        resp = await c.get("/v1/watch?key=k")
        assert (await _events(resp, 1))[0][0] == "synced"
        node.watch.end_all("this node is shutting down")
        events = await _events(resp, 1)
        assert events[0][0] == "error" and events[0][1]["error"] == "shutting_down"
    with_client(t)


def test_watch_needs_read_on_its_prefix_with_tokens_on(tmp_path: Any) -> None:
    """Goal: with --auth token a watch needs a token; a token limited to app/ may watch
    app/... (stream and long-poll) but nothing outside it."""
    from api.test_api_auth import bearer, with_auth

    async def t(c: TestClient[Any, Any], _: Any) -> None:
        assert (await c.get("/v1/watch?prefix=app/")).status == 401
        assert (await c.get("/v1/watch?prefix=", headers=bearer("app"))).status == 403
        assert (await c.get("/v1/watch?key=other", headers=bearer("app"))).status == 403
        assert (await c.get("/v1/kv/other?index=0&wait=1s",
                            headers=bearer("app"))).status == 403
        resp = await c.get("/v1/watch?prefix=app/", headers=bearer("app"))
        assert resp.status == 200
        assert (await _events(resp, 1))[0][0] == "synced"
        resp.close()
        r = await c.get("/v1/kv/app/k?index=0&wait=100ms", headers=bearer("read"))
        assert r.status == 404 and r.headers["X-Paxoskv-Version"] == "0"
    with_auth(tmp_path, t)


def test_openapi_documents_both_watch_endpoints() -> None:
    from paxoskv.api.openapi import openapi_document
    doc = openapi_document()
    names = {p["name"] for p in doc["paths"]["/v1/kv/{key}"]["get"]["parameters"]}
    assert {"index", "wait"} <= names
    watch = doc["paths"]["/v1/watch"]["get"]
    assert "text/event-stream" in watch["responses"]["200"]["content"]
    assert "401" in watch["responses"]  # the /v1/ auth errors apply


def test_client_watch_state_drops_repeats_and_resumes_with_since() -> None:
    """Goal: the client hands out each key's versions increasing and once, whatever the
    server resends after a reconnect, and its resume token names what it handed out."""
    from paxoskv.watch_client import WatchState
    state = WatchState("p/", None, {"p/a": 2})

    def put(key: str, version: int) -> str:
        return orjson.dumps({"key": key, "version": version, "deleted": False,
                             "value": "eA=="}).decode()

    assert state.take("put", put("p/a", 2)) is None
    got = state.take("put", put("p/a", 3))
    assert got is not None and (got.key, got.version, got.value) == ("p/a", 3, b"x")
    assert state.take("put", put("p/a", 3)) is None
    assert state.take("synced", "{}") is None
    assert decode_since(state.path().split("since=")[1]) == {"p/a": 3}
    with pytest.raises(ValueError):
        WatchState(None, None, None)


def test_async_client_watch_follows_writes() -> None:
    """Goal: ``AsyncClient.watch`` yields the scan, then live writes, as WatchEvents."""
    from paxoskv.client import AsyncClient

    async def t(c: TestClient[Any, Any]) -> None:
        assert (await c.put("/v1/kv/a/1", data=b"x")).status in (200, 201, 204)
        client = AsyncClient(str(c.make_url("")).rstrip("/"))
        stream = client.watch(prefix="a/")
        try:
            first = await asyncio.wait_for(anext(stream), 5)
            assert (first.key, first.version, first.value) == ("a/1", 1, b"x")
            assert (await c.delete("/v1/kv/a/1")).status in (200, 204)
            second = await asyncio.wait_for(anext(stream), 5)
            assert (second.key, second.version, second.deleted) == ("a/1", 2, True)
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
            await client.close()
    with_client(t)


def test_a_long_poll_whose_client_left_frees_its_watcher() -> None:
    """Goal: a client that drops a 30 s long-poll frees its place within a few seconds
    (aiohttp does not cancel the handler: it notices the closed connection itself)."""
    async def t(c: TestClient[Any, Any]) -> None:
        node = c.server.app[NODE]
        poll = asyncio.ensure_future(c.get("/v1/kv/k?index=0&wait=30s"))
        for _ in range(50):
            if len(node.watch):
                break
            await asyncio.sleep(0.05)
        assert len(node.watch) == 1
        poll.cancel()
        for _ in range(60):
            if len(node.watch) == 0:
                break
            await asyncio.sleep(0.1)
        assert len(node.watch) == 0
    with_client(t)


def test_a_since_token_naming_a_reserved_key_does_not_read_it() -> None:
    """Goal: idempotency records are never watched (db0ceab keeps them out of learns and
    listings); a ``since`` token that names one must not make the stream's scan read it
    and send the record (its fingerprint and claim token) as an event."""
    async def t(c: TestClient[Any, Any]) -> None:
        r = await c.put("/v1/kv/a", data=b"x", headers={"Idempotency-Key": "k1"})
        assert r.status in (200, 201, 204)
        since = encode_since({"\U0010ffffidem/k1": 0})
        resp = await c.get(f"/v1/watch?prefix=&since={since}")
        events = await _events(resp, 2)
        assert [(k, e.get("key")) for k, e in events] == [("put", "a"), ("synced", None)]
        resp.close()
    with_client(t)
