"""Tests of paxoskv.check.history: the Op record, the History recorder and JSON lines files."""

from __future__ import annotations

import asyncio
import math
import random
import threading
from pathlib import Path

import pytest

from paxoskv.check import History, Op, check, dump_ops, load_ops
from paxoskv.check.synth import SynthOptions, linearizable_history


class FakeClock:
    """A clock that advances by one on every reading."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def test_invoke_and_complete_record_times_and_results() -> None:
    """Goal: the recorder stores what it was told, timed by its clock. Method: a fake clock
    that ticks once per reading; two ops, one completed, one left open."""
    history = History(clock=FakeClock())
    a = history.invoke(7, "k", "cas", value=b"x", expected_version=3)
    b = history.invoke(8, "k", "read")
    history.complete(a, "rejected", out_version=4)
    ops = history.ops()
    assert ops[0] == Op(7, "k", "cas", 1.0, 3.0, "rejected", b"x", 3, 4, None)
    assert ops[1] == Op(8, "k", "read", 2.0, math.inf, "unknown")
    assert len(history) == 2
    assert (a, b) == (0, 1)


def test_unknown_completion_stays_open_ended() -> None:
    """Goal: completing with status unknown leaves the op open to the right. Method:
    complete one op as unknown; its complete time is infinite."""
    history = History(clock=FakeClock())
    op_id = history.invoke(1, "k", "set", value=b"v")
    history.complete(op_id, "unknown")
    assert history.ops()[0].complete == math.inf
    assert history.ops()[0].status == "unknown"


def test_completing_twice_or_with_a_bad_status_is_an_error() -> None:
    """Goal: recorder misuse fails loudly. Method: a second completion and an unknown status
    string both raise ValueError, as does a bad kind."""
    history = History()
    op_id = history.invoke(1, "k", "set", value=b"v")
    history.complete(op_id, "ok", out_version=1)
    with pytest.raises(ValueError):
        history.complete(op_id, "ok", out_version=1)
    other = history.invoke(1, "k", "read")
    with pytest.raises(ValueError):
        history.complete(other, "done")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        history.invoke(1, "k", "append")  # type: ignore[arg-type]


class _Register:
    """A correct sequential register shared by threads (one lock)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.version = 0
        self.data: bytes | None = None


def test_threads_record_a_checkable_history() -> None:
    """Goal: thread safety and end-to-end use. Method: 8 threads each run 300 random ops
    against per-key locked in-memory registers, recording each call; every op is recorded
    once with complete >= invoke, and the history checks linearizable."""
    history = History()
    registers = {f"k{i}": _Register() for i in range(4)}

    def per_key_worker(client: int) -> None:
        rng = random.Random(client)
        for n in range(300):
            key = f"k{rng.randrange(4)}"
            reg = registers[key]
            if rng.random() < 0.5:
                op_id = history.invoke(client, key, "read")
                with reg.lock:
                    seen, version = reg.data, reg.version
                history.complete(op_id, "ok", out_version=version if seen else None, out_value=seen)
            else:
                value = f"{client}:{n}".encode()
                op_id = history.invoke(client, key, "set", value=value)
                with reg.lock:
                    reg.version += 1
                    reg.data = value
                    version = reg.version
                history.complete(op_id, "ok", out_version=version)

    threads = [threading.Thread(target=per_key_worker, args=(c,)) for c in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
        assert not t.is_alive()
    ops = history.ops()
    assert len(ops) == 8 * 300
    assert all(op.status == "ok" and op.complete >= op.invoke for op in ops)
    result = check(ops)
    assert result.ok, result.summary()


def test_threads_on_a_lagging_register_are_caught() -> None:
    """Goal: the recorder plus checker catch a real bug, not only hand-made histories.
    Method: 4 threads alternate writes and reads on one key through a register whose reads
    lag one write behind the reader's own last write (a replica that misses the newest
    value). Each read starts after the reader's own write completed yet sees the value
    before it, so the key must be reported, with a read in a small counterexample."""
    history = History()
    lock = threading.Lock()
    writes: list[bytes] = []

    def worker(client: int) -> None:
        mine = -1  # index in writes of this client's last write
        for n in range(100):
            if n % 2 == 0:
                value = f"{client}:{n}".encode()
                op_id = history.invoke(client, "k", "set", value=value)
                with lock:
                    writes.append(value)
                    mine = len(writes) - 1
                history.complete(op_id, "ok", out_version=mine + 1)
            else:
                op_id = history.invoke(client, "k", "read")
                if mine == 0:
                    history.complete(op_id, "ok")  # absent: the state before the first write
                else:
                    history.complete(op_id, "ok", out_version=mine, out_value=writes[mine - 1])

    threads = [threading.Thread(target=worker, args=(c,)) for c in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
        assert not t.is_alive()
    result = check(history.ops())
    assert [v.key for v in result.violations] == ["k"]
    assert any(op.kind == "read" for op in result.violations[0].ops)
    assert len(result.violations[0].ops) <= 4


def test_asyncio_tasks_record_interleaved_ops() -> None:
    """Goal: the recorder works from asyncio tasks whose calls interleave. Method: 20 tasks
    each invoke, yield to the loop, then complete, 50 times; ops overlap in time and all
    are recorded with their own results."""
    history = History()
    state = {"version": 0}

    async def client(c: int) -> None:
        for n in range(50):
            op_id = history.invoke(c, "k", "set", value=f"{c}:{n}".encode())
            await asyncio.sleep(0)
            state["version"] += 1
            history.complete(op_id, "ok", out_version=state["version"])
            await asyncio.sleep(0)

    async def main() -> None:
        async with asyncio.TaskGroup() as tg:
            for c in range(20):
                tg.create_task(client(c))

    asyncio.run(main())
    ops = history.ops()
    assert len(ops) == 1000
    assert sorted(op.out_version for op in ops if op.out_version is not None) == list(
        range(1, 1001)
    )
    assert check(ops).ok


def test_save_and_load_round_trip_every_field(tmp_path: Path) -> None:
    """Goal: files keep every field exactly. Method: ops with binary, empty, non-UTF-8 and
    absent values, unknown (infinite) completions and all kinds; save, load, compare."""
    ops = [
        Op(1, "k", "set", 0.1, 0.25, "ok", b"\x00\xff\xfe", None, 1, None),
        Op(2, "k/ü", "cas", 0.3, math.inf, "unknown", b"", 1),
        Op(3, "k", "read", 1e-9, 2.5, "ok", out_version=1, out_value=b"\x00\xff\xfe"),
        Op(4, "k", "delete", 3.0, 4.0, "rejected"),
        Op(5, "k", "create", 5.0, 6.0, "failed", b"x"),
    ]
    path = tmp_path / "h.jsonl"
    dump_ops(ops, path)
    assert load_ops(path) == ops
    history = History.from_ops(ops)
    history.save(tmp_path / "again.jsonl")
    assert History.load(tmp_path / "again.jsonl").ops() == ops


def test_synthetic_history_round_trips(tmp_path: Path) -> None:
    """Goal: a realistic file round-trips and checks the same. Method: 2,000 synthetic ops."""
    ops = linearizable_history(random.Random(9), SynthOptions(keys=5, ops=2_000))
    dump_ops(ops, tmp_path / "h.jsonl")
    loaded = load_ops(tmp_path / "h.jsonl")
    assert loaded == ops
    assert check(loaded).ok


@pytest.mark.parametrize(
    "line",
    [
        b"not json",
        b'{"client": 1, "key": "k", "kind": "nope", "invoke": 0, "complete": 1, "status": "ok"}',
        b'{"client": 1, "key": "k", "kind": "set", "invoke": 0, "complete": 1, "status": "ok",'
        b' "value": "@@not base64@@"}',
        b"[1, 2]",
    ],
    ids=["not-json", "bad-kind", "bad-base64", "not-an-object"],
)
def test_load_rejects_malformed_lines_with_their_line_number(tmp_path: Path, line: bytes) -> None:
    """Goal: a broken file names the broken line. Method: one good line then a bad one;
    load_ops raises ValueError mentioning line 2."""
    path = tmp_path / "h.jsonl"
    dump_ops([Op(1, "k", "read", 0.0, 1.0, "ok")], path)
    with open(path, "ab") as f:
        f.write(line + b"\n")
    with pytest.raises(ValueError, match=":2:"):
        load_ops(path)
