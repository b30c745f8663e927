"""paxoskv/bench_peer.py: the raw floor's framing, and a short real run of two transports."""

import re

import pytest

from paxoskv.bench_peer import _LENGTH, _Frames, main


class _Collect(_Frames):
    def __init__(self) -> None:
        super().__init__()
        self.frames: list[bytes] = []

    def on_frame(self, frame: bytes) -> None:
        self.frames.append(frame)


def test_raw_frames_are_cut_at_their_lengths_across_reads() -> None:
    """Goal: a frame split over reads, and several frames in one read, each come out whole
    and in order; a partial frame waits for the rest."""
    wire = b"".join(_LENGTH.pack(len(f)) + f for f in (b"one", b"", b"three" * 100))
    proto = _Collect()
    for i in range(0, len(wire), 7):
        proto.data_received(wire[i:i + 7])
    assert proto.frames == [b"one", b"", b"three" * 100]
    proto.data_received(_LENGTH.pack(4) + b"ab")
    assert len(proto.frames) == 3
    proto.data_received(b"cd")
    assert proto.frames[-1] == b"abcd"


def test_a_short_run_reports_each_transport(capsys: pytest.CaptureFixture[str]) -> None:
    """Goal: both processes start on the chosen loop, every message is answered (the
    sender asserts each reply), and a row with positive figures is printed per transport."""
    assert main(["--messages", "400", "--concurrency", "4", "--transports", "raw,channel",
                 "--event-loop", "uvloop"]) == 0
    out = capsys.readouterr().out
    assert "uvloop loop" in out
    for kind in ("raw", "channel"):
        row = next(line for line in out.splitlines() if line.startswith(kind + " "))
        figures = [float(x) for x in re.findall(r"[\d.]+", row)]
        assert len(figures) == 4 and all(x > 0 for x in figures), row


def test_an_unknown_transport_is_refused_before_anything_starts(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--transports", "raw,carrier-pigeon"])
    assert exc.value.code == 2
    assert "unknown transport 'carrier-pigeon'" in capsys.readouterr().err
