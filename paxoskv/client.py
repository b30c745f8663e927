"""Python clients for the HTTP API: ``Client`` (sync, stdlib only) and ``AsyncClient``.

Both send ``Authorization: Bearer <token>`` when given ``token=``, or else when
``PAXOSKV_TOKEN`` is set, so a program written against an open cluster works against a
protected one by setting one variable. Likewise for TLS: an ``https://`` URL is verified
against ``ca_file=`` (else ``PAXOSKV_CACERT``, else the system's CAs), and ``cert_file=`` /
``key_file=`` present a client certificate where one is asked for.
"""

from __future__ import annotations

import http.client
import os
import ssl
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from paxoskv.tls import TlsError, TlsFiles, client_context

__all__ = ["AsyncClient", "Client", "ClientError", "Result"]


@dataclass(frozen=True, slots=True)
class Result:
    status: int
    body: bytes
    version: int | None
    headers: dict[str, str]

    def json(self) -> Any:
        return orjson.loads(self.body)


class ClientError(Exception):
    """The server could not be reached."""


def _version(etag: str | None) -> int | None:
    if etag is None:
        return None
    text = etag.strip().strip('"')
    return int(text) if text.isdigit() else None


def _path(key: str) -> str:
    return "/v1/kv/" + urllib.parse.quote(key, safe="/")


TOKEN_ENV = "PAXOSKV_TOKEN"


def _auth_headers(token: str | None) -> dict[str, str]:
    if token is None:
        token = os.environ.get(TOKEN_ENV) or None
    return {"Authorization": f"Bearer {token}"} if token else {}


CACERT_ENV = "PAXOSKV_CACERT"


def tls_context(ca_file: str | None = None, cert_file: str | None = None,
                key_file: str | None = None) -> ssl.SSLContext:
    """How a client verifies an https:// server (and, given a certificate, proves itself)."""
    ca_file = ca_file or os.environ.get(CACERT_ENV) or None
    own = TlsFiles(Path(cert_file), Path(key_file or cert_file)) if cert_file else None
    try:
        return client_context(own, Path(ca_file) if ca_file else None)
    except TlsError as exc:
        raise ClientError(f"TLS files: {exc}") from None


def _conditions(if_match: int | None, if_none_match: bool) -> dict[str, str]:
    headers: dict[str, str] = {}
    if if_match is not None:
        headers["If-Match"] = f'"{if_match}"'
    if if_none_match:
        headers["If-None-Match"] = "*"
    return headers


class Client:
    """A small synchronous client; one keep-alive connection, no dependencies."""

    def __init__(self, url: str, timeout_s: float = 10.0, token: str | None = None,
                 ca_file: str | None = None, cert_file: str | None = None,
                 key_file: str | None = None) -> None:
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ClientError(f"{url!r} is not an http:// or https:// URL")
        https = parsed.scheme == "https"
        self._host, self._port = parsed.hostname, parsed.port or (443 if https else 80)
        self._tls = tls_context(ca_file, cert_file, key_file) if https else None
        self._timeout = timeout_s
        self._auth = _auth_headers(token)
        self._conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> Result:
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = (http.client.HTTPSConnection(self._host, self._port,
                                                          timeout=self._timeout,
                                                          context=self._tls)
                              if self._tls is not None else
                              http.client.HTTPConnection(self._host, self._port,
                                                         timeout=self._timeout))
            try:
                self._conn.request(method, path, body=body, headers={**self._auth,
                                                                     **(headers or {})})
                resp = self._conn.getresponse()
                data = resp.read()
                hdrs = {k: v for k, v in resp.getheaders()}
                return Result(resp.status, data, _version(resp.getheader("ETag")), hdrs)
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                # A keep-alive connection the server had closed: only a GET is retried on a
                # new one. A write may have reached the server: sending it again could apply
                # it twice, so the caller hears about it (outcome unknown).
                stale = isinstance(exc, (http.client.RemoteDisconnected, BrokenPipeError,
                                         ConnectionResetError))
                if attempt == 2 or method != "GET" or not stale:
                    raise ClientError(f"{self._host}:{self._port}: {exc}") from exc
        raise AssertionError("unreachable")

    def put(self, key: str, value: bytes, if_match: int | None = None,
            if_none_match: bool = False) -> Result:
        return self.request("PUT", _path(key), value, _conditions(if_match, if_none_match))

    def get(self, key: str, stale: bool = False) -> Result:
        return self.request("GET", _path(key) + ("?consistency=stale" if stale else ""))

    def delete(self, key: str, if_match: int | None = None) -> Result:
        return self.request("DELETE", _path(key), None, _conditions(if_match, False))

    def list(self, prefix: str = "", limit: int = 1000) -> Result:
        query = urllib.parse.urlencode({"prefix": prefix, "limit": limit})
        return self.request("GET", f"/v1/kv?{query}")

    def status(self) -> Result:
        return self.request("GET", "/v1/status")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class AsyncClient:
    """An asyncio client on one pooled aiohttp session."""

    def __init__(self, url: str, timeout_s: float = 10.0, token: str | None = None,
                 ca_file: str | None = None, cert_file: str | None = None,
                 key_file: str | None = None) -> None:
        self._url = url.rstrip("/")
        tls = tls_context(ca_file, cert_file, key_file) if url.startswith("https://") else None
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeout_s), headers=_auth_headers(token),
            connector=aiohttp.TCPConnector(ssl=tls if tls is not None else True))
        # aiohttp resends a PUT or DELETE once when a reused connection fails, as HTTP deems
        # them idempotent; a compare-and-set or a versioned write is not, so never resend.
        # (A private switch: where an aiohttp lacks it, a write error means outcome unknown.)
        if hasattr(self._session, "_retry_connection"):
            self._session._retry_connection = False

    async def request(self, method: str, path: str, body: bytes | None = None,
                      headers: dict[str, str] | None = None) -> Result:
        try:
            async with self._session.request(method, self._url + path, data=body,
                                             headers=headers) as resp:
                data = await resp.read()
                return Result(resp.status, data, _version(resp.headers.get("ETag")),
                              dict(resp.headers))
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ClientError(f"{self._url}: {type(exc).__name__}: {exc}") from exc

    async def put(self, key: str, value: bytes, if_match: int | None = None,
                  if_none_match: bool = False) -> Result:
        return await self.request("PUT", _path(key), value, _conditions(if_match, if_none_match))

    async def get(self, key: str, stale: bool = False) -> Result:
        return await self.request("GET", _path(key) + ("?consistency=stale" if stale else ""))

    async def delete(self, key: str, if_match: int | None = None) -> Result:
        return await self.request("DELETE", _path(key), None, _conditions(if_match, False))

    async def close(self) -> None:
        await self._session.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
