"""Ballots: the total order that makes every proposal unique.

A ballot is ``(counter, node_id, incarnation)``. ``node_id`` makes ballots of different
proposers distinct; ``incarnation`` (bumped and fsync'd at every process start) makes a
restarted proposer's ballots distinct from those it issued before the restart, even if its
in-memory counter starts again from a low value (docs/design.md pitfall 4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

__all__ = ["WIRE_INT_MAX", "Ballot"]

WIRE_INT_MAX = 2**62
"""Largest ballot part or version a peer may send. SQLite stores at most 2**63 - 1: a frame
with a counter of 2**63 made the whole group commit fail (a 500, and the other writes of
that batch failed with it); the headroom leaves 2**62 increments to proposers that outbid
the largest ballot allowed."""


@dataclass(frozen=True, order=True, slots=True)
class Ballot:
    counter: int
    node_id: int
    incarnation: int = 0

    ZERO: ClassVar[Ballot]

    def __post_init__(self) -> None:
        assert self.counter >= 0
        assert self.node_id >= 0
        assert self.incarnation >= 0

    def is_zero(self) -> bool:
        return self == Ballot.ZERO

    def to_wire(self) -> list[int]:
        return [self.counter, self.node_id, self.incarnation]

    @staticmethod
    def from_wire(raw: object) -> Ballot:
        """Parse a ballot from a peer frame; raises ValueError on anything malformed."""
        if not isinstance(raw, list) or len(raw) != 3:
            raise ValueError("ballot must be a list of three integers")
        counter, node_id, incarnation = raw
        for part in (counter, node_id, incarnation):
            if not isinstance(part, int) or isinstance(part, bool) or not (
                    0 <= part <= WIRE_INT_MAX):
                raise ValueError(f"ballot parts must be integers within 0..{WIRE_INT_MAX}")
        return Ballot(counter, node_id, incarnation)

    def __str__(self) -> str:
        return f"{self.counter}.{self.node_id}.{self.incarnation}"


Ballot.ZERO = Ballot(0, 0, 0)
