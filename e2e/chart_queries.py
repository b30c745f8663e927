"""The PromQL the chart ships, as e2e test 7 evaluates it against a real Prometheus.

Standard library only, so tests/deploy/test_chart.py can check without a cluster that these
functions find every expression of the dashboard (panels, rows' panels, annotations) and of
the rules, and that no Grafana variable is left unsubstituted in them.
"""

from __future__ import annotations

from typing import Any

ALLOWED_EMPTY = (
    # series that only exist after an event may legitimately be empty
    "paxoskv_paxos_conflicts_total", "paxoskv_repair_keys_total", 'code=~"[45].."',
    'code=~"5.."',
    # the restart annotations: no pod restarted during the test (and the second one needs
    # kube-state-metrics, which the e2e cluster does not run)
    "changes(process_start_time_seconds", "kube_pod_container_status_restarts_total",
)


def substitute(expr: str, namespace: str, job: str) -> str:
    """The dashboard's variables as Grafana would fill them for one release (`cluster`:
    All, which also matches series without the label; `pod`: All)."""
    for var, value in (("$cluster", ".*"), ("$namespace", namespace), ("$job", job),
                       ("$pod", ".*"), ("$__rate_interval", "1m"), ("$__interval", "1m")):
        expr = expr.replace(var, value)
    return expr


def _panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for panel in panels:
        out.append(panel)
        out += _panels(panel.get("panels", []))  # a row's own (collapsed) panels
    return out


def dashboard_exprs(board: dict[str, Any], namespace: str, job: str) -> list[str]:
    """Every query of the dashboard's panels and annotations, variables substituted."""
    raw = [t["expr"] for p in _panels(board["panels"]) for t in p.get("targets", [])]
    raw += [a["expr"] for a in board.get("annotations", {}).get("list", []) if "expr" in a]
    return [substitute(e, namespace, job) for e in raw]


def rule_exprs(rule: dict[str, Any]) -> list[str]:
    """Every rule's expression of a rendered PrometheusRule."""
    return [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
