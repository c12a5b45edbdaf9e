"""Real registries for tests: Debian's ``docker-registry`` (distribution 2.8) on 127.0.0.1.

* :func:`running_registry` starts ``docker-registry serve CONFIG.yml`` with its own storage and
  a free port, optionally with TLS (:func:`make_tls`), htpasswd Basic auth (:func:`htpasswd`)
  or token auth (:class:`TokenServer`, which signs RS256 JWTs the registry trusts), waits until
  ``/v2/`` answers and stops it by PID.
* :class:`CuttingProxy` forwards TCP to a registry and cuts a blob response after N bytes.
* :class:`ThrottlingProxy` is a CuttingProxy that also forwards chosen responses at a fixed rate
  (a slow link) and can drop their ``Range`` header (a server that ignores ranges).
* :class:`RedirectingFront` is a Basic-auth front for a registry that redirects blob requests to
  another host (127.0.0.2) and records what that host was sent.

Everything listens on 127.0.0.0/8 only, and every process, thread and socket is closed on exit.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import http.server
import ipaddress
import json
import secrets
import select
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

REGISTRY_BINARY = "/usr/bin/docker-registry"
LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


# --- TLS and htpasswd ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    """The CA certificate (PEM): what clients trust."""
    certificate: Path
    key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_tls(directory: Path) -> TlsFiles:
    """A fresh CA and a server certificate for 127.0.0.1 and localhost, signed by it."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("quay test CA"))
        .issuer_name(_name("quay test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.DNSName("localhost"),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.certificate.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    files.key.chmod(0o600)
    return files


def htpasswd(path: Path, user: str, password: str) -> Path:
    """An htpasswd file with one bcrypt entry (the only kind the registry accepts)."""
    line = subprocess.run(
        ["htpasswd", "-Bbn", user, password], check=True, capture_output=True, text=True
    ).stdout.strip()
    path.write_text(line + "\n")
    return path


def docker_config(path: Path, registry: str, user: str, password: str) -> Path:
    """A Docker ``config.json`` with credentials for ``registry``."""
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {registry: {"auth": auth}}}))
    return path


# --- token server --------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def libtrust_key_id(public_key: rsa.RSAPublicKey) -> str:
    """The ``kid`` distribution looks trusted keys up by: libtrust's fingerprint of the key."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    encoded = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(encoded[i : i + 4] for i in range(0, len(encoded), 4))


class TokenServer:
    """A Docker token server (``GET /token?service=…&scope=…``) on 127.0.0.1.

    Valid Basic credentials get the actions they ask for; anonymous callers get a token with no
    access (as Docker Hub does for private repositories); wrong credentials get a 401.
    """

    def __init__(
        self,
        directory: Path,
        *,
        users: dict[str, str],
        service: str = "quay-test-registry",
        issuer: str = "quay-test-issuer",
        token_field: str = "token",
        expires_in: int = 300,
    ) -> None:
        self.users = users
        self.service = service
        self.issuer = issuer
        self.token_field = token_field
        self.expires_in = expires_in
        self.requests: list[dict[str, Any]] = []
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name("quay test token signer"))
            .issuer_name(_name("quay test token signer"))
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(self._key, hashes.SHA256())
        )
        directory.mkdir(parents=True, exist_ok=True)
        self.bundle = directory / "token-signer.pem"
        self.bundle.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.kid = libtrust_key_id(self._key.public_key())
        self._server = _HttpServer((LOOPBACK, 0), self._handler())
        self.port = self._server.server_address[1]
        self.realm = f"http://{LOOPBACK}:{self.port}/token"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> TokenServer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def sign(self, subject: str, access: list[dict[str, Any]]) -> str:
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "kid": self.kid}
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "exp": now + self.expires_in,
            "nbf": now - 30,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        signing_input = (
            _b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(claims).encode())
        )
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return signing_input + "." + _b64url(signature)

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        server = self

        class Handler(_QuietHandler):
            def do_GET(self) -> None:
                query = parse_qs(urlsplit(self.path).query)
                user = _basic_user(self.headers.get("Authorization"))
                server.requests.append(
                    {
                        "path": self.path,
                        "user": user,
                        "authorization": "Authorization" in self.headers,
                    }
                )
                if user is not None and server.users.get(user[0]) != user[1]:
                    self.send_json(401, {"details": "bad credentials"})
                    return
                access = []
                if user is not None:
                    for scope in query.get("scope", []):
                        kind, _, rest = scope.partition(":")
                        name, _, actions = rest.rpartition(":")
                        access.append({"type": kind, "name": name, "actions": actions.split(",")})
                token = server.sign(user[0] if user else "", access)
                self.send_json(200, {server.token_field: token, "expires_in": server.expires_in})

        return Handler


def _basic_user(header: str | None) -> tuple[str, str] | None:
    if not header or not header.lower().startswith("basic "):
        return None
    user, _, password = base64.b64decode(header[6:]).decode().partition(":")
    return user, password


class _HttpServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = True


class _QuietHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def send_json(
        self, status: int, document: object, headers: dict[str, str] | None = None
    ) -> None:
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


# --- the registry --------------------------------------------------------------------------------


@dataclass
class Registry:
    """A running ``docker-registry``."""

    host: str
    """``127.0.0.1:PORT``: use it in references."""
    storage: Path
    log: Path
    tls: TlsFiles | None
    process: subprocess.Popen[bytes] = field(repr=False)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    def blob_data_path(self, digest: str) -> Path:
        """Where the registry keeps a blob's bytes (to tamper with in tests)."""
        hex_digest = digest.removeprefix("sha256:")
        return (
            self.storage / "docker/registry/v2/blobs/sha256" / hex_digest[:2] / hex_digest / "data"
        )

    def log_entries(self) -> list[dict[str, Any]]:
        """The registry's log lines (JSON), e.g. ``msg == "response completed"``."""
        entries = []
        for line in self.log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict):
                    entries.append(entry)
        return entries

    def responses(self, uri_contains: str) -> list[dict[str, Any]]:
        """Completed responses whose request URI contains ``uri_contains``."""
        return [
            e
            for e in self.log_entries()
            if e.get("msg") == "response completed"
            and uri_contains in str(e.get("http.request.uri", ""))
        ]


def _registry_config(
    storage: Path,
    port: int,
    tls: TlsFiles | None,
    auth_htpasswd: Path | None,
    token: TokenServer | None,
) -> str:
    lines = [
        "version: 0.1",
        "log:",
        "  level: info",
        "  formatter: json",
        "  accesslog:",
        "    disabled: true",
        "storage:",
        "  filesystem:",
        f"    rootdirectory: {storage}",
        "  delete:",
        "    enabled: true",
        "  maintenance:",
        "    uploadpurging:",
        "      enabled: false",
        "http:",
        f"  addr: {LOOPBACK}:{port}",
        f"  secret: {secrets.token_hex(16)}",
    ]
    if tls:
        lines += ["  tls:", f"    certificate: {tls.certificate}", f"    key: {tls.key}"]
    if auth_htpasswd:
        lines += ["auth:", "  htpasswd:", "    realm: quay-test", f"    path: {auth_htpasswd}"]
    if token:
        lines += [
            "auth:",
            "  token:",
            f"    realm: {token.realm}",
            f"    service: {token.service}",
            f"    issuer: {token.issuer}",
            f"    rootcertbundle: {token.bundle}",
        ]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def running_registry(
    directory: Path,
    *,
    tls: TlsFiles | None = None,
    auth_htpasswd: Path | None = None,
    token: TokenServer | None = None,
    timeout: float = 30.0,
) -> Iterator[Registry]:
    """Start ``docker-registry`` with storage under ``directory``; stop it on exit."""
    directory.mkdir(parents=True, exist_ok=True)
    storage = directory / "storage"
    storage.mkdir(exist_ok=True)
    port = free_port()
    config = directory / "config.yml"
    config.write_text(_registry_config(storage, port, tls, auth_htpasswd, token))
    log = directory / "registry.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [REGISTRY_BINARY, "serve", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    registry = Registry(f"{LOOPBACK}:{port}", storage, log, tls, process)
    try:
        _wait_until_up(registry, timeout)
        yield registry
    finally:
        _stop(process)


def _wait_until_up(registry: Registry, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    verify: bool | ssl.SSLContext = (
        ssl.create_default_context(cafile=str(registry.tls.ca)) if registry.tls else False
    )
    with httpx.Client(verify=verify, timeout=2.0) as client:
        while True:
            if registry.process.poll() is not None:
                raise RuntimeError(
                    f"docker-registry exited with {registry.process.returncode}:\n"
                    + registry.log.read_text(errors="replace")[-3000:]
                )
            with contextlib.suppress(httpx.HTTPError):
                if client.get(f"{registry.url}/v2/").status_code in (200, 401):
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"docker-registry did not answer on {registry.url} in time")
            time.sleep(0.05)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


# --- a TCP proxy that cuts blob responses ---------------------------------------------------------


class CuttingProxy:
    """Forwards TCP from 127.0.0.1:port to ``upstream``; records request heads.

    After a request line containing ``cut_path`` is seen on a connection, the response is cut
    (the connection closed) after ``cut_after`` bytes, ``cuts`` times in all. With ``die``, the
    proxy then refuses every new connection (a registry gone away).
    """

    def __init__(
        self,
        upstream: str,
        *,
        cut_path: str,
        cut_after: int,
        cuts: int = 1,
        die: bool = False,
    ) -> None:
        host, _, port = upstream.rpartition(":")
        self.upstream = (host, int(port))
        self.cut_path = cut_path
        self.cut_after = cut_after
        self.cuts = cuts
        self.die = die
        self.dead = False
        self.requests: list[str] = []
        self.forwarded = 0
        """Bytes sent from the upstream to clients, in all."""
        self._lock = threading.Lock()
        self._listener = socket.create_server((LOOPBACK, 0))
        self.port: int = self._listener.getsockname()[1]
        self.host = f"{LOOPBACK}:{self.port}"
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> CuttingProxy:
        self._accepter.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stopping.set()
        self._listener.close()
        self._accepter.join(timeout=10)
        for thread in list(self._threads):
            thread.join(timeout=10)

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                readable, _, _ = select.select([self._listener], [], [], 0.2)
                if not readable:
                    continue
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.dead:
                client.close()
                continue
            thread = threading.Thread(target=self._serve, args=(client,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        try:
            upstream = socket.create_connection(self.upstream, timeout=10)
            armed = False
            sent = 0
            while not self._stopping.is_set():
                readable, _, _ = select.select([client, upstream], [], [], 0.2)
                if client in readable:
                    data = client.recv(65536)
                    if not data:
                        return
                    head = data.decode("latin-1")
                    with self._lock:
                        if head.startswith(("GET ", "HEAD ")):
                            self.requests.append(head.split("\r\n\r\n")[0])
                        if self.cut_path in head.split("\r\n")[0] and self.cuts > 0:
                            armed, sent = True, 0
                    upstream.sendall(data)
                if upstream in readable:
                    data = upstream.recv(65536)
                    if not data:
                        return
                    if armed and sent + len(data) >= self.cut_after:
                        client.sendall(data[: self.cut_after - sent])
                        with self._lock:
                            self.forwarded += self.cut_after - sent
                            self.cuts -= 1
                            self.dead = self.die
                        client.shutdown(socket.SHUT_RDWR)
                        return
                    sent += len(data)
                    client.sendall(data)
                    with self._lock:
                        self.forwarded += len(data)
        except OSError:
            return
        finally:
            client.close()
            if upstream is not None:
                upstream.close()


class ThrottlingProxy(CuttingProxy):
    """A :class:`CuttingProxy` (no cuts unless asked) that slows some responses down.

    The response to a request whose request line contains ``throttle_path`` is forwarded at
    ``rate`` bytes per second, paced in small slices from the start of the response (a slow
    link). With ``strip_range``, such requests lose their ``Range`` header, so the registry
    answers 200 with the whole blob. Cutting works as in CuttingProxy (``cut_path`` etc.).
    ``throttled`` counts the bytes of throttled responses sent to clients.
    """

    SLICE = 16 * 1024

    def __init__(
        self,
        upstream: str,
        *,
        throttle_path: str,
        rate: float,
        strip_range: bool = False,
        cut_path: str = "\0never",
        cut_after: int = 0,
        cuts: int = 0,
        die: bool = False,
    ) -> None:
        super().__init__(upstream, cut_path=cut_path, cut_after=cut_after, cuts=cuts, die=die)
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.throttle_path = throttle_path
        self.rate = rate
        self.strip_range = strip_range
        self.throttled = 0

    def __enter__(self) -> ThrottlingProxy:
        super().__enter__()
        return self

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        response = _Response()
        try:
            upstream = socket.create_connection(self.upstream, timeout=10)
            while not self._stopping.is_set():
                readable, _, _ = select.select([client, upstream], [], [], 0.2)
                if client in readable:
                    data = client.recv(65536)
                    if not data:
                        return
                    upstream.sendall(self._on_request(data, response))
                if upstream in readable:
                    data = upstream.recv(65536)
                    if not data or not self._forward(client, data, response):
                        return
        except OSError:
            return
        finally:
            client.close()
            if upstream is not None:
                upstream.close()

    def _on_request(self, data: bytes, response: _Response) -> bytes:
        """Record a request head, set up how its response is forwarded; what to send on."""
        head = data.decode("latin-1")
        line = head.split("\r\n")[0]
        if not head.startswith(("GET ", "HEAD ")):
            return data
        response.throttled = self.throttle_path in line
        response.started, response.sent = time.monotonic(), 0
        with self._lock:
            self.requests.append(head.split("\r\n\r\n")[0])
            response.cut = self.cut_path in line and self.cuts > 0
        if response.throttled and self.strip_range:
            return _without_range(head).encode("latin-1")
        return data

    def _forward(self, client: socket.socket, data: bytes, response: _Response) -> bool:
        """Send a piece of a response on, paced if throttled; False once it was cut."""
        cut = response.cut and response.sent + len(data) >= self.cut_after
        if cut:
            data = data[: self.cut_after - response.sent]
        step = self.SLICE if response.throttled else max(len(data), 1)
        for start in range(0, len(data), step):
            piece = data[start : start + step]
            response.sent += len(piece)
            if response.throttled:
                delay = response.started + response.sent / self.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            client.sendall(piece)
            with self._lock:
                self.forwarded += len(piece)
                if response.throttled:
                    self.throttled += len(piece)
        if cut:
            with self._lock:
                self.cuts -= 1
                self.dead = self.die
            client.shutdown(socket.SHUT_RDWR)
            return False
        return True


@dataclass
class _Response:
    """How ThrottlingProxy forwards the response to the last request on a connection."""

    throttled: bool = False
    cut: bool = False
    started: float = 0.0
    sent: int = 0


def _without_range(head: str) -> str:
    lines = head.split("\r\n")
    return "\r\n".join(line for line in lines if not line.lower().startswith("range:"))


# --- a registry front that redirects blobs to another host ----------------------------------------


class RedirectingFront:
    """A Basic-auth "registry" on 127.0.0.1 backed by a real one, redirecting blob GETs.

    Manifest and other ``/v2/`` requests are proxied to ``backend`` (a plain-HTTP registry).
    ``GET /v2/<name>/blobs/<digest>`` answers 307 to a blob host on **127.0.0.2** (another
    host), which serves the blob from the backend and records the headers it was sent.
    """

    def __init__(self, backend: str, *, user: str, password: str) -> None:
        self.backend = backend
        self.user = (user, password)
        self.front_requests: list[dict[str, Any]] = []
        self.blob_requests: list[dict[str, Any]] = []
        self._http = httpx.Client(timeout=30)
        self._front = _HttpServer((LOOPBACK, 0), self._front_handler())
        self._blobs = _HttpServer(("127.0.0.2", 0), self._blob_handler())
        self.host = f"{LOOPBACK}:{self._front.server_address[1]}"
        self.blob_host = f"127.0.0.2:{self._blobs.server_address[1]}"
        self._threads = [
            threading.Thread(target=self._front.serve_forever, daemon=True),
            threading.Thread(target=self._blobs.serve_forever, daemon=True),
        ]

    def __enter__(self) -> RedirectingFront:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        for server in (self._front, self._blobs):
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=10)
        self._http.close()

    def _relay(self, handler: http.server.BaseHTTPRequestHandler, path: str) -> None:
        headers = {k: v for k, v in handler.headers.items() if k.lower() in ("accept", "range")}
        response = self._http.get(f"http://{self.backend}{path}", headers=headers)
        handler.send_response(response.status_code)
        for name in ("Content-Type", "Docker-Content-Digest", "Content-Range", "Content-Length"):
            if name in response.headers:
                handler.send_header(name, response.headers[name])
        handler.end_headers()
        handler.wfile.write(response.content)

    def _front_handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        front = self

        class Handler(_QuietHandler):
            def do_GET(self) -> None:
                user = _basic_user(self.headers.get("Authorization"))
                front.front_requests.append({"path": self.path, "user": user})
                if user != front.user:
                    self.send_json(
                        401,
                        {"errors": [{"code": "UNAUTHORIZED", "message": "log in first"}]},
                        {"WWW-Authenticate": 'Basic realm="quay-test-front"'},
                    )
                    return
                parts = urlsplit(self.path).path.split("/blobs/")
                if len(parts) == 2 and parts[0].startswith("/v2/"):
                    name = parts[0].removeprefix("/v2/")
                    location = f"http://{front.blob_host}/cdn/{parts[1]}?repo={name}&sig=xyz"
                    self.send_response(307)
                    self.send_header("Location", location)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                front._relay(self, self.path)

        return Handler

    def _blob_handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        front = self

        class Handler(_QuietHandler):
            def do_GET(self) -> None:
                split = urlsplit(self.path)
                front.blob_requests.append({"path": self.path, "headers": dict(self.headers)})
                if "Authorization" in self.headers:
                    # What S3 does with a presigned URL plus a token (opa#6728).
                    self.send_json(400, {"error": "Only one auth mechanism allowed"})
                    return
                digest = split.path.removeprefix("/cdn/")
                repo = parse_qs(split.query)["repo"][0]
                front._relay(self, f"/v2/{repo}/blobs/{digest}")

        return Handler
