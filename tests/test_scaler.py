"""The StatefulSet follower (paxoskv/scaler.py): its pure decisions, and the adapter driven
against a fake node and a fake replica source (the real API is the e2e suite's part)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from paxoskv.core.reconfig import Config, ConfigRecord, RecordPhase, change_configs
from paxoskv.membership import PeerHealth
from paxoskv.metrics import Metrics
from paxoskv.reconfigure import ChangeFailed, DriverProgress
from paxoskv.scaler import (
    Scaler,
    ScalerOptions,
    api_error_text,
    below_quorum,
    decide,
    desired_set,
    is_driver,
)

S = frozenset


def test_desired_set_is_the_ordinals_node_ids() -> None:
    assert desired_set(3) == {1, 2, 3}
    assert desired_set(1) == {1}


@pytest.mark.parametrize(("self_id", "members", "up", "driver"), [
    (1, S({1, 2, 3}), S({2, 3}), True),     # the lowest member drives
    (2, S({1, 2, 3}), S({1, 3}), False),    # ... not the others, while they see it
    (2, S({1, 2, 3}), S({3}), True),        # the lowest one this node sees up
    (4, S({1, 2, 3}), S(), False),          # never a node outside the config
    (3, S({3, 4, 5}), S({4, 5}), True),
])
def test_one_driver_the_lowest_member_seen_up(self_id: int, members: frozenset[int],
                                              up: frozenset[int], driver: bool) -> None:
    assert is_driver(self_id, members, up) is driver


def test_scale_up_adds_only_acceptors_whose_pods_answer() -> None:
    """Goal: 3 -> 5 with pod 4 up and pod 5 not yet: the target adds 4 alone, then 5."""
    d = decide(1, 5, 7, S({1, 2, 3}), True, S({2, 3, 4}))
    assert d.state == "changing" and d.target == {1, 2, 3, 4}
    assert "[5]" in d.detail
    d = decide(1, 5, 7, S({1, 2, 3, 4}), True, S({2, 3, 4, 5}))
    assert d.target == {1, 2, 3, 4, 5}
    d = decide(1, 5, 7, S({1, 2, 3}), True, S({2, 3}))
    assert d.state == "waiting_for_pods" and d.target is None


def test_scale_down_removes_at_once_pods_gone_or_not() -> None:
    d = decide(1, 3, 7, S({1, 2, 3, 4, 5}), True, S({2, 3}))
    assert d.state == "changing" and d.target == {1, 2, 3}
    d = decide(1, 3, 7, S({1, 2, 3, 4, 5}), True, S({2, 3, 4, 5}))
    assert d.target == {1, 2, 3}


def test_in_sync_and_a_half_done_change_is_finished() -> None:
    assert decide(1, 3, 7, S({1, 2, 3}), True, S({2, 3})) .state == "in_sync"
    # A change another driver left half done (record not STABLE): driven on, even when its
    # target is already what the StatefulSet asks for.
    d = decide(1, 3, 7, S({1, 2, 3}), False, S({2, 3}))
    assert d.state == "changing" and d.target == {1, 2, 3}


def test_above_max_replicas_nothing_is_changed() -> None:
    d = decide(1, 9, 7, S({1, 2, 3}), True, S({2, 3}))
    assert d.state == "over_max" and d.target is None and "maxReplicas" in d.detail
    assert decide(1, 0, 7, S({1, 2, 3}), True, S()).target is None


# ---------------------------------------------------------------- the adapter


class _Source:
    def __init__(self, replicas: int) -> None:
        self.value: int | Exception = replicas

    async def replicas(self) -> int:
        if isinstance(self.value, Exception):
            raise self.value
        return self.value


@dataclass
class _Reconfigurer:
    record: ConfigRecord
    started: list[list[int]] = field(default_factory=list)
    running: bool = False
    fail_read: bool = False
    progress: DriverProgress = field(default_factory=DriverProgress)

    async def read_record(self) -> tuple[ConfigRecord, int]:
        if self.fail_read:
            raise ChangeFailed("read the record: no quorum")
        return self.record, 1

    def start(self, target: Any) -> bool:
        self.started.append(sorted(target))
        return True


class _Metrics(Metrics):
    def __init__(self) -> None:
        self.states: list[str] = []

    def scaler(self, state: str, replicas: int | None) -> None:
        self.states.append(state)


@dataclass
class _NodeConfig:
    node_id: int


class _Node:
    def __init__(self, node_id: int, cfg: Config, up: set[int], stable: bool = True) -> None:
        self.config = _NodeConfig(node_id)
        self.epoch_config = cfg
        self.metrics = _Metrics()
        self.peer_health = {pid: PeerHealth(up=pid in up, epochs=True) for pid in range(1, 8)
                            if pid != node_id}
        record = ConfigRecord(RecordPhase.STABLE, cfg)
        if not stable:
            mid, end = change_configs(cfg, cfg.prepare_set | {4})
            record = ConfigRecord(RecordPhase.CATCHING_UP, mid, cfg, end)
        self.reconfigurer = _Reconfigurer(record)


def _scaler(node: _Node, source: _Source) -> Scaler:
    return Scaler(node, ScalerOptions("kv", "ns", 7), source)  # type: ignore[arg-type]


def test_the_driver_starts_the_change_the_statefulset_asks_for() -> None:
    node = _Node(1, Config.stable(0, {1, 2, 3}), {2, 3, 4, 5})
    scaler = _scaler(node, _Source(5))
    asyncio.run(scaler.step())
    assert node.reconfigurer.started == [[1, 2, 3, 4, 5]]
    assert scaler.state == "changing" and scaler.as_dict()["replicas"] == 5
    assert node.metrics.states == ["changing"]


def test_a_node_that_is_not_the_driver_only_reports() -> None:
    node = _Node(2, Config.stable(0, {1, 2, 3}), {1, 3, 4, 5})
    scaler = _scaler(node, _Source(5))
    asyncio.run(scaler.step())
    assert node.reconfigurer.started == []
    assert scaler.state == "standby" and not scaler.driver


def test_no_new_change_while_one_runs_here() -> None:
    node = _Node(1, Config.stable(0, {1, 2, 3}), {2, 3, 4})
    node.reconfigurer.running = True
    scaler = _scaler(node, _Source(4))
    asyncio.run(scaler.step())
    assert node.reconfigurer.started == [] and scaler.state == "changing"


def test_a_half_done_change_is_continued_toward_its_target_first() -> None:
    node = _Node(1, Config.stable(0, {1, 2, 3}), {2, 3, 4}, stable=False)
    scaler = _scaler(node, _Source(4))
    asyncio.run(scaler.step())
    assert node.reconfigurer.started == [[1, 2, 3, 4]]


def test_api_errors_over_max_and_no_quorum_change_nothing_and_are_reported(
        caplog: pytest.LogCaptureFixture) -> None:
    node = _Node(1, Config.stable(0, {1, 2, 3}), {2, 3})
    source = _Source(3)
    source.value = PermissionError("403 Forbidden")
    scaler = _scaler(node, source)
    asyncio.run(scaler.step())
    assert scaler.state == "api_error" and "403" in scaler.detail
    source.value = 9
    asyncio.run(scaler.step())
    asyncio.run(scaler.step())
    assert scaler.state == "over_max"
    assert sum("over_max" in r.getMessage() for r in caplog.records) == 1  # logged once
    source.value = 5
    node.reconfigurer.fail_read = True
    asyncio.run(scaler.step())
    assert scaler.state == "no_quorum"
    assert node.reconfigurer.started == []


@pytest.mark.parametrize(("members", "replicas", "stuck", "least"), [
    ({1, 2, 3}, 1, True, 2),          # 3 -> 1: 1 of 3 left
    ({1, 2, 3}, 2, False, None),      # 3 -> 2: 2 of 3
    ({1, 2, 3, 4, 5}, 2, True, 3),    # 5 -> 2
    ({1, 2, 3, 4, 5}, 3, False, None),
    ({1, 2, 3, 4}, 2, True, 3),       # 4 -> 2: 2 of 4 is no majority
    ({1, 2}, 1, True, 2),
    ({1, 2, 3}, 5, False, None),      # scaling up
])
def test_below_quorum_when_the_pods_left_are_no_majority(
        members: set[int], replicas: int, stuck: bool, least: int | None) -> None:
    """Goal: a scale-down by a majority or more (the pods are deleted first) is reported as
    below_quorum, with the count to scale back up to, and starts no change."""
    d = below_quorum(Config.stable(3, members), replicas)
    assert (d is not None) is stuck
    if d is not None:
        assert d.state == "below_quorum" and d.target is None
        assert f"at least {least} replicas" in d.detail


@pytest.mark.parametrize(("members", "r", "replicas", "stuck", "least"), [
    (range(1, 6), 3, 4, False, None),   # 5 -> 4: one of any group of 3 may go
    (range(1, 6), 3, 3, True, 4),       # 5 -> 3: a group {x, 4, 5} keeps one of three
    (range(1, 8), 3, 5, True, 6),       # 7 -> 5 with R = 3: still one at a time
    (range(1, 8), 5, 5, False, None),   # R = 5: two of any group of 5 may go
    (range(1, 8), 5, 4, True, 5),
    (range(1, 4), 3, 2, False, None),   # R = 3 of 3 is no grouping: a majority of 3
])
def test_below_quorum_with_groups_counts_each_group(
        members: range, r: int, replicas: int, stuck: bool, least: int | None) -> None:
    """Goal: with acceptor groups a scale-down is below quorum once some R members (some
    key's group, possibly) could keep no majority among the pods left: more than
    ``R - maj(R)`` of the set gone, whatever N, although a majority of the set is left."""
    d = below_quorum(Config.stable(3, members, r), replicas)
    assert (d is not None) is stuck, d
    if d is not None:
        assert d.state == "below_quorum" and "(of some key group)" in d.detail
        assert f"at least {least} replicas" in d.detail and "down by one at a time" in d.detail


def test_below_quorum_starts_nothing_and_is_logged_once(
        caplog: pytest.LogCaptureFixture) -> None:
    node = _Node(1, Config.stable(0, {1, 2, 3, 4, 5}), {2})
    scaler = _scaler(node, _Source(2))
    for _ in range(3):
        asyncio.run(scaler.step())
    assert scaler.state == "below_quorum" and scaler.as_dict()["state"] == "below_quorum"
    assert node.metrics.states == ["below_quorum"] * 3
    assert node.reconfigurer.started == []
    assert sum("below_quorum" in r.getMessage() for r in caplog.records) == 1


def _api_exception(request_id: str) -> Exception:
    from kubernetes.client import ApiException  # type: ignore[import-untyped]

    exc = ApiException(status=403, reason="Forbidden")
    exc.headers = {"Audit-Id": request_id, "Date": request_id}
    exc.body = ('{"kind": "Status", "status": "Failure", "message": "statefulsets.apps '
                '\\"kv\\" is forbidden", "reason": "Forbidden", "code": 403}')
    return exc


def test_api_errors_are_one_stable_line_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    """Goal: an ApiException's text carries headers that change on every call; the detail
    and the log keep only status, reason and the Status message, so a lasting error is
    logged once."""
    pytest.importorskip("kubernetes")
    first, second = _api_exception("id-1"), _api_exception("id-2")
    assert str(first) != str(second)
    assert api_error_text(first) == api_error_text(second)
    assert api_error_text(first) == '403 Forbidden: statefulsets.apps "kv" is forbidden'
    node = _Node(1, Config.stable(0, {1, 2, 3}), {2, 3})
    source = _Source(3)
    scaler = _scaler(node, source)
    for exc in (first, second, _api_exception("id-3")):
        source.value = exc
        asyncio.run(scaler.step())
    assert scaler.state == "api_error" and "403 Forbidden" in scaler.detail
    assert sum("api_error" in r.getMessage() for r in caplog.records) == 1
