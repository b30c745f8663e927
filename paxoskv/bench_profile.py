"""``python -m paxoskv.bench_profile``: where a node's CPU goes under load, from py-spy.

Starts a 3-node cluster on 127.0.0.1 (the same one ``make bench-compare`` starts),
pre-loads its keys as bench-compare does (so a put overwrites, as there), drives
one workload at the first node with ``wrk`` (the same Lua scripts), samples every node
with ``py-spy record`` for the measured seconds, and prints per node the CPU it used per
request and the functions that take the most samples: by themselves ("self") and with
what they call ("inclusive"). Raw samples go to ``reports/profile-<workload>-n<i>.txt``
(py-spy's collapsed format, for flame graph tools).

py-spy reads the processes' memory, so it needs the right to trace them (root, or
``kernel.yama.ptrace_scope=0``). Bounded: warm-up + seconds, every process stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

from paxoskv.bench import start_cluster, stop_cluster
from paxoskv.bench_compare import _preload, _proc_cpu_s, lua_script, parse_wrk_output

__all__ = ["main", "summarize"]

_FRAME = re.compile(r"(?P<fn>.*) \((?P<path>.*?)(:\d+)?\)$")
_TRIM = re.compile(r".*/(site-packages|python3\.\d+|paxoskv)/")
_PLUMBING = ("runpy", "runners.py", "cli.py", "__main__", "base_events.py", "events.py",
             "threading.py")


def _short(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    path = _TRIM.sub(r"\1/", m.group("path"))
    return f"{m.group('fn')} ({path})"


def summarize(lines: Iterable[str], top: int = 15) -> str:
    """Top functions of py-spy's collapsed stacks ("a;b;c 12" per line), in percent of all
    samples: by themselves and with their callees. Event-loop plumbing that every sample
    passes through is left out of the inclusive list."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in lines:
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_short(f) for f in stack.split(";")]
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    if not total:
        return "  (no samples)\n"
    out = [f"  {total} samples; self:"]
    out += [f"    {100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    out.append("  inclusive:")
    shown = [(f, n) for f, n in incl.most_common() if not any(p in f for p in _PLUMBING)]
    out += [f"    {100 * n / total:5.1f}%  {f}" for f, n in shown[:top]]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m paxoskv.bench_profile", description=__doc__)
    ap.add_argument("--workload", default="put",
                    help="put, get-lin, get-stale, mix-90r, mix-50r or cas-hot")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--out", type=Path, default=Path("reports"))
    args = ap.parse_args(argv)
    for tool in ("wrk", "py-spy"):
        if shutil.which(tool) is None and not (Path(sys.executable).parent / tool).exists():
            print(f"bench-profile: {tool} not found (make profile installs it)",
                  file=sys.stderr)
            return 2
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="paxoskv-profile-") as tmp:
        base = Path(tmp)
        script = base / "load.lua"
        script.write_text(lua_script("paxoskv", args.workload, args.keys, b"x" * 100))
        print(f"bench-profile: starting 3 nodes, {args.workload} at {args.connections} "
              f"connections on node 1, {args.warmup} s warm-up + {args.seconds} s sampled",
              file=sys.stderr)
        procs, urls = start_cluster(base / "cluster", 3)
        spies: list[subprocess.Popen[bytes]] = []
        try:
            asyncio.run(_preload("paxoskv", urls, args.keys, b"x" * 100))
            wrk = ["wrk", "-t", "2", "-c", str(args.connections), "--timeout", "10s",
                   "-s", str(script), urls[0]]
            subprocess.run([*wrk[:5], "-d", f"{args.warmup}s", *wrk[5:]], check=True,
                           capture_output=True, timeout=args.warmup + 30)
            outs = [args.out / f"profile-{args.workload}-n{i + 1}.txt"
                    for i in range(len(procs))]
            cpu0 = [_proc_cpu_s(p.pid) for p in procs]
            spies = [subprocess.Popen([spy, "record", "--pid", str(p.pid), "--duration",
                                       str(args.seconds), "--rate", "200", "--format", "raw",
                                       "--output", str(out), "--nonblocking"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                     for p, out in zip(procs, outs, strict=True)]
            run = subprocess.run([*wrk[:5], "-d", f"{args.seconds}s", *wrk[5:]], check=True,
                                 capture_output=True, text=True, timeout=args.seconds + 30)
            cpu1 = [_proc_cpu_s(p.pid) for p in procs]
            for s in spies:
                s.wait(timeout=args.seconds + 30)
            result = parse_wrk_output(run.stdout)
        finally:
            for s in spies:
                if s.poll() is None:
                    s.kill()
                    s.wait()
            stop_cluster(procs)
    rate = result.ok / result.duration_s
    print(f"{args.workload}, {args.connections} connections to node 1: {rate:.0f} ok/s, "
          f"{result.bad} errors")
    for i, (out, a, b) in enumerate(zip(outs, cpu0, cpu1, strict=True)):
        per = 1e6 * (b - a) / max(result.ok, 1)
        print(f"node {i + 1}: {per:.0f} us of CPU per request ({out})")
        text = out.read_text() if out.exists() else ""
        print(summarize(text.splitlines(), args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
