"""The register model the checker replays ops against, written independently of `paxoskv.core`.

Rule 1: every rule about what an op may observe lives in this file.

A key's state is ``(version, data)``, initially ``(0, None)``; ``None`` is absent. Writes:

- ``set(data)`` always applies: ``(version + 1, data)``.
- ``cas(expected, data)`` applies iff the key exists and ``version == expected``.
- ``create(data)`` applies iff the key is absent.
- ``delete()`` applies iff the key exists (and, given ``expected_version``, iff also
  ``version == expected``): ``(version + 1, None)``.

A ``rejected`` op is an identity step that saw its condition false (and, when it reports
``out_version``, saw that version). A ``read`` is an identity step that saw ``out_value`` (and
``out_version`` when given). An ``unknown`` write is optional: if it is linearized at all, its
condition held and it applied.

Two step functions share these rules:

`step_exact` is the register itself: a state is one ``(version, data)`` pair.

`step_open` is an over-approximation used to shrink counterexamples. Its state ``(v, d)``
stands for "the register is ``(v, d)``, or any state with a version above ``v``": writes
that are not in the history may have happened at any time. Every history the exact model
accepts, the open model accepts too, so a set of ops the open model rejects cannot be
linearized whatever other writes surround it: that is what makes a shrunk counterexample
meaningful when writes are removed from it. ``d`` may be `UNKNOWN_DATA` (any data).
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = [
    "CAS",
    "CREATE",
    "DELETE",
    "INITIAL",
    "KIND_CODES",
    "OK",
    "READ",
    "REJECTED",
    "SET",
    "UNKNOWN",
    "UNKNOWN_DATA",
    "Data",
    "EncodedOp",
    "State",
    "step_exact",
    "step_open",
    "version_bound",
]


class _Unknown(enum.Enum):
    DATA = "?"


UNKNOWN_DATA: Final = _Unknown.DATA

Data = bytes | None | _Unknown
State = tuple[int, Data]
INITIAL: Final[State] = (0, None)

SET: Final = 0
CAS: Final = 1
CREATE: Final = 2
DELETE: Final = 3
READ: Final = 4
KIND_CODES: Final[dict[str, int]] = {
    "set": SET,
    "cas": CAS,
    "create": CREATE,
    "delete": DELETE,
    "read": READ,
}

OK: Final = 0
REJECTED: Final = 1
UNKNOWN: Final = 2

EncodedOp = tuple[int, int, bytes | None, int | None, int | None, bytes | None]
"""``(kind, status, value, expected_version, out_version, out_value)``; ``failed`` ops and
unknown reads never reach the model. A ``rejected`` read is a read that saw the key absent."""


def step_exact(state: State, op: EncodedOp) -> State | None:
    """The state after ``op``, or None if ``op`` cannot be linearized in ``state``."""
    version, data = state
    kind, status, value, expected, out_version, out_value = op
    if kind == READ:
        seen = None if status == REJECTED else out_value
        if data != seen:
            return None
        if out_version is not None and out_version != version:
            return None
        return state
    if kind == SET:
        applies = True
    elif kind == CAS:
        applies = data is not None and version == expected
    elif kind == CREATE:
        applies = data is None
    else:
        applies = data is not None and (expected is None or version == expected)
    if status == REJECTED:
        if applies:
            return None
        if out_version is not None and out_version != version:
            return None
        return state
    if not applies:
        return None
    if out_version is not None and out_version != version + 1:
        return None
    return (version + 1, None if kind == DELETE else value)


def _may_exist(data: Data) -> bool:
    return data is not None


def _may_be_absent(data: Data) -> bool:
    return data is None or data is UNKNOWN_DATA


def step_open(state: State, op: EncodedOp) -> State | None:
    """`step_exact` where writes outside the history may have happened before ``op``.

    ``state`` ``(v, d)`` means ``(v, d)`` or any state whose version is above ``v``. The result
    is the smallest such set holding every state ``op`` can leave behind.
    """
    version, data = state
    kind, status, value, expected, out_version, out_value = op
    if kind == READ:
        seen = None if status == REJECTED else out_value
        if out_version is not None:
            if out_version == version and (data is UNKNOWN_DATA or data == seen):
                return (version, seen)
            if out_version > version:
                return (out_version, seen)
            return None
        if data is UNKNOWN_DATA or data == seen:
            return (version, seen)
        return (version + 1, seen)
    new_data = None if kind == DELETE else value
    if kind in (SET, CREATE) or (kind == DELETE and expected is None):
        # Unconditional on the version: either the current state qualifies, or hidden writes
        # bring it to one that does (an absent key for create, a present one for delete).
        if kind == SET:
            fits = True
        elif kind == CREATE:
            fits = _may_be_absent(data)
        else:
            fits = _may_exist(data)
        if status == REJECTED:
            # Saw the condition false: create saw the key present, delete saw it absent.
            stay: Data = data if kind == CREATE else None
            if kind == SET:
                return None
            if out_version is not None:
                if out_version == version:
                    if kind == CREATE and data is None:
                        return None
                    if kind == DELETE and not _may_be_absent(data):
                        return None
                    if kind == CREATE and data is UNKNOWN_DATA:
                        return (version, UNKNOWN_DATA)
                    return (version, stay)
                if out_version > version:
                    return (out_version, UNKNOWN_DATA if kind == CREATE else None)
                return None
            # Version not reported: stay, or let hidden writes make the condition false.
            if kind == CREATE:
                return (version, data) if data is not None else (version + 1, UNKNOWN_DATA)
            return (version, None) if _may_be_absent(data) else (version + 1, None)
        if out_version is not None:
            if (out_version - 1 == version and fits) or out_version - 1 > version:
                return (out_version, new_data)
            return None
        return (version + 1 if fits else version + 2, new_data)
    # cas, or a delete with an expected version: applies iff present and version == expected.
    assert expected is not None
    if status == REJECTED:
        if out_version is not None:
            if out_version == version:
                if version == expected:
                    # Saw the expected version, so it must have seen the key absent.
                    return (version, None) if _may_be_absent(data) else None
                return state
            if out_version > version:
                return (out_version, None if out_version == expected else UNKNOWN_DATA)
            return None
        if version != expected:
            return state
        return (version, None) if _may_be_absent(data) else (version + 1, UNKNOWN_DATA)
    if out_version is not None and out_version != expected + 1:
        return None
    if (expected == version and _may_exist(data)) or expected > version:
        return (expected + 1, new_data)
    return None


def version_bound(op: EncodedOp) -> int | None:
    """The highest version the register may have just before ``op`` is linearized, if any.

    Versions never decrease in either model, so once the version passes an op's bound that
    op can no longer be linearized: the search uses this to prune.
    """
    kind, status, _, expected, out_version, _ = op
    if status == UNKNOWN:
        return None
    if status == REJECTED or kind == READ:
        return out_version
    if out_version is not None:
        return out_version - 1
    if kind == CAS or (kind == DELETE and expected is not None):
        return expected
    return None
