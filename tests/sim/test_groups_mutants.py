"""Scripted scenarios for the two group mutants the seeded reconfiguration simulator does
not catch (docs/groups.md, "Simulators"): each drives the simulator's own acceptors
(``paxoskv.sim.reconf._Acceptor``, with the mutant switched on or off) by hand, message by
message, and checks a register property that the real rules keep and the mutant breaks.

Why the seeded simulator misses them: its install step (``_Sim.install``) waits for every
acceptor that a config installed out of a grouped stable one keeps or adds (to hand out
bucket floors), so old -> mid leaves at most the removed acceptor on the old epoch, and
the weaker fence of
``group-fence-as-if-one-group`` never matters there. The node's driver
(``paxoskv/reconfigure.py``, ``Reconfigurer.install``) does the same at that install (every
acceptor the change keeps or adds takes the floors), but out of a mid config it waits only
for the fence and the added acceptors: the first scenario follows such a fence-only
install. ``group-keep-stale-rows`` needs a
collected tombstone, an acceptor whose install ack of the change that brings it back into
the key's group arrives only after the fence held (so its rows are not listed for the
catch-up), and no write of the key before a read at the next epoch: reachable in the
simulator, but rare."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from types import SimpleNamespace
from typing import Any, cast

from paxoskv.core.acceptor import NO_FLOOR, Floor
from paxoskv.core.ballot import Ballot
from paxoskv.core.messages import Accept, Accepted, Collect, Prepare, Promise
from paxoskv.core.proposer import choose_value
from paxoskv.core.reconfig import Config, change_configs, fence_satisfied, group, key_quorums
from paxoskv.core.register import Value
from paxoskv.sim.reconf import InstallAck, InstallReq, _Acceptor

R = 3
S = frozenset(range(1, 6))
PLUS6 = S | {6}


def _acceptors(mutant: str | None, ids: Iterable[int], cfg: Config) -> dict[int, _Acceptor]:
    sim = cast(Any, SimpleNamespace(options=SimpleNamespace(mutant=mutant), faults=Counter()))
    return {i: _Acceptor(i, cfg, sim) for i in ids}


def _swapping_key() -> tuple[str, frozenset[int], frozenset[int]]:
    """A key whose group of 3 changes when 6 joins {1..5}: (key, group before, after)."""
    for i in range(1000):
        k = f"k{i}"
        g, g2 = group(k, S, R), group(k, PLUS6, R)
        if g != g2:
            return k, g, g2
    raise AssertionError("no key moves")


def _round(accs: dict[int, _Acceptor], cfg: Config, key: str, ballot: Ballot,
           prepare_to: Iterable[int], accept_to: Iterable[int] | None,
           change: Callable[[Value], Value | None]) -> Value | None:
    """One classic round of ``key`` under ``cfg`` (the proposer knows only ``cfg``), its
    messages delivered to ``prepare_to`` / ``accept_to`` only (the rest unreachable):
    the value chosen, or None if a quorum did not answer or ``change`` refused."""
    kq = key_quorums(cfg, key)
    promises = {a: r for a in sorted(prepare_to)
                if isinstance(r := accs[a].handle(cfg, Prepare(key, ballot)), Promise)}
    if not kq.prepare.is_quorum(promises):  # a count, or a joint quorum mid-change
        return None
    new = change(choose_value(list(promises.values()), kq.prepare))
    if new is None:
        return None
    targets = kq.accept.acceptors if accept_to is None else accept_to
    oks = [a for a in sorted(targets)
           if isinstance(accs[a].handle(cfg, Accept(key, ballot, new)), Accepted)]
    return new if kq.accept.is_quorum(oks) else None


def _create(data: bytes) -> Callable[[Value], Value | None]:
    return lambda v: None if v.exists else Value(v.version + 1, data)


def _install(accs: dict[int, _Acceptor], cfg: Config, previous: Config,
             order: list[int], one_group: bool) -> tuple[set[int], set[str]]:
    """The node driver's install: the config to acceptors in ``order`` (those reachable
    first) until the fence of ``previous`` holds and every added acceptor holds it. The
    acks and the keys the acked old members list (what the catch-up covers)."""
    added = cfg.members - previous.members
    acked: set[int] = set()
    listed: set[str] = set()
    for a in order:
        if fence_satisfied(previous, acked, as_one_group=one_group) and added <= acked:
            break
        r = accs[a].handle(cfg, InstallReq(cfg))
        assert isinstance(r, InstallAck) and r.epoch == cfg.epoch
        acked.add(a)
        if a in previous.members:
            listed |= r.keys
    assert fence_satisfied(previous, acked, as_one_group=one_group) and added <= acked
    return acked, listed


def _fence_scenario(one_group: bool) -> dict[str, bool]:
    """{1..5}, R = 3, adding 6; a key k that nobody wrote yet, whose group {y,u,o} becomes
    {u,o,6}. y and u are partitioned from the driver, which reaches them last. Under the
    end config proposer P2 creates k on {o,6} (a majority of k's new group); then proposer
    P1, which knows only epoch 0 and reaches y and u, creates k too (a majority of k's old
    group). Both creates of one absent key must not succeed."""
    key, g, g2 = _swapping_key()
    (y,) = g - g2
    u, o = sorted(g & g2)
    old = Config.stable(0, S, R)
    mid, end = change_configs(old, PLUS6)
    accs = _acceptors(None, PLUS6, old)
    order = [*sorted(PLUS6 - {y, u}), u, y]  # y and u last: partitioned from the driver
    _, listed = _install(accs, mid, old, order, one_group)
    assert key not in listed  # no row anywhere: nothing for the catch-up
    _install(accs, end, mid, order, one_group)
    p2 = _round(accs, end, key, Ballot(1, 102), {o, 6}, {o, 6}, _create(b"new"))
    p1 = _round(accs, old, key, Ballot(1, 101), g, g, _create(b"old"))
    return {"new": p2 is not None, "old": p1 is not None}


def test_the_group_fence_keeps_an_old_epoch_group_quorum_from_forming() -> None:
    # The real rule: 4 of {1..5} must hold mid, so y and u cannot both be on epoch 0; P1's
    # prepare reaches one old-epoch acceptor of k's group and is refused by the others.
    assert _fence_scenario(one_group=False) == {"new": True, "old": False}


def test_mutant_group_fence_as_if_one_group_lets_two_creates_succeed() -> None:
    # The mutant: 3 acks of {1..5} fence epoch 0 "as one group", leaving y and u on epoch 0,
    # a majority of k's old group: P1 creates k again over P2's create (a lost write).
    assert _fence_scenario(one_group=True) == {"new": True, "old": True}


def _stale_row_scenario(mutant: str | None) -> Value | None:
    """{1..5}, R = 3; k's group {y,a,b} becomes {a,b,6} when 6 is added, and {y,a,b}
    again when 6 is removed. k is created (y accepts it), 6 is added (the catch-up moves
    k to {a,b,6}), k is deleted and its tombstone collected on {a,b,6} (rows gone, floors
    raised). 6 is removed: y's install ack of that change's mid config arrives only after
    the fence held (it gets the floors in the simulator's second install loop), so k is
    listed by nobody and not caught up. Then a read at the end config prepares {y, a}.
    Returns the value that read builds on (k must read as deleted)."""
    key, g, g2 = _swapping_key()
    (y,) = g - g2
    a, _b = sorted(g & g2)
    old = Config.stable(0, S, R)
    accs = _acceptors(mutant, PLUS6, old)
    everyone = sorted(PLUS6)
    assert _round(accs, old, key, Ballot(1, 101), g, g, _create(b"v1")) is not None
    mid1, end1 = change_configs(old, PLUS6)
    _, listed = _install(accs, mid1, old, everyone, False)
    assert key in listed
    assert _round(accs, mid1, key, Ballot(2, 99), g, None, lambda v: v) is not None
    _install(accs, end1, mid1, everyone, False)
    deleted = _round(accs, end1, key, Ballot(3, 101), g2, g2,
                     lambda v: Value(v.version + 1, None) if v.exists else None)
    assert deleted is not None
    # Collection as the simulator's collector does it: the tombstone accepted at one
    # ballot by every acceptor of the group, then Collect.
    gc = Ballot(4, 98)
    assert _round(accs, end1, key, gc, g2, g2, lambda v: v) == deleted
    for i in g2:
        accs[i].handle(end1, Collect(key, gc, deleted.version))
        assert key not in accs[i].rows
    assert key in accs[y].rows  # y left k's group with its row
    mid2, end2 = change_configs(end1, S)
    order = [i for i in everyone if i != y]
    acked, listed = _install(accs, mid2, end1, order, False)
    assert y not in acked and key not in listed
    floors: dict[int, Floor] = {}
    for i in acked:
        for bucket, floor in accs[i].floors.items():
            floors[bucket] = floors.get(bucket, NO_FLOOR).merged(floor)
    r = accs[y].handle(mid2, InstallReq(mid2, tuple(sorted(floors.items()))))
    assert isinstance(r, InstallAck) and r.epoch == mid2.epoch  # late: not listed
    _install(accs, end2, mid2, order, False)
    assert key_quorums(end2, key).prepare.acceptors == g
    return _round(accs, end2, key, Ballot(5, 103), {y, a}, {y, a}, lambda v: v)


def test_rows_dropped_on_joining_a_group_keep_a_collected_key_deleted() -> None:
    v = _stale_row_scenario(None)
    assert v is not None and not v.exists


def test_mutant_group_keep_stale_rows_resurrects_a_collected_key() -> None:
    # The mutant: y's row of k (v1, accepted before the first change) outranks the floors
    # of a and b, and the read brings the deleted value back.
    v = _stale_row_scenario("group-keep-stale-rows")
    assert v is not None and v.exists and v.data == b"v1"
