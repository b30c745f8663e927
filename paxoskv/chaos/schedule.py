"""The seeded fault schedule: which fault, on which nodes, for how long.

The schedule is a pure function of ``(seed, nodes, duration)``: the same seed gives the same
sequence of episodes. (The interleaving with client requests and the servers' own timers is
wall-clock and is not reproduced; the faults are.)

An episode is one fault held for ``hold_s``, then healed, then ``gap_s`` of quiet. Minority
faults leave a quorum working, so writes keep committing; majority faults (a quorum killed,
paused, or every link cut) are kept short (1-2.5 s) and rare: they exist to exercise the
503 (no quorum) and 504 (unknown outcome) paths. Every kind the cluster size allows appears
at least once (when the duration leaves room), then kinds are drawn by weight.
"""

from __future__ import annotations

import random
from collections.abc import Collection
from dataclasses import dataclass
from typing import Final

__all__ = ["MAJORITY_KINDS", "MINORITY_KINDS", "Episode", "make_schedule"]

MINORITY_KINDS: Final = ("kill", "pause", "isolate", "split", "oneway", "bridge", "slow",
                         "double", "kill-cycle", "disk_loss")
MAJORITY_KINDS: Final = ("majority-kill", "majority-pause", "total-partition")

_WEIGHTS: Final = {"kill": 5, "pause": 4, "isolate": 4, "split": 3, "oneway": 3, "bridge": 2,
                   "slow": 2, "double": 3, "kill-cycle": 3, "disk_loss": 1}

MAJORITY_EVERY_S: Final = 40.0
"""About one majority fault per this many seconds of run (at least one per run)."""

HOLD_S: Final = {"minority": (2.0, 7.0), "pause": (1.5, 8.0), "majority": (1.0, 2.5)}
"""A pause may outlast the client timeout (6 s) and the server's request timeout (4 s): the
paused node's rounds in flight then resume late, after the others moved on."""
GAP_S: Final = (1.0, 3.0)

DISK_LOSS_HOLD_S: Final = 14.0
"""Schedule estimate of one disk loss: the rejoining node waits out its fence (the request
plus peer timeout, past the longer of that and the phase-1-skip lifetime: 10 s with the
flags of paxoskv.chaos.processes) before it catches
up; the runner waits for the catch-up inside the episode (bounded), so this only keeps the
schedule's clock honest."""


@dataclass(frozen=True, slots=True)
class Episode:
    kind: str
    targets: tuple[int, ...] = ()
    """Nodes killed / paused / isolated / slowed (for ``double``: killed, then isolated; for
    ``kill-cycle``: killed one after the other, each restarted before the next is killed;
    for ``disk_loss``: the one node killed, its data directory deleted, restarted with
    ``--rejoin``)."""
    groups: tuple[tuple[int, ...], ...] = ()
    """For ``split`` and ``bridge``: the sides of the partition."""
    cut: tuple[tuple[int, int], ...] = ()
    """For ``oneway``: the directed links cut."""
    mode: str = "blackhole"
    """``blackhole`` or ``refuse`` for link faults."""
    delay_s: float = 0.0
    jitter: float = 0.0
    """For ``slow``: per-connection spread of the delay (0 = every connection the same)."""
    downtimes_s: tuple[float, ...] = ()
    """For ``kill-cycle``: how long each target stays dead."""
    hold_s: float = 0.0
    gap_s: float = 0.0

    @property
    def majority(self) -> bool:
        return self.kind in MAJORITY_KINDS

    def describe(self) -> str:
        parts = [self.kind]
        if self.targets:
            parts.append("nodes=" + ",".join(map(str, self.targets)))
        if self.groups:
            parts.append("groups=" + "|".join(",".join(map(str, g)) for g in self.groups))
        if self.cut:
            parts.append("cut=" + ",".join(f"{a}->{b}" for a, b in self.cut))
        if self.kind in ("isolate", "split", "oneway", "bridge", "double", "total-partition"):
            parts.append(f"mode={self.mode}")
        if self.delay_s:
            parts.append(f"delay={self.delay_s * 1000:.0f}ms jitter={self.jitter:.2f}")
        if self.downtimes_s:
            parts.append("down=" + ",".join(f"{d:.1f}s" for d in self.downtimes_s))
        parts.append(f"hold={self.hold_s:.1f}s gap={self.gap_s:.1f}s")
        return " ".join(parts)


def _kinds_for(n: int) -> list[str]:
    kinds = ["kill", "pause", "isolate", "split", "oneway", "bridge", "slow", "kill-cycle",
             "disk_loss"]
    if n >= 5:
        kinds.append("double")
    return kinds


def _episode(rng: random.Random, kind: str, nodes: list[int]) -> Episode:
    n = len(nodes)
    quorum = n // 2 + 1
    shuffled = nodes[:]
    rng.shuffle(shuffled)
    mode = "refuse" if rng.random() < 0.3 else "blackhole"
    gap = round(rng.uniform(*GAP_S), 2)
    if kind in MAJORITY_KINDS:
        hold = round(rng.uniform(*HOLD_S["majority"]), 2)
    elif kind == "pause":
        hold = round(rng.uniform(*HOLD_S["pause"]), 2)
    else:
        hold = round(rng.uniform(*HOLD_S["minority"]), 2)
    if kind in ("kill", "pause", "isolate", "slow"):
        delay = round(rng.uniform(0.05, 0.4), 3) if kind == "slow" else 0.0
        jitter = round(rng.uniform(0.0, 0.9), 2) if kind == "slow" else 0.0
        return Episode(kind, targets=(shuffled[0],), mode=mode, delay_s=delay, jitter=jitter,
                       hold_s=hold, gap_s=gap)
    if kind == "split":
        minority = tuple(sorted(shuffled[: (n - 1) // 2]))
        majority = tuple(sorted(shuffled[(n - 1) // 2:]))
        return Episode(kind, groups=(minority, majority), mode=mode, hold_s=hold, gap_s=gap)
    if kind == "oneway":
        node = shuffled[0]
        others = sorted(shuffled[1:])
        if rng.random() < 0.5:
            cut = tuple((node, o) for o in others)   # node cannot call anyone
        else:
            cut = tuple((o, node) for o in others)   # nobody can call node
        return Episode(kind, targets=(node,), cut=cut, mode=mode, hold_s=hold, gap_s=gap)
    if kind == "bridge":
        bridge = shuffled[0]
        rest = shuffled[1:]
        half = len(rest) // 2
        left, right = tuple(sorted(rest[:half])), tuple(sorted(rest[half:]))
        return Episode(kind, targets=(bridge,), groups=(left, right), mode=mode, hold_s=hold,
                       gap_s=gap)
    if kind == "kill-cycle":
        # Rolling kill -9: each node restarted (alive, not waited ready) before the next dies;
        # hold_s estimates the restarts (about 2 s each) too.
        steps = rng.randint(3, 6)
        targets = tuple(rng.choice(nodes) for _ in range(steps))
        downtimes = tuple(round(rng.uniform(0.2, 1.5), 2) for _ in range(steps))
        return Episode(kind, targets=targets, downtimes_s=downtimes,
                       hold_s=round(sum(downtimes) + 2.3 * steps, 2), gap_s=gap)
    if kind == "disk_loss":
        # One node only, and (episodes never overlap) never while another is down: the
        # other n - 1 >= quorum disks survive and hold every acknowledged write.
        return Episode(kind, targets=(shuffled[0],), hold_s=DISK_LOSS_HOLD_S, gap_s=gap)
    if kind == "double":
        assert n >= 5
        return Episode(kind, targets=(shuffled[0], shuffled[1]), mode=mode, hold_s=hold,
                       gap_s=gap)
    if kind in ("majority-kill", "majority-pause"):
        return Episode(kind, targets=tuple(sorted(shuffled[:quorum])), hold_s=hold, gap_s=gap)
    if kind == "total-partition":
        return Episode(kind, mode=mode, hold_s=hold, gap_s=gap)
    raise ValueError(f"unknown fault kind {kind!r}")


def make_schedule(seed: int, nodes: list[int], duration_s: float,
                  warmup_s: float = 2.0, only: Collection[str] | None = None) -> list[Episode]:
    """Episodes filling about ``duration_s - warmup_s`` seconds; the runner stops at its
    deadline, so the tail may not be reached. ``only``: draw from these kinds alone (to
    hammer on one fault); the default is every kind the cluster size allows."""
    if len(nodes) < 3:
        raise ValueError("chaos needs at least 3 nodes")
    rng = random.Random(f"paxoskv-chaos-schedule:{seed}:{len(nodes)}")
    kinds = _kinds_for(len(nodes))
    majority_kinds = list(MAJORITY_KINDS)
    if only is not None:
        unknown = set(only) - set(kinds) - set(MAJORITY_KINDS)
        if unknown:
            raise ValueError(f"fault kinds not available with {len(nodes)} nodes: "
                             f"{sorted(unknown)}")
        kinds = [k for k in kinds if k in only]
        majority_kinds = [k for k in majority_kinds if k in only]
        if not kinds and not majority_kinds:
            raise ValueError("no fault kind left")
    first = [k for k in kinds if k not in ("kill", "pause")]
    rng.shuffle(first)
    # Popped from the end: a kill, then a pause, come first.
    first += [k for k in ("pause", "kill") if k in kinds]
    majority_total = max(1, round(duration_s / MAJORITY_EVERY_S)) if majority_kinds else 0
    if not kinds:  # majority faults alone: back to back, with their gaps
        majority_total = 10_000
    episodes: list[Episode] = []
    elapsed = warmup_s
    majority_done = 0
    while elapsed < duration_s and len(episodes) < 10_000:
        # Spread the majority faults: the next one is due once this share of the run passed.
        due = (majority_done + 0.5) / max(1, majority_total) * duration_s
        if majority_done < majority_total and (elapsed >= due or not kinds):
            kind = rng.choice(majority_kinds)
            majority_done += 1
        elif first:
            kind = first.pop()
        else:
            kind = rng.choices(kinds, weights=[_WEIGHTS[k] for k in kinds])[0]
        episode = _episode(rng, kind, nodes)
        episodes.append(episode)
        # A kill's restart and wait for the node to come back take about 1-2 s more.
        elapsed += episode.hold_s + episode.gap_s + (
            1.5 if "kill" in kind or kind == "disk_loss" else 0.3)
    return episodes
