"""``PackedMap``: a str -> bytes map in anonymous memory, checked against a dict."""

from __future__ import annotations

import random

import pytest

from paxoskv.packedmap import SEGMENT_BYTES_MIN, PackedMap


def _check(m: PackedMap, model: dict[str, bytes], bounded: bool) -> None:
    items = list(m.items())
    assert len(items) == len(m) == len({k for k, _ in items})
    assert m.oldest() == (items[0] if items else None)
    for key, value in items:
        assert model[key] == value
    if not bounded:
        assert len(m) == len(model)


@pytest.mark.parametrize("seed", range(60))
def test_behaves_as_a_dict_that_may_forget_its_oldest(seed: int) -> None:
    """Goal: whatever the mix of writes, rewrites, removals and budget, a key reads back as
    its latest value or (bounded map only) as nothing, never as an older value; the budget
    holds; and once every key is removed at most one (emptied) segment stays mapped."""
    rng = random.Random(seed)
    budget = rng.choice([None, 3 * SEGMENT_BYTES_MIN, 50_000, 1_000_000])
    compact = seed % 3 != 0
    m = PackedMap(budget, segment_bytes=rng.choice([SEGMENT_BYTES_MIN, 16_384, 1 << 20]),
                  compact=compact)
    order: dict[str, None] = {}  # the write order, kept exact without compaction
    keys = [f"k{i}" for i in range(rng.choice([5, 60, 600]))] + ["\udc80x", "é", ""]
    model: dict[str, bytes] = {}
    for step in range(2000):
        key = rng.choice(keys)
        r = rng.random()
        if r < 0.55:
            value = rng.randbytes(rng.choice([0, 8, 100, 3000, 9000]))
            stored = m.put(key, value)
            model[key] = value
            order.pop(key, None)
            order[key] = None
            assert stored or budget is not None
        elif r < 0.7:
            had = m.get(key) is not None
            assert m.pop(key) == had
            model.pop(key, None)
            order.pop(key, None)
            assert m.get(key) is None and key not in m
        else:
            got = m.get(key)
            assert got is None or got == model.get(key), (step, key)
            assert (key in m) == (got is not None)
            if budget is None:
                assert got == model.get(key)
        if budget is not None:
            assert m.mapped_bytes <= budget
        if step % 97 == 0:
            _check(m, model, budget is not None)
            if not compact:
                kept = set(m.keys())
                assert m.keys() == [k for k in order if k in kept]
    _check(m, model, budget is not None)
    for key in keys:
        m.pop(key)
    assert len(m) == 0 and list(m.items()) == [] and m.oldest() is None
    assert len(m._segments) <= 1 and all(s.used == 0 for s in m._segments.values())
    assert m.mapped_bytes <= max(SEGMENT_BYTES_MIN, 9000 + 20, m._segment_bytes)
    assert m.table_bytes <= 256 * 16


def test_entries_come_back_in_write_order_and_a_rewrite_moves_one_last() -> None:
    m = PackedMap()
    for key in ("a", "b", "c"):
        m.put(key, key.encode())
    m.put("a", b"A")
    assert list(m.items()) == [("b", b"b"), ("c", b"c"), ("a", b"A")]
    assert m.oldest() == ("b", b"b")
    m.pop("b")
    assert m.oldest() == ("c", b"c")


def test_a_bounded_map_forgets_whole_segments_oldest_first() -> None:
    m = PackedMap(4 * SEGMENT_BYTES_MIN)
    for i in range(200):
        assert m.put(f"k{i:03d}", b"x" * 100)
    kept = m.keys()
    assert 0 < len(kept) < 200 and kept == [f"k{i:03d}" for i in range(200 - len(kept), 200)]
    assert m.mapped_bytes <= 4 * SEGMENT_BYTES_MIN
    assert not m.put("big", b"x" * (5 * SEGMENT_BYTES_MIN))
    assert "big" not in m


def test_a_few_long_lived_keys_do_not_keep_many_segments_mapped() -> None:
    """Goal: one key that stays while the keys written around it all go does not keep
    its segment (and every segment like it) mapped: its record moves to the newest."""
    m = PackedMap(segment_bytes=SEGMENT_BYTES_MIN)
    for round_ in range(20):
        m.put(f"stay{round_}", b"s")
        for i in range(100):
            m.put(f"r{round_}-{i}", b"x" * 100)
        for i in range(100):
            m.pop(f"r{round_}-{i}")
    assert len(m) == 20
    assert m.mapped_bytes <= 2 * SEGMENT_BYTES_MIN
    assert all(m.get(f"stay{r}") == b"s" for r in range(20))


def test_the_index_grows_and_shrinks_with_the_entries() -> None:
    m = PackedMap()
    for i in range(20_000):
        m.put(str(i), b"")
    big = m.table_bytes
    assert big >= 20_000 * 16
    for i in range(20_000):
        assert m.pop(str(i))
    assert m.table_bytes < big // 16
    assert m.mapped_bytes <= SEGMENT_BYTES_MIN * 256


def test_an_update_of_the_same_length_stays_in_place() -> None:
    m = PackedMap()
    for key in ("a", "b"):
        m.put(key, b"12")
    assert m.update("a", b"34")
    assert list(m.items()) == [("a", b"34"), ("b", b"12")]
    assert m.update("a", b"567")  # another length: written anew, now the newest
    assert list(m.items()) == [("b", b"12"), ("a", b"567")]
    assert m.update("c", b"") and m.get("c") == b""


def test_keys_where_picks_by_value_without_moving_anything() -> None:
    m = PackedMap()
    for i in range(10):
        m.put(f"k{i}", bytes([i % 3]))
    m.pop("k3")
    assert m.keys_where(lambda v: v == b"\x00") == ["k0", "k6", "k9"]
    assert len(m) == 9


def test_keys_of_any_length() -> None:
    m = PackedMap()
    long_key = "k" * 70_000
    assert m.put(long_key, b"v") and m.get(long_key) == b"v" and m.keys() == [long_key]
