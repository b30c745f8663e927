"""The clients (paxoskv/client.py) against three real ``paxoskv serve`` processes: the node
in use is SIGKILLed, frozen, or loses an answer on the way back, and every logical write
still moves the key's version by exactly one; a 503's Retry-After is waited out.

Version numbers are the check for duplicates: each write below is either a compare-and-set
on the version the previous one produced (applied twice, the second would be refused) or a
plain PUT (applied twice, the version would move by two)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fakenode import SyncAsync
from procs import Cluster, ServerProcess

from paxoskv.client import Client, HttpClient, Result, Retry, RetryEvent

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sync", "async"])
def flavour(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def make_client(flavour: str, **kwargs: Any) -> Any:
    return Client(**kwargs) if flavour == "sync" else SyncAsync(**kwargs)


def node_at(cluster: Cluster, url: str) -> ServerProcess:
    return next(n for n in cluster.nodes.values() if n.url == url)


def sigkill(node: ServerProcess) -> None:
    """SIGKILL by PID (no clean shutdown: sockets are reset by the kernel)."""
    assert node.proc is not None
    os.kill(node.proc.pid, signal.SIGKILL)
    node.proc.wait(10)


def write(c: Any, key: str, i: int, version: int) -> Result:
    """Write number i: even ones compare-and-set on ``version``, odd ones plain PUTs."""
    value = f"v{i}".encode()
    if i % 2 == 0:
        return c.put(key, value, if_match=version)  # type: ignore[no-any-return]
    return c.put(key, value)  # type: ignore[no-any-return]


def test_sigkill_of_the_node_in_use_fails_over_without_duplicates(cluster: Cluster,
                                                                  flavour: str) -> None:
    """Goal: a client given all three endpoints writes through node 1; node 1 is SIGKILLed;
    the next writes go through another node, and each write moves the version by one."""
    events: list[RetryEvent] = []
    c = make_client(flavour, endpoints=cluster.urls(), timeout_s=3,
                    retry=Retry(on_retry=events.append))
    key, version = "failover/k", 0
    try:
        for i in range(1, 6):
            res = write(c, key, i, version)
            assert res.version == version + 1, (i, res)
            version = res.version
        used = node_at(cluster, c.url)
        assert used is cluster.nodes[1]
        sigkill(used)
        started = time.monotonic()
        res = write(c, key, 6, version)
        failover_s = time.monotonic() - started
        assert res.version == version + 1 and c.url != used.url
        version = res.version
        for i in range(7, 16):
            res = write(c, key, i, version)
            assert res.version == version + 1, (i, res)
            version = res.version
    finally:
        c.close()
    assert [e.url for e in events] == [used.url]  # one retry, off the dead node
    assert failover_s < 3.0, failover_s
    survivor = next(n for n in cluster.nodes.values() if n.alive())
    got = HttpClient(survivor.url).get(key)
    assert (got.status, got.version, got.body) == (200, 15, b"v15")
    print(f"\n[{flavour}] failover after SIGKILL: first write {failover_s * 1000:.0f} ms; "
          f"retry: {events[0].reason}")


def test_a_write_sent_to_a_frozen_node_that_dies_is_applied_once(cluster: Cluster) -> None:
    """Goal: the write reaches node 1 while it is stopped (SIGSTOP), then node 1 is
    SIGKILLed: the client's connection breaks with the outcome unknown to it; it resends
    the write, with the same Idempotency-Key, to another node, and it is applied once."""
    c = Client(endpoints=cluster.urls(), timeout_s=5)
    assert c.put("frozen/k", b"v1").version == 1
    n1 = cluster.nodes[1]
    n1.pause()
    box: list[Result | BaseException] = []

    def run() -> None:
        try:
            box.append(c.put("frozen/k", b"v2", if_match=1))
        except BaseException as exc:
            box.append(exc)

    writer = threading.Thread(target=run)
    writer.start()
    time.sleep(0.5)  # the request sits in node 1's socket buffer
    sigkill(n1)
    writer.join(30)
    assert not writer.is_alive()
    res = box[0]
    assert isinstance(res, Result), res
    assert (res.version, res.url != n1.url) == (2, True)
    assert HttpClient(cluster.nodes[2].url).get("frozen/k").version == 2
    c.close()


class AnswerLosingProxy:
    """A TCP proxy in front of one node that forwards the first request, waits for the
    node's answer (so the write has run), and then resets the client's connection instead
    of passing the answer on. Later connections are passed through."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.dropped = 0
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        self.listener.settimeout(0.2)
        for _ in range(100_000):  # bounded; each turn waits at most 0.2 s
            if self._stop:
                return
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
        client.settimeout(10)
        drop = self.dropped == 0

        def forward() -> None:  # client -> node, whole requests in whatever pieces
            with contextlib.suppress(OSError):
                for _ in range(100_000):
                    data = client.recv(65536)
                    if not data:
                        return
                    upstream.sendall(data)

        threading.Thread(target=forward, daemon=True).start()
        try:
            for _ in range(100_000):
                answer = upstream.recv(65536)
                if not answer:
                    return
                if drop:
                    self.dropped += 1
                    # RST, not FIN: the answer is lost, as when the node dies mid-reply
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                      struct.pack("ii", 1, 0))
                    return
                client.sendall(answer)
        except OSError:
            return
        finally:
            client.close()
            upstream.close()

    def close(self) -> None:
        self._stop = True
        self._thread.join(5)
        self.listener.close()


@pytest.fixture
def lossy(cluster: Cluster) -> Iterator[AnswerLosingProxy]:
    proxy = AnswerLosingProxy(cluster.nodes[1].port)
    yield proxy
    proxy.close()


def test_a_lost_answer_to_an_applied_cas_is_replayed_not_reapplied(
        cluster: Cluster, lossy: AnswerLosingProxy, flavour: str) -> None:
    """Goal: node 1 applies a compare-and-set but its answer never reaches the client; the
    retry (same Idempotency-Key, next endpoint) is answered with the first outcome: 200 and
    the version that write produced, not 412, and the version moved by one."""
    assert HttpClient(cluster.nodes[2].url).put("lost/k", b"v1").version == 1
    c = make_client(flavour, endpoints=[lossy.url, cluster.nodes[2].url,
                                        cluster.nodes[3].url], timeout_s=5)
    try:
        res = c.put("lost/k", b"v2", if_match=1)
    finally:
        c.close()
    assert lossy.dropped == 1
    assert (res.status, res.version, res.replayed) == (200, 2, True)
    got = HttpClient(cluster.nodes[3].url).get("lost/k")
    assert (got.version, got.body) == (2, b"v2")


def test_a_503_is_retried_after_its_retry_after(cluster: Cluster) -> None:
    """Goal: without a quorum node 1 answers 503 with Retry-After: 1; the client waits that
    long (measured between the 503 arriving and the next try leaving), by which time the
    quorum is back, and the write is applied once."""
    tries: list[tuple[float, str, int | None]] = []

    class Timed(Client):
        def _send(self, url: str, method: str, path: str, body: bytes | None,
                  headers: dict[str, str]) -> Result:
            tries.append((time.monotonic(), "send", None))
            res = super()._send(url, method, path, body, headers)
            tries.append((time.monotonic(), "answer", res.status))
            return res

    n1, n2, n3 = (cluster.nodes[i] for i in (1, 2, 3))
    first = HttpClient(n1.url).put("busy/k", b"v1")
    assert first.version == 1

    def resume(event: RetryEvent) -> None:
        if event.status == 503:
            n2.resume()
            n3.resume()

    n2.pause()
    n3.pause()
    time.sleep(1.0)  # node 1's failure detector notices (heartbeats every 0.2 s)
    c = Timed(n1.url, retry=Retry(on_retry=resume))
    res = c.put("busy/k", b"v2")
    c.close()
    assert res.version == 2
    answers = [i for i, t in enumerate(tries) if t[1] == "answer" and t[2] == 503]
    assert answers, tries
    i = answers[0]
    waited = tries[i + 1][0] - tries[i][0]
    assert tries[i + 1][1] == "send"
    assert 1.0 <= waited < 1.5, waited
    assert HttpClient(n3.url).get("busy/k").version == 2
    print(f"\n503 Retry-After: 1 -> next try {waited * 1000:.0f} ms later; "
          f"{len(answers)} 503(s), then {res.status}")
