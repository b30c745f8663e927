"""The simulator's parts on their own: virtual clock, simulated disk, simulated network."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter

import pytest

from paxoskv.core.acceptor import EMPTY_STATE, AcceptorState
from paxoskv.core.ballot import Ballot
from paxoskv.core.messages import Prepare
from paxoskv.core.register import Value
from paxoskv.sim.loop import SimDeadlock, run_virtual
from paxoskv.sim.network import Host, SimNetwork, SimNetworkOptions
from paxoskv.sim.storage import DiskOptions, SimStorage, StorageCrashed
from paxoskv.transport.base import PeerUnreachable

STATE = AcceptorState(Ballot(3, 1), Ballot(3, 1), Value(1, b"x"))


def test_virtual_clock_skips_waits() -> None:
    """Goal: sleeps and timeouts cost no wall time, and time() is the virtual clock.

    Method: sleep an hour, then time out a 10 s sleep after 5 s, on the SimLoop; the loop
    must read 3605 s and the wall clock must barely move.
    """

    async def main() -> float:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(3600)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(5):
                await asyncio.sleep(10)
        return loop.time()

    started = time.monotonic()
    assert run_virtual(main()) == pytest.approx(3605)
    assert time.monotonic() - started < 1.0


def test_deadlock_is_reported() -> None:
    """Goal: a simulation in which nothing can ever happen fails loudly instead of hanging.

    Method: await a future nobody resolves; the virtual selector must raise SimDeadlock.
    """

    async def main() -> None:
        await asyncio.get_running_loop().create_future()

    with pytest.raises(SimDeadlock):
        run_virtual(main())


def test_storage_is_durable_only_after_fsync_and_crash_loses_the_rest() -> None:
    """Goal: SimStorage keeps invariant 1's contract: save returns once durable.

    Method: save one key and let it return; start a second save and crash before its fsync
    lands. The first survives, the second is lost, and the crashed storage refuses writes
    until restarted.
    """

    async def main() -> None:
        disk = SimStorage(random.Random(1), DiskOptions())
        await disk.save("a", STATE)
        assert disk.durable_state("a") == STATE
        pending = asyncio.ensure_future(disk.save("b", STATE))
        await asyncio.sleep(0)
        assert disk.load("b") == EMPTY_STATE  # not acknowledged, not visible
        disk.crash()
        with pytest.raises(asyncio.CancelledError):
            await pending
        assert disk.load("a") == STATE
        assert disk.load("b") == EMPTY_STATE
        assert disk.stats.writes_lost == 1
        assert disk.stats.acked_writes_lost == 0
        with pytest.raises(StorageCrashed):
            await disk.save("c", STATE)
        disk.restart()
        await disk.set_meta("m", "1")
        assert disk.get_meta("m") == "1"

    run_virtual(main())


def test_no_fsync_mutant_acknowledges_before_durable() -> None:
    """Goal: the no-fsync mutant really breaks invariant 1 (so catching it means something).

    Method: with ack_before_fsync, save returns at once; a crash right after loses the write
    that was already acknowledged.
    """

    async def main() -> None:
        disk = SimStorage(random.Random(2), DiskOptions(ack_before_fsync=True))
        await disk.save("a", STATE)
        assert disk.load("a") == STATE
        assert disk.durable_state("a") == EMPTY_STATE
        disk.crash()
        assert disk.load("a") == EMPTY_STATE
        assert disk.stats.acked_writes_lost == 1

    run_virtual(main())


def _network(options: SimNetworkOptions) -> tuple[SimNetwork, Counter[str]]:
    faults: Counter[str] = Counter()
    net = SimNetwork(random.Random(3), options, faults)
    for node_id in (1, 2):
        net.add_host(Host(node_id, up=True))
    return net, faults


def test_partition_makes_sender_time_out() -> None:
    """Goal: a one-way partition cuts one direction only, and the sender gets PeerUnreachable
    after the transport timeout, as over HTTP.

    Method: block 1->2. A call 1->2 never reaches 2 and times out after transport_timeout_s
    of virtual time. A call 2->1 reaches 1 (its effect happens) but the reply is cut, so it
    times out too. After healing, 1->2 is answered.
    """
    options = SimNetworkOptions(drop_probability=0, duplicate_probability=0,
                                reorder_probability=0, transport_timeout_s=2.0)

    async def main() -> None:
        net, faults = _network(options)
        net.hosts[1].server = net.hosts[2].server = object()  # type: ignore[assignment]
        loop = asyncio.get_running_loop()

        served: list[int] = []

        async def serve(_: object) -> str:
            served.append(1)
            return "pong"

        net.block([(1, 2)])
        started = loop.time()
        with pytest.raises(PeerUnreachable):
            await net.call(1, 0, 2, serve)
        assert loop.time() - started == pytest.approx(2.0)
        assert served == []
        with pytest.raises(PeerUnreachable):
            await net.call(2, 0, 1, serve)
        assert served == [1]
        net.unblock([(1, 2)])
        assert await net.call(1, 0, 2, serve) == "pong"
        assert faults["message_cut_by_partition"] == 2

    run_virtual(main())


def test_down_host_answers_nothing_and_pause_holds_messages() -> None:
    """Goal: a down host answers nothing; a paused host answers late, after it resumes.

    Method: take host 2 down and call it (PeerUnreachable); bring it up, pause it, call it,
    resume it 0.5 s later: the answer must arrive after the resume, not before.
    """
    options = SimNetworkOptions(drop_probability=0, duplicate_probability=0,
                                reorder_probability=0)

    async def main() -> None:
        net, faults = _network(options)
        net.hosts[1].server = net.hosts[2].server = object()  # type: ignore[assignment]
        loop = asyncio.get_running_loop()

        async def serve(_: object) -> Prepare:
            return Prepare("k", Ballot(1, 2))

        net.hosts[2].up = False
        with pytest.raises(PeerUnreachable):
            await net.call(1, 0, 2, serve)
        net.hosts[2].up = True
        net.pause(2)
        loop.call_later(0.5, net.resume, 2)
        started = loop.time()
        assert await net.call(1, 0, 2, serve) == Prepare("k", Ballot(1, 2))
        assert loop.time() - started >= 0.5
        assert faults["message_to_down_host"] == 1
        assert faults["message_held_by_pause"] >= 1

    run_virtual(main())
