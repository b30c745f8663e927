"""Real ``paxoskv serve`` processes on loopback: the launcher lives in the package
(``paxoskv.chaos.processes``, which the chaos runner uses too); tests import it from here."""

import json
import time
import urllib.error
import urllib.request
from collections.abc import Collection
from pathlib import Path
from typing import Any

from paxoskv.chaos.processes import SECRET, Cluster, ServerProcess, free_ports

__all__ = ["SECRET", "Cluster", "ServerProcess", "free_ports", "post_json",
           "waiting_members"]


def waiting_members(tmp_path: Path, ids: Collection[int], initial: Collection[int],
                    extra: list[str]) -> dict[int, ServerProcess]:
    """Processes for ``ids`` (not started), named in one hosts file: those in ``initial``
    form the first acceptor set, the others wait ("initial: false") until an acceptor-set
    change adds them. Each has ``tmp_path/n<id>`` as data directory and its own log."""
    ports = dict(zip(ids, free_ports(len(ids)), strict=True))
    hosts = tmp_path / "hosts.yaml"
    hosts.write_text("nodes:\n" + "\n".join(
        f'  - {{id: {i}, url: "http://127.0.0.1:{ports[i]}", '
        f'initial: {str(i in initial).lower()}}}' for i in ids) + "\n")
    return {i: ServerProcess(i, ports[i], f"@{hosts}", tmp_path / f"n{i}",
                             tmp_path / f"n{i}.log", list(extra)) for i in ids}


def post_json(node: ServerProcess, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    """POST ``body`` as JSON: (status, the JSON answer), or (0, the error) when the node
    cannot be reached."""
    req = urllib.request.Request(node.url + path, data=json.dumps(body).encode(),
                                 method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())
    except OSError as exc:
        return 0, str(exc)


def post_change(node: ServerProcess, acceptors: Collection[int], tries: int
                ) -> tuple[int, Any]:
    """POST an acceptor-set change to ``node``, again every 0.2 s while it answers 409
    (a change, perhaps one a restarted driver resumed, is still running), at most
    ``tries`` times: the last answer."""
    for _ in range(tries):
        code, body = post_json(node, "/admin/acceptors", {"acceptors": sorted(acceptors)})
        if code != 409:
            break
        time.sleep(0.2)
    return code, body
