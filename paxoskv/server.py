"""Runs one node for real: SQLite storage, aiohttp transport and API, signals."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, NoReturn

from aiohttp import web

from paxoskv.api.app import ALL_PARTS, Part, make_app
from paxoskv.api.guard import GuardedSite, GuardLimits
from paxoskv.auth import TokenStore
from paxoskv.discovery.peers import wait_for_dns
from paxoskv.idempotency import DEFAULT_WINDOW_S
from paxoskv.limits import Limits
from paxoskv.memdebug import install as install_memory_dump
from paxoskv.metrics import PromMetrics
from paxoskv.node import (
    Node,
    NodeConfig,
    RebuildRefused,
    check_rebuild_copy,
    open_identity,
    pin_replication,
)
from paxoskv.scaler import KubeReplicas, Scaler, ScalerOptions
from paxoskv.storage.sqlite import SqliteStorage
from paxoskv.tls import Reloader, TlsError, TlsFiles, client_context, server_context
from paxoskv.transport.channel import ChannelTransport
from paxoskv.transport.http import HttpTransport
from paxoskv.ttl import system_clock_ms

__all__ = ["ServeOptions", "serve"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ServeOptions:
    config: NodeConfig
    host: str
    port: int
    data_dir: Path
    secret: str
    peer_timeout_s: float = 2.0
    shutdown_timeout_s: float = 10.0
    drain_s: float = 0.0
    """After SIGTERM, keep serving this long while /readyz says 503, so load balancers
    (a Kubernetes Service) stop sending new requests before the socket closes."""
    idempotency_window_s: float = DEFAULT_WINDOW_S
    """How long an Idempotency-Key's outcome is kept (paxoskv/idempotency.py)."""
    peer_transport: str = "channel"
    """``channel``: batches ride one WebSocket per peer; ``http``: one POST per batch."""
    peer_listen: tuple[str, int] | None = None
    """Serve ``/internal/`` (peer traffic) here only, not on the client port."""
    metrics_listen: tuple[str, int] | None = None
    """Serve ``/metrics`` here only, not on the client port."""
    tls: TlsFiles | None = None
    """Certificate and key (HTTPS on the client and peer ports) and the cluster CA (peers
    verify each other against it; with ``peer_listen``, the peer port also requires a
    certificate from it: mutual TLS). The metrics port stays plain HTTP."""
    guard: GuardLimits = field(default_factory=GuardLimits)
    """Flood limits of the client port (connections, requests at once, header and body
    deadlines, idle keep-alive): paxoskv/api/guard.py."""
    peer_on_client_port: bool = False
    """With ``peer_listen``: serve ``/internal/`` on the client port as well, while peers
    that still dial the client port are being restarted (the chart's ``peerPortMode``)."""
    tokens: TokenStore | None = None
    """Client bearer tokens (``--auth token``); None serves every client (``--auth none``)."""
    metrics_auth: bool = False
    """/metrics needs a token too (any role)."""
    dns_timeout_s: float | None = None
    """StatefulSet mode: wait this long at most for the names of the acceptors of the config
    the node holds (not the whole peer list: ordinals the StatefulSet does not have never
    resolve)."""
    scaler: ScalerOptions | None = None
    """Follow the StatefulSet's replica count with the acceptor set (paxoskv/scaler.py)."""


GC_THRESHOLDS: Final = (20_000, 10, 10)
"""The cyclic collector's thresholds while serving (CPython's default is (700, 10, 10))."""


def tune_gc() -> None:
    """Make the cyclic garbage collector cheaper per request, once startup is done.

    Under write load the default thresholds ran a young collection every 700 net
    allocations and a full one every few thousand writes (the state cache's churn keeps
    promoting new objects), which took about a fifth of the event loop's CPU (py-spy
    --native: ``gc_collect_main``). Everything alive after startup (modules, the app,
    the routes) is moved out of the collector's sight (``gc.freeze``), and a young
    collection waits for 20,000 net allocations: most of a request's objects are freed by
    reference counting long before, so the memory held meanwhile is a few MB. Nothing is
    turned off: cycles are still collected."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def serve(opts: ServeOptions) -> None:
    """Serve until SIGTERM/SIGINT, then drain: stop taking requests, finish rounds in
    flight, close storage cleanly."""
    metrics = PromMetrics()
    limits: Limits = opts.config.limits
    try:
        storage = SqliteStorage(opts.data_dir, observer=metrics.commit,
                                batch_max=limits.storage_batch_max,
                                cache_bytes=limits.storage_cache_bytes)
    except (OSError, sqlite3.Error) as exc:
        raise SystemExit(
            f"paxoskv: cannot open the data directory {opts.data_dir} as uid {os.getuid()}: "
            f"{exc} (check that it exists and is writable; in Kubernetes, a volume plugin "
            "that ignores fsGroup needs the chart's volumePermissions.enabled=true)") from None
    metrics.disk_source(storage.disk_usage)
    try:
        check_rebuild_copy(storage, opts.config, system_clock_ms())
    except RebuildRefused as exc:
        await storage.close()
        raise SystemExit(f"paxoskv: {exc}") from None
    try:
        identity = await open_identity(storage, opts.config.cluster_id, opts.config.node_id,
                                       opts.config.initial_acceptors)
        await pin_replication(storage, opts.config.replication_factor, identity.fresh)
    except SystemExit:
        await storage.close()
        raise
    log.info("node %d (cluster %s, incarnation %d, data %s%s)", identity.node_id,
             identity.cluster_id, identity.incarnation, identity.data_id,
             ", new data directory" if identity.fresh else "")
    reloader = Reloader(opts.tls) if opts.tls else None
    dial_ssl = None
    if reloader is not None:
        try:
            dial_ssl = reloader.watch(client_context(reloader.files, reloader.files.ca),
                                      chain=True, ca=True)
        except TlsError as exc:
            await storage.close()
            raise SystemExit(f"paxoskv: {exc}") from None
    transport_class = ChannelTransport if opts.peer_transport == "channel" else HttpTransport
    transport = transport_class(opts.config.node_id,
                              {pid: p.url for pid, p in opts.config.peers.items()},
                              opts.secret, timeout_s=opts.peer_timeout_s, limits=limits,
                              metrics=metrics, ssl_context=dial_ssl)
    node = Node(opts.config, identity, storage, transport, metrics)
    metrics.in_flight_sources(rounds=lambda: node.rounds_in_flight)
    if opts.dns_timeout_s is not None:
        await wait_for_dns(opts.config.peers, opts.config.node_id, opts.dns_timeout_s,
                           only=node.epoch_config.members)
    scaler = None
    if opts.scaler is not None:
        scaler = Scaler(node, opts.scaler,
                        KubeReplicas(opts.scaler.statefulset, opts.scaler.namespace))
        node.scaler_status = scaler.as_dict
    # The client listener first and alone in the list's head: it is drained first below,
    # while peers (whose rounds need this acceptor) and scrapers are still served.
    listeners: list[tuple[frozenset[Part], tuple[str, int]]] = []
    apart: dict[Part, tuple[str, int]] = {}
    if opts.peer_listen:
        apart["peer"] = opts.peer_listen
    if opts.metrics_listen:
        apart["metrics"] = opts.metrics_listen
    client_parts = ALL_PARTS - frozenset(apart)
    if opts.peer_on_client_port:
        client_parts |= {"peer"}
    listeners.append((client_parts, (opts.host, opts.port)))
    listeners += [(frozenset({part}), where) for part, where in apart.items()]
    runners: list[web.AppRunner] = []

    async def give_up(message: str) -> NoReturn:
        """A listener that cannot start: undo the ones that did, close storage, one line."""
        for started in runners:
            await started.cleanup()
        await storage.close()
        raise SystemExit(f"paxoskv: {message}")

    # The starting mode is durable before anyone can see it (a rejoin marker above all):
    # a status that said "fencing" while the marker was still being written let a node
    # killed then restart without it, refused instead of resuming its rejoin.
    await node.start()
    for parts, (host, port) in listeners:
        listen_ssl = None
        if reloader is not None and parts != {"metrics"}:
            # Mutual TLS where only peers connect: a client port has no certificate to ask
            # its clients for (they carry tokens instead).
            mutual = parts == {"peer"} and reloader.files.ca is not None
            try:
                listen_ssl = reloader.watch(server_context(reloader.files, mutual),
                                            chain=True, ca=mutual)
            except TlsError as exc:
                await give_up(str(exc))
        client = "client" in parts
        app = make_app(node, opts.secret, limits, metrics, opts.idempotency_window_s, parts,
                       guard=opts.guard if client else None, tokens=opts.tokens,
                       metrics_auth=opts.metrics_auth)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=opts.shutdown_timeout_s,
                               handle_signals=False)
        await runner.setup()
        runners.append(runner)
        try:
            if client or parts == {"metrics"}:
                # The metrics port too: its probes must outlast idle or slow connections.
                # (Not the peer port: its WebSocket channels are long-lived by design; only
                # the release's pods reach it, with a certificate under TLS.)
                await GuardedSite(runner, host, port, opts.guard, metrics,
                                  count_connections=client, reuse_address=True,
                                  ssl_context=listen_ssl).start()
            else:
                await web.TCPSite(runner, host, port, reuse_address=True,
                                  ssl_context=listen_ssl).start()
        except OSError as exc:
            await give_up(f"cannot listen on {host}:{port} ({', '.join(sorted(parts))}): {exc}")
        log.info("listening on %s://%s:%d (%s)", "https" if listen_ssl else "http", host,
                 port, ", ".join(sorted(parts)))

    tune_gc()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if (dumps := install_memory_dump(loop.add_signal_handler)) is not None:
        log.warning("debug: SIGUSR2 writes a memory report into %s", dumps)
    node_task = asyncio.ensure_future(node.run())
    scaler_task = asyncio.ensure_future(scaler.run()) if scaler is not None else None
    stop_lag_probe = metrics.watch_event_loop()
    reload_task = asyncio.ensure_future(reloader.run()) if reloader is not None else None
    try:
        done, _ = await asyncio.wait({node_task, asyncio.ensure_future(stop.wait())},
                                     return_when=asyncio.FIRST_COMPLETED)
        if node_task in done:
            node_task.result()  # a background loop died: surface it
        node.drain()
        if opts.drain_s > 0 and node_task not in done:
            log.info("shutting down: not ready; serving %.1fs more while clients move away",
                     opts.drain_s)
            await asyncio.sleep(opts.drain_s)
        log.info("shutting down: draining requests in flight")
        node.watch.end_all("this node is shutting down")
        for runner in runners:
            await runner.shutdown()
            await runner.cleanup()
        # Answered writes whose Idempotency-Key record is still being written: a moment
        # more, so a retry of a lost answer finds the record (README, Idempotency-Key).
        if left := await node.settle_after_answer(node.config.request_timeout_s):
            log.warning("shutting down: %d idempotency records left pending", left)
    finally:
        stop_lag_probe()
        if reload_task is not None:
            reload_task.cancel()
        if scaler_task is not None:
            scaler_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await scaler_task
        node.drain()
        node_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await node_task
        await node.stop()
        await transport.close()
        await storage.close()
        log.info("stopped cleanly")
