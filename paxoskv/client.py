"""Python clients for the HTTP API: ``Client`` (sync, stdlib only) and ``AsyncClient``.

Both take one URL or several (``endpoints=[...]``, or ``"http://a:7000,http://b:7000"``):
a request that cannot be answered where it was sent (no connection, a timeout, 503) moves
on to the next endpoint, and the client stays with the one that answered. Retries follow
``Retry``: bounded in tries and in time, honouring the server's ``Retry-After`` (429, 503,
409 "in progress"). Every write carries one ``Idempotency-Key`` for all of its tries, so a
try whose answer was lost (a dropped connection, a timeout, 504) can be sent again: the
cluster applies the write at most once and answers its first outcome (a compare-and-set is
never applied twice, nor told 412 for its own write). Errors are typed, all under
``PaxosKVError``.

``HttpClient`` and ``AsyncHttpClient`` are the same clients with one try per call and every
HTTP answer returned as a ``Result``: for tests of the HTTP contract itself.

Both send ``Authorization: Bearer <token>`` when given ``token=``, or else when
``PAXOSKV_TOKEN`` is set, so a program written against an open cluster works against a
protected one by setting one variable. Likewise for TLS: an ``https://`` URL is verified
against ``ca_file=`` (else ``PAXOSKV_CACERT``, else the system's CAs), and ``cert_file=`` /
``key_file=`` present a client certificate where one is asked for.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import builtins
import email.utils
import http.client
import logging
import os
import random
import secrets
import ssl
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import orjson

from paxoskv.tls import TlsError, TlsFiles, client_context
from paxoskv.watch_client import WatchEvent, watch_async, watch_sync

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_URL",
    "AsyncClient",
    "AsyncHttpClient",
    "BadRequest",
    "Client",
    "ClientError",
    "Forbidden",
    "HttpClient",
    "IdempotencyInProgress",
    "IdempotencyKeyReused",
    "NoQuorum",
    "NotFound",
    "Overloaded",
    "PaxosKVError",
    "PreconditionFailed",
    "RangeItem",
    "RangePage",
    "RateLimited",
    "Result",
    "Retry",
    "RetryEvent",
    "ServerError",
    "Unauthorized",
    "Unavailable",
    "UnknownOutcome",
    "ValueTooLarge",
    "WatchEvent",
    "error_for",
    "new_idempotency_key",
    "parse_endpoints",
]

log = logging.getLogger(__name__)

DEFAULT_PORT = 7000
"""The client port of ``paxoskv serve``, the image and the chart (7001 is the chart's peer
port, 7002 its metrics port)."""
DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_PORT}"


@dataclass(frozen=True, slots=True)
class Result:
    status: int
    body: bytes
    version: int | None
    headers: dict[str, str]
    url: str = ""
    """The endpoint that answered."""

    def json(self) -> Any:
        return orjson.loads(self.body)

    def header(self, name: str) -> str | None:
        """A response header by case-insensitive name."""
        lower = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == lower), None)

    @property
    def replayed(self) -> bool:
        """The server answered an earlier try's outcome (same Idempotency-Key)."""
        return self.header("Idempotent-Replayed") == "true"

    def raise_for_status(self) -> Result:
        """This result, or its typed error for a 4xx/5xx answer."""
        if self.status >= 400:
            raise error_for(self)
        return self


# ------------------------------------------------------------------ errors

class PaxosKVError(Exception):
    """Every error of this module. ``status`` is the HTTP status (None: no answer came),
    ``error`` the server's JSON error body (``{"error": code, "message": ...}``)."""

    def __init__(self, message: str, status: int | None = None,
                 error: dict[str, Any] | None = None, url: str | None = None,
                 retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message, self.status, self.error, self.url = message, status, error, url
        self.retry_after_s = retry_after_s

    @property
    def code(self) -> str | None:
        """The server's error code (``no_quorum``, ``precondition_failed``, ...)."""
        value = (self.error or {}).get("error")
        return value if isinstance(value, str) else None


class ClientError(PaxosKVError):
    """No answer: the server could not be reached, or the exchange broke off.
    ``maybe_sent``: the request may have reached the server (a write may have run)."""

    def __init__(self, message: str, url: str | None = None, maybe_sent: bool = False,
                 stale: bool = False) -> None:
        super().__init__(message, url=url)
        self.maybe_sent, self.stale = maybe_sent, stale


class BadRequest(PaxosKVError):
    """The request itself is wrong (400, 405, 413, 422): sending it again cannot help."""


class ValueTooLarge(BadRequest):
    """413: the value is larger than the server's --max-value-bytes."""


class IdempotencyKeyReused(BadRequest):
    """422: the Idempotency-Key was already used for a different request."""


class Unauthorized(PaxosKVError):
    """401: no token, or one the server does not know."""


class Forbidden(PaxosKVError):
    """403: the token's role or prefixes do not allow this."""


class NotFound(PaxosKVError):
    """404: the key does not exist."""


class PreconditionFailed(PaxosKVError):
    """412: If-Match / If-None-Match did not hold; ``current_version`` is the key's
    version then (None: the key did not exist)."""

    @property
    def current_version(self) -> int | None:
        value = (self.error or {}).get("current_version")
        return value if isinstance(value, int) and not isinstance(value, bool) else None


class IdempotencyInProgress(PaxosKVError):
    """409: a try with the same Idempotency-Key is still running."""


class RateLimited(PaxosKVError):
    """429: the token is over its rate on that node (``retry_after_s``)."""


class Unavailable(PaxosKVError):
    """503: that node cannot serve now; nothing was written."""


class NoQuorum(Unavailable):
    """503 no_quorum: a majority of acceptors did not answer; nothing was written."""


class Overloaded(Unavailable):
    """503 overloaded: the node refused the request unread; nothing was written."""


class UnknownOutcome(PaxosKVError):
    """The write may or may not have taken effect (504, or a try whose answer was lost and
    could not be settled by retrying): read the key to find out."""


class ServerError(PaxosKVError):
    """500 or another status this client does not know."""


_BY_STATUS: dict[int, type[PaxosKVError]] = {
    400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 405: BadRequest,
    408: Unavailable, 409: IdempotencyInProgress, 412: PreconditionFailed,
    413: ValueTooLarge, 422: IdempotencyKeyReused, 429: RateLimited, 503: Unavailable,
    504: UnknownOutcome}


def _error_body(result: Result) -> dict[str, Any] | None:
    try:
        body = orjson.loads(result.body)
    except orjson.JSONDecodeError:
        return None
    return body if isinstance(body, dict) else None


def error_for(result: Result) -> PaxosKVError:
    """The typed error of a 4xx/5xx answer."""
    body = _error_body(result)
    code = body.get("error") if body else None
    cls = _BY_STATUS.get(result.status, ServerError)
    if result.status == 503 and code in ("no_quorum", "overloaded"):
        cls = NoQuorum if code == "no_quorum" else Overloaded
    message = str(body.get("message", "")) if body else ""
    text = f"{result.status} {code or 'error'}" + (f": {message}" if message else "")
    return cls(text, result.status, body, result.url, _retry_after(result))


def _retry_after(result: Result) -> float | None:
    raw = result.header("Retry-After")
    if raw is None:
        return None
    raw = raw.strip()
    if raw.isascii() and raw.isdigit():
        return float(raw)
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


# ------------------------------------------------------------------ retries

@dataclass(frozen=True, slots=True)
class RetryEvent:
    """One decision to try again (given to ``Retry.on_retry``)."""

    attempt: int
    """The try that failed (1 = the first)."""
    url: str
    reason: str
    """The status and error code, or the exception."""
    status: int | None
    delay_s: float
    """Seconds waited before the next try (the server's Retry-After where it gave one)."""
    next_url: str


@dataclass(frozen=True, slots=True)
class Retry:
    """How hard a call tries. Bounded both ways: at most ``attempts`` tries, and none
    begins later than ``total_s`` after the first (so a call takes at most about
    ``total_s`` plus one timeout)."""

    attempts: int = 8
    total_s: float = 30.0
    backoff_s: float = 0.1
    """First wait when the server named none; doubles per wait, up to ``max_backoff_s``."""
    max_backoff_s: float = 2.0
    idempotency_keys: bool = True
    """Give every write an Idempotency-Key, so a try whose answer was lost can be retried.
    Off: such a write ends in UnknownOutcome (and the server does less work per write)."""
    on_retry: Callable[[RetryEvent], None] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.total_s < 0 or self.backoff_s < 0:
            raise ValueError("Retry needs attempts >= 1 and non-negative times")


DEFAULT_RETRY = Retry()

_RETRY_STATUSES = frozenset({408, 409, 429, 503, 504})
_SETTLED = frozenset({200, 204, 404, 412})
"""Answers that settle a write for good, even after a lost try: with an Idempotency-Key
they are its first outcome."""


class _Plan:
    """Where the next try of one call goes and how long to wait first; shared by both
    clients, so the two retry alike. Moves on from a node that failed; waits only after
    every endpoint has failed since the last wait (or for a 429/409, which name a wait)."""

    def __init__(self, start: int, urls: Sequence[str], retry: Retry | None, method: str,
                 keyed: bool) -> None:
        self.index, self.urls, self.retry = start, urls, retry
        self.write = method not in ("GET", "HEAD")
        self.resendable = not self.write or keyed
        self.attempt = 1
        self.started = time.monotonic()
        self.tried = {start}
        self.server_wait: float | None = None
        self.backoff = retry.backoff_s if retry else 0.0
        self.maybe_applied = False

    @property
    def url(self) -> str:
        return self.urls[self.index]

    def after_answer(self, result: Result) -> float | None:
        """Seconds to wait before the next try, or None: ``result`` is the answer."""
        if self.retry is None or result.status not in _RETRY_STATUSES:
            return None
        body = _error_body(result)
        code = str(body.get("error")) if body else ""
        if result.status == 504 and self.write:
            if not self.resendable:
                return None
            self.maybe_applied = True
        if result.status == 409 and code != "idempotency_in_progress":
            return None
        stay = result.status in (409, 429)  # a wait that the node named for itself
        return self._next(f"{result.status} {code}".strip(), result.status,
                          _retry_after(result), move=not stay)

    def after_failure(self, exc: ClientError) -> float:
        """Seconds to wait before the next try; raises when the call is over."""
        if self.retry is None:
            # one try, but a read on a keep-alive connection the server had closed is
            # sent again on a new one
            if exc.stale and not self.write and self.attempt == 1:
                self.attempt += 1
                return 0.0
            raise exc
        if exc.maybe_sent and self.write:
            if not self.resendable:
                raise UnknownOutcome(f"{exc}; the write may or may not have taken effect "
                                     "(no Idempotency-Key to retry it with)",
                                     url=exc.url) from exc
            self.maybe_applied = True
        delay = self._next(str(exc), None, None, move=True)
        if delay is None:
            final = self.give_up(exc)
            if final is exc:
                raise exc
            raise final from exc
        return delay

    def _next(self, reason: str, status: int | None, server_wait: float | None,
              move: bool) -> float | None:
        assert self.retry is not None
        if server_wait is not None:
            self.server_wait = max(self.server_wait or 0.0, server_wait)
        previous = self.url
        if move:
            self.index = (self.index + 1) % len(self.urls)
        delay = 0.0
        if not move or self.index in self.tried:
            if self.server_wait is not None:
                delay = self.server_wait
            else:
                delay = self.backoff * (0.5 + random.random() / 2)
                self.backoff = min(self.backoff * 2, self.retry.max_backoff_s)
            self.server_wait = None
            self.tried = set()
        self.tried.add(self.index)
        elapsed = time.monotonic() - self.started
        if self.attempt >= self.retry.attempts or elapsed + delay > self.retry.total_s:
            return None
        event = RetryEvent(self.attempt, previous, reason, status, delay, self.url)
        log.debug("retry: try %d at %s: %s; next %s in %.2fs", event.attempt, previous,
                  reason, self.url, delay)
        if self.retry.on_retry is not None:
            self.retry.on_retry(event)
        self.attempt += 1
        return delay

    def give_up(self, exc: PaxosKVError) -> PaxosKVError:
        """The error a call ends with: ``exc``, unless an earlier try of this write may
        have been applied and nothing since settled it."""
        if not (self.write and self.maybe_applied) or exc.status in _SETTLED:
            return exc
        return UnknownOutcome(f"{exc}; an earlier try may have been applied: read the key "
                              "to find out", exc.status, exc.error, exc.url,
                              exc.retry_after_s)

    def settle(self, result: Result) -> Result:
        if self.write and self.maybe_applied and result.status >= 400 \
                and result.status not in _SETTLED:
            raise self.give_up(error_for(result))
        return result


# ------------------------------------------------------------------ shared helpers

def _version(etag: str | None) -> int | None:
    if etag is None:
        return None
    text = etag.strip().strip('"')
    return int(text) if text.isdigit() else None


def _path(key: str) -> str:
    return "/v1/kv/" + urllib.parse.quote(key, safe="/")


def _ttl_query(ttl: float | str | None) -> str:
    """``?ttl=``: seconds as a number (rounded to ms), or the server's text (``30s``)."""
    if ttl is None:
        return ""
    text = f"{round(ttl * 1000)}ms" if isinstance(ttl, int | float) else ttl
    return "?ttl=" + urllib.parse.quote(text, safe="")


TOKEN_ENV = "PAXOSKV_TOKEN"


def _auth_headers(token: str | None) -> dict[str, str]:
    if token is None:
        token = os.environ.get(TOKEN_ENV) or None
    return {"Authorization": f"Bearer {token}"} if token else {}


CACERT_ENV = "PAXOSKV_CACERT"


def tls_context(ca_file: str | None = None, cert_file: str | None = None,
                key_file: str | None = None) -> ssl.SSLContext:
    """How a client verifies an https:// server (and, given a certificate, proves itself)."""
    ca_file = ca_file or os.environ.get(CACERT_ENV) or None
    own = TlsFiles(Path(cert_file), Path(key_file or cert_file)) if cert_file else None
    try:
        return client_context(own, Path(ca_file) if ca_file else None)
    except TlsError as exc:
        raise ClientError(f"TLS files: {exc}") from None


def parse_endpoints(urls: str | Sequence[str] | None) -> list[str]:
    """Endpoint URLs from a list and/or comma-separated text, in order, without repeats."""
    items = [urls] if isinstance(urls, str) else list(urls or [DEFAULT_URL])
    out: list[str] = []
    for item in items:
        for part in item.split(","):
            url = part.strip().rstrip("/")
            if not url:
                continue
            parsed = urllib.parse.urlparse(url)
            try:
                port_ok = parsed.port is None or parsed.port > 0
            except ValueError:
                port_ok = False
            if parsed.scheme not in ("http", "https") or not parsed.hostname or not port_ok \
                    or parsed.path or parsed.query:
                raise ClientError(f"{part.strip()!r} is not an http:// or https:// URL "
                                  "(scheme, host and port only)")
            if url not in out:
                out.append(url)
    if not out:
        raise ClientError("no endpoint URL given")
    return out


def _conditions(if_match: int | None, if_none_match: bool) -> dict[str, str]:
    headers: dict[str, str] = {}
    if if_match is not None:
        headers["If-Match"] = f'"{if_match}"'
    if if_none_match:
        headers["If-None-Match"] = "*"
    return headers


def new_idempotency_key() -> str:
    """A fresh key for one logical write (the server takes 1-64 of [A-Za-z0-9._:-])."""
    return "pkv-" + secrets.token_hex(12)


class _Base:
    """What both clients share: endpoints, auth, retry policy and request building."""

    def __init__(self, url: str | Sequence[str] | None, timeout_s: float, token: str | None,
                 ca_file: str | None, cert_file: str | None, key_file: str | None,
                 endpoints: Sequence[str] | None, retry: Retry | None,
                 raise_errors: bool) -> None:
        if url is not None and endpoints is not None:
            raise ClientError("give url or endpoints, not both")
        self.endpoints = parse_endpoints(endpoints if endpoints is not None else url)
        https = any(u.startswith("https://") for u in self.endpoints)
        self._tls = tls_context(ca_file, cert_file, key_file) if https else None
        self._timeout = timeout_s
        self._auth = _auth_headers(token)
        self._retry = retry
        self._raise = raise_errors
        self._current = 0

    @property
    def url(self) -> str:
        """The endpoint in use: where the next call goes first."""
        return self.endpoints[self._current]

    def _write_headers(self, headers: dict[str, str], idempotency_key: str | None
                       ) -> dict[str, str]:
        key = idempotency_key
        if key is None and self._retry is not None and self._retry.idempotency_keys:
            key = new_idempotency_key()
        return {**headers, "Idempotency-Key": key} if key is not None else headers

    def _plan(self, method: str, headers: Mapping[str, str], resendable: bool = False
              ) -> _Plan:
        return _Plan(self._current, self.endpoints, self._retry, method,
                     resendable or "Idempotency-Key" in headers)

    def _done(self, plan: _Plan, result: Result, checked: bool) -> Result:
        """The call's answer; the endpoint that gave it is the one to use next."""
        self._current = plan.index
        result = plan.settle(result)
        return result.raise_for_status() if checked and self._raise else result

    @staticmethod
    def _list_path(prefix: str, limit: int, cursor: str | None) -> str:
        query: dict[str, str | int] = {"prefix": prefix, "limit": limit}
        if cursor:
            query["cursor"] = cursor
        return "/v1/kv?" + urllib.parse.urlencode(query)

    @staticmethod
    def _range_path(prefix: str, limit: int, cursor: str | None, stale: bool) -> str:
        query: dict[str, str | int] = {"prefix": prefix, "values": "true", "limit": limit}
        if cursor:
            query["cursor"] = cursor
        if stale:
            query["consistency"] = "stale"
        return "/v1/kv?" + urllib.parse.urlencode(query)

    @staticmethod
    def _delete_prefix_path(prefix: str, all_keys: bool, cursor: str | None) -> str:
        if not prefix and not all_keys:
            raise BadRequest("an empty prefix deletes every key: pass all_keys=True to mean it")
        query: dict[str, str] = {"prefix": prefix}
        if all_keys:
            query["all"] = "true"
        if cursor:
            query["cursor"] = cursor
        return "/v1/kv?" + urllib.parse.urlencode(query)


@dataclass(frozen=True, slots=True)
class RangeItem:
    """One key of a range read, its version and value at its own read time."""

    key: str
    version: int
    value: bytes
    expires_ms: int | None = None
    """A TTL key's expiry (Unix ms, the server's clock); None: it never expires."""


@dataclass(frozen=True, slots=True)
class RangePage:
    """One page of a range read; ``next`` continues it (None: the end)."""

    items: list[RangeItem]
    next: str | None

    @staticmethod
    def parse(result: Result) -> RangePage:
        """The page in ``result``; ``ServerError`` for a body that is not one."""
        result.raise_for_status()
        try:
            doc = result.json()
            items = [RangeItem(i["key"], int(i["version"]),
                               base64.b64decode(i["value_base64"], validate=True),
                               None if i.get("expires_ms") is None else int(i["expires_ms"]))
                     for i in doc["items"]]
            cursor = doc["next"]
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise ServerError(f"{result.url}: not a range page: {exc}", result.status,
                              url=result.url) from None
        if cursor is not None and not isinstance(cursor, str):
            raise ServerError(f"{result.url}: not a range page: next is {cursor!r}",
                              result.status, url=result.url)
        return RangePage(items, cursor)


DELETE_PREFIX_CALLS_MAX = 100_000
"""Calls one ``delete_prefix`` makes at most (each deletes up to 10,000 keys)."""


def _deleted(result: Result) -> tuple[int, bool, str | None]:
    """A range delete answer's count, whether it is complete, and its cursor."""
    result.raise_for_status()
    try:
        doc = result.json()
        cursor = doc.get("next")
        if cursor is not None and not isinstance(cursor, str):
            raise TypeError(f"next is {cursor!r}")
        return int(doc["deleted"]), bool(doc["complete"]), cursor
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ServerError(f"{result.url}: not a range delete answer: {exc}", result.status,
                          url=result.url) from None


class Client(_Base):
    """A synchronous client: one keep-alive connection per endpoint, stdlib only."""

    def __init__(self, url: str | Sequence[str] | None = None, timeout_s: float = 10.0,
                 token: str | None = None, ca_file: str | None = None,
                 cert_file: str | None = None, key_file: str | None = None, *,
                 endpoints: Sequence[str] | None = None, retry: Retry | None = DEFAULT_RETRY,
                 raise_errors: bool = True) -> None:
        super().__init__(url, timeout_s, token, ca_file, cert_file, key_file, endpoints,
                         retry, raise_errors)
        self._conns: dict[str, http.client.HTTPConnection] = {}

    def _connection(self, url: str) -> http.client.HTTPConnection:
        conn = self._conns.get(url)
        if conn is None:
            parsed = urllib.parse.urlparse(url)
            host = parsed.hostname or ""
            if parsed.scheme == "https":
                conn = http.client.HTTPSConnection(host, parsed.port or 443,
                                                   timeout=self._timeout, context=self._tls)
            else:
                conn = http.client.HTTPConnection(host, parsed.port or 80,
                                                  timeout=self._timeout)
            self._conns[url] = conn
        return conn

    def _drop(self, url: str) -> None:
        conn = self._conns.pop(url, None)
        if conn is not None:
            conn.close()

    def _send(self, url: str, method: str, path: str, body: bytes | None,
              headers: dict[str, str]) -> Result:
        conn = self._connection(url)
        fresh = conn.sock is None
        try:
            if fresh:
                conn.connect()
        except OSError as exc:  # nothing was sent
            self._drop(url)
            raise ClientError(f"{url}: {type(exc).__name__}: {exc}", url) from exc
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            self._drop(url)
            stale = not fresh and isinstance(exc, (http.client.RemoteDisconnected,
                                                   BrokenPipeError, ConnectionResetError))
            raise ClientError(f"{url}: {type(exc).__name__}: {exc}", url, maybe_sent=True,
                              stale=stale) from exc
        return Result(resp.status, data, _version(resp.getheader("ETag")),
                      dict(resp.getheaders()), url)

    def _run(self, method: str, path: str, body: bytes | None,
             headers: dict[str, str] | None, checked: bool, resendable: bool = False
             ) -> Result:
        hdrs = {**self._auth, **(headers or {})}
        plan = self._plan(method, hdrs, resendable)
        while True:
            try:
                result = self._send(plan.url, method, path, body, hdrs)
            except ClientError as exc:
                delay = plan.after_failure(exc)
            else:
                answer = plan.after_answer(result)
                if answer is None:
                    return self._done(plan, result, checked)
                delay = answer
            if delay > 0:
                time.sleep(delay)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> Result:
        """One call, with the client's retries; any HTTP answer is returned as it is."""
        return self._run(method, path, body, headers, checked=False)

    def put(self, key: str, value: bytes, if_match: int | None = None,
            if_none_match: bool = False, idempotency_key: str | None = None,
            ttl: float | str | None = None) -> Result:
        """Set ``key``; ``if_match``: only at that version; ``if_none_match``: create only;
        ``ttl`` (seconds, or text such as ``"30s"``): the key expires that long after the
        write (docs/ttl.md). The result's ``version`` is the one this write produced."""
        headers = self._write_headers(_conditions(if_match, if_none_match), idempotency_key)
        return self._run("PUT", _path(key) + _ttl_query(ttl), value, headers, checked=True)

    def renew(self, key: str, ttl: float | str, if_match: int | None = None,
              idempotency_key: str | None = None) -> Result:
        """Give a live TTL key a new expiry ``ttl`` from now, same value; the version bumps.
        NotFound once it expired; PreconditionFailed if ``if_match`` no longer holds."""
        headers = self._write_headers(_conditions(if_match, False), idempotency_key)
        return self._run("POST", _path(key) + "/renew" + _ttl_query(ttl), b"", headers,
                         checked=True)

    def get(self, key: str, stale: bool = False) -> Result:
        """The value (``body``) and ``version``; ``stale``: from one replica, faster."""
        return self._run("GET", _path(key) + ("?consistency=stale" if stale else ""), None,
                         None, checked=True)

    def delete(self, key: str, if_match: int | None = None,
               idempotency_key: str | None = None) -> Result:
        headers = self._write_headers(_conditions(if_match, False), idempotency_key)
        return self._run("DELETE", _path(key), None, headers, checked=True)

    def list(self, prefix: str = "", limit: int = 1000, cursor: str | None = None) -> Result:
        """One page of keys: ``json()["keys"]``, and ``json()["next"]`` for the next page."""
        return self._run("GET", self._list_path(prefix, limit, cursor), None, None,
                         checked=True)

    def range(self, prefix: str = "", limit: int = 100, cursor: str | None = None,
              stale: bool = False) -> RangePage:
        """One page of keys with their values and versions (``next`` continues it). Each
        key is read linearizably at its own time (``stale``: from one replica); a page is
        not a snapshot across keys."""
        return RangePage.parse(self._run("GET", self._range_path(prefix, limit, cursor, stale),
                                         None, None, checked=True))

    def delete_prefix(self, prefix: str, all_keys: bool = False,
                      cursor: str | None = None) -> int:
        """Delete every live key under ``prefix`` (needs an admin token), one by one: not
        atomic across keys. Follows the server's cursors to the end; returns how many keys
        it deleted (a try that failed part way and was retried is not counted). Safe to run
        again; ``all_keys`` must be set for the empty prefix."""
        total = 0
        for _ in range(DELETE_PREFIX_CALLS_MAX):
            path = self._delete_prefix_path(prefix, all_keys, cursor)
            deleted, complete, cursor = _deleted(
                self._run("DELETE", path, None, None, checked=True, resendable=True))
            total += deleted
            if complete or cursor is None:
                break
        return total

    def status(self) -> Result:
        return self._run("GET", "/v1/status", None, None, checked=True)

    def watch(self, key: str | None = None, *, prefix: str | None = None,
              since: Mapping[str, int] | None = None) -> Iterator[WatchEvent]:
        """Changes of ``key`` (or of every key under ``prefix``) as they are chosen,
        forever: reconnects, fails over and resumes by itself (``paxoskv.watch_client``)."""
        return watch_sync(self, prefix, key, since)

    def close(self) -> None:
        for url in builtins.list(self._conns):
            self._drop(url)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class AsyncClient(_Base):
    """An asyncio client on one pooled aiohttp session (for every endpoint)."""

    def __init__(self, url: str | Sequence[str] | None = None, timeout_s: float = 10.0,
                 token: str | None = None, ca_file: str | None = None,
                 cert_file: str | None = None, key_file: str | None = None, *,
                 endpoints: Sequence[str] | None = None, retry: Retry | None = DEFAULT_RETRY,
                 raise_errors: bool = True) -> None:
        super().__init__(url, timeout_s, token, ca_file, cert_file, key_file, endpoints,
                         retry, raise_errors)
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeout_s), headers=self._auth,
            connector=aiohttp.TCPConnector(ssl=self._tls if self._tls is not None else True))
        # aiohttp resends a PUT or DELETE once when a reused connection fails, as HTTP deems
        # them idempotent; a compare-and-set or a versioned write is not, so never resend:
        # _Plan decides what is sent again. (A private switch: where an aiohttp lacks it, a
        # write error means outcome unknown.)
        if hasattr(self._session, "_retry_connection"):
            self._session._retry_connection = False

    async def _send(self, url: str, method: str, path: str, body: bytes | None,
                    headers: dict[str, str]) -> Result:
        try:
            async with self._session.request(method, url + path, data=body,
                                             headers=headers) as resp:
                data = await resp.read()
                return Result(resp.status, data, _version(resp.headers.get("ETag")),
                              dict(resp.headers), url)
        except aiohttp.ClientConnectorError as exc:  # no connection: nothing was sent
            raise ClientError(f"{url}: {type(exc).__name__}: {exc}", url) from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            stale = isinstance(exc, aiohttp.ServerDisconnectedError)
            raise ClientError(f"{url}: {type(exc).__name__}: {exc}", url, maybe_sent=True,
                              stale=stale) from exc

    async def _run(self, method: str, path: str, body: bytes | None,
                   headers: dict[str, str] | None, checked: bool, resendable: bool = False
                   ) -> Result:
        hdrs = dict(headers or {})
        plan = self._plan(method, hdrs, resendable)
        while True:
            try:
                result = await self._send(plan.url, method, path, body, hdrs)
            except ClientError as exc:
                delay = plan.after_failure(exc)
            else:
                answer = plan.after_answer(result)
                if answer is None:
                    return self._done(plan, result, checked)
                delay = answer
            if delay > 0:
                await asyncio.sleep(delay)

    async def request(self, method: str, path: str, body: bytes | None = None,
                      headers: dict[str, str] | None = None) -> Result:
        """One call, with the client's retries; any HTTP answer is returned as it is."""
        return await self._run(method, path, body, headers, checked=False)

    async def put(self, key: str, value: bytes, if_match: int | None = None,
                  if_none_match: bool = False, idempotency_key: str | None = None,
                  ttl: float | str | None = None) -> Result:
        """As ``Client.put``."""
        headers = self._write_headers(_conditions(if_match, if_none_match), idempotency_key)
        return await self._run("PUT", _path(key) + _ttl_query(ttl), value, headers,
                               checked=True)

    async def renew(self, key: str, ttl: float | str, if_match: int | None = None,
                    idempotency_key: str | None = None) -> Result:
        """As ``Client.renew``."""
        headers = self._write_headers(_conditions(if_match, False), idempotency_key)
        return await self._run("POST", _path(key) + "/renew" + _ttl_query(ttl), b"",
                               headers, checked=True)

    async def get(self, key: str, stale: bool = False) -> Result:
        return await self._run("GET", _path(key) + ("?consistency=stale" if stale else ""),
                               None, None, checked=True)

    async def delete(self, key: str, if_match: int | None = None,
                     idempotency_key: str | None = None) -> Result:
        headers = self._write_headers(_conditions(if_match, False), idempotency_key)
        return await self._run("DELETE", _path(key), None, headers, checked=True)

    async def list(self, prefix: str = "", limit: int = 1000,
                   cursor: str | None = None) -> Result:
        """As ``Client.list``."""
        return await self._run("GET", self._list_path(prefix, limit, cursor), None, None,
                               checked=True)

    async def range(self, prefix: str = "", limit: int = 100, cursor: str | None = None,
                    stale: bool = False) -> RangePage:
        """As ``Client.range``."""
        return RangePage.parse(await self._run(
            "GET", self._range_path(prefix, limit, cursor, stale), None, None, checked=True))

    async def delete_prefix(self, prefix: str, all_keys: bool = False,
                            cursor: str | None = None) -> int:
        """As ``Client.delete_prefix``."""
        total = 0
        for _ in range(DELETE_PREFIX_CALLS_MAX):
            path = self._delete_prefix_path(prefix, all_keys, cursor)
            deleted, complete, cursor = _deleted(await self._run(
                "DELETE", path, None, None, checked=True, resendable=True))
            total += deleted
            if complete or cursor is None:
                break
        return total

    async def status(self) -> Result:
        return await self._run("GET", "/v1/status", None, None, checked=True)

    def watch(self, key: str | None = None, *, prefix: str | None = None,
              since: Mapping[str, int] | None = None) -> AsyncIterator[WatchEvent]:
        """As ``Client.watch``, an async iterator."""
        return watch_async(self, prefix, key, since)

    async def close(self) -> None:
        await self._session.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()


class HttpClient(Client):
    """``Client`` with one try per call and every HTTP answer returned as a ``Result``
    (no typed errors): for code that tests the HTTP contract itself."""

    def __init__(self, url: str | Sequence[str] | None = None, timeout_s: float = 10.0,
                 token: str | None = None, ca_file: str | None = None,
                 cert_file: str | None = None, key_file: str | None = None, *,
                 endpoints: Sequence[str] | None = None, retry: Retry | None = None,
                 raise_errors: bool = False) -> None:
        super().__init__(url, timeout_s, token, ca_file, cert_file, key_file,
                         endpoints=endpoints, retry=retry, raise_errors=raise_errors)


class AsyncHttpClient(AsyncClient):
    """``AsyncClient`` with one try per call and every HTTP answer returned as a
    ``Result``: for code that classifies raw answers (the chaos workload, tests)."""

    def __init__(self, url: str | Sequence[str] | None = None, timeout_s: float = 10.0,
                 token: str | None = None, ca_file: str | None = None,
                 cert_file: str | None = None, key_file: str | None = None, *,
                 endpoints: Sequence[str] | None = None, retry: Retry | None = None,
                 raise_errors: bool = False) -> None:
        super().__init__(url, timeout_s, token, ca_file, cert_file, key_file,
                         endpoints=endpoints, retry=retry, raise_errors=raise_errors)
