"""One chaos run: real ``paxoskv serve`` processes, peer links through fault proxies, clients,
a seeded fault schedule, then heal, read every key back from every node, and check.

Phases (the TigerBeetle VOPR shape: a faulty safety phase, then a bounded liveness phase):

1. Start the cluster with every peer link ``i -> j`` through a `LinkProxy`; wait ready.
2. Safety phase, ``duration_s``: the workload's clients run while the schedule injects faults.
3. Liveness phase: heal every link, SIGCONT paused nodes, restart killed ones, wait until all
   are ready (bounded), then read every key from every node (linearizable GET, retried within
   a bound). Every node must answer every key: a cluster that cannot after healing fails.
4. Check: the whole history (final reads included) through `paxoskv.check.check`; and,
   explicitly, for each key whose last acknowledged write has no unknown or concurrent write
   that could follow it, every node reads back exactly that write.

Processes are stopped in a ``finally`` (SIGCONT, SIGTERM, SIGKILL after 15 s), by PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shlex
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from paxoskv.chaos.proxy import Mode, Network
from paxoskv.chaos.schedule import Episode, make_schedule
from paxoskv.chaos.workload import (
    FINAL_READ_CLIENT_BASE,
    Workload,
    WorkloadOptions,
)
from paxoskv.check import CheckResult, History, Op, check
from paxoskv.check.report import write_report

__all__ = [
    "ChaosOptions",
    "ChaosResult",
    "acknowledged_read_back",
    "load_cluster_class",
    "repro_command",
    "run_chaos",
]

READY_TIMEOUT_S: Final = 30.0
RESTART_ALIVE_TIMEOUT_S: Final = 20.0
REJOIN_TIMEOUT_S: Final = 60.0
"""A disk-loss episode waits this long for the rejoining node to serve as an acceptor."""
FINAL_READS_TIMEOUT_S: Final = 90.0
FINAL_READ_CONCURRENCY: Final = 12


def load_cluster_class() -> Any:
    """The process launcher the tests use too (``paxoskv.chaos.processes.Cluster``)."""
    from paxoskv.chaos.processes import Cluster

    return Cluster


@dataclass(frozen=True, slots=True)
class ChaosOptions:
    seed: int
    base_dir: Path
    nodes: int = 3
    duration_s: float = 120.0
    clients: int = 10
    keys: int = 50
    hot_keys: int = 10
    """Half the ops go to this many keys (fewer = more dueling proposers per key)."""
    server_args: tuple[str, ...] = ()
    """Extra ``paxoskv serve`` flags for every node (later flags win), e.g.
    ``("--repair-interval", "2")``."""
    report_dir: Path | None = None
    """Where a failing run writes its report; default ``reports/chaos-<seed>``."""
    faults: bool = True
    fault_kinds: tuple[str, ...] | None = None
    """Draw faults from these kinds only (default: all; see `paxoskv.chaos.schedule`)."""
    """False: the same workload with no fault at all (a baseline for the outcome counts)."""
    save_history: bool = False
    """Also write history and fault log when the run passes."""

    def reports(self) -> Path:
        return self.report_dir or Path("reports") / f"chaos-{self.seed}"


def repro_command(opts: ChaosOptions) -> str:
    extra = f" --hot-keys {opts.hot_keys}" if opts.hot_keys != 10 else ""
    extra += "" if opts.faults else " --no-faults"
    if opts.fault_kinds is not None:
        extra += " --faults " + ",".join(opts.fault_kinds)
    extra += "".join(f" --server-arg={shlex.quote(a)}" for a in opts.server_args)
    return (f"python -m paxoskv.chaos --seed {opts.seed} --nodes {opts.nodes} "
            f"--duration {opts.duration_s:g} --clients {opts.clients} --keys {opts.keys}"
            + extra)


@dataclass(slots=True)
class ChaosResult:
    options: ChaosOptions
    ops: list[Op] = field(default_factory=list)
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    fault_log: list[str] = field(default_factory=list)
    episodes_planned: int = 0
    final_reads: int = 0
    unreadable: list[str] = field(default_factory=list)
    """Keys some node could not read after everything healed."""
    read_back_keys: int = 0
    """Keys the explicit acknowledged-write check covered."""
    lost: list[str] = field(default_factory=list)
    """Explicit check failures: an acknowledged write not read back."""
    unexpected: list[str] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)
    """Why client calls failed or ended unknown (status and message, or client error)."""
    check: CheckResult | None = None
    report_paths: list[Path] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    rejoins: list[str] = field(default_factory=list)
    """Disk-loss episodes: how each rejoin ended (seconds to acceptor_mode normal, or not)."""
    error: str | None = None
    leftover_pids: list[int] = field(default_factory=list)
    """Server processes still alive after the orderly stop (killed, and a failure)."""

    @property
    def ok(self) -> bool:
        return (self.error is None and not self.leftover_pids and self.check is not None
                and self.check.ok and not self.lost and not self.unreadable and not self.unexpected
                and not any(r.startswith("FAILED") for r in self.rejoins))

    def outcome_counts(self) -> dict[str, dict[str, int]]:
        table: dict[str, dict[str, int]] = {}
        for (kind, status), n in sorted(self.counts.items()):
            table.setdefault(kind, {})[status] = n
        return table

    def summary(self) -> str:
        ops = sum(self.counts.values())
        per_kind = " ".join(
            f"{kind}[" + ",".join(f"{s}={n}" for s, n in statuses.items()) + "]"
            for kind, statuses in self.outcome_counts().items())
        faults = ",".join(f"{k}={n}" for k, n in sorted(self.faults.items())) or "none"
        violations = len(self.check.violations) if self.check is not None else "n/a"
        inconclusive = len(self.check.inconclusive) if self.check is not None else "n/a"
        return (f"chaos seed={self.options.seed} nodes={self.options.nodes} "
                f"ok={self.ok} ops={ops} {per_kind} faults[{faults}] "
                f"final_reads={self.final_reads} read_back_keys={self.read_back_keys} "
                f"violations={violations} inconclusive={inconclusive} lost={len(self.lost)} "
                f"unreadable={len(self.unreadable)} unexpected={len(self.unexpected)} "
                + " ".join(f"{k}={v:.1f}s" for k, v in self.timings.items())
                + (f" rejoins={len(self.rejoins)}" if self.rejoins else "")
                + (f" rejoin_failed={sum(r.startswith('FAILED') for r in self.rejoins)}"
                   if any(r.startswith("FAILED") for r in self.rejoins) else "")
                + (f" error={self.error}" if self.error else "")
                + (f" leftover_pids={self.leftover_pids}" if self.leftover_pids else ""))


def acknowledged_read_back(ops: Sequence[Op]) -> tuple[int, list[str]]:
    """For each key whose final state is pinned by the history alone, check the final reads.

    A key is pinned when it has no ``unknown`` write (one may take effect at any time after
    it was sent) and its last acknowledged write overlaps no other acknowledged write. Then
    every final read must see that write (its data and version; a delete reads as absent); a
    key with no acknowledged write at all must read as absent. Returns (keys checked,
    mismatches).
    """
    by_key: dict[str, list[Op]] = {}
    for op in ops:
        by_key.setdefault(op.key, []).append(op)
    checked = 0
    problems: list[str] = []
    for key in sorted(by_key):
        key_ops = by_key[key]
        finals = [op for op in key_ops if op.client >= FINAL_READ_CLIENT_BASE
                  and op.kind == "read" and op.status == "ok"]
        writes = [op for op in key_ops if op.kind != "read"]
        if not finals or any(w.status == "unknown" for w in writes):
            continue
        acked = [w for w in writes if w.status == "ok"]
        want_data: bytes | None = None
        want_version: int | None = None
        what = "no acknowledged write"
        if acked:
            last = max(acked, key=lambda w: w.complete)
            if any(w is not last and w.complete > last.invoke for w in acked):
                continue
            want_data = None if last.kind == "delete" else last.value
            want_version = None if want_data is None else last.out_version
            what = (f"last acknowledged write {last.kind} by client {last.client} "
                    f"(version {last.out_version}, data {last.value!r})")
        checked += 1
        for read in finals:
            node = read.client - FINAL_READ_CLIENT_BASE
            if read.out_value != want_data or (want_version is not None
                                               and read.out_version != want_version):
                problems.append(
                    f"key {key!r}: {what}, but node {node} read data {read.out_value!r} "
                    f"version {read.out_version}")
    return checked, problems


class _Faults:
    """Applies and reverts episodes on the cluster and the network."""

    def __init__(self, cluster: Any, network: Network, result: ChaosResult,
                 log: Callable[[str], None], t0: float) -> None:
        self.cluster, self.network, self.result, self.log, self.t0 = (
            cluster, network, result, log, t0)
        self.killed: set[int] = set()
        self.paused: set[int] = set()

    def _note(self, text: str) -> None:
        line = f"t={time.monotonic() - self.t0:6.1f}s {text}"
        self.result.fault_log.append(line)
        self.log(line)

    async def kill(self, node: int) -> None:
        await asyncio.to_thread(self.cluster.nodes[node].kill9)
        self.killed.add(node)

    def pause(self, node: int) -> None:
        self.cluster.nodes[node].pause()
        self.paused.add(node)

    async def apply(self, ep: Episode) -> None:
        mode = Mode(ep.mode)
        nodes = sorted(self.cluster.nodes)
        self._note("fault " + ep.describe())
        self.result.faults[ep.kind] += 1
        if ep.kind in ("kill", "majority-kill"):
            for node in ep.targets:
                await self.kill(node)
        elif ep.kind in ("pause", "majority-pause"):
            for node in ep.targets:
                self.pause(node)
        elif ep.kind == "isolate":
            self.network.isolate(ep.targets[0], mode)
        elif ep.kind == "split":
            self.network.partition(ep.groups, mode)
        elif ep.kind == "oneway":
            self.network.cut(ep.cut, mode)
        elif ep.kind == "bridge":
            left, right = ep.groups
            pairs = [(a, b) for a in left for b in right] + [(b, a) for a in left for b in right]
            self.network.cut(pairs, mode)
        elif ep.kind == "slow":
            self.network.slow(ep.targets[0], ep.delay_s, ep.jitter)
        elif ep.kind == "double":
            await self.kill(ep.targets[0])
            self.network.isolate(ep.targets[1], mode)
        elif ep.kind == "kill-cycle":
            for node, down_s in zip(ep.targets, ep.downtimes_s, strict=True):
                self._note(f"  kill-cycle: kill -9 node {node}")
                await self.kill(node)
                await asyncio.sleep(down_s)
                self._note(f"  kill-cycle: restart node {node}")
                self.cluster.nodes[node].start()
                self.killed.discard(node)
                await self._wait_alive(node)
                await asyncio.sleep(0.3)
        elif ep.kind == "disk_loss":
            await self.disk_loss(ep.targets[0])
        elif ep.kind == "total-partition":
            self.network.partition([[n] for n in nodes], mode)
        else:
            raise ValueError(f"unknown fault kind {ep.kind!r}")

    async def disk_loss(self, node: int) -> None:
        """kill -9 ``node``, delete its data directory, restart it with ``--rejoin`` and wait
        (bounded) until it serves as an acceptor again. Only with every node up and ready:
        the other disks (a majority) must hold every acknowledged write."""
        if self.killed or self.paused:
            raise RuntimeError(f"disk_loss with nodes down: killed {sorted(self.killed)} "
                               f"paused {sorted(self.paused)}")
        proc = self.cluster.nodes[node]
        others = [n for n in sorted(self.cluster.nodes) if n != node]
        for other in others:
            await asyncio.to_thread(self.cluster.nodes[other].wait_ready, READY_TIMEOUT_S)
        await self.kill(node)
        self._note(f"  disk_loss: kill -9 node {node}, rm -rf {proc.data_dir}")
        await asyncio.to_thread(shutil.rmtree, proc.data_dir, True)
        plain = list(proc.extra)
        proc.extra = [*plain, "--rejoin"]
        proc.start()
        self.killed.discard(node)
        self._note(f"  disk_loss: restart node {node} with --rejoin")
        await self._wait_alive(node)
        started = time.monotonic()
        mode = "?"
        while time.monotonic() - started < REJOIN_TIMEOUT_S:
            code, body = await asyncio.to_thread(proc.get, "/v1/status", 1.0)
            if code == 200:
                mode = str(json.loads(body).get("acceptor_mode"))
                if mode == "normal":
                    break
            if not proc.alive():
                mode = f"exited ({proc.proc.returncode})"
                break
            await asyncio.sleep(0.25)
        took = time.monotonic() - started
        if mode == "normal":
            proc.extra = plain  # later restarts are ordinary ones
            line = f"node {node}: rejoined in {took:.1f}s"
        else:
            # left with --rejoin: a later restart continues the rejoin
            line = f"FAILED node {node}: not an acceptor {took:.1f}s after the restart ({mode})"
        self.result.rejoins.append(line)
        self._note("  disk_loss: " + line)

    async def heal(self, restart: bool = True) -> None:
        """Heal every link, SIGCONT every paused node, restart every killed one."""
        self.network.heal()
        for node in sorted(self.paused):
            self.cluster.nodes[node].resume()
        self.paused.clear()
        if not restart:
            return
        restarted = sorted(self.killed)
        for node in restarted:
            self.cluster.nodes[node].start()
        self.killed.clear()
        self._note("heal" + (f" (restarted {','.join(map(str, restarted))})"
                             if restarted else ""))
        for node in restarted:
            await self._wait_alive(node)

    async def _wait_alive(self, node: int) -> None:
        proc = self.cluster.nodes[node]
        deadline = time.monotonic() + RESTART_ALIVE_TIMEOUT_S
        while time.monotonic() < deadline:
            if not proc.alive():
                raise RuntimeError(f"node {node} exited after restart; log {proc.log_path}")
            status, _ = await asyncio.to_thread(proc.get, "/healthz", 1.0)
            if status == 200:
                return
            await asyncio.sleep(0.1)
        raise TimeoutError(f"node {node} not answering /healthz {RESTART_ALIVE_TIMEOUT_S}s "
                           f"after restart; log {proc.log_path}")

    async def run(self, episodes: Sequence[Episode], deadline: float,
                  warmup_s: float) -> None:
        await asyncio.sleep(warmup_s)
        for ep in episodes:
            # Leave room to heal before the workload stops.
            if time.monotonic() + ep.hold_s + 1.0 > deadline:
                break
            await self.apply(ep)
            if ep.kind not in ("kill-cycle", "disk_loss"):  # these take their time in apply
                await asyncio.sleep(ep.hold_s)
            await self.heal()
            await asyncio.sleep(min(ep.gap_s, max(0.0, deadline - time.monotonic())))


async def _final_reads(workload: Workload, keys: Sequence[str], nodes: Sequence[int],
                       result: ChaosResult) -> None:
    deadline = time.monotonic() + FINAL_READS_TIMEOUT_S
    gate = asyncio.Semaphore(FINAL_READ_CONCURRENCY)

    async def one(key: str, node: int) -> None:
        async with gate:
            attempt = 0
            while True:
                attempt += 1
                outcome = await workload.call(FINAL_READ_CLIENT_BASE + node, node, "read", key,
                                              count=False)
                result.final_reads += 1
                if outcome.status == "ok":
                    return
                if time.monotonic() > deadline or attempt >= 20:
                    result.unreadable.append(f"node {node} key {key!r}: no successful read "
                                             f"after {attempt} attempts")
                    return
                await asyncio.sleep(min(1.0, 0.1 * attempt))

    await asyncio.gather(*(one(key, node) for key in keys for node in nodes))


def _write_artifacts(result: ChaosResult, directory: Path) -> list[Path]:
    from paxoskv.check import dump_ops

    directory.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    if result.check is not None and result.check.violations:
        paths += write_report(result.check, result.ops, directory)
    history = directory / "history.jsonl"
    dump_ops(result.ops, history)
    summary = directory / "summary.txt"
    lines = [result.summary(), "", "repro: " + repro_command(result.options), "",
             "faults:", *result.fault_log, "",
             "calls not ok, by reason:",
             *(f"  {n:6d} {r}" for r, n in result.reasons.most_common()), ""]
    if result.check is not None:
        lines += ["check:", result.check.summary(), ""]
    for title, items in (("disk_loss rejoins", result.rejoins),
                         ("lost (acknowledged write not read back)", result.lost),
                         ("unreadable after heal", result.unreadable),
                         ("unexpected answers", result.unexpected)):
        if items:
            lines += [f"{title}:", *items[:200], ""]
    summary.write_text("\n".join(lines), encoding="utf-8")
    return [summary, history, *paths]


async def run_chaos(opts: ChaosOptions, cluster_class: Any = None,
                    log: Callable[[str], None] = print) -> ChaosResult:
    """One run; never raises for a store failure (it lands in the result), only for a broken
    harness."""
    cluster_class = cluster_class or load_cluster_class()
    result = ChaosResult(opts)
    log(f"chaos: seed={opts.seed} nodes={opts.nodes} duration={opts.duration_s:g}s; "
        f"repro: {repro_command(opts)}")
    network = Network(opts.seed)
    opts.base_dir.mkdir(parents=True, exist_ok=True)
    cluster = cluster_class(opts.nodes, opts.base_dir, peer_url=network.bind,
                            extra=list(opts.server_args))
    nodes = sorted(cluster.nodes)
    warmup_s = 2.0
    episodes = (make_schedule(opts.seed, nodes, opts.duration_s, warmup_s, opts.fault_kinds)
                if opts.faults else [])
    result.episodes_planned = len(episodes)
    history = History()
    workload = Workload({n: cluster.nodes[n].url for n in nodes}, history, opts.seed,
                        WorkloadOptions(clients=opts.clients, keys=opts.keys,
                                        hot_keys=opts.hot_keys))
    t_start = time.monotonic()
    try:
        await network.start()
        await asyncio.to_thread(cluster.start)
        result.timings["startup"] = time.monotonic() - t_start
        t0 = time.monotonic()
        faults = _Faults(cluster, network, result, log, t0)
        deadline = t0 + opts.duration_s
        schedule = asyncio.ensure_future(faults.run(episodes, deadline, warmup_s))
        try:
            await workload.run(opts.duration_s)
        finally:
            if not schedule.done():
                # Bounded: the schedule stops starting episodes at the deadline; one in
                # progress ends within its hold time plus a restart.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(schedule), 30.0)
                schedule.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await schedule
        result.timings["faulty"] = time.monotonic() - t0
        t1 = time.monotonic()
        await faults.heal()
        for node in nodes:
            await asyncio.to_thread(cluster.nodes[node].wait_ready, READY_TIMEOUT_S)
        result.timings["heal"] = time.monotonic() - t1
        t2 = time.monotonic()
        keys = workload.all_keys()
        await _final_reads(workload, keys, nodes, result)
        result.timings["final_reads"] = time.monotonic() - t2
    except Exception as exc:  # the harness or the cluster broke: report, do not hide
        result.error = f"{type(exc).__name__}: {exc}"
        log(f"chaos: run aborted: {result.error}")
    finally:
        await workload.close()
        t_stop = time.monotonic()
        await asyncio.to_thread(cluster.stop)
        for proc in cluster.nodes.values():  # stop() leaves nothing behind; make sure
            if proc.alive():
                result.leftover_pids.append(proc.proc.pid)
                proc.kill9()
        await network.close()
        result.timings["stop"] = time.monotonic() - t_stop
    result.ops = history.ops()
    result.counts = workload.counts
    result.unexpected = workload.unexpected
    result.reasons = workload.reasons
    t3 = time.monotonic()
    result.check = check(result.ops)
    result.read_back_keys, result.lost = acknowledged_read_back(result.ops)
    result.timings["check"] = time.monotonic() - t3
    result.timings["total"] = time.monotonic() - t_start
    if not result.ok or opts.save_history:
        result.report_paths = _write_artifacts(result, opts.reports())
    log(result.summary())
    if result.reasons:
        log("chaos: not ok because: " + "; ".join(f"{r} x{n}"
                                                  for r, n in result.reasons.most_common()))
    if result.check is not None and not result.check.ok:
        log(result.check.summary())
    for line in (result.lost + result.unreadable + result.unexpected)[:20]:
        log("  " + line)
    if result.report_paths:
        log(f"chaos: report written to {result.report_paths[0].parent.resolve()}")
    if not result.ok:
        log(f"chaos: FAILED; reproduce the fault schedule with: {repro_command(opts)}")
    return result
