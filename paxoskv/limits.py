"""Every bound in one place, each with its reason (TigerBeetle: "put a limit on everything").

Overrides come through ``Limits`` and pass ``validate()``; the module-level names are the
defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Limits"]

KEY_BYTES_MAX = 1024
"""the README's HTTP API; etcd and Consul allow more, but long keys make poor register names."""

VALUE_BYTES_MAX = 1024 * 1024
"""1 MiB default, etcd's default request size is 1.5 MiB: a small-values store."""

HEADER_BYTES_MAX = 4096
"""Room for the JSON envelope of one message (ballots, key, base64 padding)."""

BATCH_MESSAGES_MAX = 256
"""Messages coalesced into one peer request: bounds a frame and the tail latency of a batch."""

STORAGE_BATCH_MAX = 512
"""Key writes committed under one fsync."""

PREPARED_BYTES_MAX = 32 * 1024 * 1024
"""Memory for the keys whose next ballot a quorum has promised (phase-1 skip); past it the
least recently written keys go back to full rounds."""

KEY_BATCH_MAX = 8
"""Changes to one key one round applies together; each records its request id in the
value's 16 recent ids, so a round of at most half of them keeps every retry checkable."""

STORAGE_CACHE_BYTES = 64 * 1024 * 1024
"""Recently used key states kept in memory (estimated Python object bytes). Values live on
disk; this bound, not the number of keys, sets a node's memory (docs/storage.md). A miss
costs one SQLite point read, tens of microseconds."""

ROUNDS_INFLIGHT_MAX = 1024
"""Concurrent client rounds a node runs before it answers 503: bounds memory under overload."""

ROUND_RETRIES_MAX = 8
"""Attempts of one change under contention before the client gets 503."""

LIST_LIMIT_MAX = 10_000
"""Keys one list call returns."""

RANGE_LIMIT_MAX = 1000
"""Keys one range read (``GET /v1/kv?values=true``) returns: each is a read round of its
own, so a page of them is bounded work (about one round trip per key, run some at once)."""

RANGE_BYTES_MAX = 4 * 1024 * 1024
"""Value bytes (before base64) one range-read page holds; the page stops before the key
that would pass it (but always holds one key, so a value larger than this still comes,
alone). Bounds the memory of building an answer and its size on the wire."""

RANGE_READS_AT_ONCE = 32
"""Reads (or deletes) one range request runs at once: fast pages without one request
taking most of the node's ROUNDS_INFLIGHT_MAX."""

DELETE_PREFIX_KEYS_MAX = 10_000
"""Keys one range delete (``DELETE /v1/kv?prefix=``) deletes before it answers with a
cursor to continue from; it also stops at half the request timeout."""

KEYS_PAGE_MAX = 1000
"""Entries one peer key-listing page holds: a page of the largest keys stays about 1 MiB,
well inside one peer timeout. Listings, rejoin and repair page through keys this many at a
time; nothing loads all keys."""


@dataclass(frozen=True, slots=True)
class Limits:
    key_bytes_max: int = KEY_BYTES_MAX
    value_bytes_max: int = VALUE_BYTES_MAX
    batch_messages_max: int = BATCH_MESSAGES_MAX
    storage_batch_max: int = STORAGE_BATCH_MAX
    storage_cache_bytes: int = STORAGE_CACHE_BYTES
    rounds_inflight_max: int = ROUNDS_INFLIGHT_MAX
    prepared_bytes_max: int = PREPARED_BYTES_MAX
    key_batch_max: int = KEY_BATCH_MAX
    round_retries_max: int = ROUND_RETRIES_MAX
    list_limit_max: int = LIST_LIMIT_MAX
    range_limit_max: int = RANGE_LIMIT_MAX
    range_bytes_max: int = RANGE_BYTES_MAX

    @property
    def frame_bytes_max(self) -> int:
        """A peer frame must hold a full batch of the largest messages (base64 is 4/3)."""
        per_message = HEADER_BYTES_MAX + self.key_bytes_max + (self.value_bytes_max * 4) // 3 + 4
        return max(per_message * 4, 8 * 1024 * 1024)

    def validate(self) -> Limits:
        if not 1 <= self.key_bytes_max <= 64 * 1024:
            raise ValueError("key_bytes_max must be within 1..65536")
        if not 1 <= self.value_bytes_max <= 64 * 1024 * 1024:
            raise ValueError("max value bytes must be within 1..67108864")
        if self.batch_messages_max < 1 or self.storage_batch_max < 1:
            raise ValueError("batch limits must be positive")
        if self.storage_cache_bytes < 0:
            raise ValueError("--cache-bytes must be 0 (no cache) or more")
        if self.rounds_inflight_max < 1 or self.round_retries_max < 1:
            raise ValueError("round limits must be positive")
        if self.range_limit_max < 1 or self.range_bytes_max < 1:
            raise ValueError("range limits must be positive")
        return self


assert Limits().frame_bytes_max >= KEY_BYTES_MAX + VALUE_BYTES_MAX + HEADER_BYTES_MAX
