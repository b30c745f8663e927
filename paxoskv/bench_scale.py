"""``python -m paxoskv.bench_scale``: throughput, latency, memory and disk as paxoskv grows.

Four axes, each varied alone from one base configuration (10^4 keys of 100 B, 3 nodes):

* keys: 10^4, 10^5, 10^6 keys of 100 B on 3 nodes (``--max-keys`` caps it);
* values: 100 B, 10 KB, 100 KB over 10^4 keys on 3 nodes;
* nodes: 3 and 5 nodes over 10^4 keys of 100 B;
* groups: acceptor groups (``--replication-factor``) over 10^4 keys of 100 B: 3 nodes
  (every key on all 3, which is what R = 3 of 3 means), 6 nodes with
  ``--replication-factor 3`` (each key on 3 of the 6) and 6 nodes without it (every key on
  all 6). This axis writes its keys through the HTTP API (spread over every node) instead
  of pre-building directories, since a pre-built directory would have to hold only its
  groups' rows and the pinned ``replication_factor`` meta, and aims wrk at every node
  (the connections split between them), so that all proposers work. Its nodes run with
  ``--repair-interval 3600``: writing the keys takes longer than the default 30 s before
  the first repair sweep, which would then check 100 keys/s on every node during the
  measurement and count in its CPU per operation (the other axes measure within the first
  30 s of their nodes, before any sweep).

Why pre-built directories: writing 10^6 keys through the HTTP API takes far longer than
the measurement, so every configuration starts from data directories written by
``paxoskv.bench_preload`` (each key accepted once at ballot 1, copied to every node). The
keys are the ones wrk's scripts hit (``bench_compare.key_name``).

Per configuration: real ``paxoskv serve`` processes (fsync on, default flags) on
127.0.0.1; then ``put`` and ``get-lin`` (linearizable GET), each ``--warmup`` discarded
seconds plus ``--seconds`` measured, 16 connections from wrk aimed at node 1 (the Lua
scripts and accounting of ``bench_compare``: non-2xx answers and socket errors are errors,
never throughput). CPU per operation: the user + system time of every node process
(``/proc/<pid>/stat``) over the measured seconds, divided by the requests wrk counted
(answered or not). After each workload the RSS (VmRSS) of every node; after the nodes
stop, each data directory's bytes. The base configuration belongs to the first three axes
and runs once.

Bounded: wrk runs are bounded by ``--seconds`` + ``--warmup``, building and startup by
deadlines; every process is stopped by PID, also on Ctrl-C or SIGTERM, and the temporary
directories are removed. The machine may be shared, so its CPU count and load average
before and after go into the output.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from paxoskv.bench import start_cluster
from paxoskv.bench_compare import (
    Procs,
    Side,
    _f,
    _loadavg,
    _proc_cpu_s,
    _sigterm_as_exit,
    key_name,
    lua_script,
    nan_to_none,
    run_wrk,
)
from paxoskv.bench_preload import build_replicas, dir_bytes, proc_status

__all__ = ["AXES", "Config", "Row", "format_table", "main", "parse_axes", "plan"]

AXES = ("keys", "values", "nodes", "groups")
KEY_COUNTS = (10_000, 100_000, 1_000_000)
VALUE_SIZES = (100, 10_000, 100_000)
NODE_COUNTS = (3, 5)
GROUP_SETTINGS: tuple[tuple[int, int | None], ...] = ((3, None), (6, 3), (6, None))
"""(nodes, --replication-factor) of the groups axis; None: every key on every node."""
LOAD_CLIENTS = 32
"""Concurrent PUTs writing the groups axis's keys through the API."""
LOAD_ATTEMPTS = 5
REPAIR_LATER = ("--repair-interval", "3600")
"""The groups axis's nodes: no repair sweep during the measurement (module docstring)."""
IDLE_S = 3.0
"""Seconds the nodes' CPU is measured with no load, once the keys are in place."""
BASE_KEYS = 10_000
BASE_VALUE = 100
BASE_NODES = 3
WORKLOADS = ("put", "get-lin")
CONNECTIONS = 16
BUILD_DEADLINE_S = 1200.0
"""10^6 keys take a few minutes on a slow disk; far past that something is wrong."""
READY_TIMEOUT_S = 300.0


@dataclass(frozen=True, slots=True)
class Config:
    """One cluster: how many keys of which size on how many nodes; with
    ``replication`` each key on that many of them (``--replication-factor``); ``target``
    "one" aims wrk at node 1, "all" splits its connections over every node; ``via_http``
    writes the keys through the API instead of pre-building the directories."""
    keys: int
    value_bytes: int
    nodes: int
    replication: int | None = None
    target: str = "one"
    via_http: bool = False

    def label(self) -> str:
        r = f" R={self.replication}" if self.replication is not None else ""
        return f"{self.keys:,} keys x {_size(self.value_bytes)} x {self.nodes} nodes{r}"


def parse_axes(text: str) -> list[str]:
    """``"keys,values"`` -> the axes in the order given, once each; unknown names raise."""
    out: list[str] = []
    for name in (part.strip() for part in text.split(",")):
        if not name:
            continue
        if name not in AXES:
            raise ValueError(f"unknown axis {name!r}; choose from {', '.join(AXES)}")
        if name not in out:
            out.append(name)
    if not out:
        raise ValueError("no axis given")
    return out


def _size(n: int) -> str:
    """100 -> '100 B', 10000 -> '10 KB' (decimal, as the issue states them)."""
    for unit, scale in (("MB", 1_000_000), ("KB", 1000)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} B"


def _count(n: int) -> str:
    """10000 -> '10^4'; other counts with thousands separators."""
    exp = round(math.log10(n)) if n > 0 else 0
    return f"10^{exp}" if n == 10 ** exp and exp >= 2 else f"{n:,}"


def plan(axes: Sequence[str], max_keys: int) -> list[tuple[str, str, Config]]:
    """(axis, setting label, configuration) per table group, in run order. Key counts
    above ``max_keys`` are left out (``max_keys`` itself stands in when none is left), and
    the base key count is capped by it too, so a quick run stays quick."""
    base_keys = min(BASE_KEYS, max_keys)
    out: list[tuple[str, str, Config]] = []
    for axis in axes:
        if axis == "keys":
            counts = [k for k in KEY_COUNTS if k <= max_keys] or [max_keys]
            out += [(axis, _count(k), Config(k, BASE_VALUE, BASE_NODES)) for k in counts]
        elif axis == "values":
            out += [(axis, _size(v), Config(base_keys, v, BASE_NODES)) for v in VALUE_SIZES]
        elif axis == "nodes":
            out += [(axis, f"{n} nodes", Config(base_keys, BASE_VALUE, n))
                    for n in NODE_COUNTS]
        elif axis == "groups":
            out += [(axis, f"{n} nodes" + (f" R={r}" if r is not None else ""),
                     Config(base_keys, BASE_VALUE, n, r, "all", True))
                    for n, r in GROUP_SETTINGS]
    return out


def unique_configs(groups: Sequence[tuple[str, str, Config]]) -> list[Config]:
    """Each configuration once, in first-use order: the base one serves every axis."""
    seen: dict[Config, None] = {}
    for _, _, c in groups:
        seen.setdefault(c)
    return list(seen)


@dataclass
class Measured:
    """What one configuration's run found."""
    config: Config
    build_s: float = math.nan
    ready_s: float = math.nan
    rss_ready: list[int] = field(default_factory=list)
    sides: dict[str, Side] = field(default_factory=dict)
    rss_after: dict[str, list[int]] = field(default_factory=dict)
    hwm: list[int] = field(default_factory=list)
    dir_bytes_built: int = 0
    dir_bytes_after: list[int] = field(default_factory=list)
    idle_cpu_s_per_s: float = math.nan
    """CPU seconds per second of all nodes together with no load (heartbeats and such)."""


@dataclass
class Row:
    """One line of the table: a workload at one setting of one axis."""
    axis: str
    setting: str
    workload: str
    keys: int
    value_bytes: int
    nodes: int
    rps: float
    p50_ms: float
    p99_ms: float
    mb_per_s: float
    rss_mb_max: float
    dir_bytes_per_key: float
    errors: int
    cpu_ms_per_op: float = math.nan
    """User + system CPU of all nodes over the measured seconds per request wrk counted."""
    replication: int | None = None
    target: str = "one"
    idle_cpu_ms_per_s: float = math.nan
    """All nodes' CPU with no load, ms per second (what an idle cluster burns)."""


def cpu_ms_per_op(side: Side) -> float:
    ops = side.requests_ok + side.errors
    return side.server_cpu_s * 1000 / ops if ops > 0 else math.nan


def rows_of(groups: Sequence[tuple[str, str, Config]], results: dict[Config, Measured]
            ) -> list[Row]:
    """Table rows from the measurements; MB/s counts value bytes only (not HTTP)."""
    rows = []
    for axis, setting, c in groups:
        m = results.get(c)
        if m is None:
            continue
        per_key = max(m.dir_bytes_after, default=0) / c.keys if c.keys else math.nan
        for w in WORKLOADS:
            s = m.sides.get(w)
            if s is None:
                continue
            rss = max(m.rss_after.get(w, []), default=0)
            rows.append(Row(axis, setting, w, c.keys, c.value_bytes, c.nodes, s.rps,
                            s.p50_ms, s.p99_ms, s.rps * c.value_bytes / 1e6, rss / 1e6,
                            per_key, s.errors, cpu_ms_per_op(s), c.replication, c.target,
                            m.idle_cpu_s_per_s * 1000))
    return rows


def format_table(rows: Sequence[Row]) -> str:
    head = (f"{'axis':6} | {'setting':11} | {'workload':8} | {'req/s':>8} | {'p50 ms':>7} | "
            f"{'p99 ms':>7} | {'MB/s':>7} | {'CPU ms/op':>9} | {'idle CPU ms/s':>13} | "
            f"{'RSS MB/node (max)':>17} | "
            f"{'data dir B/key':>14} | {'err':>5}")
    lines = [head, "-" * len(head)]
    for r in rows:
        err = str(r.errors) if not r.errors else f"{r.errors}!"
        lines.append(f"{r.axis:6} | {r.setting:11} | {r.workload:8} | {_f(r.rps, 8, 0)} | "
                     f"{_f(r.p50_ms, 7, 2)} | {_f(r.p99_ms, 7, 2)} | {_f(r.mb_per_s, 7, 2)} | "
                     f"{_f(r.cpu_ms_per_op, 9, 3)} | {_f(r.idle_cpu_ms_per_s, 13, 0)} | "
                     f"{_f(r.rss_mb_max, 17, 1)} | {_f(r.dir_bytes_per_key, 14, 0)} | "
                     f"{err:>5}")
    axes_of: dict[Config, set[str]] = {}
    for r in rows:
        c = Config(r.keys, r.value_bytes, r.nodes, r.replication, r.target, r.target == "all")
        axes_of.setdefault(c, set()).add(r.axis)
    for c in (k for k, a in axes_of.items() if len(a) > 1):
        lines.append(f"{c.label()} belongs to several axes and ran once: its rows repeat "
                     "one measurement")
    aimed = f"{CONNECTIONS} connections aimed at node 1"
    if any(r.target == "all" for r in rows):
        aimed += (" (groups: split over every node, keys written through the API, "
                  "repair sweep deferred)")
    lines.append(f"{aimed}; MB/s = req/s x value bytes; CPU ms/op = user + system CPU of "
                 f"all nodes per request; idle CPU = all nodes, {IDLE_S:g} s without load "
                 "before the workloads; RSS after the workload, highest node; data dir "
                 "after the nodes stop, largest node; err = non-2xx answers and socket "
                 "errors ('!': not throughput)")
    return "\n".join(lines)


def _log(line: str) -> None:
    print(f"bench-scale: {line}", file=sys.stderr, flush=True)


def _check_alive(procs: Sequence[subprocess.Popen[bytes]], when: str) -> None:
    dead = [i + 1 for i, p in enumerate(procs) if p.poll() is not None]
    if dead:
        raise SystemExit(f"bench-scale: node(s) {dead} exited {when}")


async def _put_all(urls: Sequence[str], keys: int, value_bytes: int) -> int:
    """Every key ``key_name(i)`` written once through the API, key i through node
    i mod N, ``LOAD_CLIENTS`` at a time, each retried a few times; the keys that failed."""
    value = b"v" * value_bytes
    todo = iter(range(keys))
    failed = 0
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async def worker() -> None:
            nonlocal failed
            for i in todo:
                url = f"{urls[i % len(urls)]}/v1/kv/{key_name(i)}"
                for attempt in range(LOAD_ATTEMPTS):
                    try:
                        async with session.put(url, data=value) as resp:
                            await resp.read()
                            if 200 <= resp.status < 300:
                                break
                    except (TimeoutError, aiohttp.ClientError):
                        pass
                    await asyncio.sleep(0.1 * (attempt + 1))
                else:
                    failed += 1
        await asyncio.gather(*(worker() for _ in range(LOAD_CLIENTS)))
    return failed


def measure(c: Config, base: Path, procs: Procs, seconds: float, warmup: float) -> Measured:
    """Build, start, load and stop one configuration; its directories are removed after."""
    m = Measured(c)
    r = "" if c.replication is None else f"-r{c.replication}"
    where = base / f"k{c.keys}-v{c.value_bytes}-n{c.nodes}{r}-{c.target}"
    dirs = [where / f"n{i + 1}" for i in range(c.nodes)]
    where.mkdir()
    extra = (() if c.replication is None else ("--replication-factor", str(c.replication))) \
        + (REPAIR_LATER if c.via_http else ())
    try:
        if not c.via_http:
            _log(f"building {c.keys:,} keys of {c.value_bytes:,} B for {c.nodes} nodes")
            t0 = time.monotonic()
            build_replicas(dirs, c.keys, c.value_bytes, key_name, _log, BUILD_DEADLINE_S)
            m.build_s = time.monotonic() - t0
            m.dir_bytes_built = dir_bytes(dirs[0])
        value = b"v" * c.value_bytes
        scripts = {}
        for w in WORKLOADS:
            scripts[f"paxoskv-{w}"] = where / f"{w}.lua"
            scripts[f"paxoskv-{w}"].write_text(lua_script("paxoskv", w, c.keys, value))
        t0 = time.monotonic()
        nodes, urls = start_cluster(where, c.nodes, dirs, extra_args=extra,
                                    ready_timeout_s=READY_TIMEOUT_S)
        for p in nodes:
            procs.add(p)
        m.ready_s = time.monotonic() - t0
        _log(f"{c.nodes} nodes ready in {m.ready_s:.1f} s")
        if c.via_http:
            _log(f"writing {c.keys:,} keys of {c.value_bytes:,} B through the API")
            t0 = time.monotonic()
            failed = asyncio.run(_put_all(urls, c.keys, c.value_bytes))
            m.build_s = time.monotonic() - t0
            if failed:
                raise SystemExit(f"bench-scale: {failed} of {c.keys:,} keys not written")
            m.dir_bytes_built = dir_bytes(dirs[0])
            _check_alive(nodes, "while writing the keys")
        m.rss_ready = [proc_status(p.pid)["VmRSS"] for p in nodes]
        pids = [p.pid for p in nodes]
        time.sleep(1)
        cpu0 = sum(_proc_cpu_s(pid) for pid in pids)
        time.sleep(IDLE_S)
        m.idle_cpu_s_per_s = (sum(_proc_cpu_s(pid) for pid in pids) - cpu0) / IDLE_S
        _log(f"keys in place after {m.build_s:.1f} s; idle nodes use "
             f"{m.idle_cpu_s_per_s * 1000:.0f} CPU ms/s together")
        for w in WORKLOADS:
            side = run_wrk(procs, scripts, "paxoskv", w, urls, CONNECTIONS, c.target, seconds,
                           warmup, pids)
            _check_alive(nodes, f"during {w}")
            m.sides[w] = side
            m.rss_after[w] = [proc_status(p.pid)["VmRSS"] for p in nodes]
            _log(f"{w}: {side.rps:,.0f} req/s, p99 {side.p99_ms:.2f} ms, "
                 f"{cpu_ms_per_op(side):.3f} CPU ms/op, {side.errors} errors")
        m.hwm = [proc_status(p.pid)["VmHWM"] for p in nodes]
        procs.stop_all()
        m.dir_bytes_after = [dir_bytes(d) for d in dirs]
    finally:
        procs.stop_all()
        shutil.rmtree(where, ignore_errors=True)
    return m


def idle_rss(base: Path, procs: Procs) -> list[int]:
    """RSS of 3 nodes over empty directories once ready: what a node holds with no keys,
    so memory per key can leave it out."""
    where = base / "empty"
    try:
        nodes, _ = start_cluster(where, BASE_NODES)
        for p in nodes:
            procs.add(p)
        time.sleep(1)
        return [proc_status(p.pid)["VmRSS"] for p in nodes]
    finally:
        procs.stop_all()
        shutil.rmtree(where, ignore_errors=True)


def to_json(rows: Sequence[Row], results: Sequence[Measured], meta: dict[str, Any]) -> str:
    configs = [dict(asdict(m), config=asdict(m.config)) for m in results]
    return json.dumps(nan_to_none({"meta": meta, "rows": [asdict(r) for r in rows],
                                   "configs": configs}), indent=2)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m paxoskv.bench_scale",
                                 description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--axes", default=",".join(AXES), help="comma-separated subset of "
                    + ",".join(AXES))
    ap.add_argument("--max-keys", type=int, default=1_000_000,
                    help="largest key count (also caps the base 10^4; smaller: quicker)")
    ap.add_argument("--seconds", type=float, default=8.0,
                    help="measured seconds per workload (wrk: whole seconds)")
    ap.add_argument("--warmup", type=float, default=2.0, help="discarded seconds per workload")
    ap.add_argument("--json", default="reports/bench-scale.json", help="JSON output path")
    ap.add_argument("--dir", default=None, help="parent of the temporary data directories")
    args = ap.parse_args(argv)
    try:
        axes = parse_axes(args.axes)
    except ValueError as e:
        ap.error(str(e))
    if args.max_keys < 1 or args.seconds < 1 or args.warmup < 0:
        ap.error("--max-keys and --seconds must be at least 1, --warmup at least 0")
    if shutil.which("wrk") is None:
        print("bench-scale: wrk not found; `make bench-scale` installs it (apt-get install "
              "wrk)", file=sys.stderr)
        return 2
    groups = plan(axes, args.max_keys)
    configs = unique_configs(groups)
    est_load = len(configs) * len(WORKLOADS) * (args.seconds + args.warmup + 1)
    load_before = _loadavg()
    _log(f"{len(configs)} configurations x {len(WORKLOADS)} workloads: about "
         f"{est_load / 60:.1f} min of load plus building the keys (10^6 keys: minutes); "
         f"{os.cpu_count()} CPUs, load average {load_before}")
    base = Path(tempfile.mkdtemp(prefix="paxoskv-bench-scale-", dir=args.dir))
    procs = Procs()
    results: dict[Config, Measured] = {}
    idle: list[int] = []
    started = time.monotonic()
    try:
        with _sigterm_as_exit():
            if "keys" in axes:
                idle = idle_rss(base, procs)
                _log(f"idle RSS over empty directories: "
                     f"{', '.join(f'{r / 1e6:.1f} MB' for r in idle)}")
            for i, c in enumerate(configs, 1):
                _log(f"[{i}/{len(configs)}] {c.label()}, wrk aimed at "
                     f"{'every node' if c.target == 'all' else 'node 1'}; "
                     f"{time.monotonic() - started:.0f} s in")
                results[c] = measure(c, base, procs, args.seconds, args.warmup)
    except KeyboardInterrupt:
        _log("interrupted; stopping everything it started")
        return 130
    finally:
        procs.stop_all()
        shutil.rmtree(base, ignore_errors=True)
    load_after = _loadavg()
    rows = rows_of(groups, results)
    meta: dict[str, Any] = {
        "cpus": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": load_after,
        "seconds": args.seconds, "warmup": args.warmup, "connections": CONNECTIONS,
        "target": "node 1 (groups axis: every node)", "axes": axes, "max_keys": args.max_keys,
        "idle_rss_bytes": idle, "wall_s": round(time.monotonic() - started, 1)}
    print(f"paxoskv alone on 127.0.0.1 (fsync on); {args.seconds:g} s per workload after "
          f"{args.warmup:g} s warm-up; {os.cpu_count()} CPUs shared by nodes and wrk; load "
          f"average {load_before} before, {load_after} after")
    print(format_table(rows))
    if idle:
        base_idle = max(idle)
        for r in rows:
            if r.axis == "keys" and r.workload == WORKLOADS[-1]:
                print(f"keys {r.setting}: {(r.rss_mb_max * 1e6 - base_idle) / r.keys:.1f} "
                      f"B of RSS per key over an idle node ({base_idle / 1e6:.1f} MB)")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(to_json(rows, list(results.values()), meta) + "\n")
    print(f"bench-scale: wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
