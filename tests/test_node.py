"""The node (paxoskv/node.py) with in-memory storage and a scripted transport.

Method: no sockets; the transport answers hellos the way a peer would, so these tests pin
what the node does with verdicts, frames and deadlines. The real-process tests in
tests/integration cover the same paths end to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import warnings
from typing import Any

import pytest
from dictstorage import SweepListings

from paxoskv.config import NodeConfig, PeerSpec
from paxoskv.core.acceptor import EMPTY_STATE, AcceptorState
from paxoskv.core.ballot import Ballot
from paxoskv.core.errors import NoQuorum, UnknownOutcome
from paxoskv.core.identity import PeerRecord
from paxoskv.core.messages import Accept, Accepted, Forward, Forwarded, Prepare, Unavailable
from paxoskv.core.proposer import ProposerRound
from paxoskv.core.register import Set, Value
from paxoskv.node import Node, ProposerRules
from paxoskv.storage.base import NodeIdentity
from paxoskv.transport.base import PeerNotReached, PeerUnreachable, Refusal
from paxoskv.transport.codec import Sender


class _Storage(SweepListings):
    def __init__(self, meta: dict[str, str] | None = None) -> None:
        self.meta = dict(meta or {})
        self.data: dict[str, AcceptorState] = {}
        self.fail = False

    def load(self, key: str) -> AcceptorState:
        return self.data.get(key, EMPTY_STATE)

    peek = load

    def has_row(self, key: str) -> bool:
        return key in self.data

    async def save(self, key: str, state: AcceptorState) -> None:
        if self.fail:
            raise OSError("disk full")
        self.data[key] = state

    def save_soon(self, key: str, state: AcceptorState) -> asyncio.Future[None]:
        return asyncio.ensure_future(self.save(key, state))

    def keys(self, prefix: str, after: str | None, limit: int) -> list[str]:
        return sorted(k for k in self.data if k.startswith(prefix)
                      and (after is None or k > after))[:limit]

    def key_count(self) -> int:
        return len(self.data)

    def get_meta(self, name: str) -> str | None:
        return self.meta.get(name)

    async def set_meta(self, name: str, value: str) -> None:
        self.meta[name] = value

    async def close(self) -> None: ...


class _Transport:
    """Answers every heartbeat with ``verdict`` (as a peer of the same membership)."""

    def __init__(self, fingerprint: str, verdict: str = "ok", **extra: Any) -> None:
        self.fingerprint, self.verdict, self.extra = fingerprint, verdict, extra
        self.sender: Sender | None = None

    def set_sender(self, sender: Sender) -> None:
        self.sender = sender

    async def send(self, peer: int, msg: Any, deadline: float) -> Any:
        raise AssertionError("unused")

    async def hello(self, peer: int, info: dict[str, Any]) -> dict[str, Any]:
        return {"cluster_id": "c", "node_id": peer, "fingerprint": self.fingerprint,
                "verdict": self.verdict, "detail": "scripted", "version": "x", **self.extra}

    async def list_keys(self, peer: int, prefix: str, after: str | None, limit: int) -> Any:
        return [], False

    async def close(self) -> None: ...


PEERS = {i: PeerSpec(i, f"http://127.0.0.1:{7000 + i}") for i in (1, 2, 3)}


def _node(verdict: str = "ok", meta: dict[str, str] | None = None, rejoin: bool = False,
          proposer_rules: ProposerRules | None = None, **extra: Any
          ) -> tuple[Node, _Storage, _Transport]:
    config = NodeConfig(1, PEERS, cluster_id="c", rejoin=rejoin)
    storage = _Storage(meta)
    transport = _Transport(config.fingerprint(), verdict, **extra)
    node = Node(config, NodeIdentity("c", 1, "d1", 2, False), storage, transport,
                proposer_rules=proposer_rules)
    return node, storage, transport


def _hello(node: Node, peer: int, data: str, incarnation: int, boot: str,
           **over: Any) -> dict[str, Any]:
    return {"cluster_id": "c", "node_id": peer, "data_id": data, "incarnation": incarnation,
            "boot_id": boot, "fingerprint": node.fingerprint, "acceptor": True,
            "rejoin": False, **over}


def test_ready_needs_peers_that_reach_us_too() -> None:
    """Goal: a restarted pod that reaches its peers, while they cannot reach it yet (stale
    DNS), is not ready; once one peer's heartbeat arrives it is (quorum 2 of 3)."""
    async def run() -> None:
        node, _, _ = _node()
        await node.start()
        await node.heartbeat_once()
        assert node.acceptor_mode == "normal"
        assert node.quorum_reachable()
        assert not node.ready()
        reply = await node.on_hello(_hello(node, 2, "d2", 1, "b2"))
        assert reply["verdict"] == "ok"
        assert node.ready()
    asyncio.run(run())


@pytest.mark.parametrize(("verdict", "mode", "identity"), [
    ("ok", "normal", "verified"),
    ("amnesia", "amnesia", "refused"),
    ("refused", "refused", "refused"),
    ("in_use", "verifying", "refused"),
])
def test_hello_verdicts_drive_the_identity_machine(verdict: str, mode: str,
                                                   identity: str) -> None:
    """Goal: what peers say about this process decides its mode; a permanent refusal is
    written to disk so a restart cannot shake it off."""
    async def run() -> None:
        node, storage, _ = _node(verdict)
        await node.start()
        await node.heartbeat_once()
        assert (node.acceptor_mode, node.machine.identity) == (mode, identity)
        assert bool(storage.meta.get("refused")) == (verdict == "refused")
    asyncio.run(run())


def test_raise_verdict_lifts_the_incarnation_before_any_ballot() -> None:
    """Goal: peers that remember incarnation 9 of this node id make it take 10, durably,
    and its frames carry the new one."""
    async def run() -> None:
        node, storage, transport = _node("raise", floor=9)
        await node.start()
        await node.heartbeat_once()
        assert node.identity.incarnation == 10
        assert storage.meta["incarnation"] == "10"
        assert transport.sender is not None and transport.sender.record.incarnation == 10
        assert node.machine.identity == "verifying"
    asyncio.run(run())


def test_frames_only_from_the_remembered_process() -> None:
    """Goal: a frame is served only from the exact process a hello made us remember: not
    from another boot of the same incarnation, nor from another membership."""
    async def run() -> None:
        node, _, _ = _node()
        with pytest.raises(Refusal):
            node.admit(Sender(2, PeerRecord("d2", 1, "b2"), node.fingerprint))
        await node.on_hello(_hello(node, 2, "d2", 1, "b2"))
        node.admit(Sender(2, PeerRecord("d2", 1, "b2"), node.fingerprint))
        with pytest.raises(Refusal):
            node.admit(Sender(2, PeerRecord("d2", 1, "other"), node.fingerprint))
        with pytest.raises(Refusal):
            node.admit(Sender(2, PeerRecord("d2", 1, "b2"), "another-membership"))
    asyncio.run(run())


def test_hello_from_a_restored_copy_is_refused() -> None:
    """Goal: a peer presenting an incarnation it already used (another boot) is refused,
    and so are its frames; a genuine restart (higher incarnation) is welcome."""
    async def run() -> None:
        node, storage, _ = _node()
        assert (await node.on_hello(_hello(node, 3, "d3", 5, "a")))["verdict"] == "ok"
        assert storage.meta["peer.3"] == "d3 5 a"
        node.heard_from.clear()  # the old process has gone quiet
        assert (await node.on_hello(_hello(node, 3, "d3", 5, "b")))["verdict"] == "refused"
        assert node.peer_health[3].refused
        assert (await node.on_hello(_hello(node, 3, "d3", 6, "c")))["verdict"] == "ok"
        assert node.peer_health[3].refused is None
    asyncio.run(run())


def test_fencing_acceptor_answers_nothing_and_expired_messages_are_dropped() -> None:
    """Goal: a rejoining acceptor refuses accepts and prepares while it fences (the rejoin
    marker is on disk first); a normal one drops a message whose deadline has passed."""
    async def run() -> None:
        node, storage, _ = _node(rejoin=True)
        await node.start()
        assert storage.meta["rejoin"] == "1"
        loop = asyncio.get_running_loop()
        accept = Accept("k", Ballot(1, 2, 1), Value(1, b"v"))
        reply = await node.handle(accept, loop.time() + 5)
        assert isinstance(reply, Unavailable)
        assert "fencing" in reply.reason
        normal, _, _ = _node()
        await normal.start()
        await normal.heartbeat_once()
        reply = await normal.handle(Prepare("k", Ballot(1, 2, 1)), loop.time() - 0.001)
        assert isinstance(reply, Unavailable)
        assert "expired" in reply.reason
        reply = await normal.handle(accept, loop.time() + 5)
        assert reply == Accepted("k", Ballot(1, 2, 1))
    asyncio.run(run())


def test_a_rejoin_marker_on_disk_survives_a_restart_without_the_flag() -> None:
    """Goal: a rejoin interrupted by a crash continues at the next start, flag or not."""
    async def run() -> None:
        node, _, _ = _node(meta={"rejoin": "1"})
        assert node.acceptor_mode == "fencing"
        done, _, _ = _node(meta={"rejoin": "", "refused": "restored copy"})
        assert done.acceptor_mode == "refused"
    asyncio.run(run())


def test_own_storage_failure_is_unavailable_not_a_crash() -> None:
    """Goal: our own acceptor's disk error is an Unavailable reply to our proposer (so an
    accept that may have gone out ends as "unknown", 504), never an exception."""
    async def run() -> None:
        node, storage, _ = _node()
        await node.start()
        await node.heartbeat_once()
        storage.fail = True
        loop = asyncio.get_running_loop()
        _, reply = await node._ask(1, Prepare("k", Ballot(1, 1, 1)), loop.time() + 1)
        assert isinstance(reply, Unavailable)
        assert "storage" in reply.reason
    asyncio.run(run())


def test_key_pages_never_drop_keys_that_were_only_promised() -> None:
    """Goal: a page holds every key storage returned, even one with a promise and no
    accepted value; otherwise "more" says false too early and a rejoin stops listing half
    way (found by the chaos suite: acknowledged writes lost after a disk loss).

    Method: keys a, b (promised only), c; pages of 2 through the real PeerServer."""
    from paxoskv.transport.server import PeerServer

    async def run() -> None:
        node, storage, _ = _node()
        await node.start()
        await node.heartbeat_once()
        value = Value(1, b"v")
        storage.data["a"] = AcceptorState(Ballot(1, 1, 1), Ballot(1, 1, 1), value)
        storage.data["b"] = AcceptorState(Ballot(2, 1, 1), Ballot.ZERO, Value(0, None))
        storage.data["c"] = AcceptorState(Ballot(1, 1, 1), Ballot(1, 1, 1), value)
        server = PeerServer(node, "s")
        seen: list[str] = []
        after: str | None = None
        for _ in range(5):
            query = {"limit": "2"} if after is None else {"limit": "2", "after": after}
            status, body = await server.keys("Bearer s", query)
            assert status == 200
            import orjson
            page = orjson.loads(body)
            seen += [k for k, _, _ in page["keys"]]
            if not page["more"]:
                break
            after = page["keys"][-1][0]
        assert seen == ["a", "b", "c"]
    asyncio.run(run())


def test_records_passed_on_by_peers_refuse_a_restored_copy() -> None:
    """Goal: a node that never heard node 3's newer start still refuses node 3's restored
    older copy, because node 2 passed on what it saw (the gap the 1000-seed simulation
    found when the only peer that knew was cut off).

    Method: node 1 knows node 3 at incarnation 5; node 2's hello says it saw incarnation 7;
    node 3 then says hello with incarnation 6 from a new boot (the restored copy)."""
    async def run() -> None:
        node, storage, _ = _node()
        assert (await node.on_hello(_hello(node, 3, "d3", 5, "a")))["verdict"] == "ok"
        node.heard_from.clear()
        hello2 = _hello(node, 2, "d2", 1, "b2", records={"3": "d3 7 c", "1": "d1 9 x"})
        assert (await node.on_hello(hello2))["verdict"] == "ok"
        assert storage.meta["peer.3"] == "d3 7 c"
        assert node.identity.incarnation == 2  # what peers say of us is not taken as gossip
        assert (await node.on_hello(_hello(node, 3, "d3", 6, "r")))["verdict"] == "refused"
        older = _hello(node, 2, "d2", 1, "b2", records={"3": "d3 4 old"})
        await node.on_hello(older)
        assert storage.meta["peer.3"] == "d3 7 c"  # an older record never replaces a newer
    asyncio.run(run())


def test_refusal_and_rejoin_series_exist_from_the_start() -> None:
    """Goal: dashboards and alerts see 0, not "no data", for paxoskv_peer_refused and
    paxoskv_rejoin_keys_total before anything happened (the e2e Prometheus step requires
    every dashboard query to return data)."""
    from prometheus_client import CollectorRegistry, generate_latest

    from paxoskv.metrics import PromMetrics

    registry = CollectorRegistry()
    metrics = PromMetrics(registry)
    config = NodeConfig(1, PEERS, cluster_id="c")
    Node(config, NodeIdentity("c", 1, "d1", 2, False), _Storage(),
         _Transport(config.fingerprint()), metrics=metrics)
    text = generate_latest(registry).decode()
    assert 'paxoskv_peer_refused{peer="2"} 0.0' in text
    assert 'paxoskv_peer_refused{peer="3"} 0.0' in text
    assert 'paxoskv_rejoin_keys_total{result="checked"} 0.0' in text
    assert 'paxoskv_rejoin_keys_total{result="caught_up"} 0.0' in text


class _SplitTransport(_Transport):
    """Peer 2 answers ``verdict``; peer 3 does not answer at all."""

    async def hello(self, peer: int, info: dict[str, Any]) -> dict[str, Any]:
        if peer == 3:
            from paxoskv.transport.base import PeerUnreachable
            raise PeerUnreachable("down")
        return await super().hello(peer, info)


def _split_node(meta: dict[str, str]) -> Node:
    config = NodeConfig(1, PEERS, cluster_id="c")
    return Node(config, NodeIdentity("c", 1, "d1", 2, False), _Storage(meta),
                _SplitTransport(config.fingerprint()))


def test_a_fresh_directory_needs_confirmations_that_meet_every_earlier_one() -> None:
    """Goal: an acceptor on a directory never confirmed before is not let in by one peer
    that happens to have no record of it while the peer that remembers it is silent (it
    could be an empty disk of a node that voted before); a known directory restarting with
    one peer down is (quorum 2 of 3 with itself).

    Method: peer 2 says ok, peer 3 is unreachable, the silent-peer wait is over."""
    async def run() -> None:
        fresh = _split_node({})
        await fresh.start()
        fresh.membership._started_at = -1e9
        await fresh.heartbeat_once()
        assert (fresh.acceptor_mode, fresh.machine.identity) == ("verifying", "verifying")
        known = _split_node({"verified": "1"})
        await known.start()
        known.membership._started_at = -1e9
        await known.heartbeat_once()
        assert (known.acceptor_mode, known.machine.identity) == ("normal", "verified")
    asyncio.run(run())


def test_a_refused_process_never_displaces_the_real_one() -> None:
    """Goal: a refused copy that keeps restarting (each start raises its incarnation) is
    refused by peers and never recorded, so it can never evict the node's real process;
    a hello whose node id is a boolean is not taken for node 1."""
    async def run() -> None:
        node, storage, _ = _node()
        assert (await node.on_hello(_hello(node, 3, "d3", 5, "a")))["verdict"] == "ok"
        node.heard_from.clear()
        reply = await node.on_hello(_hello(node, 3, "d3", 99, "copy", refused=True))
        assert reply["verdict"] == "refused"
        assert storage.meta["peer.3"] == "d3 5 a"
        assert (await node.on_hello(_hello(node, True, "d", 1, "b")))["verdict"] == "foreign"
    asyncio.run(run())


def test_preferred_proposer_is_stable_spread_and_moves_only_a_lost_nodes_keys() -> None:
    """Goal: rendezvous hashing: every node picks the same proposer for a key from the same
    live set, keys spread over all live proposers, and a proposer going down moves only
    its own keys (the others keep their prepared ballots)."""
    node, _, _ = _node()
    for pid in (2, 3):
        node.peer_health[pid].up = True
    keys = [f"k{i}" for i in range(3000)]
    before = {k: node.preferred_proposer(k) for k in keys}
    counts = {pid: sum(1 for v in before.values() if v == pid) for pid in (1, 2, 3)}
    assert all(800 < c < 1200 for c in counts.values()), counts
    node.peer_health[3].up = False
    after = {k: node.preferred_proposer(k) for k in keys}
    assert all(after[k] == before[k] for k in keys if before[k] != 3)
    assert all(after[k] in (1, 2) for k in keys)


def test_with_groups_the_preferred_proposer_is_one_of_the_keys_group() -> None:
    """Goal: with acceptor groups (6 nodes, R = 3) a key's writes go to a live proposer of
    its own group, whose acceptor answers without a message; when none of the group is up,
    to another live proposer; every node still agrees and keys still spread. Before, the
    choice ignored the group: in it for about half of the keys."""
    from paxoskv.core.reconfig import group

    peers = {i: PeerSpec(i, f"http://127.0.0.1:{7000 + i}") for i in range(1, 7)}
    config = NodeConfig(1, peers, cluster_id="c", replication_factor=3)
    node = Node(config, NodeIdentity("c", 1, "d1", 2, False), _Storage(),
                _Transport(config.fingerprint()))
    for pid in range(2, 7):
        node.peer_health[pid].up = True
    keys = [f"k{i}" for i in range(3000)]
    chosen = {k: node.preferred_proposer(k) for k in keys}
    assert all(chosen[k] in group(k, range(1, 7), 3) for k in keys)
    counts = {pid: sum(1 for v in chosen.values() if v == pid) for pid in range(1, 7)}
    assert all(350 < c < 650 for c in counts.values()), counts
    key = next(k for k in keys if 1 not in group(k, range(1, 7), 3))
    for pid in group(key, range(1, 7), 3):
        node.peer_health[pid].up = False
    assert node.preferred_proposer(key) not in group(key, range(1, 7), 3)


class _ForwardTransport(_Transport):
    """Answers forwards with a scripted reply, or raises a scripted exception."""

    def __init__(self, fingerprint: str, answer: Any) -> None:
        super().__init__(fingerprint)
        self.answer = answer
        self.forwards: list[Any] = []

    async def send(self, peer: int, msg: Any, deadline: float) -> Any:
        if not isinstance(msg, Forward):
            raise PeerUnreachable("acceptors do not answer in this test")
        self.forwards.append((peer, msg))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def _forwarding_node(answer: Any) -> tuple[Node, _ForwardTransport, str]:
    config = NodeConfig(1, PEERS, cluster_id="c")
    transport = _ForwardTransport(config.fingerprint(), answer)
    node = Node(config, NodeIdentity("c", 1, "d1", 2, False), _Storage(None), transport)
    node.membership.machine.identity = "verified"
    for pid in (2, 3):
        node.peer_health[pid].up = True
        node.membership._records[pid] = PeerRecord(f"d{pid}", 1, f"boot{pid}")
    key = next(f"k{i}" for i in range(100) if node.preferred_proposer(f"k{i}") != 1)
    return node, transport, key


def test_a_forwarded_write_reports_the_proposers_outcome() -> None:
    """Goal: a write whose key another node prefers is sent there once, with the client's
    request id, and the outcome it reports is the caller's."""
    async def main() -> None:
        node, transport, key = _forwarding_node(None)
        transport.answer = Forwarded(key, "applied", 7, True)
        outcome = await node.execute(key, Set(b"v"), "rid-1")
        assert (outcome.kind, outcome.value.version, outcome.value.exists) == ("applied", 7, True)
        [(peer, msg)] = transport.forwards
        assert peer == node.preferred_proposer(key)
        assert msg == Forward(key, Set(b"v"), "rid-1", f"boot{peer}")
    asyncio.run(main())


@pytest.mark.parametrize(("answer", "error"), [
    (Forwarded("K", None, error="no_quorum", detail="x"), NoQuorum),
    (Forwarded("K", None, error="unknown", detail="x"), UnknownOutcome),
])
def test_a_forwarded_write_that_failed_there_is_not_run_again(answer: Forwarded,
                                                               error: type[Exception]) -> None:
    """Goal: "definitely not applied" and "unknown" from the preferred proposer are the
    caller's answer; the write is not run a second time here."""
    async def main() -> None:
        node, transport, key = _forwarding_node(None)
        transport.answer = dataclasses.replace(answer, key=key)
        with pytest.raises(error):
            await node.execute(key, Set(b"v"))
    asyncio.run(main())


def test_a_lost_forward_makes_a_local_failure_unknown() -> None:
    """Goal: a forward that may have reached the proposer (sent, no answer) leaves the write
    possibly applied there: when the local attempt then fails too (no peer answers here)
    the caller hears "unknown", never "failed"; one that certainly never left is "failed"."""
    async def main(exc: Exception, expected: type[Exception]) -> None:
        node, _, key = _forwarding_node(exc)
        node.config = dataclasses.replace(node.config, request_timeout_s=0.3,
                                          phase_timeout_s=0.1)
        with pytest.raises(expected):
            await node.execute(key, Set(b"v"))
    asyncio.run(main(PeerUnreachable("timed out"), UnknownOutcome))
    asyncio.run(main(PeerNotReached("queue full"), NoQuorum))


def test_a_forward_runs_at_most_once_and_only_in_the_process_it_was_sent_to() -> None:
    """Goal: a second copy of a forwarded write, or a copy that reaches a later process of
    the node, is not run (a rejected condition records nothing, so a second run could
    apply it later); the answers say "duplicate" (it may still run there) and "restarted"
    (it may have run in the earlier process, which is gone)."""
    async def main() -> None:
        node, _, _ = _node()
        node.membership.machine.identity = "verified"
        stale = await node.handle(Forward("k", Set(b"v"), "r1", "an-old-boot"), 1e9)
        assert isinstance(stale, Forwarded) and stale.error == "restarted"
        first = await node.handle(Forward("k", Set(b"v"), "r2", node.boot_id), 1e9)
        assert isinstance(first, Forwarded) and first.error != "duplicate"
        again = await node.handle(Forward("k", Set(b"v"), "r2", node.boot_id), 1e9)
        assert isinstance(again, Forwarded) and again.error == "duplicate"
    asyncio.run(main())


class _SlowForwardTransport(_ForwardTransport):
    """Answers a forward "restarted" after ``delay_s``; acceptors never answer in time."""

    def __init__(self, fingerprint: str, delay_s: float) -> None:
        super().__init__(fingerprint, None)
        self.delay_s = delay_s

    async def send(self, peer: int, msg: Any, deadline: float) -> Any:
        if isinstance(msg, Forward):
            await asyncio.sleep(self.delay_s)
            return Forwarded(msg.key, None, error="restarted", detail="scripted")
        await asyncio.sleep(max(0.0, deadline - asyncio.get_running_loop().time()))
        raise PeerUnreachable("no answer")


def test_a_request_takes_no_longer_than_its_timeout_across_a_forward_and_a_local_run(
        ) -> None:
    """Goal: a write that is forwarded, then run here, is answered within its one request
    timeout, not a forward's wait plus a whole timeout more.

    Method: the forward answers "restarted" (run it here) after 0.45 s of a 1 s request
    timeout, and no peer acceptor answers, so the local attempt can only time out. The
    answer is "unknown" (the earlier process may have applied it) after about 1 s; with a
    fresh timeout for the local run it took 1.45 s (tried).
    """
    async def main() -> float:
        node, _, key = _forwarding_node(None)
        node.transport = _SlowForwardTransport(node.fingerprint, 0.45)
        node.config = dataclasses.replace(node.config, request_timeout_s=1.0,
                                          phase_timeout_s=0.1)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(UnknownOutcome):
            await node.execute(key, Set(b"v"))
        return loop.time() - started
    elapsed = asyncio.run(main())
    assert 0.9 <= elapsed < 1.25, elapsed


class _BrokenRound(ProposerRound):
    """A round whose construction fails: stands in for a bug in the proposer's code."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("a bug")


def test_an_unexpected_error_in_a_round_fails_its_requests_not_the_node() -> None:
    """Goal: a bug that raises inside a key's rounds answers that key's waiting requests
    with an error (503: nothing was sent) and leaves the node running; without the guard
    the exception ended the node's task group, stopping heartbeats and every other task.

    Method: a node runs (``run``, its task group) with a round class that raises; a write
    fails with NoQuorum; the node's run task is still running afterwards, and the key
    takes the next write's queue entry (no driver left behind).
    """
    async def main() -> None:
        node, _, _ = _node(proposer_rules=ProposerRules(round=_BrokenRound))
        runner = asyncio.create_task(node.run())
        while node._group is None:
            await asyncio.sleep(0.01)
        node.membership.machine.identity = "verified"
        for attempt in range(2):
            with pytest.raises(NoQuorum):
                await node.execute("k", Set(b"v"), forward=False)
            await asyncio.sleep(0.05)
            assert not runner.done(), f"the node stopped after attempt {attempt}"
            assert "k" not in node._key_drivers
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner
    asyncio.run(main())


def test_work_after_an_answer_fails_alone_and_shutdown_waits_for_it() -> None:
    """Goal: work that completes an answered request (an Idempotency-Key's record) runs in
    the node's task group, yet an unexpected error in it is logged and leaves the node
    running (it would otherwise end the task group, as a failed round did before its
    guard); a shutdown waits for such work, a bounded time.

    Method: a running node; one such task raises RuntimeError, another waits on an event;
    the node's run task is still running; ``settle_after_answer`` gives up on the waiting
    one after its timeout (1 left), and returns 0 once it is released."""
    async def main() -> None:
        node, _, _ = _node()
        runner = asyncio.create_task(node.run())
        while node._group is None:
            await asyncio.sleep(0.01)
        release = asyncio.Event()

        async def broken() -> None:
            raise RuntimeError("a bug")

        async def waiting() -> None:
            await release.wait()

        node.spawn_after_answer("broken", broken())
        node.spawn_after_answer("waiting", waiting())
        await asyncio.sleep(0.05)
        assert not runner.done(), "the node stopped"
        assert await node.settle_after_answer(0.1) == 1
        release.set()
        assert await node.settle_after_answer(1.0) == 0
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner
    asyncio.run(main())


def test_a_timed_out_request_leaves_no_unretrieved_exception() -> None:
    """Goal: a caller that stopped waiting (timeout) leaves nothing for asyncio to report
    as "exception was never retrieved" when its key's rounds later fail.

    Method: a write times out while no acceptor answers; the rounds go on failing after
    it; the loop's exception handler must see nothing, also after a garbage collection.
    """
    import gc

    reported: list[dict[str, Any]] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: reported.append(ctx))
        node, _, key = _forwarding_node(None)
        node.transport = _SlowForwardTransport(node.fingerprint, 0.0)
        node.config = dataclasses.replace(node.config, request_timeout_s=0.3,
                                          phase_timeout_s=0.1, forward_writes=False)
        with pytest.raises(NoQuorum):
            await node.execute(key, Set(b"v"))
        await asyncio.sleep(0.3)
        await node.stop()
        gc.collect()
        await asyncio.sleep(0)
    asyncio.run(main())
    assert not reported, reported


def test_a_key_driver_cancelled_before_its_first_step_leaves_nothing_behind() -> None:
    """Goal: a key's round driver cancelled before it ever ran (its cleanup never runs)
    fails the changes queued for it at once and frees the key; before, the key kept a
    driver entry serving nobody, so this and every later change to the key waited out its
    whole timeout.

    Method: queue a write, cancel the key's driver task before its first step; the write
    fails with NoQuorum well inside its 2 s timeout and the key has no driver or queue.
    """
    async def main() -> float:
        node, _, _ = _node()
        node.membership.machine.identity = "verified"
        node.config = dataclasses.replace(node.config, request_timeout_s=2.0)
        loop = asyncio.get_running_loop()
        started = loop.time()
        write = asyncio.create_task(node.execute("k", Set(b"v"), forward=False))
        await asyncio.sleep(0)  # the write queues itself and creates the driver task
        node._key_drivers["k"].cancel()
        with pytest.raises(NoQuorum):
            await write
        assert "k" not in node._key_drivers and "k" not in node._key_queues
        return loop.time() - started
    assert asyncio.run(main()) < 1.0



class _GatedStorage(_Storage):
    """Saves complete only when ``pump`` says so; records each promised ballot saved."""

    def __init__(self) -> None:
        super().__init__()
        self.saved: list[int] = []
        self.pending: list[asyncio.Future[None]] = []

    def save_soon(self, key: str, state: AcceptorState) -> asyncio.Future[None]:
        self.data[key] = state
        self.saved.append(state.ballot_promised.counter)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending.append(done)
        return done

    async def pump(self, *replies: Any) -> list[Any]:
        """Complete saves as they come until every reply is in (bounded: 50 loop turns)."""
        waiting = [asyncio.ensure_future(r) for r in replies]
        for _ in range(50):
            for fut in self.pending:
                if not fut.done():
                    fut.set_result(None)
            if all(w.done() for w in waiting):
                break
            await asyncio.sleep(0)
        assert all(w.done() for w in waiting), f"replies still waiting; saved {self.saved}"
        return [w.result() for w in waiting]


async def _acceptor() -> tuple[Node, _GatedStorage, float]:
    """A serving node whose storage is gated (``_GatedStorage``), and a message deadline."""
    node, _, _ = _node()
    await node.start()
    await node.heartbeat_once()
    storage = _GatedStorage()
    node.storage = storage  # type: ignore[assignment]
    return node, storage, asyncio.get_running_loop().time() + 5


def _prepare(counter: int) -> Prepare:
    return Prepare("k", Ballot(counter, 2, 1))


def _kinds(replies: list[Any]) -> list[str]:
    return [type(r).__name__ for r in replies]


def test_a_contended_key_is_served_in_arrival_order() -> None:
    """Goal: messages for a held key are served in the order they arrived. Before, a
    message that found its key held queued only once its coroutine first ran; a later
    message arriving after the key was freed but before that first step took the key
    first, so the earlier one (a lower ballot) was refused with an extra Nack.

    Method: A holds "k" (its save pending). A's save completes (its release is pending
    in the loop); B arrives (key still held) and is handed to the loop the way the peer
    server's gather does; C arrives after the release ran but before B's first step. The
    saves must be A, B, C and every reply a promise."""
    async def main() -> None:
        node, storage, deadline = await _acceptor()
        a = node.handle_soon(_prepare(1), deadline)
        storage.pending[0].set_result(None)  # A's release now waits in the loop
        later: list[Any] = []
        asyncio.get_running_loop().call_soon(
            lambda: later.append(node.handle_soon(_prepare(3), deadline)))
        b = asyncio.ensure_future(node.handle_soon(_prepare(2), deadline))  # type: ignore[arg-type]
        await asyncio.sleep(0)
        assert len(later) == 1  # C has arrived
        replies = await storage.pump(a, b, *later)
        assert storage.saved == [1, 2, 3]
        assert _kinds(replies) == ["Promise"] * 3
        assert not node._acceptor_locks._held
    asyncio.run(main())


def test_a_queued_message_cancelled_before_its_first_step_frees_its_turn() -> None:
    """Goal: a message queued for a held key whose task is cancelled before it ever ran
    (its body, and any cleanup in it, never runs) gives its turn up: the key goes on to
    the next message and ends free, never left held.

    Method: A holds "k"; B queues and is cancelled at once; C queues; A's save completes.
    C is served and "k" ends free."""
    async def main() -> None:
        node, storage, deadline = await _acceptor()
        a = node.handle_soon(_prepare(1), deadline)
        b = asyncio.ensure_future(node.handle_soon(_prepare(2), deadline))  # type: ignore[arg-type]
        b.cancel()
        c = node.handle_soon(_prepare(3), deadline)
        replies = await storage.pump(a, c)
        assert b.cancelled()
        assert storage.saved == [1, 3]
        assert _kinds(replies) == ["Promise"] * 2
        assert not node._acceptor_locks._held
    asyncio.run(main())


def test_a_queued_message_cancelled_as_the_key_is_handed_to_it_passes_it_on() -> None:
    """Goal: a message cancelled after the key was handed to it, before it could use it,
    passes the key on to the next message instead of keeping it forever.

    Method: A holds "k"; B and C queue and wait on their turns; A's release hands the key
    to B, which is cancelled before it resumes. C is served and "k" ends free."""
    async def main() -> None:
        node, storage, deadline = await _acceptor()
        a = node.handle_soon(_prepare(1), deadline)
        b = asyncio.ensure_future(node.handle_soon(_prepare(2), deadline))  # type: ignore[arg-type]
        c = asyncio.ensure_future(node.handle_soon(_prepare(3), deadline))  # type: ignore[arg-type]
        await asyncio.sleep(0)  # B and C wait on their turns
        storage.pending[0].set_result(None)
        await asyncio.sleep(0)  # A's release ran: the key is B's, B not yet resumed
        assert not b.done()
        b.cancel()
        replies = await storage.pump(a, c)
        assert b.cancelled()
        assert storage.saved == [1, 3]
        assert _kinds(replies) == ["Promise"] * 2
        assert not node._acceptor_locks._held
    asyncio.run(main())


def test_a_queued_message_nobody_awaits_cannot_keep_its_key() -> None:
    """Goal: a caller that drops the awaitable of a queued message (never awaits it)
    cannot leave the key held.

    Method: A holds "k"; B queues and its awaitable is dropped (and garbage collected);
    C queues; A's save completes. C is served and "k" ends free."""
    import gc

    async def main() -> None:
        node, storage, deadline = await _acceptor()
        a = node.handle_soon(_prepare(1), deadline)
        node.handle_soon(_prepare(2), deadline)
        gc.collect()
        c = node.handle_soon(_prepare(3), deadline)
        gc.collect()
        replies = await storage.pump(a, c)
        assert storage.saved[-1] == 3
        assert _kinds(replies) == ["Promise"] * 2
        assert not node._acceptor_locks._held
    with warnings.catch_warnings():  # a dropped coroutine's warning is not the point here
        warnings.simplefilter("ignore", RuntimeWarning)
        asyncio.run(main())


def test_stop_cancels_the_messages_still_waiting_for_their_key() -> None:
    """Goal: a node that stops leaves no acceptor message waiting for a key behind (its
    task would outlive the node and run against closed storage).

    Method: A holds "k" with a save that never completes; B queues; stop the node. B is
    cancelled and nothing is left queued for "k"."""
    async def main() -> None:
        node, storage, deadline = await _acceptor()
        node.handle_soon(_prepare(1), deadline)
        b = asyncio.ensure_future(node.handle_soon(_prepare(2), deadline))  # type: ignore[arg-type]
        await asyncio.sleep(0)
        await asyncio.wait_for(node.stop(), 1.0)
        assert b.cancelled()
        assert storage.saved == [1]
        assert not node._acceptor_locks._held["k"]  # held by A alone, no turn queued
    asyncio.run(main())


@pytest.mark.parametrize(("verdict", "recorded"), [("ok", True), ("refused", False),
                                                   ("amnesia", False)])
def test_only_a_normal_acceptor_records_that_its_directory_is_current(
        verdict: str, recorded: bool) -> None:
    """Goal: ``alive_at`` (what a rebuild after a quorum loss judges a copy's age by,
    docs/gc.md) is written by a normal acceptor, idle or not, and never by a refused or
    amnesic one: their rows may be older than their clock, and a copy of them must not
    look young."""
    async def run() -> None:
        node, storage, _ = _node(verdict)
        node.clock_ms = lambda: 1_234_567
        await node.start()
        await node.heartbeat_once()
        task = asyncio.ensure_future(node.alive_loop())
        await asyncio.sleep(0.05)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert storage.meta.get("alive_at") == ("1234567" if recorded else None), \
            node.acceptor_mode
    asyncio.run(run())
