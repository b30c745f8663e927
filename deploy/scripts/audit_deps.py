#!/usr/bin/env python3
"""Check every `name==version` pin of constraints.txt against PyPI's vulnerability data.

An equivalent of `pip-audit -r constraints.txt --no-deps -s pypi` that works where pip-audit
cannot: PyPI's JSON API carries a `vulnerabilities` list (from the OSV database) per release.
pip-audit asks the per-release endpoint `<index>/<name>/<version>/json`; where that answers
404 (as it does on the machines this project is built on) this script falls back to the
project endpoint `<index>/<name>/json`, whose `vulnerabilities` describe the project's
*latest* release, and uses them only when `info.version` is the pinned version. Withdrawn
entries are ignored.

One line per pin (as each answer arrives), then a summary:

    ok
    VULNERABLE: <ids> fixed in <versions>
    not audited: pinned X, latest Y, and PyPI's per-release data is unreachable here

Exit status:

    0  no pinned version has a known vulnerability (pins that could not be audited are a
       warning, listed, not a failure: `make lock` pins the latest releases, which this
       check can audit, so a pin that fell behind becomes auditable at the next re-pin)
    1  some pinned version has a known (not withdrawn) vulnerability; or, with --strict,
       PyPI could not be reached
    2  constraints.txt cannot be read or has a line that is not `name==version`

PyPI unreachable (no network, DNS failure, a timeout, a 5xx answer) is a one-line warning
and exit 0, so `make lint` still works offline; `--strict` (for CI) makes it exit 1. Each
request times out after --timeout seconds (10) and the whole run after --deadline (60);
after the first network failure the remaining requests are not attempted.

    python3 deploy/scripts/audit_deps.py                      # ./constraints.txt, pypi.org
    python3 deploy/scripts/audit_deps.py --strict --constraints path/to/constraints.txt
    python3 deploy/scripts/audit_deps.py --index-url http://127.0.0.1:8080/pypi   # a mirror

Standard library only (urllib, json), so it runs before any virtualenv exists.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

DEFAULT_INDEX = "https://pypi.org/pypi"
DEFAULT_CONSTRAINTS = Path(__file__).resolve().parents[2] / "constraints.txt"
USER_AGENT = "paxoskv-audit-deps/1 (+stdlib urllib)"
NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
PIN = re.compile(rf"^({NAME})\s*==\s*([A-Za-z0-9][A-Za-z0-9.+!_-]*)$")


class ConstraintsError(Exception):
    """A line of constraints.txt that is not `name==version`."""


class Unreachable(Exception):
    """PyPI did not answer usably: network error, timeout, 5xx/429, invalid JSON, deadline."""


def normalize(name: str) -> str:
    """PEP 503 name normalisation: case-insensitive, runs of `-`, `_` and `.` are equal."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    line: int

    def __str__(self) -> str:
        return f"{self.name}=={self.version}"


def parse_constraints(text: str, source: str = "constraints.txt") -> list[Pin]:
    """Every `name==version` line; comments and blank lines are skipped, anything else is an
    error naming the file and line."""
    pins: list[Pin] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = PIN.match(line)
        if match is None:
            raise ConstraintsError(
                f"{source}:{number}: expected `name==version`, got {raw.strip()!r}"
            )
        pins.append(Pin(match.group(1), match.group(2), number))
    return pins


@dataclass
class Result:
    pin: Pin
    status: str  # "ok", "vulnerable", "not-audited", "unreachable"
    message: str
    vulns: list[dict[str, Any]] = field(default_factory=list)


class Fetcher:
    """GETs JSON with a per-request timeout, an overall deadline, and a shared 'offline'
    flag so that one network failure stops the remaining requests instead of each waiting
    for its own timeout."""

    def __init__(self, timeout: float, deadline: float) -> None:
        self.timeout = timeout
        self.deadline = time.monotonic() + deadline
        self.offline = threading.Event()
        self.reason = ""

    def get(self, url: str) -> dict[str, Any] | None:
        """The decoded JSON object, or None on 404. Raises Unreachable otherwise."""
        if self.offline.is_set():
            raise Unreachable(self.reason)
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            self._fail("the overall deadline passed")
        request = urllib.request.Request(
            url, headers={"Accept": "application/json", "User-Agent": USER_AGENT}
        )
        try:
            with urllib.request.urlopen(request, timeout=min(self.timeout, remaining)) as resp:
                body = resp.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            self._fail(f"{url} answered HTTP {exc.code}")
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            # DNS, refused, TLS, timeout, a connection cut mid-answer
            reason = getattr(exc, "reason", exc)
            self._fail(f"{url}: {reason}")
        try:
            data = json.loads(body)
        except ValueError:
            self._fail(f"{url} answered something that is not JSON")
        if not isinstance(data, dict):
            self._fail(f"{url} answered JSON that is not an object")
        return data

    def _fail(self, reason: str) -> NoReturn:
        if not self.offline.is_set():
            self.reason = reason
            self.offline.set()
        raise Unreachable(reason)


def active(vulns: Any) -> list[dict[str, Any]]:
    """The entries of a `vulnerabilities` list that are not withdrawn."""
    if not isinstance(vulns, list):
        return []
    return [v for v in vulns if isinstance(v, dict) and not v.get("withdrawn")]


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Good enough to sort fixed-in versions for display (not a PEP 440 implementation)."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"[.+!-]", version))


def merge_aliases(vulns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """PyPI lists one advisory under each of its ids (PYSEC-..., GHSA-...); keep the first."""
    seen: set[str] = set()
    kept = []
    for v in vulns:
        names = {str(v.get("id"))} | {str(a) for a in v.get("aliases") or []}
        if names & seen:
            continue
        seen |= names
        kept.append(v)
    return kept


def describe(vulns: list[dict[str, Any]]) -> str:
    ids = []
    fixed: set[str] = set()
    for v in vulns:
        vid = str(v.get("id") or "?")
        aliases = [str(a) for a in v.get("aliases") or [] if a != vid]
        ids.append(f"{vid} ({', '.join(aliases)})" if aliases else vid)
        fixed.update(str(f) for f in v.get("fixed_in") or [])
    if not fixed:
        return f"VULNERABLE: {', '.join(ids)}; no fixed release known"
    return f"VULNERABLE: {', '.join(ids)} fixed in {', '.join(sorted(fixed, key=version_key))}"


def audit_pin(pin: Pin, index: str, fetcher: Fetcher) -> Result:
    name = normalize(pin.name)
    try:
        release = fetcher.get(f"{index}/{name}/{pin.version}/json")
        if release is not None:
            vulns = active(release.get("vulnerabilities"))
        else:
            project = fetcher.get(f"{index}/{name}/json")
            if project is None:
                return Result(pin, "not-audited", f"not audited: {pin.name} is not on the index")
            info = project.get("info") or {}
            latest = str(info.get("version", "?"))
            if normalize(str(info.get("name", name))) != name:
                return Result(
                    pin, "not-audited", f"not audited: the index answered for {info.get('name')}"
                )
            if latest.lower() != pin.version.lower():
                return Result(
                    pin,
                    "not-audited",
                    f"not audited: pinned {pin.version}, latest {latest}, and PyPI's "
                    "per-release data is unreachable here",
                )
            vulns = active(project.get("vulnerabilities"))
    except Unreachable:
        return Result(pin, "unreachable", "not audited: PyPI unreachable")
    if vulns:
        vulns = merge_aliases(vulns)
        return Result(pin, "vulnerable", describe(vulns), vulns)
    return Result(pin, "ok", "ok")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Audit constraints.txt pins against PyPI's vulnerability data "
        "(a pip-audit equivalent that falls back to the project JSON API).",
    )
    parser.add_argument(
        "--constraints", type=Path, default=DEFAULT_CONSTRAINTS,
        help="the pins to audit (default: the repository's constraints.txt)",
    )
    parser.add_argument(
        "--index-url", default=DEFAULT_INDEX,
        help=f"base of PyPI's JSON API (default {DEFAULT_INDEX})",
    )
    parser.add_argument(
        "--strict", action="store_true",
        help="exit 1 when PyPI cannot be reached (default: warn and exit 0)",
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    parser.add_argument("--deadline", type=float, default=60.0, help="seconds for the run")
    parser.add_argument("--jobs", type=int, default=4, help="parallel requests")
    args = parser.parse_args(argv)

    try:
        text = args.constraints.read_text()
    except OSError as exc:
        print(f"audit_deps: error: cannot read {args.constraints}: {exc.strerror}",
              file=sys.stderr)
        return 2
    try:
        pins = parse_constraints(text, str(args.constraints))
    except ConstraintsError as exc:
        print(f"audit_deps: error: {exc}", file=sys.stderr)
        return 2

    index = args.index_url.rstrip("/")
    fetcher = Fetcher(args.timeout, args.deadline)
    print(f"audit_deps: {len(pins)} pins from {args.constraints} against {index}", flush=True)
    results: list[Result] = []
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [pool.submit(audit_pin, pin, index, fetcher) for pin in pins]
        for done, future in enumerate(as_completed(futures), start=1):
            result = future.result()
            results.append(result)
            print(f"  [{done}/{len(pins)}] {result.pin}: {result.message}", flush=True)

    counts = {s: sum(r.status == s for r in results)
              for s in ("ok", "vulnerable", "not-audited", "unreachable")}
    print(
        f"audit_deps: {len(pins)} pins: {counts['ok']} ok, {counts['vulnerable']} vulnerable, "
        f"{counts['not-audited'] + counts['unreachable']} not audited"
    )
    vulnerable = sorted(str(r.pin) for r in results if r.status == "vulnerable")
    if vulnerable:
        print(f"audit_deps: known vulnerabilities in: {', '.join(vulnerable)} "
              "(raise the pin, or the lower bound in pyproject.toml, then `make lock`)")
    not_audited = sorted(str(r.pin) for r in results if r.status == "not-audited")
    if not_audited:
        print(f"audit_deps: warning: not audited (re-pin with `make lock` to make them "
              f"auditable): {', '.join(not_audited)}")
    if counts["unreachable"]:
        print(
            f"audit_deps: warning: PyPI unreachable ({fetcher.reason}); "
            f"{counts['unreachable']} pins not audited"
            + ("" if args.strict else " (not an error without --strict)")
        )
    if counts["vulnerable"]:
        return 1
    if counts["unreachable"] and args.strict:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
