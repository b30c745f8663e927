"""TLS contexts and certificate reload (paxoskv/tls.py), over real loopback handshakes."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from tlsutil import Pki

from paxoskv.tls import Reloader, TlsError, TlsFiles, client_context, server_context


async def _served_serial(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> int:
    """Handshake once with a loopback server using ``server_ctx`` and read its greeting;
    the serial number of the certificate it presented. Raises ConnectionError when the
    server refused the connection (with TLS 1.3 the client learns it on the first read)."""
    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hi")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(on_client, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx,
                                                       server_hostname="127.0.0.1")
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        try:
            greeting = await reader.read()
        except ssl.SSLError as exc:
            raise ConnectionError(f"refused: {exc}") from None
        writer.close()
        if greeting != b"hi":
            raise ConnectionError("closed without a greeting")
        return int(x509.load_der_x509_certificate(der).serial_number)
    finally:
        server.close()
        await server.wait_closed()


def test_a_changed_certificate_is_served_to_new_connections(tmp_path: Path) -> None:
    """Goal: rotating the files (as cert-manager or a Secret update does) changes the
    certificate new handshakes get, with no restart; a rotation that does not load (a key
    that does not match) keeps the previous certificate in use and is counted.

    Method: a real TLS server on loopback with a context the reloader watches; handshake,
    replace the files, ``check()``, handshake again and compare serial numbers.
    """
    pki = Pki(tmp_path / "pki")
    cert, key, first = pki.issue("node", tmp_path / "node.pem", tmp_path / "node.key")
    files = TlsFiles(cert, key, pki.ca)
    reloader = Reloader(files)
    served = reloader.watch(server_context(files, require_client_cert=False), True, False)
    dial = client_context(None, pki.ca)
    assert asyncio.run(_served_serial(served, dial)) == first
    assert not reloader.check()  # nothing changed
    _, _, second = pki.issue("node", cert, key)
    assert reloader.check() and reloader.reloads == 1
    assert asyncio.run(_served_serial(served, dial)) == second
    # A bad rotation: a new certificate with the old key.
    other = Pki(tmp_path / "other")
    new_cert, _, _ = other.issue("node")
    cert.write_bytes(new_cert.read_bytes())
    assert not reloader.check() and reloader.failures == 1
    assert asyncio.run(_served_serial(served, dial)) == second


def test_mutual_tls_refuses_a_client_without_a_certificate_from_the_ca(tmp_path: Path) -> None:
    """Goal: the peer port's context (mutual TLS) completes a handshake only with a client
    certificate that chains to the cluster CA.

    Method: real handshakes with no client certificate, one from another CA, one from the
    cluster CA; only the last succeeds.
    """
    pki = Pki(tmp_path / "pki")
    cert, key, serial = pki.issue("node")
    files = TlsFiles(cert, key, pki.ca)
    served = server_context(files, require_client_cert=True)
    peer_cert, peer_key, _ = pki.issue("peer")
    good = client_context(TlsFiles(peer_cert, peer_key), pki.ca)
    assert asyncio.run(_served_serial(served, good)) == serial
    stranger_cert, stranger_key, _ = Pki(tmp_path / "other").issue("stranger")
    for ctx in (client_context(None, pki.ca),
                client_context(TlsFiles(stranger_cert, stranger_key), pki.ca)):
        with pytest.raises((ssl.SSLError, ConnectionError)):
            asyncio.run(_served_serial(served, ctx))


def test_unusable_files_are_one_clear_error(tmp_path: Path) -> None:
    """Goal: a missing or mismatched file is a TlsError naming it, never a traceback."""
    pki = Pki(tmp_path / "pki")
    cert, key, _ = pki.issue("node")
    with pytest.raises(TlsError, match="cannot load the certificate"):
        server_context(TlsFiles(cert, tmp_path / "missing.key"), False)
    with pytest.raises(TlsError, match="needs --tls-ca-file"):
        server_context(TlsFiles(cert, key), True)
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(TlsError, match="cannot load the CA file"):
        client_context(None, tmp_path / "junk.pem")
