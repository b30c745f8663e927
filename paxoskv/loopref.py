"""The running event loop, looked up once per object instead of once per call.

On Python 3.11 every ``asyncio.get_running_loop()`` makes a ``getpid`` system call (the
check against a fork; 3.12 dropped it), and the hot path called it a dozen times per
write: 5-12 % of a node's GIL samples under load (py-spy --native). An object that serves
one event loop at a time keeps a ``LoopRef`` and asks it instead; a loop that is no longer
running (a test's ``asyncio.run`` ended, the simulator started another) is replaced by the
one running now.
"""

from __future__ import annotations

import asyncio

__all__ = ["LoopRef"]


class LoopRef:
    __slots__ = ("_loop",)

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None

    def get(self) -> asyncio.AbstractEventLoop:
        """The running loop (RuntimeError outside one, as ``get_running_loop``)."""
        loop = self._loop
        if loop is None or not loop.is_running():
            loop = self._loop = asyncio.get_running_loop()
        return loop
