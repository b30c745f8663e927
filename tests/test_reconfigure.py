"""The change driver's rule for a record another driver's change left (paxoskv/reconfigure.py).

Two drivers with different targets (an operator's POST, then a later one; or a driver that
resumed the previous change) used to take turns reversing each other's steps: the
integration test once ended at epoch 20 instead of 8. A driver now starts a new change
from such a record only if that change went toward its own target."""

from __future__ import annotations

from paxoskv.core.reconfig import Config, ConfigRecord, RecordPhase, change_configs
from paxoskv.reconfigure import moved_toward


def _after(start: set[int], to: set[int]) -> ConfigRecord:
    mid, end = change_configs(Config.stable(2, start), to)
    return ConfigRecord(RecordPhase.STABLE, end, previous=mid)


def test_a_change_toward_the_target_lets_the_driver_go_on() -> None:
    assert moved_toward(_after({1, 2, 3}, {1, 2, 3, 4}), frozenset({1, 2, 3, 4, 5}))
    assert moved_toward(_after({1, 2, 3, 4, 5}, {1, 2, 3, 4}), frozenset({1, 2, 3}))


def test_a_change_away_from_the_target_supersedes_the_driver() -> None:
    # The set grew to five while this driver wanted {1,2,3,4}; and the reverse.
    assert not moved_toward(_after({1, 2, 3, 4}, {1, 2, 3, 4, 5}), frozenset({1, 2, 3, 4}))
    assert not moved_toward(_after({1, 2, 3, 4}, {1, 2, 3}), frozenset({1, 2, 3, 4, 5}))


def test_a_record_no_change_left_is_not_a_move() -> None:
    assert not moved_toward(ConfigRecord(RecordPhase.STABLE, Config.stable(0, {1, 2, 3})),
                            frozenset({1, 2, 3, 4}))
