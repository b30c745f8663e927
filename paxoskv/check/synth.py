"""Synthetic histories that are linearizable by construction, to test the checker itself.

Each key's ops are run one after another against a plain sequential register; op ``j`` takes
effect at its linearization point ``t_j``. The client-side interval is then drawn around that
point (``invoke <= t_j <= complete``), so intervals overlap but the history stays
linearizable. Some writes time out (``unknown``; they took effect or not, at random) and some
fail (no effect).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace

from paxoskv.check.history import Op, OpKind, Status

__all__ = ["SynthOptions", "linearizable_history"]


@dataclass(frozen=True, slots=True)
class SynthOptions:
    keys: int = 10
    ops: int = 1_000
    clients: int = 4
    spread: float = 2.0
    """Half-width of an op's interval, in mean gaps between linearization points; about
    ``2 * spread`` calls of one key are in flight at once."""
    unknown_probability: float = 0.05
    failed_probability: float = 0.02
    versions: bool = True
    """Whether answers carry versions (False: a client that ignores ETags)."""

    def __post_init__(self) -> None:
        if self.keys < 1 or self.ops < 0 or self.clients < 1 or self.spread < 0:
            raise ValueError(f"bad options {self!r}")
        if not (0 <= self.unknown_probability <= 1 and 0 <= self.failed_probability <= 1):
            raise ValueError(f"bad probabilities in {self!r}")


_KINDS: tuple[OpKind, ...] = ("set", "cas", "create", "delete", "read")
_WEIGHTS = (30, 20, 10, 10, 30)


def linearizable_history(rng: random.Random, options: SynthOptions = SynthOptions()) -> list[Op]:
    """``options.ops`` ops spread evenly (round robin) over ``options.keys`` keys."""
    ops: list[Op] = []
    per_key = [options.ops // options.keys] * options.keys
    for k in range(options.ops % options.keys):
        per_key[k] += 1
    for k, count in enumerate(per_key):
        ops.extend(_key_history(rng, f"k{k}", count, options))
    if not options.versions:
        ops = [replace(op, out_version=None) for op in ops]
    return ops


def _key_history(rng: random.Random, key: str, count: int, options: SynthOptions) -> list[Op]:
    version: int = 0
    data: bytes | None = None
    t = 0.0
    out: list[Op] = []
    for j in range(count):
        t += rng.expovariate(1.0)
        invoke = t - rng.uniform(0, options.spread)
        complete = t + rng.uniform(0, options.spread)
        client = rng.randrange(options.clients)
        kind = rng.choices(_KINDS, _WEIGHTS)[0]
        value = f"{key}:{j}".encode() if kind in ("set", "cas", "create") else None
        expected = None
        if kind == "cas":
            expected = version if rng.random() < 0.7 else max(0, version + rng.randint(-2, 2))
        if kind == "read":
            out_value = data
            out_version = version if data is not None else None
            out.append(
                Op(client, key, kind, invoke, complete, "ok", None, None, out_version, out_value)
            )
            continue
        if rng.random() < options.failed_probability:
            out.append(Op(client, key, kind, invoke, complete, "failed", value, expected))
            continue
        unknown = rng.random() < options.unknown_probability
        if kind == "set":
            applies = True
        elif kind == "cas":
            applies = data is not None and version == expected
        elif kind == "create":
            applies = data is None
        else:
            applies = data is not None
        if unknown:
            if applies and rng.random() < 0.5:
                version, data = version + 1, (None if kind == "delete" else value)
            out.append(Op(client, key, kind, invoke, math.inf, "unknown", value, expected))
            continue
        status: Status
        if applies:
            version, data = version + 1, (None if kind == "delete" else value)
            status = "ok"
            out_version = version
        else:
            status = "rejected"
            out_version = None if (kind == "delete" or data is None) else version
        out.append(Op(client, key, kind, invoke, complete, status, value, expected, out_version))
    return out
