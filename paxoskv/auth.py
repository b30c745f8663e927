"""Client bearer tokens: the token file, its reloading, and the role and prefix checks.

The file holds only SHA-256 digests of the tokens, so reading it (a backup, a Secret shown
by ``kubectl get -o yaml``) does not give away a credential. A fast hash is enough here:
tokens are 256-bit random strings made by ``paxoskv token new``, not passwords a person
chose, so there is no dictionary to try and no point in a slow, salted password hash; it
would only cost CPU on every request.

File format (JSON)::

    {"tokens": [
      {"name": "ops", "role": "admin", "sha256": "<64 hex digits>", "rate": "unlimited"},
      {"name": "app", "role": "write", "sha256": "...", "prefixes": ["app/"],
       "rate": {"per_second": 50, "burst": 100}}
    ]}

``rate`` (optional) is the token's request rate on each node: a token bucket refilled at
``per_second`` (> 0) holding at most ``burst`` requests (a whole number >= 1; default one
second's worth, ``ceil(per_second)``); ``"unlimited"`` exempts the token; left out, the
server's ``--token-rate-limit`` applies (none by default). Beyond it a request is answered
429 with ``Retry-After`` and nothing runs. Buckets live in each node's memory, one per token
of the file, so a client spread over N nodes gets up to N times its rate.

The file is checked at most once a second, on a request: an edit (a rotation, a revocation)
takes effect without a restart, and a file that no longer parses keeps the previous set
(with an error in the log), so a typo never opens the door nor locks every client out.
A reload keeps the bucket of every token still in the file (a drained bucket does not
refill by editing the file) and drops those of removed tokens.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

__all__ = ["ROLES", "UNLIMITED", "Principal", "Rate", "Role", "TokenFileError", "TokenStore",
           "hash_token", "new_token", "parse_rate", "parse_token_file", "token_entry"]

log = logging.getLogger(__name__)

Role = Literal["read", "write", "admin"]
ROLES: dict[str, int] = {"read": 1, "write": 2, "admin": 3}
"""Each role includes the ones below it: admin ⊃ write ⊃ read."""

FILE_BYTES_MAX = 1024 * 1024
"""A token file larger than this is refused: it is surely not a token file."""
_HEX = frozenset("0123456789abcdef")
_FIELDS = frozenset({"name", "role", "sha256", "prefixes", "rate"})
_RATE_FIELDS = frozenset({"per_second", "burst"})
RATE_MAX = 1_000_000.0
"""Larger rates and bursts are refused as typos: a node serves far fewer requests a second."""


class TokenFileError(Exception):
    """The token file cannot be read or does not parse; the message names the problem."""


@dataclass(frozen=True, slots=True)
class Rate:
    """A token bucket's shape: refilled at ``per_second``, holding at most ``burst``."""

    per_second: float
    burst: int

    def __str__(self) -> str:
        return f"{self.per_second:g}/s (burst {self.burst})"


UNLIMITED: Literal["unlimited"] = "unlimited"
"""A token's ``rate`` that exempts it from ``--token-rate-limit``."""


def _rate(per_second: Any, burst: Any) -> Rate:
    """A checked ``Rate``; ``ValueError`` names what is wrong. ``burst`` None: one second's
    worth of requests, so a client at exactly its rate never sees a 429."""
    if (isinstance(per_second, bool) or not isinstance(per_second, int | float)
            or not 0 < per_second <= RATE_MAX):
        raise ValueError(f"per_second must be a number within (0, {RATE_MAX:g}] "
                         f"(got {per_second!r})")
    if burst is None:
        burst = max(1, math.ceil(per_second))
    if isinstance(burst, bool) or not isinstance(burst, int) or not 1 <= burst <= RATE_MAX:
        raise ValueError(f"burst must be a whole number within 1..{RATE_MAX:g} (got {burst!r})")
    return Rate(float(per_second), burst)


_RATE_TEXT = re.compile(r"([0-9]+(?:\.[0-9]+)?)(?:/([0-9]+))?")


def parse_rate(text: str) -> Rate:
    """``R`` or ``R/BURST`` (``--token-rate-limit``, ``paxoskv token new --rate``):
    R requests a second, BURST at once (default ceil(R))."""
    match = _RATE_TEXT.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"rate {text!r} must be R or R/BURST: R requests a second (> 0), "
                         "BURST a whole number of requests at once (e.g. 50/100)")
    try:
        return _rate(float(match[1]), int(match[2]) if match[2] else None)
    except ValueError as exc:
        raise ValueError(f"rate {text!r}: {exc}") from None


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a valid token belongs to and what it may do."""

    name: str
    role: Role
    sha256: str
    prefixes: tuple[str, ...] | None = None
    """Key prefixes the token may touch; None means every key."""
    rate: Rate | Literal["unlimited"] | None = None
    """Its own rate limit; None: the server's default (``--token-rate-limit``)."""

    def has_role(self, needed: Role) -> bool:
        return ROLES[self.role] >= ROLES[needed]

    def may_touch(self, key: str) -> bool:
        return self.prefixes is None or any(key.startswith(p) for p in self.prefixes)

    def may_list(self, prefix: str) -> bool:
        """A listing returns keys starting with ``prefix``: allowed only when every such key
        is inside one allowed prefix, i.e. ``prefix`` itself starts with one."""
        return self.prefixes is None or any(prefix.startswith(p) for p in self.prefixes)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_entry(name: str, role: str, token: str,
                prefixes: Sequence[str] | None = None,
                rate: Rate | Literal["unlimited"] | None = None) -> dict[str, Any]:
    """The file entry for ``token``, validated as the server would."""
    entry: dict[str, Any] = {"name": name, "role": role, "sha256": hash_token(token)}
    if prefixes:
        entry["prefixes"] = list(prefixes)
    if isinstance(rate, Rate):
        per_second = int(rate.per_second) if rate.per_second.is_integer() else rate.per_second
        entry["rate"] = {"per_second": per_second, "burst": rate.burst}
    elif rate is not None:
        entry["rate"] = rate
    _parse_entry(entry, "new entry")
    return entry


def _parse_entry_rate(raw: Any, where: str) -> Rate | Literal["unlimited"] | None:
    if raw is None or raw == UNLIMITED:
        return raw  # type: ignore[no-any-return]
    if not isinstance(raw, dict) or "per_second" not in raw or set(raw) - _RATE_FIELDS:
        raise TokenFileError(f'{where}: rate must be {{"per_second": N, "burst": M}} (burst '
                             f'optional) or "unlimited" (got {orjson.dumps(raw).decode()})')
    try:
        return _rate(raw["per_second"], raw.get("burst"))
    except ValueError as exc:
        raise TokenFileError(f"{where}: rate: {exc}") from None


def _parse_entry(raw: Any, where: str) -> Principal:
    if not isinstance(raw, dict):
        raise TokenFileError(f"{where}: expected an object with name, role and sha256")
    unknown = set(raw) - _FIELDS
    if unknown:
        raise TokenFileError(f"{where}: unknown field(s) {sorted(unknown)} (allowed: "
                             f"{sorted(_FIELDS)})")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise TokenFileError(f"{where}: name must be a non-empty string")
    role = raw.get("role")
    if role not in ROLES:
        raise TokenFileError(f"{where} ({name}): role must be one of read, write, admin "
                             f"(got {role!r})")
    digest = raw.get("sha256")
    if not isinstance(digest, str) or len(digest) != 64 or not set(digest) <= _HEX:
        raise TokenFileError(f"{where} ({name}): sha256 must be 64 lowercase hex digits, the "
                             "SHA-256 of the token (paxoskv token new prints it)")
    prefixes = raw.get("prefixes")
    if prefixes is not None:
        if (not isinstance(prefixes, list) or not prefixes
                or not all(isinstance(p, str) and p for p in prefixes)):
            raise TokenFileError(f"{where} ({name}): prefixes must be a non-empty list of "
                                 "non-empty strings (leave it out for every key)")
        prefixes = tuple(prefixes)
    rate = _parse_entry_rate(raw.get("rate"), f"{where} ({name})")
    return Principal(name, role, digest, prefixes, rate)


def parse_token_file(data: bytes, source: str = "token file") -> tuple[Principal, ...]:
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise TokenFileError(f"{source}: not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("tokens"), list):
        raise TokenFileError(f'{source}: expected a JSON object {{"tokens": [...]}}')
    if set(doc) != {"tokens"}:
        raise TokenFileError(f"{source}: unknown top-level field(s) "
                             f"{sorted(set(doc) - {'tokens'})}")
    entries = tuple(_parse_entry(raw, f"{source}: tokens[{i}]")
                    for i, raw in enumerate(doc["tokens"]))
    names: set[str] = set()
    digests: set[str] = set()
    for e in entries:
        if e.name in names:
            raise TokenFileError(f"{source}: the name {e.name!r} is used twice (names "
                                 "identify tokens when revoking them)")
        if e.sha256 in digests:
            raise TokenFileError(f"{source}: token {e.name!r} has the same sha256 as another")
        names.add(e.name)
        digests.add(e.sha256)
    return entries


def read_token_file(path: Path) -> tuple[Principal, ...]:
    try:
        with path.open("rb") as f:
            data = f.read(FILE_BYTES_MAX + 1)
    except OSError as exc:
        raise TokenFileError(f"cannot read the token file {path}: {exc.strerror or exc}"
                             ) from None
    if len(data) > FILE_BYTES_MAX:
        raise TokenFileError(f"{path}: larger than {FILE_BYTES_MAX} bytes")
    return parse_token_file(data, str(path))


class _Bucket:
    """A token bucket: ``level`` requests may go now; it refills at the rate's pace."""

    __slots__ = ("level", "rate", "stamp")

    def __init__(self, rate: Rate, now: float) -> None:
        self.rate, self.level, self.stamp = rate, float(rate.burst), now

    def refill(self, now: float) -> None:
        rate = self.rate
        self.level = min(float(rate.burst),
                         self.level + max(0.0, now - self.stamp) * rate.per_second)
        self.stamp = now

    def take(self, now: float) -> float:
        """0 if a request may go (and counts it), else the seconds until one may."""
        self.refill(now)
        if self.level >= 1.0:
            self.level -= 1.0
            return 0.0
        return (1.0 - self.level) / self.rate.per_second


class TokenStore:
    """The current token set of one file, re-read when the file changes, and each
    token's rate-limit bucket on this node.

    Construction reads the file and raises ``TokenFileError``: a server must not start
    with a token file it cannot use. Later failures keep the last good set.
    """

    def __init__(self, path: Path, check_interval_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic,
                 default_rate: Rate | None = None) -> None:
        self.path = path
        self.default_rate = default_rate
        """The rate of tokens without one of their own (``--token-rate-limit``)."""
        self._interval = check_interval_s
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        """By token digest; only tokens of the current file, made on a token's first use."""
        self._stamp = self._stat()
        self._tokens = read_token_file(path)
        self._checked = clock()
        self._failed_stamp: tuple[int, int, int] | None = None
        log.info("auth: %d token(s) from %s", len(self._tokens), path)

    @property
    def tokens(self) -> tuple[Principal, ...]:
        return self._tokens

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def maybe_reload(self) -> None:
        now = self._clock()
        if now - self._checked < self._interval:
            return
        self._checked = now
        stamp = self._stat()
        if stamp == self._stamp:
            return
        try:
            tokens = read_token_file(self.path)
        except TokenFileError as exc:
            if stamp != self._failed_stamp:  # once per bad version, not once a second
                log.error("auth: keeping the previous %d token(s): %s", len(self._tokens), exc)
                self._failed_stamp = stamp
            return
        self._tokens, self._stamp, self._failed_stamp = tokens, stamp, None
        kept = {t.sha256 for t in tokens}
        self._buckets = {d: b for d, b in self._buckets.items() if d in kept}
        log.info("auth: reloaded %d token(s) from %s", len(tokens), self.path)

    def authenticate(self, token: str) -> Principal | None:
        self.maybe_reload()
        digest = hash_token(token)
        found = None
        # every entry is compared, in constant time each, so the answer's timing does not
        # say how much of a digest matched
        for entry in self._tokens:
            if hmac.compare_digest(entry.sha256, digest):
                found = entry
        return found

    def rate_of(self, principal: Principal) -> Rate | None:
        """The rate limit that applies to ``principal``; None: unlimited."""
        if principal.rate == UNLIMITED:
            return None
        return principal.rate or self.default_rate

    def admit(self, principal: Principal) -> float:
        """Count one request of ``principal`` against its rate: 0 if it may go, else the
        seconds until one may (answer 429 and run nothing)."""
        rate = self.rate_of(principal)
        if rate is None:
            return 0.0
        now = self._clock()
        bucket = self._buckets.get(principal.sha256)
        if bucket is None:
            bucket = self._buckets[principal.sha256] = _Bucket(rate, now)
        elif bucket.rate != rate:  # the file changed the token's rate: keep what is left
            bucket.refill(now)
            bucket.rate, bucket.level = rate, min(bucket.level, float(rate.burst))
        return bucket.take(now)
