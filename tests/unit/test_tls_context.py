"""Registries are verified against the system's hashed CA directory, each CA read on demand."""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
from pathlib import Path

import pytest

from quayd.images.registry import _tls_context
from tests.support.registry import make_tls


def _handshake(context: ssl.SSLContext, certificate: Path, key: Path) -> None:
    """A TLS handshake with a server on 127.0.0.1 that presents ``certificate``."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(certificate, key)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve() -> None:
            connection, _ = listener.accept()
            try:
                with server.wrap_socket(connection, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                connection.close()

        thread = threading.Thread(target=serve)
        thread.start()
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
                context.wrap_socket(raw, server_hostname="localhost"),
            ):
                pass
        finally:
            thread.join(timeout=10)


def test_a_ca_in_the_hashed_directory_is_trusted_and_read_only_when_needed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trusted = make_tls(tmp_path / "trusted")
    stranger = make_tls(tmp_path / "stranger")
    cas = tmp_path / "cas"
    cas.mkdir()
    (cas / "quay-test.pem").write_bytes(trusted.ca.read_bytes())
    subprocess.run(["openssl", "rehash", str(cas)], check=True)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.setenv("SSL_CERT_DIR", str(cas))

    context = _tls_context()
    assert context.get_ca_certs() == []  # nothing parsed up front
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    _handshake(context, trusted.certificate, trusted.key)
    assert len(context.get_ca_certs()) == 1  # looked up for that chain
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(_tls_context(), stranger.certificate, stranger.key)


def test_another_bundle_named_by_ssl_cert_file_is_honoured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trusted = make_tls(tmp_path / "trusted")
    monkeypatch.setenv("SSL_CERT_FILE", str(trusted.ca))
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path / "none"))
    context = _tls_context()
    assert len(context.get_ca_certs()) == 1
    _handshake(context, trusted.certificate, trusted.key)
