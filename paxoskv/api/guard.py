"""Limits that hold the client port up under a flood of connections or requests.

aiohttp bounds a request's header lines, fields and count, and its body (``client_max_size``),
but waits for headers as long as a client cares to dribble them (slowloris), keeps idle
keep-alive connections for an hour by default, and admits any number of connections and
requests at once. Here:

- ``max_connections`` open client connections; the next one is answered 503 with
  ``Retry-After`` at once and closed, before anything is read.
- ``header_timeout_s`` to send a request's headers, counted from the connection (or from
  the first byte of a later request on a kept-alive one); the connection is closed after it.
- ``header_timeout_s`` again to send the body of a PUT, POST or DELETE (408).
- ``requests_max`` requests handled at once (503 with ``Retry-After`` beyond it).
- A request aiohttp cannot parse (a header line over 8190 bytes, more than 128 headers,
  garbage) is answered 400 with the API's JSON error and logged at debug level only:
  aiohttp's default logs a traceback at error level each time, so a flood of them would
  flood the log too.

Probes and metrics are not limited: they are meant to be served on the metrics port (the
chart probes there), whose listener none of this applies to.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from paxoskv.metrics import Metrics

__all__ = ["GuardLimits", "GuardedSite", "client_guard_middleware", "limit_requests_middleware",
           "read_body_middleware"]

RETRY_AFTER_S = "1"

_REFUSAL_BODY = b'{"error": "overloaded", "message": "too many connections to this node"}'
_MALFORMED_BODY = (b'{"error": "bad_request", "message": "malformed HTTP request (a header line '
                   b'is limited to 8190 bytes, the headers to 128)"}')
_REFUSAL = (b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: " + RETRY_AFTER_S.encode()
            + b"\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: "
            + str(len(_REFUSAL_BODY)).encode() + b"\r\n\r\n" + _REFUSAL_BODY)


@dataclass(frozen=True, slots=True)
class GuardLimits:
    connections_max: int = 1000
    requests_max: int = 500
    header_timeout_s: float = 10.0
    idle_timeout_s: float = 60.0
    """How long a kept-alive connection may sit between requests."""
    body_bytes_inflight_max: int = 64 * 1024 * 1024
    """Request bodies being read or handled at once, in bytes: what a flood of large writes
    can hold in memory."""

    def validate(self) -> GuardLimits:
        if self.connections_max < 1 or self.requests_max < 1:
            raise ValueError("--max-connections and --max-requests-inflight must be positive")
        if self.body_bytes_inflight_max < 1:
            raise ValueError("--max-body-bytes-inflight must be positive")
        if not 0 < self.header_timeout_s <= 3600 or not 0 < self.idle_timeout_s <= 86400:
            raise ValueError("--header-timeout and --idle-timeout must be positive seconds")
        return self

    def handler_args(self) -> dict[str, Any]:
        """aiohttp's own per-connection limits, stated rather than left to its defaults."""
        # lingering_time: after answering a request whose body was not read (a 408, a
        # 413), aiohttp reads and drops the rest of it this long before closing.
        return {"keepalive_timeout": self.idle_timeout_s, "max_line_size": 8190,
                "max_field_size": 8190, "max_headers": 128,
                "lingering_time": min(2.0, self.header_timeout_s)}


class _Connections:
    def __init__(self, report: bool = True) -> None:
        self.open = 0
        self.report = report
        """Whether the count is ``paxoskv_http_connections`` (the client port's)."""


class _GuardedHandler(RequestHandler):
    """aiohttp's request handler with a connection count and a header deadline."""

    __slots__ = ("_admitted", "_conns", "_header_timer", "_limits", "_metrics")

    def __init__(self, manager: Any, *, conns: _Connections, limits: GuardLimits,
                 metrics: Metrics, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._conns, self._limits, self._metrics = conns, limits, metrics
        self._admitted = False
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._conns.open >= self._limits.connections_max:
            # Answered before a byte is read: a refused client costs one write and a close.
            # A cast, not an isinstance check: uvloop's transports (the server's default
            # loop) do not derive from asyncio's classes.
            writable = cast(asyncio.WriteTransport, transport)
            writable.write(_REFUSAL)
            writable.close()
            self._metrics.http_refused("connections")
            return
        self._conns.open += 1
        self._admitted = True
        if self._conns.report:
            self._metrics.http_connections(self._conns.open)
        super().connection_made(transport)
        self._arm()  # the first request's headers, from now

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._admitted:
            return
        self._admitted = False
        self._disarm()
        self._conns.open -= 1
        if self._conns.report:
            self._metrics.http_connections(self._conns.open)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._admitted:
            return
        if self._conns.report:
            self._metrics.client_bytes(len(data), 0)
        requests = self._request_count
        super().data_received(data)
        if self._request_count != requests:
            self._disarm()  # a whole header block arrived
        elif self._header_timer is None and not self._request_in_progress \
                and not self._messages:
            self._arm()  # the first bytes of a kept-alive connection's next request

    def log_access(self, request: BaseRequest, response: web.StreamResponse,
                   time: float | None) -> None:
        # Called once a response is written (headers and body): its size is the writer's.
        if self._conns.report:
            self._metrics.client_bytes(0, request.writer.output_size)
        super().log_access(request, response, time)

    def handle_error(self, request: BaseRequest, status: int = 500,
                     exc: BaseException | None = None, message: str | None = None
                     ) -> web.StreamResponse:
        if status != 400 or not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        self.logger.debug("malformed request from %s: %s", request.remote, exc)
        self._metrics.http_refused("malformed")
        response = web.Response(status=400, body=_MALFORMED_BODY,
                                content_type="application/json")
        response.force_close()
        return response

    def _arm(self) -> None:
        self._disarm()
        loop = asyncio.get_running_loop()
        self._header_timer = loop.call_later(self._limits.header_timeout_s, self._too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _too_slow(self) -> None:
        self._header_timer = None
        if self.transport is not None and not self._request_in_progress:
            self._metrics.http_refused("header_timeout")
            self.transport.close()


class GuardedSite(web.TCPSite):
    """A TCP site whose connections go through ``_GuardedHandler``."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, limits: GuardLimits,
                 metrics: Metrics, count_connections: bool = True, **kwargs: Any) -> None:
        """``count_connections``: export this site's open connections as the gauge (the
        client port does; the metrics port, guarded too, does not mix its own in)."""
        super().__init__(runner, host, port, **kwargs)
        self._limits, self._metrics = limits, metrics
        self._conns = _Connections(report=count_connections)

    async def start(self) -> None:
        # TCPSite.start, with our handler class as the protocol factory.
        self._runner._reg_site(self)
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        args = self._limits.handler_args()

        def factory() -> _GuardedHandler:
            return _GuardedHandler(server, loop=loop, conns=self._conns, limits=self._limits,
                                   metrics=self._metrics, **args)

        self._server = await loop.create_server(
            factory, self._host, self._port, ssl=self._ssl_context, backlog=self._backlog,
            reuse_address=self._reuse_address, reuse_port=self._reuse_port)
        self._bound_port = self._server.sockets[0].getsockname()[1] if self._server.sockets \
            else self._port


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_BODY_METHODS = frozenset({"PUT", "POST", "DELETE", "PATCH"})


async def _read_within(request: web.Request, limit: int) -> bytes | None:
    """The request's body, or None as soon as it passes ``limit`` bytes."""
    body = bytearray()
    while chunk := await request.content.readany():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


Refuse = Callable[[int, str, str, dict[str, str] | None], web.Response]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]


def client_guard_middleware(limits: GuardLimits, metrics: Metrics, refuse: Refuse,
                            body_bytes_max: int, *,
                            authenticate: Callable[[web.Request], None] | None = None,
                            limit_requests: bool = True, read_body: bool = True,
                            on_error: Callable[[web.Request, Exception], web.Response | None]
                            | None = None) -> Middleware:
    """The client port's guards as one middleware, in this order: at most ``requests_max``
    requests at once (``limit_requests``), then ``authenticate`` (raises to refuse), then
    the body read (``read_body``). One layer instead of three: each layer is a coroutine
    frame and a call per request. ``on_error``, when given, answers an exception raised in
    any of them or in the handler (None: let it propagate), as an outer error middleware
    would. ``limit_requests_middleware`` and ``read_body_middleware`` are this with one
    part.

    Requests at once: it runs before authentication, so a flood of requests with bad
    tokens is capped too; it reads nothing.

    The body is read before the handler: within ``header_timeout_s`` (408 beyond), outside
    ``/internal/`` within ``body_bytes_max`` (the largest value; 413 beyond: before a byte
    is read when announced, as soon as it passes the limit when chunked), and only while
    the bodies being read and handled on this port stay within ``body_bytes_inflight_max``
    (503 beyond). It comes after authentication, so a client without a valid token never
    gets a body buffered; the budget bounds what admitted clients can hold."""
    inflight = 0
    buffered = 0
    requests_max = limits.requests_max
    if limit_requests:
        metrics.in_flight_sources(requests=lambda: inflight)

    def too_large(limit: int) -> web.Response:
        metrics.http_refused("body_too_large")
        response = refuse(413, "value_too_large", f"the body is larger than {limit} bytes",
                          None)
        response.force_close()  # the unread rest of the body would be read as a request
        return response

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        # All of it in this one coroutine: a helper coroutine would cost the frame saved.
        nonlocal inflight, buffered
        try:
            if limit_requests:
                if inflight >= requests_max:
                    metrics.http_refused("requests")
                    return refuse(503, "overloaded",
                                  f"{inflight} requests in progress on this node",
                                  {"Retry-After": RETRY_AFTER_S})
                inflight += 1
            try:
                # Authentication before the body: no body is buffered for a client without a
                # valid token.
                if authenticate is not None:
                    authenticate(request)
                if not read_body or request.method not in _BODY_METHODS \
                        or not request.can_read_body:
                    return await handler(request)
                cap = None if request.path.startswith("/internal/") else body_bytes_max
                length = request.content_length
                if cap is not None and (length or 0) > cap:
                    return too_large(cap)
                # What this body may take: its announced length, else up to the cap (or, for a
                # peer frame, the app's own limit).
                reserve = length if length is not None else (
                    cap + 1 if cap is not None else request.client_max_size)
                if buffered and buffered + reserve > limits.body_bytes_inflight_max:
                    metrics.http_refused("body_bytes")
                    response = refuse(503, "overloaded", "too many request bodies in progress "
                                      "on this node", {"Retry-After": RETRY_AFTER_S})
                    response.force_close()
                    return response
                buffered += reserve
                try:
                    limit = cap if cap is not None else request.client_max_size
                    try:
                        content = request.content
                        body: bytes | None
                        if content.is_eof():
                            # All of it arrived with the headers (the common small write): taken
                            # as it is (one piece, no copy), without a timer, whose set-up is a
                            # measurable share of a request's CPU.
                            body = content.read_nowait()
                            if len(body) > limit:
                                body = None
                        else:
                            async with asyncio.timeout(limits.header_timeout_s):
                                body = await _read_within(request, limit)
                    except TimeoutError:
                        metrics.http_refused("body_timeout")
                        response = refuse(408, "request_timeout", "the body arrived too slowly",
                                          None)
                        response.force_close()  # the rest would be read as a request
                        return response
                    if body is None:
                        return too_large(limit)
                    # Kept where aiohttp's own read() keeps a body it has read, so the handler's
                    # request.read() returns it (tests/api/test_guard.py checks this still
                    # holds).
                    request._read_bytes = body
                    del body
                    return await handler(request)
                finally:
                    buffered -= reserve
            finally:
                if limit_requests:
                    inflight -= 1
        except Exception as exc:
            # errors_middleware's part, here rather than a layer of its own.
            answer = on_error(request, exc) if on_error is not None else None
            if answer is None:
                raise
            return answer

    return guard


def limit_requests_middleware(limits: GuardLimits, metrics: Metrics, refuse: Refuse
                              ) -> Middleware:
    """At most ``requests_max`` requests at once (``client_guard_middleware``'s first
    part alone)."""
    return client_guard_middleware(limits, metrics, refuse, 0, read_body=False)


def read_body_middleware(limits: GuardLimits, metrics: Metrics, refuse: Refuse,
                         body_bytes_max: int) -> Middleware:
    """The body read before the handler (``client_guard_middleware``'s last part alone)."""
    return client_guard_middleware(limits, metrics, refuse, body_bytes_max,
                                   limit_requests=False)
