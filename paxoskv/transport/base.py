"""The transport interface node.py depends on; aiohttp and the simulator implement it."""

from __future__ import annotations

from typing import Any, Protocol

from paxoskv.core.ballot import Ballot
from paxoskv.core.messages import Reply, Request

__all__ = ["KeyEntry", "PeerUnreachable", "Transport"]

KeyEntry = tuple[str, Ballot, bool]
"""A key an acceptor holds: (key, ballot of its accepted value, value is live)."""


class PeerUnreachable(Exception):
    """The peer did not answer (refused, reset, timed out, or answered garbage)."""


class Transport(Protocol):
    async def send(self, peer: int, msg: Request) -> Reply:
        """Deliver one request and return the peer's reply; raise PeerUnreachable."""
        ...

    async def hello(self, peer: int, info: dict[str, Any]) -> dict[str, Any]:
        """Exchange identities (heartbeat); raise PeerUnreachable."""
        ...

    async def list_keys(self, peer: int, prefix: str, limit: int) -> list[KeyEntry]:
        """The first ``limit`` keys (tombstones included) the peer's acceptor holds under
        ``prefix``, in key order; raise PeerUnreachable."""
        ...

    async def close(self) -> None: ...
