"""The storage's state cache: packed states read back as the states that were cached."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest

from paxoskv.core.acceptor import EMPTY_STATE, AcceptorState
from paxoskv.core.ballot import Ballot
from paxoskv.core.register import Value
from paxoskv.storage.statecache import StateCache, decode_state, encode_state

_BALLOTS = [Ballot.ZERO, Ballot(7, 2), Ballot(2**62, 3, 2**40, 5)]
_VALUES = [
    Value(0, None),
    Value(3, b""),
    Value(4, b"\x00" * 1000, (("r1", 4), ("\udc80id", 3)), None),
    Value(2**62, None, (("x" * 64, 2**62),), 1_700_000_000_000),
    Value(9, b"v", (), 0),
    Value(5, b"w", (("i" * 70_000, 5),)),  # a peer's id need not fit 16 bits
]


def test_every_field_survives_packing() -> None:
    for promised, accepted, value in itertools.product(_BALLOTS, _BALLOTS, _VALUES):
        if accepted > promised:
            continue
        state = AcceptorState(promised, accepted, value)
        back = decode_state(encode_state(state))
        assert back == state and hash(back.ballot_promised) == hash(promised)
        assert type(back.value.recent) is tuple and back.value.recent == value.recent
    assert decode_state(encode_state(EMPTY_STATE)) == EMPTY_STATE


def test_the_cache_answers_with_the_latest_state_or_nothing() -> None:
    cache = StateCache(1 << 20)
    states = [AcceptorState(Ballot(n, 1), Ballot(n, 1), Value(n, b"d" * n)) for n in range(1, 50)]
    for state in states:
        cache.put("k", state)
        assert cache.get("k") == state
    assert len(cache) == 1 and "k" in cache
    assert cache.pop("k") and cache.get("k") is None and "k" not in cache
    assert not cache.pop("k")


def test_a_budget_under_a_page_still_caches_what_fits() -> None:
    cache = StateCache(1000)
    state = AcceptorState(Ballot(1, 1), Ballot(1, 1), Value(1, b"v"))
    cache.put("k", state)
    assert cache.get("k") == state and cache.mapped_bytes <= 1000


def test_a_budget_of_nothing_caches_nothing() -> None:
    cache = StateCache(0)
    cache.put("k", AcceptorState(Ballot(1, 1), Ballot(1, 1), Value(1, b"v")))
    assert cache.get("k") is None and len(cache) == 0 and cache.mapped_bytes == 0


@pytest.mark.parametrize("kind", ["packed", "dict"])
def test_an_emptied_cache_gives_its_memory_back(kind: str) -> None:
    """Goal: the point of packing. 50,000 states cached while a few long-lived objects are
    made (one every 64 states, as a node makes metric values and timers during a load),
    then every state removed: the packed cache's resident memory goes back to within a
    tenth of what it grew by; a dict of state objects (what the cache was before) keeps
    most of it, because each allocator arena it filled keeps one of those objects (the
    check fails on the old design)."""
    out = subprocess.run([sys.executable, str(Path(__file__).with_name("rss_probe.py")),
                          kind, "50000"], capture_output=True, text=True, check=True,
                         timeout=120, cwd=Path(__file__).parents[2]).stdout
    before, full, after = (int(x) for x in out.split())
    grown = full - before
    assert grown > 5_000_000, out
    if kind == "packed":
        assert after - before < grown // 10, out
    else:
        assert after - before > grown // 2, out
