"""Giving back the memory of a dict that once held many keys and now holds few.

Why: CPython never shrinks a dict's table as entries are removed; only an insertion that
triggers a resize does. A per-key structure that once held 100,000 keys (the storage's
cache, the collector's pending tombstones, a proposer's prepared keys) keeps several MB of
table once those keys are gone, for as long as the process runs. Copying it builds a table
sized for what it holds now.
"""

from __future__ import annotations

from typing import Final, TypeVar

__all__ = ["COMPACT_MIN", "compacted"]

COMPACT_MIN: Final = 1024
"""Below this peak the table is small anyway: never copied."""

D = TypeVar("D", bound=dict)  # type: ignore[type-arg]


def compacted(d: D, peak: int) -> tuple[D, int]:
    """``d`` (or a copy of it, same type and order, when it holds at most a quarter of
    ``peak`` entries and ``peak`` is at least ``COMPACT_MIN``) and the peak to track from
    now on. Amortised O(1) per removal: a copy of n entries follows at least 3n removals."""
    n = len(d)
    if n >= peak:
        return d, n
    if peak >= COMPACT_MIN and n <= peak // 4:
        return type(d)(d), n
    return d, peak
