"""The node's acceptor-set config (docs/reconfiguration.md, "What the node does"): the
epoch fence on every acceptor message, the durable config row, and proposers learning a
newer config from ``Stale`` refusals. In-memory storage and scripted transports, as in
tests/test_node.py."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import orjson
import pytest
from test_node import PEERS, _GatedStorage, _kinds, _node, _Storage, _Transport

from paxoskv.config import NodeConfig
from paxoskv.core.acceptor import NO_FLOOR, AcceptorState, Floor
from paxoskv.core.ballot import Ballot
from paxoskv.core.messages import (
    Accept,
    Accepted,
    Collect,
    Prepare,
    Promise,
    Query,
    QueryReply,
    Request,
    Stale,
    Unavailable,
)
from paxoskv.core.proposer import Prepared
from paxoskv.core.reconfig import Config, EpochVerdict, change_configs
from paxoskv.core.register import Set, Value
from paxoskv.node import META_CONFIG, AcceptorRules, Node, _PreparedKeys, stored_config
from paxoskv.storage.base import NodeIdentity
from paxoskv.storage.sqlite import SqliteStorage
from paxoskv.transport.base import PeerNotReached

EPOCH0 = Config.stable(0, {1, 2, 3})
MID, END = change_configs(EPOCH0, {1, 2, 3, 4})
WITHOUT_1 = Config.stable(3, {2, 3, 4})


async def _serving() -> tuple[Node, _Storage, float]:
    node, storage, _ = _node()
    await node.start()
    await node.heartbeat_once()
    return node, storage, asyncio.get_running_loop().time() + 5


def test_epoch_0_is_the_flag_configured_set_and_stores_nothing() -> None:
    """Goal: a node that never saw a change holds epoch 0 (its --peers acceptors), writes
    no config row and serves epoch-0 messages as before."""
    async def run() -> None:
        node, storage, deadline = await _serving()
        assert node.epoch_config == EPOCH0 and node.quorum.acceptors == {1, 2, 3}
        reply = await node.handle(Prepare("k", Ballot(1, 2, 1)), deadline)
        assert isinstance(reply, Promise)
        assert META_CONFIG not in storage.meta
    asyncio.run(run())


def test_an_acceptor_adopts_a_newer_config_durably_and_then_refuses_older_epochs() -> None:
    """Goal: a message of a newer epoch makes the acceptor hold that config (the row is
    written before it answers), and from then on a message of an older epoch is refused
    with ``Stale`` carrying its config; a restart on the same storage keeps the epoch."""
    async def run() -> None:
        node, storage, deadline = await _serving()
        reply = await node.handle(Prepare("k", Ballot(1, 2, 1)), deadline, MID)
        assert isinstance(reply, Promise)
        assert orjson.loads(storage.meta[META_CONFIG]) == MID.to_json()
        assert node.epoch_config == MID
        old = await node.handle(Prepare("k", Ballot(5, 2, 1)), deadline)
        assert old == Stale("k", MID)
        assert storage.data["k"].ballot_promised == Ballot(1, 2, 1)  # no vote at epoch 0
        query = await node.handle(Query("k"), deadline)
        assert query == Stale("k", MID)
        again = await node.handle(Prepare("k", Ballot(2, 2, 1)), deadline, MID)
        assert isinstance(again, Promise)
        restarted = Node(node.config, NodeIdentity("c", 1, "d1", 3, False), storage,
                         _Transport(node.fingerprint))
        assert restarted.epoch_config == MID
        assert restarted.quorum.acceptors == {1, 2, 3}  # mid prepares to the old set
        assert restarted.view.accept.acceptors == {1, 2, 3, 4}
    asyncio.run(run())


def test_an_acceptor_its_config_leaves_out_never_votes_again() -> None:
    """Goal: RETIRED: a message under a config that does not name this acceptor is
    refused, and the config is adopted first (durably: the removal is recorded, survives a
    restart, and /v1/status says member: false); then every message is refused, its own
    epoch's too, and its keys are no longer listed (a rejoin must not count it)."""
    async def run() -> None:
        node, storage, deadline = await _serving()
        assert node.key_page("", None, 10) == ([], False)
        reply = await node.handle(Prepare("k", Ballot(1, 2, 1)), deadline, WITHOUT_1)
        assert isinstance(reply, Unavailable) and "retired" in reply.reason
        assert node.epoch_config == WITHOUT_1
        assert orjson.loads(storage.meta[META_CONFIG]) == WITHOUT_1.to_json()
        assert node.status()["acceptor_config"]["member"] is False
        assert not await node.adopt_config(WITHOUT_1)
        assert node.key_page("", None, 10) is None and node.floor_page(-1, 10) is None
        for msg in (Prepare("k", Ballot(2, 2, 1)), Query("k"),
                    Accept("k", Ballot(3, 2, 1), Value(1, b"x")), Collect("k", Ballot(3, 2, 1), 1)):
            got = await node.handle(msg, deadline, WITHOUT_1)
            assert isinstance(got, Unavailable) and "retired" in got.reason, (msg, got)
        assert "k" not in storage.data
    asyncio.run(run())


def test_a_message_queued_for_its_key_is_judged_again_after_an_adoption() -> None:
    """Goal: the fence holds for messages that waited for their key: once a newer config
    is adopted, a message admitted under the older epoch before it is refused when its
    turn comes, not served (its vote would come after the install was acknowledged).

    Method: A (epoch 0) holds "k" with its save pending; B (epoch 0) queues behind it; the
    node adopts MID; then the saves complete. A is a promise, B is Stale."""
    async def run() -> None:
        node, _, _ = _node()
        await node.start()
        await node.heartbeat_once()
        storage = _GatedStorage()
        node.storage = storage  # type: ignore[assignment]
        deadline = asyncio.get_running_loop().time() + 5
        a = node.handle_soon(Prepare("k", Ballot(1, 2, 1)), deadline)
        b = asyncio.ensure_future(node.handle_soon(Prepare("k", Ballot(2, 2, 1)),  # type: ignore[arg-type]
                                                   deadline))
        await asyncio.sleep(0)
        assert await node.adopt_config(MID)
        replies = await storage.pump(a, b)
        assert _kinds(replies) == ["Promise", "Stale"]
        assert storage.saved == [1]
    asyncio.run(run())


class _StaleTransport(_Transport):
    """Peers 2 and 3 hold ``END``: they refuse anything of another epoch with Stale, and
    under ``END`` promise, accept and answer queries as empty acceptors would. Records the
    config epoch of each send."""

    def __init__(self, fingerprint: str) -> None:
        super().__init__(fingerprint)
        self.sent: list[tuple[int, str, int]] = []

    async def send(self, peer: int, msg: Request, deadline: float,
                   config: Config | None = None) -> Any:
        epoch = 0 if config is None else config.epoch
        self.sent.append((peer, type(msg).__name__, epoch))
        if config != END:
            return Stale(msg.key, END)
        if peer not in PEERS:
            raise PeerNotReached(f"unknown peer {peer}")
        match msg:
            case Prepare(key=key, ballot=b):
                return Promise(key, b, Ballot.ZERO, Value(0, None))
            case Accept(key=key, ballot=b, next=n):
                return Accepted(key, b, n)
            case Query(key=key):
                return QueryReply(key, Ballot.ZERO, Value(0, None))
        raise AssertionError(msg)


def test_a_proposer_learns_a_newer_config_from_refusals_and_runs_under_it() -> None:
    """Goal: a node that missed a change gets Stale from every acceptor that holds the
    newer config; it adopts that config (durably) and retries under it.

    Method: node 1 at epoch 0; peers 2 and 3 hold END (which also names 4, unreachable
    here). A write's first prepare is refused by both; node 1 adopts END and the write
    commits under it; every message after the refusals names END."""
    async def run() -> None:
        config = NodeConfig(1, PEERS, cluster_id="c", request_timeout_s=2.0)
        storage = _Storage()
        transport = _StaleTransport(config.fingerprint())
        node = Node(config, NodeIdentity("c", 1, "d1", 2, False), storage, transport)
        await node.start()
        await node.heartbeat_once()
        outcome = await node.execute("k", Set(b"v"), forward=False)
        assert outcome.value.version == 1
        assert node.epoch_config == END
        assert orjson.loads(storage.meta[META_CONFIG]) == END.to_json()
        epochs = [epoch for _, _, epoch in transport.sent]
        assert epochs[:2] == [0, 0] and END.epoch in epochs
        first_end = epochs.index(END.epoch)
        assert all(e == END.epoch for e in epochs[first_end:]), epochs
        assert {peer for peer, _, e in transport.sent if e} == {2, 3, 4}
        assert isinstance(await node.handle(Prepare("j", Ballot(9, 2, 1)), 1e18), Stale)
    asyncio.run(run())


def test_a_phase_1_skip_entry_counts_only_in_the_epoch_it_was_made() -> None:
    """Goal: a cached promise is a prepare quorum of its own config: taken in another
    epoch it is dropped (and counted), in its own it is used."""
    cache = _PreparedKeys(1 << 20, 10.0)
    entry = Prepared(Ballot(5, 1, 1), Value(1, b"x"))
    cache.put("k", entry, 0.0, epoch=1)
    assert cache.pop("k", 1.0, epoch=3) is None
    assert cache.dropped_by_epoch == 1
    cache.put("k", entry, 0.0, epoch=3)
    assert cache.pop("k", 1.0, epoch=3) == entry
    cache.put("j", entry, 0.0)
    assert cache.pop("j", 1.0) == entry and cache.dropped_by_epoch == 1


def test_an_acceptor_without_the_fence_serves_old_epochs() -> None:
    """Goal: the fence is what refuses; with ``admit`` replaced by one that always
    serves (the node-level mutant), an epoch-0 prepare reaches an acceptor holding MID
    and is promised: the check above can fail."""
    async def run() -> None:
        node, _, deadline = await _serving()
        node.rules = AcceptorRules(admit=lambda own, _id, msg: EpochVerdict.SERVE)
        await node.adopt_config(MID)
        reply = await node.handle(Prepare("k", Ballot(5, 2, 1)), deadline)
        assert isinstance(reply, Promise)
    asyncio.run(run())


def test_the_adopted_config_survives_a_restart_of_sqlite_storage(tmp_path: Path) -> None:
    """Goal: the config row is durable in the real storage: reopened, the node holds the
    epoch it adopted (and a node whose row is unreadable refuses to start)."""
    async def run() -> None:
        storage = SqliteStorage(tmp_path)
        node, _, _ = _node()
        node.storage = storage  # type: ignore[assignment]
        assert await node.adopt_config(MID)
        assert not await node.adopt_config(EPOCH0)  # epochs only go up
        await storage.close()
        reopened = SqliteStorage(tmp_path)
        assert stored_config(reopened) == MID
        await reopened.set_meta(META_CONFIG, "[1, 2]")
        with pytest.raises(SystemExit):
            stored_config(reopened)
        await reopened.close()
    asyncio.run(run())


def test_an_acceptor_marked_initial_false_waits_until_a_change_names_it() -> None:
    """Goal: an acceptor-role node left out of epoch 0 ("initial: false") serves no vote
    at epoch 0, and serves once a config that names it is installed."""
    async def run() -> None:
        peers = dict(PEERS)
        peers[1] = dataclasses.replace(peers[1], initial=False)
        config = NodeConfig(1, peers, cluster_id="c")
        assert config.initial_acceptors == {2, 3}
        assert config.fingerprint() != NodeConfig(1, PEERS, cluster_id="c").fingerprint()
        node = Node(config, NodeIdentity("c", 1, "d1", 2, False), _Storage(),
                    _Transport(config.fingerprint()))
        await node.start()
        await node.heartbeat_once()
        deadline = asyncio.get_running_loop().time() + 5
        assert node.epoch_config == Config.stable(0, {2, 3})
        early = await node.handle(Prepare("k", Ballot(1, 2, 1)), deadline)
        assert isinstance(early, Unavailable) and "retired" in early.reason
        grown = change_configs(Config.stable(0, {2, 3}), {1, 2, 3})[0]
        late = await node.handle(Prepare("k", Ballot(2, 2, 1)), deadline, grown)
        assert isinstance(late, Promise)
    asyncio.run(run())


def test_a_query_reply_names_the_epoch_it_was_answered_under() -> None:
    """Goal: above epoch 0 a query's answer carries the epoch (what an install counts as
    proof of adoption; an acceptor of a release without epochs answers at 0), and at
    epoch 0 it carries nothing."""
    async def run() -> None:
        node, _, deadline = await _serving()
        reply = await node.handle(Query("k"), deadline)
        assert isinstance(reply, QueryReply) and reply.epoch == 0
        reply = await node.handle(Query("k"), deadline, MID)
        assert isinstance(reply, QueryReply) and reply.epoch == MID.epoch
    asyncio.run(run())


def _readd_configs() -> tuple[Config, Config]:
    """Epoch 4 is {2,3,4} (1 was removed); the next change adds 1 back: mid at epoch 5."""
    return change_configs(Config.stable(4, {2, 3, 4}), {1, 2, 3, 4})


@pytest.mark.parametrize("member", [False, True])
def test_an_acceptor_added_back_drops_the_rows_it_held(tmp_path: Path, member: bool) -> None:
    """Goal: an acceptor that a config adds (in its accept set, not its prepare set) drops
    every row it still holds before it adopts that config, floors kept: a removed acceptor
    added back must not bring back values from before (here it even still holds epoch 0,
    having missed its removal). An acceptor that stays a member (the ``member`` case: it is
    in both sets) keeps its rows."""
    async def run() -> None:
        storage = SqliteStorage(tmp_path)
        node, _, _ = _node()
        node.storage = storage  # type: ignore[assignment]
        await node.start()
        await node.heartbeat_once()
        deadline = asyncio.get_running_loop().time() + 5
        for key in ("a", "b"):
            reply = await node.handle(Accept(key, Ballot(1, 2, 1), Value(1, b"old")), deadline)
            assert isinstance(reply, Accepted)
        assert storage.key_count() == 2
        mid, _ = _readd_configs() if not member else change_configs(EPOCH0, {1, 2, 3, 4})
        reply = await node.handle(Query("a"), deadline, mid)
        assert isinstance(reply, QueryReply) and reply.epoch == mid.epoch
        assert node.epoch_config == mid
        if member:
            assert storage.key_count() == 2 and reply.value.data == b"old"
        else:
            assert storage.key_count() == 0 and reply.value.data is None
        await storage.close()
    asyncio.run(run())


def test_a_rejoin_waits_for_a_prepare_quorum_of_the_others_to_back_the_config_held() -> None:
    """Goal: before (and after) it lists, a rejoin waits until a prepare quorum of the other
    acceptors of the config held named that config in hellos sent since the wait began:
    one peer is not enough (the other may hold a newer config that fenced this one), an
    older hello does not count, and a peer naming a newer epoch holds it up until that
    config is held."""
    async def run() -> None:
        node, _, _ = _node()
        await node.start()
        health = node.membership.peer_health
        waiting = asyncio.create_task(node.recovery._learn_config(10.0))

        async def still_waiting() -> bool:
            await asyncio.sleep(1.2)
            return not waiting.done()

        health[2].epoch, health[2].epoch_asked_at = 0, 11.0
        health[3].epoch, health[3].epoch_asked_at = 0, 9.0  # sent before the wait began
        assert await still_waiting()
        health[3].epoch, health[3].epoch_asked_at = MID.epoch, 12.0  # a newer config
        assert await still_waiting()
        newer = Config.stable(2, {1, 2, 3})
        await node.adopt_config(newer)  # the newest config they name, held
        health[2].epoch, health[2].epoch_asked_at = newer.epoch, 13.0
        assert await still_waiting()  # 3 still names epoch 1
        health[3].epoch, health[3].epoch_asked_at = newer.epoch, 13.0
        assert await asyncio.wait_for(waiting, 5.0) == newer.epoch
    asyncio.run(run())


class _LateRowStorage(_Storage):
    """A save's row is listed only once the save completes (``land``), as with a storage
    whose listing reads what is committed; ``collect`` removes a row."""

    def __init__(self) -> None:
        super().__init__()
        self.landing: list[tuple[str, AcceptorState, asyncio.Future[None]]] = []

    def save_soon(self, key: str, state: AcceptorState) -> asyncio.Future[None]:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.landing.append((key, state, done))
        return done

    def land(self) -> None:
        for key, state, done in self.landing:
            self.data[key] = state
            done.set_result(None)
        self.landing.clear()

    def floor(self, key: str) -> Floor:
        return NO_FLOOR

    async def collect(self, key: str, floor: Floor) -> None:
        self.data.pop(key, None)


def test_an_acceptor_being_added_drops_rows_whose_saves_were_on_their_way() -> None:
    """Goal: a vote computed before an acceptor learns it is being added, whose save has not
    landed yet, leaves no row behind the drop: the adoption waits for it to land, then
    drops it (otherwise the row would appear once the pass had listed the keys)."""
    async def run() -> None:
        node, _, _ = _node()
        await node.start()
        await node.heartbeat_once()
        storage = _LateRowStorage()
        node.storage = storage  # type: ignore[assignment]
        deadline = asyncio.get_running_loop().time() + 5
        vote = asyncio.ensure_future(node.handle_soon(  # type: ignore[arg-type]
            Accept("k", Ballot(1, 2, 1), Value(1, b"old")), deadline))
        mid, _ = _readd_configs()
        adopting = asyncio.create_task(node.adopt_config(mid))
        await asyncio.sleep(0.05)
        assert not adopting.done() and storage.landing  # waits for the save on its way
        storage.land()
        assert await asyncio.wait_for(adopting, 5.0)
        assert isinstance(await vote, Accepted)
        assert "k" not in storage.data and node.epoch_config == mid
    asyncio.run(run())
