"""The token file and its store (paxoskv/auth.py): parsing, hashing, the role and prefix
rules, and reloading without a restart.

Method: files in tmp_path, a fake clock for the once-a-second check.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from paxoskv.auth import (
    UNLIMITED,
    Principal,
    Rate,
    TokenFileError,
    TokenStore,
    hash_token,
    new_token,
    parse_rate,
    parse_token_file,
    token_entry,
)

DIGEST = "a" * 64


def write(path: Path, tokens: list[dict[str, Any]]) -> None:
    """Replace atomically, as `paxoskv token new --file` and Kubernetes Secrets do."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"tokens": tokens}))
    os.replace(tmp, path)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_hash_is_sha256_hex_and_tokens_are_long_and_random() -> None:
    assert hash_token("abc") == hashlib.sha256(b"abc").hexdigest()
    a, b = new_token(), new_token()
    assert a != b
    assert len(a) >= 43  # 32 random bytes, base64url


def test_a_valid_file_parses() -> None:
    tokens = parse_token_file(json.dumps({"tokens": [
        {"name": "ops", "role": "admin", "sha256": DIGEST},
        {"name": "app", "role": "write", "sha256": "b" * 64, "prefixes": ["app/", "x"]},
    ]}).encode())
    assert tokens == (Principal("ops", "admin", DIGEST),
                      Principal("app", "write", "b" * 64, ("app/", "x")))
    assert parse_token_file(b'{"tokens": []}') == ()


@pytest.mark.parametrize(("doc", "message"), [
    (b"not json", "not valid JSON"),
    (b"[]", '{"tokens": [...]}'),
    (b'{"tokens": {}}', '{"tokens": [...]}'),
    (b'{"tokens": [], "extra": 1}', "unknown top-level"),
    (b'{"tokens": ["x"]}', "tokens[0]: expected an object"),
    (b'{"tokens": [{"role": "read", "sha256": "' + b"a" * 64 + b'"}]}', "name must be"),
    (b'{"tokens": [{"name": "n", "role": "root", "sha256": "' + b"a" * 64 + b'"}]}',
     "role must be one of"),
    (b'{"tokens": [{"name": "n", "role": "read", "sha256": "abc"}]}', "64 lowercase hex"),
    (b'{"tokens": [{"name": "n", "role": "read", "sha256": "' + b"A" * 64 + b'"}]}',
     "64 lowercase hex"),
    (b'{"tokens": [{"name": "n", "role": "read", "token": "plain"}]}', "unknown field"),
    (b'{"tokens": [{"name": "n", "role": "read", "sha256": "' + b"a" * 64
     + b'", "prefixes": []}]}', "prefixes must be a non-empty list"),
    (b'{"tokens": [{"name": "n", "role": "read", "sha256": "' + b"a" * 64
     + b'", "prefixes": "app/"}]}', "prefixes must be a non-empty list"),
    (b'{"tokens": [{"name": "n", "role": "read", "sha256": "' + b"a" * 64 + b'"}, '
     b'{"name": "n", "role": "read", "sha256": "' + b"b" * 64 + b'"}]}', "used twice"),
    (b'{"tokens": [{"name": "n", "role": "read", "sha256": "' + b"a" * 64 + b'"}, '
     b'{"name": "m", "role": "read", "sha256": "' + b"a" * 64 + b'"}]}', "same sha256"),
])
def test_a_bad_file_is_a_clear_error(doc: bytes, message: str) -> None:
    """Goal: each mistake is named (and where), never a traceback or a silent default."""
    with pytest.raises(TokenFileError, match=None) as info:
        parse_token_file(doc, "tokens.json")
    assert message in str(info.value)
    assert str(info.value).startswith("tokens.json")


def test_an_unreadable_file_is_an_error_at_start(tmp_path: Path) -> None:
    with pytest.raises(TokenFileError, match="cannot read the token file"):
        TokenStore(tmp_path / "missing.json")
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (1024 * 1024 + 1))
    with pytest.raises(TokenFileError, match="larger than"):
        TokenStore(big)


def test_token_entry_round_trips_through_the_parser() -> None:
    token = new_token()
    entry = token_entry("app", "write", token, ["app/"])
    (parsed,) = parse_token_file(json.dumps({"tokens": [entry]}).encode())
    assert parsed.sha256 == hash_token(token) and parsed.prefixes == ("app/",)
    assert token not in json.dumps(entry)  # only the hash is stored


@pytest.mark.parametrize(("role", "needed", "ok"), [
    ("read", "read", True), ("read", "write", False), ("read", "admin", False),
    ("write", "read", True), ("write", "write", True), ("write", "admin", False),
    ("admin", "read", True), ("admin", "write", True), ("admin", "admin", True),
])
def test_roles_include_the_lower_ones(role: Any, needed: Any, ok: bool) -> None:
    assert Principal("t", role, DIGEST).has_role(needed) is ok


@pytest.mark.parametrize(("prefixes", "key", "touch", "listing"), [
    (None, "anything", True, True),
    (None, "", True, True),
    (("app/",), "app/x", True, True),
    (("app/",), "app/", True, True),
    (("app/",), "app", False, False),
    (("app/",), "other/x", False, False),
    (("app/",), "", False, False),  # listing everything is outside app/
    (("a/", "b/"), "b/1", True, True),
])
def test_prefixes_bound_keys_and_listings(prefixes: tuple[str, ...] | None, key: str,
                                          touch: bool, listing: bool) -> None:
    p = Principal("t", "write", DIGEST, prefixes)
    assert p.may_touch(key) is touch
    assert p.may_list(key) is listing


def test_rotation_takes_effect_without_a_restart(tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Goal: a new file is picked up within a second; the revoked token is unknown at once;
    a broken file keeps the previous set and logs one error."""
    old, new = new_token(), new_token()
    path = tmp_path / "tokens.json"
    write(path, [token_entry("app", "write", old)])
    clock = Clock()
    store = TokenStore(path, clock=clock)
    assert store.authenticate(old) is not None
    assert store.authenticate(new) is None
    write(path, [token_entry("app", "write", new)])
    clock.now += 0.5  # not re-checked yet: at most once a second
    assert store.authenticate(old) is not None
    clock.now += 0.6
    assert store.authenticate(old) is None
    principal = store.authenticate(new)
    assert principal is not None and principal.name == "app"
    caplog.set_level(logging.ERROR, "paxoskv.auth")
    path.write_text("{broken")
    for _ in range(3):
        clock.now += 1.1
        assert store.authenticate(new) is not None
    assert len([r for r in caplog.records if "keeping the previous" in r.message]) == 1
    path.unlink()
    clock.now += 1.1
    assert store.authenticate(new) is not None  # a vanished file opens nothing, locks no one
    write(path, [])
    clock.now += 1.1
    assert store.authenticate(new) is None


# ------------------------------------------------------------------ per-token rate limits

def entry(name: str, token: str, rate: Any = None) -> dict[str, Any]:
    e = token_entry(name, "write", token)
    if rate is not None:
        e["rate"] = rate
    return e


def admitted(store: TokenStore, token: str, count: int) -> list[float]:
    """``count`` requests at the same instant: 0.0 for each one admitted, else the wait."""
    principal = store.authenticate(token)
    assert principal is not None
    return [store.admit(principal) for _ in range(count)]


def test_rates_in_the_file_parse() -> None:
    (a, b, c, d) = parse_token_file(json.dumps({"tokens": [
        {"name": "a", "role": "write", "sha256": "a" * 64,
         "rate": {"per_second": 50, "burst": 100}},
        {"name": "b", "role": "write", "sha256": "b" * 64, "rate": {"per_second": 2.5}},
        {"name": "c", "role": "admin", "sha256": "c" * 64, "rate": "unlimited"},
        {"name": "d", "role": "read", "sha256": "d" * 64},
    ]}).encode())
    assert a.rate == Rate(50.0, 100)
    assert b.rate == Rate(2.5, 3)  # burst: one second's worth, rounded up
    assert c.rate == UNLIMITED and d.rate is None


@pytest.mark.parametrize(("rate", "message"), [
    ({"per_second": 0}, "per_second must be a number"),
    ({"per_second": -1, "burst": 5}, "per_second must be a number"),
    ({"per_second": "50"}, "per_second must be a number"),
    ({"per_second": True}, "per_second must be a number"),
    ({"per_second": 1e9}, "per_second must be a number"),
    ({"per_second": 10, "burst": 0}, "burst must be a whole number"),
    ({"per_second": 10, "burst": 2.5}, "burst must be a whole number"),
    ({"burst": 10}, 'rate must be {"per_second": N'),
    ({"per_second": 10, "refill": 1}, 'rate must be {"per_second": N'),
    (50, 'rate must be {"per_second": N'),
    ("fast", 'rate must be {"per_second": N'),
])
def test_a_bad_rate_in_the_file_is_a_clear_error(rate: Any, message: str) -> None:
    """Goal: a mistyped rate names the token and what is wrong, like every other mistake
    in the file; it never silently means "no limit"."""
    doc = json.dumps({"tokens": [{"name": "app", "role": "write", "sha256": DIGEST,
                                  "rate": rate}]}).encode()
    with pytest.raises(TokenFileError) as info:
        parse_token_file(doc, "tokens.json")
    assert str(info.value).startswith("tokens.json: tokens[0] (app): rate")
    assert message in str(info.value)


@pytest.mark.parametrize(("text", "rate"), [
    ("50", Rate(50.0, 50)), ("50/100", Rate(50.0, 100)), ("0.5", Rate(0.5, 1)),
    (" 2.5/1 ", Rate(2.5, 1)),
])
def test_the_rate_flag_parses(text: str, rate: Rate) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["", "0", "0/5", "5/0", "-1", "1e3", "50/", "/5", "5/2.5",
                                  "fast", "5/100/2"])
def test_a_bad_rate_flag_is_a_clear_error(text: str) -> None:
    with pytest.raises(ValueError, match="rate"):
        parse_rate(text)


def test_token_entry_writes_a_rate_the_parser_reads_back() -> None:
    token = new_token()
    for rate in (Rate(50.0, 100), Rate(2.5, 3), UNLIMITED):
        e = token_entry("app", "write", token, rate=rate)
        (parsed,) = parse_token_file(json.dumps({"tokens": [e]}).encode())
        assert parsed.rate == rate
    assert token_entry("app", "write", token, rate=Rate(50.0, 100))["rate"] == {
        "per_second": 50, "burst": 100}


def test_a_burst_is_admitted_then_refused_until_the_bucket_refills(tmp_path: Path) -> None:
    """Goal: a full bucket admits ``burst`` requests at once and refuses the next, saying
    how long to wait; time refills it at ``per_second`` and never beyond ``burst``."""
    path = tmp_path / "tokens.json"
    write(path, [entry("app", "t-app", {"per_second": 10, "burst": 5})])
    clock = Clock()
    store = TokenStore(path, clock=clock)
    assert admitted(store, "t-app", 5) == [0.0] * 5
    (wait,) = admitted(store, "t-app", 1)
    assert wait == pytest.approx(0.1)
    clock.now += 0.25  # 2.5 requests' worth
    assert [w == 0 for w in admitted(store, "t-app", 3)] == [True, True, False]
    clock.now += 60  # an idle minute refills to the burst, not to 600
    assert [w == 0 for w in admitted(store, "t-app", 6)] == [True] * 5 + [False]


def test_tokens_have_buckets_of_their_own_and_the_default_applies_to_the_rest(
        tmp_path: Path) -> None:
    """Goal: one token spending its rate does not slow another; a token without a rate
    gets the server's default; "unlimited" is exempt from it."""
    path = tmp_path / "tokens.json"
    write(path, [entry("a", "t-a"), entry("b", "t-b"),
                 entry("own", "t-own", {"per_second": 1, "burst": 3}),
                 entry("ops", "t-ops", "unlimited")])
    clock = Clock()
    store = TokenStore(path, clock=clock, default_rate=Rate(1.0, 2))
    assert [w == 0 for w in admitted(store, "t-a", 3)] == [True, True, False]
    assert [w == 0 for w in admitted(store, "t-b", 3)] == [True, True, False]
    assert [w == 0 for w in admitted(store, "t-own", 4)] == [True, True, True, False]
    assert admitted(store, "t-ops", 1000) == [0.0] * 1000
    no_default = TokenStore(path, clock=clock)
    assert admitted(no_default, "t-a", 1000) == [0.0] * 1000


def test_a_reload_keeps_the_buckets_of_remaining_tokens_and_drops_removed_ones(
        tmp_path: Path) -> None:
    """Goal: editing the file refills nobody (a drained token stays drained), a removed
    token's bucket is freed, so buckets never outnumber the file's tokens, and a lowered
    rate takes effect on what is left of the bucket."""
    path = tmp_path / "tokens.json"
    write(path, [entry("a", "t-a", {"per_second": 1, "burst": 2}),
                 entry("b", "t-b", {"per_second": 1, "burst": 2})])
    clock = Clock()
    store = TokenStore(path, clock=clock)
    admitted(store, "t-a", 2)
    admitted(store, "t-b", 1)
    assert len(store._buckets) == 2
    write(path, [entry("a", "t-a", {"per_second": 1, "burst": 2}),
                 entry("c", "t-c", {"per_second": 1, "burst": 2})])
    clock.now += 1.1  # the file is re-read; a's bucket refilled by 1.1 requests since
    assert [w == 0 for w in admitted(store, "t-a", 2)] == [True, False]
    assert store.authenticate("t-b") is None
    assert len(store._buckets) == 1  # b's is gone; c has none until it is used
    write(path, [entry("a", "t-a", {"per_second": 100, "burst": 1})])
    clock.now += 1.1  # a's bucket: capped to the new burst, then refilled at the new pace
    assert [w == 0 for w in admitted(store, "t-a", 2)] == [True, False]
    clock.now += 0.01
    assert [w == 0 for w in admitted(store, "t-a", 2)] == [True, False]
