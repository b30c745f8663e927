"""The chaos workload on a thread beside a test that changes the cluster meanwhile: load in
slices until stopped, then a read of every key from every node (each retried), so that the
test can check the history and that every acknowledged write reads back."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable

from paxoskv.chaos.runner import acknowledged_read_back
from paxoskv.chaos.workload import FINAL_READ_CLIENT_BASE, Workload
from paxoskv.check import check

__all__ = ["BackgroundLoad"]


class BackgroundLoad:
    """``slices`` slices of ``slice_s`` of ``workload`` at most (bounded even if never
    stopped), then the final reads from ``node_ids``; ``finals`` counts them."""

    def __init__(self, workload: Workload, node_ids: Iterable[int], slices: int,
                 slice_s: float = 1.0) -> None:
        self.workload = workload
        self.node_ids = list(node_ids)
        self.finals = {"reads": 0, "unreadable": 0}
        self.errors: list[BaseException] = []
        self._slices, self._slice_s = slices, slice_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the load to end (idempotent; for ``finally`` blocks)."""
        self._stop.set()

    def finish(self, timeout_s: float = 120) -> None:
        """Stop the load, wait for the final reads, and fail on the clients' errors."""
        self._stop.set()
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "clients did not stop"
        assert not self.errors, self.errors

    def checked(self) -> tuple[int, int, int]:
        """After ``finish``: the history is linearizable and every acknowledged last write
        read back (asserted); returns (ops, acknowledged writes, keys read back)."""
        ops = self.workload.history.ops()
        result = check(ops)
        assert result.ok, result.summary()
        read_back, problems = acknowledged_read_back(ops)
        assert not problems, problems[:5]
        ok_writes = sum(v for (kind, status), v in self.workload.counts.items()
                        if kind != "read" and status == "ok")
        return len(ops), ok_writes, read_back

    def _run(self) -> None:
        try:
            asyncio.run(self._clients())
        except BaseException as exc:  # reported by finish(), on the test's thread
            self.errors.append(exc)

    async def _clients(self) -> None:
        w = self.workload
        try:
            for _ in range(self._slices):
                if self._stop.is_set():
                    break
                await w.run(self._slice_s)
            for key in w.all_keys():
                for nid in self.node_ids:
                    for attempt in range(10):
                        outcome = await w.call(FINAL_READ_CLIENT_BASE + nid, nid, "read", key,
                                               count=False)
                        self.finals["reads"] += 1
                        if outcome.status == "ok":
                            break
                        await asyncio.sleep(0.1 * (attempt + 1))
                    else:
                        self.finals["unreadable"] += 1
        finally:
            await w.close()
