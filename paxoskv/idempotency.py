"""Idempotency-Key: a retried write gets its first outcome, however many writes came between.

The register's ``recent`` list remembers only the last 16 request ids of a key, which is
enough for a node's own retries within one request but not for a client that retries after
other clients wrote. So each Idempotency-Key K has a record register of its own
(``core/idempotency.py``) that remembers, for a window, which request K named (a
fingerprint) and what came of it. A write carrying K:

1. ``Claim`` on K's record. Nobody had K (or its window passed): we own it, go to 2. K names
   another request: ``KeyReused`` (422). K's request already finished: answer its outcome
   without touching the data key (3). K's request is pending: 4.
2. Run the real write on the data key under a request id unique to this claim. A definite
   outcome is recorded with ``Finish`` and answered; an applied one is answered at once,
   while its ``Finish`` runs in the background (a retry that comes first finds the write
   on the data register, as in 4). A definite non-outcome (no quorum,
   overloaded) ``Release``s the claim so a retry runs afresh. An unknown outcome leaves the
   claim pending and answers 504.
4. Pending: if the data register still remembers the claim's request id, the write happened:
   record and answer it. Otherwise, while the claim may still be running (two request
   timeouts and a margin after it was made), ``InProgress`` (409 with Retry-After); after
   that, ``UnknownOutcome`` (504): it may or may not have happened, and it will never be
   applied a second time (until the window ends).

Nothing here is protocol: every step is one ``Node.execute`` (or ``Node.read``) round.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass

from paxoskv.core.idempotency import (
    Claim,
    Finish,
    Record,
    RecordOutcome,
    Release,
    decode_record,
    record_key,
)
from paxoskv.core.register import Change, Outcome
from paxoskv.node import Node, NoQuorum, Overloaded, UnknownOutcome

__all__ = [
    "DEFAULT_WINDOW_S",
    "IdempotentResult",
    "InProgress",
    "KeyReused",
    "run_idempotent",
    "summarize",
]

log = logging.getLogger(__name__)

DEFAULT_WINDOW_S = 24 * 3600.0
"""How long an Idempotency-Key's outcome is kept, from its first request (as payment APIs)."""

IN_PROGRESS_MARGIN_S = 1.0
"""Added to two request timeouts (the claim's write starts within one timeout of the claim
and ends within another) before a pending claim is given up as unknown."""


class KeyReused(Exception):
    """The Idempotency-Key already names a different request (method, key, body or
    conditions)."""


class InProgress(Exception):
    """The Idempotency-Key's request is still running (or was, moments ago)."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, slots=True)
class IdempotentResult:
    outcome: RecordOutcome
    replayed: bool
    """True when the outcome is an earlier request's, not this one's doing."""


def summarize(outcome: Outcome) -> RecordOutcome:
    """A data write's outcome as the client sees it."""
    match outcome.kind:
        case "applied":
            return RecordOutcome("applied", outcome.value.version)
        case "rejected":
            value = outcome.value
            return RecordOutcome("rejected", value.version if value.exists else None)
        case "absent":
            return RecordOutcome("absent", None)
    raise AssertionError(f"not a write outcome: {outcome!r}")


FINISH_ATTEMPTS = 3
"""Tries to record an outcome: a retry of a request whose record stayed pending can only
learn an applied write from the data register's last 16 changes, and nothing else."""


FINISH_PAUSE_S = 0.1
"""Pause before a second try (twice that before a third)."""


def _now_ms() -> int:
    return int(time.time() * 1000)


async def _finish(node: Node, rkey: str, token: str, outcome: RecordOutcome) -> None:
    """Record ``outcome``; if that fails, a retry still learns an applied write from the
    data register (step 4), so the answer does not wait for it."""
    for attempt in range(FINISH_ATTEMPTS):
        if attempt:
            await asyncio.sleep(FINISH_PAUSE_S * attempt)  # an overloaded node, a moment later
        try:
            await node.execute(rkey, Finish(token, outcome))
            return
        except (NoQuorum, UnknownOutcome, Overloaded) as exc:
            log.warning("idempotency record %r not finished (attempt %d of %d): %s", rkey,
                        attempt + 1, FINISH_ATTEMPTS, exc)


async def run_idempotent(node: Node, idempotency_key: str, fp: str, key: str,
                         change: Change, window_s: float) -> IdempotentResult:
    """Run ``change`` on ``key`` at most once per ``idempotency_key`` within ``window_s``.

    Raises KeyReused, InProgress, UnknownOutcome, NoQuorum (definitely not applied) or
    Overloaded.
    """
    rkey = record_key(idempotency_key)
    token = secrets.token_hex(8)
    now = _now_ms()
    try:
        claim = await node.execute(rkey, Claim(fp, token, now, max(1, int(window_s * 1000))))
    except UnknownOutcome:
        # Our claim may stand with no write behind it: withdraw it (best effort), so that
        # retries are not told "unknown" for a write that never ran. This request's write
        # certainly did not run, whatever became of the claim.
        with contextlib.suppress(NoQuorum, UnknownOutcome, Overloaded, TimeoutError):
            async with asyncio.timeout(node.config.phase_timeout_s * 2):
                await node.execute(rkey, Release(token))
        raise NoQuorum("the Idempotency-Key could not be claimed in time; nothing was "
                       "written") from None
    record = decode_record(claim.value.data)
    if record is None:
        raise AssertionError(f"claim on {rkey!r} left no record: {claim!r}")
    if record.fp != fp:
        raise KeyReused(f"Idempotency-Key {idempotency_key!r} was already used for a "
                        "different request (method, key, body or conditions); use a new key")
    if claim.kind == "applied" and record.token == token:
        return IdempotentResult(await _write(node, idempotency_key, record, key, change),
                                replayed=False)
    if record.state == "done":
        assert record.outcome is not None
        return IdempotentResult(record.outcome, replayed=True)
    return IdempotentResult(await _pending(node, idempotency_key, record, key, now),
                            replayed=True)


async def _write(node: Node, idempotency_key: str, record: Record, key: str,
                 change: Change) -> RecordOutcome:
    rkey = record_key(idempotency_key)
    try:
        outcome = summarize(await node.execute(key, change,
                                               record.request_id(idempotency_key)))
    except (NoQuorum, Overloaded):
        # definitely not applied, and no attempt of it is left running: free the key
        with contextlib.suppress(NoQuorum, UnknownOutcome, Overloaded):
            await node.execute(rkey, Release(record.token))
        raise
    # UnknownOutcome propagates: the claim stays pending (step 4 sorts it out)
    await _record(node, rkey, record.token, outcome)
    return outcome


async def _record(node: Node, rkey: str, token: str, outcome: RecordOutcome) -> None:
    """Record ``outcome`` before answering only when a retry could learn it nowhere else: an
    applied write is on the data register (step 4) until the record says it, so its
    ``Finish`` runs in the background and the answer does not wait a round for it."""
    if outcome.kind == "applied":
        node.spawn_after_answer(f"recording the outcome of {rkey!r}",
                                _finish(node, rkey, token, outcome))
    else:
        await _finish(node, rkey, token, outcome)


async def _pending(node: Node, idempotency_key: str, record: Record, key: str,
                   now_ms: int) -> RecordOutcome:
    current = await node.read(key)
    version = current.value.applied_version(record.request_id(idempotency_key))
    if version is not None:
        outcome = RecordOutcome("applied", version)
        await _record(node, record_key(idempotency_key), record.token, outcome)
        return outcome
    running_s = 2 * node.config.request_timeout_s + IN_PROGRESS_MARGIN_S
    age_s = (now_ms - record.claimed_at_ms) / 1000
    if age_s < running_s:
        raise InProgress(
            f"the request with Idempotency-Key {idempotency_key!r} is still in progress; "
            "retry later", retry_after_s=max(1, int(running_s - age_s + 0.999)))
    raise UnknownOutcome(
        f"the request with Idempotency-Key {idempotency_key!r} did not finish and its "
        "outcome can no longer be told; it will not be applied again while the key is kept")
