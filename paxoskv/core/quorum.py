"""What a quorum is. This file alone decides it (docs/design.md invariant 3).

Quorums come from the configured acceptor set, never from whoever answered discovery.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

__all__ = ["QuorumConfig", "fast_quorum", "majority"]


def majority(acceptor_count: int) -> int:
    assert acceptor_count >= 1
    return acceptor_count // 2 + 1


def fast_quorum(acceptor_count: int, classic_quorum: int) -> int:
    """The smallest q_f with 2*q_f + q_c > 2n: any two fast quorums and one classic quorum
    share an acceptor, so a recovery that sees a classic quorum can tell which of the
    values of one fast ballot may have been chosen (n=3: 3; n=5: 4; docs/design.md
    invariant 9)."""
    n = acceptor_count
    assert 1 <= classic_quorum <= n
    return min(n, (2 * n - classic_quorum) // 2 + 1)


@dataclass(frozen=True, slots=True)
class QuorumConfig:
    """``quorum`` of ``acceptors`` make a quorum; with ``parts`` (a joint quorum), a set
    that holds at least ``n`` of each part's ``s`` does, whatever its size."""

    acceptors: frozenset[int]
    quorum: int
    fast_override: int = 0
    """0: the fast quorum follows from the classic one (``fast_quorum``); otherwise this
    size (only the simulator's ``fast-quorum-too-small`` mutant sets it)."""
    parts: tuple[tuple[frozenset[int], int], ...] = ()
    """Empty: a plain threshold. Otherwise (``joint``) every part's threshold must be met;
    ``acceptors`` is their union and ``quorum`` the largest part threshold, a lower bound
    on a quorum's size for the callers that only need one. Used with acceptor groups,
    mid-change, where a key's old and new groups differ (docs/groups.md)."""

    def __post_init__(self) -> None:
        assert len(self.acceptors) >= 1
        assert 1 <= self.quorum <= len(self.acceptors)
        assert 0 <= self.fast_override <= len(self.acceptors)
        if self.parts:  # (not on the hot path: plain thresholds skip both)
            assert frozenset().union(*(s for s, _ in self.parts)) == self.acceptors
            assert all(1 <= n <= len(s) for s, n in self.parts)

    @staticmethod
    def joint(*parts: QuorumConfig) -> QuorumConfig:
        """A quorum of each of ``parts`` at once (each a plain threshold)."""
        assert parts and all(not p.parts for p in parts)
        union = frozenset().union(*(p.acceptors for p in parts))
        return QuorumConfig(union, max(p.quorum for p in parts),
                            parts=tuple((p.acceptors, p.quorum) for p in parts))

    def met(self, ids: Collection[int]) -> bool:
        """``is_quorum`` for ``ids`` already filtered to ``acceptors`` (a round's answers):
        without parts a count, which is all a plain threshold needs."""
        if not self.parts:
            return len(ids) >= self.quorum
        return self.is_quorum(ids)

    @property
    def fast(self) -> int:
        """Acceptors that must accept one value at a fast ballot for it to be chosen."""
        return self.fast_override or fast_quorum(len(self.acceptors), self.quorum)

    @staticmethod
    def of(acceptors: Iterable[int]) -> QuorumConfig:
        members = frozenset(acceptors)
        return QuorumConfig(members, majority(len(members)))

    def is_quorum(self, ids: Iterable[int]) -> bool:
        if self.parts:
            held = frozenset(ids)
            return all(len(s & held) >= n for s, n in self.parts)
        return len(self.acceptors.intersection(ids)) >= self.quorum

    def can_still_reach(self, answered_or_pending: int) -> bool:
        return answered_or_pending >= self.quorum

    def everyone(self) -> QuorumConfig:
        """Every acceptor must answer (repair compares all copies of a key); every part's
        threshold is then met too."""
        return QuorumConfig(self.acceptors, len(self.acceptors), self.fast)

    def confirmations_needed(self, node_id: int) -> int:
        """Peers that must confirm a process's identity before it takes part: with itself,
        a majority of the acceptors, so a node restarts with one peer of three down. Two
        confirmations may then come from disjoint peers: a restored copy is refused only
        once a peer that saw the newer state answers (README: identity checks, limits)."""
        return majority(len(self.acceptors)) - (1 if node_id in self.acceptors else 0)

    def intersecting_confirmations(self) -> int:
        """Peers that must confirm a process whose identity is new to the cluster (a fresh
        data directory, a rejoin, a raised incarnation): enough that the set meets every
        earlier confirmation of that node id (``confirmations_needed``), so some peer that
        remembers an older state, or a higher incarnation, is always among them. Counted from
        majorities like ``confirmations_needed`` (not from the quorum size)."""
        n = len(self.acceptors)
        return n - majority(n) + 1

    def survivors_needed(self) -> int:
        """Other acceptors whose keys a rejoining acceptor must list: any value chosen
        while it was away sits on ``quorum`` acceptors, so at least ``quorum - 1`` of the
        others, and every set this large meets each such set."""
        return len(self.acceptors) - self.quorum + 1

    def reachable(self, up: Iterable[int]) -> bool:
        """Whether the acceptors in ``up`` (the caller's own one included if it serves)
        form a quorum."""
        return self.is_quorum(up)
