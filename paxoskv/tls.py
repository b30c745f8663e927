"""TLS for the client API and mutual TLS between peers, with certificates reloaded in place.

One set of files serves every purpose: the node's certificate and key (presented to clients,
to peers that dial it, and to peers it dials) and the cluster CA (which every peer's
certificate must chain to). Peers also keep sending the shared secret: a certificate from
the cluster CA proves membership of the PKI, which may also have issued certificates to
clients or operators; the secret proves membership of this cluster's peers.

Rotation needs no restart: ``Reloader`` re-reads the files when they change (cert-manager
and kubelet replace a Secret's files atomically) into the same ``SSLContext`` objects, which
every new connection then uses; connections already open keep the certificate they began
with. A file that fails to load leaves the previous certificate in use.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Reloader", "TlsError", "TlsFiles", "client_context", "server_context"]

log = logging.getLogger(__name__)

RELOAD_CHECK_S = 10.0
"""How often the files are checked for a change (a stat each; the load only on a change)."""


class TlsError(ValueError):
    """A certificate, key or CA file that cannot be used: said in one line, at start-up."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    cert: Path
    key: Path
    ca: Path | None = None

    def stamp(self) -> tuple[tuple[int, int], ...]:
        """What changes when any file is replaced (modification time and size)."""
        out = []
        for path in (self.cert, self.key, self.ca):
            if path is None:
                continue
            try:
                st = path.stat()
            except OSError:
                out.append((-1, -1))
            else:
                out.append((st.st_mtime_ns, st.st_size))
        return tuple(out)


def _load_chain(ctx: ssl.SSLContext, files: TlsFiles) -> None:
    try:
        ctx.load_cert_chain(files.cert, files.key)
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"cannot load the certificate {files.cert} with the key {files.key}: "
                       f"{exc}") from None


def _load_ca(ctx: ssl.SSLContext, ca: Path) -> None:
    try:
        ctx.load_verify_locations(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"cannot load the CA file {ca}: {exc}") from None


def server_context(files: TlsFiles, require_client_cert: bool) -> ssl.SSLContext:
    """A listener's context. ``require_client_cert`` (the peer port, given a CA) refuses any
    handshake without a certificate that chains to the CA."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(ctx, files)
    if require_client_cert:
        if files.ca is None:
            raise TlsError("verifying peers' certificates needs --tls-ca-file")
        _load_ca(ctx, files.ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(files: TlsFiles | None, ca: Path | None) -> ssl.SSLContext:
    """A dialler's context: verifies the server against ``ca`` (else the system's CAs) and
    its name, and presents ``files``' certificate when given (mutual TLS)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca is not None:
        _load_ca(ctx, ca)
    if files is not None:
        _load_chain(ctx, files)
    return ctx


class Reloader:
    """Re-reads ``files`` into every context registered with it when they change."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self._contexts: list[tuple[ssl.SSLContext, bool, bool]] = []
        self._stamp = files.stamp()
        self.reloads = 0
        self.failures = 0

    def watch(self, ctx: ssl.SSLContext, chain: bool, ca: bool) -> ssl.SSLContext:
        """Register ``ctx``: its certificate chain (``chain``) and/or CA (``ca``) follow the
        files."""
        self._contexts.append((ctx, chain, ca))
        return ctx

    def check(self) -> bool:
        """Reload if the files changed since the last look; whether it reloaded."""
        stamp = self.files.stamp()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            # Into a scratch context first: a certificate that loads with a key that does
            # not match would leave a real context holding the new certificate and the old
            # key, failing every handshake.
            _load_chain(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), self.files)
            if self.files.ca is not None:
                _load_ca(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), self.files.ca)
            for ctx, chain, ca in self._contexts:
                if chain:
                    _load_chain(ctx, self.files)
                if ca and self.files.ca is not None:
                    _load_ca(ctx, self.files.ca)
        except TlsError as exc:
            # Mid-replacement files, or a bad rotation: keep serving with what loaded last,
            # and try again on the next change.
            self.failures += 1
            log.error("TLS files changed but did not load (still using the previous "
                      "certificate): %s", exc)
            return False
        self.reloads += 1
        log.info("TLS certificate reloaded from %s", self.files.cert)
        return True

    async def run(self, interval_s: float = RELOAD_CHECK_S) -> None:
        while True:
            await asyncio.sleep(interval_s)
            self.check()
