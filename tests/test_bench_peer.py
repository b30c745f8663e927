"""paxoskv/bench_peer.py: the raw floor's framing, and a short real run of two transports."""

import asyncio
import re

import pytest

from paxoskv.bench_peer import _LENGTH, _Frames, _RawSender, main
from paxoskv.core.identity import PeerRecord
from paxoskv.core.messages import Query
from paxoskv.transport.base import PeerUnreachable
from paxoskv.transport.codec import Sender


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


def test_a_lost_raw_connection_fails_every_waiting_caller() -> None:
    """Goal: the floor's sender never leaves a caller waiting for ever (a run would hang):
    those with a frame out and those still queued are all failed."""
    async def run() -> None:
        proto = _RawSender(Sender(1, PeerRecord("b", 1, "b"), "fp"))
        proto.connection_made(_Sink())
        sent = proto.send(Query("a"), 0.0)
        await asyncio.sleep(0)  # its frame leaves
        queued = proto.send(Query("b"), 0.0)
        proto.connection_lost(ConnectionResetError("gone"))
        for fut in (sent, queued):
            with pytest.raises(PeerUnreachable, match="gone"):
                await fut
        await asyncio.sleep(0)  # the flush scheduled for "b" finds nothing to send

    asyncio.run(run())


class _Sink(asyncio.Transport):
    def write(self, data: bytes | bytearray | memoryview) -> None:
        pass


@pytest.mark.parametrize("argv, says", [
    (["--transports", "raw,carrier-pigeon"], "unknown transport 'carrier-pigeon'"),
    (["--messages", "3", "--concurrency", "4"], "--messages at least --concurrency"),
])
def test_bad_arguments_are_refused_before_anything_starts(
        argv: list[str], says: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert says in capsys.readouterr().err
