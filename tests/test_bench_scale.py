"""paxoskv/bench_scale.py: axis parsing, the plan of configurations, table and JSON; one
smoke run on real processes (integration) when wrk is installed."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from paxoskv.bench_compare import KEY_FORMAT, Side, key_name, lua_script
from paxoskv.bench_scale import (
    AXES,
    Config,
    Measured,
    Row,
    format_table,
    parse_axes,
    plan,
    rows_of,
    to_json,
    unique_configs,
)


def test_parse_axes_keeps_order_and_drops_repeats() -> None:
    assert parse_axes("nodes, keys,nodes,") == ["nodes", "keys"]
    assert parse_axes(",".join(AXES)) == list(AXES)


@pytest.mark.parametrize("text", ["", ",", "keys,disks"])
def test_parse_axes_refuses_unknown_or_empty(text: str) -> None:
    with pytest.raises(ValueError):
        parse_axes(text)


def test_full_plan_has_every_setting_of_the_issue() -> None:
    groups = plan(AXES, 1_000_000)
    labels = [(axis, setting) for axis, setting, _ in groups]
    assert labels == [("keys", "10^4"), ("keys", "10^5"), ("keys", "10^6"),
                      ("values", "100 B"), ("values", "10 KB"), ("values", "100 KB"),
                      ("nodes", "3 nodes"), ("nodes", "5 nodes"),
                      ("groups", "3 nodes"), ("groups", "6 nodes R=3"), ("groups", "6 nodes")]
    base = Config(10_000, 100, 3)
    assert [c for _, _, c in groups].count(base) == 3
    configs = unique_configs(groups)
    assert len(configs) == 9
    assert configs[0] == base


def test_groups_axis_compares_3_nodes_with_6_in_groups_of_3() -> None:
    """Same keys and values in every setting; the load spread over every node and the keys
    written through the API (a pre-built directory would hold every key, not its groups')."""
    groups = plan(["groups"], 1_000_000)
    assert [c for _, _, c in groups] == [
        Config(10_000, 100, 3, None, "all", True),
        Config(10_000, 100, 6, 3, "all", True),
        Config(10_000, 100, 6, None, "all", True)]
    assert all(c not in unique_configs(plan(["keys", "values", "nodes"], 10_000))
               for _, _, c in groups)  # another target and load: not the base run
    assert {c.keys for _, _, c in plan(["groups"], 2000)} == {2000}


def test_max_keys_caps_every_axis() -> None:
    groups = plan(["keys", "values", "nodes"], 2000)
    assert {c.keys for _, _, c in groups} == {2000}
    assert [s for a, s, _ in groups if a == "keys"] == ["2,000"]
    assert [c.keys for a, _, c in plan(["keys"], 200_000) if a == "keys"] == [10_000, 100_000]


def test_preloaded_keys_are_the_ones_wrk_hits() -> None:
    script = lua_script("paxoskv", "get-lin", 10, b"v")
    assert f"KEY_FORMAT = {json.dumps(KEY_FORMAT)}" in script
    assert "string.format(KEY_FORMAT, i)" in script
    assert [key_name(i) for i in (0, 7, 1_000_000 - 1)] == ["k00000", "k00007", "k999999"]


def measured(config: Config) -> Measured:
    m = Measured(config)
    m.sides = {"put": Side(rps=500.0, p50_ms=20.0, p99_ms=45.5, errors=0, requests_ok=4000,
                           server_cpu_s=10.0),
               "get-lin": Side(rps=4000.0, p50_ms=3.0, p99_ms=8.25, errors=3)}
    m.idle_cpu_s_per_s = 0.0305
    m.rss_after = {"put": [50_000_000, 52_000_000, 51_000_000],
                   "get-lin": [53_000_000, 50_000_000, 50_000_000]}
    m.dir_bytes_after = [2_000_000, 2_100_000, 2_050_000]
    return m


def test_rows_and_table() -> None:
    groups = plan(["values", "nodes"], 10_000)
    base = Config(10_000, 100, 3)
    rows = rows_of(groups, {base: measured(base)})
    assert [(r.axis, r.setting, r.workload) for r in rows] == [
        ("values", "100 B", "put"), ("values", "100 B", "get-lin"),
        ("nodes", "3 nodes", "put"), ("nodes", "3 nodes", "get-lin")]
    put = rows[0]
    assert put.mb_per_s == pytest.approx(0.05)
    assert put.rss_mb_max == pytest.approx(52.0)
    assert put.dir_bytes_per_key == pytest.approx(210.0)
    assert put.cpu_ms_per_op == pytest.approx(2.5)  # 10 s of CPU over 4,000 requests
    assert rows[1].cpu_ms_per_op == 0.0  # requests that failed still count
    table = format_table(rows)
    head = table.splitlines()[0]
    for column in ("axis", "setting", "workload", "req/s", "p50 ms", "p99 ms", "MB/s",
                   "CPU ms/op", "idle CPU ms/s", "RSS MB/node (max)", "data dir B/key"):
        assert column in head
    assert re.search(r"values \| 100 B +\| put +\| +500 \| +20\.00 \| +45\.50 \| +0\.05 \| "
                     r"+2\.500 \| +30 \| +52\.0 \| +210 \| +0", table)
    assert "3!" in table  # errors are flagged, never hidden
    assert "ran once" in table  # the base configuration serves two axes


def test_table_of_a_missing_figure_shows_a_dash() -> None:
    row = Row("keys", "10^6", "put", 10**6, 100, 3, math.nan, math.nan, math.nan, math.nan,
              0.0, 0.0, 0)
    assert " - |" in format_table([row])


def test_json_has_no_nan_and_keeps_the_meta() -> None:
    base = Config(10_000, 100, 3)
    m = measured(base)
    rows = rows_of(plan(["keys"], 10_000), {base: m})
    text = to_json(rows, [m], {"cpus": 2, "loadavg_before": "1 1 1"})
    assert "NaN" not in text
    data = json.loads(text)
    assert data["meta"]["cpus"] == 2
    assert data["rows"][0]["rps"] == 500.0
    assert data["configs"][0]["config"] == {"keys": 10_000, "value_bytes": 100, "nodes": 3,
                                            "replication": None, "target": "one",
                                            "via_http": False}
    assert data["rows"][0]["cpu_ms_per_op"] == 2.5


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_smoke_keys_axis(tmp_path: Path) -> None:
    """Goal: the whole path runs on real processes and writes its table and JSON."""
    out = tmp_path / "scale.json"
    proc = subprocess.run(
        [sys.executable, "-m", "paxoskv.bench_scale", "--axes", "keys", "--max-keys", "2000",
         "--seconds", "1", "--warmup", "0", "--json", str(out), "--dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "keys   | 2,000" in proc.stdout
    data = json.loads(out.read_text())
    assert data["meta"]["cpus"] >= 1
    assert {r["workload"] for r in data["rows"]} == {"put", "get-lin"}
    assert all(r["rps"] > 0 for r in data["rows"])
    assert [p.name for p in tmp_path.iterdir()] == ["scale.json"]  # temp dirs removed
