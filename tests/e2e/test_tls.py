"""
End to end: InkFlow serving TLS itself (C{--listen ssl:...}) with a
self-signed certificate made by the test, on loopback: the page and the API
answer over HTTPS with C{Strict-Transport-Security}; plain HTTP has none.
"""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import socket
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bench._common import read_head
from tests.support.server import ServerProcess, twistd

HSTS = "max-age=31536000"


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A key and a certificate for 127.0.0.1, valid for a day."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = folder / "key.pem", folder / "cert.pem"
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def _get(port: int, context: ssl.SSLContext, path: str) -> http.client.HTTPResponse:
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=15)
    connection.request("GET", path)
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


def test_tls_listener_serves_with_strict_transport_security(tmp_path: Path) -> None:
    key, cert = _self_signed(tmp_path)
    listen = f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
    command = [twistd(), "-n", "--pidfile=", "inkflow", "--listen", listen, "--upload-dir", str(tmp_path / "up")]
    server = ServerProcess(command=command)
    context = ssl.create_default_context(cafile=str(cert))  # verified: the certificate names 127.0.0.1
    with server:
        for path, status in (("/", 200), ("/api/health", 200), ("/api/nowhere", 404)):
            response = _get(server.port, context, path)
            assert response.status == status, path
            assert response.getheader("Strict-Transport-Security") == HSTS, path
        # Answers written before the request is parsed (malformed framing: the contract's JSON 400) too.
        with (
            socket.create_connection(("127.0.0.1", server.port), timeout=15) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            tls.sendall(b"POST /api/chat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n")
            head = read_head(tls, 4096)
        assert head.startswith(b"HTTP/1.1 400 "), head
        assert b"\r\nStrict-Transport-Security: " + HSTS.encode() + b"\r\n" in head


def test_plain_http_has_no_strict_transport_security(tmp_path: Path) -> None:
    with ServerProcess("--upload-dir", str(tmp_path)) as server:
        status, headers, _ = server.request("GET", "/")
        assert status == 200
        assert "strict-transport-security" not in headers
