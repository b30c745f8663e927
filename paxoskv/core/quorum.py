"""What a quorum is. This file alone decides it (DESIGN invariant 3).

Quorums come from the configured acceptor set, never from whoever answered discovery.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["QuorumConfig", "majority"]


def majority(acceptor_count: int) -> int:
    assert acceptor_count >= 1
    return acceptor_count // 2 + 1


@dataclass(frozen=True, slots=True)
class QuorumConfig:
    acceptors: frozenset[int]
    quorum: int

    def __post_init__(self) -> None:
        assert len(self.acceptors) >= 1
        assert 1 <= self.quorum <= len(self.acceptors)

    @staticmethod
    def of(acceptors: Iterable[int]) -> QuorumConfig:
        members = frozenset(acceptors)
        return QuorumConfig(members, majority(len(members)))

    def is_quorum(self, ids: Iterable[int]) -> bool:
        return len(self.acceptors.intersection(ids)) >= self.quorum

    def can_still_reach(self, answered_or_pending: int) -> bool:
        return answered_or_pending >= self.quorum
