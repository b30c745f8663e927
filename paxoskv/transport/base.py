"""The transport interface node.py depends on; aiohttp and the simulator implement it."""

from __future__ import annotations

from typing import Any, Protocol

from paxoskv.core.acceptor import Floor
from paxoskv.core.ballot import Ballot
from paxoskv.core.messages import Reply, Request
from paxoskv.core.reconfig import Config
from paxoskv.transport.codec import Sender

__all__ = ["KeyEntry", "KeyPage", "PeerNotReached", "PeerUnreachable", "Refusal", "Transport"]

KeyEntry = tuple[str, Ballot, bool]
"""A key an acceptor holds: (key, ballot of its accepted value, value is live)."""

KeyPage = tuple[list[KeyEntry], bool]
"""One page of a peer's keys, and whether more follow."""


class PeerUnreachable(Exception):
    """The peer did not answer (refused, reset, timed out, or answered garbage)."""


class PeerNotReached(PeerUnreachable):
    """The message certainly never reached the peer (never sent, or the connection could
    not be made): whatever it asked for did not happen there."""


class Refusal(Exception):
    """A node will not serve this sender (an unknown process, another membership)."""


class Transport(Protocol):
    def set_sender(self, sender: Sender) -> None:
        """Who we are in every frame's header (changes when the incarnation is raised)."""
        ...

    async def send(self, peer: int, msg: Request, deadline: float,
                   config: Config | None = None) -> Reply:
        """Deliver one request and return the peer's reply; raise PeerUnreachable. The
        message is dropped (never sent, or not acted on by the peer) after ``deadline``
        (event loop time). ``config``: the acceptor-set config it is sent under, named in
        its frame's header (None: epoch 0, nothing added)."""
        ...

    async def hello(self, peer: int, info: dict[str, Any]) -> dict[str, Any]:
        """Exchange identities (heartbeat); raise PeerUnreachable."""
        ...

    async def list_keys(self, peer: int, prefix: str, after: str | None, limit: int
                        ) -> KeyPage:
        """Up to ``limit`` keys (tombstones included) the peer's acceptor holds under
        ``prefix`` and after ``after``, in key order; raise PeerUnreachable."""
        ...

    async def list_floors(self, peer: int, after: int, limit: int) -> list[tuple[int, Floor]]:
        """Up to ``limit`` bucket floors of the peer's acceptor (docs/gc.md), buckets above
        ``after`` in order; raise PeerUnreachable (also when it does not serve as an
        acceptor)."""
        ...

    async def push_floors(self, peer: int, floors: list[tuple[int, Floor]]) -> None:
        """Have the peer raise these bucket floors (an acceptor-set change adding it,
        docs/reconfiguration.md); return once durable there; raise PeerUnreachable."""
        ...

    async def close(self) -> None: ...
