"""The command line (paxoskv/cli.py): env-var flags and clear errors for bad input."""

from __future__ import annotations

import subprocess
import sys

import pytest

from paxoskv.cli import main


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os
    return subprocess.run([sys.executable, "-m", "paxoskv", *args], capture_output=True,
                          text=True, timeout=30, env={**os.environ, **(env or {})})


@pytest.mark.parametrize(("args", "message"), [
    (["serve", "--listen", "nope"], "must be HOST:PORT"),
    (["serve", "--peer-listen", "7001"], "--peer-listen '7001' must be HOST:PORT"),
    (["serve", "--listen", "127.0.0.1:7000", "--peer-listen", "127.0.0.1:7000"],
     "distinct ports"),
    (["serve", "--metrics-listen", "127.0.0.1:7000"], "distinct ports"),
    (["serve", "--peer-on-client-port"], "needs --peer-listen"),
    (["serve", "--tls-key-file", "k.pem"], "needs both --tls-cert-file and --tls-key-file"),
    (["serve", "--tls-cert-file", "/nonexistent/c.pem", "--tls-key-file", "/nonexistent/k.pem"],
     "/nonexistent/c.pem does not exist"),
    (["serve", "--node-id", "1", "--tls-cert-file", sys.executable,
      "--tls-key-file", sys.executable, "--peers", "1=https://127.0.0.1:1,2=http://127.0.0.1:2"],
     "must be https:// (nodes [2])"),
    (["serve", "--peers", "1=http://127.0.0.1:1,2=http://127.0.0.1:2"], "--node-id is required"),
    (["serve", "--node-id", "1", "--peers", "1=http://127.0.0.1:1,2=http://127.0.0.1:2"],
     "peer secret"),
    (["serve", "--node-id", "5", "--peers", "1=http://127.0.0.1:1"], "not among"),
    (["serve", "--peers", "garbage"], "not ID=URL"),
    (["serve", "--statefulset"], "needs POD_NAME"),
    (["serve", "--node-id", "1", "--max-value-bytes", "0"], "max value bytes"),
    (["serve", "--node-id", "1", "--idempotency-window", "0"], "--idempotency-window"),
    (["serve", "--node-id", "1", "--idempotency-window", "inf"], "--idempotency-window"),
    (["local-cluster", "--nodes", "0"], "--nodes"),
])
def test_bad_configuration_is_one_line_exit_2(args: list[str], message: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Goal: bad flags give one clear line and exit 2, never a traceback."""
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_flags_come_from_the_environment() -> None:
    """Goal: every flag is readable from PAXOSKV_*; a bad env value is named."""
    res = run("serve", "--help", env={"PAXOSKV_LISTEN": "127.0.0.1:9999"})
    assert res.returncode == 0
    assert "PAXOSKV_LISTEN" in res.stdout
    res = run("serve", env={"PAXOSKV_NODE_ID": "x"})
    assert res.returncode == 2
    assert "PAXOSKV_NODE_ID='x'" in res.stderr


def test_client_reports_an_unreachable_server() -> None:
    """Goal: a client command against nothing says so and exits 3."""
    res = run("get", "k", "--url", "http://127.0.0.1:9")
    assert res.returncode == 3
    assert "cannot reach" in res.stderr
    assert "Traceback" not in res.stderr


def test_every_serve_flag_and_env_var_is_documented_in_the_readme() -> None:
    """Goal: docs for every knob: each `serve` and `local-cluster` flag, and its PAXOSKV_*
    variable, appears in README.md."""
    import argparse
    from pathlib import Path

    from paxoskv.cli import _build_parser, _env

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    parser = _build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for command in ("serve", "local-cluster"):
        for action in subparsers.choices[command]._actions:
            for flag in action.option_strings:
                if flag.startswith("--") and flag != "--help":
                    assert f"`{flag}`" in readme, flag
                    if command == "serve":
                        assert _env(flag) in readme, _env(flag)
