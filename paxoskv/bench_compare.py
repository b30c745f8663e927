"""``python -m paxoskv.bench_compare``: paxoskv next to a 3-member etcd, driven by ``wrk``.

One invocation starts a 3-member etcd cluster (Debian's ``etcd-server`` 3.4, fsync on, the
defaults) and a 3-node paxoskv cluster (production flags, fsync on) on 127.0.0.1, pre-loads
the same keys into both, and runs the same workloads against each with ``wrk`` and one Lua
script per workload (etcd through its v3 HTTP/JSON gateway). Cells alternate etcd, paxoskv
so slow drifts in the machine's load hit both alike. With ``--rounds N`` each cell is
measured N times, the first system alternating, and its row is the round with the median
ratio: one 5 s measurement moved by a quarter from run to run on the 2-core test machine.

Every cell counts its answers in wrk's Lua ``response`` callback: a status outside the
workload's expected set (2xx; for CAS also paxoskv's 412) and every socket error or
timeout is an error, shown in the table and never counted as throughput. A CAS cell's
req/s counts answered attempts (won or refused by the precondition); the rate of won CAS
is shown as well. Latency is wrk's (no coordinated-omission correction); "all" cells run
3 wrk processes, one per member, and their latency distributions are merged from 2000
quantiles each.

Bounded: every cell is ``--warmup`` + ``--seconds``; every process this module starts is
stopped by PID, also on Ctrl-C, SIGTERM or an exception, and its temp dirs are removed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp

from paxoskv.bench import start_cluster, stop_cluster, wait_until_up
from paxoskv.chaos.processes import free_ports

__all__ = ["KEY_FORMAT", "Cell", "Round", "Side", "cell_from_rounds", "cpu_ratio",
           "format_table", "key_name", "main", "merge_quantiles", "nan_to_none",
           "parse_wrk_output", "to_json"]

QUANTILES = 2000
WORKLOADS = ("put", "get-lin", "get-stale", "mix-90r", "mix-50r", "cas-hot")
MARK = "WRKJSON "
HOT_KEY = "hot"
KEY_FORMAT = "k%05d"
"""Name of the i-th key, for Lua's ``string.format`` and Python's ``%`` alike: the one
source of truth, so keys pre-loaded here are the ones wrk's scripts hit."""


def key_name(i: int) -> str:
    """The i-th benchmark key (k00000, k00001, ...), as every wrk script names it."""
    return KEY_FORMAT % i

# --------------------------------------------------------------------------- Lua scripts

_LUA_COMMON = r"""
local threads = {}
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("tid", counter)
  table.insert(threads, thread)
end

local b64chars = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'
function b64(data)
  return ((data:gsub('.', function(x)
    local r, b = '', x:byte()
    for i = 8, 1, -1 do r = r .. (b % 2 ^ i - b % 2 ^ (i - 1) > 0 and '1' or '0') end
    return r
  end) .. '0000'):gsub('%d%d?%d?%d?%d?%d?', function(x)
    if (#x < 6) then return '' end
    local c = 0
    for i = 1, 6 do c = c + (x:sub(i, i) == '1' and 2 ^ (6 - i) or 0) end
    return b64chars:sub(c + 1, c + 1)
  end) .. ({ '', '==', '=' })[#data % 3 + 1])
end

function keyname(i) return string.format(KEY_FORMAT, i) end

ok = 0
bad = 0
won = 0
conflict = 0
statuses = {}
statuses_str = ""

function note(status, fine, won_now, lost_now)
  if fine then ok = ok + 1 else
    bad = bad + 1
    statuses[status] = (statuses[status] or 0) + 1
    encode_statuses()
  end
  if won_now then won = won + 1 end
  if lost_now then conflict = conflict + 1 end
end

function done(summary, latency, requests)
  local t_ok, t_bad, t_won, t_conflict = 0, 0, 0, 0
  local codes = {}
  for _, t in ipairs(threads) do
    t_ok = t_ok + t:get("ok")
    t_bad = t_bad + t:get("bad")
    t_won = t_won + t:get("won")
    t_conflict = t_conflict + t:get("conflict")
    local s = t:get("statuses_str")
    if s then for code, n in s:gmatch("(%d+)=(%d+)") do
      codes[code] = (codes[code] or 0) + tonumber(n)
    end end
  end
  local q = {}
  for i = 0, NQ - 1 do
    q[#q + 1] = string.format("%d", latency:percentile((i + 0.5) * 100 / NQ))
  end
  local cs = {}
  for code, n in pairs(codes) do cs[#cs + 1] = string.format('"%s":%d', code, n) end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"duration_us":%d,"requests":%d,"ok":%d,"bad":%d,"won":%d,"conflict":%d,' ..
    '"socket_errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d},' ..
    '"bad_statuses":{%s},"quantiles_us":[%s]}\n',
    summary.duration, summary.requests, t_ok, t_bad, t_won, t_conflict,
    e.connect, e.read, e.write, e.timeout, table.concat(cs, ","), table.concat(q, ",")))
end

function encode_statuses()
  local parts = {}
  for code, n in pairs(statuses) do parts[#parts + 1] = code .. "=" .. n end
  statuses_str = table.concat(parts, ",")
end
"""

# Per system: how a request of each kind is built and how its answer is judged.
_LUA_PAXOSKV = r"""
function init(args)
  math.randomseed(tid * 7919 + os.time())
  version = 0
  put_hdr = { ["Content-Type"] = "application/octet-stream" }
end
function req_put(k) return wrk.format("PUT", "/v1/kv/" .. keyname(k), put_hdr, VALUE) end
function req_get(k) return wrk.format("GET", "/v1/kv/" .. keyname(k)) end
function req_stale(k) return wrk.format("GET", "/v1/kv/" .. keyname(k) .. "?consistency=stale") end
function req_cas()
  return wrk.format("PUT", "/v1/kv/" .. HOT, { ["If-Match"] = '"' .. version .. '"',
    ["Content-Type"] = "application/octet-stream" }, VALUE)
end
function judge(status, headers, body)
  if CAS then
    if status == 200 then
      local v = (headers["ETag"] or headers["Etag"] or ""):match("(%d+)")
      if v then version = v end
      note(status, true, true, false)
    elseif status == 412 then
      local v = body:match('"current_version"%s*:%s*(%d+)')
      if v then version = v end
      note(status, true, false, true)
    else note(status, false, false, false) end
  else
    note(status, status >= 200 and status < 300, false, false)
  end
end
"""

_LUA_ETCD = r"""
function init(args)
  math.randomseed(tid * 7919 + os.time())
  keys = {}
  for i = 0, NKEYS - 1 do keys[i] = b64(keyname(i)) end
  hot = b64(HOT)
  rev = "0"
  hdr = { ["Content-Type"] = "application/json" }
end
function req_put(k)
  return wrk.format("POST", "/v3/kv/put", hdr,
    '{"key":"' .. keys[k] .. '","value":"' .. VALUE_B64 .. '"}')
end
function req_get(k)
  return wrk.format("POST", "/v3/kv/range", hdr, '{"key":"' .. keys[k] .. '"}')
end
function req_stale(k)
  return wrk.format("POST", "/v3/kv/range", hdr,
    '{"key":"' .. keys[k] .. '","serializable":true}')
end
function req_cas()
  return wrk.format("POST", "/v3/kv/txn", hdr,
    '{"compare":[{"key":"' .. hot .. '","target":"MOD","result":"EQUAL","mod_revision":"' ..
    rev .. '"}],"success":[{"request_put":{"key":"' .. hot .. '","value":"' .. VALUE_B64 ..
    '"}}],"failure":[{"request_range":{"key":"' .. hot .. '"}}]}')
end
function judge(status, headers, body)
  local fine = status >= 200 and status < 300 and not body:find('"error"', 1, true)
  if CAS and fine then
    if body:find('"succeeded":true', 1, true) then
      local r = body:match('"revision"%s*:%s*"(%d+)"')
      if r then rev = r end
      note(status, true, true, false)
    else
      local r = body:match('"mod_revision"%s*:%s*"(%d+)"')
      if r then rev = r end
      note(status, true, false, true)
    end
  else
    note(status, fine, false, false)
  end
end
"""

_LUA_TAIL = r"""
function request()
  if CAS then return req_cas() end
  local k = math.random(0, NKEYS - 1)
  if READ_FRACTION >= 1 or math.random() < READ_FRACTION then
    if STALE then return req_stale(k) end
    return req_get(k)
  end
  return req_put(k)
end
function response(status, headers, body)
  judge(status, headers, body)
end
"""


def _workload_params(workload: str) -> tuple[float, bool, bool]:
    """(read fraction, stale, cas) of a workload name."""
    return {
        "put": (0.0, False, False),
        "get-lin": (1.0, False, False),
        "get-stale": (1.0, True, False),
        "mix-90r": (0.9, False, False),
        "mix-50r": (0.5, False, False),
        "cas-hot": (0.0, False, True),
    }[workload]


def lua_script(system: str, workload: str, keys: int, value: bytes) -> str:
    read_fraction, stale, cas = _workload_params(workload)
    consts = (f"NQ = {QUANTILES}\nNKEYS = {keys}\nREAD_FRACTION = {read_fraction}\n"
              f"STALE = {'true' if stale else 'false'}\nCAS = {'true' if cas else 'false'}\n"
              f"HOT = {json.dumps(HOT_KEY)}\nKEY_FORMAT = {json.dumps(KEY_FORMAT)}\n"
              f"VALUE = {json.dumps(value.decode())}\n"
              f"VALUE_B64 = {json.dumps(base64.b64encode(value).decode())}\n")
    body = _LUA_PAXOSKV if system == "paxoskv" else _LUA_ETCD
    return consts + _LUA_COMMON + body + _LUA_TAIL


# --------------------------------------------------------------------------- results


@dataclass
class WrkRun:
    """What one wrk process reported through the ``done`` callback."""
    duration_s: float
    requests: int
    ok: int
    bad: int
    won: int
    conflict: int
    socket_errors: int
    bad_statuses: dict[str, int]
    quantiles_ms: list[float]


def parse_wrk_output(text: str) -> WrkRun:
    """The ``WRKJSON`` line of one wrk run's stdout."""
    for line in text.splitlines():
        if line.startswith(MARK):
            d = json.loads(line[len(MARK):])
            sock = d["socket_errors"]
            return WrkRun(
                duration_s=d["duration_us"] / 1e6, requests=int(d["requests"]),
                ok=int(d["ok"]), bad=int(d["bad"]), won=int(d["won"]),
                conflict=int(d["conflict"]),
                socket_errors=sum(int(sock[k]) for k in ("connect", "read", "write", "timeout")),
                bad_statuses={str(k): int(v) for k, v in d["bad_statuses"].items()},
                quantiles_ms=[q / 1000 for q in d["quantiles_us"]])
    raise ValueError("no WRKJSON line in wrk output:\n" + text[-2000:])


def merge_quantiles(runs: Sequence[WrkRun], qs: Sequence[float]) -> list[float]:
    """Percentiles (0..100) of the pooled latency of several wrk runs, each run's evenly
    spaced quantiles standing for its answered requests in equal shares."""
    pool: list[tuple[float, float]] = []
    for r in runs:
        n = r.ok + r.bad
        if n <= 0 or not r.quantiles_ms:
            continue
        w = n / len(r.quantiles_ms)
        pool.extend((q, w) for q in r.quantiles_ms)
    if not pool:
        return [math.nan for _ in qs]
    pool.sort()
    total = sum(w for _, w in pool)
    out = []
    for q in qs:
        target = q / 100 * total
        acc = 0.0
        value = pool[-1][0]
        for v, w in pool:
            acc += w
            if acc >= target:
                value = v
                break
        out.append(value)
    return out


@dataclass
class Side:
    """One system's figures in one cell."""
    rps: float = math.nan
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    p999_ms: float = math.nan
    requests_ok: int = 0
    errors: int = 0
    error_statuses: dict[str, int] = field(default_factory=dict)
    cas_won_per_s: float | None = None
    wrk_cpu_s: float = 0.0
    server_cpu_s: float = 0.0
    seconds: float = 0.0
    skipped: str | None = None
    requested_s: float = 0.0
    """The load's requested length (wrk's ``-d``); 0: not known."""

    @property
    def stalled(self) -> bool:
        """Whether wrk ran far longer than asked (``STALL_FACTOR``)."""
        return self.requested_s > 0 and self.seconds > STALL_FACTOR * self.requested_s + 1

    @property
    def cpu_us_per_request(self) -> float:
        """The servers' CPU per counted request (for CAS, per attempt), in µs; NaN when
        not measured, or when wrk stalled (the CPU of the whole stalled stretch over the
        few requests counted in it would say nothing of the system).

        Why: requests per second depend on how much of the shared cores each system got;
        CPU per request depends on that less (it still moves from run to run). The CPU
        also covers requests that failed, which are not counted."""
        requests = self.rps * self.seconds
        if self.skipped or self.stalled or self.server_cpu_s <= 0 or not requests > 0:
            return math.nan
        return self.server_cpu_s / requests * 1e6


STALL = "stall"
"""What a row shows for a ratio when its only round stalled."""
STALL_FACTOR = 1.5
"""wrk stops on time whatever the servers do (each thread checks for the end every 100 ms
and never blocks on a socket), so a run longer than this times the asked length, plus a
second, means wrk itself did not run for a while: the machine paused (one 5 s round here
took 32.8 s, with every request in flight counted as timed out and the servers' CPU that
of a normal round), or its wall clock stepped (wrk times itself by it). Such a round
measures that, not the system: it is named in the notes and left out of the median and
the range."""


def side_from_runs(runs: Sequence[WrkRun], cas: bool) -> Side:
    seconds = max((r.duration_s for r in runs), default=0.0)
    ok = sum(r.ok for r in runs)
    errors = sum(r.bad + r.socket_errors for r in runs)
    statuses: dict[str, int] = {}
    for r in runs:
        for code, n in r.bad_statuses.items():
            statuses[code] = statuses.get(code, 0) + n
        if r.socket_errors:
            statuses["socket"] = statuses.get("socket", 0) + r.socket_errors
    p50, p99, p999 = merge_quantiles(runs, (50, 99, 99.9))
    won = sum(r.won for r in runs)
    return Side(rps=ok / seconds if seconds else 0.0, p50_ms=p50, p99_ms=p99, p999_ms=p999,
                requests_ok=ok, errors=errors, error_statuses=statuses,
                cas_won_per_s=(won / seconds if seconds else 0.0) if cas else None,
                seconds=seconds)


def cpu_ratio(etcd: Side, paxoskv: Side) -> float:
    """paxoskv's server CPU per request over etcd's (NaN unless both measured)."""
    e, p = etcd.cpu_us_per_request, paxoskv.cpu_us_per_request
    return p / e if e > 0 and p > 0 else math.nan


def _ratio(etcd: Side, paxoskv: Side) -> float:
    if etcd.skipped or paxoskv.skipped or not etcd.rps:
        return math.nan
    return paxoskv.rps / etcd.rps


@dataclass
class Round:
    """One measurement of a cell: etcd's run and paxoskv's, back to back."""
    etcd: Side
    paxoskv: Side

    @property
    def ratio(self) -> float:
        return _ratio(self.etcd, self.paxoskv)

    @property
    def stalled(self) -> bool:
        return self.etcd.stalled or self.paxoskv.stalled

    @property
    def counted(self) -> bool:
        """Measured on both sides, and by a load generator that ran on time."""
        return not (math.isnan(self.ratio) or self.stalled)


@dataclass
class Cell:
    """A cell's figures: those of its median round (by ratio; of an even count, the lower
    of the two middle ones), so every figure of a row comes from one measurement. Every
    round is kept in ``rounds``."""
    workload: str
    connections: int
    target: str  # "one" or "all"
    etcd: Side
    paxoskv: Side
    rounds: list[Round] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return _ratio(self.etcd, self.paxoskv)

    @property
    def stalled(self) -> bool:
        """Whether the row's own round stalled (only when every round did)."""
        return self.etcd.stalled or self.paxoskv.stalled

    @property
    def ratio_range(self) -> tuple[float, float] | None:
        """Lowest and highest ratio of the rounds (None below two measured rounds)."""
        ratios = [r.ratio for r in self.rounds if r.counted]
        return (min(ratios), max(ratios)) if len(ratios) > 1 else None


def cell_from_rounds(workload: str, connections: int, target: str, rounds: Sequence[Round]
                     ) -> Cell:
    """The cell whose row is the median round of those counted (``Round.counted``; ties:
    the earlier round); with none counted, the first round that did not stall, else the
    first round."""
    assert rounds, "a cell has at least one round"
    ranked = sorted(range(len(rounds)),
                    key=lambda i: (not rounds[i].counted, rounds[i].stalled,
                                   0.0 if math.isnan(rounds[i].ratio) else rounds[i].ratio,
                                   i))
    measured = sum(1 for r in rounds if r.counted)
    middle = ranked[(measured - 1) // 2 if measured else 0]
    pick = rounds[middle]
    return Cell(workload, connections, target, pick.etcd, pick.paxoskv, list(rounds))


def _f(x: float, width: int, prec: int = 1) -> str:
    return f"{'-':>{width}}" if x is None or math.isnan(x) else f"{x:{width}.{prec}f}"


def _times(ratio: float, stalled: bool = False) -> str:
    """A ratio as "0.50x" in 7 columns; "stall" for a row whose only round stalled, "-"
    when not measured."""
    if stalled:
        return f"{STALL:>7}"
    return f"{'-':>7}" if math.isnan(ratio) else f"{ratio:6.2f}x"


def _errs(s: Side) -> str:
    if s.skipped:
        return "skip"
    return str(s.errors) if not s.errors else f"{s.errors}!"


def format_table(cells: Sequence[Cell]) -> str:
    head = (f"{'workload':10} {'conns':>5} {'tgt':>3} | {'etcd r/s':>9} {'p50':>7} {'p99':>7} "
            f"{'p99.9':>7} {'err':>6} | {'pxkv r/s':>9} {'p50':>7} {'p99':>7} {'p99.9':>7} "
            f"{'err':>6} | {'px/etcd':>7}")
    lines = [head, "-" * len(head)]
    notes: list[str] = []
    for c in cells:
        e, p = c.etcd, c.paxoskv
        ratio = _times(c.ratio, c.stalled)
        lines.append(
            f"{c.workload:10} {c.connections:5d} {c.target:>3} | {_f(e.rps, 9, 0)} "
            f"{_f(e.p50_ms, 7, 2)} {_f(e.p99_ms, 7, 2)} {_f(e.p999_ms, 7, 2)} {_errs(e):>6} | "
            f"{_f(p.rps, 9, 0)} {_f(p.p50_ms, 7, 2)} {_f(p.p99_ms, 7, 2)} "
            f"{_f(p.p999_ms, 7, 2)} {_errs(p):>6} | {ratio}")
        tag = f"{c.workload} c={c.connections} {c.target}"
        spread = c.ratio_range
        counted = sum(1 for r in c.rounds if r.counted)
        if spread is not None:
            of = f" ({counted} counted)" if counted < len(c.rounds) else ""
            notes.append(f"{tag}: {len(c.rounds)} rounds{of}, px/etcd {spread[0]:.2f}x-"
                         f"{spread[1]:.2f}x; the row is the median round")
        for k, r in enumerate(c.rounds, 1):
            for name, s in (("etcd", r.etcd), ("paxoskv", r.paxoskv)):
                if s.stalled:
                    fate = ("left out of the median and the range" if not c.stalled else
                            "no round ran on time: the row is this one, its figures not "
                            "the system's")
                    notes.append(f"{tag}: round {k} STALLED: {name}'s wrk ran {s.seconds:.1f} s "
                                 f"for {s.requested_s:g} s (the machine paused); {fate}")
        for name, s in (("etcd", e), ("paxoskv", p)):
            if s.skipped:
                notes.append(f"{tag}: {name} skipped ({s.skipped})")
            elif s.errors:
                notes.append(f"{tag}: {name} HAD ERRORS: {s.errors} answers not counted as "
                             f"throughput {s.error_statuses}")
            if s.cas_won_per_s is not None and not s.skipped:
                notes.append(f"{tag}: {name} CAS won {s.cas_won_per_s:.0f}/s of "
                             f"{s.rps:.0f} attempts/s")
    lines.append("latencies in ms; err = non-2xx answers and socket errors "
                 "(a '!' marks a cell with errors)")
    lines.extend(notes)
    lines.append("")
    cpu_head = (f"{'workload':10} {'conns':>5} {'tgt':>3} | {'etcd srv cpu%':>13} "
                f"{'wrk cpu%':>8} {'us/req':>7} | {'pxkv srv cpu%':>13} {'wrk cpu%':>8} "
                f"{'us/req':>7} | {'px/etcd':>7}")
    lines += [cpu_head, "-" * len(cpu_head)]
    for c in cells:
        def pct(s: Side, v: float) -> float:
            return 100 * v / s.seconds if s.seconds and not s.skipped else math.nan
        per = _times(cpu_ratio(c.etcd, c.paxoskv), c.stalled)
        lines.append(f"{c.workload:10} {c.connections:5d} {c.target:>3} | "
                     f"{_f(pct(c.etcd, c.etcd.server_cpu_s), 13, 0)} "
                     f"{_f(pct(c.etcd, c.etcd.wrk_cpu_s), 8, 0)} "
                     f"{_f(c.etcd.cpu_us_per_request, 7, 0)} | "
                     f"{_f(pct(c.paxoskv, c.paxoskv.server_cpu_s), 13, 0)} "
                     f"{_f(pct(c.paxoskv, c.paxoskv.wrk_cpu_s), 8, 0)} "
                     f"{_f(c.paxoskv.cpu_us_per_request, 7, 0)} | {per}")
    lines.append("cpu% = % of one core over the measured seconds; us/req = the servers' CPU "
                 "per counted request, all members")
    lines.append("together (for cas-hot, per attempt); px/etcd = paxoskv's us/req over "
                 "etcd's (lower is better)")
    return "\n".join(lines)


def nan_to_none(x: Any) -> Any:
    """``x`` with every NaN (a figure not measured) as None, which JSON can carry."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: nan_to_none(v) for k, v in x.items()}
    if isinstance(x, list):
        return [nan_to_none(v) for v in x]
    return x


def _json_row(m: Cell | Round) -> dict[str, Any]:
    """A cell's or a round's fields, with what ``asdict`` leaves out (the properties):
    both ratios, ``stalled``, and each side's ``cpu_us_per_request``."""
    row = dict(asdict(m), ratio_rps_paxoskv_over_etcd=m.ratio,
               ratio_cpu_per_request_paxoskv_over_etcd=cpu_ratio(m.etcd, m.paxoskv),
               stalled=m.stalled)
    for name, side in (("etcd", m.etcd), ("paxoskv", m.paxoskv)):
        row[name]["cpu_us_per_request"] = side.cpu_us_per_request
    return row


def to_json(cells: Sequence[Cell], meta: dict[str, Any]) -> str:
    rows = []
    for c in cells:
        row = _json_row(c)
        row["rounds"] = [dict(_json_row(r), counted=r.counted) for r in c.rounds]
        rows.append(row)
    return json.dumps(nan_to_none({"meta": meta, "cells": rows}), indent=2)


def split_connections(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


# --------------------------------------------------------------------------- processes


class Procs:
    """Every process this module starts, so they can all be stopped by PID."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def add(self, p: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        self.procs.append(p)
        return p

    def stop_all(self) -> None:
        stop_cluster(self.procs)
        self.procs.clear()


def start_etcd(base: Path, procs: Procs, n: int = 3) -> list[str]:
    ports = free_ports(2 * n)
    client, peer = ports[:n], ports[n:]
    cluster = ",".join(f"e{i + 1}=http://127.0.0.1:{peer[i]}" for i in range(n))
    for i in range(n):
        data = base / f"etcd{i + 1}"
        cmd = ["etcd", "--name", f"e{i + 1}", "--data-dir", str(data),
               "--listen-client-urls", f"http://127.0.0.1:{client[i]}",
               "--advertise-client-urls", f"http://127.0.0.1:{client[i]}",
               "--listen-peer-urls", f"http://127.0.0.1:{peer[i]}",
               "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer[i]}",
               "--initial-cluster", cluster, "--initial-cluster-token", "paxoskv-bench",
               "--initial-cluster-state", "new", "--logger", "zap", "--log-level", "warn",
               "--log-outputs", str(base / f"etcd{i + 1}.log")]
        procs.add(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    urls = [f"http://127.0.0.1:{p}" for p in client]
    late = wait_until_up(urls, _etcd_healthy, 30)
    if late is not None:
        raise RuntimeError(f"etcd at {late} did not become healthy in 30 s")
    return urls


def _etcd_healthy(url: str) -> bool:
    with urllib.request.urlopen(url + "/health", timeout=1) as r:
        return bool(json.loads(r.read()).get("health") == "true")


async def _preload(system: str, urls: list[str], keys: int, value: bytes,
                   concurrency: int = 64, deadline_s: float = 240) -> None:
    end = time.monotonic() + deadline_s
    todo = [*range(keys), -1]  # -1: the hot CAS key
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as s:
        async def put(i: int, url: str) -> None:
            name = HOT_KEY if i < 0 else key_name(i)
            for _attempt in range(5):
                if time.monotonic() > end:
                    raise RuntimeError(f"{system}: pre-load did not finish in {deadline_s} s")
                try:
                    if system == "paxoskv":
                        resp = await s.put(f"{url}/v1/kv/{name}", data=value)
                    else:
                        body = {"key": base64.b64encode(name.encode()).decode(),
                                "value": base64.b64encode(value).decode()}
                        resp = await s.post(f"{url}/v3/kv/put", json=body)
                    await resp.read()
                    if resp.status == 200:
                        return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            raise RuntimeError(f"{system}: pre-load of {name} failed 5 times")

        async def worker(w: int) -> None:
            url = urls[w % len(urls)]
            while todo:
                await put(todo.pop(), url)
        await asyncio.gather(*(worker(w) for w in range(concurrency)))


def _proc_cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _wrk_seconds(duration: float) -> int:
    """wrk's ``-d`` for ``duration``: whole seconds, at least one."""
    return max(1, math.ceil(duration))


def run_wrk(procs: Procs, scripts: dict[str, Path], system: str, workload: str,
            urls: list[str], connections: int, target: str, seconds: float,
            warmup: float, server_pids: list[int]) -> Side:
    script = scripts[f"{system}-{workload}"]
    aims = [urls[0]] if target == "one" else urls
    conns = split_connections(connections, len(aims))
    threads = 2 if target == "one" else 1

    def launch(duration: float) -> list[WrkRun]:
        ps = []
        for url, c in zip(aims, conns, strict=True):
            cmd = ["wrk", "-t", str(min(threads, c)), "-c", str(c),
                   "-d", f"{_wrk_seconds(duration)}s", "--timeout", "10s",
                   "-s", str(script), url]
            ps.append(procs.add(subprocess.Popen(cmd, stdout=subprocess.PIPE,
                                                 stderr=subprocess.STDOUT)))
        outs = []
        began = time.monotonic()
        for p in ps:
            try:
                out, _ = p.communicate(timeout=max(
                    0.0, began + STALL_FACTOR * duration + 30 - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                out, _ = p.communicate()
            procs.procs.remove(p)
            text = out.decode(errors="replace")
            if MARK in text or p.returncode != -signal.SIGKILL:
                outs.append(parse_wrk_output(text))
            else:  # killed 30 s late, before its report: a stall (``Side.stalled``)
                outs.append(WrkRun(duration_s=time.monotonic() - began, requests=0, ok=0,
                                   bad=0, won=0, conflict=0, socket_errors=0,
                                   bad_statuses={}, quantiles_ms=[]))
        return outs

    if warmup > 0:
        launch(warmup)
    cpu0 = _children_cpu_s()
    srv0 = sum(_proc_cpu_s(pid) for pid in server_pids)
    runs = launch(seconds)
    side = side_from_runs(runs, cas=workload == "cas-hot")
    side.requested_s = _wrk_seconds(seconds)
    side.wrk_cpu_s = _children_cpu_s() - cpu0
    side.server_cpu_s = sum(_proc_cpu_s(pid) for pid in server_pids) - srv0
    return side


# --------------------------------------------------------------------------- main


@contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)
    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m paxoskv.bench_compare",
                                 description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--seconds", type=float, default=5.0,
                    help="measured seconds per cell (wrk: whole seconds)")
    ap.add_argument("--warmup", type=float, default=1.0, help="discarded seconds per cell")
    ap.add_argument("--keys", type=int, default=10_000, help="keys pre-loaded")
    ap.add_argument("--value-bytes", type=int, default=100)
    ap.add_argument("--connections", default="16,128", help="comma-separated")
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated")
    ap.add_argument("--targets", default="one,all", help="comma-separated: one, all")
    ap.add_argument("--rounds", type=int, default=1,
                    help="measurements per cell, etcd and paxoskv back to back in each, "
                         "the first system alternating; the table shows each cell's "
                         "median round by ratio and the range of the ratios (default 1)")
    ap.add_argument("--no-etcd-cas", action="store_true",
                    help="skip etcd's CAS cells (txn on mod_revision)")
    ap.add_argument("--json", default="reports/bench-compare.json", help="JSON output path")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    for tool in ("etcd", "wrk"):
        if shutil.which(tool) is None:
            print(f"bench-compare: {tool} not found; `make bench-compare` installs it "
                  "(apt-get install etcd-server wrk)", file=sys.stderr)
            return 2
    workloads = [w for w in args.workloads.split(",") if w]
    for w in workloads:
        _workload_params(w)
    conn_list = [int(c) for c in args.connections.split(",") if c]
    targets = [t for t in args.targets.split(",") if t in ("one", "all")]
    value = b"v" * args.value_bytes
    n_cells = len(workloads) * len(conn_list) * len(targets)
    est = n_cells * args.rounds * 2 * (args.seconds + args.warmup + 0.5)
    print(f"bench-compare: {n_cells} cells x {args.rounds} round(s) x 2 systems, about "
          f"{est / 60:.1f} min of load "
          f"plus pre-loading {args.keys} keys; load average {_loadavg()}", flush=True)

    base = Path(tempfile.mkdtemp(prefix="paxoskv-bench-compare-"))
    procs = Procs()
    cells: list[Cell] = []
    load_before = _loadavg()
    started = time.monotonic()
    try:
        with _sigterm_as_exit():
            scripts: dict[str, Path] = {}
            for system in ("etcd", "paxoskv"):
                for w in workloads:
                    path = base / f"{system}-{w}.lua"
                    path.write_text(lua_script(system, w, args.keys, value))
                    scripts[f"{system}-{w}"] = path
            etcd_urls = start_etcd(base, procs)
            etcd_pids = [p.pid for p in procs.procs]
            px_procs, px_urls = start_cluster(base / "paxoskv", 3)
            for p in px_procs:
                procs.add(p)
            px_pids = [p.pid for p in px_procs]
            print(f"bench-compare: etcd {etcd_urls}, paxoskv {px_urls}", flush=True)
            for system, urls in (("etcd", etcd_urls), ("paxoskv", px_urls)):
                t0 = time.monotonic()
                asyncio.run(_preload(system, urls, args.keys, value))
                print(f"bench-compare: {system} pre-loaded {args.keys} keys in "
                      f"{time.monotonic() - t0:.1f} s", flush=True)
            i = 0
            for w in workloads:
                for c in conn_list:
                    for t in targets:
                        i += 1
                        rounds: list[Round] = []
                        for r in range(args.rounds):
                            sides: dict[str, Side] = {}
                            order = [("etcd", etcd_urls, etcd_pids),
                                     ("paxoskv", px_urls, px_pids)]
                            for system, urls, pids in order[::-1] if r % 2 else order:
                                if system == "etcd" and w == "cas-hot" and args.no_etcd_cas:
                                    sides[system] = Side(skipped="--no-etcd-cas")
                                    continue
                                sides[system] = run_wrk(procs, scripts, system, w, urls, c,
                                                        t, args.seconds, args.warmup, pids)
                            rounds.append(Round(sides["etcd"], sides["paxoskv"]))
                            es, ps = sides["etcd"], sides["paxoskv"]
                            of = f" round {r + 1}/{args.rounds}" if args.rounds > 1 else ""
                            print(f"bench-compare: [{i}/{n_cells}]{of} {w} c={c} {t}: etcd "
                                  f"{es.rps:.0f} r/s ({es.errors} err), paxoskv "
                                  f"{ps.rps:.0f} r/s ({ps.errors} err), "
                                  f"{'STALLED, ' if es.stalled or ps.stalled else ''}"
                                  f"{time.monotonic() - started:.0f} s in", flush=True)
                        cells.append(cell_from_rounds(w, c, t, rounds))
    except KeyboardInterrupt:
        print("bench-compare: interrupted; stopping everything it started", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        shutil.rmtree(base, ignore_errors=True)
    meta = {"cpus": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": _loadavg(),
            "seconds": args.seconds, "warmup": args.warmup, "keys": args.keys,
            "value_bytes": args.value_bytes, "etcd": _etcd_version(),
            "wall_s": round(time.monotonic() - started, 1), "rounds": args.rounds,
            "wrk_threads": "2 per process aimed at one member; 1 per process x 3 for all"}
    print()
    print(f"3 etcd members vs 3 paxoskv nodes on 127.0.0.1, {args.keys} keys of "
          f"{args.value_bytes} bytes, {args.seconds:g} s per cell after {args.warmup:g} s "
          f"warm-up, {args.rounds} round(s) per cell; {os.cpu_count()} cores shared by "
          f"servers and wrk; load average "
          f"{load_before} before, {meta['loadavg_after']} after")
    print(format_table(cells))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(to_json(cells, meta) + "\n")
    print(f"\nbench-compare: wrote {out}")
    return 0


def _etcd_version() -> str:
    try:
        out = subprocess.run(["etcd", "--version"], capture_output=True, text=True, timeout=10)
        return out.stdout.splitlines()[0] if out.stdout else "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


if __name__ == "__main__":
    sys.exit(main())
