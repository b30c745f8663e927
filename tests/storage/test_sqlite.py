"""SQLite storage (paxoskv/storage/sqlite.py): durability, group commit, checksums."""

from __future__ import annotations

import asyncio
import gc
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from paxoskv.core.acceptor import EMPTY_STATE, AcceptorState
from paxoskv.core.ballot import Ballot
from paxoskv.core.register import Value
from paxoskv.node import META_INITIAL_ACCEPTORS, open_identity
from paxoskv.storage import sqlite as sqlite_module
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


def test_corrupt_row_is_refused_when_read(tmp_path: Path) -> None:
    """Goal: paired checks: a row changed behind our back fails its checksum when it is read
    from disk (on a cache miss, and by verify()), not only once at start-up."""
    async def run() -> None:
        s = SqliteStorage(tmp_path)
        await s.save("k", STATE)
        await s.save("ok", STATE)
        await s.close()
    asyncio.run(run())
    conn = sqlite3.connect(tmp_path / "paxoskv.sqlite3")
    conn.execute("UPDATE registers SET version = 99 WHERE key = 'k'")
    conn.commit()
    conn.close()
    s = SqliteStorage(tmp_path)  # no full scan at start-up
    assert s.load("ok") == STATE
    with pytest.raises(CorruptRecord):
        s.load("k")
    with pytest.raises(CorruptRecord):
        s.verify()
    asyncio.run(s.close())


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


def test_epoch0_acceptor_set_is_stored_and_another_refused(tmp_path: Path) -> None:
    """Goal: a directory remembers the epoch-0 acceptor set of its first start and a later
    start naming another set (``helm template`` rendering PAXOSKV_REPLICAS from a new
    ``replicas``) is refused before anything is written: a node without a stored config
    believing another epoch 0 could form a second quorum. A directory of an older release
    (no stored set) stores the current one."""
    async def start(initial: frozenset[int]) -> int:
        s = SqliteStorage(tmp_path)
        try:
            return (await open_identity(s, "c", 1, initial)).incarnation
        finally:
            await s.close()

    async def meta(name: str, value: str | None = None) -> str | None:
        s = SqliteStorage(tmp_path)
        try:
            if value is not None:
                await s.set_meta(name, value)
            return s.get_meta(name)
        finally:
            await s.close()

    three, five = frozenset({1, 2, 3}), frozenset({1, 2, 3, 4, 5})
    assert asyncio.run(start(three)) == 1
    assert asyncio.run(meta(META_INITIAL_ACCEPTORS)) == "1,2,3"
    assert asyncio.run(start(three)) == 2
    with pytest.raises(SystemExit) as refused:
        asyncio.run(start(five))
    message = str(refused.value)
    assert "[1,2,3]" in message and "[1,2,3,4,5]" in message and "--replicas" in message
    assert asyncio.run(meta("incarnation")) == "2", "refused before anything was written"
    # An older release's directory: no stored set; the current one is stored.
    s = SqliteStorage(tmp_path)
    path = s.path
    asyncio.run(s.close())
    conn = sqlite3.connect(path)
    conn.execute("DELETE FROM meta WHERE name = ?", (META_INITIAL_ACCEPTORS,))
    conn.commit()
    conn.close()
    assert asyncio.run(meta(META_INITIAL_ACCEPTORS)) is None
    assert asyncio.run(start(five)) == 3
    assert asyncio.run(meta(META_INITIAL_ACCEPTORS)) == "1,2,3,4,5"


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


def _state(n: int, data: bytes = b"x" * 100) -> AcceptorState:
    return AcceptorState(Ballot(n, 1), Ballot(n, 1), Value(n, data))


def test_evicted_states_load_from_disk_as_latest(tmp_path: Path) -> None:
    """Goal: memory is bounded by cache_bytes, not the number of keys, and a state evicted
    from the cache comes back from disk as the latest one saved, also after updates."""
    budget = 3 * 4096  # three segments of the smallest size; each state takes one

    async def run() -> None:
        s = SqliteStorage(tmp_path, cache_bytes=budget)
        for version in (1, 2, 3):
            for i in range(40):
                await s.save(f"k{i:02d}", _state(version, b"v" * 3000))
                entries, used = s.cache_stats()
                assert entries <= 3 and used <= budget
        for i in range(40):
            assert s.load(f"k{i:02d}") == _state(3, b"v" * 3000)
        assert "k05" not in s._cache
        assert s.load("k05") == _state(3, b"v" * 3000)  # from disk, then from the cache:
        assert "k05" in s._cache
        assert s.load("k05") == _state(3, b"v" * 3000)
        assert s.verify() == 40
        await s.close()
        off = SqliteStorage(tmp_path, cache_bytes=0)
        assert off.load("k07") == _state(3, b"v" * 3000)
        await off.save("k07", _state(4))
        assert off.load("k07") == _state(4)
        assert off.cache_stats() == (0, 0)
        await off.close()
    asyncio.run(run())


def test_peek_reads_like_load_but_leaves_the_cache_to_the_states_in_use(tmp_path: Path) -> None:
    """Goal: a sweep's reads (``peek``) return what ``load`` would, without caching the keys
    it passes or evicting the ones in use: one pass over 40 keys leaves the 3 hot ones."""
    budget = 3 * 4096

    async def run() -> None:
        s = SqliteStorage(tmp_path, cache_bytes=budget)
        for i in range(40):
            await s.save(f"k{i:02d}", _state(2))
        await s.close()
        s = SqliteStorage(tmp_path, cache_bytes=budget)
        hot = ["k01", "k02", "k03"]
        for key in hot:
            assert s.load(key) == _state(2)
        assert s.cache_stats()[0] == 3
        for i in range(40):
            assert s.peek(f"k{i:02d}") == _state(2)
        assert s.peek("missing") == EMPTY_STATE
        assert s.cache_stats()[0] == 3
        assert s._cache.keys() == hot  # none evicted, none moved
        await s.close()
    asyncio.run(run())


def test_sweep_listings_hold_only_their_rows_and_read_their_index(tmp_path: Path) -> None:
    """Goal: the collector's and the TTL sweeper's listings name only tombstones and values
    with a TTL, in key order and after ``after``, each read from its partial index (a
    sweep no longer pages through every live key), also once rows change kind."""
    def expiring_state(n: int) -> AcceptorState:
        return AcceptorState(Ballot(n, 1), Ballot(n, 1), Value(n, b"v", (), 10_000 + n))

    async def run() -> None:
        s = SqliteStorage(tmp_path, cache_bytes=0)
        for i in range(30):
            await s.save(f"live{i:02d}", _state(1))
        for name in ("t1", "t3", "t2"):
            await s.save(name, AcceptorState(Ballot(2, 1), Ballot(2, 1), Value(2, None)))
        for name in ("e2", "e1"):
            await s.save(name, expiring_state(3))
        assert s.tombstones(None, 10) == ["t1", "t2", "t3"]
        assert s.tombstones("t1", 1) == ["t2"]
        assert s.expiring(None, 10) == ["e1", "e2"]
        assert s.expiring("e1", 10) == ["e2"]
        await s.save("t2", _state(3))  # written again: no longer a tombstone
        await s.save("e1", _state(4))  # its TTL dropped by a plain put
        await s.save("live05", expiring_state(5))
        assert s.tombstones(None, 10) == ["t1", "t3"]
        assert s.expiring(None, 10) == ["e2", "live05"]
        for where, index in (("data IS NULL", "registers_tombstones"),
                             ("substr(recent, 1, 1) = '{'", "registers_expiring")):
            plan = s._reader.execute(f"EXPLAIN QUERY PLAN SELECT key FROM registers WHERE "
                                     f"{where} AND key > ? ORDER BY key LIMIT ?",
                                     ("", 5)).fetchall()
            assert index in str(plan), plan
        await s.close()
    asyncio.run(run())


def test_a_directory_made_before_the_sweep_indexes_gets_them(tmp_path: Path) -> None:
    """Goal: a data directory of an earlier release (no partial indexes) is given them at
    its first open, filled from the rows it already holds."""
    async def run() -> None:
        s = SqliteStorage(tmp_path)
        await s.save("gone", AcceptorState(Ballot(2, 1), Ballot(2, 1), Value(2, None)))
        await s.save("kept", _state(1))
        await s.close()
        conn = sqlite3.connect(tmp_path / "paxoskv.sqlite3")
        conn.execute("DROP INDEX registers_tombstones")
        conn.execute("DROP INDEX registers_expiring")
        conn.commit()
        conn.close()
        s = SqliteStorage(tmp_path)
        names = {row[0] for row in s._reader.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert {"registers_tombstones", "registers_expiring"} <= names
        assert s.tombstones(None, 10) == ["gone"]
        await s.close()
    asyncio.run(run())


def test_a_state_too_large_to_cache_replaces_its_cached_predecessor(tmp_path: Path) -> None:
    """Goal: a save whose state does not fit the cache also drops the older cached copy, so
    the next load reads the new state from disk instead of the stale one from memory."""
    async def run() -> None:
        s = SqliteStorage(tmp_path, cache_bytes=8192)
        await s.save("k", _state(1, b"small"))
        assert s.cache_stats()[0] == 1
        await s.save("k", _state(2, b"x" * 9000))
        assert s.cache_stats()[0] == 0
        assert s.load("k") == _state(2, b"x" * 9000)
        await s.close()
    asyncio.run(run())


def test_batches_of_any_size_share_three_key_count_statements(tmp_path: Path) -> None:
    """Goal: the new-key count of a batch that also collects keys uses a few fixed
    statement texts whatever the batch size, so the writer's statement cache does not
    churn (a prepare per batch, and statements made all through a load; docs/gc.md); the
    count stays exact with the NULL padding."""
    from paxoskv.core.acceptor import Floor
    texts: set[str] = set()

    async def run() -> None:
        s = SqliteStorage(tmp_path, cache_bytes=0)
        s._conn.set_trace_callback(
            lambda sql: texts.add(sql.split(" IN ")[0] + str(sql.count(",")))
            if "COUNT(*) FROM registers WHERE key IN" in sql else None)
        total = 0
        for size in (1, 2, 3, 7, 16, 17, 40, 129, 200):
            await asyncio.gather(*(s.save(f"b{size}-{i}", _state(1)) for i in range(size)),
                                 s.collect(f"gone-{size}", Floor(Ballot(2, 1), 1)))
            total += size
            assert s.key_count() == total
        await s.close()
    asyncio.run(run())
    assert 1 <= len(texts) <= 3, texts


@pytest.mark.parametrize("rows_from_values", [True, False],
                         ids=["update-from-values", "sqlite-before-3.33"])
def test_a_steady_batch_counts_new_keys_without_a_select(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rows_from_values: bool) -> None:
    """Goal: a batch of saves counts the keys it adds from its own writes (an UPDATE's row
    count, then inserts for the rest), with no SELECT on the way, and a batch of keys that
    all have rows runs no INSERT; the count stays exact for batches of new keys, old keys,
    both, and one key saved twice, whose later state is the one kept. Also with the
    statement per row used with SQLite before 3.33."""
    monkeypatch.setattr(sqlite_module, "_ROWS_FROM_VALUES", rows_from_values)
    selects: list[str] = []
    statements: list[str] = []

    async def run() -> None:
        s = SqliteStorage(tmp_path, cache_bytes=0)
        s._conn.set_trace_callback(
            lambda sql: selects.append(sql) if sql.startswith("SELECT") else None)
        await asyncio.gather(*(s.save(f"k{i}", _state(1)) for i in range(5)))
        assert s.key_count() == 5
        s._conn.set_trace_callback(lambda sql: statements.append(sql.split(" ")[0]))
        await asyncio.gather(*(s.save(f"k{i}", _state(2)) for i in range(5)))
        s._conn.set_trace_callback(
            lambda sql: selects.append(sql) if sql.startswith("SELECT") else None)
        assert s.key_count() == 5
        assert "INSERT" not in statements, statements
        assert statements.count("UPDATE") == (1 if rows_from_values else 5), statements
        await asyncio.gather(*(s.save(f"k{i}", _state(3)) for i in range(3, 8)))
        assert s.key_count() == 8
        await asyncio.gather(s.save("twice", _state(4)), s.save("k0", _state(4)),
                             s.save("twice", _state(5)))
        assert s.key_count() == 9
        assert s.load("twice") == _state(5)
        assert s.load("k0") == _state(4)
        assert s.load("k7") == _state(3)
        await s.close()
        reopened = SqliteStorage(tmp_path, cache_bytes=0)
        assert reopened.key_count() == 9
        assert reopened.load("twice") == _state(5)
        await reopened.close()
    asyncio.run(run())
    assert not selects, selects


def test_a_batch_of_overwrites_is_one_statement_and_one_transaction(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Goal: once batches find their keys stored, a batch of saves is one UPDATE with no
    BEGIN or COMMIT around it (each is a step that gives up the GIL); a batch that adds
    keys makes the next ones transactions until enough add none (here 1); states and the
    count are those of the transactional path, also after a reopen."""
    monkeypatch.setattr(sqlite_module, "OVERWRITE_AFTER_BATCHES", 1)
    statements: list[str] = []

    async def run() -> None:
        s = SqliteStorage(tmp_path, cache_bytes=0)
        s._conn.set_trace_callback(lambda sql: statements.append(sql.split(" ")[0]))
        await asyncio.gather(*(s.save(f"k{i}", _state(1)) for i in range(4)))
        assert statements == ["BEGIN", "UPDATE", "INSERT", "COMMIT"], statements
        statements.clear()
        await asyncio.gather(*(s.save(f"k{i}", _state(2)) for i in range(4)))
        assert statements == ["BEGIN", "UPDATE", "COMMIT"], statements  # it added no key
        statements.clear()
        await asyncio.gather(*(s.save(f"k{i}", _state(3)) for i in range(4)))
        assert statements == ["UPDATE"], statements
        statements.clear()
        await asyncio.gather(*(s.save(f"k{i}", _state(4)) for i in range(2, 6)))
        assert statements == ["UPDATE", "INSERT"], statements  # two keys were new
        assert s.key_count() == 6
        statements.clear()
        await asyncio.gather(*(s.save(f"k{i}", _state(5)) for i in range(6)))
        assert statements == ["BEGIN", "UPDATE", "COMMIT"], statements
        assert [s.load(f"k{i}").value.version for i in range(6)] == [5] * 6
        await s.close()
        reopened = SqliteStorage(tmp_path, cache_bytes=0)
        assert reopened.key_count() == 6
        assert reopened.load("k5") == _state(5)
        await reopened.close()
    asyncio.run(run())


def test_overwrites_wait_for_enough_batches_without_new_keys(tmp_path: Path) -> None:
    """Goal: a load that adds a key now and then pays the overwrite's second statement and
    fsync at most once every ``OVERWRITE_AFTER_BATCHES`` batches: until that many batches
    of saves in a row added no key, batches are transactions."""
    statements: list[str] = []
    quiet = sqlite_module.OVERWRITE_AFTER_BATCHES

    async def run() -> None:
        s = SqliteStorage(tmp_path, cache_bytes=0)
        await s.save("k", _state(1))
        s._conn.set_trace_callback(lambda sql: statements.append(sql.split(" ")[0]))
        for n in range(quiet):
            await s.save("k", _state(2 + n))
        assert statements.count("BEGIN") == quiet, statements
        statements.clear()
        await s.save("k", _state(50))
        assert statements == ["UPDATE"], statements
        statements.clear()
        await asyncio.gather(s.save("k", _state(51)), s.save("new", _state(1)))
        assert statements == ["UPDATE", "INSERT"], statements
        statements.clear()
        await s.save("k", _state(52))
        assert statements[0] == "BEGIN", statements
        assert s.key_count() == 2
        await s.close()
    asyncio.run(run())


def test_a_transaction_left_open_never_takes_an_overwrite_in(tmp_path: Path) -> None:
    """Goal: after a batch whose COMMIT and ROLLBACK both failed (its transaction left
    open), a batch of saves is never acknowledged unless committed: an UPDATE alone run
    inside that transaction would be (found by review: a save acknowledged, then gone
    after a reopen)."""
    async def run() -> None:
        s = SqliteStorage(tmp_path)
        await asyncio.gather(*(s.save(f"k{i}", _st(1, b"one")) for i in range(2)))
        s._batches_without_new_keys = sqlite_module.OVERWRITE_AFTER_BATCHES
        flaky = _FlakyCursor(s._wcur)
        s._wcur = flaky  # type: ignore[assignment]
        flaky.fail_commit_and_rollback = True
        with pytest.raises(RuntimeError, match="storage commit failed"):
            await s.set_meta("m", "x")  # a transaction: left open
        assert s._conn.in_transaction
        assert s._batches_without_new_keys >= sqlite_module.OVERWRITE_AFTER_BATCHES
        answer = await asyncio.gather(s.save("k1", _st(4, b"four")), return_exceptions=True)
        other = sqlite3.connect(tmp_path / "paxoskv.sqlite3")
        on_disk = other.execute("SELECT version FROM registers WHERE key='k1'").fetchall()
        other.close()
        if not isinstance(answer[0], BaseException):
            assert on_disk == [(4,)], "a save was acknowledged and is not committed"
        s._wcur = flaky.real  # type: ignore[assignment]
        await s.close()
    asyncio.run(run())


class _FailingInsert:
    """The writer's cursor, with every INSERT failing (a disk error)."""

    def __init__(self, real: sqlite3.Cursor) -> None:
        self.real = real

    def execute(self, sql: str, *args: Any) -> Any:
        if sql.startswith("INSERT"):
            raise sqlite3.OperationalError("disk I/O error (INSERT)")
        return self.real.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_an_overwrite_whose_insert_fails_leaves_reads_to_the_disk(tmp_path: Path) -> None:
    """Goal: a batch of saves taken as overwrites, whose UPDATE committed some states and
    whose INSERT for a new key then failed, is reported failed to every waiter, and the
    states the UPDATE made durable are what reads return from then on (from the disk:
    the cache must not keep the older ones), with the count unchanged. An acceptor told
    its save failed may still hold the state, as after a reply lost on the way."""
    async def run() -> None:
        s = SqliteStorage(tmp_path)
        await asyncio.gather(*(s.save(f"k{i}", _state(1)) for i in range(3)))
        await asyncio.gather(*(s.save(f"k{i}", _state(2)) for i in range(3)))
        assert s.load("k0") == _state(2)  # cached
        s._batches_without_new_keys = sqlite_module.OVERWRITE_AFTER_BATCHES  # (an overwrite)
        s._wcur = _FailingInsert(s._wcur)  # type: ignore[assignment]
        results = await asyncio.gather(s.save("k0", _state(3)), s.save("new", _state(3)),
                                       return_exceptions=True)
        assert all(isinstance(r, RuntimeError) for r in results), results
        assert s.load("k0") == _state(3), "the cache hid the state the UPDATE committed"
        assert not s.has_row("new")
        assert s.key_count() == 3
        s._wcur = s._wcur.real  # type: ignore[attr-defined]
        await s.close()
        reopened = SqliteStorage(tmp_path)
        assert reopened.load("k0") == _state(3)
        assert reopened.key_count() == 3
        await reopened.close()
    asyncio.run(run())


_CRASH_BETWEEN_STATEMENTS = """
import asyncio, os, sys
from pathlib import Path
from paxoskv.core.acceptor import AcceptorState
from paxoskv.core.ballot import Ballot
from paxoskv.core.register import Value
from paxoskv.storage import sqlite as sqlite_module

def state(n):
    return AcceptorState(Ballot(n, 1), Ballot(n, 1), Value(n, b"x" * 100))

class Crash:
    def __init__(self, real):
        self.real = real
    def execute(self, sql, *args):
        if sql.startswith("INSERT"):
            os._exit(3)  # the UPDATE has committed; the INSERT never runs
        return self.real.execute(sql, *args)
    def __getattr__(self, name):
        return getattr(self.real, name)

async def run():
    s = sqlite_module.SqliteStorage(Path(sys.argv[1]))
    await asyncio.gather(*(s.save(f"k{i}", state(1)) for i in range(2)))
    s._batches_without_new_keys = sqlite_module.OVERWRITE_AFTER_BATCHES
    s._wcur = Crash(s._wcur)
    await asyncio.gather(s.save("k0", state(2)), s.save("new", state(2)))
    os._exit(0)  # not reached: the writer exits the process first

asyncio.run(run())
"""


def test_a_crash_between_an_overwrites_two_statements_keeps_the_update_only(
        tmp_path: Path) -> None:
    """Goal: a process that dies after an overwrite's UPDATE committed and before its
    INSERT ran reopens with the UPDATE's state (durable, never acknowledged: an accept
    whose reply was lost), without the new key, and with an exact key count."""
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-c", _CRASH_BETWEEN_STATEMENTS, str(tmp_path)],
                          timeout=60, capture_output=True)
    assert done.returncode == 3, done.stderr.decode()

    async def run() -> None:
        reopened = SqliteStorage(tmp_path)
        assert reopened.load("k0") == _state(2)
        assert reopened.load("k1") == _state(1)
        assert not reopened.has_row("new")
        assert reopened.key_count() == 2
        assert reopened.verify() == 2
        await reopened.close()
    asyncio.run(run())


def test_a_large_batch_is_written_in_a_few_statements_of_fixed_texts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Goal: a batch is written in a few statements whatever its size (each statement step
    lets go of the GIL, and a row each cost the writer a wait for a busy event loop), of
    a few fixed texts (padded rows: no statement cache churn); a batch larger than one
    statement's rows, of old and new keys, keeps the count exact, stores every key's last
    state and no padding row."""
    writes: list[str] = []
    sizes: set[int] = set()
    for name in ("_update_rows", "_insert_rows"):
        made = getattr(sqlite_module, name)
        monkeypatch.setattr(sqlite_module, name,
                            lambda size, made=made: sizes.add(size) or made(size))

    async def run() -> None:
        s = SqliteStorage(tmp_path, cache_bytes=0)
        await asyncio.gather(*(s.save(f"k{i:03}", _state(1)) for i in range(150)))
        s._conn.set_trace_callback(
            lambda sql: writes.append(sql) if sql.startswith(("UPDATE", "INSERT")) else None)
        # 300 keys, half of them already stored, and every key twice: one batch of 600
        await asyncio.gather(*(s.save(f"k{i:03}", _state(n)) for n in (2, 3)
                               for i in range(300)))
        assert s.key_count() == 300
        assert s.load("k000") == s.load("k299") == _state(3)
        for size in (1, 3, 5, 17, 33):
            await asyncio.gather(*(s.save(f"n{size}-{i}", _state(4)) for i in range(size)))
        assert s.key_count() == 300 + 1 + 3 + 5 + 17 + 33
        await s.close()
        reopened = SqliteStorage(tmp_path, cache_bytes=0)
        assert reopened.key_count() == 359
        assert reopened.load("k150") == _state(3)
        await reopened.close()
    asyncio.run(run())
    # The 600 saves reach the writer as batches of at most 512 (512 and 88): 300 keys in
    # chunks of 256 (half of them new: an UPDATE and an INSERT) and 44 (all new: both),
    # then 88 keys that all have rows by then (an UPDATE alone). Then the five batches of
    # new keys, two statements each. (A statement per row made it 600 and more.)
    assert len(writes) == 4 + 1 + 2 * 5, [w[:60] for w in writes]
    assert sizes <= {1, 2, 4, 8, 16, 32, 64, 128, 256}, sizes


def test_a_statement_ends_once_its_values_reach_a_mebibyte(tmp_path: Path) -> None:
    """Goal: large values do not pile up in one statement (the sqlite3 module and SQLite
    each copy a statement's values): a run of rows ends once its values reach 1 MiB, so
    three values of 600 KiB go in two statements, and all three are stored."""
    big = 600 * 1024
    rows = [sqlite_module._to_row(f"b{i}", _state(1, bytes([i]) * big)) for i in range(3)]
    assert [len(c) for c in sqlite_module._chunks(rows)] == [2, 1]
    small = [sqlite_module._to_row(f"s{i}", _state(1)) for i in range(600)]
    assert [len(c) for c in sqlite_module._chunks(small)] == [256, 256, 88]
    updates: list[str] = []

    async def run() -> None:
        s = SqliteStorage(tmp_path, cache_bytes=0)
        await asyncio.gather(*(s.save(f"b{i}", _state(1)) for i in range(3)))
        s._conn.set_trace_callback(
            lambda sql: updates.append(sql) if sql.startswith("UPDATE") else None)
        await asyncio.gather(*(s.save(f"b{i}", _state(2, bytes([i]) * big))
                               for i in range(3)))
        assert len(updates) == 2
        assert [s.load(f"b{i}") for i in range(3)] == [
            _state(2, bytes([i]) * big) for i in range(3)]
        await s.close()
    asyncio.run(run())


def test_reads_and_commits_make_no_cursor_per_statement(tmp_path: Path) -> None:
    """Goal: the loop's reads and the writer's commits use one cursor each. A cursor per
    statement (``Connection.execute``) leaves a weak reference in the connection's list,
    pruned only every 200 cursors: a few hundred objects made all through a load and kept
    after it (docs/gc.md)."""
    def weakrefs_held(conn: sqlite3.Connection) -> int:
        return sum(len(r) for r in gc.get_referents(conn) if isinstance(r, list))

    async def run() -> None:
        s = SqliteStorage(tmp_path, cache_bytes=0)
        for i in range(150):
            await s.save(f"k{i}", _state(1))
            assert s.load(f"k{i}") == _state(1)
            s.peek(f"k{i}")
            s.has_row(f"k{i}")
        s.tombstones(None, 10)
        assert weakrefs_held(s._reader) <= 2
        assert weakrefs_held(s._conn) <= 4
        await s.close()
    asyncio.run(run())


def test_key_count_is_exact_across_inserts_updates_and_restarts(tmp_path: Path) -> None:
    """Goal: key_count() counts distinct keys without holding them: updates do not count,
    a batch with the same new key twice counts it once, and a restart counts again."""
    async def run() -> None:
        s = SqliteStorage(tmp_path, cache_bytes=0)
        assert s.key_count() == 0
        await s.save("a", _state(1))
        await s.save("a", _state(2))
        assert s.key_count() == 1
        await asyncio.gather(s.save("b", _state(1)), s.save("b", _state(2)),
                             s.save("a", _state(3)), *(s.save(f"c{i}", _state(1))
                                                       for i in range(600)))
        assert s.key_count() == 602
        await s.set_meta("m", "1")
        assert s.key_count() == 602
        await s.close()
        s2 = SqliteStorage(tmp_path, cache_bytes=0)
        assert s2.key_count() == 602
        await s2.save("c1", _state(5))
        await s2.save("d", _state(1))
        assert s2.key_count() == 603
        await s2.close()
    asyncio.run(run())


def test_a_save_is_invisible_until_durable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    """Goal: while a save's transaction is open (not yet committed and fsync'd), load(),
    key_count() and get_meta() show the previous durable state; once save() returns, the new
    one, from the cache and, after eviction, from disk."""
    gate = threading.Event()
    writing = threading.Event()
    real_to_row = sqlite_module._to_row

    def held_to_row(key: str, state: AcceptorState) -> sqlite_module._Row:
        if key == "k" and state == _state(2):
            writing.set()
            gate.wait()
        return real_to_row(key, state)

    monkeypatch.setattr(sqlite_module, "_to_row", held_to_row)

    async def run() -> None:
        s = SqliteStorage(tmp_path)
        await s.save("k", _state(1))
        pending = asyncio.ensure_future(s.save("k", _state(2)))
        new_key = asyncio.ensure_future(s.save("new", _state(1)))
        meta = asyncio.ensure_future(s.set_meta("m", "v"))
        await asyncio.get_running_loop().run_in_executor(None, writing.wait)
        # the writer is held inside the first write's transaction; the others share it or
        # wait behind it
        assert s.load("k") == _state(1)
        assert s.load("new") == EMPTY_STATE
        assert s.key_count() == 1
        assert s.get_meta("m") is None
        gate.set()
        await asyncio.gather(pending, new_key, meta)
        assert s.load("k") == _state(2)
        assert (s.key_count(), s.get_meta("m")) == (2, "v")
        await s.close()
        s2 = SqliteStorage(tmp_path, cache_bytes=0)
        assert s2.load("k") == _state(2)
        await s2.close()
    asyncio.run(run())


def test_the_disk_is_never_more_than_one_batch_ahead_of_the_cache(tmp_path: Path) -> None:
    """Goal: the race between a cache miss and a commit not yet reported to the loop: the
    writer does not begin a batch before the loop applied the previous one, so a state read
    from disk (then cached) is never followed by an older one."""
    async def run() -> None:
        s = SqliteStorage(tmp_path, cache_bytes=10_000)
        await s.save("k", _state(1))
        s._cache.clear()
        first = asyncio.ensure_future(s.save("k", _state(2)))
        await asyncio.sleep(0)  # the save is submitted; its turn of the loop ends...
        await asyncio.sleep(0)  # ...and hands it over: the writer takes batch 1 alone
        second = asyncio.ensure_future(s.save("k", _state(3)))
        # Hold the loop (no await) until batch 1 has committed and ended: batch 2 cannot
        # even be queued, and the writer now waits for the loop to apply batch 1.
        while not s._done:
            time.sleep(0.001)
        seen = s.load("k")  # a miss that reads the disk while batch 1 is unreported
        assert seen == _state(2)
        await first
        assert s.load("k") == _state(2)  # batch 2 has not committed behind our back
        await second
        assert s.load("k") == _state(3)
        await s.close()
    asyncio.run(run())


def test_new_directories_use_a_rowid_table(tmp_path: Path) -> None:
    """Goal: 1 KiB values stay in their b-tree page instead of an overflow page each (a
    WITHOUT ROWID table spilled them: about 4.7 KB of file per 1 KiB value)."""
    async def run() -> None:
        s = SqliteStorage(tmp_path)
        await asyncio.gather(*(s.save(f"k{i:04d}", _state(1, bytes(1024))) for i in range(2000)))
        await s.close()
    asyncio.run(run())
    conn = sqlite3.connect(tmp_path / "paxoskv.sqlite3")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    assert pages * size / 2000 < 2000


_OLD_SCHEMA = """
CREATE TABLE registers (
  key TEXT NOT NULL UNIQUE,
  bp_counter INTEGER NOT NULL, bp_node INTEGER NOT NULL, bp_inc INTEGER NOT NULL,
  ba_counter INTEGER NOT NULL, ba_node INTEGER NOT NULL, ba_inc INTEGER NOT NULL,
  version INTEGER NOT NULL, data BLOB, recent TEXT NOT NULL, crc INTEGER NOT NULL
);
CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@pytest.mark.parametrize("without_rowid", [False, True])
def test_a_directory_made_before_fast_ballots_opens_and_verifies(tmp_path: Path,
                                                                 without_rowid: bool) -> None:
    """Goal: a data directory written before ballots had a fast part (no bp_fast/ba_fast
    columns) still opens, its rows still pass their checksums, and it then stores fast
    ballots too.

    Method: build the old table by hand (both the rowid and the older WITHOUT ROWID form),
    with a row whose CRC is the old one (a classic ballot's text is unchanged); open it,
    load and verify; save a state with fast ballots, reopen, and read it back."""
    state = AcceptorState(Ballot(7, 2, 3), Ballot(5, 1, 1), Value(3, b"old", (("r1", 3),)))
    conn = sqlite3.connect(tmp_path / "paxoskv.sqlite3")
    schema = _OLD_SCHEMA
    if without_rowid:
        schema = schema.replace("key TEXT NOT NULL UNIQUE", "key TEXT PRIMARY KEY").replace(
            "crc INTEGER NOT NULL\n)", "crc INTEGER NOT NULL\n) WITHOUT ROWID")
    conn.executescript(schema)
    row = sqlite_module._to_row("old", state)[:11]  # the old columns only
    conn.execute("INSERT INTO registers VALUES (?,?,?,?,?,?,?,?,?,?,?)", row)
    conn.commit()
    conn.close()
    fast = AcceptorState(Ballot(9, 1, 1, 2), Ballot(9, 1, 1, 2), Value(4, b"new"))

    async def run() -> None:
        s = SqliteStorage(tmp_path)
        assert s.load("old") == state
        assert s.verify() == 1
        await s.save("fast", fast)
        await s.close()
        s2 = SqliteStorage(tmp_path)
        assert s2.load("fast") == fast
        assert s2.load("old") == state
        assert s2.verify() == 2
        await s2.close()
    asyncio.run(run())


def test_a_fast_ballot_is_covered_by_the_checksum(tmp_path: Path) -> None:
    """Goal: the fast part of a stored ballot is checksummed like the others: a row whose
    ba_fast changed on disk is refused when read."""
    fast = AcceptorState(Ballot(9, 1, 1, 1), Ballot(9, 1, 1, 1), Value(4, b"v"))

    async def run() -> None:
        s = SqliteStorage(tmp_path)
        await s.save("k", fast)
        await s.close()
    asyncio.run(run())
    conn = sqlite3.connect(tmp_path / "paxoskv.sqlite3")
    conn.execute("UPDATE registers SET ba_fast = 2, bp_fast = 2")
    conn.commit()
    conn.close()

    async def reopen() -> None:
        s = SqliteStorage(tmp_path, cache_bytes=0)
        with pytest.raises(CorruptRecord):
            s.load("k")
        await s.close()
    asyncio.run(reopen())


def _db_bytes(s: SqliteStorage) -> int:
    return s.path.stat().st_size


def test_new_files_return_free_pages_to_the_volume(tmp_path: Path) -> None:
    """Goal: pages freed by overwriting large values with small ones go back to the volume:
    the writer's incremental vacuum, in bounded steps, shrinks the file itself (a real
    SQLite file). Durability settings stay WAL + synchronous=FULL."""
    big = b"x" * 10_000  # overflow pages, freed when the value shrinks

    async def run() -> tuple[int, int, int, int]:
        s = SqliteStorage(tmp_path, vacuum_threshold_bytes=1 << 40, vacuum_step_pages=64,
                          vacuum_step_pause_s=0.0, maintain_interval_s=0.05)
        assert s._conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # INCREMENTAL
        mode = s._conn.execute("PRAGMA journal_mode").fetchone()[0]
        assert (mode, s._conn.execute("PRAGMA synchronous").fetchone()[0]) == ("wal", 2)
        for i in range(0, 1000, 100):
            await asyncio.gather(*(s.save(f"k{j}", AcceptorState(
                Ballot(1, 1), Ballot(1, 1), Value(1, big))) for j in range(i, i + 100)))
        s._reader.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        full = _db_bytes(s)
        await asyncio.gather(*(s.save(f"k{j}", AcceptorState(
            Ballot(2, 1), Ballot(2, 1), Value(2, b"y"))) for j in range(1000)))
        freed = s.disk_usage().freelist_bytes
        before = _db_bytes(s)
        s._vacuum_high = 1 << 20  # only now: the numbers above are from before any trimming
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _db_bytes(s) > before // 2:
            await asyncio.sleep(0.05)
        after = _db_bytes(s)
        assert s.load("k7").value == Value(2, b"y")
        await s.close()
        return full, freed, before, after

    full, freed, before, after = asyncio.run(run())
    print(f"file {full} bytes full, {freed} bytes free inside; {before} -> {after} bytes")
    assert freed > 5_000_000
    assert before >= full
    assert after < before // 2
    s2 = SqliteStorage(tmp_path)
    assert s2.verify() == 1000


def test_collecting_every_row_shrinks_the_file_and_the_wal_back_to_the_data(
        tmp_path: Path) -> None:
    """Goal: once every row is collected, trimming returns the free pages down to a small
    fraction of the pages still in use, and ends with a TRUNCATE checkpoint, so the
    directory comes back near an empty one. Before, trimming stopped with half the
    threshold still free inside the file (4 MiB by default) and a passive checkpoint left
    the WAL at the size the vacuum steps had grown it to.

    Method: 3,000 rows of 1 KB, each collected; a 1 MiB threshold (so the old stop level
    would be 512 KiB free) and steps of 64 KiB. The file must end under 256 KiB and the WAL
    empty."""
    from paxoskv.core.acceptor import Floor

    wal = tmp_path / "paxoskv.sqlite3-wal"

    async def run() -> tuple[int, int, int, int]:
        s = SqliteStorage(tmp_path, vacuum_threshold_bytes=1 << 40, vacuum_step_pages=16,
                          vacuum_step_pause_s=0.0, maintain_interval_s=0.05)
        keys = [f"k{j:05d}" for j in range(3000)]
        for i in range(0, len(keys), 500):
            await asyncio.gather(*(s.save(k, _st(1, b"x" * 1000)) for k in keys[i:i + 500]))
        full = _db_bytes(s) + wal.stat().st_size  # (pages not yet checkpointed included)
        await asyncio.gather(*(s.collect(k, Floor(Ballot(2, 1), 1)) for k in keys))
        assert s.key_count() == 0
        s._vacuum_high = 1 << 20  # trimming is due now
        deadline = time.monotonic() + 20
        # (An idle writer may empty the WAL before the trim starts: wait for the file too.)
        while time.monotonic() < deadline and (wal.stat().st_size > 0 or s._trimming
                                               or _db_bytes(s) >= 256 * 1024):
            await asyncio.sleep(0.05)
        after, wal_after = _db_bytes(s), wal.stat().st_size
        free = s.disk_usage().freelist_bytes
        await s.close()
        return full, after, wal_after, free

    full, after, wal_after, free = asyncio.run(run())
    print(f"file {full} bytes full; after collection {after} bytes ({free} free inside), "
          f"WAL {wal_after} bytes")
    assert full > 3_000_000
    assert after < 256 * 1024
    assert wal_after == 0


def test_a_small_store_emptied_by_collection_is_trimmed_below_the_threshold(
        tmp_path: Path) -> None:
    """Goal: with the default threshold (8 MiB), a store whose few MB of rows were all
    collected is still trimmed, because its free pages are far more than the pages in use
    (a quarter of them, at least 1 MiB, starts a trim). Before, under 8 MiB free was never
    returned: a node whose 10,000 keys were collected kept 2 MB of free pages and 4 MB of
    WAL beside 0.25 MB of data (``make bench-gc``)."""
    from paxoskv.core.acceptor import Floor

    wal = tmp_path / "paxoskv.sqlite3-wal"

    async def run() -> tuple[int, int, int]:
        s = SqliteStorage(tmp_path, vacuum_step_pause_s=0.0, maintain_interval_s=0.05)
        keys = [f"k{j:05d}" for j in range(3000)]
        for i in range(0, len(keys), 500):
            await asyncio.gather(*(s.save(k, _st(1, b"x" * 1000)) for k in keys[i:i + 500]))
        full = _db_bytes(s) + wal.stat().st_size  # (pages not yet checkpointed included)
        await asyncio.gather(*(s.collect(k, Floor(Ballot(2, 1), 1)) for k in keys))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (wal.stat().st_size > 0 or s._trimming):
            await asyncio.sleep(0.05)
        after, wal_after = _db_bytes(s), wal.stat().st_size
        await s.close()
        return full, after, wal_after

    full, after, wal_after = asyncio.run(run())
    print(f"file {full} bytes full; {after} bytes after collection, WAL {wal_after} bytes")
    assert full > 3_000_000
    assert after < full < 3 * sqlite_module.VACUUM_THRESHOLD_BYTES  # (WAL copies of pages)
    assert after < 256 * 1024
    assert wal_after == 0


def test_a_file_made_without_auto_vacuum_keeps_working_untouched(tmp_path: Path) -> None:
    """Goal: a data directory made before auto_vacuum (NONE) opens, keeps NONE (no VACUUM
    at start-up: docs/storage.md) and its free pages are still reported."""
    conn = sqlite3.connect(tmp_path / "paxoskv.sqlite3")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(sqlite_module._SCHEMA)
    conn.close()

    async def run() -> None:
        s = SqliteStorage(tmp_path, vacuum_threshold_bytes=1, maintain_interval_s=0.01)
        assert not s._incremental
        await asyncio.gather(*(s.save(f"k{j}", AcceptorState(
            Ballot(1, 1), Ballot(1, 1), Value(1, b"x" * 10_000))) for j in range(50)))
        await asyncio.gather(*(s.save(f"k{j}", AcceptorState(
            Ballot(2, 1), Ballot(2, 1), Value(2, None))) for j in range(50)))
        await asyncio.sleep(0.1)
        assert s._conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
        assert s.disk_usage().freelist_bytes > 0
        await s.close()
    asyncio.run(run())


def test_disk_usage_counts_every_file_and_the_volume(tmp_path: Path) -> None:
    """Goal: the data directory's bytes include the db, its WAL and any other file in it;
    the volume's numbers are statvfs's."""
    async def run() -> None:
        s = SqliteStorage(tmp_path / "data")
        await s.save("k", STATE)
        u = s.disk_usage()
        files = {p.name: p.stat().st_blocks * 512 for p in (tmp_path / "data").iterdir()}
        (tmp_path / "data" / "sub").mkdir()
        (tmp_path / "data" / "sub" / "other").write_bytes(b"z" * 100_000)
        u2 = s.disk_usage()
        await s.close()
        assert set(files) == {"paxoskv.sqlite3", "paxoskv.sqlite3-wal", "paxoskv.sqlite3-shm"}
        assert u.data_dir_bytes == sum(files.values())
        assert u2.data_dir_bytes >= u.data_dir_bytes + 100_000
        assert 0 < u.volume_free_bytes <= u.volume_size_bytes
        assert u.freelist_bytes == 0
    asyncio.run(run())


def test_the_wal_is_cut_back_after_a_large_batch(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Goal: journal_size_limit: a batch of large values grows the WAL, and once it has been
    checkpointed and reset the file is cut back instead of keeping that size."""
    monkeypatch.setattr(sqlite_module, "_WAL_SIZE_LIMIT", 1 << 20)
    wal = tmp_path / "paxoskv.sqlite3-wal"

    async def run() -> tuple[int, int]:
        s = SqliteStorage(tmp_path)
        await asyncio.gather(*(s.save(f"k{j}", AcceptorState(
            Ballot(1, 1), Ballot(1, 1), Value(1, b"x" * 100_000))) for j in range(100)))
        grown = wal.stat().st_size
        s._reader.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        await s.save("small", STATE)  # the writer restarts the WAL from its start
        cut = wal.stat().st_size
        await s.close()
        return grown, cut

    grown, cut = asyncio.run(run())
    assert grown > 5 << 20
    assert cut <= 1 << 20


def _st(n: int, data: bytes) -> AcceptorState:
    return AcceptorState(Ballot(n, 1), Ballot(n, 1), Value(n, data))


class _FlakyCursor:
    """The writer's cursor, with COMMIT and ROLLBACK failing on demand (a disk error that
    leaves the transaction open)."""

    def __init__(self, real: sqlite3.Cursor) -> None:
        self.real = real
        self.fail_commit_and_rollback = False

    def execute(self, sql: str, *args: Any) -> Any:
        if self.fail_commit_and_rollback and sql in ("COMMIT", "ROLLBACK"):
            if sql == "ROLLBACK":
                self.fail_commit_and_rollback = False
            raise sqlite3.OperationalError(f"disk I/O error ({sql})")
        return self.real.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_a_failed_batch_is_not_committed_later_by_the_vacuum_step(tmp_path: Path) -> None:
    """Goal: a batch whose COMMIT and ROLLBACK both failed (its waiters told so) never
    becomes durable through the vacuum step, whose executescript would COMMIT a
    transaction left open (found by review; failed before the fix)."""
    async def run() -> None:
        s = SqliteStorage(tmp_path, vacuum_threshold_bytes=1 << 40, vacuum_step_pages=1,
                          vacuum_step_pause_s=0.0, maintain_interval_s=0.02)
        await asyncio.gather(*(s.save(f"k{j}", _st(1, b"x" * 10_000)) for j in range(50)))
        await asyncio.gather(*(s.save(f"k{j}", _st(2, b"y")) for j in range(50)))
        assert s.disk_usage().freelist_bytes > 100_000
        assert s.load("k0").ballot_promised == Ballot(2, 1)  # cached
        flaky = _FlakyCursor(s._wcur)
        s._wcur = flaky  # type: ignore[assignment]
        flaky.fail_commit_and_rollback = True
        s._batches_without_new_keys = 0  # a transaction (an overwrite alone has no COMMIT)
        with pytest.raises(RuntimeError, match="storage commit failed"):
            await s.save("k0", _st(9, b"never acknowledged"))
        s._vacuum_high = 4096  # trimming is due now
        await asyncio.sleep(0.3)
        disk = sqlite3.connect(tmp_path / "paxoskv.sqlite3")
        row = disk.execute("SELECT * FROM registers WHERE key='k0'").fetchall()
        cached = s.load("k0")
        assert cached.ballot_promised == Ballot(2, 1)  # the failed save left the cache alone
        s._wcur = flaky.real  # type: ignore[assignment]
        await s.close()
        assert b"never acknowledged" not in repr(row).encode(), \
            "a batch reported failed became durable (committed by the vacuum step)"
    asyncio.run(run())


def test_collect_removes_the_row_and_raises_the_floor_durably(tmp_path: Path) -> None:
    """Goal: tombstone collection (docs/gc.md): one commit removes the row and raises its
    bucket's floor; after a reopen the key reads as absent at the floor (promised at its
    ballot, version kept), the count went down, and the other keys are untouched.

    Method: save a tombstone and a live key, collect the tombstone, check load, has_row,
    floor and key_count before and after a reopen; a second key of the same bucket
    collected with a lower floor leaves each part at its highest."""
    from paxoskv.core.acceptor import Floor, absent_state, floor_bucket

    tomb = AcceptorState(Ballot(9, 2, 1), Ballot(9, 2, 1), Value(7, None, (("d", 7),)))
    floor = Floor(Ballot(9, 2, 1), 7)
    same_bucket = next(f"x{i}" for i in range(1_000_000)
                       if floor_bucket(f"x{i}") == floor_bucket("gone"))

    async def run() -> None:
        s = SqliteStorage(tmp_path)
        await s.save("gone", tomb)
        await s.save("live", STATE)
        await s.save(same_bucket, tomb)
        assert s.key_count() == 3
        await s.collect("gone", floor)
        assert not s.has_row("gone") and s.has_row("live")
        assert s.load("gone") == absent_state(floor)
        assert s.floor("gone") == floor
        assert s.key_count() == 2
        await s.collect(same_bucket, Floor(Ballot(3, 1, 1), 9))
        assert s.floor("gone") == Floor(Ballot(9, 2, 1), 9)
        await s.close()
        s2 = SqliteStorage(tmp_path)
        assert s2.load("gone") == absent_state(Floor(Ballot(9, 2, 1), 9))
        assert s2.load("live") == STATE
        assert s2.key_count() == 1
        assert s2.keys("", None, 10) == ["live"]
        assert s2.floors_raised() == 1
        await s2.close()
    asyncio.run(run())


def test_collected_keys_leave_no_memory_behind(tmp_path: Path) -> None:
    """Goal: once every key is collected the storage holds about what it held empty: the
    bucket floors stay on disk (read when needed), and the cache's table, which held every
    key, is rebuilt small and its segments unmapped. Before, each raised floor was kept in
    a dict (about 230 bytes a bucket, 12 MB after 100,000 keys) and the emptied cache kept
    its table.

    Method: 20,000 keys saved and then collected (every one of the buckets raised) with the
    floors' memory traced; the cache's table and segments mapped before and after.
    The floors still answer, from the disk, after a reopen too."""
    import tracemalloc

    from paxoskv.core.acceptor import FLOOR_BUCKETS, Floor, absent_state

    keys = [f"k{j:06d}" for j in range(20_000)]
    floor = Floor(Ballot(5, 1, 1), 3)

    async def run() -> tuple[int, int, int, int]:
        s = SqliteStorage(tmp_path)
        empty_table = s._cache.table_bytes + s._cache.mapped_bytes
        for i in range(0, len(keys), 5000):
            await asyncio.gather(*(s.save(k, _st(1, b"v")) for k in keys[i:i + 5000]))
        full_table = s._cache.table_bytes + s._cache.mapped_bytes
        async def collect_all() -> None:
            for i in range(0, len(keys), 5000):
                await asyncio.gather(*(s.collect(k, floor) for k in keys[i:i + 5000]))

        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        await collect_all()
        grown = await _traced_growth_settles(before, 1_000_000)
        tracemalloc.stop()
        assert s.key_count() == 0
        assert s.load(keys[7]) == absent_state(floor)
        assert s.floors_raised() == FLOOR_BUCKETS
        assert s.floor_page(-1, 3)[0][1] == floor
        table = s._cache.table_bytes + s._cache.mapped_bytes
        await s.close()
        return empty_table, full_table, table, grown

    empty_table, full_table, table, grown = asyncio.run(run())
    print(f"cache table {empty_table} bytes empty, {full_table} full, {table} after; "
          f"{grown} bytes traced growth over the collections")
    assert full_table > 500_000
    assert table < 2 * 1024 * 1024  # the newest segment (emptied) and the least table
    assert grown < 1_000_000  # floors in memory: about 4 MB
    s2 = SqliteStorage(tmp_path)
    try:
        assert asyncio.run(_load_after_reopen(s2, keys[7])) == absent_state(floor)
    finally:
        asyncio.run(s2.close())


async def _load_after_reopen(s: SqliteStorage, key: str) -> AcceptorState:
    return s.load(key)


async def _traced_growth_settles(before: int, bound: int, within_s: float = 5.0) -> int:
    """The traced memory grown since ``before``, polled until below ``bound`` or
    ``within_s`` passed: the writer thread lets go of its last batch just after the loop has
    answered it, so on a loaded machine the first look can come a moment early. What is
    held for good (what the callers test for) stays above the bound the whole time."""
    import gc
    import tracemalloc

    deadline = time.monotonic() + within_s
    while True:
        await asyncio.sleep(0.05)
        gc.collect()  # the finished tasks of the last gather
        grown = tracemalloc.get_traced_memory()[0] - before
        if grown < bound or time.monotonic() >= deadline:
            return grown


def test_an_idle_writer_holds_no_batch(tmp_path: Path) -> None:
    """Goal: once its callers are answered, a batch's writes (their values too) are freed;
    an idle writer thread keeps none of them. Before, the writer's locals held its last
    batch until the next one began: up to ``batch_max`` values for as long as the node
    stayed idle. Method: 200 writes of 20 kB (4 MB) with the cache off, traced."""
    import tracemalloc

    async def run() -> int:
        s = SqliteStorage(tmp_path, cache_bytes=0)
        try:
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            await asyncio.gather(*(s.save(f"k{i}", _st(1, bytes([i % 250]) * 20_000))
                                   for i in range(200)))
            grown = await _traced_growth_settles(before, 500_000)
            tracemalloc.stop()
            assert s.load("k7").value.data == bytes([7]) * 20_000
            return grown
        finally:
            await s.close()

    grown = asyncio.run(run())
    print(f"{grown} bytes traced after 4 MB written and answered")
    assert grown < 500_000


def test_a_directory_made_before_collection_opens_with_no_floor(tmp_path: Path) -> None:
    """Goal: the schema migration: a data directory without the gc_floors table opens,
    keeps its rows, reads absent keys as before (EMPTY_STATE), and can collect."""
    from paxoskv.core.acceptor import Floor

    async def make() -> None:
        s = SqliteStorage(tmp_path)
        await s.save("k", STATE)
        await s.close()
    asyncio.run(make())
    conn = sqlite3.connect(tmp_path / "paxoskv.sqlite3")
    conn.execute("DROP TABLE gc_floors")
    conn.commit()
    conn.close()

    async def run() -> None:
        s = SqliteStorage(tmp_path)
        assert s.load("k") == STATE
        assert s.load("never") == EMPTY_STATE
        await s.collect("k", Floor(Ballot(3, 1, 2), 4))
        assert s.load("k").ballot_promised == Ballot(3, 1, 2)
        await s.close()
    asyncio.run(run())


def test_a_corrupt_floor_is_refused(tmp_path: Path) -> None:
    from paxoskv.core.acceptor import Floor

    async def make() -> None:
        s = SqliteStorage(tmp_path)
        await s.collect("k", Floor(Ballot(3, 1, 2), 4))
        await s.close()
    asyncio.run(make())
    conn = sqlite3.connect(tmp_path / "paxoskv.sqlite3")
    conn.execute("UPDATE gc_floors SET version = 1")
    conn.commit()
    conn.close()
    with pytest.raises(CorruptRecord):
        SqliteStorage(tmp_path)


def test_a_save_submitted_after_a_collect_of_its_key_survives_the_batch(
        tmp_path: Path) -> None:
    """Goal: writes of one key take effect in the order they were submitted, a collection
    too (docs/gc.md): a state saved after a ``collect`` of its key is what the key holds,
    not removed by the collection committed in the same transaction.

    Method: submit ``collect`` of a tombstone and then ``save_soon`` of a newer state of
    the same key in one turn of the loop (one group commit: the node's acceptor lock is
    released early when a collection is cancelled, so this can happen); the saved state must
    be loaded back, before and after a reopen, and the key counted."""
    from paxoskv.core.acceptor import Floor

    tomb = AcceptorState(Ballot(9, 2, 1), Ballot(9, 2, 1), Value(7, None, (("d", 7),)))
    newer = AcceptorState(Ballot(11, 3, 1), Ballot(11, 3, 1), Value(8, b"new", (("n", 8),)))

    async def run() -> None:
        s = SqliteStorage(tmp_path)
        await s.save("k", tomb)
        collected = asyncio.ensure_future(s.collect("k", Floor(Ballot(9, 2, 1), 7)))
        await asyncio.sleep(0)  # the collect is submitted first
        saved = s.save_soon("k", newer)
        await asyncio.gather(collected, saved)
        assert s.load("k") == newer
        assert s.has_row("k") and s.key_count() == 1
        await s.close()
        s2 = SqliteStorage(tmp_path)
        assert s2.load("k") == newer, "the collection removed a state saved after it"
        assert s2.key_count() == 1
        await s2.close()
    asyncio.run(run())


def test_raised_floors_are_durable_merged_and_paged(tmp_path: Path) -> None:
    """Goal: the floors a rejoining acceptor copies (docs/gc.md) are raised durably, each
    part to the higher of the two, and listed in bucket order a page at a time.

    Method: collect a key (its bucket gets a floor), raise that bucket with a lower ballot
    and a higher version and two other buckets, reopen, and page through the floors."""
    from paxoskv.core.acceptor import FLOOR_BUCKETS, Floor, absent_state, floor_bucket

    tomb = AcceptorState(Ballot(9, 2, 1), Ballot(9, 2, 1), Value(7, None, (("d", 7),)))
    bucket = floor_bucket("gone")
    others = sorted({(bucket + 1) % FLOOR_BUCKETS, (bucket + 2) % FLOOR_BUCKETS})

    async def run() -> None:
        s = SqliteStorage(tmp_path)
        await s.save("gone", tomb)
        await s.collect("gone", Floor(Ballot(9, 2, 1), 7))
        await s.raise_floors([(bucket, Floor(Ballot(4, 1, 1), 12)),
                              *((b, Floor(Ballot(5, 3, 1), 2)) for b in others)])
        assert s.floor("gone") == Floor(Ballot(9, 2, 1), 12)
        await s.close()
        s2 = SqliteStorage(tmp_path)
        assert s2.load("gone") == absent_state(Floor(Ballot(9, 2, 1), 12))
        everything = s2.floor_page(-1, 10)
        assert [b for b, _ in everything] == sorted([bucket, *others])
        assert s2.floor_page(everything[0][0], 1) == everything[1:2]
        assert s2.key_count() == 0
        await s2.close()
    asyncio.run(run())


def test_an_idle_writer_releases_memory_after_many_collections(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Goal: once a mass delete's collection is over, the node gives the C heap's free
    pages back (SQLite's page caches shrunk, then malloc_trim on glibc), once, while idle:
    without it, resident memory stayed where the load left it (docs/gc.md, "Space given
    back"). A few collections, or a busy writer, release nothing.

    Method: count calls of ``release_c_heap`` (still calling the real one) around 1,500
    collections, with a 0.1 s maintenance interval; then 10 more collections."""
    import paxoskv.storage.sqlite as mod
    from paxoskv.core.acceptor import Floor

    calls: list[bool] = []
    real = mod.release_c_heap
    monkeypatch.setattr(mod, "release_c_heap", lambda: calls.append(real()) or True)
    tomb = AcceptorState(Ballot(9, 2, 1), Ballot(9, 2, 1), Value(7, None, (("d", 7),)))
    n = mod.RELEASE_MEMORY_AFTER_ROWS + 500

    async def run() -> None:
        s = SqliteStorage(tmp_path, maintain_interval_s=0.1)
        await asyncio.gather(*(s.save(f"k{i}", tomb) for i in range(n)))
        await asyncio.sleep(0.5)
        assert s.memory_releases == 0  # writes alone release nothing
        await asyncio.gather(*(s.collect(f"k{i}", Floor(Ballot(9, 2, 1), 7))
                               for i in range(n)))
        for _ in range(100):
            if s.memory_releases:
                break
            await asyncio.sleep(0.05)
        assert s.memory_releases == 1 and len(calls) == 1
        await asyncio.gather(*(s.save(f"j{i}", tomb) for i in range(10)))
        await asyncio.gather(*(s.collect(f"j{i}", Floor(Ballot(9, 2, 1), 7))
                               for i in range(10)))
        await asyncio.sleep(0.5)
        assert s.memory_releases == 1
        await s.close()
    asyncio.run(run())


def test_a_writer_that_keeps_committing_while_trimming_is_not_idle(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Goal: the idle-only work (memory release, WAL truncation) waits until the writer
    has been idle for a whole maintenance interval. While free pages go back, the writer
    looks every VACUUM_STEP_PAUSE_S; a look that only compared batch counts called a node
    "idle" between two writes of a steady load, and released memory under it.

    Method: 4,000 rows of 400 bytes saved, deleted and collected (trimming starts, more
    than 1 MiB free) with a 0.5 s interval, then one write every 0.12 s for 2.5 s: no
    release during the writes; one within 5 s after them."""
    import paxoskv.storage.sqlite as mod
    from paxoskv.core.acceptor import Floor

    monkeypatch.setattr(mod, "release_c_heap", lambda: True)
    tomb = AcceptorState(Ballot(9, 2, 1), Ballot(9, 2, 1), Value(7, None, (("d", 7),)))

    async def run() -> tuple[int, int]:
        s = SqliteStorage(tmp_path, maintain_interval_s=0.5)
        keys = [f"k{i}" for i in range(4000)]
        await asyncio.gather(*(s.save(k, _st(1, b"v" * 400)) for k in keys))
        await asyncio.gather(*(s.save(k, tomb) for k in keys))
        await asyncio.gather(*(s.collect(k, Floor(Ballot(9, 2, 1), 7)) for k in keys))
        during = 0
        for i in range(21):
            await s.save(f"steady{i}", _st(1, b"s"))
            during = max(during, s.memory_releases)
            await asyncio.sleep(0.12)
        for _ in range(100):
            if s.memory_releases:
                break
            await asyncio.sleep(0.05)
        after = s.memory_releases
        await s.close()
        return during, after
    during, after = asyncio.run(run())
    assert (during, after) == (0, 1), (during, after)


def test_an_idle_node_gives_back_free_pages_below_the_trim_threshold(tmp_path: Path) -> None:
    """Goal: once writes stop, the free pages a collection left go back to the volume and
    the WAL is emptied, even when they are fewer than the threshold at which trimming
    starts under load (1 MiB at least): before, up to that much stayed free inside the
    file, and a WAL under 1 MiB stayed, next to 0.1 MB of data.

    Method: 1,500 rows of 300 bytes saved and collected (about 0.6 MB freed), with a
    0.1 s maintenance interval; wait; free list and WAL near empty, file small."""
    import sqlite3

    from paxoskv.core.acceptor import Floor

    tomb = AcceptorState(Ballot(9, 2, 1), Ballot(9, 2, 1), Value(7, None, (("d", 7),)))
    db = tmp_path / "paxoskv.sqlite3"
    wal = tmp_path / "paxoskv.sqlite3-wal"

    async def run() -> tuple[int, int, int]:
        s = SqliteStorage(tmp_path, maintain_interval_s=0.1)
        await asyncio.gather(*(s.save(f"k{i}", _st(1, b"v" * 300)) for i in range(1500)))
        await asyncio.gather(*(s.save(f"k{i}", tomb) for i in range(1500)))
        await asyncio.gather(*(s.collect(f"k{i}", Floor(Ballot(9, 2, 1), 7))
                               for i in range(1500)))
        for _ in range(100):
            await asyncio.sleep(0.1)
            free = s._reader.execute("PRAGMA freelist_count").fetchall()[0][0]
            if free <= 4 and wal.stat().st_size == 0:
                break
        sizes = free, db.stat().st_size, wal.stat().st_size
        await s.close()
        return sizes
    free, size, wal_size = asyncio.run(run())
    assert free <= 4 and wal_size == 0
    assert size < 100_000
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()


def test_floors_of_many_collected_keys_take_a_few_pages(tmp_path: Path) -> None:
    """Goal: what collection keeps for ever (one floor row per bucket) stays a few pages
    whatever the number of keys collected. With 65,536 buckets, 3,000 collected keys left
    2,900 rows (80 kB), and 100,000 keys about 51,000 (1.3 MB), ten times an empty node's
    data directory.

    Method: collect 3,000 tombstones; count the floor rows and the table's pages."""
    import sqlite3

    from paxoskv.core.acceptor import FLOOR_BUCKETS, Floor

    tomb = AcceptorState(Ballot(9, 2, 1), Ballot(9, 2, 1), Value(7, None, (("d", 7),)))

    async def run() -> None:
        s = SqliteStorage(tmp_path)
        await asyncio.gather(*(s.save(f"k{i}", tomb) for i in range(3000)))
        await asyncio.gather(*(s.collect(f"k{i}", Floor(Ballot(9, 2, 1), 7))
                               for i in range(3000)))
        assert s.key_count() == 0
        assert s.floors_raised() <= FLOOR_BUCKETS
        await s.close()
    asyncio.run(run())
    conn = sqlite3.connect(tmp_path / "paxoskv.sqlite3")
    try:
        pages = conn.execute("SELECT COUNT(*) FROM dbstat WHERE name = 'gc_floors'").fetchall()
    finally:
        conn.close()
    assert pages[0][0] <= 3


def test_a_floor_table_of_an_earlier_release_is_folded_at_open(tmp_path: Path) -> None:
    """Goal: a data directory whose floors were written with 65,536 buckets (releases
    before) reads, after one open, with ours: each bucket the highest of the old floors
    that map to it (no floor goes down: every key's absent state promises at least what
    it did), one row per bucket, in one transaction; and a table of ours is one an earlier
    release refuses to read (checksum mismatch) rather than misread.

    Method: write legacy rows by hand (their checksum as earlier releases made it) for two
    old buckets of one new bucket and one of another, open, compare ``load`` of keys of
    those old buckets before (computed) and after; then check an earlier release's
    checksum of a new row."""
    import sqlite3
    import zlib

    from paxoskv.core.acceptor import (
        FLOOR_BUCKETS,
        LEGACY_FLOOR_BUCKETS,
        Floor,
        absent_state,
        floor_bucket,
    )
    from paxoskv.storage.sqlite import _floor_row

    def legacy_crc(bucket: int, floor: Floor) -> int:
        return zlib.crc32(f"floor\0{bucket}\0{floor.ballot}\0{floor.version}".encode())

    def old_bucket(key: str) -> int:
        import hashlib
        digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") % LEGACY_FLOOR_BUCKETS

    a = "k-a"
    b = next(f"k{i}" for i in range(1_000_000) if floor_bucket(f"k{i}") == floor_bucket(a)
             and old_bucket(f"k{i}") != old_bucket(a))
    c = next(f"c{i}" for i in range(1_000_000) if floor_bucket(f"c{i}") != floor_bucket(a))
    old = {old_bucket(a): Floor(Ballot(9, 1, 1), 3), old_bucket(b): Floor(Ballot(4, 2, 1), 40),
           old_bucket(c): Floor(Ballot(2, 3, 1), 5)}

    async def make() -> None:
        s = SqliteStorage(tmp_path)
        await s.close()
    asyncio.run(make())
    conn = sqlite3.connect(tmp_path / "paxoskv.sqlite3")
    for bucket, floor in old.items():
        bl = floor.ballot
        conn.execute("INSERT INTO gc_floors VALUES (?,?,?,?,?,?,?)",
                     (bucket, bl.counter, bl.node_id, bl.incarnation, bl.fast, floor.version,
                      legacy_crc(bucket, floor)))
    conn.commit()
    conn.close()

    async def run() -> None:
        s = SqliteStorage(tmp_path)
        assert s.floors_raised() == 2
        both = Floor(Ballot(9, 1, 1), 40)
        for key in (a, b):
            assert s.load(key) == absent_state(both)
            got = s.load(key).ballot_promised, s.load(key).value.version
            was = old[old_bucket(key)]
            assert got[0] >= was.ballot and got[1] >= was.version
        assert s.load(c) == absent_state(old[old_bucket(c)])
        await s.close()
        s2 = SqliteStorage(tmp_path)  # a second open changes nothing
        assert s2.floor_page(-1, FLOOR_BUCKETS) == sorted(
            [(floor_bucket(a), both), (floor_bucket(c), old[old_bucket(c)])])
        await s2.close()
    asyncio.run(run())
    row = _floor_row(5, Floor(Ballot(9, 1, 1), 3))
    assert row[-1] != legacy_crc(5, Floor(Ballot(9, 1, 1), 3))


@pytest.mark.parametrize("incremental", [True, False])
def test_a_large_wal_is_truncated_once_the_writer_goes_idle(tmp_path: Path,
                                                            incremental: bool) -> None:
    """Goal: a node that goes quiet after a burst of writes does not keep a WAL of
    megabytes for as long as it runs (automatic checkpoints copy it but keep its size).

    Method: 2,000 values of 1 KB written in one burst leave a WAL over
    IDLE_WAL_TRUNCATE_BYTES with nothing to trim (no free pages); with no further write, it
    must be emptied within a few maintenance intervals, for a file with and without
    incremental vacuum; every value still reads back after reopening."""
    wal = tmp_path / "paxoskv.sqlite3-wal"
    if not incremental:  # a file made without auto_vacuum (by an older release)
        sqlite3.connect(tmp_path / "paxoskv.sqlite3").close()
    keys = [f"w{j:05d}" for j in range(2000)]

    async def run() -> tuple[int, int]:
        s = SqliteStorage(tmp_path, maintain_interval_s=0.1)
        for i in range(0, len(keys), 500):
            await asyncio.gather(*(s.save(k, _st(1, b"y" * 1000)) for k in keys[i:i + 500]))
        full = wal.stat().st_size
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and wal.stat().st_size > 0:
            await asyncio.sleep(0.05)
        after = wal.stat().st_size
        await s.close()
        return full, after

    full, after = asyncio.run(run())
    assert full >= sqlite_module.IDLE_WAL_TRUNCATE_BYTES, full
    assert after == 0, after

    async def reread() -> int:
        s = SqliteStorage(tmp_path)
        n = sum(1 for k in keys if s.load(k).value.data == b"y" * 1000)
        await s.close()
        return n

    assert asyncio.run(reread()) == len(keys)
