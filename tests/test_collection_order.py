"""tests/conftest.py: the files it collects first are real files (a renamed one would
silently fall back to the default order)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

HERE = Path(__file__).parent


def test_every_longest_first_file_exists() -> None:
    # Loaded from its path: "conftest" in sys.modules may be another directory's.
    spec = importlib.util.spec_from_file_location("tests_root_conftest", HERE / "conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    names = module.LONGEST_FIRST
    assert len(names) >= 5
    missing = [name for name in names if not (HERE / name).is_file()]
    assert missing == []
