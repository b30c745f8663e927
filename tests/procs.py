"""Real ``paxoskv serve`` processes on loopback: the launcher lives in the package
(``paxoskv.chaos.processes``, which the chaos runner uses too); tests import it from here."""

from paxoskv.chaos.processes import SECRET, Cluster, ServerProcess, free_ports

__all__ = ["SECRET", "Cluster", "ServerProcess", "free_ports"]
