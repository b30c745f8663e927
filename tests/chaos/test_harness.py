"""The chaos pipeline (workload -> history -> final reads -> checks -> report) must pass a
correct store and must catch broken ones. The store here is an in-process fake speaking the
HTTP contract of the README, so no server process is involved: this tests the
harness, not paxoskv."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from paxoskv.chaos.runner import (
    ChaosOptions,
    ChaosResult,
    _final_reads,
    _write_artifacts,
    acknowledged_read_back,
)
from paxoskv.chaos.workload import Workload, WorkloadOptions
from paxoskv.check import History, check


class FakeStore:
    """One in-memory register per key, behind the client API. ``bug`` breaks it on purpose:

    - ``none``: correct (atomic: one event loop), with honest 503s and 504s sprinkled in;
    - ``lose``: acknowledges some writes without applying them;
    - ``apply-on-503``: answers 503 ("definitely not applied") for writes it applied;
    - ``stale-read``: some reads return the value before the latest write.
    """

    def __init__(self, bug: str, seed: int) -> None:
        self.bug = bug
        self.rng = random.Random(seed)
        self.state: dict[str, tuple[int, bytes | None]] = {}
        self.previous: dict[str, tuple[int, bytes | None]] = {}

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_put("/v1/kv/{key:.+}", self.put)
        app.router.add_get("/v1/kv/{key:.+}", self.get)
        app.router.add_delete("/v1/kv/{key:.+}", self.delete)
        return app

    @staticmethod
    def _error(status: int, **extra: object) -> web.Response:
        return web.Response(status=status, content_type="application/json",
                            body=orjson.dumps({"error": "x", "message": "x", **extra}))

    def _commit(self, key: str, data: bytes | None) -> tuple[web.Response | None, int]:
        """Apply a write; returns an early answer (a fault) or None, and the new version."""
        version, _ = self.state.get(key, (0, None))
        roll = self.rng.random()
        if roll < 0.03:
            return self._error(503), version  # honest: not applied
        self.previous[key] = self.state.get(key, (0, None))
        if self.bug == "lose" and roll < 0.10:
            return None, version + 1  # acknowledged, never applied
        self.state[key] = (version + 1, data)
        if self.bug == "apply-on-503" and roll < 0.10:
            return self._error(503), version + 1
        if roll > 0.97:
            return self._error(504), version + 1  # honest: applied, outcome unknown
        return None, version + 1

    async def put(self, request: web.Request) -> web.StreamResponse:
        key = request.match_info["key"]
        data = await request.read()
        version, current = self.state.get(key, (0, None))
        match = request.headers.get("If-Match")
        if request.headers.get("If-None-Match") == "*":
            if current is not None:
                return self._error(412, current_version=version)
        elif match is not None and (current is None or int(match.strip('"')) != version):
            return self._error(412, current_version=version if current is not None else None)
        early, new = self._commit(key, data)
        if early is not None:
            return early
        return web.Response(status=200, headers={"ETag": f'"{new}"'},
                            body=orjson.dumps({"key": key, "version": new}))

    async def delete(self, request: web.Request) -> web.StreamResponse:
        key = request.match_info["key"]
        version, current = self.state.get(key, (0, None))
        match = request.headers.get("If-Match")
        if current is None:
            return self._error(404)
        if match is not None and int(match.strip('"')) != version:
            return self._error(412, current_version=version)
        early, new = self._commit(key, None)
        if early is not None:
            return early
        return web.Response(status=204, headers={"ETag": f'"{new}"'})

    async def get(self, request: web.Request) -> web.StreamResponse:
        key = request.match_info["key"]
        version, data = self.state.get(key, (0, None))
        if self.bug == "stale-read" and key in self.previous and self.rng.random() < 0.2:
            version, data = self.previous[key]
        if data is None:
            return self._error(404)
        return web.Response(status=200, body=data, headers={"ETag": f'"{version}"'})


async def _run_against(bug: str, seed: int) -> ChaosResult:
    store = FakeStore(bug, seed)
    runner = web.AppRunner(store.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    history = History()
    # Two "nodes" that are the same store: the history is still one register per key.
    workload = Workload({1: f"http://127.0.0.1:{port}", 2: f"http://127.0.0.1:{port}"},
                        history, seed, WorkloadOptions(clients=8, keys=50, think_s_max=0.002))
    result = ChaosResult(ChaosOptions(seed=seed, base_dir=Path("unused")))
    try:
        await workload.run(2.0)
        await _final_reads(workload, workload.all_keys(), [1, 2], result)
    finally:
        await workload.close()
        await runner.cleanup()
    result.ops = history.ops()
    result.counts = workload.counts
    result.unexpected = workload.unexpected
    result.check = check(result.ops)
    result.read_back_keys, result.lost = acknowledged_read_back(result.ops)
    return result


def test_a_correct_store_passes() -> None:
    result = asyncio.run(_run_against("none", 1))
    assert sum(result.counts.values()) > 300
    statuses = {status for (_, status) in result.counts}
    assert statuses == {"ok", "rejected", "failed", "unknown"}  # every path exercised
    assert result.check is not None and result.check.ok, result.check.summary()
    assert result.lost == [] and result.unreadable == [] and result.unexpected == []
    assert result.read_back_keys > 0
    assert result.ok


@pytest.mark.parametrize("bug", ["lose", "apply-on-503", "stale-read"])
def test_a_broken_store_is_caught(bug: str, tmp_path: Path) -> None:
    result = asyncio.run(_run_against(bug, 2))
    assert result.check is not None
    assert result.check.violations, f"{bug} went unnoticed: {result.summary()}"
    assert not result.ok
    paths = _write_artifacts(result, tmp_path / "report")
    names = {p.name for p in paths}
    assert {"summary.txt", "history.jsonl"} <= names
    assert any(n.endswith(".html") for n in names) and any(
        n.startswith("violation-") and n.endswith(".txt") for n in names)
    assert "repro: python -m paxoskv.chaos --seed 2" in (tmp_path / "report" /
                                                         "summary.txt").read_text()
