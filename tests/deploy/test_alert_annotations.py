"""The chart's alert rules as the values shape them: every alert's runbook_url points at its
section of docs/runbooks.md, and prometheusRule.selector replaces the job selector in every
expression. Needs helm only (the promtool checks are in test_alert_rules.py)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from chart_helpers import HELM, SKIP_REASON, only, render

pytestmark = pytest.mark.skipif(HELM is None, reason=SKIP_REASON)
RUNBOOKS = Path(__file__).resolve().parents[2] / "docs" / "runbooks.md"


def _rules(values: dict[str, Any]) -> list[dict[str, Any]]:
    rule = only(render({"prometheusRule": {"enabled": True, **values}}), "PrometheusRule")
    return [r for g in rule["spec"]["groups"] for r in g["rules"]]


def test_every_alert_has_a_runbook_section() -> None:
    """Goal: runbook_url = prometheusRule.runbookURL + '#' + the alert's section, and that
    section exists (GitHub's anchor: the heading in lower case)."""
    sections = set(re.findall(r"^## (\S+)$", RUNBOOKS.read_text(), re.M))
    rules = _rules({"runbookURL": "https://runbooks.example/paxoskv.md"})
    assert len(rules) >= 18
    for r in rules:
        assert r["annotations"]["runbook_url"] == (
            f"https://runbooks.example/paxoskv.md#{r['alert'].lower()}"), r["alert"]
        assert r["alert"] in sections, f"docs/runbooks.md has no section {r['alert']}"
    default = _rules({})[0]["annotations"]["runbook_url"]
    assert default.startswith("docs/runbooks.md#")


def test_selector_replaces_namespace_and_job_everywhere() -> None:
    """Goal: by default every rule selects the release's namespace and job; with
    prometheusRule.selector set, every selector in every rule is exactly that instead."""
    default = _rules({})
    for r in default:
        assert 'namespace="pkv", job="t"' in r["expr"], r["alert"]
    custom = _rules({"selector": 'job="kv", cluster="eu-1"'})
    for r in custom:
        selectors = re.findall(r"\{([^{}]*)\}", r["expr"])
        assert selectors, r["alert"]
        for s in selectors:
            assert s.startswith('job="kv", cluster="eu-1"'), (r["alert"], s)
        assert 'namespace="pkv"' not in r["expr"]


def test_thresholds_come_from_values() -> None:
    """Goal: the new knobs reach their rules (a typo in the template would leave a default
    or render nothing)."""
    knobs = {"errorRatioWarning": 0.02, "errorRatio": 0.07, "requestP99Warning": 0.8,
             "failedRoundsRatio": 0.03, "conflictRatio": 0.25, "eventLoopLagP99": 0.3,
             "peerRTTHigh": 0.2}
    rules = _rules(knobs)

    def expr(alert: str, severity: str = "warning") -> str:
        (found,) = [r["expr"] for r in rules
                    if r["alert"] == alert and r["labels"]["severity"] == severity]
        return str(found).strip()

    assert expr("PaxosKVHighErrorRatio").endswith("> 0.02")
    assert expr("PaxosKVHighErrorRatio", "critical").endswith("> 0.07")
    assert expr("PaxosKVRequestLatencyHigh").endswith("> 0.8")
    assert expr("PaxosKVFailedRounds").endswith("> 0.03")
    assert expr("PaxosKVHighConflictRate").endswith("> 0.25")
    assert expr("PaxosKVEventLoopLagging").endswith("> 0.3")
    assert expr("PaxosKVPeerRTTHigh").endswith("> 0.2")
    assert expr("PaxosKVTargetsAbsent", "critical").startswith("absent(up{")
