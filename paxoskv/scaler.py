"""Follow a StatefulSet's replica count with the acceptor set (docs/reconfiguration.md,
"Scaling on Kubernetes").

The decisions are pure (``decide``, ``is_driver``) so they are tested without a cluster;
``Scaler`` is the thin adapter: every few seconds it reads ``spec.replicas`` (through a
``ReplicaSource``; ``KubeReplicas`` asks the Kubernetes API with the pod's service
account), and on the one node that drives it reads the change record by a round and hands
a target to the node's ``Reconfigurer``, which does the safe, resumable part. Nothing here
touches a vote: a wrong or stale replica count can only start a change the Reconfigurer
carries out safely, or none.

- Scale up: an ordinal's acceptor is added once its pod answers hellos (the install gives
  it the floors, so it must be up), one at a time, lowest id first.
- Scale down: the StatefulSet deletes the highest ordinals first; removing them from the
  config then is like losing those acceptors, which the quorum of the rest outlives.
- Above ``--max-replicas``: the pods cannot even start (the peer list does not name them);
  nothing is changed and the state says so.
- Below a quorum (``kubectl scale`` 3 -> 1, 5 -> 2): the pods are deleted first, fewer than
  a majority of the held config's acceptors are left, and no change can complete (each
  needs a quorum of the current set): none is started, the state is ``below_quorum`` until
  the StatefulSet is scaled back up.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

from paxoskv.core.errors import NoQuorum, Overloaded, UnknownOutcome
from paxoskv.core.reconfig import Config, RecordPhase, groups_keep_majorities
from paxoskv.reconfigure import ChangeFailed

if TYPE_CHECKING:
    from paxoskv.node import Node

__all__ = ["Decision", "KubeReplicas", "ReplicaSource", "Scaler", "ScalerOptions",
           "api_error_text", "below_quorum", "decide", "desired_set", "is_driver",
           "kube_client_available"]

log = logging.getLogger(__name__)

API_TIMEOUT_S: Final = 5.0


def desired_set(replicas: int) -> frozenset[int]:
    """The node ids of ordinals ``0..replicas-1`` (node id = ordinal + 1)."""
    return frozenset(range(1, replicas + 1))


def is_driver(self_id: int, members: frozenset[int], up: frozenset[int]) -> bool:
    """Whether this node drives: the lowest-id member of the config it holds that it sees
    up (itself included). Two nodes that disagree for a moment both drive: harmless (the
    record's CAS), only wasteful; a node outside the config never drives."""
    if self_id not in members:
        return False
    return self_id == min(m for m in members if m == self_id or m in up)


@dataclass(frozen=True, slots=True)
class Decision:
    state: str
    """One of ``metrics.SCALER_STATES``."""
    target: frozenset[int] | None = None
    """Start (or continue) a change to this acceptor set; None: nothing to start."""
    detail: str = ""


def decide(self_id: int, replicas: int, max_replicas: int, current: frozenset[int],
           stable: bool, up: frozenset[int]) -> Decision:
    """The change to start, given the StatefulSet's ``replicas``, the record's acceptor set
    (``current``: its target while a change is half done, ``stable`` False) and the peers
    that answer hellos (``up``). Acceptors past the replica count leave at once (their pods
    are gone or going); missing ones join only once their pod is up."""
    if replicas > max_replicas:
        return Decision("over_max", None, f"the StatefulSet has {replicas} replicas but the "
                        f"peer list names {max_replicas} (maxReplicas): pods beyond it cannot "
                        "start; raise maxReplicas first")
    if replicas < 1:
        return Decision("in_sync", None, "scaled to zero: the acceptor set is kept")
    desired = desired_set(replicas)
    joinable = {a for a in desired - current if a in up or a == self_id}
    target = frozenset((current & desired) | joinable)
    missing = sorted(desired - target)
    if not target:
        return Decision("waiting_for_pods", None, f"no pod of {sorted(desired)} answers yet")
    if target != current or not stable:
        return Decision("changing", target, f"acceptors {sorted(current)} -> {sorted(target)}"
                        + (f"; then {missing} once their pods answer" if missing else ""))
    if missing:
        return Decision("waiting_for_pods", None, f"waiting for pods of acceptors {missing} "
                        "to answer")
    return Decision("in_sync", None, f"acceptors {sorted(current)}")


def below_quorum(config: Config, replicas: int) -> Decision | None:
    """A ``below_quorum`` decision when the StatefulSet's pods (ordinals ``0..replicas-1``)
    leave fewer than a quorum of ``config``'s prepare or accept set: every acceptor-set
    change needs such a quorum, so starting one would only hang. With acceptor groups
    (docs/groups.md) every key's group needs a majority of its R members, and any R members
    may be some key's group: at most ``R - maj(R)`` of each set may be gone (one of any
    number for R = 3). None otherwise."""
    def enough(count: int) -> bool:
        running = desired_set(count)
        if config.grouped:
            assert config.replication is not None
            return all(groups_keep_majorities(side, config.replication, running)
                       for side in (config.prepare_set, config.accept_set))
        return (len(config.prepare_set & running) >= config.prepare_quorum
                and len(config.accept_set & running) >= config.accept_quorum)

    if enough(replicas):
        return None
    least = next(n for n in range(replicas + 1, max(config.members) + 1) if enough(n))
    return Decision("below_quorum", None,
                    f"the StatefulSet has {replicas} replicas, which leaves fewer than a quorum "
                    f"of the acceptors {sorted(config.members)}"
                    f"{' (of some key group)' if config.grouped else ''} a pod, so no "
                    f"acceptor-set change can complete; scale it back up to at least {least} "
                    "replicas (then down by "
                    f"{'one' if config.grouped else 'less than half of the acceptors'} "
                    "at a time)")


def api_error_text(exc: BaseException) -> str:
    """One stable line for a failed API read: an ``ApiException``'s status, reason and the
    Status object's message, never its headers (they change on every call, so a logged
    ``str(exc)`` was new each poll and "logged once" never held)."""
    status = getattr(exc, "status", None)
    if status is None:
        return f"{type(exc).__name__}: {exc}"
    text = f"{status} {getattr(exc, 'reason', '') or ''}".strip()
    body = getattr(exc, "body", None)
    if body:
        try:
            message = json.loads(body).get("message")
        except (ValueError, TypeError, AttributeError):
            message = None
        if isinstance(message, str) and message:
            text += f": {message}"
    return text


class ReplicaSource(Protocol):
    async def replicas(self) -> int:
        """The StatefulSet's ``spec.replicas`` now; raises on any failure."""
        ...


def kube_client_available() -> bool:
    """Whether the ``kubernetes`` package (the ``k8s`` extra) is installed: without it the
    follower could only report the import error on every poll, so serve refuses to start."""
    return importlib.util.find_spec("kubernetes") is not None


class KubeReplicas:
    """``spec.replicas`` of one StatefulSet, read with the pod's service account (RBAC: get
    on that StatefulSet). The blocking client runs in a thread, bounded by a timeout."""

    def __init__(self, name: str, namespace: str) -> None:
        self.name, self.namespace = name, namespace
        self._api: Any = None

    def _read(self) -> int:
        if self._api is None:
            from kubernetes import client, config

            config.load_incluster_config()  # type: ignore[no-untyped-call]
            self._api = client.AppsV1Api()
        sts = self._api.read_namespaced_stateful_set(
            self.name, self.namespace, _request_timeout=API_TIMEOUT_S)
        return int(sts.spec.replicas if sts.spec.replicas is not None else 1)

    async def replicas(self) -> int:
        return await asyncio.wait_for(asyncio.to_thread(self._read), API_TIMEOUT_S * 2)


@dataclass(frozen=True, slots=True)
class ScalerOptions:
    statefulset: str
    namespace: str
    max_replicas: int
    interval_s: float = 5.0


class Scaler:
    """The adapter: poll, elect, read the record, start the Reconfigurer; report."""

    def __init__(self, node: Node, options: ScalerOptions, source: ReplicaSource) -> None:
        self._node = node
        self.options = options
        self._source = source
        self.state = "standby"
        self.detail = "not started"
        self.replicas: int | None = None
        self.target: list[int] | None = None
        self.driver = False
        self.changes_started = 0
        self.read_at: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """For ``GET /v1/status``."""
        return {"statefulset": self.options.statefulset, "replicas": self.replicas,
                "max_replicas": self.options.max_replicas, "state": self.state,
                "detail": self.detail, "driver": self.driver, "target": self.target,
                "changes_started": self.changes_started, "read_at": self.read_at}

    def _report(self, state: str, detail: str) -> None:
        if state != self.state or (state != "changing" and detail != self.detail):
            level = logging.WARNING if state in ("over_max", "api_error", "below_quorum") \
                else logging.INFO
            log.log(level, "scaler: %s: %s", state, detail)
        self.state, self.detail = state, detail
        self._node.metrics.scaler(state, self.replicas)

    def _up(self) -> frozenset[int]:
        return frozenset(pid for pid, h in self._node.peer_health.items()
                         if h.up and h.refused is None and h.epochs)

    async def step(self) -> None:
        """One poll: what the StatefulSet asks for, and the change it needs, if this node
        drives."""
        node = self._node
        try:
            self.replicas = await self._source.replicas()
            self.read_at = time.time()
        except Exception as exc:  # the API, RBAC, the network: all only delay the change
            self._report("api_error", f"reading StatefulSet {self.options.statefulset}: "
                         f"{api_error_text(exc)}")
            return
        if self.replicas > self.options.max_replicas:
            self._report("over_max", decide(node.config.node_id, self.replicas,
                                            self.options.max_replicas, frozenset(), True,
                                            frozenset()).detail)
            return
        stuck = below_quorum(node.epoch_config, self.replicas) if self.replicas >= 1 else None
        if stuck is not None:
            self._report(stuck.state, stuck.detail)
            return
        up = self._up()
        self.driver = is_driver(node.config.node_id, node.epoch_config.members, up)
        if not self.driver:
            self._report("standby", "another member drives changes")
            return
        if node.reconfigurer.running:
            self._report("changing", node.reconfigurer.progress.step)
            return
        try:
            record, _ = await node.reconfigurer.read_record()
        except (ChangeFailed, NoQuorum, UnknownOutcome, Overloaded) as exc:
            self._report("no_quorum", f"the acceptor-set record could not be read: {exc}")
            return
        stable = record.phase is RecordPhase.STABLE
        current = record.config.prepare_set if stable or record.target is None \
            else record.target.prepare_set
        decision = decide(node.config.node_id, self.replicas, self.options.max_replicas,
                          current, stable, up)
        if decision.target is not None:
            self.target = sorted(decision.target)
            if node.reconfigurer.start(decision.target):
                self.changes_started += 1
                log.warning("scaler: StatefulSet has %d replicas: changing the acceptor set "
                            "%s -> %s", self.replicas, sorted(current), self.target)
        self._report(decision.state, decision.detail)

    async def run(self) -> None:
        """Poll until cancelled; an unexpected error is logged and the loop goes on."""
        while True:
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scaler: poll failed")
            await asyncio.sleep(self.options.interval_s)
