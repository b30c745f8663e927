"""Range reads, range deletes, backup and restore on real three-node clusters of
``paxoskv serve`` processes, through the real clients and the real CLI.

Method: 5,000 keys are written once for the module, concurrently (AsyncClient, 64 in
flight); a range read pages through them from a different node each page while keys ahead
of and behind its cursor are deleted between pages. Backup and restore run as ``paxoskv``
subprocesses, from that cluster into a fresh one.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from procs import Cluster

from paxoskv.client import AsyncClient, Client, Retry, UnknownOutcome

pytestmark = pytest.mark.integration

KEYS = 5_000
"""Keys of the module's load: 50 pages of 100 for the range read, and a restore long
enough to retry under load. With 10,000 this module alone took four and a half minutes of
``make test`` (the restore writes each key with its Idempotency-Key record, three rounds)."""


async def _write(urls: list[str], values: dict[str, bytes]) -> None:
    """Plain puts, without Idempotency-Keys: a key's record costs two rounds more than the
    write itself (a 10,000-key load took 48 s with them), and the setup needs none. A put
    whose answer was lost is sent again: a blind put of the same value leaves the same value."""
    async with AsyncClient(endpoints=urls, retry=Retry(idempotency_keys=False)) as client:
        sem = asyncio.Semaphore(64)

        async def put(key: str, value: bytes) -> None:
            async with sem:
                for _ in range(3):
                    try:
                        await client.put(key, value)
                        return
                    except UnknownOutcome:
                        continue
                await client.put(key, value)
        await asyncio.gather(*(put(k, v) for k, v in values.items()))


class Loaded:
    """A cluster holding ``values`` (``KEYS`` keys under ``app/``); a test that deletes some
    removes them from ``values``, so the tests of this module run in any order."""

    def __init__(self, cluster: Cluster, values: dict[str, bytes]) -> None:
        self.cluster, self.values = cluster, values


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loaded]:
    """One load of ``KEYS`` keys for both tests."""
    rng = random.Random(7)
    values = {f"app/{i:05d}": rng.randbytes(rng.randrange(0, 300)) for i in range(KEYS)}
    cluster = Cluster(3, tmp_path_factory.mktemp("loaded"))
    cluster.start()
    try:
        started = time.monotonic()
        asyncio.run(_write(cluster.urls(), values))
        print(f"\n{len(values)} keys written in {time.monotonic() - started:.1f}s")
        yield Loaded(cluster, values)
    finally:
        cluster.stop()


async def _page_through_with_deletes(loaded: Loaded, prefix: str) -> tuple[int, set[str]]:
    """Every key live throughout comes exactly once with its value; no key deleted before
    its page is read comes at all. Each page comes from the next node; between pages five
    keys ahead of the cursor and five behind it are deleted (concurrently)."""
    values = {k: v for k, v in loaded.values.items() if k.startswith(prefix)}
    rng = random.Random(len(values))
    clients = [AsyncClient(u) for u in loaded.cluster.urls()]
    seen: dict[str, bytes] = {}
    deleted_ahead: set[str] = set()
    deleted: set[str] = set()
    cursor: str | None = None
    keys = sorted(values)
    pages = 0
    try:
        for pages in range(1, len(values)):
            page = await clients[pages % 3].range(prefix, 100, cursor)
            for item in page.items:
                assert item.key not in seen, f"{item.key} came twice"
                assert item.key not in deleted_ahead, f"{item.key} came after its delete"
                seen[item.key] = item.value
            if page.next is None:
                break
            cursor = page.next
            last = page.items[-1].key if page.items else ""
            ahead = [k for k in keys if k > last and k not in deleted]
            ahead = rng.sample(ahead, min(5, len(ahead)))
            behind = [k for k in seen if k not in deleted]
            behind = rng.sample(behind, min(5, len(behind)))
            deleted.update(ahead, behind)  # whatever the answers: maybe deleted, so not
            deleted_ahead.update(ahead)  # expected by the other test either
            await asyncio.gather(*(clients[0].delete(k) for k in ahead),
                                 *(clients[1].delete(k) for k in behind))
    finally:
        for c in clients:
            await c.close()
        for key in deleted:
            del loaded.values[key]
    live = {k: v for k, v in values.items() if k not in deleted}
    assert deleted_ahead and pages > 3
    assert {k: seen[k] for k in live} == live  # every live key, with its value
    assert set(seen) - set(live) <= deleted - deleted_ahead  # the rest: deleted behind
    return pages, deleted


def paxoskv(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAXOSKV_")}
    return subprocess.run([sys.executable, "-m", "paxoskv", *args], capture_output=True,
                          text=True, timeout=300, env=env)


def _all(url: str) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    cursor = None
    with Client(url) as c:
        for _ in range(1000):
            page = c.range("", 1000, cursor)
            out.update((i.key, i.value) for i in page.items)
            if (cursor := page.next) is None:
                return out
    raise AssertionError("range did not end")


def test_cli_backup_restore_into_a_fresh_cluster_and_refusals(loaded: Loaded,
                                                             tmp_path: Path) -> None:
    """Goal: paxoskv backup of one cluster and paxoskv restore into a fresh one read back
    byte for byte (binary values included); a corrupted file and a non-empty cluster are
    refused in one line each, never a traceback; delete-prefix then empties a prefix."""
    cluster = loaded.cluster
    extra = {"bin": bytes(range(256)), "ключ": "значение".encode(), "empty": b""}
    asyncio.run(_write(cluster.urls(), extra))
    values = loaded.values | extra
    with Client(cluster.urls()[0]) as c:
        c.put("deleted", b"x")
        c.delete("deleted")
    out = tmp_path / "backup.jsonl"
    res = paxoskv("backup", "--url", cluster.urls()[1], "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["records"] == len(values)
    assert f"{len(values)}/{len(values)} keys" in res.stderr and "keys/s" in res.stderr

    (tmp_path / "fresh").mkdir()
    fresh = Cluster(3, tmp_path / "fresh")
    fresh.start()
    try:
        res = paxoskv("restore", "--url", ",".join(fresh.urls()), "--in", str(out))
        assert res.returncode == 0, res.stderr
        summary = json.loads(res.stdout)
        # A put whose answer was lost to a timeout (a loaded machine) is retried under its
        # idempotency key and counted "replayed": applied once, not twice.
        assert summary["written"] + summary["replayed"] == len(values), summary
        assert {k: summary[k] for k in ("file", "skipped", "failed", "expired")} == \
            {"file": str(out), "skipped": 0, "failed": 0, "expired": 0}
        assert _all(fresh.urls()[2]) == values

        res = paxoskv("restore", "--url", fresh.urls()[0], "--in", str(out))
        assert res.returncode == 1 and "not empty" in res.stderr
        assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1

        broken = tmp_path / "broken.jsonl"
        data = out.read_bytes()
        i = data.index(b'"value_base64":"', 2000) + 20
        broken.write_bytes(data[:i] + (b"A" if data[i:i + 1] != b"A" else b"B") + data[i + 1:])
        res = paxoskv("restore", "--url", fresh.urls()[0], "--in", str(broken), "--force")
        assert res.returncode == 1 and "checksum mismatch" in res.stderr
        assert "Traceback" not in res.stderr

        res = paxoskv("delete-prefix", "--url", fresh.urls()[1], "--prefix", "app/")
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout) == {"prefix": "app/", "deleted": len(loaded.values)}
        # a page may stop early past many fresh tombstones: follow the cursor to the end
        items: list[dict[str, object]] = []
        cursor: list[str] = []
        for _ in range(200):
            res = paxoskv("range", "--url", fresh.urls()[0], "-o", "json", *cursor)
            assert res.returncode == 0, res.stderr
            doc = json.loads(res.stdout)
            items += doc["items"]
            if doc["next"] is None:
                break
            cursor = ["--cursor", doc["next"]]
        assert [i["key"] for i in items] == ["bin", "empty", "ключ"]
        assert items[2]["value"] == "значение" and doc["next"] is None
    finally:
        fresh.stop()


def test_range_read_pages_through_5000_keys_with_deletes_between_pages(
        loaded: Loaded) -> None:
    started = time.monotonic()
    pages, deleted = asyncio.run(_page_through_with_deletes(loaded, "app/"))
    print(f"\nread in {pages} pages in {time.monotonic() - started:.1f}s, "
          f"{len(deleted)} keys deleted between pages")
