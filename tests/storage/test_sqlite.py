"""SQLite storage (paxoskv/storage/sqlite.py): durability, group commit, checksums."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from paxoskv.core.acceptor import EMPTY_STATE, AcceptorState
from paxoskv.core.ballot import Ballot
from paxoskv.core.register import Value
from paxoskv.node import open_identity
from paxoskv.storage.sqlite import CorruptRecord, SqliteStorage

STATE = AcceptorState(Ballot(3, 1, 2), Ballot(2, 1, 2), Value(4, b"\x00data"))


def test_saved_state_survives_reopen(tmp_path: Path) -> None:
    """Goal: what save() acknowledged is there after the process reopens the file."""
    async def run() -> None:
        s = SqliteStorage(tmp_path)
        await s.save("k", STATE)
        await s.save("tomb", AcceptorState(Ballot(1, 1), Ballot(1, 1), Value(2, None)))
        await s.close()
        s2 = SqliteStorage(tmp_path)
        assert s2.load("k") == STATE
        assert s2.load("tomb").value == Value(2, None)
        assert s2.load("missing") == EMPTY_STATE
        assert s2.keys("", None, 10) == ["k", "tomb"]
        assert s2.keys("", "k", 10) == ["tomb"]
        assert s2.keys("t", None, 10) == ["tomb"]
        assert s2.keys("", None, 1) == ["k"]
        assert s2.key_count() == 2
        await s2.close()
    asyncio.run(run())


def test_concurrent_saves_share_commits(tmp_path: Path) -> None:
    """Goal: group commit: 200 concurrent saves take far fewer than 200 commits."""
    batches: list[int] = []

    async def run() -> None:
        s = SqliteStorage(tmp_path, observer=lambda n, _s: batches.append(n))
        await asyncio.gather(*(s.save(f"k{i}", STATE) for i in range(200)))
        await s.close()
    asyncio.run(run())
    assert sum(batches) == 200
    assert len(batches) < 200
    assert max(batches) > 1


def test_uses_wal_with_full_sync(tmp_path: Path) -> None:
    """Goal: the engine settings that make a commit durable are the ones in force."""
    async def run() -> None:
        s = SqliteStorage(tmp_path)
        mode = s._conn.execute("PRAGMA journal_mode").fetchone()[0]
        sync = s._conn.execute("PRAGMA synchronous").fetchone()[0]
        assert (mode, sync) == ("wal", 2)  # 2 = FULL
        await s.close()
    asyncio.run(run())


def test_corrupt_row_is_refused_at_start(tmp_path: Path) -> None:
    """Goal: paired checks: a row changed behind our back fails its checksum on read."""
    async def run() -> None:
        s = SqliteStorage(tmp_path)
        await s.save("k", STATE)
        await s.close()
    asyncio.run(run())
    conn = sqlite3.connect(tmp_path / "paxoskv.sqlite3")
    conn.execute("UPDATE registers SET version = 99")
    conn.commit()
    conn.close()
    with pytest.raises(CorruptRecord):
        SqliteStorage(tmp_path)


def test_identity_is_made_once_and_incarnation_grows(tmp_path: Path) -> None:
    """Goal: a data directory keeps its data id; every start bumps the incarnation; a
    directory of another cluster or node is refused."""
    async def start(cluster: str = "c", node: int = 1) -> tuple[str, int, bool]:
        s = SqliteStorage(tmp_path)
        try:
            ident = await open_identity(s, cluster, node)
            return ident.data_id, ident.incarnation, ident.fresh
        finally:
            await s.close()
    d1, i1, f1 = asyncio.run(start())
    d2, i2, f2 = asyncio.run(start())
    assert (f1, f2) == (True, False)
    assert d1 == d2
    assert i2 == i1 + 1
    with pytest.raises(SystemExit):
        asyncio.run(start(cluster="other"))
    with pytest.raises(SystemExit):
        asyncio.run(start(node=2))


def test_identity_after_a_crash_during_the_first_start(tmp_path: Path) -> None:
    """Goal: a crash between the first start's meta writes (cluster id written, data id not
    yet) does not leave a directory that can never start: the next start initialises it."""
    async def run() -> None:
        s = SqliteStorage(tmp_path)
        await s.set_meta("cluster_id", "c")
        await s.close()
        s2 = SqliteStorage(tmp_path)
        identity = await open_identity(s2, "c", 4)
        assert identity.fresh
        assert s2.get_meta("node_id") == "4"
        assert s2.get_meta("data_id") == identity.data_id
        await s2.close()
    asyncio.run(run())
