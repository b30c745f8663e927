"""How fast the tombstone collector (paxoskv/tombstones.py) gets through many due keys.

Method: node 1 alone is the only acceptor (its rounds need only itself) over a real
SqliteStorage; keys are written and deleted through ``Node.execute``. Before these fixes a
sweep collected its batch one key at a time and the next batch waited a whole interval
(up to 60 s), so 100,000 deleted keys took hours past their grace.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from paxoskv import tombstones
from paxoskv.core.ballot import Ballot
from paxoskv.core.register import Delete, Set
from paxoskv.node import Node, NodeConfig, PeerSpec
from paxoskv.storage.base import NodeIdentity
from paxoskv.storage.sqlite import SqliteStorage
from paxoskv.tombstones import GC_BATCH_KEYS, GC_CONCURRENCY, Collector
from tests.api.test_app import NoPeers


async def _single_node(tmp_path: Path, grace_s: float) -> Node:
    config = NodeConfig(1, {1: PeerSpec(1, "http://127.0.0.1:1")}, tombstone_grace_s=grace_s)
    node = Node(config, NodeIdentity("c", 1, "d", 1, False), SqliteStorage(tmp_path),
                NoPeers())
    await node.start()
    return node


async def _node_with_tombstones(tmp_path: Path, grace_s: float, keys: list[str]
                                ) -> tuple[Node, SqliteStorage]:
    """A single node whose storage holds a tombstone row for each of ``keys``, saved
    directly (as an accepted delete leaves it), not through rounds."""
    from paxoskv.core.acceptor import AcceptorState
    from paxoskv.core.register import Value

    node = await _single_node(tmp_path, grace_s)
    storage = node.storage
    assert isinstance(storage, SqliteStorage)
    tomb = AcceptorState(Ballot(2, 1, 1), Ballot(2, 1, 1), Value(2, None))
    await asyncio.gather(*(storage.save(k, tomb) for k in keys))
    return node, storage


def test_a_sweep_collects_its_batch_concurrently_and_says_more_are_due(
        tmp_path: Path) -> None:
    """Goal: the due keys of one sweep are collected several at a time (one at a time
    before), every one of them is collected, and a sweep stopped by the batch bound says
    so, which is what lets the loop start the next one at once."""
    async def main() -> tuple[int, list[bool], int]:
        node = await _single_node(tmp_path, grace_s=0.05)
        keys = [f"k{i:04d}" for i in range(GC_BATCH_KEYS + 30)]
        await asyncio.gather(*(node.execute(k, Set(b"v"), forward=False) for k in keys))
        await asyncio.gather(*(node.execute(k, Delete(), forward=False) for k in keys))
        collector = node.collector
        running = peak = 0
        real_collect = Collector.collect

        async def counting(self: Collector, key: str, pinned: Ballot | None = None,
                           view: object = None) -> bool:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            try:
                return await real_collect(self, key, pinned, view)  # type: ignore[arg-type]
            finally:
                running -= 1

        collector.collect = counting.__get__(collector)  # type: ignore[method-assign]
        more = [await collector.sweep()]  # notes every tombstone: the grace starts
        await asyncio.sleep(0.1)
        for _ in range(3):
            more.append(await collector.sweep())
        left = node.storage.key_count()
        await node.storage.close()  # type: ignore[attr-defined]
        return peak, more, left

    peak, more, left = asyncio.run(main())
    assert peak == GC_CONCURRENCY
    assert more == [False, True, False, False]
    assert left == 0


def test_the_loop_sweeps_again_at_once_while_batches_come_back_full(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Goal: after a sweep that filled its batch the next one starts after a short pause,
    not a whole interval. Method: an interval of 0.3 s and a sweep that reports a full
    batch ten times; within 1.2 s all ten have run (with the interval between them: 4)."""
    monkeypatch.setattr(Collector, "interval_s", lambda self: 0.3)

    async def main() -> int:
        node = await _single_node(tmp_path, grace_s=10.0)
        calls = 0

        async def full_batches() -> bool:
            nonlocal calls
            calls += 1
            return calls < 10

        node.collector.sweep = full_batches  # type: ignore[method-assign]
        task = asyncio.create_task(node.collector.loop())
        started = time.monotonic()
        while calls < 10 and time.monotonic() - started < 1.2:
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await node.storage.close()  # type: ignore[attr-defined]
        return calls

    assert asyncio.run(main()) >= 10
    assert tombstones.GC_BUSY_PAUSE_S < 0.3


def test_the_pending_table_shrinks_once_its_tombstones_are_collected(
        tmp_path: Path) -> None:
    """Goal: the collector's table of pending tombstones, which held every tombstone this
    node sweeps, is rebuilt small and its segments unmapped once they are collected (a
    dict never shrinks its table on its own: 100,000 tombstones left several MB behind).

    Method: 3,000 tombstone rows saved directly; the first sweeps note them all; a stand-in
    ``collect`` removes each row (``SqliteStorage.collect``) the way a real collection
    ends, so the sweeps only have to page through them."""
    from paxoskv.core.acceptor import Floor
    from paxoskv.core.ballot import Ballot

    async def main() -> tuple[int, int, int]:
        keys = [f"t{i:05d}" for i in range(3000)]
        node, storage = await _node_with_tombstones(tmp_path, 0.01, keys)
        collector = node.collector

        async def collect(key: str, pinned: Ballot | None = None, view: object = None) -> bool:
            await storage.collect(key, Floor(Ballot(2, 1, 1), 2))
            collector._pending.pop(key, None)
            return True

        collector.collect = collect  # type: ignore[method-assign]
        noted = full = 0
        for _ in range(200):  # the first sweeps note them all (a batch of pins each)
            more = await collector.sweep()
            if len(collector._pending) > noted:
                noted = len(collector._pending)
                full = collector._pending._map.table_bytes
            if not more:
                break
        await asyncio.sleep(0.02)
        for _ in range(200):
            if not await collector.sweep():
                break
        left = storage.key_count()
        table = collector._pending._map.table_bytes
        # What stays mapped is at most the newest segment, emptied (its pages given back).
        assert all(seg.used == 0 for seg in collector._pending._map._segments.values())
        assert len(collector._pending._map._segments) <= 1
        await storage.close()
        return noted, left, table * 1000 // full

    noted, left, permille = asyncio.run(main())
    assert (noted, left) == (3000, 0)
    assert permille < 300  # rebuilt (last when a quarter was left): not its peak size


def test_a_sweep_that_filled_its_pins_says_more_are_due(tmp_path: Path) -> None:
    """Goal: pins are bounded per sweep too, and a sweep stopped by that bound asks for the
    next one at once (with 100,000 tombstones and a sweep a minute, pinning them all took
    over three hours). Method: GC_PIN_KEYS + 100 tombstones, a long grace (nothing due):
    the first sweep pins GC_PIN_KEYS and says more; the second pins the rest and does not."""

    async def main() -> tuple[list[bool], list[int]]:
        node, storage = await _node_with_tombstones(
            tmp_path, 3600.0, [f"p{i:04d}" for i in range(tombstones.GC_PIN_KEYS + 100)])
        collector = node.collector
        more, pins = [], []
        for _ in range(2):
            more.append(await collector.sweep())
            pins.append(collector.progress.pins)
        await storage.close()
        return more, pins

    more, pins = asyncio.run(main())
    assert more == [True, False]
    assert pins == [tombstones.GC_PIN_KEYS, tombstones.GC_PIN_KEYS + 100]


def test_entries_of_rows_another_node_collected_are_dropped(tmp_path: Path) -> None:
    """Goal: a tombstone this node noted but another node collected (its ``Collect``
    removed the row here, this collector's own round never ran) leaves no entry behind.
    Before, such entries stayed in the pending table for as long as the node ran: in a
    3-node run of 10,000 keys, 4 to 32 per node, each a key, a ballot and a record.

    Method: 600 tombstone rows saved directly; a sweep with a long grace notes them (none
    due); the rows are then removed through ``SqliteStorage.collect`` as a peer's
    ``Collect`` would; one more live key keeps a row. The next sweep pages through every
    key and must drop the 600 entries."""
    from paxoskv.core.acceptor import Floor

    async def main() -> tuple[int, int]:
        keys = [f"t{i:05d}" for i in range(600)]
        node, storage = await _node_with_tombstones(tmp_path, 3600.0, keys)
        await node.execute("live", Set(b"v"), forward=False)
        collector = node.collector
        for _ in range(5):
            if not await collector.sweep():
                break
        noted = len(collector._pending)
        await asyncio.gather(*(storage.collect(k, Floor(Ballot(2, 1, 1), 2)) for k in keys))
        await collector.sweep()
        left = len(collector._pending)
        await storage.close()
        return noted, left

    assert asyncio.run(main()) == (600, 0)


def test_sweeps_resume_after_a_full_batch_instead_of_rereading_from_the_first_key(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Goal: the sweeps that pin and collect n tombstones read O(n) rows, not O(n) per
    batch. Before, a sweep that filled its batch was followed by one starting again from
    the first key: 100,000 tombstones meant ~200 passes over 100,000 rows, every row
    loaded and decoded on the event loop, and client deletes fell to 10-20/s.

    Method: batches of 20 pins and 20 collections over 400 tombstone rows saved directly;
    reads counted. Pinning all of them (a sweep per batch, until one says no
    more are due) must load at most 4n rows (before: 21 passes of n); after the grace,
    sweeps until none says more must collect every one of them. The sweep reads through
    ``peek`` and the pins' queries through ``load``: both are counted."""
    from paxoskv.core.acceptor import AcceptorState

    monkeypatch.setattr(tombstones, "GC_PIN_KEYS", 20)
    monkeypatch.setattr(tombstones, "GC_BATCH_KEYS", 20)
    n = 400

    async def main() -> tuple[int, int, int, int]:
        node, storage = await _node_with_tombstones(
            tmp_path, 0.3, [f"r{i:04d}" for i in range(n)])
        loads = 0
        real_load = storage.load

        def counting(key: str) -> AcceptorState:
            nonlocal loads
            loads += 1
            return real_load(key)

        real_peek = storage.peek

        def counting_peek(key: str) -> AcceptorState:
            nonlocal loads
            loads += 1
            return real_peek(key)

        storage.load = counting  # type: ignore[method-assign]
        storage.peek = counting_peek  # type: ignore[method-assign]
        collector = node.collector
        for _ in range(10 * n):
            if not await collector.sweep():
                break
        pins, pin_loads = collector.progress.pins, loads
        await asyncio.sleep(0.35)
        for _ in range(10 * n):
            if not await collector.sweep():
                break
        left = storage.key_count()
        await storage.close()
        return pins, pin_loads, collector.progress.collected, left

    pins, pin_loads, collected, left = asyncio.run(main())
    assert pins == n
    assert pin_loads <= 4 * n  # a pass to pin, one more to find none left; each pin's
    # query loads the row once more on this acceptor (8,820 before: a pass per batch)
    assert (collected, left) == (n, 0)


def test_a_sweep_paused_by_an_acceptor_set_change_does_not_ask_for_another_at_once(
        tmp_path: Path) -> None:
    """Goal: while the acceptor set is changing a sweep pins and collects nothing, and
    does not ask for the next sweep after the short pause even when its batch of pins
    filled (it would re-sweep every 50 ms for as long as the change lasts). Method:
    GC_PIN_KEYS + 100 tombstones, ``collection_allowed`` answering None."""

    async def main() -> tuple[bool, int, int]:
        node, storage = await _node_with_tombstones(
            tmp_path, 3600.0, [f"p{i:04d}" for i in range(tombstones.GC_PIN_KEYS + 100)])

        async def changing() -> None:
            return None

        node.collection_allowed = changing  # type: ignore[method-assign, assignment]
        collector = node.collector
        more = await collector.sweep()
        await storage.close()
        return more, collector.progress.pins, collector.progress.paused_by_change

    assert asyncio.run(main()) == (False, 0, 1)
