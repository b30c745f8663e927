"""The port picker the real-process tests share (``paxoskv.chaos.processes.free_ports``)."""

from __future__ import annotations

import socket

import pytest

from paxoskv.chaos import processes


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setattr(processes, "_next_port", None)
    return monkeypatch


def test_ports_are_below_the_ephemeral_range(fresh: pytest.MonkeyPatch) -> None:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        ephemeral_low = int(f.read().split()[0])
    ports = processes.free_ports(20)
    assert len(set(ports)) == 20
    assert all(1024 < p < ephemeral_low for p in ports)


def test_two_workers_never_share_a_port(fresh: pytest.MonkeyPatch) -> None:
    fresh.setenv("PYTEST_XDIST_WORKER", "gw0")
    first = set(processes.free_ports(300))
    fresh.setattr(processes, "_next_port", None)
    fresh.setenv("PYTEST_XDIST_WORKER", "gw1")
    second = set(processes.free_ports(300))
    assert len(first) == len(second) == 300
    assert not first & second


def test_one_process_does_not_hand_a_port_out_twice(fresh: pytest.MonkeyPatch) -> None:
    seen: set[int] = set()
    for _ in range(100):
        ports = processes.free_ports(5)
        assert not seen & set(ports)
        seen |= set(ports)


def test_a_port_in_use_is_skipped(fresh: pytest.MonkeyPatch) -> None:
    # A port this worker's servers used a moment ago may still be held (a run bound the
    # fixed port low + 10 once and failed): start where two ports in a row are free.
    low = processes._PORT_LOW + processes._slice_index() * processes._SLICE
    start = next(p for p in range(low + 10, low + processes._SLICE - 1)
                 if processes._bindable(p) and processes._bindable(p + 1))
    fresh.setattr(processes, "_next_port", start)
    with socket.socket() as held:
        held.bind(("127.0.0.1", start))
        held.listen()
        (picked,) = processes.free_ports(1)
    assert picked == start + 1
