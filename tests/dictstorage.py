"""For the node and API tests whose storage is a dict of states: the sweeps' listings."""

from __future__ import annotations

from paxoskv.core.acceptor import AcceptorState

__all__ = ["SweepListings"]


class SweepListings:
    """``Storage.tombstones`` and ``Storage.expiring`` over ``self.data`` and ``self.keys``."""

    data: dict[str, AcceptorState]

    def keys(self, prefix: str, after: str | None, limit: int) -> list[str]:
        raise NotImplementedError

    def tombstones(self, after: str | None, limit: int) -> list[str]:
        return [k for k in self.keys("", after, len(self.data))
                if self.data[k].value.data is None][:limit]

    def expiring(self, after: str | None, limit: int) -> list[str]:
        return [k for k in self.keys("", after, len(self.data))
                if self.data[k].value.expires_ms is not None][:limit]
