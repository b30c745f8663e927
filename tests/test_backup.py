"""paxoskv/backup.py against the real HTTP app of one-node clusters on loopback.

Method: each "cluster" is the API app (tests/api/test_app.py's memory storage, real
rounds) on an aiohttp TestServer, reached through the real AsyncClient; a file is then
damaged byte by byte the way a disk or a cut-off copy would.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

sys.path.insert(0, str(Path(__file__).resolve().parent / "api"))

from test_app import MemoryStorage, NoPeers

from paxoskv.api.app import make_app
from paxoskv.backup import (
    BackupError,
    BackupFileError,
    backup,
    read_backup,
    restore,
)
from paxoskv.client import AsyncClient, BadRequest, Client, PaxosKVError
from paxoskv.limits import Limits
from paxoskv.metrics import Metrics
from paxoskv.node import Node, NodeConfig, PeerSpec
from paxoskv.storage.base import NodeIdentity

VALUES = {"a": b"text", "b/bin": bytes(range(256)), "b/empty": b"", "ключ/é": "ü".encode(),
          "z" * 300: b"\x00" * 5000, **{f"n/{i:04d}": b"%d" % i for i in range(700)}}


@asynccontextmanager
async def cluster(cluster_id: str = "c", write_delay_s: float = 0.0
                  ) -> AsyncIterator[AsyncClient]:
    limits = Limits(value_bytes_max=8192)
    config = NodeConfig(1, {1: PeerSpec(1, "http://127.0.0.1:1")}, limits=limits)
    node = Node(config, NodeIdentity(cluster_id, 1, "d", 1, False), MemoryStorage(),
                NoPeers())
    await node.start()
    if write_delay_s:
        real = node.execute

        async def slow(*args: Any, **kwargs: Any) -> Any:
            await asyncio.sleep(write_delay_s)
            return await real(*args, **kwargs)
        node.execute = slow  # type: ignore[method-assign]
    server = TestServer(make_app(node, "secret", limits, Metrics()), host="127.0.0.1")
    await server.start_server()
    client = AsyncClient(str(server.make_url("")).rstrip("/"))
    try:
        yield client
    finally:
        await client.close()
        await server.close()


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())


async def fill(client: AsyncClient, values: dict[str, bytes]) -> None:
    sem = asyncio.Semaphore(32)

    async def put(k: str, v: bytes) -> None:
        async with sem:
            await client.put(k, v)
    await asyncio.gather(*(put(k, v) for k, v in values.items()))


async def everything(client: AsyncClient) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    cursor = None
    for _ in range(1000):
        page = await client.range("", 1000, cursor)
        out.update((i.key, i.value) for i in page.items)
        if (cursor := page.next) is None:
            return out
    raise AssertionError("range did not end")


def test_backup_then_restore_into_a_fresh_cluster_is_byte_for_byte(tmp_path: Path) -> None:
    """Goal: every live key (binary, empty and non-ASCII values and keys) comes back
    byte for byte; deleted keys are not in the backup; the file has its header, one record
    per key in key order and a trailer whose sha256 is of the bytes before it."""
    out = tmp_path / "b.jsonl"

    async def t() -> None:
        async with AsyncExitStack() as stack:
            src = await stack.enter_async_context(cluster("source"))
            dst = await stack.enter_async_context(cluster("target"))
            await fill(src, {**VALUES, "gone": b"x"})
            await src.delete("gone")
            progress = io.StringIO()
            stats = await backup(src, out, progress_stream=progress)
            assert stats.records == stats.written == len(VALUES)
            assert f"backup: {len(VALUES)}/{len(VALUES)} keys" in progress.getvalue()
            r = await restore(dst, out)
            assert (r.written, r.skipped, r.failed) == (len(VALUES), 0, 0)
            assert await everything(dst) == VALUES
    run(t)
    lines = out.read_bytes().splitlines(keepends=True)
    header, trailer = json.loads(lines[0]), json.loads(lines[-1])
    assert header["format"] == "paxoskv-backup" and header["version"] == 1
    assert header["cluster_id"] == "source" and header["created"].endswith("Z")
    keys = [json.loads(line)["key"] for line in lines[1:-1]]
    assert keys == sorted(VALUES)
    assert trailer == {"end": True, "records": len(VALUES),
                       "sha256": hashlib.sha256(b"".join(lines[:-1])).hexdigest()}
    first = json.loads(lines[1])
    assert base64.b64decode(first["value_base64"]) == VALUES[first["key"]]


def _backup_file(tmp_path: Path) -> Path:
    out = tmp_path / "b.jsonl"

    async def t() -> None:
        async with cluster() as src:
            await fill(src, {"a": b"1", "b": b"2", "c": b"3"})
            await backup(src, out)
    run(t)
    return out


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    lines = data.splitlines(keepends=True)
    if how == "flipped byte":
        i = data.index(b'"value_base64":"') + 16
        path.write_bytes(data[:i] + (b"A" if data[i:i + 1] != b"A" else b"B") + data[i + 1:])
    elif how == "no trailer":
        path.write_bytes(b"".join(lines[:-1]))
    elif how == "torn line":
        path.write_bytes(b"".join(lines[:-2]) + lines[-2][:10])
    elif how == "not a backup":
        path.write_bytes(b"hello\n")
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "bad json":
        path.write_bytes(lines[0] + b"{not json\n" + b"".join(lines[2:]))
    elif how == "swapped records":
        path.write_bytes(lines[0] + lines[2] + lines[1] + b"".join(lines[3:]))
    elif how == "record dropped":
        path.write_bytes(lines[0] + b"".join(lines[2:]))
    elif how == "future version":
        path.write_bytes(lines[0].replace(b'"version":1', b'"version":9') + b"".join(lines[1:]))
    else:
        raise AssertionError(how)


@pytest.mark.parametrize(("how", "says"), [
    ("flipped byte", "checksum mismatch"),
    ("no trailer", "truncated"),
    ("torn line", "truncated"),
    ("not a backup", "not a paxoskv backup"),
    ("empty", "not a backup"),
    ("bad json", "not a backup record"),
    ("swapped records", "out of order"),
    ("record dropped", "checksum mismatch"),
    ("future version", "format version 9"),
])
def test_a_damaged_file_is_refused_before_anything_is_written(tmp_path: Path, how: str,
                                                              says: str) -> None:
    """Goal: a truncated or corrupted file is refused with a sentence naming the problem,
    and the target cluster is left untouched (the file is checked whole first)."""
    path = _backup_file(tmp_path)
    read_backup(path)  # intact: accepted
    _damage(path, how)

    async def t() -> None:
        async with cluster() as dst:
            with pytest.raises(BackupFileError, match=says):
                await restore(dst, path)
            assert await everything(dst) == {}
    run(t)


def test_a_non_empty_cluster_is_refused_unless_forced(tmp_path: Path) -> None:
    """Goal: restore names the keys it found and writes nothing; with force it creates the
    absent keys only, never overwriting (counted as skipped); a re-run of the same restore
    is replayed, not written again."""
    path = _backup_file(tmp_path)

    async def t() -> None:
        async with cluster() as dst:
            await dst.put("b", b"newer")
            with pytest.raises(BackupError, match=r"not empty.*'b'"):
                await restore(dst, path)
            assert await everything(dst) == {"b": b"newer"}
            r = await restore(dst, path, force=True)
            assert (r.written, r.skipped, r.failed) == (2, 1, 0)
            assert await everything(dst) == {"a": b"1", "b": b"newer", "c": b"3"}
            again = await restore(dst, path, force=True)
            assert (again.written, again.replayed, again.skipped) == (0, 2, 1)
    run(t)


def test_an_interrupted_backup_resumes_after_its_last_complete_record(tmp_path: Path) -> None:
    """Goal: a backup that dies part way leaves a file without a trailer (refused by
    restore); --resume keeps its complete records, continues from the last one's key and
    ends with one record per key and a valid checksum."""
    out = tmp_path / "b.jsonl"
    values = {f"k{i:04d}": b"v%d" % i for i in range(1200)}

    async def t() -> None:
        async with cluster() as src:
            await fill(src, values)
            real = src.range
            calls = 0

            async def dying(*args: Any, **kwargs: Any) -> Any:
                nonlocal calls
                calls += 1
                if calls == 2:
                    raise PaxosKVError("connection lost (test)")
                return await real(*args, **kwargs)
            src.range = dying  # type: ignore[method-assign]
            with pytest.raises(PaxosKVError):
                await backup(src, out, count=False)
            partial = out.read_bytes()
            assert 1 < partial.count(b"\n") < len(values)
            with pytest.raises(BackupFileError, match="truncated"):
                read_backup(out)
            out.write_bytes(partial + b'{"key":"k9999","ver')  # a torn line too
            with pytest.raises(BackupError, match="exists"):
                await backup(src, out)
            seen: list[Any] = []

            async def watching(*args: Any, **kwargs: Any) -> Any:
                seen.append(args[2] if len(args) > 2 else kwargs.get("cursor"))
                return await real(*args, **kwargs)
            src.range = watching  # type: ignore[method-assign]
            stats = await backup(src, out, resume=True)
            assert seen[0] is not None  # continued, not started over
            assert stats.records == len(values) and 0 < stats.written < len(values)
            async with cluster() as dst:
                r = await restore(dst, out)
                assert r.written == len(values)
                assert await everything(dst) == values
            with pytest.raises(BackupError, match="finished backup"):
                await backup(src, out, resume=True)
    run(t)


def test_both_clients_range_and_delete_prefix_follow_the_cursors(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Goal: Client and AsyncClient decode a range page's values; delete_prefix keeps
    calling while the server answers complete: false (its time bound, here 50 ms: a few
    deletes per call) and returns the total; the empty prefix needs all_keys."""
    from paxoskv.api import app as app_module

    monkeypatch.setattr(app_module, "_range_budget_s", lambda node: 0.05)

    async def t() -> None:
        async with cluster(write_delay_s=0.03) as c:
            values = {f"p/{i:03d}": bytes([i]) for i in range(150)} | {"q": b"\xff"}
            await fill(c, values)
            page = await c.range("p/", 3)
            assert [(i.key, i.value) for i in page.items] == [
                ("p/000", b"\x00"), ("p/001", b"\x01"), ("p/002", b"\x02")]
            sync = Client(c.url)
            try:
                got = await asyncio.to_thread(sync.range, "q")
                assert [(i.key, i.version, i.value) for i in got.items] == [("q", 1, b"\xff")]
                assert got.next is None
                with pytest.raises(BadRequest):
                    await asyncio.to_thread(sync.delete_prefix, "")
                first = await c.request("DELETE", "/v1/kv?prefix=p/")
                assert first.json()["complete"] is False  # one call is not enough here
                rest = await asyncio.to_thread(sync.delete_prefix, "p/")
                assert first.json()["deleted"] + rest == 150
                await c.put("p/again", b"x")
                assert await c.delete_prefix("", all_keys=True) == 2
            finally:
                sync.close()
            assert await everything(c) == {}
    run(t)


def test_a_ttl_key_is_restored_with_what_is_left_of_its_ttl(tmp_path: Path) -> None:
    """Goal: TTL keys (docs/ttl.md) keep expiring after a backup and restore. Before,
    range items had no expiry, the file had none, and restore created every key without a
    TTL: a lock key (the docs/ttl.md recipe) came back held for ever. A key whose expiry
    passed between backup and restore is not written (it is absent, as it would be)."""
    async def t() -> None:
        out = tmp_path / "b.jsonl"
        async with cluster() as src:
            await src.put("lock", b"owner-1", ttl="1h")
            await src.put("short", b"s", ttl="300ms")
            await src.put("plain", b"p")
            page = await src.range("", 10)
            expiry = {i.key: i.expires_ms for i in page.items}
            assert expiry["plain"] is None and expiry["lock"] is not None
            await backup(src, out, count=False)
        records = [json.loads(line) for line in out.read_bytes().splitlines()[1:-1]]
        assert {r["key"]: r.get("expires_ms") for r in records} == expiry
        await asyncio.sleep(0.5)  # "short" expires
        async with cluster("d") as dst:
            stats = await restore(dst, out)
            assert (stats.written, stats.expired, stats.failed) == (2, 1, 0)
            lock = (await dst.range("", 10)).items
            assert [(i.key, i.expires_ms) for i in lock] == [
                ("lock", lock[0].expires_ms), ("plain", None)]
            assert lock[0].expires_ms is not None and \
                abs(lock[0].expires_ms - expiry["lock"]) < 5_000  # type: ignore[operator]
            again = await restore(dst, out, force=True)  # a re-run: nothing overwritten
            assert (again.written, again.failed) == (0, 0)
    run(t)
