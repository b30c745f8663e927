"""Chaos testing on real ``paxoskv serve`` processes.

`proxy`: a fault-injecting TCP proxy per directed peer link (pass, blackhole, refuse, delay).
`workload`: concurrent clients recording a history for `paxoskv.check`.
`schedule`: the seeded fault schedule (kill -9 and restart, SIGSTOP/SIGCONT, partitions).
`runner`: one run end to end, with the final read-back and the checks.

``python -m paxoskv.chaos --seed S --nodes N --duration D`` runs one from the command line.
"""

from paxoskv.chaos.proxy import LinkProxy, Mode, Network
from paxoskv.chaos.runner import ChaosOptions, ChaosResult, repro_command, run_chaos
from paxoskv.chaos.schedule import Episode, make_schedule

__all__ = [
    "ChaosOptions",
    "ChaosResult",
    "Episode",
    "LinkProxy",
    "Mode",
    "Network",
    "make_schedule",
    "repro_command",
    "run_chaos",
]
