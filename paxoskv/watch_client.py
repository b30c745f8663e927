"""``watch()`` for both clients: read ``GET /v1/watch`` (server-sent events), and on any
failure reconnect (the next endpoint when the one in use does not answer) and resume.

Resuming is the client's job: it keeps the last version it handed out of every key and
sends them as ``since``; the server first sends the keys newer than that (deletions
included), then live events. A version at or below the one kept is dropped, so a key's
versions reach the caller increasing, each at most once, across any number of
reconnects. Versions in between may be skipped (a register keeps no history).
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import logging
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import aiohttp
import orjson

if TYPE_CHECKING:
    from paxoskv.client import AsyncClient, Client

__all__ = ["RECONNECTS_MAX", "WatchEvent", "WatchState", "watch_async", "watch_command",
           "watch_sync"]

log = logging.getLogger(__name__)

READ_TIMEOUT_S: Final = 15.0
"""No byte for this long (the server sends a keep-alive every 5 s): the stream is dead."""
RECONNECTS_MAX: Final = 100
"""Failed connections in a row before ``watch`` gives up (a synced stream resets it)."""
BACKOFF_S: Final = (0.05, 0.2, 0.5, 1.0, 2.0)


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """``key`` had ``value`` chosen at ``version`` (``value`` None when ``deleted``)."""

    key: str
    version: int
    value: bytes | None
    deleted: bool

    def to_json(self) -> dict[str, Any]:
        value = None if self.value is None else base64.b64encode(self.value).decode("ascii")
        return {"key": self.key, "version": self.version, "value": value,
                "deleted": self.deleted}


class WatchState:
    """What one watch has handed out: the resume point, and the filter of repeats."""

    def __init__(self, prefix: str | None, key: str | None,
                 since: Mapping[str, int] | None) -> None:
        if (prefix is None) == (key is None):
            raise ValueError("watch a key or a prefix")
        self.prefix, self.key = prefix, key
        self.seen: dict[str, int] = dict(since or {})
        self.failures = 0

    def path(self) -> str:
        query = {"key": self.key} if self.key is not None else {"prefix": self.prefix or ""}
        if self.seen:
            token = base64.urlsafe_b64encode(orjson.dumps(self.seen)).rstrip(b"=")
            query["since"] = token.decode("ascii")
        return "/v1/watch?" + urllib.parse.urlencode(query)

    def take(self, kind: str, data: str) -> WatchEvent | None:
        """The event to hand out for one SSE message, if any; raises on an error event."""
        if kind == "synced":
            self.failures = 0
            return None
        if kind == "error":
            raise _StreamEnded(data)
        if kind not in ("put", "delete"):
            return None
        body = orjson.loads(data)
        key, version = body["key"], int(body["version"])
        if version <= self.seen.get(key, 0):
            return None
        self.seen[key] = version
        raw = body.get("value")
        return WatchEvent(key, version, None if raw is None else base64.b64decode(raw),
                          bool(body.get("deleted")))

    def backoff(self) -> float:
        self.failures += 1
        if self.failures > RECONNECTS_MAX:
            raise ConnectionError(f"watch: {RECONNECTS_MAX} reconnects failed in a row")
        return BACKOFF_S[min(self.failures, len(BACKOFF_S)) - 1]


class _StreamEnded(Exception):
    """The server ended the stream with an error event (e.g. slow consumer): reconnect."""


def _messages(lines: Iterable[str]) -> Iterator[tuple[str, str]]:
    kind, data = "message", ""
    for line in lines:
        if line == "":
            if data:
                yield kind, data
            kind, data = "message", ""
        elif line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            data = line[6:]


def _check(status: int, body: bytes, url: str, headers: Mapping[str, str]) -> None:
    """Raise the typed error of a refused watch: 4xx are final, 5xx move on."""
    from paxoskv.client import Result, error_for
    if status != 200:
        raise error_for(Result(status, body, None, dict(headers), url))


def watch_sync(client: Client, prefix: str | None = None, key: str | None = None,
               since: Mapping[str, int] | None = None) -> Iterator[WatchEvent]:
    from paxoskv.client import PaxosKVError
    state = WatchState(prefix, key, since)
    while True:
        url = client.url
        conn: http.client.HTTPConnection | None = None
        try:
            parsed = urllib.parse.urlparse(url)
            if parsed.scheme == "https":
                conn = http.client.HTTPSConnection(parsed.hostname or "", parsed.port or 443,
                                                   timeout=READ_TIMEOUT_S,
                                                   context=client._tls)
            else:
                conn = http.client.HTTPConnection(parsed.hostname or "", parsed.port or 80,
                                                  timeout=READ_TIMEOUT_S)
            conn.request("GET", state.path(), headers={**client._auth,
                                                       "Accept": "text/event-stream"})
            resp = conn.getresponse()
            if resp.status != 200:
                _check(resp.status, resp.read(), url, dict(resp.getheaders()))
            lines = (raw.decode("utf-8").rstrip("\r\n") for raw in resp)
            for kind, data in _messages(lines):
                event = state.take(kind, data)
                if event is not None:
                    yield event
        except PaxosKVError as exc:
            if exc.status is not None and exc.status < 500:
                raise
            log.info("watch via %s: %s", url, exc)
        except (OSError, http.client.HTTPException, _StreamEnded, ValueError) as exc:
            log.info("watch via %s: %s", url, exc)
        finally:
            if conn is not None:
                conn.close()
        client._current = (client._current + 1) % len(client.endpoints) \
            if state.failures else client._current
        time.sleep(state.backoff())


async def watch_async(client: AsyncClient, prefix: str | None = None, key: str | None = None,
                      since: Mapping[str, int] | None = None) -> AsyncIterator[WatchEvent]:
    from paxoskv.client import PaxosKVError
    state = WatchState(prefix, key, since)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=READ_TIMEOUT_S)
    while True:
        url = client.url
        try:
            async with client._session.get(url + state.path(), timeout=timeout,
                                           headers={"Accept": "text/event-stream"}) as resp:
                if resp.status != 200:
                    _check(resp.status, await resp.read(), url, dict(resp.headers))
                kind, data = "message", ""
                async for raw in resp.content:
                    line = raw.decode("utf-8").rstrip("\r\n")
                    if line.startswith("event: "):
                        kind = line[7:]
                    elif line.startswith("data: "):
                        data = line[6:]
                    elif line == "":
                        event = state.take(kind, data) if data else None
                        kind, data = "message", ""
                        if event is not None:
                            yield event
        except PaxosKVError as exc:
            if exc.status is not None and exc.status < 500:
                raise
            log.info("watch via %s: %s", url, exc)
        except (aiohttp.ClientError, OSError, TimeoutError, _StreamEnded, ValueError) as exc:
            log.info("watch via %s: %s", url, exc)
        client._current = (client._current + 1) % len(client.endpoints) \
            if state.failures else client._current
        await asyncio.sleep(state.backoff())


def watch_command(client: Client, key: str | None, prefix: str | None, count: int | None
                  ) -> int:
    """``paxoskv watch``: one JSON line per event, flushed (for pipes); exit 0 after
    ``count`` events, 1 when the server refuses the watch, 3 when no node answers."""
    import sys

    from paxoskv.client import PaxosKVError
    if (key is None) == (prefix is None):
        raise ValueError("give a KEY or --prefix, not both")
    if count is not None and count < 1:
        raise ValueError("--count must be >= 1")
    seen = 0
    try:
        for event in watch_sync(client, prefix, key):
            sys.stdout.write(orjson.dumps(event.to_json()).decode() + "\n")
            sys.stdout.flush()
            seen += 1
            if count is not None and seen >= count:
                return 0
    except PaxosKVError as exc:
        print(f"paxoskv: {exc}", file=sys.stderr)
        return 1
    except ConnectionError as exc:
        print(f"paxoskv: {exc}", file=sys.stderr)
        return 3
    return 0
