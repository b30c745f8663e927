"""Real ``paxoskv serve`` processes on loopback: the launcher lives in the package
(``paxoskv.chaos.processes``, which the chaos runner uses too); tests import it from here."""

from collections.abc import Collection
from pathlib import Path

from paxoskv.chaos.processes import SECRET, Cluster, ServerProcess, free_ports

__all__ = ["SECRET", "Cluster", "ServerProcess", "free_ports", "waiting_members"]


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
