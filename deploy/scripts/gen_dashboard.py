#!/usr/bin/env python3
"""Generate the chart's Grafana dashboard, deploy/helm/paxoskv/dashboards/paxoskv.json.

Goal: one reviewed source for the dashboard instead of hand-edited JSON. Run it after a change
and commit both files; tests/deploy/test_chart.py checks that the JSON is what this script
writes, and tests/deploy/test_metric_names.py that every paxoskv_* name exists in the server.

    python3 deploy/scripts/gen_dashboard.py            # rewrite the JSON
    python3 deploy/scripts/gen_dashboard.py --check    # exit 1 if the JSON is stale
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parents[1] / "helm" / "paxoskv" / "dashboards" / "paxoskv.json"

DS = {"type": "prometheus", "uid": "${datasource}"}
# `cluster` is a label your Prometheus setup may add (external labels, a relabeling, Thanos);
# where no series has it, the variable's "All" (.*) also matches the empty label.
CSEL = 'cluster=~"$cluster", namespace="$namespace", job="$job"'
"""The whole release, whatever pods are picked (quorum and replica counts)."""
SEL = CSEL + ', pod=~"$pod"'
RATE = "$__rate_interval"
RUNBOOK = "docs/runbooks.md"
"""Default of the dashboard's hidden `runbook` constant, which every panel link starts with:
set it to where your copy of docs/runbooks.md is served."""

# The replica count, read from our own metrics: each node exports paxoskv_peer_up for each of
# its peers, so the most peers any node has, plus itself (a single node has no peers).
REPLICAS = f"(max(count by (pod) (paxoskv_peer_up{{{CSEL}}})) + 1 or vector(1))"
QUORUM = f"(floor({REPLICAS} / 2) + 1)"


class Layout:
    """Places panels left to right on Grafana's 24-column grid, with rows."""

    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.y = 0
        self.x = 0
        self.row_h = 0
        self.next_id = 1

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append(
            {
                "type": "row",
                "id": self._id(),
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
                "panels": [],
            }
        )
        self.y += 1

    def _newline(self) -> None:
        if self.x:
            self.y += self.row_h
            self.x = 0
            self.row_h = 0

    def add(self, panel: dict[str, Any], w: int, h: int, runbook: str = "dashboard") -> None:
        """``runbook``: the anchor of docs/runbooks.md the panel links to (an alert's
        section, or the general notes on the dashboard)."""
        if self.x + w > 24:
            self._newline()
        panel["id"] = self._id()
        panel["links"] = [
            {"title": "Runbook", "url": f"${{runbook}}#{runbook.lower()}", "targetBlank": True}
        ]
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        panel["datasource"] = DS
        self.panels.append(panel)
        self.x += w
        self.row_h = max(self.row_h, h)


def target(expr: str, legend: str, ref: str = "A") -> dict[str, Any]:
    return {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref, "range": True}


def timeseries(
    title: str, description: str, targets: list[dict[str, Any]], unit: str, **opts: Any
) -> dict[str, Any]:
    refs = "ABCDEFGH"
    for t, ref in zip(targets, refs, strict=False):
        t["refId"] = ref
    custom = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never"}
    custom.update(opts.pop("custom", {}))
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "targets": targets,
        "fieldConfig": {
            "defaults": {"unit": unit, "custom": custom, **opts.pop("defaults", {})},
            "overrides": [],
        },
        "options": {
            "legend": {
                "displayMode": "table",
                "placement": "bottom",
                "calcs": ["lastNotNull", "max"],
            },
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    }


def stat(
    title: str, description: str, expr: str, unit: str, steps: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "targets": [{"datasource": DS, "expr": expr, "refId": "A", "instant": True}],
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "thresholds": {"mode": "absolute", "steps": steps},
                "color": {"mode": "thresholds"},
            },
            "overrides": [],
        },
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "background",
            "graphMode": "none",
            "textMode": "value",
        },
    }


def mean(metric: str, by: str) -> str:
    return (
        f"sum by ({by}) (rate({metric}_sum{{{SEL}}}[{RATE}])) / "
        f"sum by ({by}) (rate({metric}_count{{{SEL}}}[{RATE}]))"
    )


def quantile(q: str, metric: str, by: str) -> str:
    return f"histogram_quantile({q}, sum by ({by}, le) (rate({metric}_bucket{{{SEL}}}[{RATE}])))"


GREEN = {"color": "green", "value": None}
RED = {"color": "red", "value": None}


def build() -> dict[str, Any]:
    L = Layout()

    L.row("Overview")
    nodes_up = stat(
        "Nodes scraped up",
        "Targets of this job that answered the last scrape (Prometheus `up`), against the "
        "quorum: green from a quorum of the replicas up (the replica count is read from "
        "paxoskv_peer_up: the most peers any node has, plus one), red below it.",
        f"sum(up{{{CSEL}}})",
        "none",
        # The green step's value is a placeholder: query B (the quorum) replaces it.
        [RED, {"color": "green", "value": 1}],
    )
    nodes_up["targets"].append(
        {"datasource": DS, "expr": QUORUM, "refId": "B", "instant": True,
         "legendFormat": "quorum"}
    )
    # The quorum query sets the green threshold (Grafana's "Config from query results").
    nodes_up["transformations"] = [
        {
            "id": "configFromData",
            "options": {
                "configRefId": "B",
                "mappings": [{"fieldName": "quorum", "handlerKey": "threshold1"}],
                "applyTo": {"id": "byFrameRefID", "options": "A"},
            },
        }
    ]
    L.add(nodes_up, w=4, h=4, runbook="PaxosKVNoQuorum")
    L.add(
        stat(
            "Failures tolerated",
            "How many more nodes may go down before the quorum is lost: nodes up minus the "
            "quorum of the replica count (floor(replicas / 2) + 1). Below 0 the store is "
            "unavailable; 0 means the next failure makes it so.",
            f"sum(up{{{CSEL}}}) - {QUORUM}",
            "none",
            [RED, {"color": "orange", "value": 0}, {"color": "green", "value": 1}],
        ),
        w=4,
        h=4,
        runbook="PaxosKVNoQuorum",
    )
    L.add(
        stat(
            "Nodes with quorum",
            "Nodes that reach a quorum of acceptors (paxoskv_quorum_reachable); "
            "0 means the store is unavailable.",
            f"sum(paxoskv_quorum_reachable{{{SEL}}})",
            "none",
            [RED, {"color": "green", "value": 1}],
        ),
        w=4,
        h=4,
        runbook="PaxosKVNoQuorum",
    )
    L.add(
        stat(
            "Amnesiac nodes",
            "Nodes that refuse to act as acceptors because their data dir is empty for a formed "
            "cluster; they need the rejoin procedure.",
            f"sum(paxoskv_amnesia{{{SEL}}})",
            "none",
            [GREEN, {"color": "red", "value": 1}],
        ),
        w=4,
        h=4,
        runbook="PaxosKVAmnesia",
    )
    L.add(
        stat(
            "Keys",
            "Keys held by the fullest node (paxoskv_keys, tombstones included).",
            f"max(paxoskv_keys{{{SEL}}})",
            "short",
            [{"color": "blue", "value": None}],
        ),
        w=4,
        h=4,
    )
    versions = stat(
        "Versions",
        "paxoskv and Python versions running (paxoskv_build_info), with how many nodes run "
        "each: more than one line during a rolling upgrade.",
        f"count by (version, python) (paxoskv_build_info{{{SEL}}})",
        "none",
        [{"color": "blue", "value": None}],
    )
    versions["targets"][0]["legendFormat"] = "{{version}} (Python {{python}})"
    versions["options"]["textMode"] = "value_and_name"
    L.add(versions, w=4, h=4)

    L.row("Identity and rejoin")
    L.add(
        stat(
            "Refused nodes",
            "Nodes their peers refuse (paxoskv_identity_refused): a data directory restored "
            "from an older copy, or a node id used by two processes.",
            f"sum(paxoskv_identity_refused{{{SEL}}})",
            "none",
            [GREEN, {"color": "red", "value": 1}],
        ),
        w=6,
        h=6,
    )
    L.add(
        timeseries(
            "Refused peers",
            "Peers each node refuses (paxoskv_peer_refused): another membership, or a stale "
            "or second process.",
            [target(f"max by (pod, peer) (paxoskv_peer_refused{{{SEL}}})",
                    "{{pod}} refuses {{peer}}")],
            "none",
        ),
        w=9,
        h=6,
    )
    L.add(
        timeseries(
            "Rejoin progress",
            "Keys a rejoining acceptor checks and catches up per second "
            "(paxoskv_rejoin_keys_total).",
            [target(f"sum by (pod, result) (rate(paxoskv_rejoin_keys_total{{{SEL}}}[{RATE}]))",
                    "{{pod}} {{result}}")],
            "ops",
        ),
        w=9,
        h=6,
    )

    L.row("Requests")
    L.add(
        timeseries(
            "Request rate by op",
            "Client requests per second, by operation.",
            [target(f"sum by (op) (rate(paxoskv_requests_total{{{SEL}}}[{RATE}]))", "{{op}}")],
            "reqps",
        ),
        w=12,
        h=8,
    )
    L.add(
        timeseries(
            "Errors by op and code",
            "Requests per second answered 4xx or 5xx. 503 = no quorum, 504 = unknown outcome, "
            "412 = failed condition (a normal CAS outcome).",
            [
                target(
                    f'sum by (op, code) (rate(paxoskv_requests_total{{{SEL}, code=~"[45].."}}'
                    f"[{RATE}]))",
                    "{{op}} {{code}}",
                )
            ],
            "reqps",
        ),
        w=12,
        h=8,
    )
    L.add(
        timeseries(
            "Latency p50 by op",
            "Median request latency, by operation.",
            [target(quantile("0.5", "paxoskv_request_duration_seconds", "op"), "{{op}} p50")],
            "s",
        ),
        w=12,
        h=8,
    )
    L.add(
        timeseries(
            "Latency p99 by op",
            "99th percentile request latency, by operation. The floor is one peer RTT plus "
            "one fsync for a write.",
            [target(quantile("0.99", "paxoskv_request_duration_seconds", "op"), "{{op}} p99")],
            "s",
        ),
        w=12,
        h=8,
    )
    L.add(
        timeseries(
            "5xx error ratio",
            "Share of requests answered 5xx (the PaxosKVHighErrorRatio alert).",
            [
                target(
                    f'sum(rate(paxoskv_requests_total{{{SEL}, code=~"5.."}}[{RATE}])) / '
                    f"sum(rate(paxoskv_requests_total{{{SEL}}}[{RATE}]))",
                    "5xx ratio",
                )
            ],
            "percentunit",
        ),
        w=12,
        h=6,
    )
    L.add(
        timeseries(
            "Auth failures by reason",
            "Client requests refused by token auth (--auth token) per second: missing (no "
            "bearer token), unknown (not in the token file: a revoked token, or guessing), "
            "forbidden (role too low, or a key outside the token's prefixes).",
            [
                target(
                    f"sum by (reason) (rate(paxoskv_auth_failures_total{{{SEL}}}[{RATE}]))",
                    "{{reason}}",
                )
            ],
            "reqps",
        ),
        w=12,
        h=6,
    )

    L.row("Paxos")
    L.add(
        timeseries(
            "Paxos rounds by phase and outcome",
            "Prepare and accept phases per second: ok, nack (a higher ballot was seen) or timeout.",
            [
                target(
                    f"sum by (phase, outcome) (rate(paxoskv_paxos_rounds_total{{{SEL}}}[{RATE}]))",
                    "{{phase}} {{outcome}}",
                )
            ],
            "ops",
        ),
        w=12,
        h=8,
    )
    L.add(
        timeseries(
            "Forwarded writes by result",
            "Client writes a node sent to their key's preferred proposer: ok, or why it ran "
            "them itself (not_reached, lost: sent but unanswered, declined) or failed them "
            "(no_quorum, unknown). A steady 'lost' rate means a proposer is slow or flapping.",
            [
                target(
                    f"sum by (result) (rate(paxoskv_forwarded_writes_total{{{SEL}}}[{RATE}]))",
                    "{{result}}",
                )
            ],
            "ops",
        ),
        w=12,
        h=8,
    )
    L.add(
        timeseries(
            "Changes per round",
            "Average client changes one round applied to its key together: above 1 when "
            "concurrent writers of one key share rounds.",
            [
                target(
                    f"sum(rate(paxoskv_round_changes_sum{{{SEL}}}[{RATE}])) / "
                    f"sum(rate(paxoskv_round_changes_count{{{SEL}}}[{RATE}]))",
                    "changes per round",
                )
            ],
            "short",
        ),
        w=12,
        h=8,
    )
    L.add(
        timeseries(
            "Client connections",
            "Open client connections per node, against --max-connections (default 1000): "
            "beyond it new connections are answered 503 at once.",
            [target(f"sum by (pod) (paxoskv_http_connections{{{SEL}}})", "{{pod}}")],
            "short",
        ),
        w=12,
        h=8,
    )
    L.add(
        timeseries(
            "Refused by flood and rate limits",
            "Connections and requests the client port turned away: connections (over "
            "--max-connections), requests (over --max-requests-inflight), header_timeout "
            "(headers too slow: slowloris), body_timeout (408), malformed (unparseable "
            "request, 400), body_too_large (413), body_bytes (over "
            "--max-body-bytes-inflight), token_rate (a token over its rate limit, 429).",
            [
                target(
                    f"sum by (reason) (rate(paxoskv_http_refused_total{{{SEL}}}[{RATE}]))",
                    "{{reason}}",
                )
            ],
            "ops",
        ),
        w=12,
        h=8,
    )
    L.add(
        timeseries(
            "Paxos conflicts",
            "Rounds that lost to a competing proposer on the same key, per second and node. "
            "A steady rate means clients write one key through several nodes.",
            [
                target(
                    f"sum by (pod) (rate(paxoskv_paxos_conflicts_total{{{SEL}}}[{RATE}]))",
                    "{{pod}}",
                )
            ],
            "ops",
        ),
        w=12,
        h=8,
    )

    L.add(
        timeseries(
            "Peer message coalescing",
            "Messages carried per peer request (mean and p99): many keys' prepares and "
            "accepts to one peer share one HTTP request.",
            [
                target(
                    f"sum by (pod) (rate(paxoskv_transport_batch_messages_sum{{{SEL}}}[{RATE}])) / "
                    f"sum by (pod) (rate(paxoskv_transport_batch_messages_count{{{SEL}}}[{RATE}]))",
                    "{{pod}} mean",
                ),
                target(quantile("0.99", "paxoskv_transport_batch_messages", "pod"), "{{pod}} p99"),
            ],
            "short",
        ),
        w=24,
        h=7,
    )

    L.row("Latency breakdown and load")
    L.add(
        timeseries(
            "Phase latency (network + acceptors' disk)",
            "How long a proposer waits for each phase's broadcast to be decided by a quorum "
            "(paxoskv_paxos_phase_duration_seconds), p99 and p50: the round trip to the "
            "acceptors plus their persistence. Compare with the acceptors' own persist time "
            "on the right: the difference is the network and the peers' queues.",
            [
                target(quantile("0.99", "paxoskv_paxos_phase_duration_seconds", "phase"),
                       "{{phase}} p99"),
                target(quantile("0.5", "paxoskv_paxos_phase_duration_seconds", "phase"),
                       "{{phase}} p50"),
            ],
            "s",
        ),
        w=12,
        h=8,
        runbook="PaxosKVRequestLatencyHigh",
    )
    L.add(
        timeseries(
            "Acceptor persist latency (disk)",
            "Time from an acceptor's step on a prepare or accept to its state being durable "
            "(paxoskv_acceptor_persist_duration_seconds): waiting for the group commit, then "
            "the commit and its fsync. Queries read memory and have none.",
            [
                target(quantile("0.99", "paxoskv_acceptor_persist_duration_seconds", "phase"),
                       "{{phase}} p99"),
                target(quantile("0.5", "paxoskv_acceptor_persist_duration_seconds", "phase"),
                       "{{phase}} p50"),
            ],
            "s",
        ),
        w=12,
        h=8,
        runbook="PaxosKVFsyncSlow",
    )
    L.add(
        timeseries(
            "Rounds in flight",
            "Paxos rounds each node runs as proposer right now (paxoskv_rounds_in_flight); "
            "beyond 1024 at once (paxoskv/limits.py) requests are refused with 503.",
            [target(f"max by (pod) (paxoskv_rounds_in_flight{{{SEL}}})", "{{pod}}")],
            "short",
        ),
        w=8,
        h=8,
    )
    L.add(
        timeseries(
            "Client requests in flight",
            "Requests each node's client port is serving right now "
            "(paxoskv_client_requests_in_flight), as --max-requests-inflight counts them.",
            [target(f"max by (pod) (paxoskv_client_requests_in_flight{{{SEL}}})", "{{pod}}")],
            "short",
        ),
        w=8,
        h=8,
    )
    L.add(
        timeseries(
            "Event loop lag",
            "How late each node's single event loop runs a timer due every 0.5 s "
            "(paxoskv_event_loop_lag_seconds), p99 and mean: every request and round waits "
            "this long for the thread. High with high CPU: the node is saturated.",
            [
                target(quantile("0.99", "paxoskv_event_loop_lag_seconds", "pod"), "{{pod}} p99"),
                target(mean("paxoskv_event_loop_lag_seconds", "pod"), "{{pod}} mean"),
            ],
            "s",
        ),
        w=8,
        h=8,
        runbook="PaxosKVEventLoopLagging",
    )
    L.add(
        timeseries(
            "Client bytes",
            "Bytes per second read from (in) and written to (out) client connections "
            "(paxoskv_client_bytes_total), HTTP headers included.",
            [
                target(
                    f"sum by (pod, direction) (rate(paxoskv_client_bytes_total{{{SEL}}}[{RATE}]))",
                    "{{pod}} {{direction}}",
                )
            ],
            "Bps",
        ),
        w=12,
        h=8,
    )
    L.add(
        timeseries(
            "Peer bytes",
            "Bytes per second of peer frames received (in) and sent (out) "
            "(paxoskv_peer_bytes_total): Paxos message batches, their replies and "
            "heartbeats, as dialer and as server.",
            [
                target(
                    f"sum by (pod, direction) (rate(paxoskv_peer_bytes_total{{{SEL}}}[{RATE}]))",
                    "{{pod}} {{direction}}",
                )
            ],
            "Bps",
        ),
        w=12,
        h=8,
    )

    L.row("Storage")
    L.add(
        timeseries(
            "fsync p99 by node",
            "99th percentile fsync latency. Alerts: warning above 0.5 s, critical above 1 s.",
            [
                target(
                    quantile("0.99", "paxoskv_storage_fsync_duration_seconds", "pod"), "{{pod}} p99"
                ),
                target(
                    quantile("0.5", "paxoskv_storage_fsync_duration_seconds", "pod"), "{{pod}} p50"
                ),
            ],
            "s",
            defaults={
                "thresholds": {
                    "mode": "absolute",
                    "steps": [
                        GREEN,
                        {"color": "orange", "value": 0.5},
                        {"color": "red", "value": 1},
                    ],
                }
            },
            custom={"thresholdsStyle": {"mode": "line"}},
        ),
        w=12,
        h=8,
    )
    L.add(
        timeseries(
            "Group commit batch size",
            "Changes written per fsync (mean and p99): higher means the group commit is "
            "amortising the fsync over more writes.",
            [
                target(
                    f"sum by (pod) (rate(paxoskv_storage_batch_size_sum{{{SEL}}}[{RATE}])) / "
                    f"sum by (pod) (rate(paxoskv_storage_batch_size_count{{{SEL}}}[{RATE}]))",
                    "{{pod}} mean",
                ),
                target(quantile("0.99", "paxoskv_storage_batch_size", "pod"), "{{pod}} p99"),
            ],
            "short",
        ),
        w=12,
        h=8,
    )
    L.add(
        timeseries(
            "Keys by node",
            "Keys (registers) held by each node.",
            [target(f"max by (pod) (paxoskv_keys{{{SEL}}})", "{{pod}}")],
            "short",
        ),
        w=12,
        h=8,
    )
    L.add(
        timeseries(
            "Repaired keys",
            "Keys brought up to date by background repair, per second.",
            [
                target(
                    f"sum by (pod) (rate(paxoskv_repair_keys_total{{{SEL}}}[{RATE}]))",
                    "{{pod}}",
                )
            ],
            "ops",
        ),
        w=12,
        h=8,
    )
    L.add(
        timeseries(
            "Data directory",
            "Bytes the data directory's files take on each node (database, WAL, others), and "
            "the free pages inside the database that the incremental vacuum returns to the "
            "volume once they pass 8 MiB.",
            [
                target(f"max by (pod) (paxoskv_data_dir_bytes{{{SEL}}})", "{{pod}} data dir"),
                target(
                    f"max by (pod) (paxoskv_storage_freelist_bytes{{{SEL}}})",
                    "{{pod}} free inside the db",
                ),
            ],
            "bytes",
        ),
        w=8,
        h=8,
    )
    L.add(
        timeseries(
            "Tombstones and expired keys",
            "Tombstones each node waits to collect (grace period not over, or an acceptor "
            "unreachable: collection needs every acceptor), rows removed per second, and "
            "expired keys the TTL sweeper deleted or kept (renewed since) per second.",
            [
                target(f"max by (pod) (paxoskv_tombstones_pending{{{SEL}}})", "{{pod}} pending"),
                target(
                    f"sum by (pod) (rate(paxoskv_tombstones_collected_total{{{SEL}}}[{RATE}]))",
                    "{{pod}} collected/s",
                ),
                target(
                    f"sum by (result) (rate(paxoskv_ttl_expired_total{{{SEL}}}[{RATE}]))",
                    "expired {{result}}/s",
                ),
            ],
            "short",
        ),
        w=8,
        h=8,
    )
    L.add(
        timeseries(
            "Acceptor-set changes",
            "The config epoch each node holds (it goes up by two per one-acceptor change), "
            "whether a node drives a change, the driver's finished steps and caught-up keys "
            "per second, and messages refused for an older epoch (a node that missed a "
            "change learns it from these) per second (docs/reconfiguration.md); and the "
            "replication factor (acceptors each key lives on, 0: all; docs/groups.md).",
            [
                target(f"max by (pod) (paxoskv_config_epoch{{{SEL}}})", "{{pod}} epoch"),
                target(f"max (paxoskv_replication_factor{{{SEL}}})", "replication factor"),
                target(
                    f"max by (pod) (paxoskv_reconfig_running{{{SEL}}})", "{{pod}} driving"
                ),
                target(
                    f"sum by (step) (rate(paxoskv_reconfig_steps_total{{{SEL}}}[{RATE}]))",
                    "{{step}}/s",
                ),
                target(
                    f"sum (rate(paxoskv_reconfig_keys_caught_up_total{{{SEL}}}[{RATE}]))",
                    "keys caught up/s",
                ),
                target(
                    f"sum by (pod) (rate(paxoskv_epoch_refusals_total{{{SEL}}}[{RATE}]))",
                    "{{pod}} stale refusals/s",
                ),
            ],
            "short",
        ),
        w=8,
        h=8,
    )
    L.add(
        timeseries(
            "Scaling (follows the StatefulSet)",
            "The StatefulSet's replica count the nodes read (the acceptor set they drive to: "
            "--follow-replicas), and what the follower does on each node: 1 for its state "
            "(in_sync; changing; waiting_for_pods: a pod to add does not answer yet; over_max: "
            "above maxReplicas, nothing is changed; api_error: the Kubernetes API is not "
            "read; no_quorum; below_quorum: scaled below a majority of the acceptors, nothing "
            "is changed until scaled back up; standby: another node drives).",
            [
                target(
                    f"max (paxoskv_scaler_desired_acceptors{{{SEL}}})", "replicas asked for"
                ),
                target(
                    f"max by (pod, state) (paxoskv_scaler_state{{{SEL}}}) > 0",
                    "{{pod}} {{state}}",
                ),
            ],
            "short",
        ),
        w=8,
        h=8,
    )
    L.add(
        timeseries(
            "Volume free and size",
            "Free bytes and size of each node's data volume (statvfs). Every replica holds "
            "the same data, so the volumes fill together.",
            [
                target(f"max by (pod) (paxoskv_volume_free_bytes{{{SEL}}})", "{{pod}} free"),
                target(f"max by (pod) (paxoskv_volume_size_bytes{{{SEL}}})", "{{pod}} size"),
            ],
            "bytes",
        ),
        w=8,
        h=8,
    )
    L.add(
        timeseries(
            "Volume free %",
            "Share of each node's data volume still free. Alerts: PaxosKVVolumeNearlyFull "
            "below 10 % (default), PaxosKVVolumeFillingUp when the last hour's trend "
            "fills it within 4 h.",
            [
                target(
                    f"max by (pod) (paxoskv_volume_free_bytes{{{SEL}}}"
                    f" / paxoskv_volume_size_bytes{{{SEL}}})",
                    "{{pod}}",
                )
            ],
            "percentunit",
            defaults={
                "min": 0,
                "max": 1,
                "thresholds": {
                    "mode": "absolute",
                    "steps": [
                        RED,
                        {"color": "orange", "value": 0.1},
                        {"color": "green", "value": 0.2},
                    ],
                },
            },
            custom={"thresholdsStyle": {"mode": "line"}},
        ),
        w=8,
        h=8,
    )

    L.row("Peers")
    L.add(
        timeseries(
            "Peer up (seen from each node)",
            "1 when the node reached the peer at its last heartbeat.",
            [target(f"max by (pod, peer) (paxoskv_peer_up{{{SEL}}})", "{{pod}} -> {{peer}}")],
            "none",
            defaults={"min": 0, "max": 1},
            custom={"drawStyle": "line", "lineInterpolation": "stepAfter", "fillOpacity": 0},
        ),
        w=12,
        h=8,
    )
    L.add(
        timeseries(
            "Peer RTT",
            "Round-trip time of the last heartbeat to each peer; every round waits for the "
            "quorum's slowest member.",
            [
                target(
                    f"max by (pod, peer) (paxoskv_peer_rtt_seconds{{{SEL}}})",
                    "{{pod}} -> {{peer}}",
                )
            ],
            "s",
        ),
        w=12,
        h=8,
    )

    L.add(
        timeseries(
            "Peer RTT p99 (every heartbeat)",
            "99th percentile of every heartbeat's round trip to each peer "
            "(paxoskv_peer_round_trip_time_seconds; the PaxosKVPeerRTTHigh alert). The "
            "panel on the left shows only the last heartbeat before each scrape.",
            [
                target(
                    quantile("0.99", "paxoskv_peer_round_trip_time_seconds", "pod, peer"),
                    "{{pod}} -> {{peer}}",
                )
            ],
            "s",
        ),
        w=24,
        h=8,
        runbook="PaxosKVPeerRTTHigh",
    )

    L.row("Process")
    L.add(
        timeseries(
            "Resident memory",
            "RSS of each node's Python process.",
            [target(f"max by (pod) (process_resident_memory_bytes{{{SEL}}})", "{{pod}}")],
            "bytes",
        ),
        w=8,
        h=7,
    )
    L.add(
        timeseries(
            "CPU",
            "CPU seconds per second; one Python process uses at most one core.",
            [
                target(
                    f"sum by (pod) (rate(process_cpu_seconds_total{{{SEL}}}[{RATE}]))",
                    "{{pod}}",
                )
            ],
            "percentunit",
        ),
        w=8,
        h=7,
    )
    L.add(
        timeseries(
            "Open file descriptors",
            "Open fds per node (sockets to peers and clients, data files).",
            [target(f"max by (pod) (process_open_fds{{{SEL}}})", "{{pod}}")],
            "short",
        ),
        w=8,
        h=7,
    )

    alerts_of = {
        "Refused nodes": "PaxosKVIdentityRefused",
        "Refused peers": "PaxosKVPeerRefused",
        "Errors by op and code": "PaxosKVHighErrorRatio",
        "5xx error ratio": "PaxosKVHighErrorRatio",
        "Latency p99 by op": "PaxosKVRequestLatencyHigh",
        "Paxos rounds by phase and outcome": "PaxosKVFailedRounds",
        "Paxos conflicts": "PaxosKVHighConflictRate",
        "fsync p99 by node": "PaxosKVFsyncSlow",
        "Data directory": "PaxosKVVolumeFillingUp",
        "Volume free and size": "PaxosKVVolumeNearlyFull",
        "Volume free %": "PaxosKVVolumeNearlyFull",
        "Peer up (seen from each node)": "PaxosKVPeerDown",
        "Peer RTT": "PaxosKVPeerRTTHigh",
    }
    for panel in L.panels:
        if panel.get("title") in alerts_of:
            panel["links"][0]["url"] = f"${{runbook}}#{alerts_of[panel['title']].lower()}"

    def var(name: str, label: str, query: str, multi: bool) -> dict[str, Any]:
        v: dict[str, Any] = {
            "name": name,
            "label": label,
            "type": "query",
            "datasource": DS,
            "query": {"query": query, "refId": f"{name}-var"},
            "definition": query,
            "refresh": 2,
            "sort": 1,
            "multi": multi,
            "includeAll": multi,
            "current": {},
            "hide": 0,
        }
        if multi:
            v["allValue"] = ".*"
        return v

    return {
        "title": "paxoskv",
        "uid": "paxoskv-overview",
        "description": "paxoskv: requests, latency, Paxos rounds, storage, peers. "
        "Shipped with the paxoskv Helm chart.",
        "tags": ["paxoskv", "database", "consensus"],
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-1h", "to": "now"},
        "timezone": "",
        "annotations": {
            "list": [
                {
                    # Works from our own scrape alone: a process that restarted exports a
                    # new start time (kube-state-metrics is not needed).
                    "name": "Restarts",
                    "datasource": DS,
                    "enable": True,
                    "iconColor": "orange",
                    "expr": f"changes(process_start_time_seconds{{{SEL}}}[{RATE}]) > 0",
                    "step": "30s",
                    "titleFormat": "restart",
                    "textFormat": "{{pod}} restarted",
                    "tagKeys": "pod",
                },
                {
                    # Also a container that restarts before it is ever scraped (a crash
                    # loop); needs kube-state-metrics, so it is off by default.
                    "name": "Container restarts (kube-state-metrics)",
                    "datasource": DS,
                    "enable": False,
                    "iconColor": "red",
                    "expr": "increase(kube_pod_container_status_restarts_total{"
                    'cluster=~"$cluster", namespace="$namespace", pod=~"$job(-paxoskv)?-[0-9]+", '
                    f'container="paxoskv"}}[{RATE}]) > 0',
                    "step": "30s",
                    "titleFormat": "container restart",
                    "textFormat": "{{pod}} restarted",
                    "tagKeys": "pod",
                },
            ]
        },
        "links": [],
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                },
                {
                    "name": "runbook",
                    "label": "Runbook",
                    "type": "constant",
                    "query": RUNBOOK,
                    "hide": 2,
                },
                {
                    **var("cluster", "Cluster", "label_values(paxoskv_build_info, cluster)", False),
                    "includeAll": True,
                    "allValue": ".*",
                    "current": {"text": "All", "value": "$__all"},
                },
                var(
                    "namespace",
                    "Namespace",
                    'label_values(paxoskv_keys{cluster=~"$cluster"}, namespace)',
                    False,
                ),
                var(
                    "job",
                    "Job",
                    'label_values(paxoskv_keys{cluster=~"$cluster", namespace="$namespace"}, job)',
                    False,
                ),
                var(
                    "pod",
                    "Pod",
                    'label_values(paxoskv_keys{cluster=~"$cluster", namespace="$namespace", '
                    'job="$job"}, pod)',
                    True,
                ),
            ]
        },
        "panels": L.panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=False) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="fail if the JSON file is stale")
    args = ap.parse_args()
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is stale: run python3 {Path(__file__).as_posix()}", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
