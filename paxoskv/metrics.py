"""Prometheus metrics (names in the README's metrics table), behind a small interface.

The node reports through ``Metrics``; the server uses ``PromMetrics`` on the process-wide
``REGISTRY``, the simulator uses the no-op base class so many nodes can share a process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import platform
from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from paxoskv import __version__
from paxoskv.storage.base import DiskUsage

__all__ = ["AUTH_FAILURE_REASONS", "HTTP_REFUSED_REASONS", "PHASES", "REGISTRY", "Metrics",
           "PromMetrics"]

PHASES = ("prepare", "accept", "query")
"""The phases a proposer broadcasts (``paxoskv_paxos_phase_duration_seconds``); the
acceptor persists only the first two (``paxoskv_acceptor_persist_duration_seconds``)."""

AUTH_FAILURE_REASONS = ("missing", "unknown", "forbidden")
SCALER_STATES = ("in_sync", "changing", "waiting_for_pods", "over_max", "standby",
                 "api_error", "no_quorum", "below_quorum")
"""What the StatefulSet follower (paxoskv/scaler.py) can be doing."""
HTTP_REFUSED_REASONS = ("connections", "requests", "header_timeout", "body_timeout",
                        "malformed", "token_rate", "body_too_large", "body_bytes")
"""The limit that turned a client connection or request away (paxoskv/api/guard.py; a
token's rate limit, paxoskv/auth.py)."""

log = logging.getLogger(__name__)

disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created series are noise
REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                    2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_RTT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15,
                0.25, 0.5, 1.0, 2.5)
_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
LOOP_LAG_INTERVAL_S = 0.5
"""How often the event-loop lag probe wakes up (two timer callbacks a second)."""


class _DiskCollector(Collector):
    """The data directory's and volume's bytes, read when scraped (a few stats and a
    statvfs): nothing on the request path keeps them up to date."""

    def __init__(self) -> None:
        self.source: Callable[[], DiskUsage] | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families = {
            "data_dir_bytes": GaugeMetricFamily(
                "paxoskv_data_dir_bytes",
                "Bytes the files of the data directory take on disk (database, WAL, others)"),
            "volume_free_bytes": GaugeMetricFamily(
                "paxoskv_volume_free_bytes",
                "Bytes still available to paxoskv on the data directory's filesystem"),
            "volume_size_bytes": GaugeMetricFamily(
                "paxoskv_volume_size_bytes", "Size of the data directory's filesystem"),
            "freelist_bytes": GaugeMetricFamily(
                "paxoskv_storage_freelist_bytes",
                "Unused pages inside the database file, which the incremental vacuum returns "
                "to the volume"),
        }
        usage = None
        if self.source is not None:
            try:
                usage = self.source()
            except Exception as exc:  # a scrape must not fail for it (a closed storage)
                log.debug("disk usage unavailable: %s", exc)
        for field, family in families.items():
            if usage is not None:
                family.add_metric([], getattr(usage, field))
            yield family


class _Tally:
    """Byte counts kept as plain ints by the transports and the client port (an addition
    per read or write, no lock, no label lookup) and exported as counters at scrape time,
    along with the in-flight gauges, which are read from their owners' own counts."""

    __slots__ = ("client_in", "client_out", "peer_in", "peer_out", "requests_source",
                 "rounds_source")

    def __init__(self) -> None:
        self.client_in = self.client_out = self.peer_in = self.peer_out = 0
        self.rounds_source: Callable[[], int] | None = None
        self.requests_source: Callable[[], int] | None = None


class _TallyCollector(Collector):
    def __init__(self, tally: _Tally) -> None:
        self._tally = tally

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        t = self._tally
        client = CounterMetricFamily(
            "paxoskv_client_bytes",
            "Bytes read from (in) and written to (out) client connections on the client "
            "port, HTTP headers included", labels=["direction"])
        client.add_metric(["in"], t.client_in)
        client.add_metric(["out"], t.client_out)
        peer = CounterMetricFamily(
            "paxoskv_peer_bytes",
            "Bytes of peer frames (Paxos message batches and their replies, heartbeats, "
            "key pages) this node received (in) and sent (out), as dialer and as server; "
            "HTTP and WebSocket framing not included", labels=["direction"])
        peer.add_metric(["in"], t.peer_in)
        peer.add_metric(["out"], t.peer_out)
        yield client
        yield peer
        for name, doc, source in (
                ("paxoskv_rounds_in_flight", "Paxos rounds (writes and linearizable reads) "
                 "this node runs as proposer right now", t.rounds_source),
                ("paxoskv_client_requests_in_flight", "Requests being served on the client "
                 "port right now, as --max-requests-inflight counts them (peers' requests "
                 "too where they share the client port)", t.requests_source)):
            family = GaugeMetricFamily(name, doc)
            family.add_metric([], source() if source is not None else 0)
            yield family


class _LoopBuckets:
    """One label set of a ``_LoopHistogram``: plain counts, one per bucket (the last is
    +Inf), and their sum."""

    __slots__ = ("_bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self._bounds, value)] += 1  # first bound >= value: le
        self.total += value


class _LoopHistogram(Collector):
    """A histogram with one label, observed only on the event loop's thread, which also
    serves the scrapes: no lock, a bisect and two additions per observation (about a
    quarter of ``Histogram.observe``'s cost). For the families observed per Paxos message."""

    def __init__(self, name: str, documentation: str, label: str,
                 buckets: tuple[float, ...]) -> None:
        self._name, self._doc, self._label = name, documentation, label
        self._bounds = tuple(sorted(buckets))
        self._children: dict[str, _LoopBuckets] = {}

    def __call__(self, value: str) -> _LoopBuckets:
        try:
            return self._children[value]
        except KeyError:
            child = self._children[value] = _LoopBuckets(self._bounds)
            return child

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self._name, self._doc, labels=[self._label])
        les = [floatToGoString(b) for b in self._bounds] + ["+Inf"]  # type: ignore[no-untyped-call]
        for value, child in sorted(self._children.items()):
            cumulative, running = [], 0
            for le, count in zip(les, child.counts, strict=True):
                running += count
                cumulative.append((le, running))
            family.add_metric([value], cumulative, child.total)
        yield family


M = TypeVar("M", Counter, Histogram)


class _Children(Generic[M]):
    """A labelled metric's children, looked up once per label set and kept: ``labels()``
    costs several microseconds (validation, a lock, a dict of tuples), too much for a
    metric counted on every request."""

    __slots__ = ("_kids", "_metric")

    def __init__(self, metric: M) -> None:
        self._metric: M = metric
        self._kids: dict[tuple[str, ...], M] = {}

    def __call__(self, *labels: str) -> M:
        try:
            return self._kids[labels]
        except KeyError:
            kid: M = self._metric.labels(*labels)
            self._kids[labels] = kid
            return kid


class Metrics:
    """No-op metrics: what the node reports, and when."""

    def request(self, op: str, code: int, seconds: float) -> None: ...
    def round(self, phase: str, outcome: str) -> None: ...
    def conflict(self) -> None: ...
    def commit(self, batch_size: int, seconds: float) -> None: ...
    def peer(self, peer: str, up: bool, rtt_seconds: float | None) -> None: ...
    def peer_absent(self, peer: str) -> None:
        """A peer-list acceptor outside the held config is silent (no pod): no series."""
    def keys(self, count: int) -> None: ...
    def quorum_reachable(self, ok: bool) -> None: ...
    def amnesia(self, refusing: bool) -> None: ...
    def repair(self, result: str) -> None: ...
    def ttl_expired(self, result: str) -> None: ...
    def transport_batch(self, messages: int) -> None: ...
    def identity_refused(self, refused: bool) -> None: ...
    def peer_refused(self, peer: str, refused: bool) -> None: ...
    def rejoin(self, result: str) -> None: ...
    def tombstones_collected(self) -> None:
        """This acceptor removed one collected tombstone's row (docs/gc.md)."""
    def tombstones_pending(self, count: int) -> None:
        """Tombstones this node waits to collect (seen, grace period not over)."""
    def config_epoch(self, epoch: int) -> None:
        """The acceptor-set config epoch this node holds (docs/reconfiguration.md)."""
    def replication_factor(self, r: int) -> None:
        """Acceptors each key lives on (docs/groups.md); 0: every acceptor."""
    def epoch_refused(self) -> None:
        """This acceptor refused a message of an older config epoch (``Stale``)."""
    def reconfig_running(self, running: bool) -> None:
        """Whether this node is driving an acceptor-set change."""
    def reconfig_step(self, step: str) -> None:
        """The driver finished an ``install`` or a ``catch_up``."""
    def reconfig_keys(self, count: int) -> None:
        """The driver's catch-up ran identity rounds on ``count`` more keys."""
    def scaler(self, state: str, replicas: int | None) -> None:
        """What the StatefulSet follower (paxoskv/scaler.py) is doing, and the replica count
        it last read (None: not read)."""
    def key_round(self, changes: int) -> None: ...
    def forward(self, result: str) -> None: ...
    def http_connections(self, count: int) -> None: ...
    def http_refused(self, reason: str) -> None: ...
    def auth_failure(self, reason: str) -> None: ...
    def phase(self, phase: str, seconds: float) -> None:
        """A proposer's broadcast of ``phase`` took ``seconds`` to be decided (a quorum's
        replies: the network and the acceptors' disks)."""
    def persist(self, phase: str, seconds: float) -> None:
        """This acceptor's state for a ``phase`` message took ``seconds`` to be durable."""
    def client_bytes(self, received: int, sent: int) -> None: ...
    def peer_bytes(self, received: int, sent: int) -> None: ...
    def in_flight_sources(self, rounds: Callable[[], int] | None = None,
                          requests: Callable[[], int] | None = None) -> None:
        """Where the rounds and client requests in flight are read at each scrape."""
    def watch_event_loop(self, interval_s: float = LOOP_LAG_INTERVAL_S) -> Callable[[], None]:
        """Measure the running loop's scheduling delay; returns what stops it (no-op here)."""
        return lambda: None

    def disk_source(self, source: Callable[[], DiskUsage]) -> None:
        """Where the disk gauges come from, read at each scrape (``SqliteStorage``)."""


class PromMetrics(Metrics):
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        r = registry
        self._requests = Counter("paxoskv_requests", "Client requests by operation and HTTP code",
                                 ["op", "code"], registry=r)
        self._duration = Histogram("paxoskv_request_duration_seconds",
                                   "Client request latency", ["op"], buckets=_LATENCY_BUCKETS,
                                   registry=r)
        self._rounds = Counter("paxoskv_paxos_rounds", "Paxos phases run by this proposer "
                               "(phase fast: Fast Paxos rounds, outcome chosen, collision "
                               "or timeout)",
                               ["phase", "outcome"], registry=r)
        self._forward = Counter("paxoskv_forwarded_writes",
                                "Client writes sent to their key's preferred proposer, by "
                                "result", ["result"], registry=r)
        self._http_connections = Gauge("paxoskv_http_connections",
                                       "Open client connections", registry=r)
        self._http_refused = Counter("paxoskv_http_refused",
                                     "Client connections or requests refused by a flood "
                                     "limit or a token's rate limit, by limit", ["reason"],
                                     registry=r)
        for reason in HTTP_REFUSED_REASONS:
            self._http_refused.labels(reason)  # at 0, so a rate() has a series to work on
        self._key_round = Histogram("paxoskv_round_changes",
                                    "Client changes one round applied to its key together",
                                    buckets=(1, 2, 4, 8, 16), registry=r)
        self._conflicts = Counter("paxoskv_paxos_conflicts",
                                  "Rounds refused for a higher ballot (contention)", registry=r)
        self._fsync = Histogram("paxoskv_storage_fsync_duration_seconds",
                                "Duration of one storage commit including fsync",
                                buckets=_LATENCY_BUCKETS, registry=r)
        self._batch = Histogram("paxoskv_storage_batch_size",
                                "Key writes committed under one fsync", buckets=_BATCH_BUCKETS,
                                registry=r)
        self._peer_up = Gauge("paxoskv_peer_up", "1 if the last heartbeat to the peer succeeded",
                              ["peer"], registry=r)
        self._peer_rtt = Gauge("paxoskv_peer_rtt_seconds", "Round-trip time of the last heartbeat",
                               ["peer"], registry=r)
        self._keys = Gauge("paxoskv_keys", "Keys held by this acceptor", registry=r)
        self._quorum = Gauge("paxoskv_quorum_reachable",
                             "1 if a quorum of acceptors answered heartbeats", registry=r)
        self._amnesia = Gauge("paxoskv_amnesia",
                              "1 if this node refuses to act as an acceptor because it lost its "
                              "state (see README: rejoin)", registry=r)
        self._repair = Counter("paxoskv_repair_keys", "Keys checked and repaired by anti-entropy",
                               ["result"], registry=r)
        self._ttl_expired = Counter(
            "paxoskv_ttl_expired", "Expired keys the TTL sweeper tried to delete, by result "
            "(deleted; kept: renewed or rewritten since; failed: no quorum or unknown)",
            ["result"], registry=r)
        for result in ("deleted", "kept", "failed"):
            # exported at 0 from the start, so a dashboard rate has a series before any expiry
            self._ttl_expired.labels(result)
        self._identity_refused = Gauge(
            "paxoskv_identity_refused",
            "1 if peers refuse this process: its state is older than one they saw (a restored "
            "copy), it lost its state, or its node id is in use by another process",
            registry=r)
        self._peer_refused = Gauge(
            "paxoskv_peer_refused",
            "1 if this node refuses the peer (other membership, a stale or second process)",
            ["peer"], registry=r)
        self._rejoin = Counter("paxoskv_rejoin_keys",
                               "Keys a rejoining acceptor checked and caught up", ["result"],
                               registry=r)
        for result in ("checked", "caught_up"):
            self._rejoin.labels(result)  # exported at 0, so dashboards show a flat line
        self._collected = Counter("paxoskv_tombstones_collected",
                                  "Tombstone rows this acceptor removed after every acceptor "
                                  "had accepted them and the grace period was over "
                                  "(docs/gc.md)", registry=r)
        self._config_epoch = Gauge("paxoskv_config_epoch",
                                   "Acceptor-set config epoch this node holds (0: the "
                                   "configured set, never changed)", registry=r)
        self._replication = Gauge("paxoskv_replication_factor",
                                  "Acceptors each key lives on (--replication-factor; "
                                  "docs/groups.md); 0: every acceptor", registry=r)
        self._epoch_refused = Counter("paxoskv_epoch_refusals",
                                      "Messages of an older acceptor-set config epoch this "
                                      "acceptor refused", registry=r)
        self._reconfig_running = Gauge("paxoskv_reconfig_running",
                                       "1 while this node drives an acceptor-set change",
                                       registry=r)
        self._reconfig_steps = Counter("paxoskv_reconfig_steps",
                                       "Acceptor-set change steps this node's driver finished",
                                       ["step"], registry=r)
        for step in ("install", "catch_up"):
            self._reconfig_steps.labels(step)
        self._scaler_state = Gauge("paxoskv_scaler_state",
                                   "1 for what the StatefulSet follower is doing now (in_sync, "
                                   "changing, waiting_for_pods, over_max, standby, api_error, "
                                   "no_quorum, below_quorum); no series when it is off", ["state"],
                                   registry=r)
        self._scaler_replicas = Gauge("paxoskv_scaler_desired_acceptors",
                                      "The StatefulSet's spec.replicas the follower last read "
                                      "(the acceptor set it drives to)", registry=r)
        self._reconfig_keys = Counter("paxoskv_reconfig_keys_caught_up",
                                      "Keys the acceptor-set change driver ran a catch-up "
                                      "identity round on", registry=r)
        self._gc_pending = Gauge("paxoskv_tombstones_pending",
                                 "Tombstones this node drives to collection, still within "
                                 "their grace period or not yet accepted everywhere",
                                 registry=r)
        self._auth_failures = Counter(
            "paxoskv_auth_failures",
            "Client requests refused by token auth: missing (no bearer token), unknown (not "
            "in the token file), forbidden (role too low or key outside its prefixes)",
            ["reason"], registry=r)
        for reason in AUTH_FAILURE_REASONS:
            self._auth_failures.labels(reason)  # at 0, so a rate() has a series to work on
        self._disk = _DiskCollector()
        r.register(self._disk)
        # The labelled metrics counted per request or round, through kept children.
        self._requests_of = _Children(self._requests)
        self._duration_of = _Children(self._duration)
        self._rounds_of = _Children(self._rounds)
        self._forward_of = _Children(self._forward)
        self._http_refused_of = _Children(self._http_refused)
        self._auth_failures_of = _Children(self._auth_failures)
        self._transport_batch = Histogram("paxoskv_transport_batch_messages",
                                          "Messages coalesced into one peer request",
                                          buckets=_BATCH_BUCKETS, registry=r)
        self._peer_rtt_hist = Histogram(
            "paxoskv_peer_round_trip_time_seconds",
            "Round-trip time of every successful heartbeat to the peer",
            ["peer"], buckets=_RTT_BUCKETS, registry=r)
        self._peer_rtt_of = _Children(self._peer_rtt_hist)
        self._phase_of = _LoopHistogram(
            "paxoskv_paxos_phase_duration_seconds",
            "Time a proposer waited for a phase's broadcast to be decided: the network "
            "round trip plus the acceptors' persistence (paxoskv_acceptor_persist_duration_"
            "seconds)", "phase", _LATENCY_BUCKETS)
        self._persist_of = _LoopHistogram(
            "paxoskv_acceptor_persist_duration_seconds",
            "Time from an acceptor's step on a prepare or accept to its state being durable "
            "(queueing for the group commit, then the commit and fsync)",
            "phase", _LATENCY_BUCKETS)
        r.register(self._phase_of)
        r.register(self._persist_of)
        for phase in PHASES:
            self._phase_of(phase)  # exported before the first round, for the dashboard
            if phase != "query":
                self._persist_of(phase)
        self._loop_lag = Histogram(
            "paxoskv_event_loop_lag_seconds",
            "How late the event loop ran a timer due every "
            f"{LOOP_LAG_INTERVAL_S} s: time every callback, request and round waits for the "
            "single thread", buckets=_LAG_BUCKETS, registry=r)
        self._build_info = Gauge("paxoskv_build_info",
                                 "Always 1; the paxoskv version and the Python version",
                                 ["version", "python"], registry=r)
        self._build_info.labels(__version__, platform.python_version()).set(1)
        self._tally = _Tally()
        r.register(_TallyCollector(self._tally))

    def request(self, op: str, code: int, seconds: float) -> None:
        self._requests_of(op, str(code)).inc()
        self._duration_of(op).observe(seconds)

    def round(self, phase: str, outcome: str) -> None:
        self._rounds_of(phase, outcome).inc()

    def conflict(self) -> None:
        self._conflicts.inc()

    def commit(self, batch_size: int, seconds: float) -> None:
        self._fsync.observe(seconds)
        self._batch.observe(batch_size)

    def peer_absent(self, peer: str) -> None:
        with contextlib.suppress(KeyError):
            self._peer_up.remove(peer)

    def peer(self, peer: str, up: bool, rtt_seconds: float | None) -> None:
        self._peer_up.labels(peer).set(1 if up else 0)
        if rtt_seconds is not None:
            self._peer_rtt.labels(peer).set(rtt_seconds)
            self._peer_rtt_of(peer).observe(rtt_seconds)

    def keys(self, count: int) -> None:
        self._keys.set(count)

    def quorum_reachable(self, ok: bool) -> None:
        self._quorum.set(1 if ok else 0)

    def amnesia(self, refusing: bool) -> None:
        self._amnesia.set(1 if refusing else 0)

    def repair(self, result: str) -> None:
        self._repair.labels(result).inc()

    def ttl_expired(self, result: str) -> None:
        self._ttl_expired.labels(result).inc()

    def transport_batch(self, messages: int) -> None:
        self._transport_batch.observe(messages)

    def identity_refused(self, refused: bool) -> None:
        self._identity_refused.set(1 if refused else 0)

    def peer_refused(self, peer: str, refused: bool) -> None:
        self._peer_refused.labels(peer).set(1 if refused else 0)

    def rejoin(self, result: str) -> None:
        self._rejoin.labels(result).inc()

    def tombstones_collected(self) -> None:
        self._collected.inc()

    def tombstones_pending(self, count: int) -> None:
        self._gc_pending.set(count)

    def config_epoch(self, epoch: int) -> None:
        self._config_epoch.set(epoch)

    def replication_factor(self, r: int) -> None:
        self._replication.set(r)

    def epoch_refused(self) -> None:
        self._epoch_refused.inc()

    def reconfig_running(self, running: bool) -> None:
        self._reconfig_running.set(1 if running else 0)

    def reconfig_step(self, step: str) -> None:
        self._reconfig_steps.labels(step).inc()

    def reconfig_keys(self, count: int) -> None:
        self._reconfig_keys.inc(count)

    def scaler(self, state: str, replicas: int | None) -> None:
        for each in SCALER_STATES:
            self._scaler_state.labels(each).set(1 if each == state else 0)
        if replicas is not None:
            self._scaler_replicas.set(replicas)

    def key_round(self, changes: int) -> None:
        self._key_round.observe(changes)

    def forward(self, result: str) -> None:
        self._forward_of(result).inc()

    def http_connections(self, count: int) -> None:
        self._http_connections.set(count)

    def http_refused(self, reason: str) -> None:
        self._http_refused_of(reason).inc()

    def auth_failure(self, reason: str) -> None:
        self._auth_failures_of(reason).inc()

    def phase(self, phase: str, seconds: float) -> None:
        self._phase_of(phase).observe(seconds)

    def persist(self, phase: str, seconds: float) -> None:
        self._persist_of(phase).observe(seconds)

    def client_bytes(self, received: int, sent: int) -> None:
        t = self._tally
        t.client_in += received
        t.client_out += sent

    def peer_bytes(self, received: int, sent: int) -> None:
        t = self._tally
        t.peer_in += received
        t.peer_out += sent

    def in_flight_sources(self, rounds: Callable[[], int] | None = None,
                          requests: Callable[[], int] | None = None) -> None:
        if rounds is not None:
            self._tally.rounds_source = rounds
        if requests is not None:
            self._tally.requests_source = requests

    def watch_event_loop(self, interval_s: float = LOOP_LAG_INTERVAL_S) -> Callable[[], None]:
        """Observe, every ``interval_s``, how much later than due a timer callback runs:
        the time any ready callback waits for the loop's single thread (CPU-bound
        handlers, a blocking call, a long garbage collection). One timer callback per
        interval (no task), nothing on the request path. Call the result to stop."""
        loop = asyncio.get_running_loop()
        observe = self._loop_lag.observe
        handle: asyncio.TimerHandle | None = None

        def tick(due: float) -> None:
            nonlocal handle
            now = loop.time()
            observe(max(0.0, now - due))
            handle = loop.call_at(now + interval_s, tick, now + interval_s)

        first = loop.time() + interval_s
        handle = loop.call_at(first, tick, first)

        def stop() -> None:
            if handle is not None:
                handle.cancel()
        return stop

    def disk_source(self, source: Callable[[], DiskUsage]) -> None:
        self._disk.source = source
