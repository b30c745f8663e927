"""The acceptor-set config on the peer wire (docs/reconfiguration.md): frame headers name
the sender's config above epoch 0 only, and ``Stale`` refusals carry the acceptor's."""

from __future__ import annotations

import dataclasses

import orjson
import pytest

from paxoskv.core.ballot import Ballot
from paxoskv.core.identity import PeerRecord
from paxoskv.core.messages import (
    PeerProtocolError,
    Prepare,
    QueryReply,
    Stale,
    Unavailable,
    config_from_wire,
    to_wire,
)
from paxoskv.core.reconfig import Config, change_configs
from paxoskv.core.register import Value
from paxoskv.transport.codec import (
    Sender,
    decode_frame,
    decode_replies,
    encode_frame,
    encode_replies,
)

SENDER = Sender(2, PeerRecord("d2", 3, "b2"), "fp")
EPOCH0 = Config.stable(0, {1, 2, 3})
MID, END = change_configs(EPOCH0, {1, 2, 3, 4})


def test_an_epoch_0_frame_is_the_frame_it_always_was() -> None:
    """Goal: a cluster that never reconfigures sends exactly today's bytes: a header with
    epoch 0's config (or none) has no config field, and decodes to a sender without one."""
    msgs = [(Prepare("k", Ballot(1, 2, 3)), 500)]
    plain = encode_frame(SENDER, msgs)
    at0 = encode_frame(dataclasses.replace(SENDER, config=EPOCH0), msgs)
    assert plain == at0
    sender, _ = decode_frame(plain, 1000)
    assert sender.config is None and sender.epoch == 0
    assert b"cfg" not in plain


@pytest.mark.parametrize("cfg", [MID, END])
def test_a_frame_above_epoch_0_names_its_config(cfg: Config) -> None:
    """Goal: the header carries the whole config (epoch, both sets and quorums) and it
    comes back equal, binary and JSON alike."""
    for binary in (True, False):
        body = encode_frame(dataclasses.replace(SENDER, config=cfg),
                            [(Prepare("k", Ballot(1, 2, 3)), 500)], binary=binary)
        sender, _ = decode_frame(body, 1000)
        assert sender.config == cfg and sender.epoch == cfg.epoch


@pytest.mark.parametrize("raw", [
    [0, [1, 2, 3], 2, [1, 2, 3], 2],          # epoch 0 is never sent
    [1, [1, 2, 3], 1, [1, 2, 3], 1],          # quorums that do not intersect
    [1, [1, 2, 3], 4, [1, 2, 3], 2],          # quorum above its set
    [1, [1, 1, 2], 2, [1, 2], 2],             # duplicate ids
    [1, [], 1, [1], 1],                        # empty set
    [1, [1, 2, 3], 2, [1, 2, 3]],             # short
    [True, [1, 2, 3], 2, [1, 2, 3], 2],       # not a count
    [1, ["a"], 1, [1], 1],
    "nope",
])
def test_a_malformed_config_in_a_header_is_a_protocol_error(raw: object) -> None:
    head = {"from": 2, "data": "d2", "inc": 3, "boot": "b2", "fp": "fp", "cfg": raw}
    frame = orjson.dumps({"h": head, "m": [{"t": "prepare", "k": "k", "b": [1, 2, 3],
                                             "ttl": 10}]})
    with pytest.raises(PeerProtocolError):
        decode_frame(frame, 1000)


def test_stale_round_trips_with_its_config() -> None:
    for binary in (True, False):
        body = encode_replies([Stale("k", END)], binary=binary)
        assert decode_replies(body, 1) == [Stale("k", END)]
    assert config_from_wire(END.to_json()) == END


@pytest.mark.parametrize("at0", [QueryReply("k", Ballot(1, 2, 1), Value(1, b"x")),
                                 Unavailable("k", "acceptor catching_up")])
def test_a_reply_names_its_epoch_only_above_0(at0: QueryReply | Unavailable) -> None:
    """Goal: the epoch an install counts as proof of adoption crosses the wire (``ep``), on
    a query's answer and on a rejoining acceptor's refusal; at epoch 0 the reply is what it
    always was, and a malformed ``ep`` is refused."""
    assert "ep" not in to_wire(at0)
    for reply in (at0, dataclasses.replace(at0, epoch=7)):
        for binary in (True, False):
            assert decode_replies(encode_replies([reply], binary=binary), 1) == [reply]
    for bad_epoch in (-1, "7", True):
        bad = orjson.dumps({"r": [{**to_wire(at0), "ep": bad_epoch}]})
        with pytest.raises(PeerProtocolError):
            decode_replies(bad, 1)


def test_the_floors_endpoint_checks_the_secret_and_the_body() -> None:
    """Goal: POST /internal/floors (an acceptor-set change giving an added acceptor the
    bucket floors) answers 401 without the peer secret, 400 to a malformed body, 503 when
    the node is no acceptor of its config, and raises the floors otherwise."""
    import asyncio
    from typing import Any

    from paxoskv.core.acceptor import Floor
    from paxoskv.transport.codec import encode_floor_page
    from paxoskv.transport.server import PeerServer

    class Handler:
        def __init__(self) -> None:
            self.member = True
            self.raised: list[tuple[int, Floor]] = []

        async def install_floors(self, floors: list[tuple[int, Floor]]) -> bool:
            if self.member:
                self.raised.extend(floors)
            return self.member

    async def run() -> None:
        handler = Handler()
        server = PeerServer(handler, "s3cret")  # type: ignore[arg-type]
        floors = [(7, Floor(Ballot(3, 1, 1), 4))]
        body = orjson.dumps(encode_floor_page(floors))
        ok: Any = await server.raise_floors("Bearer s3cret", body)
        assert ok[0] == 200 and handler.raised == floors
        assert (await server.raise_floors(None, body))[0] == 401
        assert (await server.raise_floors("Bearer s3cret", b"{nope"))[0] == 400
        assert (await server.raise_floors("Bearer s3cret", b'{"floors": [[1, 2]]}'))[0] == 400
        handler.member = False
        assert (await server.raise_floors("Bearer s3cret", body))[0] == 503
    asyncio.run(run())


def test_floors_posted_by_an_earlier_release_are_folded_and_counted_as_sent() -> None:
    """Goal: an acceptor-set change driven by a node of an earlier release (65,536
    buckets, no count in its page) raises, on an upgraded acceptor, each of our buckets
    to the highest of its floors that map there, and is answered with the count it sent
    (which its sender checks), not the fewer buckets they fold into."""
    import asyncio
    from typing import Any

    from paxoskv.core.acceptor import FLOOR_BUCKETS, Floor
    from paxoskv.transport.server import PeerServer

    class Handler:
        def __init__(self) -> None:
            self.raised: list[tuple[int, Floor]] = []

        async def install_floors(self, floors: list[tuple[int, Floor]]) -> bool:
            self.raised.extend(floors)
            return True

    async def run() -> None:
        handler = Handler()
        server = PeerServer(handler, "s3cret")  # type: ignore[arg-type]
        body = orjson.dumps({"floors": [[3, [9, 1, 1], 1], [3 + FLOOR_BUCKETS, [2, 1, 1], 8],
                                        [4, [1, 1, 1], 1]]})
        ok: Any = await server.raise_floors("Bearer s3cret", body)
        assert ok[0] == 200 and orjson.loads(ok[1]) == {"raised": 3}
        assert handler.raised == [(3, Floor(Ballot(9, 1, 1), 8)), (4, Floor(Ballot(1, 1, 1), 1))]
    asyncio.run(run())
