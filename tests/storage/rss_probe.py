"""Run by tests/storage/test_statecache.py in a process of its own: fill a state cache
("packed": ``StateCache``; "dict": a dict of state objects, as before it) while making a
few long-lived objects, empty it, and print resident bytes before, full and after."""

import gc
import sys

from paxoskv.core.acceptor import AcceptorState
from paxoskv.core.ballot import Ballot
from paxoskv.core.register import Value
from paxoskv.storage.statecache import StateCache


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


kind, n = sys.argv[1], int(sys.argv[2])
cache: StateCache | dict[str, AcceptorState] = StateCache(256 << 20) if kind == "packed" \
    else {}
survivors = []
before = rss()
for i in range(n):
    key = f"bench/key-{i:07d}"
    state = AcceptorState(Ballot(1000 + i, 2, 5), Ballot(1000 + i, 2, 5),
                          Value(3, b"x" * 100, ((f"req-{i:016x}", 3),), None))
    if isinstance(cache, StateCache):
        cache.put(key, state)
    else:
        cache[key] = state
    if i % 64 == 0:
        survivors.append(float(i))  # something long-lived made during the load
full = rss()
for i in range(n):
    key = f"bench/key-{i:07d}"
    if isinstance(cache, StateCache):
        cache.pop(key)
    else:
        del cache[key]
if not isinstance(cache, StateCache):
    cache = {}  # and its table
gc.collect()
after = rss()
print(before, full, after)
