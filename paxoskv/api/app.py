"""The client HTTP API on aiohttp; the peer endpoints (``transport.server``) share its port.

Handlers translate HTTP to node calls and node outcomes to HTTP; no protocol logic lives
here. Every error leaves as JSON ``{"error", "message"}`` with its status; a traceback never
reaches a client.

With a ``TokenStore`` (``--auth token``) every route needs a bearer token except the probes
(/healthz, /readyz), /metrics (unless ``metrics_auth``) and the peer routes (/internal/,
which check the peer secret themselves). Denying by default means a route added later is
protected until someone decides otherwise. Each token's requests count against its rate
limit on this node (paxoskv/auth.py) as soon as it is known: beyond it, 429 and nothing
runs. Without a store nothing is rate-limited: there is no one to count requests against.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, Literal

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from paxoskv.api.guard import GuardLimits, client_guard_middleware
from paxoskv.api.openapi import openapi_document
from paxoskv.auth import Principal, Role, TokenStore
from paxoskv.core.idempotency import RESERVED_PREFIX, RecordOutcome, fingerprint, is_reserved
from paxoskv.core.reconfig import CONFIG_KEY
from paxoskv.core.register import Cas, Change, Create, Delete, Outcome, Renew, Set
from paxoskv.idempotency import DEFAULT_WINDOW_S, InProgress, KeyReused, run_idempotent, summarize
from paxoskv.limits import DELETE_PREFIX_KEYS_MAX, RANGE_READS_AT_ONCE, Limits
from paxoskv.metrics import REGISTRY, Metrics
from paxoskv.node import Node, NoQuorum, Overloaded, UnknownOutcome
from paxoskv.reconfigure import ChangeFailed
from paxoskv.transport.server import PeerServer, expect_handler
from paxoskv.ttl import parse_ttl

__all__ = ["ALL_PARTS", "ApiError", "Part", "make_app"]

log = logging.getLogger(__name__)

NODE = web.AppKey("node", Node)
SECRET = web.AppKey("secret", str)
LIMITS = web.AppKey("limits", Limits)
METRICS = web.AppKey("metrics", Metrics)
IDEMPOTENCY_WINDOW = web.AppKey("idempotency_window_s", float)
TOKENS = web.AppKey("tokens", TokenStore)
METRICS_AUTH = web.AppKey("metrics_auth", bool)
PRINCIPAL = web.RequestKey("principal", Principal)
"""Who sent the request; absent when auth is off (everything is allowed)."""

RETRY_AFTER_S = "1"

_DIGITS = re.compile(r"[0-9]+")
"""ASCII digits only: ``str.isdigit`` also accepts "²" and other digits ``int`` refuses."""


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra
        self.headers = headers


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None
          ) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), headers=headers,
                        content_type="application/json")


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None,
           **extra: Any) -> web.Response:
    return _json(status, {"error": code, "message": message, **extra}, headers)


_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found",
               405: "method_not_allowed", 413: "value_too_large"}


# ------------------------------------------------------------------ authentication

_OPEN_ROUTES = frozenset({"/healthz", "/readyz"})
_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_REALM = 'Bearer realm="paxoskv"'


def _needs_token(request: web.Request) -> bool:
    route = request.match_info.route
    if route.resource is None:  # unmatched (404/405): answer 401 first, say nothing more
        return True
    path = route.resource.canonical
    if path in _OPEN_ROUTES or path.startswith("/internal/"):
        return False
    return path != "/metrics" or request.app[METRICS_AUTH]


def _refuse(request: web.Request, reason: str, status: int, message: str) -> ApiError:
    request.app[METRICS].auth_failure(reason)
    if status == 401:
        challenge = _REALM if reason == "missing" else _REALM + ', error="invalid_token"'
        return ApiError(401, "unauthorized", message, {"WWW-Authenticate": challenge})
    return ApiError(403, "forbidden", message,
                    {"WWW-Authenticate": _REALM + ', error="insufficient_scope"'})


def _authenticate(request: web.Request) -> None:
    """Raise ``ApiError`` (401, 403, 429) unless the request may go on; keep its principal."""
    store = request.app.get(TOKENS)
    if store is None or not _needs_token(request):
        return
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise _refuse(request, "missing", 401,
                      "this endpoint needs a token: Authorization: Bearer <token>")
    principal = store.authenticate(token)
    if principal is None:
        raise _refuse(request, "unknown", 401, "the bearer token is not valid (unknown, "
                      "revoked or mistyped)")
    wait_s = store.admit(principal)
    if wait_s > 0:
        # Before the role check: a token's refused requests count against its rate too.
        request.app[METRICS].http_refused("token_rate")
        raise ApiError(429, "rate_limited",
                       f"token {principal.name!r} is over its rate limit of "
                       f"{store.rate_of(principal)} on this node; retry later",
                       {"Retry-After": str(max(1, math.ceil(wait_s)))})
    needed: Role = "read" if request.method in _READ_METHODS else "write"
    if not principal.has_role(needed):
        raise _refuse(request, "forbidden", 403,
                      f"token {principal.name!r} has role {principal.role}; "
                      f"{request.method} needs {needed}")
    request[PRINCIPAL] = principal


@web.middleware
async def auth_middleware(request: web.Request,
                          handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                          ) -> web.StreamResponse:
    """Authentication alone, where the client guards do not run (the metrics port)."""
    _authenticate(request)
    return await handler(request)


def _check_key(request: web.Request, key: str) -> None:
    principal = request.get(PRINCIPAL)
    if principal is not None and not principal.may_touch(key):
        raise _refuse(request, "forbidden", 403,
                      f"token {principal.name!r} may not touch this key (allowed prefixes: "
                      f"{', '.join(map(repr, principal.prefixes or ()))})")


def _check_listing(request: web.Request, prefix: str) -> None:
    principal = request.get(PRINCIPAL)
    if principal is not None and not principal.may_list(prefix):
        raise _refuse(request, "forbidden", 403,
                      f"token {principal.name!r} may list only within its prefixes "
                      f"({', '.join(map(repr, principal.prefixes or ()))}): pass one of "
                      "them, or a longer one, as prefix=")


def _error_response(request: web.Request, exc: Exception) -> web.Response | None:
    """The answer to an exception raised while handling ``request``; None to let it
    propagate (an HTTP redirect or success raised as an exception)."""
    if isinstance(exc, ApiError):
        return _error(exc.status, exc.code, exc.message, exc.headers, **exc.extra)
    if isinstance(exc, NoQuorum):
        return _error(503, "no_quorum", str(exc), {"Retry-After": RETRY_AFTER_S})
    if isinstance(exc, Overloaded):
        return _error(503, "overloaded", str(exc), {"Retry-After": RETRY_AFTER_S})
    if isinstance(exc, UnknownOutcome):
        return _error(504, "unknown_outcome",
                      f"{exc}; the write may or may not have taken effect: read the key to "
                      "find out")
    if isinstance(exc, KeyReused):
        return _error(422, "idempotency_key_reused", str(exc))
    if isinstance(exc, InProgress):
        return _error(409, "idempotency_in_progress", str(exc),
                      {"Retry-After": str(exc.retry_after_s)})
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            return None
        code = _HTTP_CODES.get(exc.status, "http_error")
        return _error(exc.status, code, exc.reason)
    log.error("unhandled error in %s %s", request.method, request.path, exc_info=exc)
    return _error(500, "internal", "internal error; see the server log")


@web.middleware
async def errors_middleware(request: web.Request,
                            handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                            ) -> web.StreamResponse:
    """Exceptions as JSON errors, where the client guards (which do this themselves, one
    layer fewer per request) do not run."""
    try:
        return await handler(request)
    except Exception as exc:
        response = _error_response(request, exc)
        if response is None:
            raise
        return response


# ------------------------------------------------------------------ client API helpers

def _key(request: web.Request) -> str:
    return _valid_key(request, request.match_info["key"])


def _valid_key(request: web.Request, key: str) -> str:
    """``key`` if it is a client key this request may touch; else ``ApiError``."""
    size = len(key.encode("utf-8", errors="surrogatepass"))
    limit = request.app[LIMITS].key_bytes_max
    if size == 0 or size > limit:
        raise ApiError(400, "bad_key", f"key must be 1-{limit} bytes of UTF-8, got {size}")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(400, "bad_key", "key is not valid UTF-8") from None
    if key.startswith(RESERVED_PREFIX):
        raise ApiError(400, "bad_key", "keys starting with U+10FFFF are reserved")
    if key == CONFIG_KEY:
        raise ApiError(400, "bad_key", "this key is reserved: it holds the acceptor-set "
                       "config (docs/reconfiguration.md)")
    _check_key(request, key)
    return key


def _version_header(request: web.Request, name: str) -> int | None:
    raw = request.headers.get(name)
    if raw is None:
        return None
    text = raw.strip()
    if text.startswith("W/"):
        text = text[2:]
    text = text.strip('"')
    if not _DIGITS.fullmatch(text) or len(text) > 18:
        raise ApiError(400, "bad_header",
                       f'{name} must be a quoted version such as "3" (got {raw!r})')
    return int(text)


_IDEMPOTENCY_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:-")
IDEMPOTENCY_KEY_MAX = 64


def _idempotency_key(request: web.Request) -> str | None:
    """``Idempotency-Key``: a retry with the same key gets the first request's outcome
    (paxoskv/idempotency.py)."""
    raw = request.headers.get("Idempotency-Key")
    if raw is None:
        return None
    if not 1 <= len(raw) <= IDEMPOTENCY_KEY_MAX or not set(raw) <= _IDEMPOTENCY_CHARS:
        raise ApiError(400, "bad_header", "Idempotency-Key must be 1-64 characters of "
                       "letters, digits and . _ : -")
    return raw


async def _execute(request: web.Request, key: str, change: Change, body: bytes,
                   if_match: int | None, if_none_match: bool) -> tuple[RecordOutcome, bool]:
    """Run a write; with an Idempotency-Key at most once per key and window. Returns the
    outcome and whether it was replayed from an earlier request."""
    node = request.app[NODE]
    idem = _idempotency_key(request)
    if idem is None:
        return summarize(await node.execute(key, change)), False
    ttl = getattr(change, "ttl_ms", None)  # a TTL is part of what the key promises to repeat
    method = request.method if ttl is None else f"{request.method};ttl={ttl}"
    fp = fingerprint(method, key, body, if_match, if_none_match)
    result = await run_idempotent(node, idem, fp, key, change,
                                  request.app[IDEMPOTENCY_WINDOW])
    return result.outcome, result.replayed


def _etag(version: int) -> str:
    return f'"{version}"'


async def _timed(request: web.Request, op: str,
                 call: Callable[[], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500
    try:
        response = await call()
        status = response.status
        return response
    except ApiError as exc:
        status = exc.status
        raise
    except (NoQuorum, Overloaded):
        status = 503
        raise
    except UnknownOutcome:
        status = 504
        raise
    except KeyReused:
        status = 422
        raise
    except InProgress:
        status = 409
        raise
    finally:
        request.app[METRICS].request(op, status, time.perf_counter() - started)


def _precondition_failed(outcome: RecordOutcome, headers: dict[str, str]) -> web.Response:
    current = outcome.version
    return _error(412, "precondition_failed",
                  "the condition did not hold" + (f"; current version is {current}"
                                                  if current is not None else
                                                  "; the key does not exist"),
                  headers, current_version=current)


def _replay_headers(replayed: bool) -> dict[str, str]:
    return {"Idempotent-Replayed": "true"} if replayed else {}


def _failed_status(exc: Exception) -> int:
    """The status a handler's exception is answered with (by ``errors_middleware``), for
    the request metric."""
    if isinstance(exc, ApiError):
        return exc.status
    if isinstance(exc, (NoQuorum, Overloaded)):
        return 503
    if isinstance(exc, UnknownOutcome):
        return 504
    if isinstance(exc, KeyReused):
        return 422
    if isinstance(exc, InProgress):
        return 409
    return 500


# put_key and get_key time themselves inline rather than through _timed: its closure and
# coroutine are a measurable share of a request's CPU on the two hottest routes.

async def put_key(request: web.Request) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500
    try:
        key = _key(request)
        limit = request.app[LIMITS].value_bytes_max
        if request.content_length is not None and request.content_length > limit:
            raise ApiError(413, "value_too_large", f"value is larger than {limit} bytes")
        data = await request.read()
        if len(data) > limit:
            raise ApiError(413, "value_too_large", f"value is larger than {limit} bytes")
        expected = _version_header(request, "If-Match")
        none_match = request.headers.get("If-None-Match")
        ttl = _ttl(request, required=False)
        change: Change
        if none_match is not None:
            if none_match.strip() != "*":
                raise ApiError(400, "bad_header", "If-None-Match supports only *")
            if expected is not None:
                raise ApiError(400, "bad_header", "use If-Match or If-None-Match, not both")
            change = Create(data, ttl)
        elif expected is not None:
            change = Cas(expected, data, ttl)
        else:
            change = Set(data, ttl)
        outcome, replayed = await _execute(request, key, change, data, expected,
                                           none_match is not None)
        headers = _replay_headers(replayed)
        if outcome.kind != "applied" or outcome.version is None:
            response = _precondition_failed(outcome, headers)
        else:
            version = outcome.version
            response = _json(200, {"key": key, "version": version},
                             {"ETag": _etag(version), **headers})
        status = response.status
        return response
    except Exception as exc:
        status = _failed_status(exc)
        raise
    finally:
        request.app[METRICS].request("put", status, time.perf_counter() - started)


async def get_key(request: web.Request) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500
    op = "get"
    try:
        key = _key(request)
        if "index" in request.query or "wait" in request.query:
            from paxoskv.api.watch import long_poll  # (it imports this module)
            op = "watch"  # a long wait, kept out of the GET latency histogram
            response = await long_poll(request, key)
            status = response.status
            return response
        consistency = request.query.get("consistency", "linearizable")
        node = request.app[NODE]
        if consistency == "stale":
            outcome = node.read_local(key)
        elif consistency == "linearizable":
            outcome = await node.read(key)
        else:
            raise ApiError(400, "bad_request", "consistency must be linearizable or stale")
        value = outcome.value
        if value.data is None:
            response = _error(404, "not_found", f"key {key!r} does not exist")
        else:
            headers = {"ETag": _etag(value.version)}
            if value.expires_ms is not None:
                headers["Expires-At-Ms"] = str(value.expires_ms)
            response = web.Response(status=200, body=value.data, headers=headers,
                                    content_type="application/octet-stream")
        status = response.status
        return response
    except Exception as exc:
        status = _failed_status(exc)
        raise
    finally:
        request.app[METRICS].request(op, status, time.perf_counter() - started)


async def delete_key(request: web.Request) -> web.StreamResponse:
    async def run() -> web.StreamResponse:
        key = _key(request)
        expected = _version_header(request, "If-Match")
        outcome, replayed = await _execute(request, key, Delete(expected), b"", expected,
                                           False)
        headers = _replay_headers(replayed)
        if outcome.kind == "absent":
            return _error(404, "not_found", f"key {key!r} does not exist", headers)
        if outcome.kind == "rejected" or outcome.version is None:
            return _precondition_failed(outcome, headers)
        return web.Response(status=204, headers={"ETag": _etag(outcome.version), **headers})
    return await _timed(request, "delete", run)


def _ttl(request: web.Request, required: bool) -> int | None:
    """``?ttl=`` in ms (``30s``, ``1500ms``, ``5m``...; paxoskv/ttl.py), or None if absent."""
    text = request.query.get("ttl")
    if text is None:
        if required:
            raise ApiError(400, "bad_request", "ttl is required, e.g. ?ttl=30s")
        return None
    try:
        return parse_ttl(text)
    except ValueError as exc:
        raise ApiError(400, "bad_request", str(exc)) from None


async def renew_key(request: web.Request) -> web.StreamResponse:
    """Give a live key a new expiry, ``ttl`` from now, keeping its value (docs/ttl.md)."""
    async def run() -> web.StreamResponse:
        key = _key(request)
        ttl = _ttl(request, required=True)
        assert ttl is not None
        expected = _version_header(request, "If-Match")
        outcome, replayed = await _execute(request, key, Renew(ttl, expected), b"",
                                           expected, False)
        headers = _replay_headers(replayed)
        if outcome.kind == "absent":
            return _error(404, "not_found", f"key {key!r} does not exist or expired",
                          headers)
        if outcome.kind == "rejected" or outcome.version is None:
            return _precondition_failed(outcome, headers)
        return _json(200, {"key": key, "version": outcome.version, "ttl_ms": ttl},
                     {"ETag": _etag(outcome.version), **headers})
    return await _timed(request, "renew", run)


def _cursor(request: web.Request) -> str | None:
    raw = request.query.get("cursor")
    if raw is None or raw == "":
        return None
    try:
        return base64.urlsafe_b64decode(raw.encode("ascii") + b"==").decode("utf-8")
    except (binascii.Error, UnicodeError, ValueError):
        raise ApiError(400, "bad_request", "cursor is not one this API returned") from None


def _encode_cursor(key: str | None) -> str | None:
    if key is None:
        return None
    return base64.urlsafe_b64encode(key.encode("utf-8")).decode("ascii").rstrip("=")


def _bool_param(request: web.Request, name: str) -> bool:
    raw = request.query.get(name, "false")
    if raw not in ("true", "false"):
        raise ApiError(400, "bad_request", f"{name} must be true or false")
    return raw == "true"


def _limit_param(request: web.Request, default: int, maximum: int) -> int:
    raw = request.query.get("limit", str(default))
    if not _DIGITS.fullmatch(raw) or not 1 <= int(raw) <= maximum:
        raise ApiError(400, "bad_request", f"limit must be an integer within 1..{maximum}")
    return int(raw)


def _consistency(request: web.Request) -> Literal["linearizable", "stale"]:
    raw = request.query.get("consistency", "linearizable")
    if raw == "stale":
        return "stale"
    if raw != "linearizable":
        raise ApiError(400, "bad_request", "consistency must be linearizable or stale")
    return "linearizable"


RANGE_LISTINGS_MAX = 64
"""Listings one range-read page makes at most while filling itself (the time budget
usually ends it first)."""


def _range_budget_s(node: Node) -> float:
    """Time one range request spends before answering with a cursor: half the request
    timeout, so that with the last batch's own rounds it still answers within it."""
    return node.config.request_timeout_s / 2


async def list_keys(request: web.Request) -> web.StreamResponse:
    async def run() -> web.StreamResponse:
        prefix = request.query.get("prefix", "")
        _check_listing(request, prefix)
        limits = request.app[LIMITS]
        if _bool_param(request, "values"):
            return await _range_read(request, prefix, limits)
        limit = _limit_param(request, 1000, limits.list_limit_max)
        keys, last = await request.app[NODE].list_keys(prefix, limit, _cursor(request))
        # reserved keys (idempotency records) sort after every client key, so they only
        # ever fill the tail of a listing, and are dropped from it
        keys = [k for k in keys if not is_reserved(k)]
        return _json(200, {"keys": keys, "count": len(keys), "next": _encode_cursor(last),
                           "consistency": "quorum-union"})
    # range reads are timed apart: a page of reads is far slower than a listing
    op = "range" if request.query.get("values") == "true" else "list"
    return await _timed(request, op, run)


async def _read_all(node: Node, keys: list[str], stale: bool) -> list[Outcome]:
    if stale:
        return [node.read_local(k) for k in keys]
    return list(await asyncio.gather(*(node.read(k) for k in keys)))


async def _range_read(request: web.Request, prefix: str, limits: Limits
                      ) -> web.StreamResponse:
    """Keys with their values: quorum-union listings, then each key read on its own
    (linearizable unless ``consistency=stale``), RANGE_READS_AT_ONCE at a time. A key
    deleted between the listing and its read is left out. The page fills up to ``limit``
    keys, stopping early at ``range_bytes_max`` bytes of values or when the time budget is
    spent; the cursor then continues after the last key it covered, so nothing is skipped.
    Listings of tombstones only are passed over while time remains, so a page is rarely
    empty before the end."""
    node = request.app[NODE]
    limit = _limit_param(request, 100, limits.range_limit_max)
    consistency = _consistency(request)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _range_budget_s(node)
    items: list[dict[str, Any]] = []
    size = 0
    cursor = _cursor(request)  # every key up to it is covered (returned or found absent)

    def page(more: bool) -> web.Response:
        return _json(200, {"items": items, "count": len(items),
                           "next": _encode_cursor(cursor) if more else None,
                           "consistency": consistency})

    for _ in range(RANGE_LISTINGS_MAX):
        keys, last = await node.list_keys(prefix, limit - len(items), cursor)
        keys = [k for k in keys if not is_reserved(k)]
        for start in range(0, len(keys), RANGE_READS_AT_ONCE):
            batch = keys[start:start + RANGE_READS_AT_ONCE]
            outcomes = await _read_all(node, batch, consistency == "stale")
            for key, outcome in zip(batch, outcomes, strict=True):
                data = outcome.value.data
                if data is not None:
                    if items and size + len(data) > limits.range_bytes_max:
                        return page(True)
                    size += len(data)
                    item = {"key": key, "version": outcome.value.version,
                            "value_base64": base64.b64encode(data).decode("ascii")}
                    if outcome.value.expires_ms is not None:  # a TTL key (docs/ttl.md)
                        item["expires_ms"] = outcome.value.expires_ms
                    items.append(item)
                cursor = key
            if start + RANGE_READS_AT_ONCE < len(keys) and loop.time() >= deadline:
                return page(True)
        if last is None:
            return page(False)
        cursor = last
        if len(items) >= limit or loop.time() >= deadline:
            break
    return page(True)


def _stopped(exc: BaseException, key: str, deleted: int, cursor: str | None) -> BaseException:
    """The answer of a range delete one of whose deletes failed: that failure's status and
    code, with the count so far and the cursor before the failed key."""
    extra: dict[str, Any] = {"deleted": deleted, "complete": False,
                             "next": _encode_cursor(cursor)}
    where = f" (the range delete stopped at key {key!r}; continue with cursor=next)"
    if isinstance(exc, (NoQuorum, Overloaded)):
        code = "no_quorum" if isinstance(exc, NoQuorum) else "overloaded"
        return ApiError(503, code, f"{exc}{where}", {"Retry-After": RETRY_AFTER_S}, **extra)
    if isinstance(exc, UnknownOutcome):
        return ApiError(504, "unknown_outcome", f"{exc}{where}", **extra)
    return exc


async def delete_prefix(request: web.Request) -> web.StreamResponse:
    """Delete every live key under a prefix, one Paxos delete per key (not atomic across
    keys). Admin only; an empty prefix needs ``all=true``. Bounded by
    DELETE_PREFIX_KEYS_MAX keys and half the request timeout: past either it answers
    ``complete: false`` with the cursor to continue from. A failed delete stops it with
    that error, the count so far and the cursor (every key up to it is deleted)."""
    async def run() -> web.StreamResponse:
        principal = request.get(PRINCIPAL)
        if principal is not None and not principal.has_role("admin"):
            raise _refuse(request, "forbidden", 403,
                          f"token {principal.name!r} has role {principal.role}; a range "
                          "delete needs admin")
        prefix = request.query.get("prefix", "")
        _check_listing(request, prefix)
        if prefix == "" and not _bool_param(request, "all"):
            raise ApiError(400, "bad_request", "an empty prefix deletes every key: pass "
                           "all=true to mean it")
        if "Idempotency-Key" in request.headers:
            raise ApiError(400, "bad_header", "a range delete takes no Idempotency-Key: "
                           "running it again is safe (it deletes what is still there)")
        node = request.app[NODE]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _range_budget_s(node)
        cursor = _cursor(request)
        deleted = seen = 0
        for _ in range(DELETE_PREFIX_KEYS_MAX):  # one batch at least, even past the deadline
            keys, last = await node.list_keys(prefix, RANGE_READS_AT_ONCE, cursor)
            keys = [k for k in keys if not is_reserved(k)]
            results = await asyncio.gather(*(node.execute(k, Delete(None)) for k in keys),
                                           return_exceptions=True)
            deleted += sum(1 for r in results if isinstance(r, Outcome) and r.kind == "applied")
            for key, result in zip(keys, results, strict=True):
                if isinstance(result, BaseException):
                    raise _stopped(result, key, deleted, cursor)
                cursor = key
            seen += len(keys)
            if last is None:
                return _json(200, {"deleted": deleted, "complete": True, "next": None})
            cursor = last
            if seen >= DELETE_PREFIX_KEYS_MAX or loop.time() >= deadline:
                break
        return _json(200, {"deleted": deleted, "complete": False,
                           "next": _encode_cursor(cursor),
                           "message": "stopped at this request's bound (keys or time); "
                                      "continue with cursor=next"})
    return await _timed(request, "delete_prefix", run)


ACCEPTORS_MAX = 64
"""Acceptors a change may name (the peer wire's bound on a config's sets)."""


def _require_admin(request: web.Request, what: str) -> None:
    principal = request.get(PRINCIPAL)
    if principal is not None and not principal.has_role("admin"):
        raise _refuse(request, "forbidden", 403,
                      f"token {principal.name!r} has role {principal.role}; {what} needs admin")


async def change_acceptors(request: web.Request) -> web.StreamResponse:
    """Start changing the acceptor set to ``{"acceptors": [ids]}``, one acceptor at a time,
    in the background on this node (docs/reconfiguration.md); 202 with the driver's
    progress. Posting again after a crash (or on another node) continues from the record;
    409 while this node is already driving one. Admin only."""
    _require_admin(request, "changing the acceptor set")
    node = request.app[NODE]
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise ApiError(400, "bad_request", "body must be JSON: {\"acceptors\": [ids]}") from None
    ids = body.get("acceptors") if isinstance(body, dict) else None
    if not (isinstance(ids, list) and 1 <= len(ids) <= ACCEPTORS_MAX
            and all(type(i) is int and i >= 0 for i in ids)):
        raise ApiError(400, "bad_request", "acceptors must be a list of node ids")
    unknown = sorted(set(ids) - node.config.acceptors)
    if unknown:
        raise ApiError(400, "bad_request", f"nodes {unknown} are not acceptor-role nodes of "
                       "this cluster's --peers")
    old = sorted(pid for pid, h in node.peer_health.items()
                 if pid in node.config.acceptors and h.up and not h.epochs)
    if old:
        # Their acks could not prove they hold a new config (the install would stall):
        # every node must run a release with epochs before the first change.
        raise ApiError(409, "peers_without_epochs", f"acceptors {old} run a release without "
                       "acceptor-set epochs; upgrade every node first")
    if not node.reconfigurer.start(ids):
        return _error(409, "change_in_progress", "this node is already driving a change",
                      reconfiguration=node.reconfigurer.progress.as_dict())
    return _json(202, {"reconfiguration": node.reconfigurer.progress.as_dict()})


async def acceptors_status(request: web.Request) -> web.StreamResponse:
    """The change record (read by a round), the config this node holds, and its driver's
    progress. Admin only."""
    _require_admin(request, "the acceptor-set record")
    node = request.app[NODE]
    try:
        record, version = await node.reconfigurer.read_record()
    except ChangeFailed as exc:
        raise ApiError(503, "no_quorum", f"the record could not be read: {exc}",
                       {"Retry-After": RETRY_AFTER_S}) from None
    return _json(200, {"record": {"phase": record.phase.value,
                                  "config": record.config.to_json(),
                                  "target": None if record.target is None
                                  else record.target.to_json(),
                                  "version": version},
                       "held": node.epoch_config.to_json(),
                       "reconfiguration": node.reconfigurer.progress.as_dict()})


async def status(request: web.Request) -> web.StreamResponse:
    node = request.app[NODE]
    principal = request.get(PRINCIPAL)
    if principal is None or principal.has_role("admin"):
        return _json(200, node.status())
    # Peer URLs, data ids and incarnations map the cluster for an attacker; a client only
    # needs to know whether this node can serve it.
    return _json(200, {"node_id": node.config.node_id, "ready": _ready(node),
                       "quorum": {"size": node.quorum.quorum,
                                  "reachable": node.quorum_reachable()},
                       "detail": "reduced: the full status needs an admin token"})


def _ready(node: Node) -> bool:
    return (not node.draining and node.machine.may_propose and node.quorum_reachable()
            and node.ready())


async def healthz(request: web.Request) -> web.StreamResponse:
    return _json(200, {"status": "alive"})


async def readyz(request: web.Request) -> web.StreamResponse:
    node = request.app[NODE]
    if node.draining:
        return _error(503, "stopping", "node is shutting down")
    if not node.machine.may_propose:
        return _error(503, "identity_" + node.machine.identity,
                      f"this node's identity is {node.machine.identity}"
                      + (f": {node.machine.reason}" if node.machine.reason else ""),
                      {"Retry-After": RETRY_AFTER_S})
    if not node.quorum_reachable():
        return _error(503, "no_quorum", "a quorum of acceptors is not reachable",
                      {"Retry-After": RETRY_AFTER_S})
    if not node.ready():
        return _error(503, "not_heard_from_quorum",
                      "a quorum of acceptors is reachable, but not enough of them reach this "
                      "node yet", {"Retry-After": RETRY_AFTER_S})
    return _json(200, {"status": "ready", "acceptor_mode": node.acceptor_mode})


async def metrics_text(request: web.Request) -> web.StreamResponse:
    request.app[NODE].metrics.keys(request.app[NODE].storage.key_count())
    body = generate_latest(REGISTRY)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: web.Request) -> web.StreamResponse:
    return _json(200, openapi_document())


Part = Literal["client", "peer", "metrics"]
ALL_PARTS: Final[frozenset[Part]] = frozenset({"client", "peer", "metrics"})
"""What one listener serves: the client API with its probes (``/v1/``, ``/healthz``,
``/readyz``), the peer endpoints (``/internal/``), ``/metrics`` (with the probes again when
on a port of its own). A node with
``--peer-listen`` or ``--metrics-listen`` serves those parts on their own ports only, so a
NetworkPolicy can admit each port from its own sources."""


async def value_expect_handler(request: web.Request) -> web.StreamResponse | None:
    """Expect: 100-continue on a route that takes a value: a body announced larger than a
    value is refused 413 instead of being invited."""
    limit = request.app[LIMITS].value_bytes_max
    if request.content_length is not None and request.content_length > limit:
        response = _error(413, "value_too_large", f"the body is larger than {limit} bytes")
        response.force_close()
        return response
    return await expect_handler(request)


def make_app(node: Node, secret: str, limits: Limits, metrics: Metrics,
             idempotency_window_s: float = DEFAULT_WINDOW_S,
             parts: frozenset[Part] = ALL_PARTS,
             guard: GuardLimits | None = None, tokens: TokenStore | None = None,
             metrics_auth: bool = False) -> web.Application:
    """``tokens`` None: no client authentication (``--auth none``)."""
    if metrics_auth and tokens is None:
        raise ValueError("metrics auth needs a token store")
    middlewares: list[Any]
    # Without a token store authentication would only pass every request on.
    authenticate = _authenticate if tokens is not None else None
    if guard is not None and "client" in parts:
        # One layer: errors answered as JSON, the request cap before authentication (a
        # flood of requests with bad tokens is capped too), the body read after it (no body
        # is buffered for a client without a valid token).
        middlewares = [client_guard_middleware(guard, metrics, _error, limits.value_bytes_max,
                                               authenticate=authenticate,
                                               on_error=_error_response)]
    else:
        middlewares = [errors_middleware]
        if authenticate is not None:
            middlewares.append(auth_middleware)
    # A client request's body is one value; only peer frames may be larger.
    body_max = limits.frame_bytes_max if "peer" in parts else limits.value_bytes_max + 1
    app = web.Application(middlewares=middlewares, client_max_size=body_max)
    if tokens is not None:
        app[TOKENS] = tokens
    app[METRICS_AUTH] = metrics_auth
    app[NODE] = node
    app[SECRET] = secret
    app[LIMITS] = limits
    app[METRICS] = metrics
    app[IDEMPOTENCY_WINDOW] = idempotency_window_s
    if "client" in parts:
        app.router.add_put("/v1/kv/{key:.+}", put_key, expect_handler=value_expect_handler)
        app.router.add_get("/v1/kv/{key:.+}", get_key, expect_handler=expect_handler)
        app.router.add_delete("/v1/kv/{key:.+}", delete_key, expect_handler=expect_handler)
        app.router.add_post("/v1/kv/{key:.+}/renew", renew_key, expect_handler=expect_handler)
        app.router.add_get("/v1/kv", list_keys, expect_handler=expect_handler)
        app.router.add_delete("/v1/kv", delete_prefix, expect_handler=expect_handler)
        from paxoskv.api.watch import watch_stream  # (it imports this module)
        app.router.add_get("/v1/watch", watch_stream, expect_handler=expect_handler)
        app.router.add_get("/v1/status", status, expect_handler=expect_handler)
        app.router.add_post("/admin/acceptors", change_acceptors,
                            expect_handler=expect_handler)
        app.router.add_get("/admin/acceptors", acceptors_status, expect_handler=expect_handler)
        app.router.add_get("/v1/openapi.json", openapi, expect_handler=expect_handler)
        app.router.add_get("/healthz", healthz, expect_handler=expect_handler)
        app.router.add_get("/readyz", readyz, expect_handler=expect_handler)
    if "metrics" in parts:
        app.router.add_get("/metrics", metrics_text, expect_handler=expect_handler)
        if "client" not in parts:  # probes here too: a flooded client port must not fail them
            app.router.add_get("/healthz", healthz, expect_handler=expect_handler)
            app.router.add_get("/readyz", readyz, expect_handler=expect_handler)
    if "peer" in parts:
        PeerServer(node, secret, limits.frame_bytes_max,
                   count_bytes=metrics.peer_bytes).add_routes(app)
    return app

