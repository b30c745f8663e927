"""Acceptor-set changes on real processes (docs/reconfiguration.md): a three-acceptor
cluster grown to five and shrunk back to three, one acceptor at a time, while clients
write and read, with kill -9 of the driving node and of another node during each change.

Every wait is bounded; every process is stopped by PID in a ``finally``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from background_load import BackgroundLoad
from procs import ServerProcess, post_change, post_json, waiting_members

from paxoskv.chaos.workload import Workload, WorkloadOptions
from paxoskv.check import History

pytestmark = pytest.mark.integration

NODES = (1, 2, 3, 4, 5)
CHANGE_TIMEOUT_S = 40.0


def _record(node: ServerProcess) -> dict[str, Any] | None:
    code, body = node.get("/admin/acceptors", timeout=6)
    return json.loads(body) if code == 200 else None


def _wait_stable(nodes: dict[int, ServerProcess], target: set[int], drivers: list[int],
                 timeout_s: float) -> dict[str, Any]:
    """Until the record is STABLE on ``target``: re-POST the change (to the next driver in
    turn) whenever no live driver is running it."""
    deadline = time.monotonic() + timeout_s
    last: dict[str, Any] | None = None
    turn = 0
    while time.monotonic() < deadline:
        for nid in drivers:
            node = nodes[nid]
            if not node.alive():
                continue
            last = _record(node)
            if last is None:
                continue
            record = last["record"]
            if record["phase"] == "stable" and set(record["config"][1]) == target \
                    and last["held"][0] == record["config"][0]:
                return last  # recorded, and installed (here at least)
            break
        running = False
        for nid in drivers:
            if nodes[nid].alive():
                code, body = nodes[nid].get("/v1/status", timeout=3)
                if code == 200 and json.loads(body)["reconfiguration"]["running"]:
                    running = True
        if not running:
            driver = nodes[drivers[turn % len(drivers)]]
            turn += 1
            if driver.alive():
                post_json(driver, "/admin/acceptors", {"acceptors": sorted(target)})
        time.sleep(0.3)
    pytest.fail(f"acceptor set never became {sorted(target)}: {last}")


def test_grow_to_five_and_shrink_back_to_three_under_load_with_kill9(tmp_path: Path) -> None:
    """Goal: changing the acceptor set one acceptor at a time keeps every acknowledged
    write and a linearizable history, through kill -9 of the driver and of another node.

    Method: five processes; epoch 0 is {1,2,3} (4 and 5 are "initial: false" in the hosts
    file: they wait, serving no votes). Clients (the chaos workload: sets, CASes, creates,
    deletes, reads over 20 keys, each through any of the five nodes) run throughout. The
    acceptor set goes {1,2,3} -> +4 -> +5 -> -5 -> -4. During each change the driver is
    killed (-9) shortly after the POST and restarted, and another acceptor of both sets is
    killed and restarted; the change is re-POSTed to a live node until the record is
    STABLE on the target. Then every key is read from every node: the history must be
    linearizable (paxoskv.check), and each acknowledged last write read back."""
    nodes = waiting_members(tmp_path, NODES, (1, 2, 3), ["--repair-interval", "3600"])
    history = History()
    workload = Workload({i: n.url for i, n in nodes.items()}, history, seed=7,
                        options=WorkloadOptions(clients=4, keys=20, hot_keys=5,
                                                think_s_max=0.05))
    # bounded: 200 slices of 1.5 s, stopped far earlier
    load = BackgroundLoad(workload, NODES, slices=200, slice_s=1.5)
    started = time.monotonic()
    try:
        for n in nodes.values():
            n.start()
        for n in nodes.values():
            n.wait_ready(30)
        load.start()
        time.sleep(1.0)
        # (target, driver killed, other node killed, drivers to re-POST to)
        steps = [({1, 2, 3, 4}, 1, 2, [2, 3, 1]),
                 ({1, 2, 3, 4, 5}, 2, 3, [3, 1, 2]),
                 ({1, 2, 3, 4}, 3, 1, [1, 2, 3]),
                 ({1, 2, 3}, 4, 2, [1, 3, 4])]
        for target, driver, other, drivers in steps:
            # a driver that resumed the last change may still run
            code, body = post_change(nodes[driver], target, 100)
            assert code == 202, body
            time.sleep(0.3)
            nodes[driver].kill9()
            nodes[driver].start()
            time.sleep(0.3)
            nodes[other].kill9()
            nodes[other].start()
            nodes[driver].wait_ready(30)
            nodes[other].wait_ready(30)
            _wait_stable(nodes, target, drivers, CHANGE_TIMEOUT_S)
        time.sleep(1.0)
        load.finish()
        for nid, n in nodes.items():
            code, body = n.get("/v1/status")
            status = json.loads(body)
            assert code == 200
            cfg = status["acceptor_config"]
            assert cfg["epoch"] == 8 and cfg["prepare"] == [1, 2, 3], (nid, cfg)
            assert cfg["member"] == (nid in (1, 2, 3)), (nid, cfg)
    finally:
        load.stop()
        for n in nodes.values():
            if n.alive():
                n.terminate()
    ops, ok_writes, checked = load.checked()
    print(f"reconfiguration: {ops} ops, {ok_writes} acknowledged writes, "
          f"{checked} keys read back, {load.finals['reads']} final reads, "
          f"{time.monotonic() - started:.1f}s")
    assert ok_writes >= 50, workload.counts
    assert checked >= 10
    assert load.finals["unreadable"] == 0
