"""paxoskv/compact.py: a dict emptied of most of its keys gets a table of its own size."""

from __future__ import annotations

import sys
from collections import OrderedDict

from paxoskv.compact import COMPACT_MIN, compacted


def test_a_mostly_emptied_dict_is_copied_small_and_keeps_its_order() -> None:
    d: OrderedDict[str, int] = OrderedDict((f"k{i}", i) for i in range(100_000))
    peak = len(d)
    for i in range(99_990):
        del d[f"k{i}"]
    big = sys.getsizeof(d)
    d2, peak = compacted(d, peak)
    assert type(d2) is OrderedDict
    assert list(d2.items()) == list(d.items())
    assert peak == 10
    assert sys.getsizeof(d2) < big // 100


def test_copies_only_below_a_quarter_of_the_peak_and_above_the_minimum() -> None:
    d = {i: i for i in range(COMPACT_MIN)}
    same, peak = compacted(d, 4 * COMPACT_MIN)
    assert same is not d and peak == COMPACT_MIN  # a quarter of the peak: copied
    same, peak = compacted(d, 4 * COMPACT_MIN - 1)
    assert same is d and peak == 4 * COMPACT_MIN - 1
    small = {1: 1}
    assert compacted(small, COMPACT_MIN - 1) == (small, COMPACT_MIN - 1)
    grown, peak = compacted(d, 10)
    assert grown is d and peak == COMPACT_MIN  # the peak follows growth
