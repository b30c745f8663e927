"""Every row of the HTTP contract (the README's API tables) against three real processes."""

from __future__ import annotations

import json
import re
import urllib.request

import orjson
import pytest
from procs import SECRET, Cluster

from paxoskv.client import HttpClient as Client

pytestmark = pytest.mark.integration


def raw(url: str, method: str, path: str, body: bytes | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url + path, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def test_put_get_etag_and_json(shared_cluster: Cluster) -> None:
    """Goal: PUT answers 200 with ETag and {key, version}; GET on any node returns the bytes."""
    c = Client(shared_cluster.nodes[1].url)
    res = c.put("contract/a", b"\x00hello\xff")
    assert res.status == 200
    assert res.json() == {"key": "contract/a", "version": 1}
    assert res.headers["ETag"] == '"1"'
    for node in shared_cluster.nodes.values():
        got = Client(node.url).get("contract/a")
        assert (got.status, got.body, got.version) == (200, b"\x00hello\xff", 1)


def test_compare_and_set(shared_cluster: Cluster) -> None:
    """Goal: If-Match applies only at the named version; 412 names the current version."""
    c = Client(shared_cluster.nodes[2].url)
    v1 = c.put("contract/cas", b"1").version
    ok = c.put("contract/cas", b"2", if_match=v1)
    assert ok.status == 200
    assert ok.version == (v1 or 0) + 1
    stale = c.put("contract/cas", b"3", if_match=v1)
    assert stale.status == 412
    assert stale.json()["error"] == "precondition_failed"
    assert stale.json()["current_version"] == ok.version
    assert c.get("contract/cas").body == b"2"
    missing = c.put("contract/cas-missing", b"x", if_match=1)
    assert missing.status == 412
    assert missing.json()["current_version"] is None


def test_create_only(shared_cluster: Cluster) -> None:
    """Goal: If-None-Match: * creates once, then 412."""
    c = Client(shared_cluster.nodes[3].url)
    assert c.put("contract/create", b"first", if_none_match=True).status == 200
    again = c.put("contract/create", b"second", if_none_match=True)
    assert again.status == 412
    assert c.get("contract/create").body == b"first"


def test_delete(shared_cluster: Cluster) -> None:
    """Goal: DELETE answers 204 then 404; If-Match guards it; a deleted key reads 404."""
    c = Client(shared_cluster.nodes[1].url)
    v = c.put("contract/del", b"x").version
    assert c.delete("contract/del", if_match=(v or 0) + 5).status == 412
    assert c.delete("contract/del", if_match=v).status == 204
    assert c.get("contract/del").status == 404
    assert c.delete("contract/del").status == 404
    # a deleted key can be created again
    assert c.put("contract/del", b"again", if_none_match=True).status == 200


def test_get_absent_and_stale_read(shared_cluster: Cluster) -> None:
    """Goal: 404 JSON for an absent key; ?consistency=stale reads one replica."""
    c = Client(shared_cluster.nodes[1].url)
    res = c.get("contract/never")
    assert res.status == 404
    assert res.json()["error"] == "not_found"
    c.put("contract/stale", b"s")
    got = c.get("contract/stale", stale=True)
    assert got.status in (200, 404)  # one replica may lag; it never errors
    assert raw(shared_cluster.nodes[1].url, "GET",
               "/v1/kv/x?consistency=sometimes")[0] == 400


def test_list_by_prefix(shared_cluster: Cluster) -> None:
    """Goal: GET /v1/kv?prefix= lists live keys under the prefix, deleted keys excluded."""
    c = Client(shared_cluster.nodes[1].url)
    for k in ("list/a", "list/b", "list/c", "other/z"):
        assert c.put(k, b"v").status == 200
    assert c.delete("list/b").status == 204
    res = c.list("list/")
    assert res.status == 200
    assert res.json()["keys"] == ["list/a", "list/c"]
    assert c.list("list/", limit=1).json()["keys"] == ["list/a"]
    assert raw(shared_cluster.nodes[1].url, "GET", "/v1/kv?limit=0")[0] == 400


def test_bad_input_is_a_clear_json_error(shared_cluster: Cluster) -> None:
    """Goal: 400 for a bad key or header, 413 for a value over the limit, never a traceback."""
    url = shared_cluster.nodes[1].url
    status, _, body = raw(url, "PUT", "/v1/kv/" + "k" * 1025, b"x")
    assert status == 400
    assert orjson.loads(body)["error"] == "bad_key"
    status, _, body = raw(url, "PUT", "/v1/kv/big", b"x" * (1024 * 1024 + 1))
    assert status == 413
    assert orjson.loads(body)["error"] == "value_too_large"
    status, _, body = raw(url, "PUT", "/v1/kv/h", b"x", {"If-Match": "banana"})
    assert status == 400
    assert orjson.loads(body)["error"] == "bad_header"
    status, _, body = raw(url, "PUT", "/v1/kv/h", b"x", {"If-None-Match": '"3"'})
    assert status == 400
    status, _, body = raw(url, "POST", "/v1/kv/h", b"x")
    assert status == 405
    assert "error" in orjson.loads(body)


def test_exactly_one_mebibyte_is_accepted(shared_cluster: Cluster) -> None:
    """Goal: the value limit is inclusive (1 MiB by default)."""
    c = Client(shared_cluster.nodes[2].url)
    value = bytes(range(256)) * 4096
    assert c.put("contract/1mib", value).status == 200
    assert c.get("contract/1mib").body == value


def test_internal_endpoints_need_peer_credentials(shared_cluster: Cluster) -> None:
    """Goal: /internal/ answers 401 without the secret and 400 to a malformed frame."""
    url = shared_cluster.nodes[1].url
    for method, path in (("POST", "/internal/batch"), ("POST", "/internal/hello"),
                         ("GET", "/internal/keys")):
        assert raw(url, method, path, b"{}" if method == "POST" else None)[0] == 401
        assert raw(url, method, path, b"{}" if method == "POST" else None,
                   {"Authorization": "Bearer wrong"})[0] == 401
    auth = {"Authorization": f"Bearer {SECRET}"}
    for frame in (b"not json", b"[]", b'{"m": [{"t": "prepare"}]}',
                  b'{"m": [{"t": "accept", "k": "k", "b": [1, 1, 1], "v": [1, "%%", []]}]}'):
        status, _, body = raw(url, "POST", "/internal/batch", frame, auth)
        assert status == 400, frame
        assert orjson.loads(body)["error"] == "bad_frame"
    # and the node is still serving
    assert Client(url).put("contract/after-garbage", b"ok").status == 200


def test_status_health_ready_metrics_openapi(shared_cluster: Cluster) -> None:
    """Goal: the operational endpoints answer with their documented shapes."""
    url = shared_cluster.nodes[1].url
    status, _, body = raw(url, "GET", "/v1/status")
    doc = json.loads(body)
    assert status == 200
    assert doc["node_id"] == 1
    assert doc["quorum"] == {"acceptors": [1, 2, 3], "size": 2, "reachable": True,
                             "ready": True}
    assert set(doc["peers"]) == {"2", "3"}
    assert all(p["up"] for p in doc["peers"].values())
    assert raw(url, "GET", "/healthz")[0] == 200
    assert raw(url, "GET", "/readyz")[0] == 200
    status, _headers, body = raw(url, "GET", "/metrics")
    text = body.decode()
    assert status == 200
    for name in ("paxoskv_requests_total", "paxoskv_request_duration_seconds_bucket",
                 "paxoskv_paxos_rounds_total", "paxoskv_storage_fsync_duration_seconds_bucket",
                 "paxoskv_storage_batch_size_bucket", "paxoskv_peer_up",
                 "paxoskv_peer_rtt_seconds", "paxoskv_keys", "paxoskv_quorum_reachable",
                 "paxoskv_amnesia", "paxoskv_data_dir_bytes", "paxoskv_volume_free_bytes",
                 "paxoskv_volume_size_bytes", "paxoskv_storage_freelist_bytes",
                 "process_resident_memory_bytes"):
        assert name in text, name
    for gauge in ("paxoskv_data_dir_bytes", "paxoskv_volume_size_bytes"):  # wired to storage
        assert re.search(rf"^{gauge} [1-9]", text, re.M), gauge
    status, _, body = raw(url, "GET", "/v1/openapi.json")
    spec = json.loads(body)
    assert spec["openapi"].startswith("3.")
    assert {"/v1/kv/{key}", "/v1/kv", "/v1/status", "/healthz", "/readyz",
            "/metrics"} <= set(spec["paths"])


def test_idempotency_key_applies_a_retried_write_once(shared_cluster: Cluster) -> None:
    """Goal: a client that retries with the same Idempotency-Key (e.g. after a 504) gets the
    first answer and the write is applied once; a bad key is a 400."""
    url = shared_cluster.nodes[1].url
    c = Client(url)
    v1 = c.put("contract/idem", b"a").version
    hdr = {"If-Match": f'"{v1}"', "Idempotency-Key": "retry-42"}
    first = raw(url, "PUT", "/v1/kv/contract/idem", b"b", hdr)
    again = raw(shared_cluster.nodes[2].url, "PUT", "/v1/kv/contract/idem", b"b", hdr)
    assert first[0] == again[0] == 200  # not 412: the CAS is recognised as already applied
    assert first[1]["ETag"] == again[1]["ETag"] == f'"{(v1 or 0) + 1}"'
    assert c.get("contract/idem").version == (v1 or 0) + 1
    bad = raw(url, "PUT", "/v1/kv/contract/idem", b"c", {"Idempotency-Key": "no spaces"})
    assert bad[0] == 400
