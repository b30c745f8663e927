"""Token auth in the HTTP layer (paxoskv/api/app.py with a TokenStore): who may do what.

Method: the one-node app of test_app.py with a token file in tmp_path; one token per role
and one limited to a prefix. The tables below are the contract of docs/security.md.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from test_app import MemoryStorage, NoPeers

from paxoskv.api.app import make_app
from paxoskv.api.guard import GuardLimits
from paxoskv.api.openapi import openapi_document
from paxoskv.auth import Rate, TokenStore, token_entry
from paxoskv.limits import Limits
from paxoskv.metrics import PromMetrics
from paxoskv.node import Node, NodeConfig, PeerSpec
from paxoskv.storage.base import NodeIdentity

TOKENS = {"read": "read-token-" + "r" * 40, "write": "write-token-" + "w" * 40,
          "admin": "admin-token-" + "a" * 40, "app": "app-token-" + "p" * 40}


def token_file(path: Path, tokens: dict[str, str]) -> None:
    entries = [token_entry(name, "write" if name == "app" else name, tok,
                           ["app/"] if name == "app" else None)
               for name, tok in tokens.items()]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"tokens": entries}))
    os.replace(tmp, path)


def bearer(name: str | None) -> dict[str, str]:
    return {} if name is None else {"Authorization": f"Bearer {TOKENS.get(name, name)}"}


async def _one_node() -> tuple[Node, Limits, PromMetrics]:
    """A started single-node cluster on memory storage, its limits and fresh metrics."""
    limits = Limits(value_bytes_max=1024)
    config = NodeConfig(1, {1: PeerSpec(1, "http://127.0.0.1:1")}, limits=limits)
    node = Node(config, NodeIdentity("c", 1, "d", 1, False), MemoryStorage(), NoPeers())
    await node.start()
    return node, limits, PromMetrics(CollectorRegistry())


def with_auth(tmp_path: Path,
              test: Callable[[TestClient[Any, Any], PromMetrics], Awaitable[None]],
              metrics_auth: bool = False,
              store: Callable[[Path], TokenStore] = TokenStore,
              guard: GuardLimits | None = None) -> None:
    path = tmp_path / "tokens.json"
    token_file(path, TOKENS)

    async def run() -> None:
        node, limits, metrics = await _one_node()
        app = make_app(node, "secret", limits, metrics, tokens=store(path),
                       metrics_auth=metrics_auth, guard=guard)
        async with TestClient(TestServer(app)) as client:
            await test(client, metrics)
    asyncio.run(run())


def failures(metrics: PromMetrics) -> dict[str, float]:
    return {s.labels["reason"]: s.value for m in metrics._auth_failures.collect()
            for s in m.samples}


CASES = [
    # (method, path, token, status, error code)
    ("PUT", "/v1/kv/app/k", None, 401, "unauthorized"),
    ("GET", "/v1/kv/app/k", None, 401, "unauthorized"),
    ("PUT", "/v1/kv/app/k", "not-a-token", 401, "unauthorized"),
    ("GET", "/v1/kv", None, 401, "unauthorized"),
    ("GET", "/v1/status", None, 401, "unauthorized"),
    ("GET", "/v1/openapi.json", None, 401, "unauthorized"),
    ("GET", "/v1/nope", None, 401, "unauthorized"),  # unknown routes say nothing more
    ("PUT", "/v1/kv/app/k", "read", 403, "forbidden"),
    ("DELETE", "/v1/kv/app/k", "read", 403, "forbidden"),
    ("PUT", "/v1/kv/other/k", "app", 403, "forbidden"),
    ("GET", "/v1/kv/other/k", "app", 403, "forbidden"),
    ("DELETE", "/v1/kv/other/k", "app", 403, "forbidden"),
    ("GET", "/v1/kv?prefix=", "app", 403, "forbidden"),
    ("GET", "/v1/kv?prefix=ap", "app", 403, "forbidden"),
    ("GET", "/v1/kv/app/k", "read", 404, "not_found"),  # allowed: absent
    ("GET", "/v1/kv/app/k", "app", 404, "not_found"),
    ("DELETE", "/v1/kv/app/k", "write", 404, "not_found"),
    ("PUT", "/v1/kv/app/k", "write", 200, None),
    ("PUT", "/v1/kv/other/k", "admin", 200, None),
    ("PUT", "/v1/kv/app/k", "app", 200, None),
    ("GET", "/v1/kv?prefix=app/", "app", 200, None),
    ("GET", "/v1/kv?prefix=app/sub", "app", 200, None),
    ("GET", "/v1/kv?prefix=", "read", 200, None),
    ("GET", "/v1/openapi.json", "read", 200, None),
    ("GET", "/healthz", None, 200, None),
    ("GET", "/readyz", None, 200, None),
    ("GET", "/metrics", None, 200, None),
]


@pytest.mark.parametrize(("method", "path", "token", "status", "code"), CASES)
def test_who_may_do_what(tmp_path: Path, method: str, path: str, token: str | None,
                         status: int, code: str | None) -> None:
    """Goal: 401 without or with an unknown token (with WWW-Authenticate: Bearer), 403 for a
    role too low or a key or listing outside the token's prefixes, in the API's JSON error
    shape; the probes and /metrics stay open."""
    async def t(c: TestClient[Any, Any], metrics: PromMetrics) -> None:
        r = await c.request(method, path, data=b"v" if method == "PUT" else None,
                            headers=bearer(token))
        assert r.status == status, await r.text()
        if code is not None:
            body = await r.json()
            assert body["error"] == code and body["message"]
        if status == 401:
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
        if status in (401, 403):
            reason = ("missing" if token is None else "unknown" if status == 401
                      else "forbidden")
            assert failures(metrics)[reason] == 1
    with_auth(tmp_path, t)


def test_a_refused_write_writes_nothing(tmp_path: Path) -> None:
    async def t(c: TestClient[Any, Any], _: PromMetrics) -> None:
        for token in (None, "nope", "read"):
            r = await c.put("/v1/kv/app/k", data=b"sneaky", headers=bearer(token))
            assert r.status in (401, 403)
        r = await c.get("/v1/kv/app/k", headers=bearer("read"))
        assert r.status == 404
    with_auth(tmp_path, t)


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer  ", TOKENS["admin"],
                                    "Token " + TOKENS["admin"]])
def test_malformed_authorization_is_a_401(tmp_path: Path, header: str) -> None:
    async def t(c: TestClient[Any, Any], _: PromMetrics) -> None:
        r = await c.get("/v1/kv/k", headers={"Authorization": header})
        assert r.status == 401
        assert (await r.json())["error"] == "unauthorized"
    with_auth(tmp_path, t)


def test_bearer_scheme_is_case_insensitive(tmp_path: Path) -> None:
    async def t(c: TestClient[Any, Any], _: PromMetrics) -> None:
        r = await c.get("/v1/kv/k", headers={"Authorization": "bearer " + TOKENS["read"]})
        assert r.status == 404
    with_auth(tmp_path, t)


def test_admin_sees_the_full_status_others_a_reduced_one(tmp_path: Path) -> None:
    async def t(c: TestClient[Any, Any], _: PromMetrics) -> None:
        full = await (await c.get("/v1/status", headers=bearer("admin"))).json()
        assert "peers" in full and "data_id" in full and "incarnation" in full
        for name in ("read", "write", "app"):
            r = await c.get("/v1/status", headers=bearer(name))
            assert r.status == 200
            reduced = await r.json()
            assert set(reduced) == {"node_id", "ready", "quorum", "detail"}, reduced
            assert reduced["node_id"] == 1 and reduced["ready"] is True
            assert reduced["quorum"] == {"size": 1, "reachable": True}
    with_auth(tmp_path, t)


def test_metrics_auth_puts_metrics_behind_a_token(tmp_path: Path) -> None:
    async def t(c: TestClient[Any, Any], _: PromMetrics) -> None:
        assert (await c.get("/metrics")).status == 401
        r = await c.get("/metrics", headers=bearer("read"))
        assert r.status == 200
        assert (await c.get("/healthz")).status == 200
        assert (await c.get("/readyz")).status == 200
    with_auth(tmp_path, t, metrics_auth=True)


def test_peer_routes_keep_their_own_secret(tmp_path: Path) -> None:
    """Goal: /internal/ answers by the peer secret, never asks for a client token."""
    async def t(c: TestClient[Any, Any], _: PromMetrics) -> None:
        r = await c.get("/internal/keys?prefix=")
        assert r.status == 401
        assert "WWW-Authenticate" not in r.headers
        r = await c.get("/internal/keys?prefix=", headers=bearer("admin"))
        assert r.status == 401  # a client token is no peer secret
    with_auth(tmp_path, t)


def test_a_rotated_token_is_refused_without_a_restart(tmp_path: Path) -> None:
    """Goal: the file is re-read while serving: a replaced token answers 401, its
    successor works, and a broken file keeps the last good set."""
    rotated = "rotated-token-" + "z" * 40

    async def t(c: TestClient[Any, Any], _: PromMetrics) -> None:
        assert (await c.put("/v1/kv/k", data=b"1", headers=bearer("write"))).status == 200
        token_file(tmp_path / "tokens.json", {**TOKENS, "write": rotated})
        await asyncio.sleep(0.15)
        assert (await c.put("/v1/kv/k", data=b"2", headers=bearer("write"))).status == 401
        r = await c.put("/v1/kv/k", data=b"2", headers=bearer(rotated))
        assert r.status == 200
        (tmp_path / "tokens.json").write_text("{oops")
        await asyncio.sleep(0.15)
        assert (await c.put("/v1/kv/k", data=b"3", headers=bearer(rotated))).status == 200
    with_auth(tmp_path, t, store=lambda p: TokenStore(p, check_interval_s=0.1))


def test_openapi_declares_bearer_auth() -> None:
    doc = openapi_document()
    assert doc["components"]["securitySchemes"]["bearer"] == {
        **doc["components"]["securitySchemes"]["bearer"], "type": "http", "scheme": "bearer"}
    assert doc["security"] == [{"bearer": []}]
    for path, ops in doc["paths"].items():
        for op in ops.values():
            if path.startswith("/v1/"):
                assert {"401", "403", "429"} <= set(op["responses"]), path
            else:
                assert op["security"] == [], path


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def refused(metrics: PromMetrics) -> dict[str, float]:
    return {s.labels["reason"]: s.value for m in metrics._http_refused.collect()
            for s in m.samples if s.name.endswith("_total")}


def test_a_token_over_its_rate_is_429_with_retry_after_and_nothing_runs(
        tmp_path: Path) -> None:
    """Goal: with --token-rate-limit 1/2, a token's third request at once is 429
    rate_limited (the API's JSON error, Retry-After in whole seconds >= 1) and its write is
    not applied; another token is not slowed; once time refills the bucket the token works
    again; probes are not counted; the refusals are counted under reason="token_rate"."""
    clock = Clock()

    async def t(c: TestClient[Any, Any], metrics: PromMetrics) -> None:
        assert refused(metrics)["token_rate"] == 0  # exported before the first refusal
        for i in (1, 2):
            r = await c.put("/v1/kv/app/k", data=f"v{i}".encode(), headers=bearer("write"))
            assert r.status == 200, await r.text()
        r = await c.put("/v1/kv/app/k", data=b"v3", headers=bearer("write"))
        assert r.status == 429
        assert r.headers["Retry-After"] == "1"
        assert r.headers["Content-Type"].startswith("application/json")
        body = await r.json()
        assert body["error"] == "rate_limited" and "'write'" in body["message"], body
        assert refused(metrics)["token_rate"] == 1
        for _ in range(5):
            assert (await c.get("/healthz")).status == 200
        r = await c.get("/v1/kv/app/k", headers=bearer("admin"))  # another token's bucket
        assert (r.status, await r.read()) == (200, b"v2")  # v3 was never applied
        clock.now += 1.0  # one request's worth
        r = await c.put("/v1/kv/app/k", data=b"v4", headers=bearer("write"))
        assert r.status == 200
        assert (await c.get("/v1/kv/app/k", headers=bearer("write"))).status == 429
        clock.now += 0.25  # a quarter of a request: the wait is rounded up to 1 s
        r = await c.put("/v1/kv/app/k", data=b"v5", headers=bearer("write"))
        assert (r.status, r.headers["Retry-After"]) == (429, "1")
        assert refused(metrics)["token_rate"] == 3
    with_auth(tmp_path, t, store=lambda p: TokenStore(p, clock=clock,
                                                      default_rate=Rate(1.0, 2)))


def test_retry_after_is_the_whole_seconds_until_the_bucket_has_a_request(
        tmp_path: Path) -> None:
    """Goal: at 0.2 requests a second an empty bucket needs 5 s: Retry-After says 5."""
    async def t(c: TestClient[Any, Any], _: PromMetrics) -> None:
        assert (await c.get("/v1/kv/app/k", headers=bearer("read"))).status == 404
        r = await c.get("/v1/kv/app/k", headers=bearer("read"))
        assert (r.status, r.headers["Retry-After"]) == (429, "5")
    with_auth(tmp_path, t, store=lambda p: TokenStore(p, clock=Clock(),
                                                      default_rate=Rate(0.2, 1)))


def test_without_auth_nothing_is_rate_limited() -> None:
    """Goal: --auth none has no token to count against: many requests at once all run."""
    async def run() -> None:
        node, limits, metrics = await _one_node()
        async with TestClient(TestServer(make_app(node, "s", limits, metrics))) as c:
            for i in range(50):
                assert (await c.put("/v1/kv/k", data=str(i).encode())).status == 200
        assert refused(metrics)["token_rate"] == 0
    asyncio.run(run())


def test_no_body_is_read_for_a_request_without_a_valid_token(tmp_path: Path) -> None:
    """Goal: with the flood guard on, a PUT without a valid token is answered 401 at once,
    before its body is read: a client without a token cannot make a node buffer bodies (it
    would otherwise hold --max-requests-inflight bodies until the body timeout). A body sent
    with a valid token is still read and written."""
    async def t(c: TestClient[Any, Any], metrics: PromMetrics) -> None:
        port = c.server.port
        assert port is not None

        async def send(headers: bytes, body: bytes) -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"PUT /v1/kv/app/k HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n"
                         + headers + b"\r\n" + body)
            await writer.drain()
            try:
                async with asyncio.timeout(1.5):  # well under the 3 s body timeout
                    return await reader.readuntil(b"\r\n\r\n")
            finally:
                writer.close()
        for headers in (b"", b"Authorization: Bearer not-a-token\r\n"):
            head = await send(headers, b"v" * 10)  # 10 of the 1000 bytes announced
            assert head.startswith(b"HTTP/1.1 401"), head
        write = f"Authorization: Bearer {TOKENS['write']}\r\n".encode()
        assert (await send(write, b"v" * 1000)).startswith(b"HTTP/1.1 200")
    with_auth(tmp_path, t, guard=GuardLimits(header_timeout_s=3.0))


def test_the_client_guards_run_request_cap_then_auth_then_body(tmp_path: Path) -> None:
    """Goal: on the client port the guards refuse in this order, each counted under its own
    reason: the request cap first (a flood of requests with bad tokens is capped, and no
    auth failure is counted for them), then authentication (a request without a valid token
    is 401 before its body is charged to the byte budget or read), then the body budget.

    Method: --max-requests-inflight 2 and a 1500-byte body budget. A write with a valid
    token announces 1000 bytes and sends 10 (it holds a request slot and 1000 bytes). A
    write with a bad token announcing 1000 bytes is 401 (budget first would make it a 503);
    the same write with a valid token is a 503 body_bytes (the budget is live). A second
    held write fills the request slots: a request with a bad token is now a 503 "requests",
    not a 401. Once both bodies arrive both writes succeed and the slots come back."""
    write = f"Authorization: Bearer {TOKENS['write']}\r\n".encode()
    bad = b"Authorization: Bearer not-a-token\r\n"

    async def t(c: TestClient[Any, Any], metrics: PromMetrics) -> None:
        port = c.server.port
        assert port is not None
        held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

        async def send(head: bytes, body: bytes) -> tuple[asyncio.StreamReader,
                                                            asyncio.StreamWriter]:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(head + b"Host: t\r\n\r\n" + body)
            await writer.drain()
            return reader, writer

        async def status(reader: asyncio.StreamReader) -> bytes:
            async with asyncio.timeout(1.5):  # well under the 3 s body timeout
                return (await reader.readuntil(b"\r\n\r\n")).split(b"\r\n")[0]

        async def answer(head: bytes, body: bytes = b"") -> bytes:
            reader, writer = await send(head, body)
            try:
                return await status(reader)
            finally:
                writer.close()

        def put(key: str, length: int, auth: bytes) -> bytes:
            return (f"PUT /v1/kv/app/{key} HTTP/1.1\r\nContent-Length: {length}\r\n".encode()
                    + auth)
        try:
            held.append(await send(put("a", 1000, write), b"v" * 10))
            await asyncio.sleep(0.2)  # it is admitted and waits for the rest of its body
            assert await answer(put("b", 1000, bad), b"v" * 10) == b"HTTP/1.1 401 Unauthorized"
            assert (await answer(put("c", 1000, write), b"v" * 10)).startswith(b"HTTP/1.1 503")
            assert refused(metrics)["body_bytes"] == 1
            held.append(await send(put("d", 100, write), b"v" * 10))
            await asyncio.sleep(0.2)
            get = b"GET /v1/kv/app/a HTTP/1.1\r\nConnection: close\r\n" + bad
            assert (await answer(get)).startswith(b"HTTP/1.1 503")
            assert refused(metrics)["requests"] == 1
            assert failures(metrics)["unknown"] == 1  # the 401 above only
            for (reader, writer), rest in zip(held, (990, 90), strict=True):
                writer.write(b"v" * rest)
                await writer.drain()
                assert await status(reader) == b"HTTP/1.1 200 OK"
            assert await answer(get) == b"HTTP/1.1 401 Unauthorized"
            assert failures(metrics)["unknown"] == 2
            assert refused(metrics)["requests"] == 1 and refused(metrics)["body_bytes"] == 1
        finally:
            for _, writer in held:
                writer.close()
    with_auth(tmp_path, t, guard=GuardLimits(requests_max=2, body_bytes_inflight_max=1500,
                                             header_timeout_s=3.0))


def test_changing_the_acceptor_set_needs_admin(tmp_path: Path) -> None:
    """Goal: POST and GET /admin/acceptors need a token (401) with the admin role (403 for
    read and write); admin gets through."""
    async def t(c: TestClient[Any, Any], _: PromMetrics) -> None:
        body = b'{"acceptors": [1]}'
        assert (await c.post("/admin/acceptors", data=body)).status == 401
        for name in ("read", "write"):
            r = await c.post("/admin/acceptors", data=body, headers=bearer(name))
            assert r.status == 403, name
            assert (await c.get("/admin/acceptors", headers=bearer(name))).status == 403
        assert (await c.get("/admin/acceptors", headers=bearer("admin"))).status == 200
        r = await c.post("/admin/acceptors", data=body, headers=bearer("admin"))
        assert r.status == 202
    with_auth(tmp_path, t)
