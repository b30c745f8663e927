"""A map from key to bytes kept outside Python's object heap, for per-key structures that
grow with a load and must give their memory back once it is over.

Why: CPython's small-object allocator serves objects up to 512 bytes from 1 MiB arenas,
and an arena goes back to the system only when every object in it is freed; nothing moves
a live object. A per-key structure of small objects (a dict of states, of ids, of pending
tombstones) filled new arenas during a load, and the few long-lived objects made meanwhile
(a metric's value, a timer, a prepared statement) landed among its entries. Once the keys
were gone, each of those arenas kept one of them: a node that had held 100,000 keys stayed
at 2.6 times its empty size (docs/gc.md).

Here an entry is one record, header + key + value, appended to a segment of anonymous
memory (``mmap``), and the index is two flat arrays of integers (open addressing, linear
probing) also in ``mmap``: an entry has no Python object of its own, only the ones a
lookup makes and its caller drops. Entries are kept in the order they were last written
(a rewrite moves one to the newest segment). A segment is unmapped, its memory returned
at once, when none of its records is an entry any more; a segment other than the newest
whose live bytes fall under an eighth of what was written to it has its live records
copied to the newest and is unmapped, so a few long-lived keys cannot keep many segments
mapped. With ``max_bytes``, the oldest segment (and its entries) is dropped when a new one
would not fit: a FIFO cache.

Not thread-safe: each user calls it from the event loop only.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Callable, Iterator
from typing import Final

__all__ = ["SEGMENT_BYTES", "PackedMap", "encode_key"]

SEGMENT_BYTES: Final = 1 << 20
"""Records are appended to segments of this size (a smaller one for a budget under 16 of
them; one of its own for a record larger than this): the unit in which memory is mapped
and given back."""

SEGMENT_BYTES_MIN: Final = 4096

_TABLE_MIN: Final = 256
"""Fewest slots the index has (4 KiB for its two arrays)."""

_RECLAIM_FRACTION: Final = 8

# A record: record bytes, key bytes, dead flag, pad; then the key (UTF-8), then the value.
_HEAD: Final = struct.Struct("<IIB3x")
_KEY_BYTES: Final = struct.Struct("<I")
_KEY_BYTES_AT: Final = 4
_DEAD_AT: Final = 8
_RECORD_BYTES: Final = struct.Struct("<I")
_POS_BITS: Final = 32
_OFFSET_MASK: Final = (1 << _POS_BITS) - 1
_SEGMENT_IDS: Final = 1 << 30
_MADV_DONTNEED: Final = getattr(mmap, "MADV_DONTNEED", None)
_PRIVATE: Final = mmap.MAP_PRIVATE | getattr(mmap, "MAP_ANONYMOUS", 0)
"""Private anonymous memory: ``mmap.mmap(-1, n)`` alone maps shared memory, whose pages
``MADV_DONTNEED`` unmaps from the process without freeing them."""
_EMPTY: Final = 0
_DELETED: Final = -1


def encode_key(key: str) -> bytes:
    return key.encode("utf-8", "surrogatepass")


class _Segment:
    __slots__ = ("first", "id", "live", "mem", "size", "used")

    def __init__(self, seg_id: int, size: int) -> None:
        self.id, self.size = seg_id, size
        self.mem = mmap.mmap(-1, size, flags=_PRIVATE)
        self.used = 0
        """Bytes written, from the start: the next record goes there."""
        self.live = 0
        """Bytes of the records written here that are still an entry."""
        self.first = 0
        """No live record starts before this offset (``oldest`` skips the dead once)."""


class _Table:
    """Slots of positions (0 empty, -1 deleted, else segment id << 32 | offset) and of the
    keys' hashes."""

    __slots__ = ("_hmem", "_pmem", "hashes", "mask", "positions", "used")

    def __init__(self, slots: int) -> None:
        self._pmem = mmap.mmap(-1, slots * 8, flags=_PRIVATE)
        self._hmem = mmap.mmap(-1, slots * 8, flags=_PRIVATE)
        self.positions = memoryview(self._pmem).cast("q")
        self.hashes = memoryview(self._hmem).cast("q")
        self.mask = slots - 1
        self.used = 0
        """Slots not empty (an entry or deleted): what probing walks past."""

    def close(self) -> None:
        self.positions.release()
        self.hashes.release()
        self._pmem.close()
        self._hmem.close()


class PackedMap:
    """``str`` -> ``bytes``, oldest write first; at most ``max_bytes`` of segments mapped
    (None: no bound, no eviction).

    ``compact=False`` keeps the order exact (``oldest``, ``items``): no live record is
    ever moved, so a segment goes only once every record in it has, which suits entries
    that all expire in the order they were written (ids of the last minute, say). With
    the default, a mostly dead segment's live records are moved to the newest one, ahead
    of entries written after them."""

    def __init__(self, max_bytes: int | None = None,
                 segment_bytes: int = SEGMENT_BYTES, compact: bool = True) -> None:
        self._compact = compact
        self._max = None if max_bytes is None else max(0, max_bytes)
        bound = segment_bytes if self._max is None else self._max // 16
        least = SEGMENT_BYTES_MIN if self._max is None else min(SEGMENT_BYTES_MIN, self._max)
        self._segment_bytes = max(least, min(segment_bytes, bound))
        self._segments: dict[int, _Segment] = {}
        """By id, oldest first."""
        self._newest: _Segment | None = None
        self._next_id = 1
        self._mapped = 0
        self._count = 0
        self._table = _Table(_TABLE_MIN)

    # ------------------------------------------------------------------ reading

    def __len__(self) -> int:
        return self._count

    @property
    def mapped_bytes(self) -> int:
        """Bytes of segments mapped now."""
        return self._mapped

    @property
    def table_bytes(self) -> int:
        return (self._table.mask + 1) * 16

    def get(self, key: str) -> bytes | None:
        found = self._lookup(key)
        return None if found is None else found[1]

    def take(self, key: str) -> bytes | None:
        """``get`` and ``pop`` in one lookup."""
        found = self._lookup(key)
        if found is None:
            return None
        self._remove_at(found[0])
        return found[1]

    def _lookup(self, key: str) -> tuple[int, bytes] | None:
        """(slot, value) of ``key``'s entry, or None."""
        if not self._count:
            return None
        slot = self._find(encode_key(key), hash(key))
        if slot < 0:
            return None
        pos = self._table.positions[slot]
        mem = self._segments[pos >> _POS_BITS].mem
        off = pos & _OFFSET_MASK
        size, klen = _HEAD.unpack_from(mem, off)[:2]
        return slot, mem[off + _HEAD.size + klen:off + size]

    def __contains__(self, key: str) -> bool:
        return bool(self._count) and self._find(encode_key(key), hash(key)) >= 0

    def oldest(self) -> tuple[str, bytes] | None:
        """The entry written longest ago, or None (amortised O(1))."""
        for seg in self._segments.values():
            mem, off = seg.mem, seg.first
            while off < seg.used:
                size, klen, dead = _HEAD.unpack_from(mem, off)
                if not dead:
                    seg.first = off
                    start = off + _HEAD.size
                    return (mem[start:start + klen].decode("utf-8", "surrogatepass"),
                            mem[start + klen:off + size])
                off += size
            seg.first = off
        return None

    def items(self) -> Iterator[tuple[str, bytes]]:
        """Every entry, oldest write first, as of the call (a list made up front, so the
        map may change while the caller walks it)."""
        out = [(key.decode("utf-8", "surrogatepass"), value)
               for seg in list(self._segments.values())
               for _, key, value in self._records(seg)]
        return iter(out)

    def keys_where(self, keep: Callable[[bytes], bool]) -> list[str]:
        """The keys whose value ``keep`` is true of, oldest write first. Only those keys
        become objects: ``items`` makes one per entry, a burst of small objects as large
        as the map that, on a busy node, left allocator arenas behind (docs/gc.md)."""
        out = []
        for seg in list(self._segments.values()):
            mem, off = seg.mem, seg.first
            while off < seg.used:
                size, klen, dead = _HEAD.unpack_from(mem, off)
                start = off + _HEAD.size
                if not dead and keep(mem[start + klen:off + size]):
                    out.append(mem[start:start + klen].decode("utf-8", "surrogatepass"))
                off += size
        return out

    def keys(self) -> list[str]:
        return [key for key, _ in self.items()]

    def _find(self, kb: bytes, h: int) -> int:
        """The slot of ``kb``'s entry, or -1."""
        table = self._table
        positions, hashes, mask = table.positions, table.hashes, table.mask
        i = h & mask
        while True:
            pos = positions[i]
            if pos == _EMPTY:
                return -1
            if pos > 0 and hashes[i] == h:
                mem = self._segments[pos >> _POS_BITS].mem
                off = pos & _OFFSET_MASK
                if _KEY_BYTES.unpack_from(mem, off + _KEY_BYTES_AT)[0] == len(kb):
                    start = off + _HEAD.size
                    if mem[start:start + len(kb)] == kb:
                        return i
            i = (i + 1) & mask

    def _records(self, seg: _Segment) -> list[tuple[int, bytes, bytes]]:
        """(position, key bytes, value) of each live record of ``seg``."""
        out, off, mem = [], 0, seg.mem
        while off < seg.used:
            size, klen, dead = _HEAD.unpack_from(mem, off)
            if not dead:
                start = off + _HEAD.size
                out.append(((seg.id << _POS_BITS) | off, mem[start:start + klen],
                            mem[start + klen:off + size]))
            off += size
        return out

    # ------------------------------------------------------------------ writing

    def put(self, key: str, value: bytes) -> bool:
        """Make ``value`` the entry of ``key``, as its newest; False when it was not
        stored (larger than the budget), and then any older entry of ``key`` is gone
        too."""
        kb = encode_key(key)
        h = hash(key)
        slot = self._find(kb, h) if self._count else -1
        if slot >= 0:  # the old record dies; its slot is reused (nothing below rebuilds
            positions = self._table.positions  # the table, and eviction only deletes)
            old = positions[slot]
            positions[slot] = _DELETED
            self._count -= 1
            self._dead(old)
        pos = self._append(b"".join((_HEAD.pack(_HEAD.size + len(kb) + len(value), len(kb),
                                                0), kb, value)))
        if not pos:
            return False
        if slot >= 0:
            self._table.positions[slot] = pos
        else:
            self._insert(h, pos)
        return True

    def update(self, key: str, value: bytes) -> bool:
        """``put``, but a value of the same length as the one there is written over it in
        place: the entry keeps its place in the order, and nothing is appended."""
        if self._count:
            kb = encode_key(key)
            slot = self._find(kb, hash(key))
            if slot >= 0:
                pos = self._table.positions[slot]
                mem = self._segments[pos >> _POS_BITS].mem
                off = pos & _OFFSET_MASK
                size, klen = _HEAD.unpack_from(mem, off)[:2]
                start = off + _HEAD.size + klen
                if off + size - start == len(value):
                    mem[start:off + size] = value
                    return True
        return self.put(key, value)

    def pop(self, key: str) -> bool:
        """Forget ``key``'s entry; whether there was one."""
        if not self._count:
            return False
        return self._remove(encode_key(key), hash(key))

    def clear(self) -> None:
        for seg in self._segments.values():
            seg.mem.close()
        self._segments.clear()
        self._newest = None
        self._mapped = self._count = 0
        self._table.close()
        self._table = _Table(_TABLE_MIN)

    def _remove(self, kb: bytes, h: int) -> bool:
        if not self._count:
            return False
        slot = self._find(kb, h)
        if slot < 0:
            return False
        self._remove_at(slot)
        return True

    def _remove_at(self, slot: int) -> None:
        pos = self._table.positions[slot]
        self._table.positions[slot] = _DELETED
        self._count -= 1
        self._dead(pos)
        if self._count * 8 < self._table.mask + 1 and self._table.mask + 1 > _TABLE_MIN:
            self._rebuild()

    def _dead(self, pos: int) -> None:
        """The record at ``pos`` is no longer an entry."""
        seg = self._segments[pos >> _POS_BITS]
        off = pos & _OFFSET_MASK
        seg.mem[off + _DEAD_AT] = 1
        seg.live -= _RECORD_BYTES.unpack_from(seg.mem, off)[0]
        if seg is self._newest:
            if seg.live == 0:  # start it again from the beginning rather than unmap it
                seg.used = seg.first = 0
                if _MADV_DONTNEED is not None:
                    seg.mem.madvise(_MADV_DONTNEED)
        elif seg.live == 0 or (self._compact and seg.live * _RECLAIM_FRACTION < seg.used):
            self._retire(seg)

    def _retire(self, seg: _Segment) -> None:
        """Unmap ``seg``, mostly dead, its live records (if any) copied to the newest."""
        if seg.live == 0:
            self._unmap(seg)
            return
        mem = seg.mem
        moved = [(self._slot_of(kb, pos),
                  mem[pos & _OFFSET_MASK:(pos & _OFFSET_MASK) + _HEAD.size + len(kb)
                      + len(value)])
                 for pos, kb, value in self._records(seg)]
        self._unmap(seg)
        for slot, record in moved:
            self._count -= 1
            pos = self._append(record)
            self._table.positions[slot] = pos if pos else _DELETED

    def _append(self, record: bytes) -> int:
        """Write ``record`` into the newest segment (a new one if it does not fit there);
        its position, or 0 when the budget has no room for it."""
        n = len(record)
        seg = self._newest
        if seg is not None and seg.used + n > seg.size and (seg.live == 0 or (
                self._compact and seg.live * _RECLAIM_FRACTION < seg.used)):
            self._retire(seg)  # as _dead would have, had it not been the newest; its
            seg = self._newest  # live records (if any) went to a new newest
        if seg is None or seg.used + n > seg.size:
            seg = self._new_segment(max(self._segment_bytes, n))
            if seg is None:
                return 0
        off = seg.used
        seg.mem[off:off + n] = record
        seg.used += n
        seg.live += n
        self._count += 1
        return (seg.id << _POS_BITS) | off

    def _new_segment(self, size: int) -> _Segment | None:
        if self._max is not None:
            if size > self._max:
                return None
            while self._segments and self._mapped + size > self._max:
                self._evict(next(iter(self._segments.values())))
        while self._next_id in self._segments:
            self._next_id = self._next_id % _SEGMENT_IDS + 1
        seg = _Segment(self._next_id, size)
        self._next_id = self._next_id % _SEGMENT_IDS + 1
        self._segments[seg.id] = seg
        self._mapped += size
        self._newest = seg
        return seg

    def _slot_of(self, kb: bytes, pos: int) -> int:
        table = self._table
        i = hash(kb.decode("utf-8", "surrogatepass")) & table.mask
        while table.positions[i] != pos:
            i = (i + 1) & table.mask
        return i

    def _evict(self, seg: _Segment) -> None:
        """Drop the oldest segment and every entry still in it."""
        for pos, kb, _ in self._records(seg):
            self._table.positions[self._slot_of(kb, pos)] = _DELETED
            self._count -= 1
        self._unmap(seg)

    def _unmap(self, seg: _Segment) -> None:
        del self._segments[seg.id]
        self._mapped -= seg.size
        seg.mem.close()
        if seg is self._newest:
            self._newest = None

    def _insert(self, h: int, pos: int) -> None:
        table = self._table
        if (table.used + 1) * 3 > (table.mask + 1) * 2:
            self._rebuild()
            table = self._table
        positions, mask = table.positions, table.mask
        i = h & mask
        while positions[i] > 0:
            i = (i + 1) & mask
        if positions[i] == _EMPTY:
            table.used += 1
        positions[i] = pos
        table.hashes[i] = h

    def _rebuild(self) -> None:
        """A table sized for the entries now (at most half full), without deleted slots:
        it grows as entries come, and shrinks, its memory unmapped, as they go. A loop in
        Python over the old table, which the event loop waits for: 0.37 s for 700,000
        entries here (once per doubling, and when deleted slots fill a sixth)."""
        old = self._table
        slots = _TABLE_MIN
        while slots < self._count * 2:
            slots *= 2
        new = _Table(slots)
        positions, hashes, mask = new.positions, new.hashes, new.mask
        for i in range(old.mask + 1):
            pos = old.positions[i]
            if pos > 0:
                h = old.hashes[i]
                j = h & mask
                while positions[j] != _EMPTY:
                    j = (j + 1) & mask
                positions[j] = pos
                hashes[j] = h
                new.used += 1
        old.close()
        self._table = new
