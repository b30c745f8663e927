"""Who the peers are: a --peers list, a hosts file, or StatefulSet DNS names.

Discovery only names the configured members; the quorum always comes from that configured
acceptor set (docs/design.md invariant 3), never from who happens to answer.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from paxoskv.config import ALL_ROLES, PeerSpec, Role

__all__ = ["DiscoveryError", "parse_hosts_file", "parse_peers", "statefulset_name",
           "statefulset_peers", "wait_for_dns"]

log = logging.getLogger(__name__)


class DiscoveryError(ValueError):
    """The peer configuration is unusable; the message says what to fix."""


def _check_url(url: str, where: str) -> str:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname or parsed.port is None:
        raise DiscoveryError(f"{where}: {url!r} is not a URL like http://host:port")
    return url.rstrip("/")


def parse_peers(text: str) -> dict[int, PeerSpec]:
    """Parse ``1=http://127.0.0.1:7001,2=http://...`` (every node, this one included)."""
    peers: dict[int, PeerSpec] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        ident, sep, url = item.partition("=")
        if not sep or not ident.strip().isdigit():
            raise DiscoveryError(f"--peers: {item!r} is not ID=URL")
        node_id = int(ident)
        if node_id < 1:
            raise DiscoveryError("--peers: node ids start at 1")
        if node_id in peers:
            raise DiscoveryError(f"--peers: node id {node_id} appears twice")
        peers[node_id] = PeerSpec(node_id, _check_url(url.strip(), "--peers"))
    if not peers:
        raise DiscoveryError("--peers is empty")
    return peers


def _roles(raw: Any, where: str) -> frozenset[Role]:
    if raw is None:
        return ALL_ROLES
    if not isinstance(raw, list) or not raw:
        raise DiscoveryError(f"{where}: roles must be a non-empty list")
    roles: set[Role] = set()
    for r in raw:
        if r not in ALL_ROLES:
            raise DiscoveryError(f"{where}: unknown role {r!r} (proposer, acceptor, learner)")
        roles.add(r)
    return frozenset(roles)


def parse_hosts_file(path: Path) -> dict[int, PeerSpec]:
    """Read a YAML or TOML hosts file: ``nodes: [{id, url, roles, initial}]`` (``initial:
    false``: an acceptor that joins through an acceptor-set change, not at epoch 0)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise DiscoveryError(f"hosts file {path}: {exc.strerror}") from exc
    try:
        if path.suffix == ".toml":
            doc: Any = tomllib.loads(text)
        else:
            doc = yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise DiscoveryError(f"hosts file {path}: {exc}") from exc
    nodes = doc.get("nodes") if isinstance(doc, dict) else None
    if not isinstance(nodes, list) or not nodes:
        raise DiscoveryError(f"hosts file {path}: expected a non-empty list 'nodes'")
    peers: dict[int, PeerSpec] = {}
    for i, entry in enumerate(nodes):
        where = f"hosts file {path}: nodes[{i}]"
        if not isinstance(entry, dict):
            raise DiscoveryError(f"{where} must be a table/mapping")
        node_id, url = entry.get("id"), entry.get("url")
        if not isinstance(node_id, int) or node_id < 1:
            raise DiscoveryError(f"{where}: id must be an integer >= 1")
        if not isinstance(url, str):
            raise DiscoveryError(f"{where}: url must be a string")
        if node_id in peers:
            raise DiscoveryError(f"{where}: node id {node_id} appears twice")
        initial = entry.get("initial", True)
        if not isinstance(initial, bool):
            raise DiscoveryError(f"{where}: initial must be true or false")
        peers[node_id] = PeerSpec(node_id, _check_url(url, where),
                                  _roles(entry.get("roles"), where), initial)
    return peers


_POD = re.compile(r"^(?P<set>[a-z0-9]([-a-z0-9]*[a-z0-9])?)-(?P<ordinal>\d+)$")


def statefulset_peers(
    pod_name: str, replicas: int, service: str, namespace: str, domain: str, port: int,
    scheme: str = "http", max_replicas: int | None = None,
) -> tuple[int, dict[int, PeerSpec]]:
    """Node id (ordinal + 1) and every peer's DNS URL, from the pod's own name.

    Ordinals ``0..replicas-1`` are epoch 0's acceptors; ``replicas..max_replicas-1`` are
    acceptors marked ``initial: false`` (like in a hosts file): pods the StatefulSet may
    get when scaled, each waiting, voting for nothing, until an acceptor-set change adds
    it (paxoskv/scaler.py). A pod that does not exist costs a backed-off hello now and then.
    """
    match = _POD.match(pod_name)
    if not match:
        raise DiscoveryError(f"POD_NAME {pod_name!r} is not <statefulset>-<ordinal>")
    if replicas < 1:
        raise DiscoveryError("replica count must be at least 1")
    most = replicas if max_replicas is None else max_replicas
    if most < replicas:
        raise DiscoveryError(f"--max-replicas {most} is below --replicas {replicas}")
    ordinal = int(match["ordinal"])
    if ordinal >= most:
        raise DiscoveryError(
            f"pod ordinal {ordinal} is outside the {most} ordinals the peer list names "
            "(--max-replicas): raise it (every pod must list the same peers) before scaling "
            "beyond it")
    name = match["set"]
    peers = {
        i + 1: PeerSpec(i + 1, f"{scheme}://{name}-{i}.{service}.{namespace}.svc.{domain}:{port}",
                        initial=i < replicas)
        for i in range(most)
    }
    return ordinal + 1, peers


def statefulset_name(pod_name: str) -> str:
    """The StatefulSet a pod belongs to: its name less the ``-<ordinal>`` suffix."""
    match = _POD.match(pod_name)
    if not match:
        raise DiscoveryError(f"POD_NAME {pod_name!r} is not <statefulset>-<ordinal>")
    return match["set"]


async def wait_for_dns(peers: dict[int, PeerSpec], self_id: int, timeout_s: float,
                       interval_s: float = 2.0, only: Iterable[int] | None = None) -> None:
    """Wait (bounded, logged) until the peers' names resolve; DNS lags pod start. ``only``:
    the acceptors of the config the node holds, and only until a majority of them resolve
    (this node counts): a peer-list entry whose pod the StatefulSet does not have never
    resolves, nor does a pod a scale-down just deleted while the held config still names it;
    either held a restarting member for the whole timeout. A quorum is what the node needs
    to serve; the rest count as down until they resolve."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    wanted = set(peers) if only is None else set(only)
    pending = {pid: urlparse(p.url).hostname or "" for pid, p in peers.items()
               if pid != self_id and pid in wanted}
    if only is None:
        needed = len(pending)
    else:
        needed = len(wanted) // 2 + 1 - (1 if self_id in wanted else 0)
    resolved = 0
    while pending and resolved < needed:
        for pid, host in list(pending.items()):
            try:
                await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
                del pending[pid]
                resolved += 1
            except OSError:
                pass
        if not pending or resolved >= needed:
            break
        left = deadline - loop.time()
        if left <= 0:
            log.warning("DNS: %s still unresolved after %.0fs; starting anyway (peers count as "
                        "down until they resolve)", sorted(pending.values()), timeout_s)
            return
        log.info("DNS: waiting for %d more of the peer names %s, %.0fs left",
                 needed - resolved, ", ".join(sorted(pending.values())), left)
        await asyncio.sleep(min(interval_s, left))
    if pending:
        log.info("DNS: a majority of the acceptors resolves; starting (%s not yet: counted "
                 "down until they resolve)", ", ".join(sorted(pending.values())))
