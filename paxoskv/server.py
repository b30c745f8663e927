"""Runs one node for real: SQLite storage, aiohttp transport and API, signals."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from paxoskv.api.app import make_app
from paxoskv.auth import TokenStore
from paxoskv.idempotency import DEFAULT_WINDOW_S
from paxoskv.limits import Limits
from paxoskv.metrics import PromMetrics
from paxoskv.node import Node, NodeConfig, open_identity
from paxoskv.storage.sqlite import SqliteStorage
from paxoskv.transport.channel import ChannelTransport
from paxoskv.transport.http import HttpTransport

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
    tokens: TokenStore | None = None
    """Client bearer tokens (``--auth token``); None serves every client (``--auth none``)."""
    metrics_auth: bool = False
    """/metrics needs a token too (any role)."""


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
    identity = await open_identity(storage, opts.config.cluster_id, opts.config.node_id)
    log.info("node %d (cluster %s, incarnation %d, data %s%s)", identity.node_id,
             identity.cluster_id, identity.incarnation, identity.data_id,
             ", new data directory" if identity.fresh else "")
    transport_class = ChannelTransport if opts.peer_transport == "channel" else HttpTransport
    transport = transport_class(opts.config.node_id,
                              {pid: p.url for pid, p in opts.config.peers.items()},
                              opts.secret, timeout_s=opts.peer_timeout_s, limits=limits,
                              metrics=metrics)
    node = Node(opts.config, identity, storage, transport, metrics)
    app = make_app(node, opts.secret, limits, metrics, opts.idempotency_window_s,
                   tokens=opts.tokens, metrics_auth=opts.metrics_auth)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=opts.shutdown_timeout_s,
                           handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, opts.host, opts.port, reuse_address=True)
    await site.start()
    log.info("listening on http://%s:%d", opts.host, opts.port)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    node_task = asyncio.ensure_future(node.run())
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
        await runner.shutdown()
        await runner.cleanup()
    finally:
        node.drain()
        node_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await node_task
        await node.stop()
        await transport.close()
        await storage.close()
        log.info("stopped cleanly")
