"""paxoskv: a replicated key-value store, one CASPaxos register per key."""

__version__ = "0.1.0"
__all__ = ["__version__"]
