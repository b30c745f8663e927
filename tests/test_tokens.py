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
    Principal,
    TokenFileError,
    TokenStore,
    hash_token,
    new_token,
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
