"""paxoskv/bench_compare.py without servers: wrk output parsing, merging, table and JSON."""

from __future__ import annotations

import json
import math

import pytest

from paxoskv.bench_compare import (
    QUANTILES,
    WORKLOADS,
    Cell,
    Round,
    Side,
    WrkRun,
    cell_from_rounds,
    cpu_ratio,
    format_table,
    lua_script,
    merge_quantiles,
    parse_wrk_output,
    side_from_runs,
    split_connections,
    to_json,
)


def wrk_line(ok: int = 100, bad: int = 0, won: int = 0, conflict: int = 0,
             timeout: int = 0, statuses: str = "", quantile_us: int = 1000) -> str:
    qs = ",".join(str(quantile_us) for _ in range(4))
    return ("Running 5s test @ http://127.0.0.1:1\n  2 threads and 16 connections\n"
            f'WRKJSON {{"duration_us":2000000,"requests":{ok + bad},"ok":{ok},"bad":{bad},'
            f'"won":{won},"conflict":{conflict},"socket_errors":{{"connect":0,"read":0,'
            f'"write":0,"timeout":{timeout}}},"bad_statuses":{{{statuses}}},'
            f'"quantiles_us":[{qs}]}}\n')


def test_parse_wrk_output_reads_the_done_line() -> None:
    run = parse_wrk_output(wrk_line(ok=90, bad=3, timeout=2, statuses='"503":3'))
    assert run.duration_s == 2.0
    assert (run.ok, run.bad, run.socket_errors) == (90, 3, 2)
    assert run.bad_statuses == {"503": 3}
    assert run.quantiles_ms == [1.0] * 4


def test_parse_wrk_output_without_the_line_is_an_error() -> None:
    with pytest.raises(ValueError, match="no WRKJSON"):
        parse_wrk_output("Usage: wrk <options> <url>\n")


def test_merge_quantiles_pools_runs_by_their_request_counts() -> None:
    fast = WrkRun(1, 300, 300, 0, 0, 0, 0, {}, [1.0] * 10)
    slow = WrkRun(1, 100, 100, 0, 0, 0, 0, {}, [9.0] * 10)
    p50, p80 = merge_quantiles([fast, slow], (50, 80))
    assert p50 == 1.0
    assert p80 == 9.0
    assert all(math.isnan(x) for x in merge_quantiles([], (50,)))


def test_errors_are_never_throughput() -> None:
    runs = [parse_wrk_output(wrk_line(ok=100, bad=10, timeout=5, statuses='"500":10')),
            parse_wrk_output(wrk_line(ok=100))]
    side = side_from_runs(runs, cas=False)
    assert side.rps == 100.0  # 200 ok over 2 s
    assert side.errors == 15
    assert side.error_statuses == {"500": 10, "socket": 5}
    assert side.cas_won_per_s is None


def test_cas_side_reports_won_rate() -> None:
    side = side_from_runs([parse_wrk_output(wrk_line(ok=100, won=40, conflict=60))], cas=True)
    assert side.rps == 50.0
    assert side.cas_won_per_s == 20.0


def test_split_connections() -> None:
    assert split_connections(16, 3) == [6, 5, 5]
    assert split_connections(128, 3) == [43, 43, 42]
    assert split_connections(16, 1) == [16]


def cells() -> list[Cell]:
    good = Side(rps=1000.0, p50_ms=1.0, p99_ms=5.0, p999_ms=9.0, requests_ok=5000,
                seconds=5.0, wrk_cpu_s=1.0, server_cpu_s=5.0)
    bad = Side(rps=500.0, p50_ms=2.0, p99_ms=8.0, p999_ms=12.0, requests_ok=2500, errors=7,
               error_statuses={"503": 7}, seconds=5.0)
    return [Cell("put", 16, "one", good, bad),
            Cell("cas-hot", 128, "all", Side(skipped="--no-etcd-cas"),
                 Side(rps=200.0, cas_won_per_s=50.0, seconds=5.0))]


def cpu_row(text: str, workload: str = "put") -> str:
    """The row of ``workload`` in the CPU table (the second table of ``format_table``)."""
    return [line for line in text.splitlines() if line.startswith(workload)][-1]


def test_format_table_shows_ratio_errors_and_skips() -> None:
    text = format_table(cells())
    row = next(line for line in text.splitlines() if line.startswith("put"))
    assert "0.50x" in row and "7!" in row and "1000" in row
    assert "put c=16 one: paxoskv HAD ERRORS: 7" in text
    assert "cas-hot c=128 all: etcd skipped (--no-etcd-cas)" in text
    assert "paxoskv CAS won 50/s of 200 attempts/s" in text
    assert cpu_row(text).split()[4:6] == ["100", "20"]  # etcd server 5 s / 5 s, wrk 1 s / 5 s


def test_cpu_per_request_is_the_servers_cpu_over_counted_requests() -> None:
    measured = Side(rps=1000.0, seconds=5.0, server_cpu_s=5.0)
    assert measured.cpu_us_per_request == pytest.approx(1000.0)  # 5 s over 5000 requests
    assert math.isnan(Side(rps=1000.0, seconds=5.0).cpu_us_per_request)  # no CPU read
    assert math.isnan(Side(rps=0.0, seconds=5.0, server_cpu_s=5.0).cpu_us_per_request)
    assert math.isnan(Side(seconds=5.0, server_cpu_s=5.0).cpu_us_per_request)  # rps NaN
    assert math.isnan(Side(skipped="--no-etcd-cas", rps=1000.0, seconds=5.0,
                           server_cpu_s=5.0).cpu_us_per_request)
    stalled = Side(rps=1000.0, seconds=32.8, server_cpu_s=5.0, requested_s=5.0)
    assert stalled.stalled and math.isnan(stalled.cpu_us_per_request)


def test_cpu_table_shows_cpu_per_request_and_its_ratio() -> None:
    etcd = Side(rps=1000.0, seconds=5.0, server_cpu_s=5.0, wrk_cpu_s=1.0)
    paxoskv = Side(rps=500.0, seconds=5.0, server_cpu_s=5.0, wrk_cpu_s=0.5)
    assert cpu_ratio(etcd, paxoskv) == pytest.approx(2.0)
    text = format_table([Cell("put", 16, "one", etcd, paxoskv)])
    assert cpu_row(text).split()[4:] == ["100", "20", "1000", "|", "100", "10", "2000", "|",
                                         "2.00x"]
    unmeasured = format_table(cells())  # the put cell's paxoskv side has no CPU figure
    assert cpu_row(unmeasured).split()[6:] == ["1000", "|", "0", "0", "-", "|", "-"]


def test_cpu_table_shows_stall_for_a_stalled_row() -> None:
    late = Side(rps=100.0, seconds=32.8, server_cpu_s=30.0, requested_s=5.0)
    on_time = Side(rps=1000.0, seconds=5.0, server_cpu_s=5.0, requested_s=5.0)
    cell = cell_from_rounds("put", 128, "all", [Round(on_time, late)])
    assert cpu_row(format_table([cell])).split()[-2:] == ["|", "stall"]


def refuse_nan(name: str) -> object:
    raise AssertionError(f"{name} in the JSON")


def test_to_json_carries_cpu_per_request_for_cells_and_rounds() -> None:
    etcd = Side(rps=1000.0, seconds=5.0, server_cpu_s=5.0)
    paxoskv = Side(rps=500.0, seconds=5.0, server_cpu_s=5.0)
    cell = cell_from_rounds("put", 16, "one", [Round(etcd, paxoskv)])
    data = json.loads(to_json([cell], {}), parse_constant=refuse_nan)
    row = data["cells"][0]
    assert row["etcd"]["cpu_us_per_request"] == pytest.approx(1000.0)
    assert row["paxoskv"]["cpu_us_per_request"] == pytest.approx(2000.0)
    assert row["ratio_cpu_per_request_paxoskv_over_etcd"] == pytest.approx(2.0)
    (only,) = row["rounds"]
    assert only["paxoskv"]["cpu_us_per_request"] == pytest.approx(2000.0)
    assert only["ratio_cpu_per_request_paxoskv_over_etcd"] == pytest.approx(2.0)


def test_to_json_is_strict_json_with_ratios() -> None:
    data = json.loads(to_json(cells(), {"cpus": 2}), parse_constant=refuse_nan)
    assert data["meta"] == {"cpus": 2}
    first, second = data["cells"]
    assert first["ratio_rps_paxoskv_over_etcd"] == 0.5
    assert first["paxoskv"]["errors"] == 7
    assert second["ratio_rps_paxoskv_over_etcd"] is None
    assert second["etcd"]["rps"] is None
    assert first["etcd"]["cpu_us_per_request"] == pytest.approx(1000.0)
    assert first["paxoskv"]["cpu_us_per_request"] is None  # no CPU figure: not measured
    assert first["ratio_cpu_per_request_paxoskv_over_etcd"] is None


@pytest.mark.parametrize("workload", WORKLOADS)
@pytest.mark.parametrize("system", ["etcd", "paxoskv"])
def test_lua_script_sets_the_workload(system: str, workload: str) -> None:
    script = lua_script(system, workload, 10, b"v" * 100)
    assert f"NQ = {QUANTILES}" in script and "NKEYS = 10" in script
    assert ("CAS = true" in script) == (workload == "cas-hot")
    assert ("STALE = true" in script) == (workload == "get-stale")
    assert ("/v3/kv/" in script) == (system == "etcd")
    assert "function done(" in script and "function response(" in script


def side(rps: float) -> Side:
    return Side(rps=rps, p50_ms=1.0, p99_ms=2.0, p999_ms=3.0, requests_ok=int(rps * 5),
                seconds=5.0)


def timed(rps: float, seconds: float) -> Side:
    """``side(rps)`` of a 5 s load whose wrk ran ``seconds``."""
    s = side(rps)
    s.seconds, s.requested_s = seconds, 5.0
    return s


def test_a_cell_of_rounds_is_its_median_round_by_ratio() -> None:
    rounds = [Round(side(1000), side(400)), Round(side(900), side(630)),
              Round(side(1100), side(550))]  # ratios 0.4, 0.7, 0.5
    cell = cell_from_rounds("put", 16, "one", rounds)
    assert cell.etcd.rps == 1100 and cell.paxoskv.rps == 550  # one round's figures, together
    assert cell.ratio == 0.5
    assert cell.ratio_range == (0.4, 0.7)
    text = format_table([cell])
    assert "0.50x" in text and "3 rounds, px/etcd 0.40x-0.70x" in text
    data = json.loads(to_json([cell], {}))["cells"][0]
    assert [r["ratio_rps_paxoskv_over_etcd"] for r in data["rounds"]] == [0.4, 0.7, 0.5]


def test_an_even_count_of_rounds_takes_the_lower_middle() -> None:
    rounds = [Round(side(1000), side(600)), Round(side(1000), side(500))]
    cell = cell_from_rounds("put", 16, "one", rounds)
    assert cell.ratio == 0.5  # the conservative one of the two middles


def test_skipped_rounds_rank_last_and_one_round_has_no_range() -> None:
    skipped = Round(Side(skipped="--no-etcd-cas"), side(200))
    assert cell_from_rounds("cas-hot", 16, "one", [skipped]).ratio_range is None
    assert math.isnan(cell_from_rounds("cas-hot", 16, "one", [skipped]).ratio)
    mixed = cell_from_rounds("put", 16, "one", [skipped, Round(side(1000), side(300))])
    assert mixed.ratio == 0.3 and mixed.ratio_range is None
    assert "rounds" not in format_table([cell_from_rounds("put", 16, "one", [
        Round(side(1000), side(300))])])


def test_a_round_whose_load_generator_stalled_is_named_and_not_counted() -> None:
    """Goal: a round in which wrk ran far longer than asked (the machine paused: the
    servers cannot make wrk late) never becomes a cell's row or widens its range.

    Method: three rounds of 5 s, the second with paxoskv's wrk at 32.8 s (as seen once
    here, 241 r/s): the row is the median of the other two and the note names the round."""
    rounds = [Round(timed(1000, 5.0), timed(500, 5.0)),
              Round(timed(1000, 5.0), timed(241, 32.8)),
              Round(timed(1000, 5.0), timed(550, 5.1))]
    assert [r.counted for r in rounds] == [True, False, True]
    cell = cell_from_rounds("put", 128, "all", rounds)
    assert cell.ratio == 0.5 and cell.ratio_range == (0.5, 0.55)
    text = format_table([cell])
    assert "round 2 STALLED: paxoskv's wrk ran 32.8 s for 5 s" in text
    assert not timed(500, 8.5).stalled and timed(500, 8.6).stalled
    assert not side(500).stalled  # length not known: never judged
    etcd_paused = [Round(timed(1000, 5.0), timed(500, 5.0)),
                   Round(timed(1000, 5.0), timed(600, 5.0)),
                   Round(timed(200, 30.0), timed(500, 5.0))]  # 0.5, 0.6, and 2.5 stalled
    cell = cell_from_rounds("put", 16, "one", etcd_paused)
    assert cell.ratio == 0.5 and cell.ratio_range == (0.5, 0.6)
    assert "round 3 STALLED: etcd's wrk ran 30.0 s" in format_table([cell])


def test_a_cell_with_no_round_on_time_says_so_in_its_row() -> None:
    """Goal: when no round is counted, the row is never a stalled round passed off as a
    result: a round that ran on time is preferred (a skipped etcd side leaves every ratio
    unmeasured), and a row that can only be a stalled round reads "stall"."""
    alone = cell_from_rounds("put", 128, "all", [Round(timed(1000, 5.0), timed(241, 32.8))])
    assert alone.stalled
    text = format_table([alone])
    assert "  stall" in text and "0.24x" not in text
    assert "no round ran on time: the row is this one" in text
    assert json.loads(to_json([alone], {}))["cells"][0]["stalled"] is True
    skipped = Side(skipped="--no-etcd-cas")
    cas = cell_from_rounds("cas-hot", 16, "one", [Round(skipped, timed(241, 32.8)),
                                                  Round(skipped, timed(900, 5.0))])
    assert cas.paxoskv.rps == 900 and not cas.stalled
    rounds = json.loads(to_json([cas], {}))["cells"][0]["rounds"]
    assert [(r["stalled"], r["counted"]) for r in rounds] == [(True, False), (False, False)]
