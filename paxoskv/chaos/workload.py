"""Concurrent clients doing set / cas / create / delete / read against random nodes, recorded
into a `paxoskv.check.History`.

Clients talk to the nodes directly (never through the peer proxies). Each client has its own
seeded choices (which op, which key, which node); what the servers answer is wall-clock.

Answers map to history statuses as the checker's register model wants them:

=====================  ==========================================================
PUT 200                ok, ``out_version`` = ETag version
PUT 412                rejected, ``out_version`` = ``current_version`` of the body
DELETE 204             ok, ``out_version`` = ETag version
DELETE 404             rejected (absent)
DELETE 412             rejected, ``out_version`` = ``current_version``
GET 200                ok, ``out_value`` = body, ``out_version`` = ETag version
GET 404                ok, absent
503                    failed (no quorum: definitely not applied)
504, timeout, other    unknown for a write (may have applied), failed for a read
connect refused        failed: the request never left the client (no TCP connection)
=====================  ==========================================================

aiohttp resends a PUT or DELETE once when the connection fails after the request went out
(RFC 9112 9.3.1 treats them as idempotent; a CAS or a versioned set is not). A resent write
can apply twice, or apply and then be answered 412 on the resend. The workload therefore
turns that off on its sessions (`_disable_resend`); if the aiohttp in use has no such switch,
a failed connect is classified ``unknown`` like any other client error, never ``failed``.

Any status outside the HTTP contract (400, 500, a 200 without an ETag, ...) is counted in
``unexpected`` and makes the run fail; the op is still recorded conservatively (unknown for a
write, failed for a read).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Final

import aiohttp
import orjson

from paxoskv.check import History, OpKind
from paxoskv.client import AsyncHttpClient as AsyncClient
from paxoskv.client import ClientError, Result

__all__ = ["Outcome", "Workload", "WorkloadOptions", "classify"]

CLIENT_TIMEOUT_S: Final = 6.0
"""Above the servers' request timeout (4 s in paxoskv.chaos.processes), so a 504 normally arrives
before the client gives up; a SIGSTOPped node is the usual reason for a client timeout."""

UNREACHABLE_BACKOFF_S: Final = 0.5
"""After a node did not answer, this client avoids it for this long (like a real client)."""

FINAL_READ_CLIENT_BASE: Final = 100_000
"""Client ids of the final read-back start here (plus the node id)."""


@dataclass(frozen=True, slots=True)
class WorkloadOptions:
    clients: int = 10
    keys: int = 50
    hot_keys: int = 10
    """Half the ops go to these keys, so clients contend on the same registers."""
    once_fraction: float = 0.04
    """Share of ops that create a fresh write-once key (never written again): each one that
    is acknowledged must be read back at the end, crashes or not."""
    think_s_max: float = 0.02
    """Each client sleeps up to this long between ops (leaves CPU to the servers)."""
    weights: dict[str, float] = field(default_factory=lambda: {
        "read": 0.30, "set": 0.20, "cas": 0.25, "create": 0.10, "delete": 0.15})
    key_prefix: str = ""
    """Put before every key: two workloads against one cluster (the e2e steps) must not
    share keys, since the checker starts each key from absent."""


@dataclass(frozen=True, slots=True)
class Outcome:
    status: str  # ok | rejected | failed | unknown
    out_version: int | None = None
    out_value: bytes | None = None
    unexpected: str | None = None


def _current_version(result: Result) -> int | None:
    try:
        body = orjson.loads(result.body)
    except orjson.JSONDecodeError:
        return None
    value = body.get("current_version") if isinstance(body, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _disable_resend(client: AsyncClient) -> bool:
    """Stop aiohttp from resending PUT/DELETE on a broken connection; True if it worked."""
    session = getattr(client, "_session", None)
    if session is None or not hasattr(session, "_retry_connection"):
        return False
    session._retry_connection = False
    return True


def classify(kind: OpKind, result: Result | None, error: BaseException | None,
             single_attempt: bool = True) -> Outcome:
    """The history outcome of one call: ``result`` if the server answered, else ``error``.
    ``single_attempt``: the client never resends, so a failed connect sent nothing."""
    is_read = kind == "read"
    if result is None:
        cause = error.__cause__ if error is not None else None
        if single_attempt and isinstance(cause, aiohttp.ClientConnectorError):
            return Outcome("failed")  # no connection, so nothing was sent
        return Outcome("failed" if is_read else "unknown")
    status = result.status
    if status == 503:
        return Outcome("failed")
    if status == 504:
        return Outcome("failed" if is_read else "unknown")
    if is_read:
        if status == 200 and result.version is not None:
            return Outcome("ok", out_version=result.version, out_value=result.body)
        if status == 404:
            return Outcome("ok")
    elif kind == "delete":
        if status == 204 and result.version is not None:
            return Outcome("ok", out_version=result.version)
        if status == 404:
            return Outcome("rejected")
        if status == 412:
            return Outcome("rejected", out_version=_current_version(result))
    else:
        if status == 200 and result.version is not None:
            return Outcome("ok", out_version=result.version)
        if status == 412:
            return Outcome("rejected", out_version=_current_version(result))
    note = f"{kind} -> HTTP {status} {result.body[:120]!r}"
    return Outcome("failed" if is_read else "unknown", unexpected=note)


def _reason(result: Result | None, error: BaseException | None) -> str:
    if result is None:
        cause = error.__cause__ if error is not None else None
        return f"client {type(cause or error).__name__}"
    try:
        body = orjson.loads(result.body)
        message = str(body.get("message", "")).split(";")[0] if isinstance(body, dict) else ""
    except orjson.JSONDecodeError:
        message = ""
    return f"{result.status} {message}".strip()


class Workload:
    def __init__(self, urls: dict[int, str], history: History, seed: int,
                 options: WorkloadOptions = WorkloadOptions()) -> None:
        self.urls = urls
        self.history = history
        self.seed = seed
        self.options = options
        self.keys = [f"{options.key_prefix}k{i:03d}" for i in range(options.keys)]
        self.once_keys: list[str] = []
        self.counts: Counter[tuple[str, str]] = Counter()
        self.unexpected: list[str] = []
        self.reasons: Counter[str] = Counter()
        """Why calls did not succeed: HTTP status and error message, or the client error."""
        self._clients: dict[int, AsyncClient] = {}
        self._single_attempt: dict[int, bool] = {}
        self._avoid: dict[tuple[int, int], float] = {}

    def client_for(self, node: int) -> AsyncClient:
        if node not in self._clients:
            client = AsyncClient(self.urls[node], timeout_s=CLIENT_TIMEOUT_S)
            self._single_attempt[node] = _disable_resend(client)
            self._clients[node] = client
        return self._clients[node]

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()

    async def call(self, client_id: int, node: int, kind: OpKind, key: str,
                   value: bytes | None = None, expected: int | None = None,
                   count: bool = True) -> Outcome:
        """One recorded call (``count``: include it in `counts`)."""
        op_id = self.history.invoke(client_id, key, kind, value, expected)
        api = self.client_for(node)
        result: Result | None = None
        error: BaseException | None = None
        try:
            if kind == "read":
                result = await api.get(key)
            elif kind == "delete":
                result = await api.delete(key, if_match=expected)
            else:
                assert value is not None
                result = await api.put(key, value, if_match=expected if kind == "cas" else None,
                                       if_none_match=kind == "create")
        except ClientError as exc:
            error = exc
        outcome = classify(kind, result, error, self._single_attempt[node])
        self.history.complete(op_id, outcome.status, out_version=outcome.out_version,  # type: ignore[arg-type]
                              out_value=outcome.out_value)
        if count:
            self.counts[(kind, outcome.status)] += 1
            if outcome.status in ("failed", "unknown"):
                self.reasons[_reason(result, error)] += 1
        if outcome.unexpected is not None:
            self.unexpected.append(f"node {node}: {outcome.unexpected}")
        return outcome

    def _pick_node(self, rng: random.Random, client_id: int) -> int:
        now = time.monotonic()
        nodes = sorted(self.urls)
        usable = [n for n in nodes if self._avoid.get((client_id, n), 0.0) <= now]
        return rng.choice(usable or nodes)

    async def run_client(self, client_id: int, deadline: float) -> None:
        opts = self.options
        rng = random.Random(f"paxoskv-chaos-client:{self.seed}:{client_id}")
        known: dict[str, int] = {}
        kinds = list(opts.weights)
        weights = [opts.weights[k] for k in kinds]
        seq = 0
        while time.monotonic() < deadline:
            seq += 1
            value = f"c{client_id}-{seq}".encode()
            node = self._pick_node(rng, client_id)
            kind: OpKind
            if rng.random() < opts.once_fraction:
                key = f"{opts.key_prefix}once-c{client_id}-{seq}"
                self.once_keys.append(key)
                kind = "create"
            else:
                if rng.random() < 0.5:
                    key = self.keys[rng.randrange(min(opts.hot_keys, len(self.keys)))]
                else:
                    key = rng.choice(self.keys)
                kind = rng.choices(kinds, weights=weights)[0]  # type: ignore[assignment]
            expected: int | None = None
            if kind == "cas" or (kind == "delete" and rng.random() < 0.33):
                expected = known.get(key, rng.randint(1, 3))
            started = time.monotonic()
            outcome = await self.call(client_id, node, kind, key,
                                      None if kind in ("read", "delete") else value, expected)
            if outcome.out_version is not None:
                known[key] = outcome.out_version
            if outcome.status in ("failed", "unknown"):
                if time.monotonic() - started > 1.0 or outcome.status == "failed":
                    self._avoid[(client_id, node)] = time.monotonic() + UNREACHABLE_BACKOFF_S
                await asyncio.sleep(rng.uniform(0.05, 0.2))
            elif opts.think_s_max > 0:
                await asyncio.sleep(rng.uniform(0, opts.think_s_max))

    async def run(self, duration_s: float) -> None:
        """Run every client until ``duration_s`` has passed; calls in flight then finish (each
        is bounded by the client timeout)."""
        deadline = time.monotonic() + duration_s
        tasks = [asyncio.ensure_future(self.run_client(c, deadline))
                 for c in range(1, self.options.clients + 1)]
        try:
            done, pending = await asyncio.wait(tasks, timeout=duration_s + CLIENT_TIMEOUT_S + 5)
            for task in done:
                task.result()
            if pending:
                raise RuntimeError(f"{len(pending)} clients did not stop in time")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def all_keys(self) -> list[str]:
        return sorted({op.key for op in self.history.ops()} | set(self.keys))
