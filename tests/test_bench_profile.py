"""The profile summary of paxoskv/bench_profile.py, on hand-made py-spy stacks."""

from paxoskv.bench_profile import summarize


def test_summary_counts_self_and_inclusive_samples_in_percent() -> None:
    """Goal: the leaf takes the self time, every frame on the stack the inclusive time, and
    event-loop plumbing is left out of the inclusive list."""
    lines = [
        "run (asyncio/runners.py:1);handle (/x/paxoskv/node.py:10);save (/x/paxoskv/s.py:3) 3",
        "run (asyncio/runners.py:1);handle (/x/paxoskv/node.py:10) 1",
        "garbage",
    ]
    text = summarize(lines, top=5)
    assert "4 samples" in text
    self_part, incl_part = text.split("inclusive:")
    assert "75.0%  save (paxoskv/s.py)" in self_part
    assert "25.0%  handle (paxoskv/node.py)" in self_part
    assert "100.0%  handle (paxoskv/node.py)" in incl_part
    assert "runners.py" not in incl_part


def test_no_samples_says_so() -> None:
    assert "no samples" in summarize([])
