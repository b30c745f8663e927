"""deploy/scripts/audit_deps.py against a fake PyPI JSON API on 127.0.0.1."""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "scripts" / "audit_deps.py"


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("audit_deps", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


audit_deps = load()


def vuln(vid: str, fixed: list[str], withdrawn: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "id": vid,
        "aliases": extra.get("aliases", []),
        "details": "a canned advisory",
        "summary": None,
        "fixed_in": fixed,
        "link": f"https://osv.dev/vulnerability/{vid}",
        "source": "osv",
        "withdrawn": withdrawn,
    }


def project(name: str, latest: str, vulns: list[dict[str, Any]]) -> dict[str, Any]:
    return {"info": {"name": name, "version": latest}, "vulnerabilities": vulns}


class FakePyPI:
    """Serves `routes[path]` as JSON; a missing path is a 404, like pypi.org's per-release
    API here. `delay` seconds before answering, for the timeout test."""

    def __init__(self) -> None:
        self.routes: dict[str, dict[str, Any]] = {}
        self.requests: list[str] = []
        self.delay = 0.0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake.requests.append(self.path)
                if fake.delay:
                    time.sleep(fake.delay)
                body = fake.routes.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/pypi"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def pypi() -> Iterator[FakePyPI]:
    fake = FakePyPI()
    yield fake
    fake.close()


def run(tmp_path: Path, constraints: str, *args: str) -> int:
    path = tmp_path / "constraints.txt"
    path.write_text(constraints)
    return int(audit_deps.main(["--constraints", str(path), *args]))


def test_vulnerable_pin_fails_and_names_the_id(
    pypi: FakePyPI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the per-release API answers (what pip-audit asks): its vulnerabilities are used
    pypi.routes["/pypi/aiohttp/3.9.0/json"] = project(
        "aiohttp", "3.9.0", [vuln("GHSA-aaaa-bbbb-cccc", ["3.9.2", "3.10.0"], aliases=["CVE-1"])]
    )
    pypi.routes["/pypi/idna/3.7/json"] = project("idna", "3.7", [])
    rc = run(tmp_path, "# pins\naiohttp==3.9.0\nidna==3.7  # comment\n", "--index-url", pypi.url)
    out = capsys.readouterr().out
    assert rc == 1
    assert "aiohttp==3.9.0: VULNERABLE: GHSA-aaaa-bbbb-cccc (CVE-1) fixed in 3.9.2, 3.10.0" in out
    assert "idna==3.7: ok" in out
    assert "2 pins: 1 ok, 1 vulnerable, 0 not audited" in out
    assert "/pypi/aiohttp/json" not in pypi.requests  # no fallback needed


def test_withdrawn_vulnerability_is_ignored(
    pypi: FakePyPI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pypi.routes["/pypi/yarl/1.9.0/json"] = project(
        "yarl", "1.9.0", [vuln("PYSEC-2099-1", ["1.9.1"], withdrawn="2024-01-02T00:00:00Z")]
    )
    rc = run(tmp_path, "yarl==1.9.0\n", "--index-url", pypi.url)
    out = capsys.readouterr().out
    assert rc == 0
    assert "yarl==1.9.0: ok" in out
    assert "PYSEC-2099-1" not in out


def test_per_release_404_falls_back_to_the_latest_release(
    pypi: FakePyPI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # no per-release route: 404, as on pypi.org here. The project JSON's latest release is
    # the pin (names compared after PEP 503 normalisation), so its vulnerabilities count;
    # the GHSA entry is the same advisory as the PYSEC one and is shown once.
    pypi.routes["/pypi/prometheus-client/json"] = project(
        "prometheus_client",
        "0.26.0",
        [
            vuln("PYSEC-2025-7", ["0.26.1"], aliases=["GHSA-xxxx-yyyy-zzzz"]),
            vuln("GHSA-xxxx-yyyy-zzzz", ["0.26.1"], aliases=["PYSEC-2025-7"]),
            vuln("GHSA-gone-gone-gone", ["0.27"], withdrawn="2025-02-01T00:00:00Z"),
        ],
    )
    pypi.routes["/pypi/pyyaml/json"] = project("PyYAML", "6.0.4", [])
    rc = run(tmp_path, "Prometheus.Client==0.26.0\nPyYAML==6.0.4\n", "--index-url", pypi.url)
    out = capsys.readouterr().out
    assert rc == 1
    assert "/pypi/prometheus-client/0.26.0/json" in pypi.requests
    assert (
        "Prometheus.Client==0.26.0: VULNERABLE: PYSEC-2025-7 (GHSA-xxxx-yyyy-zzzz) fixed in 0.26.1"
        in out
    )
    assert "GHSA-gone" not in out
    assert "PyYAML==6.0.4: ok" in out


def test_pin_behind_the_latest_release_is_not_audited_and_exits_0(
    pypi: FakePyPI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the latest release's vulnerabilities say nothing about an older pin
    pypi.routes["/pypi/attrs/json"] = project("attrs", "26.1.0", [vuln("GHSA-new", ["26.2"])])
    rc = run(tmp_path, "attrs==25.0.0\n", "--index-url", pypi.url)
    out = capsys.readouterr().out
    assert rc == 0
    assert (
        "attrs==25.0.0: not audited: pinned 25.0.0, latest 26.1.0, and PyPI's per-release "
        "data is unreachable here" in out
    )
    assert "GHSA-new" not in out
    assert "warning: not audited" in out and "attrs==25.0.0" in out.splitlines()[-1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_index_warns_and_exits_0_or_1_with_strict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{free_port()}/pypi"  # nothing listens: connection refused
    assert run(tmp_path, "idna==3.7\nyarl==1.9.0\n", "--index-url", url) == 0
    out = capsys.readouterr().out
    assert "idna==3.7: not audited: PyPI unreachable" in out
    warning = [line for line in out.splitlines() if "warning: PyPI unreachable" in line]
    assert len(warning) == 1 and "not an error without --strict" in warning[0]
    assert run(tmp_path, "idna==3.7\n", "--index-url", url, "--strict") == 1
    assert "warning: PyPI unreachable" in capsys.readouterr().out


def test_slow_index_is_bounded_by_the_timeout(
    pypi: FakePyPI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pypi.delay = 3.0
    pins = "".join(f"p{i}==1.0\n" for i in range(8))
    started = time.monotonic()
    rc = run(tmp_path, pins, "--index-url", pypi.url, "--timeout", "0.3", "--jobs", "2")
    assert time.monotonic() - started < 2.0  # not 8 x timeout: the first failure stops the rest
    assert rc == 0
    assert "8 not audited" in capsys.readouterr().out


def test_malformed_constraints_line_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "constraints.txt"
    path.write_text("idna==3.7\naiohttp>=3.9\n")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--constraints", str(path), "--index-url",
         "http://127.0.0.1:9/pypi"],
        capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (
        f"audit_deps: error: {path}:2: expected `name==version`, got 'aiohttp>=3.9'"
    )
    assert proc.stdout == ""  # nothing was fetched


def test_missing_constraints_file_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert audit_deps.main(["--constraints", str(tmp_path / "nope.txt")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_parse_constraints_reads_the_repository_file() -> None:
    text = (SCRIPT.parents[2] / "constraints.txt").read_text()
    pins = audit_deps.parse_constraints(text)
    assert pins and all(p.version[0].isdigit() for p in pins)
    assert audit_deps.normalize("Foo_Bar.baz") == audit_deps.normalize("foo-bar-baz")
