"""The HTTP layer (paxoskv/api/app.py) over a one-node cluster with in-memory storage.

Method: aiohttp's TestServer on loopback with a real Node whose Storage is a dict; this
isolates header parsing, status mapping and error bodies from the network and the disk
(the real-process tests in tests/integration cover those).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from dictstorage import SweepListings

from paxoskv.api.app import NODE, make_app
from paxoskv.api.guard import GuardLimits
from paxoskv.core.acceptor import EMPTY_STATE, AcceptorState
from paxoskv.core.idempotency import (
    Claim,
    Record,
    RecordOutcome,
    decode_record,
    fingerprint,
    record_key,
)
from paxoskv.core.reconfig import CONFIG_KEY
from paxoskv.core.register import Set
from paxoskv.limits import Limits
from paxoskv.metrics import Metrics
from paxoskv.node import Node, NodeConfig, PeerSpec
from paxoskv.storage.base import NodeIdentity


class MemoryStorage(SweepListings):
    def __init__(self) -> None:
        self.data: dict[str, AcceptorState] = {}
        self.meta: dict[str, str] = {"verified": "1"}

    def load(self, key: str) -> AcceptorState:
        return self.data.get(key, EMPTY_STATE)

    peek = load

    async def save(self, key: str, state: AcceptorState) -> None:
        self.data[key] = state

    def save_soon(self, key: str, state: AcceptorState) -> asyncio.Future[None]:
        return asyncio.ensure_future(self.save(key, state))

    def keys(self, prefix: str, after: str | None, limit: int) -> list[str]:
        return sorted(k for k in self.data
                      if k.startswith(prefix) and (after is None or k > after))[:limit]

    def key_count(self) -> int:
        return len(self.data)

    def get_meta(self, name: str) -> str | None:
        return self.meta.get(name)

    async def set_meta(self, name: str, value: str) -> None:
        self.meta[name] = value

    async def close(self) -> None:
        return None


class NoPeers:
    def set_sender(self, sender: Any) -> None:
        return None

    async def send(self, peer: int, msg: Any, deadline: float) -> Any:
        raise AssertionError("single node: no peer traffic")

    async def hello(self, peer: int, info: dict[str, Any]) -> dict[str, Any]:
        raise AssertionError("single node: no peer traffic")

    async def list_keys(self, peer: int, prefix: str, after: str | None, limit: int) -> Any:
        raise AssertionError("single node: no peer traffic")

    async def close(self) -> None:
        return None


def with_client(test: Callable[[TestClient[Any, Any]], Awaitable[None]],
                value_bytes_max: int = 1024, guard: GuardLimits | None = None) -> None:
    async def run() -> None:
        limits = Limits(value_bytes_max=value_bytes_max)
        config = NodeConfig(1, {1: PeerSpec(1, "http://127.0.0.1:1")}, limits=limits)
        node = Node(config, NodeIdentity("c", 1, "d", 1, False), MemoryStorage(), NoPeers())
        await node.start()
        app = make_app(node, "secret", limits, Metrics(), guard=guard)
        async with TestClient(TestServer(app)) as client:
            await test(client)
    asyncio.run(run())


def test_keys_with_slashes_unicode_and_escapes() -> None:
    """Goal: keys are UTF-8 paths; percent-encoding and slashes round-trip."""
    async def t(c: TestClient[Any, Any]) -> None:
        for key in ("a/b/c", "ключ", "with%20space", "x" * 1024):
            r = await c.put(f"/v1/kv/{key}", data=b"v")
            assert r.status == 200, key
            r = await c.get(f"/v1/kv/{key}")
            assert (r.status, await r.read()) == (200, b"v")
        r = await c.put("/v1/kv/" + "x" * 1025, data=b"v")
        assert r.status == 400
        assert (await r.json())["error"] == "bad_key"
    with_client(t)


def test_if_match_accepts_weak_and_unquoted_forms() -> None:
    """Goal: If-Match "1", W/"1" and 1 are the same version; garbage is a 400."""
    async def t(c: TestClient[Any, Any]) -> None:
        await c.put("/v1/kv/k", data=b"0")
        for i, header in enumerate(('"1"', 'W/"2"', "3")):
            r = await c.put("/v1/kv/k", data=f"{i}".encode(), headers={"If-Match": header})
            assert r.status == 200, header
        for bad in ('"-1"', '"1.5"', "", '"99999999999999999999"'):
            r = await c.put("/v1/kv/k", data=b"x", headers={"If-Match": bad})
            assert r.status == 400, bad
        r = await c.put("/v1/kv/k", data=b"x", headers={"If-Match": '"1"', "If-None-Match": "*"})
        assert r.status == 400
    with_client(t)


def test_value_limit_is_enforced_with_413() -> None:
    """Goal: a value one byte over --max-value-bytes is refused with a JSON 413."""
    async def t(c: TestClient[Any, Any]) -> None:
        assert (await c.put("/v1/kv/k", data=b"x" * 1024)).status == 200
        r = await c.put("/v1/kv/k", data=b"x" * 1025)
        assert r.status == 413
        assert orjson.loads(await r.read())["error"] == "value_too_large"
    with_client(t)


def test_unknown_path_and_method_are_json_errors() -> None:
    """Goal: routing errors also come as JSON, never HTML or a traceback."""
    async def t(c: TestClient[Any, Any]) -> None:
        r = await c.get("/nope")
        assert r.status == 404
        assert (await r.json())["error"] == "not_found"
        r = await c.patch("/v1/kv/k", data=b"x")
        assert r.status == 405
        assert (await r.json())["error"] == "method_not_allowed"
    with_client(t)


def test_delete_then_create_and_versions() -> None:
    """Goal: delete bumps the version; create after delete continues from it."""
    async def t(c: TestClient[Any, Any]) -> None:
        r = await c.put("/v1/kv/k", data=b"a")
        assert r.headers["ETag"] == '"1"'
        r = await c.delete("/v1/kv/k")
        assert (r.status, r.headers["ETag"]) == (204, '"2"')
        r = await c.put("/v1/kv/k", data=b"b", headers={"If-None-Match": "*"})
        assert (r.status, r.headers["ETag"]) == (200, '"3"')
    with_client(t)


# ------------------------------------------------------------------ Idempotency-Key, step 4
# A pending record (its request crashed, or is still running) is made with the same Claim a
# request would run, through the node's real rounds.

async def _pending_claim(c: TestClient[Any, Any], idem: str, key: str, body: bytes,
                         age_ms: int) -> Record:
    import time

    fp = fingerprint("PUT", key, body, None, False)
    now = int(time.time() * 1000) - age_ms
    out = await c.server.app[NODE].execute(record_key(idem),
                                           Claim(fp, "crashed", now, 86_400_000))
    record = decode_record(out.value.data)
    assert out.kind == "applied" and record is not None
    return record


async def _record_done(node: Node, idem: str) -> Record:
    """The key's record once it says done (an applied write's is written in the
    background, just after the answer)."""
    for _ in range(250):
        stored = decode_record(node.storage.load(record_key(idem)).value.data)
        if stored is not None and stored.state == "done":
            return stored
        await asyncio.sleep(0.02)
    raise AssertionError(f"record of {idem!r} not done: {stored}")


def test_pending_idempotency_key_answers_409_then_504_never_reapplies() -> None:
    """Goal: a retry that finds its key's request pending, and no trace of it on the data
    key, answers 409 idempotency_in_progress (Retry-After) while that request may still be
    running, and 504 unknown_outcome after; it never runs the write itself."""
    async def t(c: TestClient[Any, Any]) -> None:
        await _pending_claim(c, "young", "k", b"v", age_ms=0)
        r = await c.put("/v1/kv/k", data=b"v", headers={"Idempotency-Key": "young"})
        assert r.status == 409
        assert (await r.json())["error"] == "idempotency_in_progress"
        assert 1 <= int(r.headers["Retry-After"]) <= 12  # 2 x 5 s request timeout + 1 s
        await _pending_claim(c, "old", "k", b"v", age_ms=60_000)
        r = await c.put("/v1/kv/k", data=b"v", headers={"Idempotency-Key": "old"})
        assert r.status == 504
        assert (await r.json())["error"] == "unknown_outcome"
        assert (await c.get("/v1/kv/k")).status == 404  # neither retry wrote
    with_client(t)


def test_pending_idempotency_key_is_finished_from_the_data_register() -> None:
    """Goal: if the pending request's write did happen (the data register remembers its
    request id), a retry answers that outcome and records it for later retries."""
    async def t(c: TestClient[Any, Any]) -> None:
        record = await _pending_claim(c, "half", "k", b"v", age_ms=60_000)
        node = c.server.app[NODE]
        await node.execute("k", Set(b"v"), record.request_id("half"))  # crashed after this
        await c.put("/v1/kv/k", data=b"newer")
        for _ in range(2):
            r = await c.put("/v1/kv/k", data=b"v", headers={"Idempotency-Key": "half"})
            assert (r.status, r.headers["ETag"]) == (200, '"1"')
        stored = await _record_done(node, "half")
        assert stored.outcome == RecordOutcome("applied", 1)
        assert await (await c.get("/v1/kv/k")).read() == b"newer"
    with_client(t)


def test_an_applied_write_answers_before_its_record_and_a_retry_meanwhile_replays() -> None:
    """Goal: an applied write's answer does not wait for its ``Finish`` round (step 2); a
    retry that comes while the record is still pending learns the write from the data
    register and replays it, never applies it twice; the record then says done. A write
    that was not applied (a failed condition) still waits for its record, which is the only
    place a retry can learn it from.

    Method: the node's ``Finish`` rounds are held on an event; the PUT still answers 200,
    and so does its retry (same ETag) while the hold lasts."""
    from paxoskv.core.idempotency import Finish

    async def t(c: TestClient[Any, Any]) -> None:
        node = c.server.app[NODE]
        real_execute = node.execute
        hold = asyncio.Event()
        held: list[str] = []

        async def execute(key: str, change: Any, *args: Any, **kwargs: Any) -> Any:
            if isinstance(change, Finish):
                held.append(key)
                await hold.wait()
            return await real_execute(key, change, *args, **kwargs)
        node.execute = execute  # type: ignore[method-assign]

        headers = {"Idempotency-Key": "early"}
        r = await asyncio.wait_for(c.put("/v1/kv/k", data=b"v", headers=headers), 5)
        assert (r.status, r.headers["ETag"]) == (200, '"1"')
        assert held == [record_key("early")]
        r = await asyncio.wait_for(c.put("/v1/kv/k", data=b"v", headers=headers), 5)
        assert (r.status, r.headers["ETag"]) == (200, '"1"')  # replayed, not applied again
        assert await (await c.get("/v1/kv/k")).read() == b"v"
        hold.set()
        stored = await _record_done(node, "early")
        assert stored.outcome == RecordOutcome("applied", 1)

        hold.clear()
        rejected = asyncio.ensure_future(c.put("/v1/kv/k", data=b"w", headers={
            "Idempotency-Key": "late", "If-Match": '"7"'}))
        await asyncio.sleep(0.3)
        assert not rejected.done()  # waits for its record
        hold.set()
        assert (await asyncio.wait_for(rejected, 5)).status == 412
    with_client(t)


def test_reserved_keys_are_refused() -> None:
    """Goal: client keys in the reserved namespace (U+10FFFF...) are 400 bad_key."""
    async def t(c: TestClient[Any, Any]) -> None:
        for method in ("PUT", "GET", "DELETE"):
            r = await c.request(method, "/v1/kv/%F4%8F%BF%BFidem/x", data=b"v")
            assert r.status == 400, method
            assert (await r.json())["error"] == "bad_key"
    with_client(t)


def test_the_config_register_is_refused_and_never_listed() -> None:
    """Goal: the acceptor-set config register (core.reconfig.CONFIG_KEY) is not a client
    key: reads and writes of it are 400 bad_key naming why, and a listing leaves it out
    even when its row exists."""
    async def t(c: TestClient[Any, Any]) -> None:
        for method in ("PUT", "GET", "DELETE"):
            r = await c.request(method, "/v1/kv/%00paxoskv%2Fconfig", data=b"v")
            body = await r.json()
            assert (r.status, body["error"]) == (400, "bad_key"), method
            assert "acceptor-set config" in body["message"]
        assert (await c.put("/v1/kv/a", data=b"1")).status == 200
        node = c.server.app[NODE]
        await node.storage.save(CONFIG_KEY, node.storage.load("a"))
        listed = await (await c.get("/v1/kv", params={"prefix": ""})).json()
        assert listed["keys"] == ["a"]
    with_client(t)


def test_openapi_documents_the_idempotency_key() -> None:
    """Goal: the OpenAPI document names the header and its 409 / 422 answers on writes."""
    async def t(c: TestClient[Any, Any]) -> None:
        spec = await (await c.get("/v1/openapi.json")).json()
        for method in ("put", "delete"):
            op = spec["paths"]["/v1/kv/{key}"][method]
            assert "Idempotency-Key" in {p["name"] for p in op["parameters"]}
            assert {"409", "422"} <= set(op["responses"])
    with_client(t)


def test_a_claim_with_an_unknown_outcome_is_withdrawn_and_answers_503() -> None:
    """Goal: when the claim of an Idempotency-Key times out after it may have landed, the
    request answers 503 (its write never ran) and withdraws the claim, so the retry runs
    the write instead of being told 409/504 for the rest of the window.

    Method: the node's execute is wrapped so the first claim lands and then reports
    UnknownOutcome, as a lost accept acknowledgement would."""
    from paxoskv.core.idempotency import Claim
    from paxoskv.node import UnknownOutcome

    async def t(c: TestClient[Any, Any]) -> None:
        node = c.server.app[NODE]
        real = node.execute
        hits: list[str] = []

        async def flaky(key: str, change: Any, request_id: str | None = None) -> Any:
            outcome = await real(key, change, request_id)
            if isinstance(change, Claim) and not hits:
                hits.append(key)
                raise UnknownOutcome("claim acknowledged too late")
            return outcome

        node.execute = flaky  # type: ignore[method-assign]
        r = await c.put("/v1/kv/k", data=b"v", headers={"Idempotency-Key": "lost-ack"})
        assert r.status == 503, await r.text()
        assert (await c.get("/v1/kv/k")).status == 404
        assert node.storage.load(record_key("lost-ack")).value.data is None  # withdrawn
        r = await c.put("/v1/kv/k", data=b"v", headers={"Idempotency-Key": "lost-ack"})
        assert (r.status, r.headers["ETag"]) == (200, '"1"')
    with_client(t)


@pytest.mark.parametrize("guard", [None, GuardLimits(requests_max=1)])
def test_errors_are_json_with_and_without_the_client_guard(guard: GuardLimits | None) -> None:
    """Goal: with the client guards (which answer errors themselves, one layer fewer) as
    without them, routing errors, API errors and an unexpected exception come as the same
    JSON errors, and a failed request leaves no request counted as in progress."""
    async def t(c: TestClient[Any, Any]) -> None:
        node = c.server.app[NODE]

        async def broken(key: str) -> Any:
            raise RuntimeError("boom")
        for i in range(3):  # requests_max=1: each must have given its place back
            r = await c.get("/nope")
            assert (r.status, (await r.json())["error"]) == (404, "not_found")
            r = await c.patch("/v1/kv/k", data=b"x")
            assert (r.status, (await r.json())["error"]) == (405, "method_not_allowed")
            r = await c.put("/v1/kv/" + "x" * 1025, data=b"v")
            assert (r.status, (await r.json())["error"]) == (400, "bad_key")
            r = await c.put("/v1/kv/k", data=b"x" * 1025)
            assert (r.status, (await r.json())["error"]) == (413, "value_too_large")
            r = await c.get(f"/v1/kv/k{i}")
            assert (r.status, (await r.json())["error"]) == (404, "not_found")
            original = node.read
            node.read = broken
            try:
                r = await c.get(f"/v1/kv/k{i}")
                assert (r.status, (await r.json())["error"]) == (500, "internal")
            finally:
                node.read = original
            assert (await c.put(f"/v1/kv/k{i}", data=b"v")).status == 200
            r = await c.get(f"/v1/kv/k{i}")
            assert (r.status, await r.read()) == (200, b"v")
    with_client(t, guard=guard)


def test_admin_acceptors_checks_its_body_and_reports_the_record() -> None:
    """Goal: POST /admin/acceptors refuses a body that is not a list of acceptor-role node
    ids (400), and GET /admin/acceptors reads the record: absent, it is STABLE at epoch 0
    on the configured set, which this node holds."""
    async def t(c: TestClient[Any, Any]) -> None:
        for body in (b"nope", b"{}", b'{"acceptors": []}', b'{"acceptors": ["1"]}',
                     b'{"acceptors": [1, 7]}'):
            r = await c.post("/admin/acceptors", data=body)
            assert (r.status, (await r.json())["error"]) == (400, "bad_request"), body
        r = await c.get("/admin/acceptors")
        doc = await r.json()
        assert r.status == 200, doc
        assert doc["record"]["phase"] == "stable" and doc["record"]["version"] == 0
        assert doc["record"]["config"] == [0, [1], 1, [1], 1] == doc["held"]
        assert doc["reconfiguration"]["running"] is False
        r = await c.post("/admin/acceptors", data=b'{"acceptors": [1]}')
        assert r.status == 202  # already the set: the driver finds nothing to do
        status = await (await c.get("/v1/status")).json()
        assert status["acceptor_config"]["epoch"] == 0
    with_client(t)


def test_admin_acceptors_refuses_while_an_acceptor_runs_a_release_without_epochs() -> None:
    """Goal: POST /admin/acceptors answers 409 while an acceptor that is up said nothing of
    epochs in its last hello (a release before acceptor-set changes: it could never prove
    it holds a new config), and names it; no change is started."""
    from paxoskv.membership import PeerHealth

    async def t(c: TestClient[Any, Any]) -> None:
        node = c.server.app[NODE]
        peers = {i: PeerSpec(i, f"http://127.0.0.1:{i}") for i in (1, 2)}
        node.config = NodeConfig(1, peers, limits=node.config.limits)
        node.membership.peer_health[2] = PeerHealth(up=True)
        r = await c.post("/admin/acceptors", data=b'{"acceptors": [1, 2]}')
        doc = await r.json()
        assert (r.status, doc["error"]) == (409, "peers_without_epochs"), doc
        assert "[2]" in str(doc)
        assert node.reconfigurer.running is False
    with_client(t)
