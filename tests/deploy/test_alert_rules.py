"""The chart's alert rules parse and fire when they should: promtool on the rendered rules.

Method: render the PrometheusRule with helm (release "t", namespace "pkv", defaults), write its
groups as a Prometheus rule file, then
1. `promtool check rules` on it as rendered (PromQL syntax, `for` durations, and the
   annotation templates, which is where Helm and Prometheus templating could collide);
2. `promtool test rules tests/deploy/alert_rules_test.yaml` on a copy without annotations:
   synthetic series for each alert, expected firing / not firing at given times.
Skips when helm or promtool is missing; `make chart-tools` installs both.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from chart_helpers import HELM, SKIP_REASON, only, render

HERE = Path(__file__).resolve().parent


def find_promtool() -> str | None:
    found = shutil.which("promtool")
    if found:
        return found
    cached = Path(os.environ.get("PAXOSKV_TOOLS", "/var/cache/paxoskv-tools")) / "bin" / "promtool"
    return str(cached) if cached.is_file() and os.access(cached, os.X_OK) else None


PROMTOOL = find_promtool()
pytestmark = [
    pytest.mark.skipif(HELM is None, reason=SKIP_REASON),
    pytest.mark.skipif(
        PROMTOOL is None, reason="promtool is not installed: run `make chart-tools`"
    ),
]


@pytest.fixture(scope="module")
def groups() -> list[dict[str, object]]:
    rule = only(render({"prometheusRule": {"enabled": True}}), "PrometheusRule")
    return rule["spec"]["groups"]  # type: ignore[no-any-return]


def run_promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_rules_pass_promtool_check(groups: list[dict[str, object]], tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    res = run_promtool("check", "rules", "rules.yaml", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout + res.stderr


def test_alerts_fire_as_specified(groups: list[dict[str, object]], tmp_path: Path) -> None:
    stripped = []
    for g in groups:
        rules = [{k: v for k, v in r.items() if k != "annotations"} for r in g["rules"]]  # type: ignore[attr-defined]
        stripped.append({**g, "rules": rules})
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": stripped}))
    shutil.copy(HERE / "alert_rules_test.yaml", tmp_path / "alert_rules_test.yaml")
    res = run_promtool("test", "rules", "alert_rules_test.yaml", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr


def test_unit_tests_cover_every_alert(groups: list[dict[str, object]]) -> None:
    tests = yaml.safe_load((HERE / "alert_rules_test.yaml").read_text())["tests"]
    tested = {a["alertname"] for t in tests for a in t["alert_rule_test"] if a["exp_alerts"]}
    alerts = {r["alert"] for g in groups for r in g["rules"]}  # type: ignore[attr-defined]
    assert alerts == tested


def test_unit_tests_have_a_quiet_case_for_every_alert(groups: list[dict[str, object]]) -> None:
    """Each alert is also expected not to fire somewhere (below its threshold, before its
    `for`, or on another release's series), so a rule that always fires fails too."""
    tests = yaml.safe_load((HERE / "alert_rules_test.yaml").read_text())["tests"]
    quiet = {a["alertname"] for t in tests for a in t["alert_rule_test"] if not a["exp_alerts"]}
    alerts = {r["alert"] for g in groups for r in g["rules"]}  # type: ignore[attr-defined]
    assert alerts - quiet == set()
