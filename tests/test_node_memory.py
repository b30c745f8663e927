"""What a node keeps per key and per request once writes stop (paxoskv/node.py).

Before: the prepared keys of the phase-1 skip (up to 32 MiB of them, values included) and
the ids of forwarded writes (up to 200,000) were only trimmed when the next entry came
in, so a node that wrote 100,000 keys, deleted them and had them collected kept their
entries, and the tables that held them, for as long as it ran.
"""

from __future__ import annotations

import asyncio

from paxoskv.core.ballot import Ballot
from paxoskv.core.proposer import Prepared
from paxoskv.core.register import Value
from paxoskv.node import _PreparedKeys, _SeenIds
from paxoskv.packedmap import SEGMENT_BYTES
from tests.test_node import _node


def _fill(prepared: _PreparedKeys, n: int, at: float) -> None:
    for i in range(n):
        prepared.put(f"k{i:06d}", Prepared(Ballot(2, 1, 1), Value(1, b"v" * 100)), at)


def test_prepared_keys_past_their_lifetime_are_dropped_and_the_table_shrinks() -> None:
    prepared = _PreparedKeys(bytes_max=1 << 30, lifetime_s=2.0)
    _fill(prepared, 5000, at=0.0)
    prepared.put("fresh", Prepared(Ballot(3, 1, 1), Value(1, b"f")), 1.5)
    table = prepared._entries.table_bytes
    assert prepared._entries.mapped_bytes > 500_000
    prepared.expire(1.9)
    assert len(prepared) == 5001  # none has outlived its lifetime yet
    prepared.expire(2.5)
    assert len(prepared) == 1
    assert prepared.pop("fresh", 2.5) is not None
    assert len(prepared) == 0
    assert prepared._entries.table_bytes < table // 20
    assert prepared._entries.mapped_bytes <= SEGMENT_BYTES  # at most the emptied newest


def test_forwarded_ids_past_their_window_are_forgotten_without_a_new_one() -> None:
    seen = _SeenIds(window_s=60.0, count_max=200_000)
    for i in range(5000):
        assert seen.admit(f"r{i}", float(i) / 1000)
    table = seen._seen.table_bytes
    seen.expire(61.0)
    assert len(seen) == 4000  # those seen after second 1 are still in the window
    seen.expire(70.0)
    assert len(seen) == 0
    assert seen._seen.table_bytes < table // 20
    assert seen._seen.mapped_bytes <= SEGMENT_BYTES
    assert seen.admit("r1", 70.0)  # forgotten: admitted again


def test_the_heartbeat_loop_expires_them() -> None:
    """Goal: nothing has to come in for the entries to go: the heartbeat loop expires
    them on its own (every heartbeat interval)."""
    async def main() -> tuple[int, int]:
        node, _, _ = _node()
        loop = asyncio.get_running_loop()
        old = loop.time() - 10 * node.config.message_lifetime_s - 120
        _fill(node._prepared, 2000, at=old)
        for i in range(2000):
            node._forwards_seen.admit(f"r{i}", old)
        task = asyncio.create_task(node.heartbeat_loop())
        for _ in range(100):
            if not len(node._prepared) and not len(node._forwards_seen):
                break
            await asyncio.sleep(0.02)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return len(node._prepared), len(node._forwards_seen)

    assert asyncio.run(main()) == (0, 0)
