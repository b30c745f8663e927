"""``python -m paxoskv.bench_peer``: CPU per peer message, HTTP POSTs against the channel.

Two processes on 127.0.0.1: a peer (the real ``PeerServer`` on aiohttp, over an acceptor
stand-in that answers every Accept at once: no storage, so only the transport and codec
are measured) and a sender running ``--concurrency`` loops that each send Accepts with a
``--value-bytes`` value through the transport under test (``http-json``: HTTP with the
JSON frames of before the binary codec). After a warm-up, it reports wall
time and the CPU seconds both processes spent per 1000 messages (``/proc``, Linux).
Numbers move with the machine's load: compare transports within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import subprocess
import sys
import time
from collections.abc import Awaitable
from typing import Any

from aiohttp import web

from paxoskv.chaos.processes import free_ports
from paxoskv.core.acceptor import Floor
from paxoskv.core.ballot import Ballot
from paxoskv.core.identity import PeerRecord
from paxoskv.core.messages import Accept, Accepted, QueryReply, Reply, Request
from paxoskv.core.reconfig import Config
from paxoskv.core.register import Value
from paxoskv.transport import http
from paxoskv.transport.base import KeyPage
from paxoskv.transport.channel import ChannelTransport
from paxoskv.transport.codec import Sender, encode_frame
from paxoskv.transport.http import HttpTransport
from paxoskv.transport.server import PeerServer

SECRET = "bench-secret"


class _Acceptor:
    """Answers at once: the benchmark measures the transport, not storage."""

    message_ttl_ms_max = 60_000

    def admit(self, sender: Sender) -> None:
        return None

    async def handle(self, msg: Request, deadline: float) -> Reply:
        if isinstance(msg, Accept):
            return Accepted(msg.key, msg.ballot)
        return QueryReply(msg.key, Ballot.ZERO, Value(0, None))

    def handle_soon(self, msg: Request, deadline: float, config: Config | None = None
                    ) -> Awaitable[Reply]:
        return self.handle(msg, deadline)

    async def on_hello(self, info: dict[str, Any]) -> dict[str, Any]:
        return {}

    def key_page(self, prefix: str, after: str | None, limit: int) -> KeyPage | None:
        return [], False

    def floor_page(self, after: int, limit: int) -> list[tuple[int, Floor]] | None:
        return []

    async def install_floors(self, floors: list[tuple[int, Floor]]) -> bool:
        return False


async def _serve(port: int) -> None:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    PeerServer(_Acceptor(), SECRET).add_routes(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await runner.cleanup()


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _drive(kind: str, port: int, server_pid: int, messages: int, concurrency: int,
                 value_bytes: int) -> dict[str, float]:
    cls = ChannelTransport if kind == "channel" else HttpTransport
    # http-json: the wire before the binary codec (the peer answers JSON frames in JSON).
    http.encode_frame = functools.partial(  # type: ignore[attr-defined]
        encode_frame, binary=kind != "http-json")
    t = cls(1, {2: f"http://127.0.0.1:{port}"}, SECRET, timeout_s=10.0)
    t.set_sender(Sender(1, PeerRecord("bench", 1, "bench"), "fp"))
    value = Value(1, os.urandom(value_bytes))
    loop = asyncio.get_running_loop()

    async def worker(w: int, count: int) -> None:
        for i in range(count):
            reply = await t.send(2, Accept(f"key-{w}-{i}", Ballot(1, 1), value),
                                 loop.time() + 10)
            assert isinstance(reply, Accepted)

    async def run(total: int) -> None:
        await asyncio.gather(*(worker(w, total // concurrency) for w in range(concurrency)))

    try:
        await run(max(concurrency, messages // 10))  # warm-up: connections, caches
        sent = (messages // concurrency) * concurrency
        own0, peer0, wall0 = time.process_time(), _cpu_s(server_pid), time.monotonic()
        await run(messages)
        own1, peer1, wall1 = time.process_time(), _cpu_s(server_pid), time.monotonic()
    finally:
        await t.close()
    per_k = 1000 / sent
    return {"msgs_per_s": sent / (wall1 - wall0), "sender_cpu_ms": (own1 - own0) * per_k * 1000,
            "peer_cpu_ms": (peer1 - peer0) * per_k * 1000,
            "total_cpu_ms": (own1 - own0 + peer1 - peer0) * per_k * 1000}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m paxoskv.bench_peer",
                                 description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--transports", default="http-json,http,channel")
    ap.add_argument("--messages", type=int, default=50_000)
    ap.add_argument("--concurrency", type=int, default=128)
    ap.add_argument("--value-bytes", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=1, help="alternate transports this often")
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        asyncio.run(_serve(args.serve))
        return 0
    print(f"{args.messages} Accepts of {args.value_bytes} B, {args.concurrency} concurrent; "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'transport':<10} {'msgs/s':>9} {'sender ms/1k':>13} {'peer ms/1k':>11} "
          f"{'total CPU ms/1k':>16}")
    for _ in range(args.rounds):
        for kind in args.transports.split(","):
            port = free_ports(1)[0]
            server = subprocess.Popen([sys.executable, "-m", "paxoskv.bench_peer", "--serve",
                                       str(port)], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True)
            try:
                assert server.stdout is not None and server.stdout.readline() == "ready\n"
                r = asyncio.run(_drive(kind, port, server.pid, args.messages,
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
