"""Every metric the chart's dashboard and alert rules query is exported by the server.

Method: collect each `paxoskv_*`, `process_*` and `python_*` name from the dashboard's
expressions (dashboards/paxoskv.json) and the rules' `expr` fields (files/rules.yaml, read as
text because it is a Helm template), then compare with the series names the server's
registry (paxoskv.metrics.REGISTRY) can expose. A family's exposable names follow its type,
exactly as the Prometheus text format writes them: counter `<name>_total`; histogram
`<name>_bucket`, `<name>_count`, `<name>_sum`; summary `<name>`, `_count`, `_sum`; gauge and
untyped `<name>`. So `paxoskv_keys_total` would fail for the gauge `paxoskv_keys`, and a
histogram queried without `_bucket` would fail too.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

CHART = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "paxoskv"
NAME = re.compile(r"\b((?:paxoskv|process|python)_[a-zA-Z0-9_]+)\b")


def _exprs_in_dashboard(node: Any) -> list[str]:
    if isinstance(node, dict):
        out = [v for k, v in node.items() if k in ("expr", "definition") and isinstance(v, str)]
        q = node.get("query")
        if isinstance(q, str):
            out.append(q)
        for v in node.values():
            out += _exprs_in_dashboard(v)
        return out
    if isinstance(node, list):
        return [e for v in node for e in _exprs_in_dashboard(v)]
    return []


def dashboard_names() -> set[str]:
    dashboard = json.loads((CHART / "dashboards" / "paxoskv.json").read_text())
    return {n for e in _exprs_in_dashboard(dashboard) for n in NAME.findall(e)}


def rule_names() -> set[str]:
    text = (CHART / "files" / "rules.yaml").read_text()
    # Each expr is a block scalar: the `expr: |` line, then lines indented deeper.
    names: set[str] = set()
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)expr:\s*(.*)$", line)
        if not m:
            continue
        body = [m.group(2)]
        indent = len(m.group(1))
        for nxt in lines[i + 1 :]:
            if nxt.strip() and len(nxt) - len(nxt.lstrip()) <= indent:
                break
            body.append(nxt)
        names |= set(NAME.findall("\n".join(body)))
    return names


def exported_names() -> set[str]:
    metrics = pytest.importorskip("paxoskv.metrics")
    from prometheus_client import CollectorRegistry

    registries = [metrics.REGISTRY]
    # The paxoskv_* families are created when the server builds its PromMetrics; if the
    # module-level REGISTRY holds none yet, build them on a private registry.
    if not any(f.name.startswith("paxoskv_") for f in metrics.REGISTRY.collect()):
        prom = getattr(metrics, "PromMetrics", None)
        if prom is None:
            pytest.fail("paxoskv.metrics.REGISTRY has no paxoskv_* metric and no PromMetrics")
        private = CollectorRegistry()
        prom(registry=private)
        registries.append(private)
    names: set[str] = set()
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_count", "_sum"),
        "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
        "summary": ("", "_count", "_sum"),
        "gauge": ("",),
        "info": ("_info",),
        "stateset": ("",),
        "unknown": ("",),
    }
    for registry in registries:
        for family in registry.collect():
            for suffix in suffixes[family.type]:
                names.add(family.name + suffix)
            # Sample names too (e.g. process_* collectors on this platform).
            names |= {s.name for s in family.samples}
    return names


def test_queries_found() -> None:
    """The extraction itself works: both sources name the metrics they are built on."""
    d = dashboard_names()
    r = rule_names()
    assert "paxoskv_requests_total" in d
    assert "paxoskv_storage_fsync_duration_seconds_bucket" in d
    assert "paxoskv_quorum_reachable" in r
    assert "paxoskv_amnesia" in r
    assert len(d) >= 12
    assert len(r) >= 6


def test_suffix_rules() -> None:
    """Names are exposable only with their type's suffixes (the check can fail)."""
    exported = exported_names()
    assert "paxoskv_keys" in exported  # gauge
    assert "paxoskv_keys_total" not in exported
    assert "paxoskv_requests_total" in exported  # counter
    assert "paxoskv_requests" not in exported
    assert "paxoskv_request_duration_seconds_bucket" in exported  # histogram
    assert "paxoskv_request_duration_seconds" not in exported


@pytest.mark.parametrize("source", ["dashboard", "rules"])
def test_every_queried_metric_is_exported(source: str) -> None:
    used = dashboard_names() if source == "dashboard" else rule_names()
    exported = exported_names()
    missing = sorted(n for n in used if n not in exported)
    assert not missing, (
        f"{source} queries metrics the server does not export: {missing}; exported paxoskv_* "
        f"names: {sorted(n for n in exported if n.startswith('paxoskv_'))}"
    )


def test_design_metrics_are_all_shown() -> None:
    """Every paxoskv_* family the server exports appears on the dashboard or in an alert."""
    exported = exported_names()
    used = dashboard_names() | rule_names()
    families = {
        re.sub(r"_(bucket|count|sum|total)$", "", n) for n in exported if n.startswith("paxoskv_")
    }
    shown = {re.sub(r"_(bucket|count|sum|total)$", "", n) for n in used}
    # Internal tuning metrics may stay off the dashboard; list them here on purpose.
    not_shown_on_purpose: set[str] = set()
    missing = sorted(families - shown - not_shown_on_purpose)
    assert not missing, f"exported but neither on the dashboard nor in an alert: {missing}"


# The saturation, byte, phase-latency, RTT and build families, by the names queries use.
ISSUE_13_NAMES = {
    "paxoskv_event_loop_lag_seconds_bucket": "dashboard+rules",
    "paxoskv_rounds_in_flight": "dashboard",
    "paxoskv_client_requests_in_flight": "dashboard",
    "paxoskv_client_bytes_total": "dashboard",
    "paxoskv_peer_bytes_total": "dashboard",
    "paxoskv_paxos_phase_duration_seconds_bucket": "dashboard",
    "paxoskv_acceptor_persist_duration_seconds_bucket": "dashboard",
    "paxoskv_peer_round_trip_time_seconds_bucket": "dashboard+rules",
    "paxoskv_build_info": "dashboard",
}


@pytest.mark.parametrize("name", sorted(ISSUE_13_NAMES))
def test_issue_13_metrics_are_exported_and_queried(name: str) -> None:
    """Each new family is exported under the name (and type suffix) the queries use, and is
    queried where it is meant to be: on the dashboard, and in the rules for those alerted on."""
    assert name in exported_names()
    where = ISSUE_13_NAMES[name]
    assert name in dashboard_names()
    if "rules" in where:
        assert name in rule_names()
