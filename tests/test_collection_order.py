"""tests/conftest.py: the files it collects first are real files (a renamed one would
silently fall back to the default order)."""

from __future__ import annotations

from pathlib import Path

from conftest import LONGEST_FIRST


def test_every_longest_first_file_exists() -> None:
    here = Path(__file__).parent
    missing = [name for name in LONGEST_FIRST if not (here / name).is_file()]
    assert missing == []
