"""Flood limits of the client port (paxoskv/api/guard.py), over real loopback sockets."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import uvloop
from aiohttp import web

from paxoskv.api.guard import (
    GuardedSite,
    GuardLimits,
    limit_requests_middleware,
    read_body_middleware,
)
from paxoskv.metrics import Metrics


class _Counted(Metrics):
    def __init__(self) -> None:
        self.refused: list[str] = []
        self.connections: list[int] = []

    def http_refused(self, reason: str) -> None:
        self.refused.append(reason)

    def http_connections(self, count: int) -> None:
        self.connections.append(count)


def _refuse(status: int, code: str, message: str, headers: dict[str, str] | None
            ) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status,
                             headers=headers)


@asynccontextmanager
async def _server(limits: GuardLimits, metrics: Metrics,
                  handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                  body_bytes_max: int = 1 << 20, client_max_size: int = 1 << 20,
                  ) -> AsyncIterator[int]:
    app = web.Application(middlewares=[limit_requests_middleware(limits, metrics, _refuse),
                                       read_body_middleware(limits, metrics, _refuse,
                                                            body_bytes_max)],
                          client_max_size=client_max_size)
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = GuardedSite(runner, "127.0.0.1", 0, limits, metrics)
    await site.start()
    assert site._server is not None
    try:
        yield site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


async def _ok(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    return web.Response(text=f"ok {len(body)}")


async def _exchange(port: int, raw: bytes, read_timeout: float = 5.0) -> bytes:
    """Send ``raw``; what comes back until the server closes, or at least the whole head
    of a response (a server that lingers to drain an unread body closes later)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    got = b""
    try:
        async with asyncio.timeout(read_timeout):
            while chunk := await reader.read(65536):
                got += chunk
                if b"\r\n\r\n" in got and got.startswith(b"HTTP/1.1 408"):
                    break
        return got
    finally:
        writer.close()


GET = b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_connections_beyond_the_cap_are_answered_503_at_once(loop: str) -> None:
    """Goal: with ``connections_max`` connections open (idle, sending nothing), the next
    one gets an immediate 503 with Retry-After instead of waiting; once they close, a new
    connection is served again. Under uvloop too, the server's default loop, whose
    transports are not asyncio's classes (the refusal once failed an isinstance check
    there, and the client saw a bare close)."""
    async def main() -> None:
        metrics = _Counted()
        async with _server(GuardLimits(connections_max=3, header_timeout_s=30), metrics,
                           _ok) as port:
            held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
            await asyncio.sleep(0.1)
            answer = await _exchange(port, GET, read_timeout=2)
            assert answer.startswith(b"HTTP/1.1 503"), answer
            assert b"Retry-After: 1" in answer and b"too many connections" in answer
            assert metrics.refused == ["connections"]
            for _, writer in held:
                writer.close()
            await asyncio.sleep(0.1)
            assert (await _exchange(port, GET)).startswith(b"HTTP/1.1 200")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop if loop == "uvloop" else None) as r:
        r.run(main())


def test_headers_sent_too_slowly_get_the_connection_closed() -> None:
    """Goal: a client that dribbles its headers (slowloris) loses the connection after
    ``header_timeout_s``, freeing its slot; one that sends them in time is served."""
    async def main() -> None:
        metrics = _Counted()
        async with _server(GuardLimits(header_timeout_s=0.5), metrics, _ok) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            loop = asyncio.get_running_loop()
            started = loop.time()
            writer.write(b"GET /x HTTP/1.1\r\nHost: t\r\n")
            closed_after = None
            for _ in range(20):  # one header line every 0.1 s, never the blank line
                await asyncio.sleep(0.1)
                try:
                    async with asyncio.timeout(0.01):
                        if await reader.read(1) == b"":
                            closed_after = loop.time() - started
                            break
                except TimeoutError:
                    pass
                writer.write(b"X-Slow: 1\r\n")
            writer.close()
            assert closed_after is not None and 0.4 < closed_after < 1.5, closed_after
            assert metrics.refused == ["header_timeout"]
            assert (await _exchange(port, GET)).startswith(b"HTTP/1.1 200")
    asyncio.run(main())


def test_a_body_sent_too_slowly_is_408_and_requests_beyond_the_cap_503() -> None:
    """Goal: a PUT whose body does not arrive within ``header_timeout_s`` is answered 408
    (and never reaches the handler); with ``requests_max`` requests in progress, the next
    is answered 503 with Retry-After and the ones in progress still complete."""
    async def main() -> None:
        metrics = _Counted()
        release = asyncio.Event()
        reached: list[str] = []

        async def handler(request: web.Request) -> web.StreamResponse:
            reached.append(request.path)
            if request.path == "/wait":
                await release.wait()
            return await _ok(request)

        limits = GuardLimits(requests_max=2, header_timeout_s=0.5)
        async with _server(limits, metrics, handler) as port:
            slow_body = (b"PUT /slow HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n"
                         b"Connection: close\r\n\r\nabc")
            assert (await _exchange(port, slow_body)).startswith(b"HTTP/1.1 408")
            assert "/slow" not in reached and metrics.refused == ["body_timeout"]
            wait = b"GET /wait HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
            busy = [asyncio.create_task(_exchange(port, wait)) for _ in range(2)]
            while reached.count("/wait") < 2:
                await asyncio.sleep(0.01)
            refused = await _exchange(port, GET)
            assert refused.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in refused
            release.set()
            assert all(r.startswith(b"HTTP/1.1 200") for r in await asyncio.gather(*busy))
            assert (await _exchange(port, GET)).startswith(b"HTTP/1.1 200")
    asyncio.run(main())


def test_a_malformed_request_is_a_json_400_logged_without_a_traceback(
        caplog: pytest.LogCaptureFixture) -> None:
    """Goal: a header line over the limit is answered 400 with the API's JSON error (not
    aiohttp's text echoing the client's bytes), counted as "malformed", and leaves no
    error-level traceback: a flood of them must not flood the log."""
    async def main() -> None:
        metrics = _Counted()
        async with _server(GuardLimits(), metrics, _ok) as port:
            caplog.set_level(logging.DEBUG)
            huge = b"GET /x HTTP/1.1\r\nHost: t\r\nX-Big: " + b"h" * 20000 + b"\r\n\r\n"
            answer = await _exchange(port, huge)
            head, _, body = answer.partition(b"\r\n\r\n")
            # HTTP/1.0: aiohttp answers an unparsed request as one
            assert head.startswith((b"HTTP/1.0 400", b"HTTP/1.1 400")), answer
            assert b"application/json" in head, answer
            assert json.loads(body)["error"] == "bad_request"
            assert b"hhhh" not in answer
            assert metrics.refused == ["malformed"]
            assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
            assert (await _exchange(port, GET)).startswith(b"HTTP/1.1 200")
    asyncio.run(main())


async def _answer(port: int, raw: bytes, read_timeout: float = 2.0) -> bytes:
    """Send ``raw``; return the first response (head and body by its Content-Length), without
    waiting for the server to close: it may linger to drain a body it did not read."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    try:
        async with asyncio.timeout(read_timeout):
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            return head + await reader.readexactly(length)
    finally:
        writer.close()


def test_a_body_over_the_value_limit_is_413_before_it_is_read() -> None:
    """Goal: a client body announced larger than the largest value is refused 413 before a
    byte of it is read (the handler never runs, the connection closes); a chunked one as
    soon as it passes the limit, also on a port that serves peers (whose app-wide limit is
    the larger peer frame); peer frames (/internal/) are not held to the value limit. A
    flood of large bodies must not hold requests_max x (the peer frame limit) of memory."""
    async def main() -> None:
        metrics = _Counted()
        reached: list[int] = []

        async def handler(request: web.Request) -> web.StreamResponse:
            reached.append(len(await request.read()))
            return web.Response(text="ok")

        limits = GuardLimits(header_timeout_s=2.0)

        async with _server(limits, metrics, handler, 100, 10_000) as port:  # with peers
            # Announced: 1 MB that the client never sends; the answer cannot wait for it.
            big = (b"PUT /v1/kv/a HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n"
                   + b"x" * 1000)
            answer = await _answer(port, big)
            assert answer.startswith(b"HTTP/1.1 413"), answer[:80]
            assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"] == "value_too_large"
            at_limit = (b"PUT /v1/kv/c HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n"
                        b"Connection: close\r\n\r\n" + b"z" * 100)
            assert (await _answer(port, at_limit)).startswith(b"HTTP/1.1 200")
            frame = (b"POST /internal/batch HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n"
                     b"Connection: close\r\n\r\n" + b"f" * 5000)
            assert (await _answer(port, frame)).startswith(b"HTTP/1.1 200")
        for size in (101, 10_000):  # a client port alone (value limit + 1), one with peers
            async with _server(limits, metrics, handler, 100, size) as port:
                chunk = b"c8\r\n" + b"y" * 200 + b"\r\n"
                chunked = (b"PUT /v1/kv/b HTTP/1.1\r\nHost: t\r\n"
                           b"Transfer-Encoding: chunked\r\n\r\n" + chunk)
                answer = await _answer(port, chunked)  # 200 bytes, no end: refused at once
                assert answer.startswith(b"HTTP/1.1 413"), (size, answer[:80])
                body = json.loads(answer.partition(b"\r\n\r\n")[2])
                assert body["error"] == "value_too_large"
        assert reached == [100, 5000]
    asyncio.run(main())


def test_a_whole_body_that_came_with_its_headers_is_held_to_the_same_limits() -> None:
    """Goal: a body that arrived complete with its headers (taken as it is, without a timer
    or a copy) is held to the same limits as one still arriving: a whole chunked client
    body over the value limit is 413 and never reaches the handler, also on a port that
    serves peers (whose app-wide limit is larger); a whole chunked peer frame over that
    app-wide limit is 413 too; bodies at the limits are served.

    Method: each request, its chunked body and the closing chunk go in one write, so the
    body is all there before the guard runs."""
    async def main() -> None:
        metrics = _Counted()
        reached: list[int] = []

        async def handler(request: web.Request) -> web.StreamResponse:
            reached.append(len(await request.read()))
            return web.Response(text="ok")

        def chunked(path: bytes, size: int) -> bytes:
            return (b"PUT " + path + b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n" + f"{size:x}".encode() + b"\r\n"
                    + b"y" * size + b"\r\n0\r\n\r\n")

        limits = GuardLimits(header_timeout_s=2.0)
        for size in (101, 10_000):  # a client port alone (value limit + 1), one with peers
            async with _server(limits, metrics, handler, 100, size) as port:
                answer = await _answer(port, chunked(b"/v1/kv/b", 200))
                assert answer.startswith(b"HTTP/1.1 413"), (size, answer[:80])
                assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"] == \
                    "value_too_large"
                answer = await _answer(port, chunked(b"/v1/kv/b", 100))
                assert answer.startswith(b"HTTP/1.1 200"), (size, answer[:80])
        async with _server(limits, metrics, handler, 100, 3000) as port:
            answer = await _answer(port, chunked(b"/internal/batch", 3001))
            assert answer.startswith(b"HTTP/1.1 413"), answer[:80]
            answer = await _answer(port, chunked(b"/internal/batch", 3000))
            assert answer.startswith(b"HTTP/1.1 200"), answer[:80]
        assert reached == [100, 100, 3000]
        assert metrics.refused == ["body_too_large"] * 3
    asyncio.run(main())


def test_bodies_beyond_the_byte_budget_are_503_and_the_budget_comes_back() -> None:
    """Goal: while bodies of ``body_bytes_inflight_max`` bytes are being read or handled,
    another body is answered 503 with Retry-After before it is read; once they are done the
    budget is free again. With requests_max x the largest value this bounds the memory a
    flood of large writes can hold."""
    async def main() -> None:
        metrics = _Counted()
        release = asyncio.Event()
        reached: list[int] = []

        async def handler(request: web.Request) -> web.StreamResponse:
            reached.append(len(await request.read()))
            await release.wait()
            return web.Response(text="ok")

        limits = GuardLimits(header_timeout_s=2.0, body_bytes_inflight_max=1500)
        async with _server(limits, metrics, handler) as port:
            def put(n: int) -> bytes:
                return (b"PUT /v1/kv/x HTTP/1.1\r\nHost: t\r\nContent-Length: "
                        + str(n).encode() + b"\r\nConnection: close\r\n\r\n" + b"v" * n)
            held = asyncio.create_task(_answer(port, put(1000), read_timeout=5))
            while not reached:
                await asyncio.sleep(0.01)
            refused = await _answer(port, put(1000))
            assert refused.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in refused
            assert "body_bytes" in metrics.refused
            small = asyncio.create_task(_answer(port, put(400), read_timeout=5))
            while len(reached) < 2:  # 1000 + 400 fit in 1500
                await asyncio.sleep(0.01)
            release.set()
            assert (await held).startswith(b"HTTP/1.1 200")
            assert (await small).startswith(b"HTTP/1.1 200")
            release.clear()
            again = asyncio.create_task(_answer(port, put(1000), read_timeout=5))
            while len(reached) < 3:
                await asyncio.sleep(0.01)
            release.set()
            assert (await again).startswith(b"HTTP/1.1 200")
            assert reached == [1000, 400, 1000]
    asyncio.run(main())
