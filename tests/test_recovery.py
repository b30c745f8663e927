"""The rejoin fence's length (``Recovery.fence_s``, ``NodeConfig.rejoin_fence_s``): long
enough for every member's messages and cached phase-1-skip ballots to run out."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pytest

from paxoskv.config import NodeConfig, PeerSpec
from paxoskv.membership import PeerHealth
from paxoskv.node import IdentityRules
from paxoskv.recovery import Recovery

PEERS = {i: PeerSpec(i, f"http://127.0.0.1:{9000 + i}") for i in (1, 2, 3)}


def _recovery(config: NodeConfig, health: dict[int, PeerHealth],
              rules: IdentityRules | None = None) -> Recovery:
    node = SimpleNamespace(config=config, storage=None, metrics=None, peer_health=health,
                           identity_rules=rules or IdentityRules())
    return Recovery(cast(Any, node))


@pytest.mark.parametrize(("skip_s", "fence_s"), [(1.0, 14.0), (7.0, 14.0), (60.0, 67.0)])
def test_the_fence_is_a_message_lifetime_past_the_longer_of_the_two(
        skip_s: float, fence_s: float) -> None:
    """Goal: never below twice the message lifetime (7 s with the defaults), and one
    message lifetime past a longer cached-ballot lifetime."""
    config = NodeConfig(1, PEERS, phase1_skip_lifetime_s=skip_s)
    assert config.rejoin_fence_s == fence_s


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan")])
def test_a_lifetime_that_is_not_a_positive_number_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="--phase1-skip-lifetime"):
        NodeConfig(1, PEERS, phase1_skip_lifetime_s=bad)


def test_the_fence_covers_what_peers_announce() -> None:
    """Goal: a peer with a longer cached-ballot lifetime (its announced fence), or an older
    release announcing only its message lifetime, lengthens this node's fence."""
    config = NodeConfig(1, PEERS, phase1_skip_lifetime_s=10.0)
    assert _recovery(config, {}).fence_s() == 17.0
    assert _recovery(config, {2: PeerHealth(fence_s=100.0)}).fence_s() == 100.0
    assert _recovery(config, {2: PeerHealth(lifetime_s=20.0)}).fence_s() == 40.0
    assert _recovery(config, {2: PeerHealth(fence_s=5.0), 3: PeerHealth()}).fence_s() == 17.0


def test_the_mutant_fence_ignores_cached_ballots() -> None:
    """Goal: the rule the mutant "fence-before-cached-ballots-expire" switches off is the
    one that makes the fence longer than twice the message lifetime."""
    config = NodeConfig(1, PEERS, phase1_skip_lifetime_s=60.0)
    rules = IdentityRules(fence_outlasts_cached_ballots=False)
    assert _recovery(config, {2: PeerHealth(fence_s=100.0)}, rules).fence_s() == 14.0
    assert _recovery(config, {}).fence_s() == 67.0
