"""Client-side histories of register operations: the `Op` record and the `History` recorder.

An `Op` is what one client saw of one call: when it was sent (``invoke``), when the answer came
(``complete``), and what the answer said. The checker never looks at a clock; it only compares
the times written here, so every op of one history must come from the same clock.

`History` records ops from many threads or asyncio tasks at once: ``invoke`` before the call,
``complete`` after it. An op that is never completed is ``unknown`` (a timeout): it may or may
not have taken effect. Files are JSON lines, one op per line, bytes in base64.
"""

from __future__ import annotations

import base64
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, get_args

import orjson

__all__ = [
    "KINDS",
    "STATUSES",
    "History",
    "Op",
    "OpKind",
    "Status",
    "dump_ops",
    "load_ops",
]

OpKind = Literal["set", "cas", "create", "delete", "read"]
Status = Literal["ok", "rejected", "failed", "unknown"]

KINDS: Final[frozenset[str]] = frozenset(get_args(OpKind))
STATUSES: Final[frozenset[str]] = frozenset(get_args(Status))


@dataclass(frozen=True, slots=True)
class Op:
    """One client call on one key, as the client saw it.

    ``status``: ``ok`` took effect with these outputs; ``rejected`` a condition was false (an
    identity step that observed the state); ``failed`` definitely had no effect; ``unknown``
    timed out and may have taken effect at any point after ``invoke`` (``complete`` is
    ``math.inf``).

    ``out_version``: an ok write's new version; a rejected op's current version if the store
    reported it; a read's version (``None`` = absent or not checked). ``out_value``: the data a
    read returned (``None`` = absent). ``expected_version``: the compare-and-set version of a
    ``cas`` (or of a conditional ``delete``).
    """

    client: int
    key: str
    kind: OpKind
    invoke: float
    complete: float
    status: Status
    value: bytes | None = None
    expected_version: int | None = None
    out_version: int | None = None
    out_value: bytes | None = None


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def _unb64(text: Any) -> bytes | None:
    if text is None:
        return None
    if not isinstance(text, str):
        raise ValueError(f"expected a base64 string or null, got {text!r}")
    return base64.b64decode(text.encode("ascii"), validate=True)


def _opt_int(raw: Any, name: str) -> int | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise ValueError(f"{name}: expected an integer or null, got {raw!r}")
    return raw


def op_to_json(op: Op) -> dict[str, Any]:
    """A JSON-safe dict: bytes as base64, an infinite ``complete`` as null."""
    return {
        "client": op.client,
        "key": op.key,
        "kind": op.kind,
        "invoke": op.invoke,
        "complete": None if math.isinf(op.complete) else op.complete,
        "status": op.status,
        "value": _b64(op.value),
        "expected_version": op.expected_version,
        "out_version": op.out_version,
        "out_value": _b64(op.out_value),
    }


def op_from_json(obj: Any) -> Op:
    """Inverse of `op_to_json`; raises ValueError on anything malformed."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    kind = obj.get("kind")
    status = obj.get("status")
    if kind not in KINDS:
        raise ValueError(f"bad kind {kind!r}")
    if status not in STATUSES:
        raise ValueError(f"bad status {status!r}")
    client = obj.get("client")
    key = obj.get("key")
    invoke = obj.get("invoke")
    complete = obj.get("complete")
    if isinstance(client, bool) or not isinstance(client, int):
        raise ValueError(f"bad client {client!r}")
    if not isinstance(key, str):
        raise ValueError(f"bad key {key!r}")
    if isinstance(invoke, bool) or not isinstance(invoke, int | float):
        raise ValueError(f"bad invoke {invoke!r}")
    if complete is None:
        complete = math.inf
    if isinstance(complete, bool) or not isinstance(complete, int | float):
        raise ValueError(f"bad complete {complete!r}")
    return Op(
        client=client,
        key=key,
        kind=kind,
        invoke=float(invoke),
        complete=float(complete),
        status=status,
        value=_unb64(obj.get("value")),
        expected_version=_opt_int(obj.get("expected_version"), "expected_version"),
        out_version=_opt_int(obj.get("out_version"), "out_version"),
        out_value=_unb64(obj.get("out_value")),
    )


def dump_ops(ops: Iterable[Op], path: str | Path) -> None:
    """Write ops as JSON lines."""
    with open(path, "wb") as f:
        for op in ops:
            f.write(orjson.dumps(op_to_json(op)))
            f.write(b"\n")


def load_ops(path: str | Path) -> list[Op]:
    """Read JSON lines written by `dump_ops`; blank lines are skipped."""
    ops: list[Op] = []
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                ops.append(op_from_json(orjson.loads(line)))
            except (ValueError, orjson.JSONDecodeError) as exc:
                raise ValueError(f"{path}:{lineno}: {exc}") from exc
    return ops


@dataclass(slots=True)
class _Pending:
    client: int
    key: str
    kind: OpKind
    invoke: float
    value: bytes | None
    expected_version: int | None
    complete: float = math.inf
    status: Status = "unknown"
    out_version: int | None = None
    out_value: bytes | None = None
    done: bool = False


class History:
    """A thread-safe recorder of ops.

    ``invoke`` and ``complete`` only take a lock around a list append or a field update, so
    they are safe to call from asyncio tasks (they never block on I/O) and from threads.
    Times come from ``clock`` (default `time.monotonic`): record one history with one clock.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: list[_Pending] = []

    def invoke(
        self,
        client: int,
        key: str,
        kind: OpKind,
        value: bytes | None = None,
        expected_version: int | None = None,
    ) -> int:
        """Record that ``client`` sent a call; returns the op id for `complete`."""
        if kind not in KINDS:
            raise ValueError(f"bad kind {kind!r}")
        now = self._clock()
        with self._lock:
            self._pending.append(_Pending(client, key, kind, now, value, expected_version))
            return len(self._pending) - 1

    def complete(
        self,
        op_id: int,
        status: Status,
        out_version: int | None = None,
        out_value: bytes | None = None,
    ) -> None:
        """Record the answer to op ``op_id``. ``unknown`` keeps the op open-ended."""
        if status not in STATUSES:
            raise ValueError(f"bad status {status!r}")
        now = self._clock()
        with self._lock:
            rec = self._pending[op_id]
            if rec.done:
                raise ValueError(f"op {op_id} completed twice")
            rec.done = True
            rec.status = status
            rec.complete = math.inf if status == "unknown" else now
            rec.out_version = out_version
            rec.out_value = out_value

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)

    def ops(self) -> list[Op]:
        """A snapshot; ops not completed yet are ``unknown``."""
        with self._lock:
            return [
                Op(
                    client=r.client,
                    key=r.key,
                    kind=r.kind,
                    invoke=r.invoke,
                    complete=r.complete,
                    status=r.status,
                    value=r.value,
                    expected_version=r.expected_version,
                    out_version=r.out_version,
                    out_value=r.out_value,
                )
                for r in self._pending
            ]

    def save(self, path: str | Path) -> None:
        dump_ops(self.ops(), path)

    @classmethod
    def from_ops(cls, ops: Iterable[Op], clock: Callable[[], float] = time.monotonic) -> History:
        """A recorder holding ``ops`` (e.g. to append to a loaded history)."""
        history = cls(clock)
        for op in ops:
            history._pending.append(
                _Pending(
                    op.client,
                    op.key,
                    op.kind,
                    op.invoke,
                    op.value,
                    op.expected_version,
                    complete=op.complete,
                    status=op.status,
                    out_version=op.out_version,
                    out_value=op.out_value,
                    done=op.status != "unknown",
                )
            )
        return history

    @classmethod
    def load(cls, path: str | Path) -> History:
        """The history saved at ``path``; ``History.load(p).ops()`` gives its ops."""
        return cls.from_ops(load_ops(path))
