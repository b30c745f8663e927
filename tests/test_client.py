"""The clients (paxoskv/client.py) against a scripted aiohttp server on loopback: failover,
retries that honour Retry-After, one Idempotency-Key per logical write, typed errors, and
the same behaviour from ``Client`` and ``AsyncClient``."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from fakenode import FakeNode, SyncAsync
from tlsutil import Pki

from paxoskv.api.app import _error
from paxoskv.chaos.processes import free_ports
from paxoskv.client import (
    AsyncClient,
    BadRequest,
    Client,
    ClientError,
    Forbidden,
    HttpClient,
    IdempotencyKeyReused,
    NoQuorum,
    NotFound,
    Overloaded,
    PaxosKVError,
    PreconditionFailed,
    RateLimited,
    Result,
    Retry,
    RetryEvent,
    ServerError,
    Unauthorized,
    UnknownOutcome,
    ValueTooLarge,
    parse_endpoints,
)


@pytest.fixture
def node() -> Iterator[FakeNode]:
    n = FakeNode().start()
    yield n
    n.stop()


@pytest.fixture
def node2() -> Iterator[FakeNode]:
    n = FakeNode().start()
    yield n
    n.stop()


Make = Callable[..., Any]


@pytest.fixture(params=["sync", "async"])
def make(request: pytest.FixtureRequest) -> Iterator[Make]:
    made: list[Any] = []

    def build(**kwargs: Any) -> Any:
        client = Client(**kwargs) if request.param == "sync" else SyncAsync(**kwargs)
        made.append(client)
        return client
    yield build
    for client in made:
        client.close()


def dead_url() -> str:
    return f"http://127.0.0.1:{free_ports(1)[0]}"


def test_503_is_retried_after_its_retry_after(node: FakeNode, make: Make) -> None:
    """Goal: a 503 with Retry-After: 1 is tried again no sooner than 1 s later (measured
    at the server), then succeeds, with the same Idempotency-Key."""
    events: list[RetryEvent] = []
    node.script = [("answer", 503, "no_quorum", {"Retry-After": "1"})]
    c = make(url=node.url, retry=Retry(on_retry=events.append))
    res = c.put("k", b"v")
    assert (res.status, res.version) == (200, 1)
    first, second = node.seen
    assert 1.0 <= second.at - first.at < 2.0, second.at - first.at
    assert first.headers["Idempotency-Key"] == second.headers["Idempotency-Key"]
    assert [(e.status, e.delay_s) for e in events] == [(503, 1.0)]


def test_429_waits_its_retry_after_on_the_same_node(node: FakeNode, node2: FakeNode,
                                                    make: Make) -> None:
    """Goal: a rate limit is the node's word about this token: wait it out there."""
    node.script = [("answer", 429, "rate_limited", {"Retry-After": "1"})]
    c = make(endpoints=[node.url, node2.url])
    node.data["k"] = (3, b"x")
    res = c.get("k")
    assert (res.body, res.version, res.url) == (b"x", 3, node.url)
    assert len(node.seen) == 2 and not node2.seen
    assert node.seen[1].at - node.seen[0].at >= 1.0


def test_an_unreachable_endpoint_fails_over_and_the_client_stays(node: FakeNode,
                                                                 make: Make) -> None:
    """Goal: connection refused moves on at once (no wait), and later calls go straight
    to the endpoint that answered."""
    dead = dead_url()
    c = make(url=f"{dead},{node.url}")
    started = time.monotonic()
    assert c.put("k", b"1").version == 1
    assert time.monotonic() - started < 0.5
    assert c.url == node.url
    assert c.put("k", b"2").version == 2
    assert len(node.seen) == 2


def test_a_timeout_moves_to_the_next_endpoint_with_the_same_key(node: FakeNode,
                                                                node2: FakeNode,
                                                                make: Make) -> None:
    """Goal: a node that does not answer in time is left for the next one; the write is
    sent there with the same Idempotency-Key (it may have run on the first)."""
    node.script = [("sleep", 3.0)]
    c = make(endpoints=[node.url, node2.url], timeout_s=0.5)
    res = c.put("k", b"v")
    assert (res.status, res.url) == (200, node2.url)
    assert node.seen[0].headers["Idempotency-Key"] == node2.seen[0].headers["Idempotency-Key"]


def test_a_lost_answer_is_retried_and_the_cas_applies_once(node: FakeNode,
                                                           make: Make) -> None:
    """Goal: the server applies a compare-and-set and the connection drops before the
    answer: the retry (same Idempotency-Key) gets the first outcome, 200 with the version it
    produced, not 412, and the version moved by one."""
    node.data["k"] = (4, b"old")
    node.script = [("apply_then_drop",)]
    c = make(url=node.url)
    res = c.put("k", b"new", if_match=4)
    assert (res.status, res.version, res.replayed) == (200, 5, True)
    assert node.data["k"] == (5, b"new")
    keys = {s.headers["Idempotency-Key"] for s in node.seen}
    assert len(node.seen) == 2 and len(keys) == 1
    assert all(s.headers["If-Match"] == '"4"' for s in node.seen)
    # each logical write has a key of its own
    c.put("k", b"newer", if_match=5)
    assert node.seen[-1].headers["Idempotency-Key"] not in keys


def test_without_idempotency_keys_a_lost_answer_is_unknown_not_resent(node: FakeNode,
                                                                      make: Make) -> None:
    """Goal: with keys off, a write whose answer was lost is never sent twice."""
    node.script = [("apply_then_drop",)]
    c = make(url=node.url, retry=Retry(idempotency_keys=False))
    with pytest.raises(UnknownOutcome):
        c.put("k", b"v", if_match=0)
    assert len(node.seen) == 1 and "Idempotency-Key" not in node.seen[0].headers
    node.data["k"] = (1, b"v")
    node.script = [("drop",)]
    assert c.get("k").body == b"v"  # a read is always safe to send again


def test_a_504_is_retried_with_its_key_and_settles(node: FakeNode, make: Make) -> None:
    """Goal: a 504 (outcome unknown) is sent again with its key; the answer settles it."""
    c = make(url=node.url)
    node.data["k"] = (1, b"v")
    node.script = [("answer", 504, "unknown_outcome", {})]
    res = c.put("k", b"w")
    assert res.version == 2
    assert node.seen[-1].headers["Idempotency-Key"] == node.seen[-2].headers["Idempotency-Key"]


def test_retries_are_bounded_and_an_earlier_lost_answer_makes_it_unknown(
        node: FakeNode, make: Make) -> None:
    """Goal: 503s forever stop after Retry.attempts tries; a read ends in NoQuorum, but a
    write whose first try was lost ends in UnknownOutcome (it may have been applied)."""
    node.script = [("answer", 503, "no_quorum", {"Retry-After": "0"})] * 3
    c = make(url=node.url, retry=Retry(attempts=3))
    with pytest.raises(NoQuorum) as err:
        c.get("k")
    assert len(node.seen) == 3 and err.value.status == 503
    assert err.value.code == "no_quorum" and err.value.retry_after_s == 0
    node.script = [("drop",), ("answer", 503, "no_quorum", {"Retry-After": "0"}),
                   ("answer", 503, "no_quorum", {"Retry-After": "0"})]
    with pytest.raises(UnknownOutcome) as unknown:
        c.put("k", b"v")
    assert unknown.value.status == 503


def test_retries_stop_at_the_time_budget(node: FakeNode, make: Make) -> None:
    """Goal: a Retry-After beyond what is left of total_s is not waited for."""
    node.script = [("answer", 503, "overloaded", {"Retry-After": "30"})]
    c = make(url=node.url, retry=Retry(total_s=2))
    started = time.monotonic()
    with pytest.raises(Overloaded):
        c.get("k")
    assert time.monotonic() - started < 1.0 and len(node.seen) == 1


@pytest.mark.parametrize(("status", "code", "extra", "error"), [
    (400, "bad_key", None, BadRequest),
    (401, "unauthorized", None, Unauthorized),
    (403, "forbidden", None, Forbidden),
    (413, "value_too_large", None, ValueTooLarge),
    (422, "idempotency_key_reused", None, IdempotencyKeyReused),
    (429, "rate_limited", None, RateLimited),
    (500, "internal", None, ServerError),
    (503, "no_quorum", None, NoQuorum),
    (504, "unknown_outcome", None, UnknownOutcome),
])
def test_error_answers_raise_typed_errors(node: FakeNode, make: Make, status: int,
                                          code: str, extra: dict[str, Any] | None,
                                          error: type[PaxosKVError]) -> None:
    """Goal: each error the API sends is its own exception, carrying the status and the
    server's JSON body."""
    node.script = [("answer", status, code, {}, extra)]
    c = make(url=node.url, retry=Retry(attempts=1))
    with pytest.raises(error) as err:
        c.put("k", b"v")
    assert type(err.value) is error
    assert (err.value.status, err.value.code) == (status, code)
    assert err.value.error == {"error": code, "message": f"scripted {code}"}


def test_not_found_and_precondition_failed(node: FakeNode, make: Make) -> None:
    c = make(url=node.url)
    with pytest.raises(NotFound):
        c.get("nope")
    c.put("k", b"1")
    with pytest.raises(PreconditionFailed) as err:
        c.put("k", b"2", if_match=7)
    assert err.value.current_version == 1
    assert [s.method for s in node.seen] == ["GET", "PUT", "PUT"]  # neither was retried


def test_ttl_on_put_and_renew(node: FakeNode, make: Make) -> None:
    """Goal: both clients send ``ttl=`` (seconds as ms, or the server's text) and renew as
    a POST with its If-Match."""
    c = make(url=node.url)
    c.put("k", b"1", ttl=1.5)
    c.put("k", b"1", ttl="30s")
    with contextlib.suppress(PaxosKVError):  # the fake node has no renew route
        c.renew("k", 2, if_match=3)
    assert [(s.method, s.path) for s in node.seen][:3] == [
        ("PUT", "/v1/kv/k?ttl=1500ms"), ("PUT", "/v1/kv/k?ttl=30s"),
        ("POST", "/v1/kv/k/renew?ttl=2000ms")]
    assert node.seen[2].headers["If-Match"] == '"3"'


def test_list_status_and_context_managers(node: FakeNode) -> None:
    """Goal: both clients have the same calls, and both close as context managers."""
    node.data["a"] = (1, b"x")
    with Client(node.url) as c:
        assert c.list().json()["keys"] == ["a"]
        assert c.status().json()["node_id"] == 1

    async def run() -> tuple[list[str], int]:
        async with AsyncClient(node.url) as ac:
            keys = (await ac.list(prefix="a", limit=5)).json()["keys"]
            status = (await ac.status()).json()["node_id"]
        assert ac._session.closed
        return keys, status
    assert asyncio.run(run()) == (["a"], 1)
    assert node.seen[-2].path == "/v1/kv?prefix=a&limit=5"
    public = {n for n in dir(Client) if not n.startswith("_")}
    assert public == {n for n in dir(AsyncClient) if not n.startswith("_")}
    for name in public - {"url", "endpoints"}:
        if callable(getattr(Client, name)):
            assert (inspect.signature(getattr(Client, name)).parameters.keys()
                    == inspect.signature(getattr(AsyncClient, name)).parameters.keys()), name


def test_http_client_keeps_one_try_and_raw_answers(node: FakeNode) -> None:
    node.script = [("answer", 503, "no_quorum", {"Retry-After": "1"})]
    res = HttpClient(node.url).put("k", b"v")
    assert isinstance(res, Result) and res.status == 503
    assert len(node.seen) == 1 and "Idempotency-Key" not in node.seen[0].headers


def test_endpoints_parse() -> None:
    assert parse_endpoints(["http://a:1, http://b:2/", "https://c:3", "http://a:1"]) == [
        "http://a:1", "http://b:2", "https://c:3"]
    assert parse_endpoints(None) == ["http://127.0.0.1:7000"]
    for bad in ("a:1", "ftp://a", "http://a:0", "http://a:1/v1", " , "):
        with pytest.raises(ClientError):
            parse_endpoints(bad)


def test_error_bodies_match_the_api() -> None:
    """Goal: the fake server's error shape is the API's (412 carries current_version)."""
    res = _error(412, "precondition_failed", "x", None, current_version=3)
    assert isinstance(res.body, bytes)
    assert orjson.loads(res.body) == {"error": "precondition_failed", "message": "x",
                                      "current_version": 3}


def test_the_token_goes_with_every_try(node: FakeNode, make: Make,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Goal: token= (else PAXOSKV_TOKEN) is sent on the first try and on each retry."""
    node.script = [("answer", 503, "overloaded", {"Retry-After": "0"})]
    make(url=node.url, token="t-1").put("k", b"v")
    monkeypatch.setenv("PAXOSKV_TOKEN", "t-env")
    make(url=node.url).get("k")
    assert [s.headers.get("Authorization") for s in node.seen] == [
        "Bearer t-1", "Bearer t-1", "Bearer t-env"]


def test_https_endpoints_fail_over_with_the_ca_file(make: Make, tmp_path: Path) -> None:
    """Goal: TLS keeps working with several endpoints: the CA file verifies each https://
    node; a node that cannot be reached is passed over; with a wrong CA the call ends in
    a ClientError that names the verification failure."""
    pki = Pki(tmp_path / "pki")
    cert, key, _ = pki.issue("node")
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(cert, key)
    node = FakeNode(tls=served).start()
    try:
        dead = f"https://127.0.0.1:{free_ports(1)[0]}"
        c = make(endpoints=[dead, node.url], ca_file=str(pki.ca), token="t")
        assert c.put("k", b"v").version == 1 and c.url == node.url
        other = Pki(tmp_path / "other", name="other-ca")
        wrong = make(url=node.url, ca_file=str(other.ca), retry=Retry(attempts=2))
        with pytest.raises(ClientError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify"):
            wrong.get("k")
    finally:
        node.stop()
