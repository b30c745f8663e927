"""``python -m paxoskv.bench_peer``: CPU per peer message, HTTP POSTs against the channel.

Two processes on 127.0.0.1: a peer (the real ``PeerServer`` on aiohttp, over an acceptor
stand-in that answers every Accept at once: no storage, so only the transport and codec
are measured) and a sender running ``--concurrency`` loops that each send Accepts with a
``--value-bytes`` value through the transport under test (``http-json``: HTTP with the
JSON frames of before the binary codec). ``raw`` is a floor, not a transport a node can
use: the same frames and codec, each frame length-prefixed on one plain TCP connection
(an asyncio protocol at both ends: no HTTP, no WebSocket, no authentication, no task per
frame), so the gap between it and ``channel`` is what the channel's plumbing costs. Both
processes run the event loop a node runs (``--event-loop``, uvloop by default). After a
warm-up, it reports wall time and the CPU seconds both processes spent per 1000 messages
(``/proc``, Linux). Numbers move with the machine's load: compare transports within one
run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import struct
import subprocess
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, cast

from aiohttp import web

from paxoskv.bench import thread_cpu_s
from paxoskv.chaos.processes import free_ports
from paxoskv.cli import loop_factory
from paxoskv.core.acceptor import Floor
from paxoskv.core.ballot import Ballot
from paxoskv.core.identity import PeerRecord
from paxoskv.core.messages import Accept, Accepted, QueryReply, Reply, Request
from paxoskv.core.reconfig import Config
from paxoskv.core.register import Value
from paxoskv.transport import http
from paxoskv.transport.base import KeyPage, PeerUnreachable
from paxoskv.transport.channel import ChannelTransport
from paxoskv.transport.codec import (
    Sender,
    decode_frame,
    decode_replies,
    encode_frame,
    encode_replies,
)
from paxoskv.transport.http import HttpTransport
from paxoskv.transport.server import PeerServer

SECRET = "bench-secret"
_LENGTH = struct.Struct("<I")
"""The ``raw`` floor's framing: each frame preceded by its length."""


def _answer(msg: Request) -> Reply:
    if isinstance(msg, Accept):
        return Accepted(msg.key, msg.ballot)
    return QueryReply(msg.key, Ballot.ZERO, Value(0, None))


class _Acceptor:
    """Answers at once: the benchmark measures the transport, not storage."""

    message_ttl_ms_max = 60_000

    def admit(self, sender: Sender) -> None:
        return None

    async def handle(self, msg: Request, deadline: float) -> Reply:
        return _answer(msg)

    def handle_soon(self, msg: Request, deadline: float, config: Config | None = None
                    ) -> Reply:
        return _answer(msg)  # as a node answers what needs no fsync: no task, no future

    async def on_hello(self, info: dict[str, Any]) -> dict[str, Any]:
        return {}

    def key_page(self, prefix: str, after: str | None, limit: int) -> KeyPage | None:
        return [], False

    def floor_page(self, after: int, limit: int) -> list[tuple[int, Floor]] | None:
        return []

    async def install_floors(self, floors: list[tuple[int, Floor]]) -> bool:
        return False


class _Frames(asyncio.Protocol):
    """Length-prefixed frames in, each handed to ``on_frame`` (the ``raw`` floor)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # (uvloop's is no subclass)

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        at = 0
        while len(buf) - at >= _LENGTH.size:
            size = _LENGTH.unpack_from(buf, at)[0]
            if len(buf) - at - _LENGTH.size < size:
                break
            start = at + _LENGTH.size
            self.on_frame(bytes(buf[start:start + size]))
            at = start + size
        del buf[:at]

    def on_frame(self, frame: bytes) -> None:
        raise NotImplementedError


class _RawPeer(_Frames):
    """The floor's peer: decode each frame, answer every message at once, send the
    replies back as one frame."""

    def on_frame(self, frame: bytes) -> None:
        _, items = decode_frame(frame, _Acceptor.message_ttl_ms_max)
        body = encode_replies([_answer(msg) for msg, _ in items])
        assert self.transport is not None
        self.transport.write(_LENGTH.pack(len(body)) + body)


class _RawSender(_Frames):
    """The floor's sender: the messages sent in one turn of the loop leave as one frame,
    and frames are answered in order (one connection, one peer)."""

    def __init__(self, sender: Sender) -> None:
        super().__init__()
        self._sender = sender
        self._queued: list[tuple[Request, asyncio.Future[Reply]]] = []
        self._waiting: deque[list[asyncio.Future[Reply]]] = deque()

    def send(self, msg: Request, deadline: float) -> asyncio.Future[Reply]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Reply] = loop.create_future()
        if not self._queued:
            loop.call_soon(self._flush)
        self._queued.append((msg, fut))
        return fut

    def _flush(self) -> None:
        queued, self._queued = self._queued, []
        if not queued:
            return  # failed meanwhile (connection_lost)
        body = encode_frame(self._sender, [(msg, 10_000) for msg, _ in queued])
        self._waiting.append([fut for _, fut in queued])
        assert self.transport is not None
        self.transport.write(_LENGTH.pack(len(body)) + body)

    def connection_lost(self, exc: Exception | None) -> None:
        """The peer went away: every caller still waiting is told, none hangs."""
        lost = PeerUnreachable(f"raw connection lost: {exc}")
        for futures in [*self._waiting, [fut for _, fut in self._queued]]:
            for fut in futures:
                if not fut.done():
                    fut.set_exception(lost)
        self._waiting.clear()
        self._queued.clear()

    def on_frame(self, frame: bytes) -> None:
        futures = self._waiting.popleft()
        for fut, reply in zip(futures, decode_replies(frame, len(futures)), strict=True):
            fut.set_result(reply)


async def _serve(port: int, kind: str) -> None:
    loop = asyncio.get_running_loop()
    if kind == "raw":
        server = await loop.create_server(_RawPeer, "127.0.0.1", port)
        print("ready", flush=True)
        await loop.run_in_executor(None, sys.stdin.read)
        server.close()
        return
    app = web.Application(client_max_size=64 * 1024 * 1024)
    PeerServer(_Acceptor(), SECRET).add_routes(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print("ready", flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    await runner.cleanup()


def _cpu_s(pid: int) -> float:
    """CPU seconds of a process's threads so far, from the scheduler's nanosecond counts
    (``/proc/<pid>/task/*/schedstat``: ``stat``'s 10 ms ticks are too coarse for a short
    run)."""
    total = 0.0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError):  # the thread ended meanwhile
            total += thread_cpu_s(tid, pid)
    return total


async def _drive(kind: str, port: int, server_pid: int, messages: int, concurrency: int,
                 value_bytes: int) -> dict[str, float]:
    sender = Sender(1, PeerRecord("bench", 1, "bench"), "fp")
    value = Value(1, os.urandom(value_bytes))
    loop = asyncio.get_running_loop()
    send: Callable[[Request, float], Awaitable[Reply]]
    t: HttpTransport | None = None
    raw: asyncio.Transport | None = None
    if kind == "raw":
        raw, proto = await loop.create_connection(lambda: _RawSender(sender), "127.0.0.1",
                                                  port)
        send = proto.send
    else:
        cls = ChannelTransport if kind == "channel" else HttpTransport
        # http-json: the wire before the binary codec (the peer answers JSON frames in JSON).
        http.encode_frame = functools.partial(  # type: ignore[attr-defined]
            encode_frame, binary=kind != "http-json")
        t = cls(1, {2: f"http://127.0.0.1:{port}"}, SECRET, timeout_s=10.0)
        t.set_sender(sender)
        send = functools.partial(t.send_soon, 2)  # as a node's rounds send

    async def worker(w: int, count: int) -> None:
        for i in range(count):
            reply = await send(Accept(f"key-{w}-{i}", Ballot(1, 1), value), loop.time() + 10)
            assert isinstance(reply, Accepted)

    async def run(total: int) -> None:
        await asyncio.gather(*(worker(w, total // concurrency) for w in range(concurrency)))

    try:
        await run(max(concurrency, messages // 10))  # warm-up: connections, caches
        sent = (messages // concurrency) * concurrency
        own0, peer0, wall0 = _cpu_s(os.getpid()), _cpu_s(server_pid), time.monotonic()
        await run(messages)
        own1, peer1, wall1 = _cpu_s(os.getpid()), _cpu_s(server_pid), time.monotonic()
    finally:
        if t is not None:
            await t.close()
        if raw is not None:
            raw.close()
    per_k = 1000 / sent
    return {"msgs_per_s": sent / (wall1 - wall0), "sender_cpu_ms": (own1 - own0) * per_k * 1000,
            "peer_cpu_ms": (peer1 - peer0) * per_k * 1000,
            "total_cpu_ms": (own1 - own0 + peer1 - peer0) * per_k * 1000}


TRANSPORTS = ("http-json", "http", "channel", "raw")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m paxoskv.bench_peer",
                                 description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--transports", default="http-json,http,channel,raw",
                    help=f"comma-separated: {', '.join(TRANSPORTS)} (raw: the floor)")
    ap.add_argument("--messages", type=int, default=50_000)
    ap.add_argument("--concurrency", type=int, default=128)
    ap.add_argument("--value-bytes", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=1, help="alternate transports this often")
    ap.add_argument("--event-loop", choices=["uvloop", "asyncio"], default="uvloop",
                    help="both processes' event loop (a node's default: uvloop)")
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--serve-kind", default="channel", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    for kind in args.transports.split(","):
        if kind not in TRANSPORTS:
            ap.error(f"unknown transport {kind!r}: choose from {', '.join(TRANSPORTS)}")
    if args.concurrency < 1 or args.messages < args.concurrency or args.value_bytes < 0 \
            or args.rounds < 1:
        ap.error("--concurrency and --rounds must be at least 1, --messages at least "
                 "--concurrency, --value-bytes at least 0")
    factory = loop_factory(args.event_loop)
    if args.serve:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(_serve(args.serve, args.serve_kind))
        return 0
    print(f"{args.messages} Accepts of {args.value_bytes} B, {args.concurrency} concurrent, "
          f"{args.event_loop} loop; load average {os.getloadavg()[0]:.2f}")
    print(f"{'transport':<10} {'msgs/s':>9} {'sender ms/1k':>13} {'peer ms/1k':>11} "
          f"{'total CPU ms/1k':>16}")
    for _ in range(args.rounds):
        for kind in args.transports.split(","):
            port = free_ports(1)[0]
            server = subprocess.Popen([sys.executable, "-m", "paxoskv.bench_peer", "--serve",
                                       str(port), "--serve-kind", kind, "--event-loop",
                                       args.event_loop], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True)
            try:
                assert server.stdout is not None and server.stdout.readline() == "ready\n"
                with asyncio.Runner(loop_factory=factory) as runner:
                    r = runner.run(_drive(kind, port, server.pid, args.messages,
                                          args.concurrency, args.value_bytes))
            finally:
                assert server.stdin is not None
                server.stdin.close()
                try:
                    server.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    server.kill()
                    server.wait()
            print(f"{kind:<10} {r['msgs_per_s']:>9.0f} {r['sender_cpu_ms']:>13.1f} "
                  f"{r['peer_cpu_ms']:>11.1f} {r['total_cpu_ms']:>16.1f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
