"""Range reads (GET /v1/kv?values=true) and range deletes (DELETE /v1/kv?prefix=) in the
HTTP layer, over the one-node memory-storage app of test_app.py.

Method: real rounds on a one-node cluster; the node's list_keys, read and execute are
wrapped where a test needs a race (a key deleted between the listing and its read) or a
failure (a delete without quorum) at one exact point.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from test_api_auth import TOKENS, bearer, token_file
from test_app import MemoryStorage, NoPeers

from paxoskv.api import app as app_module
from paxoskv.api.app import NODE, make_app
from paxoskv.auth import TokenStore, token_entry
from paxoskv.limits import Limits
from paxoskv.metrics import Metrics
from paxoskv.node import Node, NodeConfig, NoQuorum, PeerSpec
from paxoskv.storage.base import NodeIdentity

Test = Callable[[TestClient[Any, Any]], Awaitable[None]]


def run_app(test: Test, limits: Limits | None = None, tokens: TokenStore | None = None
            ) -> None:
    async def run() -> None:
        lim = limits or Limits(value_bytes_max=4096)
        config = NodeConfig(1, {1: PeerSpec(1, "http://127.0.0.1:1")}, limits=lim)
        node = Node(config, NodeIdentity("c", 1, "d", 1, False), MemoryStorage(), NoPeers())
        await node.start()
        app = make_app(node, "secret", lim, Metrics(), tokens=tokens)
        async with TestClient(TestServer(app)) as client:
            await test(client)
    asyncio.run(run())


async def put_all(c: TestClient[Any, Any], items: dict[str, bytes]) -> None:
    for key, value in items.items():
        r = await c.put(f"/v1/kv/{key}", data=value)
        assert r.status == 200, await r.text()


async def range_all(c: TestClient[Any, Any], query: str, pages_max: int = 1000
                    ) -> tuple[dict[str, tuple[int, bytes]], int]:
    """Every item of a range read, paging with the cursor; and how many pages it took."""
    out: dict[str, tuple[int, bytes]] = {}
    cursor = ""
    for page in range(1, pages_max + 1):
        r = await c.get(f"/v1/kv?values=true&{query}&cursor={cursor}")
        assert r.status == 200, await r.text()
        body = await r.json()
        assert body["count"] == len(body["items"])
        for item in body["items"]:
            assert item["key"] not in out, "a key came twice"
            out[item["key"]] = (item["version"], base64.b64decode(item["value_base64"]))
        if body["next"] is None:
            return out, page
        cursor = body["next"]
    raise AssertionError("the range read did not end")


def test_range_read_returns_values_versions_and_skips_deleted_keys() -> None:
    """Goal: values (binary included) come base64 with their versions, only under the
    prefix, and a deleted key never appears."""
    async def t(c: TestClient[Any, Any]) -> None:
        values = {"app/a": b"\x00\xff\x80binary", "app/b": b"", "app/c": "ключ".encode(),
                  "other/x": b"no"}
        await put_all(c, values)
        await c.put("/v1/kv/app/c", data=b"second")
        assert (await c.delete("/v1/kv/app/b")).status == 204
        got, _ = await range_all(c, "prefix=app/&limit=2")
        assert got == {"app/a": (1, values["app/a"]), "app/c": (2, b"second")}
        stale, _ = await range_all(c, "prefix=app/&consistency=stale")
        assert stale == got
    run_app(t)


def test_range_read_pages_by_limit_and_bytes_without_losing_a_key() -> None:
    """Goal: a page stops at limit keys or at range_bytes_max bytes of values (but holds at
    least one key, even one larger than the bound), and the cursor loses nothing."""
    async def t(c: TestClient[Any, Any]) -> None:
        values = {f"k{i:03d}": bytes([i]) * (300 if i % 7 else 2000) for i in range(60)}
        await put_all(c, values)
        got, pages = await range_all(c, "prefix=k&limit=50")
        assert {k: v for k, (_, v) in got.items()} == values
        assert pages > 60 * 300 // 1000  # the byte bound cut pages short of 50 keys
        r = await c.get("/v1/kv?values=true&prefix=k000&limit=1")
        assert len((await r.json())["items"]) == 1  # 2000 bytes > the bound: alone
    run_app(t, Limits(value_bytes_max=4096, range_bytes_max=1000))


def short_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """A range request's time budget of 50 ms, the request timeout staying 5 s (a 50 ms
    request timeout would fail the test's own writes on a loaded machine)."""
    monkeypatch.setattr(app_module, "_range_budget_s", lambda node: 0.05)


def test_range_read_stops_at_its_time_budget_with_a_cursor(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Goal: a page whose reads outlast half the request timeout answers what it has and
    a cursor after it; following the cursors still returns every key once."""
    async def t(c: TestClient[Any, Any]) -> None:
        values = {f"k{i:03d}": b"v%d" % i for i in range(100)}
        await put_all(c, values)
        node = c.server.app[NODE]
        real = node.read

        async def slow(key: str) -> Any:
            await asyncio.sleep(0.03)  # 32 at once: 4 batches of 30 ms > the 50 ms budget
            return await real(key)
        node.read = slow  # type: ignore[method-assign]
        r = await c.get("/v1/kv?values=true&prefix=k&limit=100")
        first = await r.json()
        assert 0 < first["count"] < 100 and first["next"] is not None
        got, _ = await range_all(c, "prefix=k&limit=100")
        assert {k: v for k, (_, v) in got.items()} == values
    short_budget(monkeypatch)
    run_app(t)


def test_a_key_deleted_between_listing_and_read_is_skipped() -> None:
    """Goal: the listing named a key that is deleted before its read: it is left out (not
    returned with an empty value), and the keys after it still come."""
    async def t(c: TestClient[Any, Any]) -> None:
        await put_all(c, {"a": b"1", "b": b"2", "c": b"3"})
        node = c.server.app[NODE]
        real = node.list_keys

        async def listing_then_delete(*args: Any) -> Any:
            found = await real(*args)
            await c.delete("/v1/kv/b")
            return found
        node.list_keys = listing_then_delete  # type: ignore[method-assign]
        r = await c.get("/v1/kv?values=true")
        body = await r.json()
        assert [i["key"] for i in body["items"]] == ["a", "c"]
        assert body["next"] is None
    run_app(t)


@pytest.mark.parametrize("query", ["values=yes", "values=true&limit=1001", "values=true&limit=0",
                                   "values=true&consistency=eventual"])
def test_range_read_bad_parameters_are_400(query: str) -> None:
    async def t(c: TestClient[Any, Any]) -> None:
        r = await c.get(f"/v1/kv?{query}")
        assert r.status == 400, query
        assert (await r.json())["error"] == "bad_request"
    run_app(t)


def test_range_delete_deletes_live_keys_under_the_prefix_and_counts_them() -> None:
    """Goal: every live key under the prefix is deleted and counted (an already deleted
    one is not); keys outside it stay; an empty prefix needs all=true; no Idempotency-Key."""
    async def t(c: TestClient[Any, Any]) -> None:
        await put_all(c, {f"app/{i:02d}": b"v" for i in range(70)} | {"keep": b"k"})
        await c.delete("/v1/kv/app/00")
        r = await c.delete("/v1/kv?prefix=app/", headers={"Idempotency-Key": "x"})
        assert r.status == 400
        r = await c.delete("/v1/kv?prefix=app/")
        assert await r.json() == {"deleted": 69, "complete": True, "next": None}
        assert (await (await c.get("/v1/kv?prefix=app/")).json())["keys"] == []
        assert (await c.get("/v1/kv/keep")).status == 200
        for query in ("", "?prefix=", "?all=false"):
            r = await c.delete(f"/v1/kv{query}")
            assert r.status == 400 and (await r.json())["error"] == "bad_request", query
        assert (await c.get("/v1/kv/keep")).status == 200
        r = await c.delete("/v1/kv?all=true")
        assert (await r.json())["deleted"] == 1
        assert (await c.get("/v1/kv/keep")).status == 404
    run_app(t)


def test_range_delete_past_its_budget_answers_a_cursor_to_continue(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Goal: a range delete that runs out of time answers complete: false, the count so far
    and a cursor; continuing from it deletes the rest, and the counts add up."""
    async def t(c: TestClient[Any, Any]) -> None:
        await put_all(c, {f"k{i:03d}": b"v" for i in range(100)})
        node = c.server.app[NODE]
        real = node.execute

        async def slow(*args: Any, **kwargs: Any) -> Any:
            await asyncio.sleep(0.02)
            return await real(*args, **kwargs)
        node.execute = slow  # type: ignore[method-assign]
        total, cursor, calls = 0, "", 0
        for _ in range(50):
            calls += 1
            body = await (await c.delete(f"/v1/kv?prefix=k&cursor={cursor}")).json()
            total += body["deleted"]
            if body["complete"]:
                break
            assert body["next"] and body["deleted"] > 0
            cursor = body["next"]
        assert calls > 1 and total == 100
        assert (await (await c.get("/v1/kv?prefix=k")).json())["keys"] == []
    short_budget(monkeypatch)
    run_app(t)


def test_range_delete_stopped_by_a_failure_says_how_far_it_got() -> None:
    """Goal: a delete that fails (no quorum) stops the range delete with 503, the count so
    far and a cursor before the failed key; continuing from it deletes the rest."""
    async def t(c: TestClient[Any, Any]) -> None:
        await put_all(c, {f"k{i:03d}": b"v" for i in range(10)})
        node = c.server.app[NODE]
        real = node.execute
        failing = {"k005"}

        async def flaky(key: str, *args: Any, **kwargs: Any) -> Any:
            if key in failing:
                raise NoQuorum("no quorum (test)")
            return await real(key, *args, **kwargs)
        node.execute = flaky  # type: ignore[method-assign]
        r = await c.delete("/v1/kv?prefix=k")
        body = await r.json()
        assert r.status == 503 and body["error"] == "no_quorum" and "k005" in body["message"]
        assert body["complete"] is False and body["deleted"] == 9
        assert base64.urlsafe_b64decode(body["next"] + "==") == b"k004"
        failing.clear()
        r = await c.delete(f"/v1/kv?prefix=k&cursor={body['next']}")
        assert await r.json() == {"deleted": 1, "complete": True, "next": None}
    run_app(t)


RANGE_AUTH = [
    # (method, path, token, status)
    ("GET", "/v1/kv?values=true&prefix=app/", "app-read", 200),
    ("GET", "/v1/kv?values=true&prefix=app/sub", "app-read", 200),
    ("GET", "/v1/kv?values=true&prefix=", "app-read", 403),
    ("GET", "/v1/kv?values=true&prefix=other/", "app-read", 403),
    ("GET", "/v1/kv?values=true&prefix=ap", "app-read", 403),
    ("GET", "/v1/kv?values=true", None, 401),
    ("DELETE", "/v1/kv?prefix=app/", None, 401),
    ("DELETE", "/v1/kv?prefix=app/", "read", 403),
    ("DELETE", "/v1/kv?prefix=app/", "write", 403),
    ("DELETE", "/v1/kv?prefix=app/", "app", 403),
    ("DELETE", "/v1/kv?prefix=other/", "app-admin", 403),
    ("DELETE", "/v1/kv?all=true", "app-admin", 403),
    ("DELETE", "/v1/kv?prefix=app/", "app-admin", 200),
    ("DELETE", "/v1/kv?prefix=other/", "admin", 200),
]


@pytest.mark.parametrize(("method", "path", "token", "status"), RANGE_AUTH)
def test_who_may_range_read_and_range_delete(tmp_path: Path, method: str, path: str,
                                             token: str | None, status: int) -> None:
    """Goal: a range read needs read and a prefix within the token's; a range delete needs
    admin, and an admin limited to app/ may delete only within app/."""
    path_file = tmp_path / "tokens.json"
    token_file(path_file, TOKENS)
    extra = {"app-read": ("read", ["app/"]), "app-admin": ("admin", ["app/"])}
    import json
    doc = json.loads(path_file.read_text())
    for name, (role, prefixes) in extra.items():
        doc["tokens"].append(token_entry(name, role, name + "-token-" + "q" * 40, prefixes))
    path_file.write_text(json.dumps(doc))

    async def t(c: TestClient[Any, Any]) -> None:
        admin = bearer("admin")
        for key in ("app/k", "other/k"):
            assert (await c.put(f"/v1/kv/{key}", data=b"v", headers=admin)).status == 200
        headers = ({"Authorization": f"Bearer {token}-token-" + "q" * 40}
                   if token in extra else bearer(token))
        r = await c.request(method, path, headers=headers)
        assert r.status == status, await r.text()
        listed = (await (await c.get("/v1/kv?prefix=", headers=admin)).json())["keys"]
        if method == "DELETE":  # a refused range delete deleted nothing
            assert len(listed) == (1 if status == 200 else 2)
    run_app(t, tokens=TokenStore(path_file))


def test_openapi_documents_range_reads_and_deletes() -> None:
    """Goal: the document names values, consistency and the page shapes on GET /v1/kv, and
    the range delete with its all= parameter and partial answers."""
    async def t(c: TestClient[Any, Any]) -> None:
        spec = await (await c.get("/v1/openapi.json")).json()
        get = spec["paths"]["/v1/kv"]["get"]
        assert {"prefix", "values", "consistency", "limit", "cursor"} <= {
            p["name"] for p in get["parameters"]}
        item = spec["components"]["schemas"]["RangePage"]["properties"]["items"]["items"]
        assert set(item["required"]) == {"key", "version", "value_base64"}
        delete = spec["paths"]["/v1/kv"]["delete"]
        assert {"prefix", "all", "cursor"} <= {p["name"] for p in delete["parameters"]}
        assert {"200", "400", "503", "504", "401", "403"} <= set(delete["responses"])
        assert "NOT atomic" in delete["description"]
    run_app(t)


def test_a_range_page_passes_over_tombstones_instead_of_coming_back_empty() -> None:
    """Goal: after a large delete, a small page still finds the live keys beyond the
    tombstones (a listing alone gives up after a few pages of them and answers empty)."""
    async def t(c: TestClient[Any, Any]) -> None:
        await put_all(c, {f"k{i:03d}": b"v" for i in range(300)})
        r = await c.delete("/v1/kv?prefix=k0")
        assert (await r.json())["deleted"] == 100
        for i in range(100, 290):
            await c.delete(f"/v1/kv/k{i:03d}")
        body = await (await c.get("/v1/kv?values=true&limit=5")).json()
        assert [i["key"] for i in body["items"]] == [f"k{i}" for i in range(290, 295)]
        listing = await (await c.get("/v1/kv?limit=5")).json()
        assert listing["keys"] == []  # what the page would have been without passing over
    run_app(t)
