"""Errors by blame and by what the client may conclude (h11's split of who is at fault).

``NoQuorum`` and ``Overloaded``: the change definitely did not take effect (503).
``UnknownOutcome``: it may or may not have (504, docs/design.md invariant 5). The proposer decides
which applies (``paxoskv.core.proposer.classify_failure``); the node only raises it.
"""

from __future__ import annotations

__all__ = ["NoQuorum", "Overloaded", "UnknownOutcome"]


class NoQuorum(Exception):
    """No quorum of acceptors answered; the change definitely did not take effect."""


class UnknownOutcome(Exception):
    """The change may or may not have taken effect."""


class Overloaded(Exception):
    """Too many rounds in flight on this node; nothing was attempted."""
