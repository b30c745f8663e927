"""The chaos harness's own parts on loopback: the link proxy, the network's link sets, the
schedule, the answer classification and the explicit read-back check."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable

import pytest

from paxoskv.chaos.proxy import LinkProxy, Mode, Network
from paxoskv.chaos.runner import acknowledged_read_back
from paxoskv.chaos.schedule import MAJORITY_KINDS, make_schedule
from paxoskv.chaos.workload import FINAL_READ_CLIENT_BASE, classify
from paxoskv.check import Op
from paxoskv.client import ClientError, Result

QUIET_S = 0.3
"""How long "nothing arrives" is waited for."""


async def _echo_server() -> tuple[asyncio.Server, int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def _run(body: Callable[[LinkProxy], Awaitable[None]], target_port: int | None = None) -> None:
    async def main() -> None:
        server, port = await _echo_server()
        proxy = LinkProxy.bind(1, 2, target_port if target_port is not None else port)
        await proxy.start()
        try:
            await asyncio.wait_for(body(proxy), 10)
        finally:
            await proxy.close()
            server.close()
            await server.wait_closed()

    asyncio.run(main())


async def _connect(proxy: LinkProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", proxy.port)


async def _roundtrip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     data: bytes, timeout: float = 2.0) -> bytes:
    writer.write(data)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(data)), timeout)


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                  data: bytes) -> bool:
    """True if nothing comes back within QUIET_S (and the connection stays open)."""
    writer.write(data)
    await writer.drain()
    try:
        await asyncio.wait_for(reader.read(1), QUIET_S)
    except TimeoutError:
        return True
    return False


async def _is_reset(reader: asyncio.StreamReader) -> bool:
    try:
        got = await asyncio.wait_for(reader.read(1), 2.0)
    except (ConnectionResetError, BrokenPipeError):
        return True
    return got == b""


def test_pass_forwards_both_ways() -> None:
    async def body(proxy: LinkProxy) -> None:
        reader, writer = await _connect(proxy)
        for i in range(20):
            assert await _roundtrip(reader, writer, f"hello {i}".encode()) == f"hello {i}".encode()
        big = bytes(range(256)) * 1000
        assert await _roundtrip(reader, writer, big) == big
        writer.close()
        assert proxy.stats.accepted == 1
        assert proxy.stats.bytes_forwarded >= 2 * len(big)

    _run(body)


def test_blackhole_then_heal() -> None:
    async def body(proxy: LinkProxy) -> None:
        old_r, old_w = await _connect(proxy)
        assert await _roundtrip(old_r, old_w, b"before") == b"before"
        proxy.set_mode(Mode.BLACKHOLE)
        # An existing connection goes silent, and so does a new one (accepted, not answered).
        assert await _silent(old_r, old_w, b"lost")
        new_r, new_w = await _connect(proxy)
        assert await _silent(new_r, new_w, b"lost too")
        assert proxy.stats.chunks_dropped >= 2
        proxy.heal()
        # Both lost bytes: their streams are broken, so heal resets them...
        assert await _is_reset(old_r)
        assert await _is_reset(new_r)
        assert proxy.stats.reset_on_heal == 2
        # ...and a fresh connection passes again.
        r, w = await _connect(proxy)
        assert await _roundtrip(r, w, b"after") == b"after"
        w.close()

    _run(body)


def test_refuse_resets_new_and_existing_connections() -> None:
    async def body(proxy: LinkProxy) -> None:
        old_r, old_w = await _connect(proxy)
        assert await _roundtrip(old_r, old_w, b"x") == b"x"
        proxy.set_mode(Mode.REFUSE)
        assert await _is_reset(old_r)
        r, _ = await _connect(proxy)
        assert await _is_reset(r)
        assert proxy.stats.refused >= 1
        proxy.heal()
        r, w = await _connect(proxy)
        assert await _roundtrip(r, w, b"y") == b"y"
        w.close()

    _run(body)


def test_delay_keeps_order_and_does_not_accumulate() -> None:
    async def body(proxy: LinkProxy) -> None:
        proxy.delay_s = 0.2
        reader, writer = await _connect(proxy)
        started = time.monotonic()
        for i in range(10):  # ten chunks sent back to back: delayed once, not ten times
            writer.write(f"<{i}>".encode())
            await writer.drain()
            await asyncio.sleep(0.01)
        want = b"".join(f"<{i}>".encode() for i in range(10))
        got = await asyncio.wait_for(reader.readexactly(len(want)), 5)
        elapsed = time.monotonic() - started
        assert got == want
        assert 0.4 <= elapsed < 1.5, elapsed  # 0.2 s each way, plus the 0.1 s of sending
        writer.close()

    _run(body)


def test_unreachable_target_resets_the_client() -> None:
    async def body(proxy: LinkProxy) -> None:
        r, _ = await _connect(proxy)
        assert await _is_reset(r)
        assert proxy.stats.upstream_failed == 1

    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead_port = s.getsockname()[1]
    s.close()  # nothing listens here any more
    _run(body, target_port=dead_port)


def test_network_link_sets() -> None:
    net = Network()
    for a in (1, 2, 3, 4, 5):
        for b in (1, 2, 3, 4, 5):
            if a != b:
                net.bind(a, b, 1)
    try:
        cut = lambda: {p for p, proxy in net.links.items() if proxy.mode is not Mode.PASS}  # noqa: E731
        assert net.isolate(3) == 8
        assert cut() == {p for p in net.links if 3 in p}
        net.heal()
        assert cut() == set()
        net.partition([[1, 2], [3, 4, 5]], Mode.REFUSE)
        assert cut() == {(a, b) for a in (1, 2) for b in (3, 4, 5)} | {
            (b, a) for a in (1, 2) for b in (3, 4, 5)}
        assert all(net.links[p].mode is Mode.REFUSE for p in cut())
        net.heal()
        net.cut([(1, 2)])
        assert cut() == {(1, 2)}  # one direction only
        net.heal()
        assert net.slow(4, 0.1) == 8
        assert {p for p, proxy in net.links.items() if proxy.delay_s} == {
            p for p in net.links if 4 in p}
        net.heal()
        assert all(proxy.delay_s == 0 for proxy in net.links.values())
    finally:
        asyncio.run(net.close())


@pytest.mark.parametrize("n", [3, 5])
def test_schedule_is_seeded_and_keeps_minority_faults_minor(n: int) -> None:
    nodes = list(range(1, n + 1))
    a = make_schedule(42, nodes, 120)
    assert a == make_schedule(42, nodes, 120)
    assert a != make_schedule(43, nodes, 120)
    kinds = {e.kind for e in a}
    assert {"kill", "pause", "isolate", "split", "oneway"} <= kinds
    assert kinds & set(MAJORITY_KINDS)
    quorum = n // 2 + 1
    for e in a:
        if e.majority:
            assert e.hold_s <= 2.5
            continue
        faulty = set(e.targets) if e.kind not in ("bridge", "oneway", "slow") else set()
        if e.kind == "split":
            faulty = set(min(e.groups, key=len))
        if e.kind == "kill-cycle":  # one node down at a time, restarted before the next
            assert len(e.targets) == len(e.downtimes_s) >= 3
            faulty = {e.targets[0]}
        assert len(faulty) < quorum, e
    total = sum(e.hold_s + e.gap_s for e in a)
    assert 100 < total < 140


def _result(status: int, body: bytes = b"", version: int | None = None) -> Result:
    return Result(status, body, version, {})


def test_classify_maps_the_http_contract() -> None:
    assert classify("set", _result(200, b"{}", 4), None).status == "ok"
    assert classify("set", _result(200, b"{}", 4), None).out_version == 4
    rej = classify("cas", _result(412, b'{"current_version": 7}'), None)
    assert (rej.status, rej.out_version) == ("rejected", 7)
    assert classify("create", _result(412, b'{"current_version": null}'), None).out_version is None
    assert classify("delete", _result(204, b"", 9), None).out_version == 9
    assert classify("delete", _result(404), None).status == "rejected"
    read = classify("read", _result(200, b"data", 3), None)
    assert (read.status, read.out_value, read.out_version) == ("ok", b"data", 3)
    absent = classify("read", _result(404), None)
    assert (absent.status, absent.out_value) == ("ok", None)
    assert classify("set", _result(503), None).status == "failed"
    assert classify("set", _result(504), None).status == "unknown"
    assert classify("read", _result(504), None).status == "failed"
    assert classify("set", None, ClientError("timeout")).status == "unknown"
    odd = classify("set", _result(500, b"boom"), None)
    assert odd.status == "unknown" and odd.unexpected is not None
    assert classify("read", _result(200, b"x", None), None).unexpected is not None


def _op(client: int, kind: str, t: float, status: str = "ok", value: bytes | None = None,
        out_version: int | None = None, out_value: bytes | None = None,
        key: str = "k") -> Op:
    return Op(client=client, key=key, kind=kind, invoke=t,  # type: ignore[arg-type]
              complete=math.inf if status == "unknown" else t + 0.5,
              status=status, value=value, out_version=out_version,  # type: ignore[arg-type]
              out_value=out_value)


FINAL = FINAL_READ_CLIENT_BASE + 1


def test_read_back_accepts_the_last_acknowledged_write() -> None:
    ops = [_op(1, "set", 0, value=b"a", out_version=1),
           _op(2, "set", 1, value=b"b", out_version=2),
           _op(FINAL, "read", 5, out_value=b"b", out_version=2)]
    assert acknowledged_read_back(ops) == (1, [])


def test_read_back_catches_a_lost_write() -> None:
    ops = [_op(1, "set", 0, value=b"a", out_version=1),
           _op(2, "set", 1, value=b"b", out_version=2),
           _op(FINAL, "read", 5, out_value=b"a", out_version=1)]
    checked, problems = acknowledged_read_back(ops)
    assert checked == 1 and len(problems) == 1 and "b'b'" in problems[0]


def test_read_back_skips_keys_an_unknown_write_could_change() -> None:
    ops = [_op(1, "set", 0, value=b"a", out_version=1),
           _op(2, "set", 1, status="unknown", value=b"b"),
           _op(FINAL, "read", 5, out_value=b"a", out_version=1)]
    assert acknowledged_read_back(ops) == (0, [])


def test_read_back_of_a_delete_and_of_a_key_never_written() -> None:
    ops = [_op(1, "set", 0, value=b"a", out_version=1),
           _op(1, "delete", 1, out_version=2),
           _op(FINAL, "read", 5, key="k"),
           _op(2, "create", 0, status="failed", value=b"z", key="j"),
           _op(FINAL, "read", 5, out_value=b"z", out_version=1, key="j")]
    checked, problems = acknowledged_read_back(ops)
    assert checked == 2
    assert len(problems) == 1 and "'j'" in problems[0]  # a failed write must not appear


def test_jitter_spreads_the_delay_across_connections() -> None:
    async def body(proxy: LinkProxy) -> None:
        proxy.delay_s, proxy.jitter = 0.3, 1.0
        rtts = []
        for i in range(6):
            reader, writer = await _connect(proxy)
            started = time.monotonic()
            assert await _roundtrip(reader, writer, b"%d" % i) == b"%d" % i
            rtts.append(time.monotonic() - started)
            writer.close()
        assert all(rtt < 0.3 * 2 + 0.3 for rtt in rtts), rtts
        assert max(rtts) - min(rtts) > 0.1, rtts  # connections differ: they can reorder

    _run(body)
