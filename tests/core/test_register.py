"""Change functions (paxoskv/core/register.py): the CASPaxos change function per operation."""

import pytest

from paxoskv.core.register import (
    Cas,
    Create,
    Delete,
    Outcome,
    Read,
    Set,
    Value,
    apply_change,
)

ABSENT = Value(0, None)
HAS = Value(3, b"x")
TOMB = Value(4, None)


@pytest.mark.parametrize(
    ("current", "change", "new", "kind"),
    [
        (ABSENT, Set(b"a"), Value(1, b"a"), "applied"),
        (HAS, Set(b"a"), Value(4, b"a"), "applied"),
        (HAS, Cas(3, b"a"), Value(4, b"a"), "applied"),
        (HAS, Cas(2, b"a"), HAS, "rejected"),
        (TOMB, Cas(4, b"a"), TOMB, "rejected"),
        (ABSENT, Create(b"a"), Value(1, b"a"), "applied"),
        (TOMB, Create(b"a"), Value(5, b"a"), "applied"),
        (HAS, Create(b"a"), HAS, "rejected"),
        (HAS, Delete(), Value(4, None), "applied"),
        (HAS, Delete(3), Value(4, None), "applied"),
        (HAS, Delete(1), HAS, "rejected"),
        (ABSENT, Delete(), ABSENT, "absent"),
        (TOMB, Delete(), TOMB, "absent"),
        (HAS, Read(), HAS, "read"),
    ],
)
def test_apply_change(current: Value, change: object, new: Value, kind: str) -> None:
    """Goal: every change's value and outcome, including failed conditions, which return the
    current value so the round still finishes with it (no Scylla #6299 two-reads bug)."""
    got_value, outcome = apply_change(current, change)  # type: ignore[arg-type]
    assert got_value == new
    assert outcome == Outcome(kind, new)  # type: ignore[arg-type]


def test_versions_only_grow_on_applied_changes() -> None:
    """Goal: each successful non-identity change increments the version by exactly one."""
    v = ABSENT
    for change in (Set(b"1"), Cas(1, b"2"), Delete(), Create(b"3")):
        nv, out = apply_change(v, change)
        assert out.kind == "applied"
        assert nv.version == v.version + 1
        v = nv
