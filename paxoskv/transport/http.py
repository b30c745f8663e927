"""Peer transport over aiohttp: pooled keep-alive sessions, batching, shared-secret auth.

Messages to one peer are coalesced: while up to ``inflight_max`` requests to that peer are
on the wire, new messages queue, and the next request carries all of them (up to
``batch_messages_max``). Under load many keys' prepares and accepts share one HTTP request;
when idle a message leaves at once, so batching costs no latency.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import Any

import aiohttp
import orjson

from paxoskv.core.ballot import Ballot
from paxoskv.core.messages import PeerProtocolError, Reply, Request, from_wire, to_wire
from paxoskv.limits import Limits
from paxoskv.metrics import Metrics
from paxoskv.transport.base import KeyEntry, PeerUnreachable

__all__ = ["HttpTransport", "check_peer_auth", "decode_batch", "encode_replies"]

log = logging.getLogger(__name__)

AUTH_HEADER = "Authorization"
FROM_HEADER = "X-Paxoskv-From"


def check_peer_auth(header: str | None, secret: str) -> bool:
    """Constant-time check of ``Authorization: Bearer <secret>``.

    Compared as bytes: a header with bytes that are not UTF-8 reaches us with surrogates
    (aiohttp decodes with ``surrogateescape``), which a plain ``encode()`` refuses; with
    ``surrogatepass`` any str encodes, and such a header simply does not match."""
    if not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[7:].encode("utf-8", "surrogatepass"),
                               secret.encode("utf-8", "surrogatepass"))


def decode_batch(body: bytes) -> list[Request]:
    """Parse an /internal/batch frame; PeerProtocolError on anything malformed."""
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise PeerProtocolError(f"frame is not JSON: {exc}") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("m"), list):
        raise PeerProtocolError("frame must be an object with a list 'm'")
    out: list[Request] = []
    for item in raw["m"]:
        msg = from_wire(item)
        if not isinstance(msg, Request):
            raise PeerProtocolError(f"{type(msg).__name__} is not a request")
        out.append(msg)
    return out


def encode_replies(replies: list[Reply]) -> bytes:
    return orjson.dumps({"r": [to_wire(r) for r in replies]})


class _Peer:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.session: aiohttp.ClientSession | None = None
        self.queue: list[tuple[Request, asyncio.Future[Reply]]] = []
        self.inflight = 0


class HttpTransport:
    """Implements ``paxoskv.transport.base.Transport``."""

    def __init__(self, node_id: int, peer_urls: dict[int, str], secret: str,
                 timeout_s: float = 2.0, limits: Limits | None = None,
                 metrics: Metrics | None = None, inflight_max: int = 4) -> None:
        self.node_id = node_id
        self._peers = {pid: _Peer(url) for pid, url in peer_urls.items() if pid != node_id}
        self._secret = secret
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=min(1.0, timeout_s))
        self._limits = limits or Limits()
        self._metrics = metrics or Metrics()
        self._inflight_max = inflight_max
        self._tasks: set[asyncio.Task[None]] = set()

    def _headers(self) -> dict[str, str]:
        return {AUTH_HEADER: f"Bearer {self._secret}", FROM_HEADER: str(self.node_id),
                "Content-Type": "application/json"}

    def _session(self, p: _Peer) -> aiohttp.ClientSession:
        """The peer's own pooled keep-alive session (one per peer, DESIGN section 1)."""
        if p.session is None:
            # No DNS cache: a restarted StatefulSet pod comes back under its name with a new
            # IP, and aiohttp's default 10 s cache kept peers dialling the old one.
            connector = aiohttp.TCPConnector(limit=self._inflight_max + 4,
                                             keepalive_timeout=30, use_dns_cache=False)
            p.session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        return p.session

    def _reset(self, p: _Peer) -> None:
        """Drop every pooled connection to a peer that just failed: after a restart with a
        new address, each stale keep-alive connection would otherwise hang until its own
        timeout (seen as a 16 s loss of quorum in the e2e rolling upgrade)."""
        if p.session is not None:
            # Closing aborts requests still on it: they go to the same failing peer.
            self._track(asyncio.ensure_future(p.session.close()))
            p.session = None

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _peer(self, peer: int) -> _Peer:
        try:
            return self._peers[peer]
        except KeyError:
            raise PeerUnreachable(f"unknown peer {peer}") from None

    async def send(self, peer: int, msg: Request) -> Reply:
        p = self._peer(peer)
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        p.queue.append((msg, fut))
        self._pump(p)
        return await fut

    def _pump(self, p: _Peer) -> None:
        while p.queue and p.inflight < self._inflight_max:
            batch = p.queue[: self._limits.batch_messages_max]
            del p.queue[: len(batch)]
            p.inflight += 1
            self._track(asyncio.ensure_future(self._post_batch(p, batch)))

    async def _post_batch(self, p: _Peer, batch: list[tuple[Request, asyncio.Future[Reply]]]
                          ) -> None:
        self._metrics.transport_batch(len(batch))
        try:
            body = orjson.dumps({"m": [to_wire(m) for m, _ in batch]})
            async with self._session(p).post(f"{p.url}/internal/batch", data=body,
                                             headers=self._headers()) as resp:
                payload = await resp.read()
                if resp.status != 200:
                    raise PeerUnreachable(f"HTTP {resp.status}: {payload[:200]!r}")
            raw = orjson.loads(payload)
            replies = raw.get("r") if isinstance(raw, dict) else None
            if not isinstance(replies, list) or len(replies) != len(batch):
                raise PeerUnreachable("reply frame does not match the batch")
            for (_, fut), item in zip(batch, replies, strict=True):
                if not fut.done():
                    reply = from_wire(item)
                    if not isinstance(reply, Reply):
                        raise PeerProtocolError(f"{type(reply).__name__} is not a reply")
                    fut.set_result(reply)
        except (aiohttp.ClientError, TimeoutError, OSError, orjson.JSONDecodeError,
                PeerProtocolError, PeerUnreachable) as exc:
            if isinstance(exc, aiohttp.ClientError | TimeoutError | OSError):
                self._reset(p)
            err = exc if isinstance(exc, PeerUnreachable) else PeerUnreachable(
                f"{type(exc).__name__}: {exc}")
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(err)
        finally:
            p.inflight -= 1
            self._pump(p)

    async def _json_call(self, peer: int, method: str, path: str, body: bytes | None = None,
                         params: dict[str, str] | None = None) -> dict[str, Any]:
        """One small JSON request to a peer's /internal/ endpoint; PeerUnreachable on any
        failure, so callers see one error type."""
        p = self._peer(peer)
        try:
            async with self._session(p).request(method, f"{p.url}{path}", data=body,
                                                params=params,
                                                headers=self._headers()) as resp:
                payload = await resp.read()
                if resp.status != 200:
                    raise PeerUnreachable(f"HTTP {resp.status}: {payload[:200]!r}")
            result = orjson.loads(payload)
        except (aiohttp.ClientError, TimeoutError, OSError, orjson.JSONDecodeError) as exc:
            if not isinstance(exc, orjson.JSONDecodeError):
                self._reset(p)
            raise PeerUnreachable(f"{type(exc).__name__}: {exc}") from exc
        if not isinstance(result, dict):
            raise PeerUnreachable(f"{path} reply is not an object")
        return result

    async def hello(self, peer: int, info: dict[str, Any]) -> dict[str, Any]:
        return await self._json_call(peer, "POST", "/internal/hello", orjson.dumps(info))

    async def list_keys(self, peer: int, prefix: str, limit: int) -> list[KeyEntry]:
        result = await self._json_call(peer, "GET", "/internal/keys",
                                       params={"prefix": prefix, "limit": str(limit)})
        entries = result.get("keys")
        if not isinstance(entries, list):
            raise PeerUnreachable("keys reply is malformed")
        out: list[KeyEntry] = []
        try:
            for key, ballot, live in entries:
                if not isinstance(key, str) or not isinstance(live, bool):
                    raise ValueError("bad entry")
                out.append((key, Ballot.from_wire(ballot), live))
        except (ValueError, TypeError) as exc:
            raise PeerUnreachable(f"keys reply is malformed: {exc}") from exc
        return out

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for p in self._peers.values():
            if p.session is not None:
                await p.session.close()
                p.session = None
