"""Idempotency-Key against three real ``paxoskv serve`` processes (paxoskv/idempotency.py).

The scenario of the bug: the register's ``recent`` list remembers 16 request ids, so a
retry after 16 other writes to the key used to be applied again (a plain PUT overwrote the
newer writes) or answered 412 for its own create. Outcomes now live in a record register per
Idempotency-Key, kept for ``--idempotency-window``.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from procs import Cluster

pytestmark = pytest.mark.integration

RESERVED = "%F4%8F%BF%BF"  # U+10FFFF, the reserved prefix, percent-encoded


def call(url: str, method: str, key: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(f"{url}/v1/kv/{key}", data=body, method=method,
                                 headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def plain_puts(url: str, key: str, count: int) -> bytes:
    last = b""
    for i in range(count):
        last = f"other write {i}".encode()
        status, _, _ = call(url, "PUT", key, last)
        assert status == 200
    return last


def test_a_retried_create_gets_its_own_outcome_after_many_writes(shared_cluster: Cluster
                                                                 ) -> None:
    """Goal: the bug's scenario: create with Idempotency-Key a1 -> 200 v1; after 16 and then
    40 more plain PUTs, the same create (sent to other nodes) again answers 200 v1, its
    first outcome, not 412; the data is untouched by the retries."""
    n1, n2, n3 = (shared_cluster.nodes[i].url for i in (1, 2, 3))
    create = {"If-None-Match": "*", "Idempotency-Key": "a1"}
    status, headers, body = call(n1, "PUT", "idem/create", b"created", create)
    assert (status, headers["ETag"], orjson.loads(body)) == (
        200, '"1"', {"key": "idem/create", "version": 1})
    assert "Idempotent-Replayed" not in headers
    # The record of an applied write is written just after its answer; a client retries a
    # lost answer only after its timeout, far later than this pause.
    time.sleep(0.5)
    for writes, node in ((16, n2), (40, n3)):
        newest = plain_puts(n1, "idem/create", writes)
        status, headers, body = call(node, "PUT", "idem/create", b"created", create)
        assert status == 200, body
        assert headers["ETag"] == '"1"'
        assert orjson.loads(body) == {"key": "idem/create", "version": 1}
        assert headers["Idempotent-Replayed"] == "true"
        status, headers, got = call(n1, "GET", "idem/create")
        assert (status, got) == (200, newest)
    assert headers["ETag"] == '"57"'  # 1 create + 56 plain writes; the retries wrote nothing


def test_a_retried_plain_put_does_not_overwrite_newer_writes(shared_cluster: Cluster) -> None:
    """Goal: a plain PUT with an Idempotency-Key, retried after 20 other writes (on another
    node), answers its first outcome and does not overwrite them."""
    n1, n2 = shared_cluster.nodes[1].url, shared_cluster.nodes[2].url
    plain_puts(n1, "idem/put", 3)
    hdr = {"Idempotency-Key": "put-b1"}
    status, headers, body = call(n1, "PUT", "idem/put", b"mine", hdr)
    assert (status, orjson.loads(body)["version"]) == (200, 4)
    newest = plain_puts(n2, "idem/put", 20)
    status, headers, body = call(n2, "PUT", "idem/put", b"mine", hdr)
    assert (status, headers["ETag"], orjson.loads(body)["version"]) == (200, '"4"', 4)
    status, headers, got = call(n1, "GET", "idem/put")
    assert (status, headers["ETag"], got) == (200, '"24"', newest)


def test_a_reused_key_for_another_request_is_refused_with_422(shared_cluster: Cluster
                                                              ) -> None:
    """Goal: the same Idempotency-Key with another body, method, key or condition is 422
    idempotency_key_reused, and nothing is written."""
    n1, n3 = shared_cluster.nodes[1].url, shared_cluster.nodes[3].url
    hdr = {"Idempotency-Key": "reuse-1"}
    assert call(n1, "PUT", "idem/reuse", b"v", hdr)[0] == 200
    attempts = [
        (n3, "PUT", "idem/reuse", b"other body", hdr),
        (n1, "DELETE", "idem/reuse", None, hdr),
        (n3, "PUT", "idem/reuse-elsewhere", b"v", hdr),
        (n1, "PUT", "idem/reuse", b"v", {**hdr, "If-Match": '"1"'}),
        (n3, "PUT", "idem/reuse", b"v", {**hdr, "If-None-Match": "*"}),
    ]
    for url, method, key, body, headers in attempts:
        status, _, answer = call(url, method, key, body, headers)
        assert status == 422, (method, key, body, headers)
        doc = orjson.loads(answer)
        assert doc["error"] == "idempotency_key_reused"
        assert doc["message"]
    status, headers, got = call(n1, "GET", "idem/reuse")
    assert (status, headers["ETag"], got) == (200, '"1"', b"v")
    assert call(n1, "GET", "idem/reuse-elsewhere")[0] == 404
    # the original request itself is still answered from its record
    assert call(n3, "PUT", "idem/reuse", b"v", hdr)[0] == 200


def test_delete_and_a_failed_condition_are_replayed_too(shared_cluster: Cluster) -> None:
    """Goal: every first outcome is kept: a delete's 204 (not re-applied to the key created
    since), and a 412 (not turned into a write once the condition would hold)."""
    n1, n2 = shared_cluster.nodes[1].url, shared_cluster.nodes[2].url
    assert call(n1, "PUT", "idem/del", b"x")[0] == 200
    delete = {"Idempotency-Key": "del-1"}
    status, headers, _ = call(n1, "DELETE", "idem/del", None, delete)
    assert (status, headers["ETag"]) == (204, '"2"')
    plain_puts(n2, "idem/del", 20)
    status, headers, _ = call(n2, "DELETE", "idem/del", None, delete)
    assert (status, headers["ETag"]) == (204, '"2"')
    assert call(n1, "GET", "idem/del")[0] == 200  # the key written since is still there

    cas = {"Idempotency-Key": "cas-1", "If-Match": '"25"'}
    status, _, body = call(n1, "PUT", "idem/del", b"cas", cas)
    assert (status, orjson.loads(body)["current_version"]) == (412, 22)
    plain_puts(n1, "idem/del", 3)  # now at version 25: the condition would hold
    status, _, body = call(n2, "PUT", "idem/del", b"cas", cas)
    assert (status, orjson.loads(body)["current_version"]) == (412, 22)
    assert call(n1, "GET", "idem/del")[1]["ETag"] == '"25"'


def test_records_are_out_of_reach_of_clients(shared_cluster: Cluster) -> None:
    """Goal: the reserved namespace holding the records can be neither read nor written,
    and a listing never shows it."""
    n1 = shared_cluster.nodes[1].url
    assert call(n1, "PUT", "idem/listed", b"v", {"Idempotency-Key": "list-1"})[0] == 200
    for method, body in (("PUT", b"x"), ("GET", None), ("DELETE", None)):
        status, _, answer = call(n1, method, RESERVED + "idem/list-1", body)
        assert (status, orjson.loads(answer)["error"]) == (400, "bad_key"), method
    for query in ("", "?prefix=" + RESERVED, "?limit=10000"):
        with urllib.request.urlopen(f"{n1}/v1/kv{query}", timeout=10) as resp:
            keys = orjson.loads(resp.read())["keys"]
        assert all(not k.startswith("\U0010ffff") for k in keys), keys
        if not query.startswith("?prefix"):
            assert "idem/listed" in keys


@pytest.fixture
def short_window_cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(3, tmp_path, extra=["--idempotency-window", "3"])
    c.start()
    try:
        yield c
    finally:
        c.stop()


def test_outcomes_are_kept_for_the_window_only(short_window_cluster: Cluster) -> None:
    """Goal: --idempotency-window bounds how long an outcome is kept: within it a retry is
    replayed; after it the same key runs as a new request (and may name another one)."""
    url = short_window_cluster.nodes[1].url
    hdr = {"Idempotency-Key": "w1"}
    started = time.monotonic()
    assert orjson.loads(call(url, "PUT", "win", b"a", hdr)[2])["version"] == 1
    status, headers, body = call(url, "PUT", "win", b"a", hdr)
    assert (status, orjson.loads(body)["version"]) == (200, 1)
    assert headers["Idempotent-Replayed"] == "true"
    assert call(url, "PUT", "win", b"other", hdr)[0] == 422
    assert time.monotonic() - started < 3, "too slow to observe the 3 s window"
    time.sleep(max(0.0, 3.5 - (time.monotonic() - started)))
    status, headers, body = call(url, "PUT", "win", b"b", hdr)
    assert (status, orjson.loads(body)["version"]) == (200, 2)
    assert "Idempotent-Replayed" not in headers
    assert call(url, "GET", "win")[2] == b"b"


def test_concurrent_copies_of_one_request_apply_once(shared_cluster: Cluster) -> None:
    """Goal: copies of one request sent at once to all nodes are applied once: each copy
    gets the one outcome (200, same version) or 409 while it is running, never a second
    write."""
    from concurrent.futures import ThreadPoolExecutor

    urls = shared_cluster.urls()
    assert call(urls[0], "PUT", "idem/race", b"before")[0] == 200
    hdr = {"Idempotency-Key": "race-1"}
    with ThreadPoolExecutor(max_workers=9) as pool:
        futures = [pool.submit(call, urls[i % 3], "PUT", "idem/race", b"raced", hdr)
                   for i in range(9)]
        answers = [f.result(timeout=30) for f in futures]
    statuses = sorted(status for status, _, _ in answers)
    assert set(statuses) <= {200, 409}, answers
    assert 200 in statuses
    assert {orjson.loads(body)["version"] for status, _, body in answers if status == 200} == {2}
    for status, headers, _ in answers:
        if status == 409:
            assert int(headers["Retry-After"]) >= 1
    status, headers, got = call(urls[1], "GET", "idem/race")
    assert (status, headers["ETag"], got) == (200, '"2"', b"raced")
    # once finished, every copy is answered with the outcome
    assert call(urls[2], "PUT", "idem/race", b"raced", hdr)[0] == 200
