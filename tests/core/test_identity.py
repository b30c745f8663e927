"""The identity rules (paxoskv/core/identity.py): the acceptor mode machine and hellos."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from paxoskv.core.identity import (
    SERVES,
    TRANSITIONS,
    CaughtUp,
    Confirmed,
    Event,
    FenceElapsed,
    HelloClaim,
    IdentityMachine,
    InUse,
    LostState,
    Mode,
    PeerRecord,
    RaiseIncarnation,
    Refused,
    Welcome,
    judge_frame,
    judge_hello,
)


def _run(machine: IdentityMachine, *events: Event) -> list[tuple[tuple[str, str], ...]]:
    persisted = []
    for event in events:
        step = machine.apply(event)
        persisted.append(step.persist)
        machine.commit(event, step)
    return persisted


def test_every_mode_has_a_row_and_only_normal_counts() -> None:
    """Goal: the table is total over modes; only a normal acceptor counts in a quorum, and
    a catching-up one answers accepts only."""
    assert set(TRANSITIONS) == set(Mode) == set(SERVES)
    assert SERVES[Mode.CATCHING_UP] == frozenset({"accept"})
    assert not SERVES[Mode.FENCING]
    assert [m for m in Mode if IdentityMachine(m).counts_as_acceptor] == [Mode.NORMAL]


def test_start_modes() -> None:
    """Goal: the flag or a marker on disk starts a rejoin (the flag's marker is persisted
    first); a refusal on disk holds; otherwise every start verifies."""
    m, persist = IdentityMachine.start(True, True, False, None, "old refusal")
    assert m.mode is Mode.FENCING
    assert persist == (("rejoin", "1"), ("refused", ""))
    m, persist = IdentityMachine.start(True, False, False, "1", None)
    assert (m.mode, persist) == (Mode.FENCING, ())
    m, _ = IdentityMachine.start(True, False, False, "rebuild", None)
    assert m.rebuild
    m, _ = IdentityMachine.start(True, False, False, "", "restored copy")
    assert (m.mode, m.identity, m.reason) == (Mode.REFUSED, "refused", "restored copy")
    m, _ = IdentityMachine.start(True, False, False, "", "")
    assert m.mode is Mode.VERIFYING
    m, _ = IdentityMachine.start(False, True, False, "1", "x")
    assert m.mode is Mode.NONE


def test_rejoin_path_persists_verified_before_clearing_the_marker() -> None:
    """Goal: fencing -> catching up -> normal, and the marker is cleared last, so a crash
    in between restarts the rejoin rather than serving half caught up."""
    m, _ = IdentityMachine.start(True, True, False, None, None)
    persisted = _run(m, Confirmed(), FenceElapsed(), CaughtUp())
    assert m.mode is Mode.NORMAL
    assert m.identity == "verified"
    assert persisted[-1] == (("verified", "1"), ("rejoin", ""))


def test_rebuild_serves_prepares_after_the_fence() -> None:
    """Goal: after a quorum loss the operator's flag makes the fence end in rebuilding,
    which answers prepares (there is no other quorum to take them)."""
    m, _ = IdentityMachine.start(True, True, True, None, None)
    _run(m, Confirmed(), FenceElapsed())
    assert m.mode is Mode.REBUILDING
    assert "prepare" in SERVES[m.mode]


def test_refusals() -> None:
    """Goal: a refusal is permanent and durable; amnesia keeps the identity refused even if
    a peer that never knew us confirms; "in use" is transient."""
    m = IdentityMachine(Mode.NORMAL, "verified")
    assert _run(m, Refused("restored"), Confirmed()) == [(("refused", "restored"),), ()]
    assert (m.mode, m.identity) == (Mode.REFUSED, "refused")
    m = IdentityMachine(Mode.VERIFYING)
    _run(m, LostState("lost"), Confirmed())
    assert (m.mode, m.identity) == (Mode.AMNESIA, "refused")
    m = IdentityMachine(Mode.VERIFYING)
    _run(m, InUse("busy"))
    assert (m.mode, m.identity, m.reason) == (Mode.VERIFYING, "refused", "busy")
    _run(m, Confirmed())
    assert (m.mode, m.identity, m.reason) == (Mode.NORMAL, "verified", None)


_EVENTS = st.sampled_from([Confirmed(), LostState("l"), Refused("r"), InUse("u")])


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(list(Mode)), st.lists(_EVENTS, max_size=12))
def test_refused_and_amnesia_never_vote_again(start: Mode, events: list[Event]) -> None:
    """Property: once refused or in amnesia, no sequence of peer verdicts makes the node
    serve prepares or accepts again (only a rejoin, a new process, can)."""
    m = IdentityMachine(start)
    locked = False
    for event in events:
        _run(m, event)
        locked = locked or m.mode in (Mode.REFUSED, Mode.AMNESIA)
        if locked:
            assert "prepare" not in SERVES[m.mode]
            assert "accept" not in SERVES[m.mode]
            assert not m.may_propose


A = PeerRecord("d", 5, "boot-a")


def _claim(record: PeerRecord, acceptor: bool = True, rejoin: bool = False) -> HelloClaim:
    return HelloClaim(record, acceptor, rejoin)


def test_judge_hello_table() -> None:
    """Goal: every case of what a peer remembers against what a hello claims."""
    assert judge_hello(None, _claim(A), False) == Welcome(A, True)
    assert judge_hello(A, _claim(A), True) == Welcome(A, False)
    restart = PeerRecord("d", 6, "boot-b")
    assert judge_hello(A, _claim(restart), True) == Welcome(restart, True)
    assert isinstance(judge_hello(A, _claim(PeerRecord("d", 5, "boot-b")), False), Refused)
    assert isinstance(judge_hello(A, _claim(PeerRecord("d", 4, "boot-b")), False), Refused)
    assert judge_hello(A, _claim(PeerRecord("d", 5, "b"), rejoin=True), False) == \
        RaiseIncarnation(5)
    # a second copy of the directory while the first still runs: in use, even to a rejoin
    assert isinstance(judge_hello(A, _claim(PeerRecord("d", 5, "b"), rejoin=True), True),
                      InUse)
    assert isinstance(judge_hello(A, _claim(PeerRecord("d", 4, "b")), True), InUse)
    lost = PeerRecord("e", 1, "boot-c")
    assert isinstance(judge_hello(A, _claim(lost), True), InUse)
    assert isinstance(judge_hello(A, _claim(lost), False), LostState)
    assert judge_hello(A, _claim(lost, rejoin=True), False) == RaiseIncarnation(5)
    assert judge_hello(A, _claim(lost, acceptor=False), False) == RaiseIncarnation(5)
    fresh = PeerRecord("e", 6, "boot-c")
    assert judge_hello(A, _claim(fresh, rejoin=True), False) == Welcome(fresh, True)


def test_judge_frame() -> None:
    """Goal: frames only from the remembered process, exactly."""
    assert judge_frame(A, A)
    assert not judge_frame(None, A)
    assert not judge_frame(A, PeerRecord("d", 5, "other"))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("de"), st.integers(0, 6), st.sampled_from("abc"),
                          st.booleans(), st.booleans()), max_size=15))
def test_remembered_incarnations_never_go_back(hellos: list[tuple[str, int, str, bool,
                                                                  bool]]) -> None:
    """Property: whatever hellos arrive, the record a peer keeps for a node id has an
    incarnation that never decreases, and one (data, incarnation) pair is never welcomed
    from two boots; so two processes can never both issue ballots of one incarnation."""
    known: PeerRecord | None = None
    welcomed: dict[tuple[str, int], str] = {}
    for data, inc, boot, acceptor, rejoin in hellos:
        verdict = judge_hello(known, _claim(PeerRecord(data, inc, boot), acceptor, rejoin),
                              False)
        if isinstance(verdict, Welcome):
            if known is not None:
                assert verdict.record.incarnation >= known.incarnation
            slot = (verdict.record.data_id, verdict.record.incarnation)
            assert welcomed.setdefault(slot, boot) == boot
            known = verdict.record


def test_supersedes_takes_only_a_higher_incarnation() -> None:
    """Goal: a record passed on replaces ours only when its incarnation is higher; the
    highest incarnation is the newest process of a node id."""
    from paxoskv.core.identity import supersedes
    assert supersedes(None, A)
    assert supersedes(A, PeerRecord("e", 6, "x"))
    assert not supersedes(A, PeerRecord("d", 5, "other"))
    assert not supersedes(A, PeerRecord("d", 4, "x"))


def test_a_rebuild_trusts_only_a_data_directory_current_less_than_a_grace_ago() -> None:
    """Goal: a rebuild after a quorum loss runs on a directory's rows only if they were a
    normal acceptor's current state less than the tombstone grace (less the clock margin)
    ago; rows of unknown age are refused; no rows, or no collection, need no check."""
    from paxoskv.core.identity import judge_rebuild_copy, rebuild_copy_bound_s
    grace = 86400.0
    bound = rebuild_copy_bound_s(grace)
    assert grace - 400 < bound < grace - 300
    now = 10_000_000_000
    assert judge_rebuild_copy(True, now - int((bound - 1) * 1000), now, grace) is None
    old = judge_rebuild_copy(True, now - int((bound + 1) * 1000), now, grace)
    assert old is not None and "--tombstone-grace" in old
    assert judge_rebuild_copy(True, None, now, grace) is not None
    assert judge_rebuild_copy(False, None, now, grace) is None, "nothing to bring back"
    assert judge_rebuild_copy(True, None, now, 0.0) is None, "nothing was collected"
    assert judge_rebuild_copy(True, now, now, 200.0) is not None, "grace below the margin"
