"""Ballots: the total order that makes every proposal unique.

A ballot is ``(counter, node_id, incarnation, fast)``. ``node_id`` makes ballots of
different proposers distinct; ``incarnation`` (bumped and fsync'd at every process start)
makes a restarted proposer's ballots distinct from those it issued before the restart, even
if its in-memory counter starts again from a low value (docs/design.md pitfall 4).

``fast`` (0 for every classic ballot) numbers the fast ballots that follow a classic one
(Fast Paxos, docs/design.md invariant 9): ``b.successor()`` is the ballot right after ``b``,
with nothing between them, which any proposer may use for a fast round on a key whose
acceptors accepted ``b``. Being the lowest-order part keeps that "nothing between" true.
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
    fast: int = 0
    """0: a classic ballot (one proposer, one value); above 0: a fast ballot, shared by
    every proposer whose round builds on the same accepted ballot, which may therefore
    carry different values at different acceptors."""

    ZERO: ClassVar[Ballot]

    def __post_init__(self) -> None:
        assert self.counter >= 0
        assert self.node_id >= 0
        assert self.incarnation >= 0
        assert self.fast >= 0

    @property
    def is_fast(self) -> bool:
        return self.fast > 0

    def successor(self) -> Ballot:
        """The fast ballot right after this one: no ballot sorts strictly between them, so
        an acceptor that accepted ``self`` and promised nothing above the successor has
        seen no round that a fast round at the successor could override."""
        return Ballot(self.counter, self.node_id, self.incarnation, self.fast + 1)

    def is_zero(self) -> bool:
        return self == Ballot.ZERO

    def to_wire(self) -> list[int]:
        """Three parts for a classic ballot, so peers of earlier versions still parse
        every frame that carries no fast ballot."""
        if self.fast:
            return [self.counter, self.node_id, self.incarnation, self.fast]
        return [self.counter, self.node_id, self.incarnation]

    @staticmethod
    def from_wire(raw: object) -> Ballot:
        """Parse a ballot from a peer frame; raises ValueError on anything malformed."""
        if not isinstance(raw, list) or len(raw) not in (3, 4):
            raise ValueError("ballot must be a list of three or four integers")
        for part in raw:
            if not isinstance(part, int) or isinstance(part, bool) or not (
                    0 <= part <= WIRE_INT_MAX):
                raise ValueError(f"ballot parts must be integers within 0..{WIRE_INT_MAX}")
        return Ballot(*raw)

    def __str__(self) -> str:
        """The classic form is unchanged: stored checksums hash it (storage/sqlite.py)."""
        base = f"{self.counter}.{self.node_id}.{self.incarnation}"
        return f"{base}.f{self.fast}" if self.fast else base


Ballot.ZERO = Ballot(0, 0, 0)
