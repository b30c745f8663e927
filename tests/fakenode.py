"""For the client and CLI tests: a scripted stand-in for a paxoskv node, and AsyncClient
behind a synchronous surface (so one test body runs against both clients)."""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from paxoskv.api.app import _error
from paxoskv.client import AsyncClient

__all__ = ["Action", "FakeNode", "Seen", "SyncAsync"]


@dataclass
class Seen:
    at: float
    method: str
    path: str
    headers: dict[str, str]


Action = tuple[Any, ...]
"""("answer", status, code, headers, extra) | ("drop",) | ("apply_then_drop",) |
("sleep", seconds)"""


@dataclass
class FakeNode:
    """Answers like paxoskv's API (its error bodies come from the API's own ``_error``),
    keeps Idempotency-Key outcomes like the server, and follows ``script`` first: one
    action per request."""

    script: list[Action] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    data: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    outcomes: dict[str, web.Response] = field(default_factory=dict)
    port: int = 0
    tls: ssl.SSLContext | None = None

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._ready = threading.Event()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.tls)
        self._loop.run_until_complete(site.start())
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self._ready.set()
        self._loop.run_forever()

    def start(self) -> FakeNode:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def stop(self) -> None:
        assert self._runner is not None
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append(Seen(time.monotonic(), request.method, request.path_qs,
                              dict(request.headers)))
        action = self.script.pop(0) if self.script else ("normal",)
        if action[0] == "answer":
            _, status, code, headers, extra = (*action, None, None)[:5]
            return _error(status, code, f"scripted {code}", headers, **(extra or {}))
        if action[0] == "sleep":
            await asyncio.sleep(action[1])
        if action[0] == "drop":
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        response = self._apply(request, body)
        if action[0] == "apply_then_drop":
            assert request.transport is not None
            request.transport.close()
        return response

    def _apply(self, request: web.Request, body: bytes) -> web.Response:
        key = request.path.removeprefix("/v1/kv/")
        if request.method == "GET":
            if request.path == "/v1/kv":
                return web.json_response({"keys": sorted(self.data), "count": len(self.data),
                                          "next": None})
            if request.path == "/v1/status":
                return web.json_response({"node_id": 1, "ready": True})
            if key not in self.data:
                return _error(404, "not_found", f"key {key!r} does not exist")
            version, value = self.data[key]
            return web.Response(body=value, headers={"ETag": f'"{version}"'})
        idem = request.headers.get("Idempotency-Key")
        if idem is not None and idem in self.outcomes:
            first = self.outcomes[idem]
            assert isinstance(first.body, bytes)
            return web.Response(status=first.status, body=first.body,
                                headers={**first.headers, "Idempotent-Replayed": "true"})
        current = self.data.get(key, (0, b""))[0]
        match = request.headers.get("If-Match")
        if match is not None and int(match.strip('"')) != current:
            response = _error(412, "precondition_failed", "the condition did not hold",
                              current_version=current or None)
        elif request.method == "DELETE":
            self.data.pop(key, None)
            response = web.Response(status=204, headers={"ETag": f'"{current + 1}"'})
        else:
            self.data[key] = (current + 1, body)
            response = web.json_response({"key": key, "version": current + 1},
                                         headers={"ETag": f'"{current + 1}"'})
        if idem is not None:
            self.outcomes[idem] = response
        return response


class SyncAsync:
    """AsyncClient behind Client's synchronous surface, on an event loop of its own, so
    each test runs once against each client."""

    def __init__(self, **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._client = self._loop.run_until_complete(self._make(kwargs))

    @staticmethod
    async def _make(kwargs: dict[str, Any]) -> AsyncClient:
        return AsyncClient(**kwargs)

    @property
    def url(self) -> str:
        return self._client.url

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._client, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._loop.run_until_complete(method(*args, **kwargs))
        return call

    def close(self) -> None:
        self._loop.run_until_complete(self._client.close())
        self._loop.close()
