"""The command line (paxoskv/cli.py): env-var flags and clear errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakenode import FakeNode

from paxoskv.auth import Rate, hash_token, read_token_file
from paxoskv.chaos.processes import free_ports
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
    (["serve", "--node-id", "1", "--max-replicas", "5"], "need --statefulset"),
    (["serve", "--node-id", "1", "--follow-replicas"], "need --statefulset"),
    (["serve", "--node-id", "1", "--rejoin", "--rejoin-accept-old-copy"],
     "--rejoin-accept-old-copy needs --rejoin-after-quorum-loss"),
    (["serve", "--node-id", "1", "--max-value-bytes", "0"], "max value bytes"),
    (["serve", "--node-id", "1", "--idempotency-window", "0"], "--idempotency-window"),
    (["serve", "--node-id", "1", "--idempotency-window", "inf"], "--idempotency-window"),
    (["local-cluster", "--nodes", "0"], "--nodes"),
    (["serve", "--node-id", "1", "--auth", "token"], "--auth token needs --token-file"),
    (["serve", "--node-id", "1", "--token-file", "t.json"], "--token-file needs --auth token"),
    (["serve", "--node-id", "1", "--metrics-auth"], "--metrics-auth needs --auth token"),
    (["serve", "--node-id", "1", "--auth", "token", "--token-file", "/nonexistent/t.json"],
     "cannot read the token file"),
    (["token", "new", "--name", " ", "--role", "read"], "name must be"),
    (["serve", "--node-id", "1", "--token-rate-limit", "10"],
     "--token-rate-limit needs --auth token"),
    (["token", "new", "--name", "a", "--role", "read", "--rate", "0/5"],
     "--rate: rate '0/5': per_second must be"),
    (["token", "new", "--name", "a", "--role", "read", "--rate", "lots"],
     "--rate: rate 'lots' must be R or R/BURST"),
])
def test_bad_configuration_is_one_line_exit_2(args: list[str], message: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Goal: bad flags give one clear line and exit 2, never a traceback."""
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_a_bad_token_file_stops_serve_with_one_line(tmp_path: Path) -> None:
    """Goal: a server told to check tokens never starts without usable ones."""
    bad = tmp_path / "tokens.json"
    bad.write_text('{"tokens": [{"name": "x", "role": "root", "sha256": "00"}]}')
    res = run("serve", "--node-id", "1", "--data-dir", str(tmp_path / "d"),
              env={"PAXOSKV_AUTH": "token", "PAXOSKV_TOKEN_FILE": str(bad)})
    assert res.returncode == 2
    assert "role must be one of read, write, admin" in res.stderr
    assert "Traceback" not in res.stderr


def test_a_bad_token_rate_limit_stops_serve_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text('{"tokens": []}')
    res = run("serve", "--node-id", "1", "--data-dir", str(tmp_path / "d"), "--auth", "token",
              "--token-file", str(path), "--token-rate-limit", "50/0")
    assert res.returncode == 2
    assert "--token-rate-limit: rate '50/0': burst must be a whole number" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("alive_ago_s", [None, 2 * 86400])
def test_a_rebuild_on_an_old_data_directory_stops_serve_with_what_to_do(
        tmp_path: Path, alive_ago_s: int | None) -> None:
    """Goal: ``--rejoin --rejoin-after-quorum-loss`` on a data directory with rows that last
    served as a normal acceptor more than the tombstone grace ago (or cannot tell when)
    stops before it changes anything: one message naming the way out, a non-zero exit, no
    traceback (docs/recovery.md)."""
    import asyncio
    import time

    from paxoskv.core.acceptor import AcceptorState
    from paxoskv.core.ballot import Ballot
    from paxoskv.core.identity import META_ALIVE_AT
    from paxoskv.core.register import Value
    from paxoskv.storage.sqlite import SqliteStorage

    data = tmp_path / "d"
    data.mkdir()

    async def make() -> None:
        storage = SqliteStorage(data)
        for name, value in (("cluster_id", "paxoskv"), ("node_id", "1"), ("data_id", "d1"),
                            ("incarnation", "4")):
            await storage.set_meta(name, value)
        if alive_ago_s is not None:
            await storage.set_meta(META_ALIVE_AT, str(int((time.time() - alive_ago_s) * 1000)))
        await storage.save("k", AcceptorState(Ballot(3, 2), Ballot(3, 2), Value(1, b"old")))
        await storage.close()

    asyncio.run(make())
    ports = free_ports(3)
    peers = ",".join(f"{i + 1}=http://127.0.0.1:{p}" for i, p in enumerate(ports))
    res = run("serve", "--node-id", "1", "--peers", peers, "--listen", f"127.0.0.1:{ports[0]}",
              "--data-dir", str(data), "--rejoin", "--rejoin-after-quorum-loss",
              env={"PAXOSKV_PEER_SECRET": "s" * 32})
    assert res.returncode == 1, res
    assert "refusing to rebuild after a quorum loss" in res.stderr
    assert "--rejoin-accept-old-copy" in res.stderr and "empty data directory" in res.stderr
    assert "Traceback" not in res.stderr

    async def incarnation() -> str | None:
        storage = SqliteStorage(data)
        try:
            return storage.get_meta("incarnation")
        finally:
            await storage.close()

    assert asyncio.run(incarnation()) == "4", "refused before anything was written"


def test_serve_with_another_epoch0_acceptor_set_is_refused_with_what_to_do(
        tmp_path: Path) -> None:
    """Goal: a real ``paxoskv serve`` whose data directory was first started with the
    acceptor set {1, 2, 3} and is now told {1..5} (PAXOSKV_REPLICAS rendered anew) stops
    with one line saying what to do, a non-zero exit, no traceback, nothing written."""
    import asyncio

    from paxoskv.node import META_INITIAL_ACCEPTORS
    from paxoskv.storage.sqlite import SqliteStorage

    data = tmp_path / "d"
    data.mkdir()

    async def meta(name: str, value: str | None = None) -> str | None:
        storage = SqliteStorage(data)
        try:
            if value is not None:
                await storage.set_meta(name, value)
            return storage.get_meta(name)
        finally:
            await storage.close()

    for name, value in (("cluster_id", "paxoskv"), ("node_id", "1"), ("data_id", "d1"),
                        ("incarnation", "4"), (META_INITIAL_ACCEPTORS, "1,2,3")):
        asyncio.run(meta(name, value))
    ports = free_ports(5)
    peers = ",".join(f"{i + 1}=http://127.0.0.1:{p}" for i, p in enumerate(ports))
    res = run("serve", "--node-id", "1", "--peers", peers, "--listen", f"127.0.0.1:{ports[0]}",
              "--data-dir", str(data),
              env={"PAXOSKV_PEER_SECRET": "s" * 32})
    assert res.returncode == 1, res
    assert "epoch-0 acceptor set [1,2,3]" in res.stderr and "[1,2,3,4,5]" in res.stderr
    assert "--replicas" in res.stderr
    assert "Traceback" not in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("paxoskv: ") and "[1,2,3,4,5]" in last, res.stderr
    assert asyncio.run(meta("incarnation")) == "4", "refused before anything was written"


def test_token_new_writes_the_rate_option(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    a = run("token", "new", "--name", "app", "--role", "write", "--rate", "50/100",
            "--file", str(path))
    b = run("token", "new", "--name", "ops", "--role", "admin", "--rate", "unlimited",
            "--file", str(path))
    assert a.returncode == b.returncode == 0, a.stderr + b.stderr
    assert json.loads(path.read_text())["tokens"][0]["rate"] == {"per_second": 50,
                                                                 "burst": 100}
    assert [t.rate for t in read_token_file(path)] == [Rate(50.0, 100), "unlimited"]


def test_token_new_prints_the_token_once_and_stores_its_hash(tmp_path: Path) -> None:
    """Goal: stdout is the token alone (for TOKEN=$(...)); the file gets only its hash;
    a second entry of the same name is refused."""
    res = run("token", "new", "--name", "ops", "--role", "admin")
    assert res.returncode == 0, res.stderr
    token = res.stdout.strip()
    assert len(token) >= 43 and "\n" not in token
    entry = json.loads(res.stderr.splitlines()[1])
    assert entry == {"name": "ops", "role": "admin", "sha256": hash_token(token)}

    path = tmp_path / "tokens.json"
    a = run("token", "new", "--name", "app", "--role", "write", "--prefix", "app/",
            "--prefix", "common/", "--file", str(path))
    b = run("token", "new", "--name", "ro", "--role", "read", "--file", str(path))
    assert a.returncode == b.returncode == 0, a.stderr + b.stderr
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    tokens = read_token_file(path)
    assert [(t.name, t.role, t.prefixes) for t in tokens] == [
        ("app", "write", ("app/", "common/")), ("ro", "read", None)]
    assert tokens[0].sha256 == hash_token(a.stdout.strip())
    assert a.stdout.strip() not in path.read_text()
    again = run("token", "new", "--name", "ro", "--role", "read", "--file", str(path))
    assert again.returncode == 2
    assert "already has a token named 'ro'" in again.stderr
    path.write_text("{nope")
    broken = run("token", "new", "--name", "x", "--role", "read", "--file", str(path))
    assert broken.returncode == 2 and "not valid JSON" in broken.stderr
    assert "Traceback" not in again.stderr + broken.stderr


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
    res = run("get", "k", "--url", "http://127.0.0.1:9", "--retries", "2")
    assert res.returncode == 3
    assert "cannot reach" in res.stderr
    assert "Traceback" not in res.stderr


def test_every_serve_flag_and_env_var_is_documented_in_the_readme() -> None:
    """Goal: docs for every knob: each `serve` and `local-cluster` flag, and its PAXOSKV_*
    variable, appears in README.md's tables."""
    import argparse

    from paxoskv.cli import _build_parser, _env

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    parser = _build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for command in ("serve", "local-cluster"):
        for action in subparsers.choices[command]._actions:
            for flag in action.option_strings:
                if flag.startswith("--") and flag != "--help":
                    assert f"`{flag}`" in readme, flag
                    if command == "serve":
                        assert _env(flag) in readme, _env(flag)


# ------------------------------------------------------------------ client commands

@pytest.fixture
def fake() -> Iterator[FakeNode]:
    node = FakeNode().start()
    yield node
    node.stop()


def dead_url() -> str:
    return f"http://127.0.0.1:{free_ports(1)[0]}"


def test_one_default_port_for_serve_local_cluster_and_the_clients() -> None:
    """Goal: `paxoskv serve` then `paxoskv put k v` works: the client commands' default URL
    is serve's default --listen port (the chart's client port; 7001 is its peer port), and
    local-cluster's node 1 listens there."""
    from paxoskv.cli import DEFAULT_CLIENT_URL, _build_parser
    from paxoskv.client import DEFAULT_URL

    parser = _build_parser()
    listen = parser.parse_args(["serve"]).listen
    assert DEFAULT_CLIENT_URL == DEFAULT_URL == "http://127.0.0.1:" + listen.rpartition(":")[2]
    assert DEFAULT_URL.endswith(":7000")
    assert parser.parse_args(["local-cluster"]).base_port == 7000
    assert "base-port + i - 1" in run("local-cluster", "--help").stdout.replace("\n", " ")
    assert DEFAULT_URL in run("put", "--help").stdout


def test_several_urls_fail_over(fake: FakeNode) -> None:
    """Goal: --url repeated or comma-separated (and PAXOSKV_URL) reaches the node that is
    up; the write is sent once, with an Idempotency-Key."""
    res = run("put", "k", "v", "--url", f"{dead_url()},{dead_url()}", "--url", fake.url)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {"key": "k", "version": 1}
    res = run("get", "k", env={"PAXOSKV_URL": f"{dead_url()}, {fake.url}"})
    assert (res.returncode, res.stdout, res.stderr.strip()) == (0, "v", "version 1")
    assert [s.method for s in fake.seen] == ["PUT", "GET"]
    assert fake.seen[0].headers["Idempotency-Key"].startswith("pkv-")


def test_put_ttl_and_renew_send_the_ttl(fake: FakeNode) -> None:
    """Goal: ``put --ttl`` and ``renew --ttl [--if-match]`` reach the API as ``?ttl=``
    (docs/ttl.md), renew as a POST with its condition and an Idempotency-Key."""
    assert run("put", "k", "v", "--ttl", "30s", "--url", fake.url).returncode == 0
    run("renew", "k", "--ttl", "1m", "--if-match", "1", "--url", fake.url)
    put, renew = fake.seen[0], fake.seen[1]
    assert (put.method, put.path) == ("PUT", "/v1/kv/k?ttl=30s")
    assert (renew.method, renew.path) == ("POST", "/v1/kv/k/renew?ttl=1m")
    assert renew.headers["If-Match"] == '"1"'
    assert renew.headers["Idempotency-Key"].startswith("pkv-")
    assert run("renew", "k", "--url", fake.url).returncode == 2  # --ttl is required


def test_output_json_and_table(fake: FakeNode) -> None:
    fake.data["k"] = (3, "héllo".encode())
    fake.data["b"] = (1, b"\xff")
    got = run("get", "k", "-o", "json", "--url", fake.url)
    assert json.loads(got.stdout) == {"key": "k", "version": 3, "value": "héllo"}
    binary = run("get", "b", "--output", "json", "--url", fake.url)
    assert json.loads(binary.stdout)["value_base64"] == "/w=="
    table = run("get", "k", "-o", "table", "--url", fake.url)
    assert table.stdout.splitlines() == ["key      k", "version  3", "value    héllo"]
    listing = run("list", "--url", fake.url, env={"PAXOSKV_OUTPUT": "table"})
    assert listing.stdout.splitlines() == ["KEY", "b", "k"]
    status = run("status", "-o", "table", "--url", fake.url)
    assert status.stdout.splitlines() == ["node_id  1", "ready    True"]
    deleted = run("delete", "k", "-o", "json", "--url", fake.url)
    assert json.loads(deleted.stdout) == {"key": "k", "deleted": True, "version": 4}


def test_server_errors_are_one_line_with_exit_codes(fake: FakeNode) -> None:
    """Goal: a refusal is one line and exit 1; an unknown outcome exits 4 and names the
    Idempotency-Key every try carried, so the command can be re-run safely."""
    fake.data["k"] = (2, b"x")
    res = run("put", "k", "y", "--if-match", "1", "--url", fake.url)
    assert res.returncode == 1
    assert res.stderr.strip() == ("paxoskv: 412 precondition_failed: the condition did not "
                                  "hold")
    fake.script = [("answer", 504, "unknown_outcome", {})] * 2
    res = run("put", "k", "z", "--url", fake.url, "--retries", "2")
    assert res.returncode == 4, res.stderr
    keys = {s.headers["Idempotency-Key"] for s in fake.seen[1:]}
    assert len(fake.seen) == 3 and len(keys) == 1
    assert f"--idempotency-key {keys.pop()}" in res.stderr
    again = run("put", "k", "z", "--url", fake.url, "--idempotency-key", "mine-1")
    assert again.returncode == 0 and fake.seen[-1].headers["Idempotency-Key"] == "mine-1"
    assert "Traceback" not in res.stderr + again.stderr


@pytest.mark.parametrize(("args", "env", "message"), [
    (["get", "k", "--url", "localhost:7000"], {}, "is not an http:// or https:// URL"),
    (["get", "k"], {"PAXOSKV_URL": "http://a:1,ftp://b"}, "'ftp://b' is not an http://"),
    (["get", "k", "--retries", "0"], {}, "--retries >= 1"),
    (["get", "k", "--timeout", "0"], {}, "--timeout must be > 0"),
    (["get", "k"], {"PAXOSKV_OUTPUT": "xml"}, "output must be json or table"),
    (["get", "k", "--url", "https://127.0.0.1:1", "--cacert", "/nonexistent/ca.pem"], {},
     "TLS files"),
])
def test_bad_client_input_is_one_line_exit_2(args: list[str], env: dict[str, str],
                                             message: str) -> None:
    res = run(*args, env=env)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize(("line", "expected"), [
    ("paxoskv pu", "put"),
    ("paxoskv put -o ", "json table"),
    ("paxoskv get --ur", "--url"),
    ("paxoskv token new --role ", "read write admin"),
    ("paxoskv completion ", "bash zsh -h --help"),
    ("paxoskv serve --peer-transport ", "channel http"),
])
def test_bash_completion(line: str, expected: str, tmp_path: Path) -> None:
    """Goal: `eval "$(paxoskv completion bash)"` completes commands, flags and choices."""
    script = tmp_path / "paxoskv.bash"
    script.write_text(run("completion", "bash").stdout)
    probe = ('source "$1"; read -ra COMP_WORDS <<< "$2"; [[ "$2" == *" " ]] && '
             'COMP_WORDS+=(""); COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); _paxoskv; '
             'echo "${COMPREPLY[*]}"')
    res = subprocess.run(["bash", "-c", probe, "_", str(script), line], capture_output=True,
                         text=True, timeout=30)
    assert res.stdout.strip() == expected, res.stderr
    zsh = run("completion", "zsh").stdout
    assert "bashcompinit" in zsh and "complete -o default -F _paxoskv paxoskv" in zsh


def test_follow_replicas_without_the_kubernetes_package_is_a_usage_error(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Goal: the follower on and no ``kubernetes`` package is one line and exit 2 at start,
    not an api_error the follower reports on every poll."""
    import paxoskv.scaler

    monkeypatch.setattr(paxoskv.scaler, "kube_client_available", lambda: False)
    monkeypatch.setenv("POD_NAME", "kv-0")
    assert main(["serve", "--statefulset", "--replicas", "3", "--service", "kv-h",
                 "--namespace", "ns", "--follow-replicas"]) == 2
    err = capsys.readouterr().err
    assert "--follow-replicas needs the kubernetes package" in err
    assert "Traceback" not in err
