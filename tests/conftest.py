"""Test collection order for ``make test``'s parallel run (pytest-xdist, ``--dist loadfile``).

Each worker takes whole files in collection order as it becomes free (``make test`` passes
``--no-loadscope-reorder``: by default pytest-xdist orders files by their number of tests,
which put a two-test file of five minutes last), so a long file collected late can run
alone while the other worker has nothing left. The longest files (measured: each takes
one to five minutes) are collected first; the order within a file, and of every other
file, is unchanged.
"""

from __future__ import annotations

import pytest

LONGEST_FIRST = (
    "integration/test_range_backup.py",
    "sim/test_sim.py",
    "chaos/test_chaos.py",
    "integration/test_rejoin.py",
    "integration/test_groups_on_processes.py",
    "integration/test_reconfiguration.py",
    "integration/test_watch.py",
    "sim/test_reconf_node.py",
)


def _rank(item: pytest.Item) -> int:
    path = item.path.as_posix()
    for i, name in enumerate(LONGEST_FIRST):
        if path.endswith("/tests/" + name):
            return i
    return len(LONGEST_FIRST)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_rank)  # stable: the order inside each rank stays as collected
