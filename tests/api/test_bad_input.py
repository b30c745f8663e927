"""Bad input is a 4xx, never a 500 (regressions: each of these answered 500 with a traceback).

Method: the in-process app of test_app.py; requests whose headers must carry bytes that are
not UTF-8 go over a raw socket, since HTTP client libraries refuse to send them.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from test_app import with_client

from paxoskv.transport.codec import check_peer_auth


async def raw_status(port: int, request: bytes) -> int:
    """Send ``request`` as is; the status code of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n"), 10)
    finally:
        writer.close()
    return int(head.split(b" ")[1])


def _request(method: bytes, path: bytes, headers: list[bytes], body: bytes = b"") -> bytes:
    lines = [method + b" " + path + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close",
             b"Content-Length: " + str(len(body)).encode(), *headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


@pytest.mark.parametrize("auth", [b"Bearer \xff", b"Bearer secret\xff", b"Bearer \xc3(",
                                  b"Bearer \xed\xa0\x80", b"\xff\xfe", b"Bearer "])
def test_peer_auth_with_bytes_that_are_not_utf8_is_401(auth: bytes) -> None:
    """Goal: an Authorization header that is not UTF-8 is refused (401), on every peer
    endpoint, instead of raising UnicodeEncodeError (was 500)."""
    async def t(c: TestClient[Any, Any]) -> None:
        port = c.server.port
        assert port is not None
        for method, path, body in ((b"GET", b"/internal/keys", b""),
                                   (b"POST", b"/internal/batch", b'{"m": []}'),
                                   (b"POST", b"/internal/hello", b"{}")):
            status = await raw_status(port, _request(method, path, [b"Authorization: " + auth],
                                                     body))
            assert status == 401, (auth, path)
        # and the right secret still passes
        status = await raw_status(port, _request(b"GET", b"/internal/keys",
                                                 [b"Authorization: Bearer secret"]))
        assert status == 200
    with_client(t)


def test_check_peer_auth_never_raises() -> None:
    """Goal: the check itself takes any str (surrogates included) and only says yes to the
    exact secret."""
    assert check_peer_auth("Bearer s3cret", "s3cret")
    for header in ("Bearer \udcff", "Bearer \ud800", "Bearer s3cret\udcff", "Bearer s3cre",
                   "bearer s3cret", "", None, "Bearer ", "Bearer s3cret "):
        assert not check_peer_auth(header, "s3cret"), header


@pytest.mark.parametrize("value", ["\u00b2", '"\u00b2"', 'W/"\u00b2"', "\u0661",
                                   '"\u0661\u0662"', "\U0001d7d9", '"1\u00b2"'])
def test_if_match_with_non_ascii_digits_is_400(value: str) -> None:
    """Goal: a version is ASCII digits. U+00B2 (str.isdigit says yes, int() says no) was a
    500; other Unicode decimal digits (Arabic-Indic U+0661, mathematical U+1D7D9) were
    silently taken as a version. Each is a 400 bad_header on PUT and DELETE."""
    async def t(c: TestClient[Any, Any]) -> None:
        assert (await c.put("/v1/kv/k", data=b"v")).status == 200
        r = await c.put("/v1/kv/k", data=b"x", headers={"If-Match": value})
        assert r.status == 400, value
        assert (await r.json())["error"] == "bad_header"
        r = await c.delete("/v1/kv/k", headers={"If-Match": value})
        assert r.status == 400, value
        assert (await c.get("/v1/kv/k")).status == 200  # nothing was applied
    with_client(t)


def test_if_match_raw_bytes_that_are_not_utf8_is_400() -> None:
    """Goal: an If-Match header carrying raw bytes (superscript two in UTF-8, a lone 0xff)
    over the wire is a 400."""
    async def t(c: TestClient[Any, Any]) -> None:
        port = c.server.port
        assert port is not None
        for value in (b'"\xc2\xb2"', b'"\xff"', b"\xb2"):
            status = await raw_status(port, _request(b"PUT", b"/v1/kv/k",
                                                     [b"If-Match: " + value], b"x"))
            assert status == 400, value
    with_client(t)


@pytest.mark.parametrize("limit", ["\u00b2", "1\u00b2", "\u0661\u0660", "\U0001d7d9", "", "-1",
                                   "0", "10001", " 5"])
def test_list_limit_with_non_ascii_digits_is_400(limit: str) -> None:
    """Goal: ?limit= must be ASCII digits within 1..10000; anything else is 400 bad_request,
    on the client list call and on the peer key listing (was 500 for U+00B2, and Unicode
    decimal digits such as U+0661 U+0660 were accepted)."""
    async def t(c: TestClient[Any, Any]) -> None:
        r = await c.get("/v1/kv", params={"limit": limit})
        assert r.status == 400, limit
        assert (await r.json())["error"] == "bad_request"
        r = await c.get("/internal/keys", params={"limit": limit},
                        headers={"Authorization": "Bearer secret"})
        assert r.status in (200, 400), limit  # the peer listing has no upper bound
        if not limit.isascii():
            assert r.status == 400, limit
        assert (await c.get("/v1/kv", params={"limit": "5"})).status == 200
    with_client(t)


def test_expect_header_that_is_not_utf8_is_417_not_500() -> None:
    """Goal: an Expect header other than 100-continue is a JSON 417 on every route; aiohttp's
    default handler answered 500 when the value was not UTF-8 (found by test_fuzz.py)."""
    async def t(c: TestClient[Any, Any]) -> None:
        port = c.server.port
        assert port is not None
        for method, path in ((b"GET", b"/v1/kv/k"), (b"PUT", b"/v1/kv/k"), (b"GET", b"/v1/kv"),
                             (b"POST", b"/internal/batch"), (b"GET", b"/healthz")):
            for value in (b"\x80", b"\xff\xfe", b"nonsense"):
                status = await raw_status(port, _request(method, path, [b"Expect: " + value]))
                assert status == 417, (method, path, value)
        r = await c.put("/v1/kv/k", data=b"v", headers={"Expect": "100-continue"})
        assert r.status == 200
    with_client(t)


def test_expect_100_continue_for_a_value_too_large_is_413_not_an_invitation() -> None:
    """Goal: a PUT announcing a body larger than a value with Expect: 100-continue gets 413
    at once, not "100 Continue" (which would invite the client to send it all)."""
    async def t(c: TestClient[Any, Any]) -> None:
        port = c.server.port
        assert port is not None
        big = (b"PUT /v1/kv/k HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
               b"Content-Length: 100000000\r\n\r\n")
        assert await raw_status(port, big) == 413
        r = await c.put("/v1/kv/k", data=b"v", headers={"Expect": "100-continue"})
        assert r.status == 200
    with_client(t)
