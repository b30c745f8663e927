"""An asyncio event loop on a virtual clock, so the real node runs unchanged in the simulator.

`SimLoop` is a `SelectorEventLoop` whose selector never waits: ``select(timeout)`` moves the
virtual clock forward by ``timeout`` (the time until the next scheduled callback) and returns
no events, and ``time()`` reads the virtual clock. A run of minutes of virtual time costs only
the CPU its callbacks take, and nothing reads the wall clock.

Determinism. The ready queue is FIFO and the timer heap is ordered by deadline, so given the
same callbacks in the same order, a run repeats exactly. One thing in asyncio is not ordered
by the program: a ``set`` of tasks (``asyncio.wait`` returns them) iterates by hash, and a
task hashes by its memory address. The loop's task factory makes `SimTask`, which hashes by
its creation number instead, so set order is the same in every run of one seed.

The loop's self-pipe (a real socket pair made by ``SelectorEventLoop``) is registered with
the fake selector and never polled: nothing in a simulation calls the loop from another
thread.
"""

from __future__ import annotations

import asyncio
import contextvars
import selectors
from collections.abc import Coroutine, Generator, Mapping
from typing import Any, TypeVar

__all__ = ["SimDeadlock", "SimLoop", "SimTask", "run_virtual"]

T = TypeVar("T")


class SimDeadlock(RuntimeError):
    """Nothing is ready and nothing is scheduled: the simulation can never make progress."""


class _VirtualSelector(selectors.BaseSelector):
    """Holds registrations and advances the clock instead of waiting for them."""

    def __init__(self, clock: _Clock) -> None:
        self._clock = clock
        self._keys: dict[int, selectors.SelectorKey] = {}

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        if fd in self._keys:
            raise KeyError(f"{fileobj!r} is already registered")
        key = selectors.SelectorKey(fileobj, fd, events, data)
        self._keys[fd] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        return self._keys.pop(fd)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            raise SimDeadlock("no callback is ready or scheduled; every task waits forever")
        assert timeout >= 0
        self._clock.now += timeout
        return []

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return dict(self._keys)

    def close(self) -> None:
        self._keys.clear()


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0


class SimTask(asyncio.Task[T]):
    """A task that hashes by creation order, so sets of tasks iterate deterministically."""

    def __init__(
        self,
        coro: Coroutine[Any, Any, T] | Generator[Any, None, T],
        *,
        loop: asyncio.AbstractEventLoop,
        context: contextvars.Context | None,
        seq: int,
    ) -> None:
        self._sim_seq = seq  # before Task.__init__, which puts the task in a weak set
        super().__init__(coro, loop=loop, context=context)

    def __hash__(self) -> int:
        return self._sim_seq


class SimLoop(asyncio.SelectorEventLoop):
    """A selector event loop on a virtual clock starting at 0.0 seconds."""

    def __init__(self) -> None:
        self._sim_clock = _Clock()
        self._sim_tasks_made = 0
        super().__init__(_VirtualSelector(self._sim_clock))
        self.set_task_factory(self._make_task)

    def time(self) -> float:
        return self._sim_clock.now

    def _make_task(
        self,
        loop: asyncio.AbstractEventLoop,
        coro: Coroutine[Any, Any, T] | Generator[Any, None, T],
        context: contextvars.Context | None = None,
    ) -> SimTask[T]:
        assert loop is self
        self._sim_tasks_made += 1
        return SimTask(coro, loop=loop, context=context, seq=self._sim_tasks_made)


def run_virtual(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to completion on a fresh `SimLoop`; cancel what it left behind."""
    loop = SimLoop()
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(main)
    finally:
        try:
            leftovers = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in leftovers:
                task.cancel()
            if leftovers:
                loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()
