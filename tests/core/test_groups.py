"""Independent acceptor groups in the core (docs/groups.md): which acceptors hold a key,
each key's quorums before, during and after a change, the fence with groups, and which rows
an acceptor drops when a config brings it (back) into a key's group."""

from __future__ import annotations

from itertools import combinations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paxoskv.core.quorum import QuorumConfig, majority
from paxoskv.core.reconfig import (
    CONFIG_KEY,
    Config,
    KeyQuorums,
    change_configs,
    drops_all_rows,
    fence_satisfied,
    group,
    joins_group,
    key_quorums,
    key_quorums_intersect,
)

KEYS = [f"key-{i}" for i in range(400)]


def _subsets(members: frozenset[int], size: int) -> list[frozenset[int]]:
    return [frozenset(c) for c in combinations(sorted(members), size)]


def _quorums(q: QuorumConfig) -> list[frozenset[int]]:
    """Every set of ``q``'s acceptors that is a quorum (joint ones included)."""
    return [s for size in range(len(q.acceptors) + 1) for s in _subsets(q.acceptors, size)
            if q.is_quorum(s)]


def _brute(p: QuorumConfig, a: QuorumConfig) -> bool:
    return all(x & y for x in _quorums(p) for y in _quorums(a))


def test_group_is_r_members_stable_and_all_for_the_record_or_no_r() -> None:
    members = frozenset(range(1, 8))
    for key in KEYS[:50]:
        g = group(key, members, 3)
        assert len(g) == 3 and g <= members
        assert g == group(key, sorted(members, reverse=True), 3)  # order does not matter
    assert group(CONFIG_KEY, members, 3) == members
    assert group("k", members, None) == members
    assert group("k", members, 7) == members
    assert group("k", members, 9) == members
    # Stable across processes and releases: a fixed value (Python's salted hash is not).
    assert group("k", members, 3) == frozenset({1, 5, 6})


def test_groups_spread_the_keys() -> None:
    """Goal: N/R groups share the keyspace: each acceptor holds about R/N of the keys."""
    members = frozenset(range(1, 7))
    counts = {a: 0 for a in members}
    for i in range(6000):
        for a in group(f"k{i}", members, 3):
            counts[a] += 1
    for a, c in counts.items():
        assert 2700 < c < 3300, (a, c)


@pytest.mark.parametrize("n", range(2, 10))
def test_rendezvous_moves_at_most_one_member_per_change(n: int) -> None:
    """Goal: adding X changes a key's group at most by X replacing one member; removing Y
    at most by one member replacing Y (what the per-key quorums below rely on)."""
    s = frozenset(range(1, n + 1))
    for r in range(2, n + 1):
        for key in KEYS[:100]:
            g = group(key, s, r)
            grown = group(key, s | {n + 1}, r)
            assert grown == g or (n + 1 in grown and len(g - grown) == 1)
            for y in s:
                shrunk = group(key, s - {y}, r)
                assert g - {y} <= shrunk and len(shrunk - g) <= 1


def _adjacent_pairs(old: Config, mid: Config, end: Config) -> list[tuple[Config, Config]]:
    return [(old, old), (mid, mid), (end, end), (old, mid), (mid, old), (mid, end),
            (end, mid)]


def _every_change(limit: int = 9) -> list[tuple[int, int, frozenset[int]]]:
    """(n, r, target) for every add and remove from 2..limit acceptors and 2 <= r <= n."""
    out = []
    for n in range(2, limit + 1):
        s = frozenset(range(1, n + 1))
        for r in range(2, n + 1):
            out.append((n, r, s | {n + 1}))
            if n > 2:
                out.extend((n, r, s - {y}) for y in s)
    return out


@pytest.mark.parametrize(("n", "r", "target"), _every_change())
def test_per_key_quorums_intersect_across_every_change(n: int, r: int,
                                                       target: frozenset[int]) -> None:
    """Goal: for every key, every prepare quorum meets every accept quorum within a config
    and between neighbouring configs (old/mid, mid/end, both ways: proposers of two
    adjacent epochs run side by side), for every N <= 9 and 2 <= R <= N, adds and removes.
    That includes the catch-up: its prepares (mid) meet old's accepts, and end's prepares
    meet its accepts.

    Method: 150 keys (which covers groups that do and do not change); the formula, and for
    small groups the enumeration of quorums."""
    old = Config.stable(0, range(1, n + 1), r)
    mid, end = change_configs(old, target)
    assert mid.replication == end.replication == r
    for key in KEYS[:150]:
        for p, a in _adjacent_pairs(old, mid, end):
            kp, ka = key_quorums(p, key), key_quorums(a, key)
            assert key_quorums_intersect(kp, ka), (n, r, sorted(target), key, p, a)
            if n <= 5 and key in KEYS[:40]:
                assert _brute(kp.prepare, ka.accept)


def test_the_plain_majority_rule_mid_change_has_a_hole() -> None:
    """Goal: the reason mid quorums are joint. With R = 3, a key whose group swaps a member
    during an add ({a,b,c} -> {a,b,x}) has a mid prepare quorum (2 of {a,b,c}) that misses
    an end accept quorum (2 of {a,b,x}); ``mid_majorities`` (the group-mid-majorities
    mutant) keeps that hole, the real rule (a majority of both groups at once) does not,
    and {a, b} alone is one of its quorums."""
    old = Config.stable(0, range(1, 6), 3)
    mid, end = change_configs(old, range(1, 7))
    swapped = [k for k in KEYS if group(k, old.prepare_set, 3) != group(k, end.prepare_set, 3)]
    assert swapped
    key = swapped[0]
    bad = key_quorums(mid, key, mid_majorities=True)
    assert not key_quorums_intersect(bad, key_quorums(end, key))
    good = key_quorums(mid, key)
    gp, ga = group(key, mid.prepare_set, 3), group(key, mid.accept_set, 3)
    assert good.prepare is good.accept
    assert good.prepare.parts == ((gp, 2), (ga, 2)) and good.prepare.acceptors == gp | ga
    assert good.prepare.is_quorum(gp & ga) and len(gp & ga) == 2
    assert not good.prepare.is_quorum(gp - ga | {min(gp & ga)})  # a majority of gp only
    assert key_quorums_intersect(good, key_quorums(end, key))
    assert key_quorums_intersect(key_quorums(end, key), good)
    # A key whose group stays keeps plain majorities mid-change.
    still = next(k for k in KEYS if k not in swapped)
    assert key_quorums(mid, still).prepare.quorum == 2
    assert not key_quorums(mid, still).prepare.parts


@pytest.mark.parametrize("n", range(1, 8))
def test_without_groups_every_key_gets_the_configs_own_quorums(n: int) -> None:
    """Goal: R unset, or R >= N, is bit-for-bit the behaviour without groups."""
    s = frozenset(range(1, n + 1))
    for r in (None, n, n + 3):
        if r is not None and r < 2:
            continue
        cfg = Config.stable(0, s, r)
        targets = [s | {n + 1}] + ([s - {y} for y in s] if n > 1 else [])
        configs = [cfg]
        for t in targets:
            if r is None or r >= len(s | t):
                configs.extend(change_configs(cfg, t))
        for c in configs:
            for key in KEYS[:20]:
                assert key_quorums(c, key) == KeyQuorums(
                    QuorumConfig(c.prepare_set, c.prepare_quorum),
                    QuorumConfig(c.accept_set, c.accept_quorum))


def _fence_by_enumeration(previous: Config, acked: frozenset[int]) -> bool:
    """No quorum of any possible group (any R members of a set) avoids ``acked``."""
    r = previous.replication
    assert r is not None
    for side in (previous.prepare_set, previous.accept_set):
        size = min(r, len(side))
        for g in _subsets(side, size):
            if len(g - acked) >= majority(size):
                return False
    return True


@pytest.mark.parametrize("n", range(2, 8))
def test_fence_with_groups_leaves_no_quorum_of_any_group(n: int) -> None:
    """Goal: the fence with groups is exact for stable configs (at most ``maj(R) - 1`` of
    the set unfenced, whatever the key) and with R = N reduces to today's rule; for mid
    configs every key's actual groups and quorums are fenced.

    Method: every acked subset, against enumerating every R-subset's majorities; and for
    mid configs, against 400 keys' own quorums."""
    s = frozenset(range(1, n + 1))
    for r in range(2, n + 1):
        cfg = Config.stable(0, s, r)
        for size in range(n + 1):
            for acked in _subsets(s, size):
                assert fence_satisfied(cfg, acked) == _fence_by_enumeration(cfg, acked)
                if r == n:
                    today = Config.stable(0, s)
                    assert fence_satisfied(cfg, acked) == fence_satisfied(today, acked)
        for target in [s | {n + 1}] + ([s - {y} for y in s] if n > 2 else []):
            mid, _ = change_configs(cfg, target)
            for size in range(len(mid.members) + 1):
                for acked in _subsets(mid.members, size):
                    if not fence_satisfied(mid, acked):
                        continue
                    for key in KEYS[:100]:
                        kq = key_quorums(mid, key)
                        for q in (kq.prepare, kq.accept):
                            assert not q.is_quorum(q.acceptors - acked), (r, key, acked)


def test_group_fence_is_stricter_than_the_one_group_rule() -> None:
    """Goal: why the fence changes. Five acceptors, R = 3: today's rule is satisfied by
    three fenced ({1,2,3}), but the key whose group is {3,4,5}... has the quorum {4,5}
    free of them; the group rule wants four."""
    cfg = Config.stable(0, range(1, 6), 3)
    assert fence_satisfied(cfg, {1, 2, 3}, as_one_group=True)
    assert not fence_satisfied(cfg, {1, 2, 3})
    assert fence_satisfied(cfg, {1, 2, 3, 4})


def test_joining_and_dropping_rows() -> None:
    """Goal: an acceptor drops a key's row when a config brings it into the key's group
    (it left before, and its row's ballot may be above anything the group used since), and
    every row when it missed a whole change with groups; without groups, only an acceptor
    the config adds to the set drops (the node's rule before groups)."""
    old = Config.stable(0, range(1, 6), 3)
    mid, end = change_configs(old, range(1, 5))  # remove 5
    for key in KEYS[:100]:
        before, after = group(key, old.prepare_set, 3), group(key, end.prepare_set, 3)
        for a in range(1, 5):
            assert joins_group(mid, a, key) == (a in after and a not in before)
            assert not joins_group(end, a, key)
    plain = Config.stable(0, range(1, 4))
    pmid, pend = change_configs(plain, range(1, 5))
    assert all(joins_group(pmid, 4, k) for k in KEYS[:10])
    assert not any(joins_group(pmid, a, k) for a in (1, 2, 3) for k in KEYS[:10])
    assert not drops_all_rows(plain, pend)
    assert not drops_all_rows(old, mid) and not drops_all_rows(mid, end)
    assert drops_all_rows(old, end)
    mid2, end2 = change_configs(end, range(1, 6))
    assert not drops_all_rows(mid, mid2) and drops_all_rows(mid, end2)


def test_config_json_carries_r_only_when_set() -> None:
    plain = Config.stable(3, [1, 2, 3])
    assert len(plain.to_json()) == 5
    assert Config.from_json(plain.to_json()) == plain
    grouped = Config.stable(3, [1, 2, 3, 4, 5], 3)
    assert grouped.to_json()[-1] == 3
    assert Config.from_json(grouped.to_json()) == grouped
    with pytest.raises(AssertionError):
        Config.stable(0, [1, 2, 3], 1)


@settings(max_examples=200, deadline=None)
@given(st.integers(3, 9), st.integers(2, 9), st.lists(st.booleans(), min_size=1,
                                                     max_size=6), st.text(max_size=8))
def test_chains_of_changes_keep_per_key_intersection(n: int, r: int, steps: list[bool],
                                                      key: str) -> None:
    """Goal: along any chain of adds and removes (R fixed, sets growing past R and shrinking
    to it or below), each key's neighbouring configs intersect."""
    r = min(r, n)
    cur = Config.stable(0, range(1, n + 1), r)
    nxt = n + 1
    for add in steps:
        members = sorted(cur.prepare_set)
        if add or len(members) <= 2:
            target = frozenset(members) | {nxt}
            nxt += 1
        else:
            target = frozenset(members) - {members[len(key) % len(members)]}
        mid, end = change_configs(cur, target)
        for p, a in _adjacent_pairs(cur, mid, end):
            assert key_quorums_intersect(key_quorums(p, key), key_quorums(a, key))
        cur = end


def test_a_dead_acceptor_can_be_removed_with_r_3() -> None:
    """Goal: with R = 3, every key's mid-change quorums (joint where its group swaps the
    removed acceptor for another) can form without the removed acceptor, so the catch-up of
    a remove completes while it is down. With the grown quorums of before (3 of 3 of the
    old group) this failed for every key whose group held it."""
    members = frozenset(range(1, 6))
    dead = 5
    mid, _ = change_configs(Config.stable(0, members, 3), members - {dead})
    swapped = 0
    for key in KEYS:
        kq = key_quorums(mid, key)
        swapped += bool(kq.prepare.parts)
        for q in (kq.prepare, kq.accept):
            assert q.is_quorum(q.acceptors - {dead}), (key, q)
    assert swapped > 50
