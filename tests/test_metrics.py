"""paxoskv/metrics.py: the disk gauges read the storage when scraped; every other family
is exported and moves when what it measures happens."""

from __future__ import annotations

import asyncio
import concurrent.futures
import platform
import time
import urllib.request
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from procs import Cluster
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from paxoskv import __version__
from paxoskv.api.guard import GuardLimits, limit_requests_middleware
from paxoskv.client import HttpClient as Client
from paxoskv.core.acceptor import AcceptorState
from paxoskv.core.ballot import Ballot
from paxoskv.core.register import Value
from paxoskv.metrics import PromMetrics
from paxoskv.storage.sqlite import SqliteStorage


def test_disk_gauges_follow_the_data_directory_at_scrape_time(tmp_path: Path) -> None:
    """Goal: the data directory, volume and free-list gauges are the storage's numbers as
    of the scrape (no caller has to keep them up to date); without a source (or with a
    failing one) the families are still exposed and the scrape does not fail."""
    registry = CollectorRegistry()
    metrics = PromMetrics(registry)
    assert b"# TYPE paxoskv_data_dir_bytes gauge" in generate_latest(registry)
    assert registry.get_sample_value("paxoskv_data_dir_bytes") is None

    async def run() -> None:
        s = SqliteStorage(tmp_path, vacuum_threshold_bytes=1 << 40)
        metrics.disk_source(s.disk_usage)
        first = registry.get_sample_value("paxoskv_data_dir_bytes")
        await asyncio.gather(*(s.save(f"k{i}", AcceptorState(
            Ballot(1, 1), Ballot(1, 1), Value(1, b"x" * 10_000))) for i in range(100)))
        grown = registry.get_sample_value("paxoskv_data_dir_bytes")
        assert first is not None and grown is not None and grown >= first + 1_000_000
        assert registry.get_sample_value("paxoskv_storage_freelist_bytes") == 0
        await asyncio.gather(*(s.save(f"k{i}", AcceptorState(
            Ballot(2, 1), Ballot(2, 1), Value(2, None))) for i in range(100)))
        free = registry.get_sample_value("paxoskv_storage_freelist_bytes")
        assert free is not None and free > 500_000
        usage = s.disk_usage()
        size = registry.get_sample_value("paxoskv_volume_size_bytes")
        avail = registry.get_sample_value("paxoskv_volume_free_bytes")
        assert size == usage.volume_size_bytes
        assert avail is not None and 0 < avail <= size
        await s.close()
        # a closed storage: the gauges have no sample, the scrape still answers
        assert registry.get_sample_value("paxoskv_storage_freelist_bytes") is None
        assert b"paxoskv_volume_size_bytes" in generate_latest(registry)
    asyncio.run(run())


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    assert value is not None, (name, labels)
    return value


def test_ttl_expiry_results_are_exported_at_zero_before_any_expiry() -> None:
    """A dashboard rate of an absent labelled series draws nothing: every result exists
    from the start."""
    registry = CollectorRegistry()
    PromMetrics(registry)
    text = generate_latest(registry).decode()
    for result in ("deleted", "kept", "failed"):
        assert f'paxoskv_ttl_expired_total{{result="{result}"}} 0.0' in text


def test_build_info_names_the_version_and_python() -> None:
    """Goal: paxoskv_build_info is 1 with this package's version and the interpreter's."""
    registry = CollectorRegistry()
    PromMetrics(registry)
    assert _value(registry, "paxoskv_build_info", version=__version__,
                  python=platform.python_version()) == 1


def test_event_loop_lag_measures_a_blocked_loop() -> None:
    """Goal: the probe observes how late its timer ran: a loop blocked for 0.2 s shows up as
    about 0.2 s of lag, an idle one as nearly none; after stop() nothing more is observed."""
    registry = CollectorRegistry()
    metrics = PromMetrics(registry)

    async def run() -> None:
        stop = metrics.watch_event_loop(0.02)
        await asyncio.sleep(0.1)
        idle = _value(registry, "paxoskv_event_loop_lag_seconds_sum")
        count = _value(registry, "paxoskv_event_loop_lag_seconds_count")
        assert count >= 2
        assert idle < 0.05 * count
        time.sleep(0.2)  # block the loop, as a CPU-bound handler would
        await asyncio.sleep(0.05)
        blocked = _value(registry, "paxoskv_event_loop_lag_seconds_sum") - idle
        assert 0.15 <= blocked < 0.5
        stop()
        after = _value(registry, "paxoskv_event_loop_lag_seconds_count")
        await asyncio.sleep(0.1)
        assert _value(registry, "paxoskv_event_loop_lag_seconds_count") == after
    asyncio.run(run())


def test_client_requests_in_flight_follow_the_request_limiter() -> None:
    """Goal: the gauge reads the limiter's own count at scrape time: 2 while two requests
    are being handled, 0 once they are answered (and 0 before any limiter exists)."""
    registry = CollectorRegistry()
    metrics = PromMetrics(registry)
    assert _value(registry, "paxoskv_client_requests_in_flight") == 0

    def refuse(status: int, code: str, message: str,
               headers: dict[str, str] | None) -> web.Response:
        return web.Response(status=status)

    limit = limit_requests_middleware(GuardLimits(), metrics, refuse)

    async def run() -> None:
        release = asyncio.Event()

        async def handler(request: web.Request) -> web.StreamResponse:
            await release.wait()
            return web.Response()

        request = make_mocked_request("GET", "/v1/kv/a")
        tasks = [asyncio.ensure_future(limit(request, handler)) for _ in range(2)]
        await asyncio.sleep(0.01)
        assert _value(registry, "paxoskv_client_requests_in_flight") == 2
        release.set()
        await asyncio.gather(*tasks)
        assert _value(registry, "paxoskv_client_requests_in_flight") == 0
    asyncio.run(run())


def test_counters_and_histograms_move_with_their_calls() -> None:
    """Goal: each per-request call lands in its own family and label (a mix-up of in/out or
    of phases would fail here); the phase histograms exist at 0 before the first round."""
    registry = CollectorRegistry()
    metrics = PromMetrics(registry)
    for phase in ("prepare", "accept", "query"):
        assert _value(registry, "paxoskv_paxos_phase_duration_seconds_count", phase=phase) == 0
    metrics.client_bytes(100, 0)
    metrics.client_bytes(0, 7)
    metrics.peer_bytes(5, 3)
    metrics.phase("accept", 0.003)
    metrics.persist("prepare", 0.002)
    metrics.peer("2", True, 0.004)
    metrics.peer("2", True, None)
    assert _value(registry, "paxoskv_client_bytes_total", direction="in") == 100
    assert _value(registry, "paxoskv_client_bytes_total", direction="out") == 7
    assert _value(registry, "paxoskv_peer_bytes_total", direction="in") == 5
    assert _value(registry, "paxoskv_peer_bytes_total", direction="out") == 3
    assert _value(registry, "paxoskv_paxos_phase_duration_seconds_count", phase="accept") == 1
    assert _value(registry, "paxoskv_paxos_phase_duration_seconds_count", phase="prepare") == 0
    assert _value(registry, "paxoskv_acceptor_persist_duration_seconds_sum",
                  phase="prepare") == 0.002
    metrics.phase("accept", 0.005)  # on a bound: counted in that bucket (le), as Prometheus'
    metrics.phase("accept", 20.0)   # beyond the last bound: +Inf only
    for le, count in (("0.0025", 0), ("0.005", 2), ("10.0", 2), ("+Inf", 3)):
        assert _value(registry, "paxoskv_paxos_phase_duration_seconds_bucket", phase="accept",
                      le=le) == count, le
    assert _value(registry, "paxoskv_paxos_phase_duration_seconds_sum",
                  phase="accept") == 0.003 + 0.005 + 20.0
    assert _value(registry, "paxoskv_peer_round_trip_time_seconds_count", peer="2") == 1
    assert _value(registry, "paxoskv_peer_round_trip_time_seconds_bucket", peer="2",
                  le="0.005") == 1
    assert _value(registry, "paxoskv_peer_round_trip_time_seconds_bucket", peer="2",
                  le="0.0025") == 0


def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _get(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
         **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.mark.integration
def test_new_metrics_move_on_a_real_cluster(tmp_path: Path) -> None:
    """Goal: wired into the server, every new family moves under real traffic on three
    processes: client and peer bytes both ways, prepare/accept/query phase latency, the
    acceptors' persist latency, peer RTT per heartbeat, the loop-lag probe; and with two
    peers stopped, a write stays in flight and both in-flight gauges show it."""
    cluster = Cluster(3, tmp_path)
    cluster.start()
    try:
        node = cluster.nodes[1]
        before = _scrape(node.url)
        client = Client(node.url)
        for i in range(10):
            assert client.put(f"metrics/{i}", b"v" * 100).status == 200
        for i in range(3):
            assert client.get(f"metrics/{i}").status == 200
        time.sleep(0.6)  # one loop-lag tick at least (0.5 s)
        after = _scrape(node.url)
        assert _get(after, "paxoskv_build_info", version=__version__,
                    python=platform.python_version()) == 1
        for name, labels in (
                ("paxoskv_client_bytes_total", {"direction": "in"}),
                ("paxoskv_client_bytes_total", {"direction": "out"}),
                ("paxoskv_peer_bytes_total", {"direction": "in"}),
                ("paxoskv_peer_bytes_total", {"direction": "out"}),
                ("paxoskv_paxos_phase_duration_seconds_count", {"phase": "accept"}),
                ("paxoskv_paxos_phase_duration_seconds_count", {"phase": "query"}),
                ("paxoskv_acceptor_persist_duration_seconds_count", {"phase": "accept"}),
                ("paxoskv_peer_round_trip_time_seconds_count", {"peer": "2"}),
                ("paxoskv_event_loop_lag_seconds_count", {})):
            assert _get(after, name, **labels) > _get(before, name, **labels), (name, labels)
        assert _get(after, "paxoskv_client_bytes_total", direction="in") \
            - _get(before, "paxoskv_client_bytes_total", direction="in") >= 10 * 100
        prepares = sum(_get(_scrape(n.url), "paxoskv_paxos_phase_duration_seconds_count",
                            phase="prepare") for n in cluster.nodes.values())
        assert prepares >= 1  # a key's first round has a phase 1 on its proposer
        assert _get(after, "paxoskv_rounds_in_flight") == 0
        at_rest = _get(after, "paxoskv_client_requests_in_flight")
        assert at_rest >= 1  # the scrape that reads it

        cluster.nodes[2].pause()
        cluster.nodes[3].pause()
        seen = {"paxoskv_rounds_in_flight": 0.0, "paxoskv_client_requests_in_flight": 0.0}
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            stuck = pool.submit(Client(node.url).put, "metrics/stuck", b"x")
            for _ in range(60):  # bounded: the write gives up after its 4 s timeout
                samples = _scrape(node.url)
                for name in seen:
                    seen[name] = max(seen[name], _get(samples, name))
                if all(seen.values()) or stuck.done():
                    break
                time.sleep(0.05)
            stuck.result()
        # The client port's count is the request limiter's: it includes the scrape itself
        # and, here where peers share the client port, their open channels; the stuck write
        # adds one to what it was at rest.
        assert seen == {"paxoskv_rounds_in_flight": 1.0,
                        "paxoskv_client_requests_in_flight": at_rest + 1}
    finally:
        cluster.stop()
