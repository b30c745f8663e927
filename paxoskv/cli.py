"""``paxoskv serve | local-cluster | put | get | delete | list | range | delete-prefix |
backup | restore | status | token | completion``.

Every flag can also come from a ``PAXOSKV_*`` environment variable (the flag's name in
upper case with dashes as underscores), so the Helm chart configures the server through
its environment. A flag given on the command line wins.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import orjson

from paxoskv import __version__

if TYPE_CHECKING:
    from paxoskv.auth import TokenStore

__all__ = ["main"]

ENV_PREFIX = "PAXOSKV_"

DEFAULT_CLIENT_URL = "http://127.0.0.1:7000"
"""Where the client commands go by default: ``serve``'s default --listen port, which is the
client port of the image and the chart (7001 and 7002 there are the peer and metrics
ports), and node 1 of ``local-cluster``."""

OUTPUTS = ("json", "table")


class UsageError(Exception):
    """Bad flags or configuration: printed as one line, exit 2."""


def _env(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


def _add(p: argparse.ArgumentParser, flag: str, help: str, default: Any = None,
         type: Any = str, choices: list[str] | None = None) -> None:
    env = _env(flag)
    raw = os.environ.get(env)
    value = default
    if raw is not None and raw != "":
        try:
            value = type(raw)
        except ValueError:
            raise UsageError(f"{env}={raw!r} is not a valid value for {flag}") from None
    shown = f" (env {env}" + (f", default {default}" if default not in (None, "") else "") + ")"
    p.add_argument(flag, default=value, type=type, choices=choices, help=help + shown)


def _add_flag(p: argparse.ArgumentParser, flag: str, help: str) -> None:
    env = _env(flag)
    default = os.environ.get(env, "").lower() in ("1", "true", "yes", "on")
    p.add_argument(flag, action="store_true", default=default, help=f"{help} (env {env})")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="paxoskv", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"paxoskv {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run one node")
    _add(s, "--node-id", "this node's id (>= 1; derived from POD_NAME with --statefulset)",
         type=int)
    _add(s, "--listen", "address to listen on, HOST:PORT", "0.0.0.0:7000")
    _add(s, "--peers", "every node as ID=URL,... (this one included)")
    _add(s, "--hosts", "hosts file (YAML, or TOML by .toml suffix) naming nodes and roles")
    _add_flag(s, "--statefulset", "derive peers from POD_NAME and StatefulSet DNS")
    _add(s, "--replicas", "StatefulSet mode: epoch 0's acceptors, ordinals 0..N-1 (a data "
         "directory that holds a later acceptor set uses that)", type=int)
    _add(s, "--max-replicas", "StatefulSet mode: ordinals the peer list names, 0..N-1; those "
         "from --replicas on wait, voting for nothing, until a change adds them (default: "
         "--replicas)", type=int)
    _add_flag(s, "--follow-replicas", "StatefulSet mode: follow the StatefulSet's "
              "spec.replicas (Kubernetes API, in-cluster service account) with the acceptor "
              "set, one acceptor at a time")
    _add(s, "--service", "StatefulSet mode: headless Service name")
    _add(s, "--namespace", "StatefulSet mode: namespace (else POD_NAMESPACE)")
    _add(s, "--cluster-domain", "StatefulSet mode: cluster DNS domain", "cluster.local")
    _add(s, "--peer-listen", "serve peer traffic (/internal/) on this HOST:PORT only, not on "
         "--listen; peers' URLs must then name this port")
    _add_flag(s, "--peer-on-client-port", "with --peer-listen: serve the peer endpoints on "
              "the client port too (only while moving a running cluster to a peer port)")
    _add(s, "--metrics-listen", "serve /metrics on this HOST:PORT only, not on --listen")
    _add(s, "--max-connections", "open client connections at most; more are answered 503 and "
         "closed", 1000, type=int)
    _add(s, "--max-requests-inflight", "client requests handled at once; more are answered "
         "503 with Retry-After", 500, type=int)
    _add(s, "--max-body-bytes-inflight", "bytes of client request bodies read or handled at "
         "once; more are answered 503 with Retry-After", 64 * 1024 * 1024, type=int)
    _add(s, "--header-timeout", "seconds a client has to send a request's headers, and again "
         "its body; then the connection is closed (408 for a body)", 10.0, type=float)
    _add(s, "--idle-timeout", "seconds a kept-alive client connection may sit idle", 60.0,
         type=float)
    _add(s, "--tls-cert-file", "PEM certificate (chain) of this node: HTTPS on the client and "
         "peer ports, presented to peers it dials; reloaded when the file changes")
    _add(s, "--tls-key-file", "PEM private key of --tls-cert-file")
    _add(s, "--tls-ca-file", "PEM cluster CA: peers' certificates must chain to it, and with "
         "--peer-listen the peer port requires one (mutual TLS)")
    _add(s, "--peer-port", "StatefulSet mode: peers' port (default: the --peer-listen port, "
         "else the listen port)", type=int)
    _add(s, "--dns-timeout", "StatefulSet mode: seconds to wait for the DNS names of the "
         "acceptors of the config the node holds", 120.0, type=float)
    _add(s, "--data-dir", "directory for the acceptor's durable state", "./data")
    _add(s, "--cluster-id", "cluster name, checked against the data directory and peers",
         "paxoskv")
    _add(s, "--peer-secret-file", "file holding the shared peer secret "
         "(or set PAXOSKV_PEER_SECRET)")
    _add(s, "--auth", "client authentication: none (anyone reaching the port may do "
         "anything), or token (bearer tokens from --token-file; docs/security.md)", "none",
         choices=["none", "token"])
    _add(s, "--token-file", "with --auth token: JSON file of hashed tokens, re-read when it "
         "changes (paxoskv token new makes entries)")
    _add_flag(s, "--metrics-auth", "with --auth token: /metrics needs a token too (any role); "
              "otherwise it stays open like /healthz and /readyz")
    _add(s, "--token-rate-limit", "with --auth token: R[/BURST], requests a second (and at "
         "once) each token may make on this node unless its token-file entry has its own "
         "rate; beyond it 429 with Retry-After (default: no limit)")
    _add(s, "--max-value-bytes", "largest value accepted", 1024 * 1024, type=int)
    _add(s, "--cache-bytes", "memory mapped for recently used key states (values live on "
         "disk; 0: no cache)", 64 * 1024 * 1024, type=int)
    _add(s, "--request-timeout", "seconds before a client call ends as 503/504", 5.0,
         type=float)
    _add(s, "--phase-timeout", "seconds one Paxos phase waits for a quorum", 1.0, type=float)
    _add(s, "--peer-timeout", "seconds one peer HTTP request may take", 2.0, type=float)
    _add(s, "--phase1-skip-lifetime", "seconds a key's next ballot stays prepared for a "
         "one-round-trip write after its last one; a rejoin's fence outlasts it", 60.0,
         type=float)
    _add(s, "--peer-transport", "how batches travel to peers: one WebSocket per peer, or "
         "one HTTP POST each", "channel", choices=["channel", "http"])
    _add(s, "--heartbeat-interval", "seconds between heartbeats to each peer", 0.5, type=float)
    _add(s, "--repair-interval", "seconds between background repair sweeps", 30.0, type=float)
    _add(s, "--repair-rate", "keys per second the repair sweep checks", 100.0, type=float)
    _add(s, "--tombstone-grace", "seconds a deleted key's tombstone is kept before its row is "
         "collected from every acceptor (docs/gc.md); 0: kept for ever", 86400.0, type=float)
    _add(s, "--drain-seconds", "after SIGTERM, seconds to keep serving while not ready", 0.0,
         type=float)
    _add(s, "--idempotency-window", "seconds an Idempotency-Key's outcome is kept",
         86400.0, type=float)
    _add_flag(s, "--rejoin", "bring back a node that lost its data directory (README)")
    _add_flag(s, "--rejoin-after-quorum-loss", "with --rejoin: a majority of acceptors lost "
              "their disks; rejoin from whatever survived (README)")
    _add_flag(s, "--rejoin-accept-old-copy", "with --rejoin-after-quorum-loss: rebuild even "
              "on a data directory older than the tombstone grace, though a key deleted and "
              "collected since may come back (docs/recovery.md)")
    _add(s, "--forward-writes", "send each client write to its key's preferred proposer",
         "on", choices=["on", "off"])
    _add(s, "--fast-paxos", "try each write as a one-round-trip Fast Paxos round from this "
         "node (needs every acceptor up; pair with --forward-writes off; docs/fast-paxos.md)",
         "off", choices=["on", "off"])
    _add(s, "--replication-factor", "each key lives on this many acceptors, chosen by "
         "rendezvous hashing (at least 3; every node the same; pinned at the first start; "
         "default: every acceptor; docs/groups.md)", None, type=int)
    _add(s, "--event-loop", "asyncio event loop: uvloop (libuv, faster) or the standard "
         "library's", "uvloop", choices=["uvloop", "asyncio"])
    _add(s, "--log-format", "log format", "text", choices=["text", "json"])
    _add(s, "--log-level", "log level", "info",
         choices=["debug", "info", "warning", "error"])

    lc = sub.add_parser("local-cluster", help="run N nodes on loopback for development")
    _add(lc, "--nodes", "number of nodes", 3, type=int)
    _add(lc, "--base-port", "node i listens on base-port + i - 1 (node 1 on the clients' "
         "default port)", 7000, type=int)
    _add(lc, "--data-dir", "parent directory of the nodes' data directories",
         "./data/local-cluster")
    _add(lc, "--host", "loopback address to bind", "127.0.0.1")
    _add(lc, "--log-format", "log format", "text", choices=["text", "json"])
    _add_flag(lc, "--demo", "once the nodes are ready, show a put, a get and a compare-and-set")
    _add_flag(lc, "--exit-after-demo", "stop the cluster after the demo (for scripts and CI)")

    for name, helptext in (("put", "set a key (value from argument or - for stdin)"),
                           ("get", "read a key"), ("delete", "delete a key"),
                           ("renew", "give a TTL key a new expiry (docs/ttl.md)"),
                           ("list", "list keys by prefix"),
                           ("range", "read keys with their values and versions by prefix"),
                           ("delete-prefix", "delete every key under a prefix, one by one "
                            "(not atomic; admin token)"),
                           ("backup", "write every live key, value and version to a file "
                            "(docs/backup.md)"),
                           ("restore", "create the keys of a backup file in a cluster"),
                           ("status", "node status"),
                           ("watch", "print changes of a key (or --prefix) as JSON lines; "
                            "reconnects and resumes")):
        c = sub.add_parser(name, help=helptext)
        url_env = _env("--url")
        c.add_argument("--url", action="append", metavar="URL[,URL...]",
                       help="node URL; repeat it or separate URLs with commas to give "
                       "several nodes: a call that gets no answer, or 503, moves on to the "
                       f"next (env {url_env}, default {DEFAULT_CLIENT_URL})")
        _add(c, "--timeout", "seconds one try may take", 10.0, type=float)
        _add(c, "--retries", "tries in all for one call (1: no retry)", 8, type=int)
        _add(c, "--retry-timeout", "seconds after which no new try starts", 30.0,
             type=float)
        out_env = _env("--output")
        c.add_argument("-o", "--output", choices=OUTPUTS,
                       default=os.environ.get(out_env) or None,
                       help="json, or table (aligned text); default: the value itself for "
                       f"get, JSON for the others (env {out_env})")
        _add(c, "--token", "bearer token for a server run with --auth token")
        _add(c, "--cacert", "PEM CA to verify an https:// --url against (default: the "
             "system's CAs)")
        _add(c, "--cert", "PEM client certificate, where the server asks for one")
        _add(c, "--key", "PEM key of --cert")
        if name in ("put", "get", "delete", "renew"):
            c.add_argument("key")
        if name == "put":
            c.add_argument("value")
            c.add_argument("--if-match", type=int, help="compare-and-set on this version")
            c.add_argument("--if-none-match", action="store_true", help="create only")
            c.add_argument("--ttl", help="expire the key this long after the write: 30s, "
                           "1500ms, 5m, 2h, 1d (docs/ttl.md)")
        if name == "renew":
            c.add_argument("--ttl", required=True, help="the new TTL, counted from now")
            c.add_argument("--if-match", type=int, help="renew only at this version")
        if name == "delete":
            c.add_argument("--if-match", type=int, help="delete only at this version")
        if name in ("put", "delete", "renew"):
            c.add_argument("--idempotency-key", metavar="KEY",
                           help="the write's Idempotency-Key (default: a new one, kept for "
                           "this call's retries); give the same KEY when re-running a "
                           "command whose outcome was unknown, to apply it at most once")
        if name == "get":
            c.add_argument("--stale", action="store_true", help="read one replica")
        if name == "watch":
            c.add_argument("key", nargs="?")
            c.add_argument("--prefix", help="watch every key under this prefix")
            c.add_argument("--count", type=int, help="exit after this many events")
        if name == "list":
            c.add_argument("--prefix", default="")
            c.add_argument("--limit", type=int, default=1000)
            c.add_argument("--cursor", help="continue a listing where the previous page "
                           "ended (its \"next\")")
        if name == "range":
            c.add_argument("--prefix", default="")
            c.add_argument("--limit", type=int, default=100,
                           help="keys in the page, 1-1000 (the server may return fewer: it "
                           "bounds a page's bytes and time too)")
            c.add_argument("--cursor", help="continue where the previous page ended (its "
                           "\"next\")")
            c.add_argument("--stale", action="store_true", help="read each key from one "
                           "replica")
        if name == "delete-prefix":
            c.add_argument("--prefix", required=True,
                           help="delete the keys starting with this ('' needs --all)")
            c.add_argument("--all", action="store_true", dest="all_keys",
                           help="allow the empty prefix: delete every key")
        if name == "backup":
            c.add_argument("--out", required=True, metavar="FILE", help="the backup file")
            c.add_argument("--prefix", default="", help="only keys starting with this")
            c.add_argument("--resume", action="store_true", help="continue an unfinished "
                           "FILE after its last complete record")
            c.add_argument("--no-count", action="store_true", help="skip the first pass "
                           "that counts keys (no ETA then)")
        if name == "restore":
            c.add_argument("--in", required=True, dest="in_file", metavar="FILE",
                           help="a backup file (checked whole before anything is written)")
            c.add_argument("--force", action="store_true", help="restore into a cluster "
                           "that already holds keys (existing keys are skipped, never "
                           "overwritten)")

    comp = sub.add_parser("completion", help="print a shell completion script: "
                          "eval \"$(paxoskv completion bash)\" (or zsh)")
    comp.add_argument("shell", choices=["bash", "zsh"])

    t = sub.add_parser("token", help="make client tokens for --auth token")
    tsub = t.add_subparsers(dest="token_command", required=True)
    tn = tsub.add_parser("new", help="print a new random token once, and its token-file "
                         "entry (only the hash is stored)")
    tn.add_argument("--name", required=True, help="unique name (for rotation and revocation)")
    tn.add_argument("--role", required=True, choices=["read", "write", "admin"],
                    help="read: GET; write: also PUT/DELETE; admin: also the full /v1/status")
    tn.add_argument("--prefix", action="append", dest="prefixes", metavar="PREFIX",
                    help="limit the token to keys starting with PREFIX (repeatable; "
                    "default: every key)")
    tn.add_argument("--rate", metavar="R[/BURST]|unlimited",
                    help="the token's own rate limit on each node: R requests a second, "
                    "BURST at once (default ceil(R)); unlimited: exempt from "
                    "--token-rate-limit (default: the server's --token-rate-limit)")
    tn.add_argument("--file", help="append the entry to this token file (created if "
                    "missing; replaced atomically, so a running server reads it whole)")
    return parser


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": round(record.created, 3), "level": record.levelname.lower(),
                 "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def _setup_logging(fmt: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def _parse_listen(text: str, flag: str = "--listen") -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"{flag} {text!r} must be HOST:PORT")
    return host or "0.0.0.0", int(port)


def _serve(args: argparse.Namespace) -> int:
    from paxoskv.api.guard import GuardLimits
    from paxoskv.config import NodeConfig
    from paxoskv.discovery.peers import (
        DiscoveryError,
        parse_hosts_file,
        parse_peers,
        statefulset_name,
        statefulset_peers,
    )
    from paxoskv.limits import Limits
    from paxoskv.scaler import ScalerOptions, kube_client_available
    from paxoskv.server import ServeOptions, serve

    _setup_logging(args.log_format, args.log_level)
    host, port = _parse_listen(args.listen)
    peer_listen = _parse_listen(args.peer_listen, "--peer-listen") if args.peer_listen else None
    metrics_listen = (_parse_listen(args.metrics_listen, "--metrics-listen")
                      if args.metrics_listen else None)
    ports = [port] + [where[1] for where in (peer_listen, metrics_listen) if where]
    if len(set(ports)) != len(ports):
        raise UsageError("--listen, --peer-listen and --metrics-listen need distinct ports")
    tls = None
    if args.tls_cert_file or args.tls_key_file or args.tls_ca_file:
        if not (args.tls_cert_file and args.tls_key_file):
            raise UsageError("TLS needs both --tls-cert-file and --tls-key-file")
        from paxoskv.tls import TlsFiles
        tls = TlsFiles(Path(args.tls_cert_file), Path(args.tls_key_file),
                       Path(args.tls_ca_file) if args.tls_ca_file else None)
        for path in (tls.cert, tls.key, tls.ca):
            if path is not None and not path.is_file():
                raise UsageError(f"TLS file {path} does not exist")
    if args.peer_on_client_port and not peer_listen:
        raise UsageError("--peer-on-client-port needs --peer-listen (without it the peer "
                         "endpoints are on the client port anyway)")
    sources = sum(bool(x) for x in (args.peers, args.hosts, args.statefulset))
    if sources > 1:
        raise UsageError("give only one of --peers, --hosts and --statefulset")
    node_id = args.node_id
    scaler: ScalerOptions | None = None
    if (args.max_replicas or args.follow_replicas) and not args.statefulset:
        raise UsageError("--max-replicas and --follow-replicas need --statefulset")
    try:
        if args.statefulset:
            pod = os.environ.get("POD_NAME", "")
            namespace = args.namespace or os.environ.get("POD_NAMESPACE", "")
            if not (pod and args.replicas and args.service and namespace):
                raise UsageError("--statefulset needs POD_NAME, --replicas, --service and "
                                 "--namespace (or POD_NAMESPACE)")
            node_id, peers = statefulset_peers(pod, args.replicas, args.service, namespace,
                                               args.cluster_domain, args.peer_port or (
                                                   peer_listen[1] if peer_listen else port),
                                               scheme="https" if tls else "http",
                                               max_replicas=args.max_replicas)
            if args.follow_replicas:
                if not kube_client_available():
                    raise UsageError("--follow-replicas needs the kubernetes package "
                                     "(pip install 'paxoskv[k8s]'; the image has it)")
                scaler = ScalerOptions(statefulset_name(pod), namespace,
                                       args.max_replicas or args.replicas)
        elif args.hosts:
            peers = parse_hosts_file(Path(args.hosts))
        elif args.peers:
            peers = parse_peers(args.peers)
        else:
            if node_id is None:
                node_id = 1
            peers = parse_peers(f"{node_id}={'https' if tls else 'http'}://127.0.0.1:"
                                f"{peer_listen[1] if peer_listen else port}")
    except DiscoveryError as exc:
        raise UsageError(str(exc)) from None
    if node_id is None:
        raise UsageError("--node-id is required with --peers or --hosts")
    plain = sorted(pid for pid, p in peers.items() if not p.url.startswith("https://"))
    if tls and plain and len(peers) > 1:
        # This node's peer port speaks TLS, so theirs do too: a plain URL cannot work.
        raise UsageError(f"with --tls-cert-file, peer URLs must be https:// (nodes {plain})")
    secret = os.environ.get("PAXOSKV_PEER_SECRET", "")
    if args.peer_secret_file:
        try:
            secret = Path(args.peer_secret_file).read_text().strip()
        except OSError as exc:
            raise UsageError(f"--peer-secret-file: {exc}") from None
    if not 0 < args.idempotency_window < float("inf"):
        raise UsageError("--idempotency-window must be a positive number of seconds")
    if len(peers) > 1 and not secret:
        raise UsageError("set a peer secret: PAXOSKV_PEER_SECRET or --peer-secret-file")
    tokens = _token_store(args)
    try:
        guard = GuardLimits(args.max_connections, args.max_requests_inflight,
                            args.header_timeout, args.idle_timeout,
                            args.max_body_bytes_inflight).validate()
        limits = Limits(value_bytes_max=args.max_value_bytes,
                        storage_cache_bytes=args.cache_bytes).validate()
        config = NodeConfig(
            node_id=node_id, peers=peers, cluster_id=args.cluster_id,
            request_timeout_s=args.request_timeout, phase_timeout_s=args.phase_timeout,
            heartbeat_interval_s=args.heartbeat_interval,
            heartbeat_timeout_s=max(args.heartbeat_interval * 2, 0.2),
            repair_interval_s=args.repair_interval, repair_keys_per_second=args.repair_rate,
            peer_timeout_s=args.peer_timeout, rejoin=args.rejoin,
            phase1_skip_lifetime_s=args.phase1_skip_lifetime,
            tombstone_grace_s=args.tombstone_grace,
            forward_writes=args.forward_writes == "on",
            fast_paxos=args.fast_paxos == "on",
            rejoin_after_quorum_loss=args.rejoin_after_quorum_loss,
            rejoin_accept_old_copy=args.rejoin_accept_old_copy, limits=limits,
            replication_factor=args.replication_factor)
    except ValueError as exc:
        raise UsageError(str(exc)) from None

    async def main() -> None:
        await serve(ServeOptions(config, host, port, Path(args.data_dir),
                                 secret or secrets.token_hex(16),
                                 peer_timeout_s=args.peer_timeout,
                                 drain_s=max(0.0, args.drain_seconds),
                                 idempotency_window_s=args.idempotency_window,
                                 peer_transport=args.peer_transport,
                                 peer_listen=peer_listen, metrics_listen=metrics_listen,
                                 peer_on_client_port=args.peer_on_client_port, tls=tls,
                                 guard=guard, tokens=tokens, metrics_auth=args.metrics_auth,
                                 dns_timeout_s=args.dns_timeout if args.statefulset else None,
                                 scaler=scaler))

    with asyncio.Runner(loop_factory=loop_factory(args.event_loop)) as runner:
        runner.run(main())
    return 0


def _token_store(args: argparse.Namespace) -> TokenStore | None:
    """Read the token file before anything listens: a server told to check tokens must
    never serve without them."""
    from paxoskv.auth import TokenFileError, TokenStore, parse_rate

    if args.auth == "none":
        if args.token_file:
            raise UsageError("--token-file needs --auth token (with --auth none every "
                             "client may do anything)")
        if args.metrics_auth:
            raise UsageError("--metrics-auth needs --auth token")
        if args.token_rate_limit:
            raise UsageError("--token-rate-limit needs --auth token (with --auth none there "
                             "is no token to count requests against)")
        return None
    if not args.token_file:
        raise UsageError("--auth token needs --token-file (make entries with "
                         "paxoskv token new)")
    try:
        default_rate = parse_rate(args.token_rate_limit) if args.token_rate_limit else None
    except ValueError as exc:
        raise UsageError(f"--token-rate-limit: {exc}") from None
    try:
        store = TokenStore(Path(args.token_file), default_rate=default_rate)
    except TokenFileError as exc:
        raise UsageError(f"--token-file: {exc}") from None
    if not store.tokens:
        logging.getLogger(__name__).warning(
            "auth: %s lists no token: every client request is refused until one is added",
            args.token_file)
    return store


def _token_command(args: argparse.Namespace) -> int:
    from paxoskv.auth import (
        UNLIMITED,
        Rate,
        TokenFileError,
        new_token,
        parse_rate,
        read_token_file,
        token_entry,
    )

    rate: Rate | Literal["unlimited"] | None = None
    if args.rate == UNLIMITED:
        rate = UNLIMITED
    elif args.rate:
        try:
            rate = parse_rate(args.rate)
        except ValueError as exc:
            raise UsageError(f"--rate: {exc} (or unlimited)") from None
    token = new_token()
    try:
        entry = token_entry(args.name, args.role, token, args.prefixes, rate)
    except TokenFileError as exc:
        raise UsageError(str(exc).removeprefix("new entry: ")) from None
    if args.file:
        path = Path(args.file)
        try:
            existing = read_token_file(path) if path.exists() else ()
            if any(e.name == args.name for e in existing):
                raise UsageError(f"{path} already has a token named {args.name!r}: pick "
                                 "another name, or remove the old entry to rotate it")
            doc = orjson.loads(path.read_bytes()) if path.exists() else {"tokens": []}
        except (TokenFileError, OSError) as exc:
            raise UsageError(f"--file: {exc}") from None
        doc["tokens"].append(entry)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
            # a new file is private; an existing one keeps its mode (the server may run as
            # another user in the file's group)
            os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o600)
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise UsageError(f"--file: cannot write {path}: {exc}") from None
        print(f"added {args.name!r} ({args.role}) to {path}", file=sys.stderr)
    else:
        print("add this entry to the token file's \"tokens\" list:", file=sys.stderr)
        print(json.dumps(entry), file=sys.stderr)
    print("the token (shown once; only its hash is stored):", file=sys.stderr)
    print(token)
    return 0


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop runs the same asyncio code on libuv; its sockets, timers and futures cost
    less CPU per peer message and per client request than the standard loop's."""
    if name == "asyncio":
        return None
    import uvloop

    return uvloop.new_event_loop


def _local_cluster(args: argparse.Namespace) -> int:
    if not 1 <= args.nodes <= 9:
        raise UsageError("--nodes must be within 1..9")
    base = Path(args.data_dir)
    if not 0 < args.base_port <= 65536 - args.nodes:
        raise UsageError("--base-port must leave room for --nodes ports below 65536")
    urls = {i: f"http://{args.host}:{args.base_port + i - 1}"
            for i in range(1, args.nodes + 1)}
    peers = ",".join(f"{i}={u}" for i, u in urls.items())
    env = dict(os.environ)
    env.setdefault("PAXOSKV_PEER_SECRET", secrets.token_hex(16))
    children: list[subprocess.Popen[bytes]] = []
    for i, url in urls.items():
        cmd = [sys.executable, "-m", "paxoskv", "serve", "--node-id", str(i),
               "--listen", f"{args.host}:{args.base_port + i - 1}", "--peers", peers,
               "--data-dir", str(base / f"node{i}"), "--log-format", args.log_format]
        children.append(subprocess.Popen(cmd, env=env))
        print(f"node {i}: {url}  (data {base / f'node{i}'}, pid {children[-1].pid})",
              flush=True)
    print(f"clients: export PAXOSKV_URL={','.join(urls.values())}", flush=True)
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        if args.demo or args.exit_after_demo:
            _demo(urls)
            if args.exit_after_demo:
                stopping = True
        if not stopping:
            print("cluster running; Ctrl-C to stop", flush=True)
        while not stopping:
            for child in children:
                if child.poll() is not None:
                    print(f"node pid {child.pid} exited with {child.returncode}", flush=True)
                    stopping = True
            time.sleep(0.2)
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for child in children:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        print("cluster stopped", flush=True)
    return 0


def _wait_ready(url: str, timeout_s: float) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=1) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise UsageError(f"{url} not ready after {timeout_s:.0f}s; see the node logs above")
        time.sleep(0.2)


def _demo(urls: dict[int, str]) -> None:
    """A short transcript against the running cluster, with the curl line for each step."""
    from paxoskv.client import HttpClient as Client  # shows each answer, 412 included

    for url in urls.values():
        _wait_ready(url, 30)
    first, second = urls[1], urls[len(urls)]
    print("\n--- demo ---", flush=True)

    def show(curl: str, res_status: int, body: bytes, etag: int | None) -> None:
        text = body.decode("utf-8", errors="replace")
        print(f"$ {curl}\n  -> {res_status} ETag={etag} {text}", flush=True)

    a, b = Client(first), Client(second)
    r = a.put("demo/greeting", b"hello")
    show(f"curl -X PUT --data hello {first}/v1/kv/demo/greeting", r.status, r.body, r.version)
    r = b.get("demo/greeting")
    show(f"curl {second}/v1/kv/demo/greeting   # another node", r.status, r.body, r.version)
    v = r.version
    r = a.put("demo/greeting", b"hello, paxos", if_match=v)
    show(f"curl -X PUT -H 'If-Match: \"{v}\"' --data 'hello, paxos' {first}/v1/kv/demo/greeting",
         r.status, r.body, r.version)
    r = b.put("demo/greeting", b"lost update", if_match=v)
    show(f"curl -X PUT -H 'If-Match: \"{v}\"' --data 'lost update' {second}/v1/kv/demo/greeting"
         "   # stale version", r.status, r.body, r.version)
    r = b.get("demo/greeting")
    show(f"curl {second}/v1/kv/demo/greeting", r.status, r.body, r.version)
    a.close()
    b.close()
    print("--- demo done ---\n", flush=True)


def _client_urls(args: argparse.Namespace) -> list[str]:
    """--url (repeatable, each may be a comma-separated list), else PAXOSKV_URL, else the
    default."""
    from paxoskv.client import ClientError, parse_endpoints

    given = args.url or [os.environ.get(_env("--url")) or DEFAULT_CLIENT_URL]
    try:
        return parse_endpoints(given)
    except ClientError as exc:
        raise UsageError(f"--url: {exc}") from None


EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_UNKNOWN = 1, 3, 4
"""Client command exit codes (2 is bad usage): the server said no; no node could be
reached; a write may or may not have taken effect."""


def _client_command(args: argparse.Namespace) -> int:
    from paxoskv.client import (
        Client,
        ClientError,
        PaxosKVError,
        Retry,
        UnknownOutcome,
        new_idempotency_key,
    )

    if args.output not in (None, *OUTPUTS):
        raise UsageError(f"{_env('--output')}={args.output!r}: output must be json or table")
    if not args.timeout > 0 or args.retries < 1 or args.retry_timeout < 0:
        raise UsageError("--timeout must be > 0, --retries >= 1, --retry-timeout >= 0")
    urls = _client_urls(args)
    if args.command in ("backup", "restore"):
        return _backup_command(args, urls)
    # one key for all of this write's tries, known here so an unknown outcome can name it
    idem = (args.idempotency_key or new_idempotency_key()
            if args.command in ("put", "delete", "renew") else None)
    try:
        client = Client(endpoints=urls, timeout_s=args.timeout, token=args.token,
                        ca_file=args.cacert, cert_file=args.cert, key_file=args.key,
                        retry=Retry(attempts=args.retries, total_s=args.retry_timeout))
    except (ClientError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    if args.command == "watch":
        from paxoskv.watch_client import watch_command
        try:
            return watch_command(client, args.key, args.prefix, args.count)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        finally:
            client.close()
    try:
        if args.command == "put":
            value = sys.stdin.buffer.read() if args.value == "-" else args.value.encode()
            res = client.put(args.key, value, args.if_match, args.if_none_match,
                             idempotency_key=idem, ttl=args.ttl)
        elif args.command == "renew":
            res = client.renew(args.key, args.ttl, args.if_match, idempotency_key=idem)
        elif args.command == "get":
            res = client.get(args.key, args.stale)
        elif args.command == "delete":
            res = client.delete(args.key, args.if_match, idempotency_key=idem)
        elif args.command == "list":
            res = client.list(args.prefix, args.limit, args.cursor)
        elif args.command == "range":
            page = client.range(args.prefix, args.limit, args.cursor, args.stale)
            _print_doc(args, {"items": [_value_doc(i.key, i.version, i.value)
                                        for i in page.items], "next": page.next})
            return 0
        elif args.command == "delete-prefix":
            if not args.prefix and not args.all_keys:
                raise UsageError("--prefix '' deletes every key: add --all to mean it")
            deleted = client.delete_prefix(args.prefix, args.all_keys)
            _print_doc(args, {"prefix": args.prefix, "deleted": deleted})
            return 0
        else:
            res = client.status()
    except ClientError as exc:
        print(f"paxoskv: cannot reach {', '.join(urls)} (last error: {exc})", file=sys.stderr)
        return EXIT_UNREACHABLE
    except PaxosKVError as exc:
        print(f"paxoskv: {exc}", file=sys.stderr)
        if isinstance(exc, UnknownOutcome):
            if args.command in ("put", "delete", "renew"):
                print("paxoskv: the write may or may not have taken effect; read the key, or "
                      f"run it again with --idempotency-key {idem} (within the server's "
                      "--idempotency-window) to apply it at most once", file=sys.stderr)
            return EXIT_UNKNOWN
        return EXIT_REFUSED
    finally:
        client.close()
    _print_result(args, res.body, res.version, res.json if res.body else dict)
    return 0


def _print_result(args: argparse.Namespace, body: bytes, version: int | None,
                  parse: Callable[[], Any]) -> None:
    """A command's answer as the value (get), JSON or a table."""
    out = args.output
    if args.command == "get":
        if out is None:
            sys.stdout.buffer.write(body)
            if sys.stdout.isatty():
                sys.stdout.write("\n")
            print(f"version {version}", file=sys.stderr)
            return
        doc: Any = _value_doc(args.key, version, body)
    elif args.command == "delete":
        if out is None:
            print(f"deleted {args.key} (version {version})")
            return
        doc = {"key": args.key, "deleted": True, "version": version}
    else:
        doc = parse()
    _print_doc(args, doc)


def _value_doc(key: str, version: int | None, body: bytes) -> dict[str, Any]:
    """A key's JSON form: ``value`` when it is UTF-8 text, else ``value_base64``."""
    try:
        value: dict[str, Any] = {"value": body.decode("utf-8")}
    except UnicodeDecodeError:
        import base64
        value = {"value_base64": base64.b64encode(body).decode("ascii")}
    return {"key": key, "version": version, **value}


def _print_doc(args: argparse.Namespace, doc: Any) -> None:
    if args.output == "table":
        print(_table(args.command, doc))
    else:
        print(json.dumps(doc, indent=2, ensure_ascii=False))


def _backup_command(args: argparse.Namespace, urls: list[str]) -> int:
    """backup / restore: asyncio (restore keeps many writes in flight); every failure is
    one line on stderr and an exit code, never a traceback."""
    from paxoskv.backup import BackupError, backup, restore
    from paxoskv.client import AsyncClient, ClientError, PaxosKVError, Retry

    async def run() -> int:
        try:
            client = AsyncClient(endpoints=urls, timeout_s=args.timeout, token=args.token,
                                 ca_file=args.cacert, cert_file=args.cert, key_file=args.key,
                                 retry=Retry(attempts=args.retries,
                                             total_s=args.retry_timeout))
        except (ClientError, ValueError) as exc:
            raise UsageError(str(exc)) from None
        try:
            if args.command == "backup":
                out = Path(args.out)
                b = await backup(client, out, args.prefix, args.resume, not args.no_count,
                                 sys.stderr)
                _print_doc(args, {"file": str(out), "records": b.records,
                                  "written": b.written, "sha256": b.sha256,
                                  "seconds": round(b.seconds, 3)})
                return 0
            r = await restore(client, Path(args.in_file), args.force,
                              progress_stream=sys.stderr)
            for error in r.errors:
                print(f"paxoskv: restore failed for {error}", file=sys.stderr)
            _print_doc(args, {"file": args.in_file, "written": r.written,
                              "skipped": r.skipped, "failed": r.failed,
                              "replayed": r.replayed, "expired": r.expired})
            return EXIT_REFUSED if r.failed else 0
        finally:
            await client.close()

    def stopped(message: str, code: int,
                hint: str = "the backup stopped; run it again with --resume to continue"
                ) -> int:
        print(f"paxoskv: {message}", file=sys.stderr)
        if args.command == "backup":
            print(f"paxoskv: {hint}", file=sys.stderr)
        return code

    try:
        return asyncio.run(run())
    except BackupError as exc:
        return stopped(str(exc), EXIT_REFUSED,
                       "an unfinished backup file continues with --resume")
    except ClientError as exc:
        return stopped(f"cannot reach {', '.join(urls)} (last error: {exc})", EXIT_UNREACHABLE)
    except PaxosKVError as exc:
        return stopped(str(exc), EXIT_REFUSED)


def _table(command: str, doc: Any) -> str:
    """Aligned columns: the keys of a listing, or one row per field (nested fields joined
    with dots) for the rest."""
    if command == "list" and isinstance(doc, dict):
        rows = [("KEY",), *((str(k),) for k in doc.get("keys", []))]
        if doc.get("next"):
            rows.append((f"(more: --cursor {doc['next']})",))
        return "\n".join(r[0] for r in rows)
    if command == "range" and isinstance(doc, dict):
        cells = [("KEY", "VERSION", "VALUE")]
        for item in doc.get("items", []):
            shown = item["value"] if "value" in item else "base64:" + item["value_base64"]
            cells.append((str(item["key"]), str(item["version"]),
                          shown if len(shown) <= 60 else shown[:57] + "..."))
        widths = [max(len(c[i]) for c in cells) for i in range(2)]
        lines = [f"{k.ljust(widths[0])}  {v.ljust(widths[1])}  {val}" for k, v, val in cells]
        if doc.get("next"):
            lines.append(f"(more: --cursor {doc['next']})")
        return "\n".join(lines)
    flat: list[tuple[str, str]] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, list):
            flat.append((prefix, ", ".join(json.dumps(v) if isinstance(v, (dict, list))
                                           else str(v) for v in value)))
        else:
            flat.append((prefix, "" if value is None else str(value)))
    walk("", doc)
    width = max((len(k) for k, _ in flat), default=0)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in flat)


def main(argv: list[str] | None = None) -> int:
    try:
        args = _build_parser().parse_args(argv)
        if args.command == "serve":
            return _serve(args)
        if args.command == "local-cluster":
            return _local_cluster(args)
        if args.command == "token":
            return _token_command(args)
        if args.command == "completion":
            from paxoskv.completion import script

            print(script(_build_parser(), args.shell))
            return 0
        return _client_command(args)
    except UsageError as exc:
        print(f"paxoskv: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
