"""A seeded network between simulated hosts, and the `Transport` each node sends through.

Every request and every reply crosses the network on its own, so each is delayed (seeded,
uniform between ``delay_ms_min`` and ``delay_ms_max``), and may be dropped, duplicated, or
held back long enough to overtake (reorder). Partitions block directed links: a symmetric
partition blocks both directions between two groups, a one-way partition only one. A link
is checked when a message leaves and again when it arrives, so a partition that forms
while a message is in flight drops it. A down host answers nothing. A paused host (a
stopped process) neither receives nor sends: its traffic is held and delivered, late, when
it resumes; its timers keep running (it models a stall of the process's I/O, not of its
clock).

A sender whose request gets no reply within ``transport_timeout_s`` raises
`PeerUnreachable`, like the HTTP transport. Every call is encoded with the real wire codec
and served by the target's real `PeerServer` (the one the HTTP server mounts), so frame
checks, sender admission and message deadlines are the server's own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson

from paxoskv.core.acceptor import Floor
from paxoskv.core.messages import PeerProtocolError, Reply, Request
from paxoskv.core.reconfig import Config
from paxoskv.node import Node
from paxoskv.transport.base import KeyPage, PeerUnreachable
from paxoskv.transport.codec import (
    Sender,
    decode_key_page,
    decode_replies,
    encode_floor_page,
    encode_frame,
    key_page_query,
    read_floor_page,
)
from paxoskv.transport.server import PeerServer

__all__ = ["SIM_SECRET", "Host", "SimNetwork", "SimNetworkOptions", "SimTransport"]

SIM_SECRET = "sim-peer-secret"
_AUTH = f"Bearer {SIM_SECRET}"

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class SimNetworkOptions:
    """Every message fault the network injects, by name (TigerBeetle's packet simulator)."""

    delay_ms_min: float = 0.1
    delay_ms_max: float = 2.0
    """One way, within a data centre: faster than an fsync, so a write is acknowledged
    before a lazy disk would have made it durable."""
    drop_probability: float = 0.03
    duplicate_probability: float = 0.03
    reorder_probability: float = 0.05
    """A message held back by up to ``reorder_delay_ms_max`` more, so later ones overtake it."""
    reorder_delay_ms_max: float = 150.0
    partition_probability: float = 0.35
    """At each fault tick, the chance that a new partition forms."""
    partition_one_way_probability: float = 0.4
    """Of new partitions, the share that block one direction only."""
    partition_ms_min: float = 50.0
    partition_ms_max: float = 2500.0
    transport_timeout_s: float = 2.0
    """Like ``HttpTransport(timeout_s=2.0)``."""

    def __post_init__(self) -> None:
        if not 0 <= self.delay_ms_min <= self.delay_ms_max:
            raise ValueError("need 0 <= delay_ms_min <= delay_ms_max")
        if not 0 <= self.partition_ms_min <= self.partition_ms_max:
            raise ValueError("need 0 <= partition_ms_min <= partition_ms_max")
        for name in ("drop_probability", "duplicate_probability", "reorder_probability",
                     "partition_probability", "partition_one_way_probability"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be within 0..1")
        if self.transport_timeout_s <= 0:
            raise ValueError("transport_timeout_s must be positive")


TaskErrorHook = Callable[[int, BaseException], None]


@dataclass(eq=False)
class Host:
    """One machine: its current node process (if up), and the tasks that process owns."""

    node_id: int
    node: Node | None = None
    server: PeerServer | None = None
    up: bool = False
    paused: bool = False
    generation: int = 0
    """Bumped at every crash: replies and calls of an older process are dropped."""
    held: list[Callable[[], None]] = field(default_factory=list)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    on_error: TaskErrorHook | None = None

    def spawn(self, coro: Coroutine[Any, Any, T], report_errors: bool = True) -> asyncio.Task[T]:
        """Start a task that dies with this host's process.

        With ``report_errors``, an exception the task ends with goes to ``on_error``;
        without, the caller must look at the task's result itself.
        """
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self._reap if report_errors else self.tasks.discard)
        return task

    def _reap(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and self.on_error is not None:
            self.on_error(self.node_id, exc)


class SimNetwork:
    def __init__(self, rng: random.Random, options: SimNetworkOptions,
                 faults: Counter[str]) -> None:
        self._rng = rng
        self.options = options
        self.faults = faults
        """Shared fault counters, by type."""
        self.hosts: dict[int, Host] = {}
        self._blocked: Counter[tuple[int, int]] = Counter()
        self.message_faults = True
        """False in the liveness phase: no more drops, duplicates or reorders."""
        self.observer: Callable[[int, Request, Reply], None] | None = None
        """Sees every acceptor reply as it leaves the acceptor (the state checker)."""

    # -------------------------------------------------------------- topology

    def add_host(self, host: Host) -> None:
        assert host.node_id not in self.hosts
        self.hosts[host.node_id] = host

    def block(self, links: list[tuple[int, int]]) -> None:
        for link in links:
            self._blocked[link] += 1

    def unblock(self, links: list[tuple[int, int]]) -> None:
        for link in links:
            assert self._blocked[link] > 0
            self._blocked[link] -= 1
            if not self._blocked[link]:
                del self._blocked[link]

    def unblock_all(self) -> None:
        self._blocked.clear()

    def partitioned(self, src: int, dst: int) -> bool:
        return self._blocked[(src, dst)] > 0

    def pause(self, node_id: int) -> None:
        self.hosts[node_id].paused = True

    def resume(self, node_id: int) -> None:
        host = self.hosts[node_id]
        host.paused = False
        held, host.held = host.held, []
        for deliver in held:
            deliver()

    # -------------------------------------------------------------- messages

    def transmit(self, src: int, dst: int, deliver: Callable[[], None]) -> None:
        """Put one message on the wire from ``src`` to ``dst``; ``deliver`` runs on arrival."""
        if self.hosts[src].paused:
            self.faults["message_held_by_pause"] += 1
            self.hosts[src].held.append(lambda: self.transmit(src, dst, deliver))
            return
        if self.partitioned(src, dst):
            self.faults["message_cut_by_partition"] += 1
            return
        copies = 1
        if self.message_faults:
            if self._rng.random() < self.options.drop_probability:
                self.faults["message_drop"] += 1
                return
            if self._rng.random() < self.options.duplicate_probability:
                self.faults["message_duplicate"] += 1
                copies = 2
        loop = asyncio.get_running_loop()
        for _ in range(copies):
            delay_s = self._rng.uniform(self.options.delay_ms_min, self.options.delay_ms_max)
            if self.message_faults and self._rng.random() < self.options.reorder_probability:
                self.faults["message_reorder"] += 1
                delay_s += self._rng.uniform(0, self.options.reorder_delay_ms_max)
            loop.call_later(delay_s / 1000, self._arrive, src, dst, deliver)

    def _arrive(self, src: int, dst: int, deliver: Callable[[], None]) -> None:
        host = self.hosts[dst]
        if not host.up:
            self.faults["message_to_down_host"] += 1
            return
        if self.partitioned(src, dst):
            self.faults["message_cut_by_partition"] += 1
            return
        if host.paused:
            self.faults["message_held_by_pause"] += 1
            host.held.append(lambda: self._arrive(src, dst, deliver))
            return
        deliver()

    async def call(self, src: int, generation: int, dst: int,
                   serve: Callable[[PeerServer], Awaitable[T]], timeout_s: float | None = None
                   ) -> T:
        """One request/reply exchange from ``src``'s process ``generation`` to ``dst``.

        ``serve`` runs on the receiving node (once per delivered copy); its answer travels
        back as a message of its own. Raises PeerUnreachable after the transport timeout.
        """
        if not self._alive(src, generation):
            raise PeerUnreachable("sender process is gone")
        if dst not in self.hosts:
            raise PeerUnreachable(f"no host {dst}")
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[T] = loop.create_future()

        def on_request() -> None:
            target = self.hosts[dst]
            server = target.server
            assert server is not None and target.up
            target.spawn(self._serve(src, generation, dst, server, serve, answer))

        self.transmit(src, dst, on_request)
        limit_s = self.options.transport_timeout_s
        if timeout_s is not None:
            limit_s = min(limit_s, timeout_s)
        try:
            async with asyncio.timeout(limit_s):
                return await answer
        except TimeoutError:
            raise PeerUnreachable(f"no answer from {dst} within {limit_s:.3f}s") from None

    async def _serve(self, src: int, generation: int, dst: int, server: PeerServer,
                     serve: Callable[[PeerServer], Awaitable[T]], answer: asyncio.Future[T]
                     ) -> None:
        result = await serve(server)

        def on_reply() -> None:
            if self._alive(src, generation) and not answer.done():
                answer.set_result(result)

        self.transmit(dst, src, on_reply)

    def _alive(self, node_id: int, generation: int) -> bool:
        host = self.hosts.get(node_id)
        return host is not None and host.up and host.generation == generation


class SimTransport:
    """The `Transport` of one node process: every call crosses the `SimNetwork` as the
    bytes the HTTP transport would send."""

    def __init__(self, network: SimNetwork, node_id: int, generation: int) -> None:
        self._network = network
        self._node_id = node_id
        self._generation = generation
        self._sender: Sender | None = None

    def set_sender(self, sender: Sender) -> None:
        self._sender = sender

    async def send(self, peer: int, msg: Request, deadline: float,
                   config: Config | None = None) -> Reply:
        network = self._network
        ttl_ms = int((deadline - asyncio.get_running_loop().time()) * 1000)
        if ttl_ms <= 0:
            raise PeerUnreachable("message expired before it was sent")
        if self._sender is None:
            raise PeerUnreachable("no sender identity yet")
        sender = self._sender
        if config is not None and config.epoch > 0:
            sender = dataclasses.replace(sender, config=config)
        frame = encode_frame(sender, [(msg, ttl_ms)])

        async def serve(server: PeerServer) -> tuple[int, bytes]:
            status, body = await server.batch(_AUTH, frame)
            if status == 200 and network.observer is not None:
                network.observer(peer, msg, decode_replies(body, 1)[0])
            return status, body

        status, body = await network.call(self._node_id, self._generation, peer, serve,
                                          timeout_s=ttl_ms / 1000)
        if status != 200:
            raise PeerUnreachable(f"HTTP {status}: {body[:200]!r}")
        try:
            return decode_replies(body, 1)[0]
        except PeerProtocolError as exc:
            raise PeerUnreachable(str(exc)) from exc

    async def hello(self, peer: int, info: dict[str, Any]) -> dict[str, Any]:
        frame = orjson.dumps(info)

        async def serve(server: PeerServer) -> tuple[int, bytes]:
            return await server.hello(_AUTH, frame)

        status, body = await self._network.call(self._node_id, self._generation, peer, serve)
        result = orjson.loads(body)
        if status != 200 or not isinstance(result, dict):
            raise PeerUnreachable(f"HTTP {status}: {body[:200]!r}")
        return result

    async def list_keys(self, peer: int, prefix: str, after: str | None, limit: int
                        ) -> KeyPage:
        query = key_page_query(prefix, after, limit)

        async def serve(server: PeerServer) -> tuple[int, bytes]:
            return await server.keys(_AUTH, query)

        status, body = await self._network.call(self._node_id, self._generation, peer, serve)
        if status != 200:
            raise PeerUnreachable(f"HTTP {status}: {body[:200]!r}")
        try:
            return decode_key_page(orjson.loads(body))
        except PeerProtocolError as exc:
            raise PeerUnreachable(str(exc)) from exc

    async def list_floors(self, peer: int, after: int, limit: int) -> list[tuple[int, Floor]]:
        async def fetch(query: dict[str, str]) -> object:
            async def serve(server: PeerServer) -> tuple[int, bytes]:
                return await server.floors(_AUTH, query)

            status, body = await self._network.call(self._node_id, self._generation, peer,
                                                    serve)
            if status != 200:
                raise PeerUnreachable(f"HTTP {status}: {body[:200]!r}")
            return orjson.loads(body)

        try:
            return await read_floor_page(fetch, after, limit)
        except PeerProtocolError as exc:
            raise PeerUnreachable(str(exc)) from exc

    async def push_floors(self, peer: int, floors: list[tuple[int, Floor]]) -> None:
        body = orjson.dumps(encode_floor_page(floors))

        async def serve(server: PeerServer) -> tuple[int, bytes]:
            return await server.raise_floors(_AUTH, body)

        status, answer = await self._network.call(self._node_id, self._generation, peer, serve)
        if status != 200:
            raise PeerUnreachable(f"HTTP {status}: {answer[:200]!r}")

    async def close(self) -> None:
        return None
