"""A fault-injecting TCP proxy for one directed peer link, and the set of links of a cluster.

Every peer link ``i -> j`` (node i's transport calling node j) goes through its own
`LinkProxy` on 127.0.0.1. A link is in one `Mode` at a time:

- ``PASS``: bytes are forwarded both ways, after a delay if ``delay_s`` is set: each
  connection draws a factor in [``1 - jitter``, 1] when it opens and holds every chunk until
  ``arrival + factor * delay_s``. Order within a connection is kept and delays do not add
  up; messages on different connections of one link can overtake each other.
- ``BLACKHOLE``: connections are accepted but nothing is forwarded either way, like a network
  partition that drops packets. A connection that lost bytes this way is *tainted*: its byte
  stream is broken, so it is never forwarded again and is reset on `heal`.
- ``REFUSE``: connections are reset (RST) as soon as they are accepted, and switching a link
  to REFUSE resets the connections it carries. (A listening socket cannot refuse a SYN while
  it stays bound; accept-then-reset is what the peer sees as "connection reset by peer".)

`Network` owns one proxy per directed link and switches them in groups: isolate a node,
split the cluster into groups, cut one direction only, slow a node's links, heal all.
Listening sockets are bound when the cluster's peer URLs are built (`Network.bind`), before
any server process starts, so no port is ever raced for.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

__all__ = ["LinkProxy", "LinkStats", "Mode", "Network", "reset_writer"]

log = logging.getLogger(__name__)

CHUNK_BYTES: Final = 65_536
UPSTREAM_CONNECT_TIMEOUT_S: Final = 2.0
"""A connect to a target that is SIGSTOPped still completes (the kernel accepts into the
backlog); one to a killed target fails at once. The bound is for anything else."""


class Mode(enum.Enum):
    PASS = "pass"
    BLACKHOLE = "blackhole"
    REFUSE = "refuse"


def reset_writer(writer: asyncio.StreamWriter) -> None:
    """Close with an RST (SO_LINGER 0) instead of a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass(slots=True)
class LinkStats:
    accepted: int = 0
    refused: int = 0
    upstream_failed: int = 0
    reset_on_heal: int = 0
    chunks_forwarded: int = 0
    chunks_dropped: int = 0
    bytes_forwarded: int = 0


class _Conn:
    def __init__(self, client: asyncio.StreamWriter, draw: float) -> None:
        self.client = client
        self.draw = draw
        """Uniform in [0, 1), drawn at accept: this connection's share of the jitter."""
        self.upstream: asyncio.StreamWriter | None = None
        self.tainted = False
        self.tasks: list[asyncio.Task[None]] = []

    def reset(self) -> None:
        for writer in (self.client, self.upstream):
            if writer is not None:
                reset_writer(writer)
        for task in self.tasks:
            task.cancel()


class LinkProxy:
    """Proxy for the directed link ``src -> dst``: listens on ``sock``, forwards to
    ``127.0.0.1:target_port``."""

    def __init__(self, src: int, dst: int, target_port: int, sock: socket.socket,
                 seed: int = 0) -> None:
        self.src, self.dst, self.target_port = src, dst, target_port
        self._sock = sock
        self.port: int = sock.getsockname()[1]
        self.mode = Mode.PASS
        self.delay_s = 0.0
        self.jitter = 0.0
        self.stats = LinkStats()
        self._rng = random.Random(f"paxoskv-chaos-link:{seed}:{src}:{dst}")
        self._server: asyncio.Server | None = None
        self._conns: set[_Conn] = set()

    @classmethod
    def bind(cls, src: int, dst: int, target_port: int, seed: int = 0) -> LinkProxy:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        sock.setblocking(False)
        return cls(src, dst, target_port, sock, seed)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    async def start(self) -> None:
        assert self._server is None
        self._server = await asyncio.start_server(self._on_connect, sock=self._sock)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):
            conn.reset()
        self._conns.clear()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None
        else:
            self._sock.close()

    def set_mode(self, mode: Mode) -> None:
        self.mode = mode
        if mode is Mode.REFUSE:
            for conn in list(self._conns):
                conn.reset()
                self._conns.discard(conn)
        elif mode is Mode.BLACKHOLE:
            for conn in self._conns:
                conn.tainted = True

    def heal(self) -> None:
        """Back to PASS without delay; connections that lost bytes are reset."""
        self.mode = Mode.PASS
        self.delay_s = 0.0
        self.jitter = 0.0
        for conn in list(self._conns):
            if conn.tainted:
                self.stats.reset_on_heal += 1
                conn.reset()
                self._conns.discard(conn)

    def _current_mode(self) -> Mode:
        """``self.mode`` as of now (a call, so type narrowing across awaits does not lie)."""
        return self.mode

    async def _on_connect(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        if self.mode is Mode.REFUSE:
            self.stats.refused += 1
            reset_writer(writer)
            return
        self.stats.accepted += 1
        conn = _Conn(writer, self._rng.random())
        self._conns.add(conn)
        try:
            if self.mode is Mode.BLACKHOLE:
                conn.tainted = True
                # Swallow what the client sends until it gives up or the link heals.
                await self._pump(conn, reader, None)
                return
            try:
                up_reader, up_writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", self.target_port),
                    UPSTREAM_CONNECT_TIMEOUT_S)
            except (OSError, TimeoutError):
                self.stats.upstream_failed += 1
                reset_writer(writer)
                return
            conn.upstream = up_writer
            if self._current_mode() is not Mode.PASS:  # switched while we connected
                conn.tainted = True
            conn.tasks = [asyncio.ensure_future(self._pump(conn, reader, up_writer)),
                          asyncio.ensure_future(self._pump(conn, up_reader, writer))]
            # Either direction ending ends the connection: HTTP peers never half-close.
            _, pending = await asyncio.wait(conn.tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        except asyncio.CancelledError:
            pass
        finally:
            self._conns.discard(conn)
            for w in (conn.client, conn.upstream):
                if w is not None and not w.transport.is_closing():
                    w.transport.abort()

    async def _pump(self, conn: _Conn, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter | None) -> None:
        """Copy ``reader`` to ``writer`` while the link passes; drop (and taint) otherwise."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        sender = None if writer is None else asyncio.ensure_future(self._send(queue, writer))
        try:
            while True:
                try:
                    data = await reader.read(CHUNK_BYTES)
                except (OSError, ConnectionError):
                    break
                if not data:
                    break
                if self.mode is not Mode.PASS or conn.tainted or writer is None:
                    conn.tainted = True
                    self.stats.chunks_dropped += 1
                    continue
                factor = 1.0 - self.jitter * conn.draw
                queue.put_nowait((loop.time() + factor * self.delay_s, data))
                if sender is not None and sender.done():
                    break
        finally:
            if sender is not None:
                queue.put_nowait(None)
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.wait_for(sender, 5.0)

    async def _send(self, queue: asyncio.Queue[tuple[float, bytes] | None],
                    writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        while True:
            item = await queue.get()
            if item is None:
                return
            due, data = item
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            self.stats.chunks_forwarded += 1
            self.stats.bytes_forwarded += len(data)
            await writer.drain()


class Network:
    """One `LinkProxy` per directed link between ``nodes``; partitions are link modes."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.links: dict[tuple[int, int], LinkProxy] = {}

    def bind(self, src: int, dst: int, target_port: int) -> str:
        """Bind the proxy for ``src -> dst`` now; returns the URL ``src`` must use.

        Has the signature of the ``peer_url`` hook of ``paxoskv.chaos.processes.Cluster``.
        """
        proxy = LinkProxy.bind(src, dst, target_port, self.seed)
        self.links[(src, dst)] = proxy
        return proxy.url

    @property
    def nodes(self) -> list[int]:
        return sorted({n for link in self.links for n in link})

    async def start(self) -> None:
        for proxy in self.links.values():
            await proxy.start()

    async def close(self) -> None:
        for proxy in self.links.values():
            await proxy.close()

    def _set(self, pairs: Iterable[tuple[int, int]], mode: Mode) -> int:
        count = 0
        for pair in pairs:
            proxy = self.links.get(pair)
            if proxy is not None:
                proxy.set_mode(mode)
                count += 1
        return count

    def isolate(self, node: int, mode: Mode = Mode.BLACKHOLE) -> int:
        """Cut every link to and from ``node``."""
        return self._set([p for p in self.links if node in p], mode)

    def partition(self, groups: Iterable[Iterable[int]], mode: Mode = Mode.BLACKHOLE) -> int:
        """Cut every link between nodes of different groups (nodes in no group are cut off
        from everyone)."""
        where: dict[int, int] = {}
        for index, group in enumerate(groups):
            for node in group:
                where[node] = index
        return self._set([(a, b) for (a, b) in self.links
                          if where.get(a, -1 - a) != where.get(b, -1 - b)], mode)

    def cut(self, pairs: Iterable[tuple[int, int]], mode: Mode = Mode.BLACKHOLE) -> int:
        """Cut exactly these directed links (e.g. one direction only)."""
        return self._set(pairs, mode)

    def slow(self, node: int, delay_s: float, jitter: float = 0.0) -> int:
        """Delay every byte on the links to and from ``node`` by up to ``delay_s`` (at least
        ``(1 - jitter) * delay_s``, drawn per connection)."""
        if not 0.0 <= jitter <= 1.0:
            raise ValueError("jitter must be within [0, 1]")
        count = 0
        for pair, proxy in self.links.items():
            if node in pair:
                proxy.delay_s = delay_s
                proxy.jitter = jitter
                count += 1
        return count

    def heal(self) -> None:
        for proxy in self.links.values():
            proxy.heal()

    def stats(self) -> LinkStats:
        total = LinkStats()
        for proxy in self.links.values():
            for name in LinkStats.__slots__:
                setattr(total, name, getattr(total, name) + getattr(proxy.stats, name))
        return total
