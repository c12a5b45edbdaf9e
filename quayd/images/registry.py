"""A synchronous registry client (OCI distribution API) on httpx.

What it does, per request:

* Endpoints: a reference's registry, after the mirrors configured for it (each asked with
  ``?ns=<registry>``, as containerd does). ``docker.io`` is served by ``registry-1.docker.io``.
  A mirror that fails in any way is skipped; the error of the registry itself is what is raised.
  Mirrors are asked for tags too (as Docker's ``registry-mirrors`` and containerd's default
  capabilities): the settings have no per-mirror capabilities yet, so only configure mirrors
  you trust to resolve tags. Content is verified by digest whatever answers.
* Transport: HTTPS verified against the system CAs plus ``registries.ca_files``. Plain HTTP only
  for ``registries.plain_http`` hosts, and for loopback hosts (``localhost``, 127.0.0.0/8,
  ``::1``) whose server does not speak TLS: those are tried over HTTPS first and fall back to
  HTTP when the TLS handshake fails for any reason other than certificate verification.
* Auth: a 401 with ``WWW-Authenticate: Bearer`` fetches a token from the realm (with Basic
  credentials from the auth file if there are any, else anonymously), cached per
  (realm, service, scope) for ``expires_in`` (default 60 s); ``Basic`` sends the credentials.
  One retry per request after a challenge. Credentials are never sent in clear text to a host
  that is neither loopback nor listed in ``plain_http``.
* Redirects are followed here, not by httpx: ``Authorization`` goes only to the endpoint's own
  origin (scheme, host, port), never to a redirect target elsewhere (CDNs, presigned S3 URLs).
* Retries with capped exponential backoff on connection errors, 5xx and 429.

Manifests are size-capped while reading and checked against ``Docker-Content-Digest``; blobs are
streamed with ``Accept-Encoding: identity`` and resumed with ``Range``. Verifying blob content
against its digest is the caller's job (the content store does it while writing).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import random
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import NamedTuple, TypeVar

import httpx

from quayd.images.auth import Challenge, Credentials, load_credentials, parse_challenge
from quayd.images.errors import (
    AuthError,
    ImageError,
    ManifestError,
    NotFoundError,
    RegistryError,
    VerificationError,
)
from quayd.images.manifest import MANIFEST_ACCEPT, MAX_MANIFEST_SIZE
from quayd.images.model import check_digest, sha256_digest
from quayd.units.reference import DOCKER_HUB, ImageReference
from quayd.units.settings import RegistrySettings

DOCKER_HUB_ENDPOINT = "registry-1.docker.io"
USER_AGENT = "quay/0.1 (+python-httpx)"
MAX_REDIRECTS = 5
MAX_ERROR_BODY = 64 * 1024
DEFAULT_TOKEN_LIFETIME = 60.0

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


class InterruptedTransferError(RegistryError):
    """The connection broke while a body was being read; the caller may resume or retry."""


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff with jitter, for connection errors, 5xx and 429."""

    attempts: int = 4
    """Tries per request and endpoint (1 means no retry)."""
    initial_delay: float = 0.5
    max_delay: float = 8.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before try ``attempt + 1`` (``attempt`` counts from 0)."""
        base: float = min(self.max_delay, self.initial_delay * (2**attempt))
        return base * random.uniform(0.5, 1.0)  # jitter, not cryptography


class ManifestResponse(NamedTuple):
    raw: bytes
    """The document exactly as received (its sha256 is its digest)."""
    content_type: str | None
    digest: str
    """sha256 of ``raw``; checked against Docker-Content-Digest and a requested digest."""


@dataclass(frozen=True)
class Endpoint:
    """One place to ask for a repository: the registry itself or one of its mirrors."""

    host: str
    """``host[:port]`` as in a URL."""
    registry: str
    """The registry the reference names (``docker.io``), for ``?ns=`` and messages."""
    scheme: str | None = None
    """Fixed by a mirror URL or ``plain_http``; None: HTTPS, or HTTP after a failed handshake
    for loopback hosts."""
    mirror: bool = False

    @property
    def display(self) -> str:
        return f"mirror {self.host} of {self.registry}" if self.mirror else f"registry {self.host}"


def is_loopback(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 or ``::1`` (``host`` may carry a port or IPv6 brackets)."""
    name = _hostname(host)
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _hostname(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host[1:]
    if host.count(":") == 1:
        return host.split(":")[0]
    return host


@dataclass
class _Token:
    value: str
    expires: float


@dataclass
class _AuthState:
    """What a registry asked for, per (origin, repository), and the tokens it gave out."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    challenges: dict[tuple[str, str], Challenge] = field(default_factory=dict)
    tokens: dict[tuple[str, str, str], _Token] = field(default_factory=dict)


class RegistryClient:
    """Talks to registries for pulls. Thread-safe; close it (or use ``with``) when done."""

    def __init__(
        self,
        settings: RegistrySettings | None = None,
        *,
        credentials: Credentials | None = None,
        retry: RetryPolicy = RetryPolicy(),
        timeout: float = 60.0,
        connect_timeout: float = 15.0,
    ) -> None:
        self._settings = settings or RegistrySettings()
        self._credentials = (
            credentials
            if credentials is not None
            else load_credentials(
                None if self._settings.auth_file is None else _path(self._settings.auth_file)
            )
        )
        self._retry = retry
        self._plain_http = {h.lower() for h in self._settings.plain_http}
        self._schemes: dict[str, str] = {}
        self._schemes_lock = threading.Lock()
        self._auth = _AuthState()
        context = _tls_context()
        for ca_file in self._settings.ca_files:
            try:
                context.load_verify_locations(cafile=str(ca_file))
            except (OSError, ssl.SSLError) as error:
                raise RegistryError(
                    f"cannot load CA file {ca_file} (registries.ca_files): {error}"
                ) from None
        self._http = httpx.Client(
            verify=context,
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
            follow_redirects=False,
            headers={"User-Agent": USER_AGENT},
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # --- public API ------------------------------------------------------------------------------

    def endpoints(self, registry: str) -> list[Endpoint]:
        """Where to ask for ``registry``'s content, in order: its mirrors, then itself."""
        found: list[Endpoint] = []
        for mirror in self._settings.mirrors.get(registry, []):
            scheme: str | None = None
            host = mirror.rstrip("/")
            for prefix in ("https://", "http://"):
                if host.startswith(prefix):
                    scheme, host = prefix[:-3], host[len(prefix) :]
            if scheme is None and host.lower() in self._plain_http:
                scheme = "http"
            found.append(Endpoint(host=host, registry=registry, scheme=scheme, mirror=True))
        host = DOCKER_HUB_ENDPOINT if registry == DOCKER_HUB else registry
        scheme = "http" if {registry.lower(), host.lower()} & self._plain_http else None
        found.append(Endpoint(host=host, registry=registry, scheme=scheme))
        return found

    def get_manifest(self, image: ImageReference, reference: str | None = None) -> ManifestResponse:
        """The manifest or index ``reference`` (a tag or digest; default: the image's own).

        Size-capped while reading; checked against ``Docker-Content-Digest`` when the registry
        sends it and against ``reference`` when that is a digest (VerificationError).
        """
        reference = reference or image.digest or image.tag or "latest"
        wanted = check_digest(reference) if reference.startswith("sha256:") else None

        def fetch(endpoint: Endpoint) -> ManifestResponse:
            path = f"/v2/{image.repository}/manifests/{reference}"
            for attempt in range(self._retry.attempts):
                response = self._request(
                    endpoint, image.repository, path, headers={"Accept": MANIFEST_ACCEPT}
                )
                try:
                    raw = _read_capped(response, MAX_MANIFEST_SIZE, endpoint, image.repository)
                except InterruptedTransferError:
                    if attempt + 1 >= self._retry.attempts:
                        raise
                    time.sleep(self._retry.delay(attempt))
                    continue
                finally:
                    response.close()
                digest = sha256_digest(raw)
                announced = response.headers.get("docker-content-digest")
                where = f"{endpoint.display}, repository {image.repository}"
                if announced and announced.strip() != digest:
                    raise VerificationError(
                        f"manifest {reference} from {where} hashes to {digest} but the registry "
                        f"announced {announced.strip()}; it was discarded"
                    )
                if wanted is not None and digest != wanted:
                    raise VerificationError(
                        f"manifest {wanted} from {where} hashes to {digest}; it was discarded"
                    )
                return ManifestResponse(raw, response.headers.get("content-type"), digest)
            raise AssertionError("unreachable")  # pragma: no cover

        return self._on_endpoints(image.registry, fetch)

    def open_blob(self, image: ImageReference, digest: str, offset: int = 0) -> BlobStream:
        """A streaming response for blob ``digest`` of ``image``'s repository.

        With ``offset`` > 0 asks for ``Range: bytes=offset-``; :attr:`BlobStream.offset` says
        where the stream really starts (0 when the registry could not honour the range: start
        over). Close the stream (or use ``with``).
        """
        check_digest(digest)
        if offset < 0:
            raise ValueError("offset must be >= 0")

        def fetch(endpoint: Endpoint) -> BlobStream:
            path = f"/v2/{image.repository}/blobs/{digest}"
            headers = {"Accept-Encoding": "identity"}
            if offset:
                headers["Range"] = f"bytes={offset}-"
            response = self._request(
                endpoint, image.repository, path, headers=headers, accept=(416,)
            )
            where = f"{endpoint.display}, repository {image.repository}"
            if response.status_code == 200:
                return BlobStream(response, 0, where)  # no range, or ignored: start over
            start = _range_start(response)
            if offset and start == offset:
                return BlobStream(response, offset, where)
            # A 416, a 206 for another range, or an encoded body: ask for the whole blob.
            response.close()
            headers.pop("Range", None)
            response = self._request(endpoint, image.repository, path, headers=headers)
            if response.status_code != 200:
                response.close()
                raise RegistryError(
                    f"{where} answered HTTP {response.status_code} for blob {digest} (expected 200)"
                )
            return BlobStream(response, 0, where)

        return self._on_endpoints(image.registry, fetch)

    # --- endpoints, retries, auth, redirects ----------------------------------------------------

    def _on_endpoints(self, registry: str, call: Callable[[Endpoint], _T]) -> _T:
        """``call`` on each mirror in turn, then on the registry; a mirror's failure is skipped."""
        *mirrors, upstream = self.endpoints(registry)
        skipped: list[str] = []
        for endpoint in mirrors:
            try:
                return call(endpoint)
            except ImageError as error:
                skipped.append(f"{endpoint.display}: {error}")
        try:
            return call(upstream)
        except ImageError as error:
            for note in skipped:
                error.add_note(f"skipped {note}")
            raise

    def _request(
        self,
        endpoint: Endpoint,
        repository: str,
        path: str,
        *,
        headers: dict[str, str],
        accept: tuple[int, ...] = (),
    ) -> httpx.Response:
        """GET ``path`` on ``endpoint`` after auth, redirects and retries.

        Returns an open streaming response whose status is 2xx or in ``accept``; the caller
        closes it. Anything else raises an error naming the registry and the repository.
        """
        where = f"{endpoint.display}, repository {repository}"
        attempt = 0
        challenged = False
        while True:
            scheme = self._scheme(endpoint)
            base = f"{scheme}://{endpoint.host}"
            url = base + path + (f"?ns={endpoint.registry}" if endpoint.mirror else "")
            authorization = self._authorization(endpoint, repository, base)
            try:
                response = self._send(url, headers, authorization, origin=base)
            except httpx.TransportError as error:
                if self._downgrade(endpoint, scheme, error):
                    continue
                if attempt + 1 < self._retry.attempts and not _cert_error(error):
                    time.sleep(self._retry.delay(attempt))
                    attempt += 1
                    continue
                raise RegistryError(_transport_message(error, where)) from None
            status = response.status_code
            if status == 401 and not challenged and _origin(response.url) == _origin(base):
                header = response.headers.get("www-authenticate", "")
                response.close()
                self._on_challenge(endpoint, repository, base, header, where)
                challenged = True
                continue
            if (status >= 500 or status == 429) and attempt + 1 < self._retry.attempts:
                response.close()
                time.sleep(self._retry.delay(attempt))
                attempt += 1
                continue
            if 200 <= status < 300 or status in accept:
                return response
            detail = _error_detail(response)
            response.close()
            has_credentials = self._creds(endpoint) is not None
            raise _status_error(
                status,
                detail=detail,
                path=path,
                where=where,
                has_credentials=has_credentials,
                settings=self._settings,
            )

    def _send(
        self, url: str, headers: dict[str, str], authorization: str | None, *, origin: str
    ) -> httpx.Response:
        """One GET, redirects followed here: ``Authorization`` goes to ``origin`` only."""
        home = _origin(origin)
        target = httpx.URL(url)
        for _ in range(MAX_REDIRECTS + 1):
            sent = dict(headers)
            if authorization and _origin(target) == home:
                sent["Authorization"] = authorization
            request = self._http.build_request("GET", target, headers=sent)
            response = self._http.send(request, stream=True)
            location = response.headers.get("location")
            if response.status_code not in _REDIRECTS or not location:
                return response
            response.close()
            target = target.join(location)
            if target.scheme not in ("http", "https"):
                raise RegistryError(f"{url} redirected to a non-HTTP URL {str(target)[:200]}")
        raise RegistryError(f"more than {MAX_REDIRECTS} redirects from {url}")

    def _scheme(self, endpoint: Endpoint) -> str:
        if endpoint.scheme:
            return endpoint.scheme
        with self._schemes_lock:
            return self._schemes.get(endpoint.host, "https")

    def _downgrade(self, endpoint: Endpoint, scheme: str, error: httpx.TransportError) -> bool:
        """Switch a loopback host to plain HTTP when its server does not speak TLS."""
        if endpoint.scheme or scheme != "https" or not is_loopback(endpoint.host):
            return False
        cause = _ssl_cause(error)
        if cause is None or isinstance(cause, ssl.SSLCertVerificationError):
            return False
        with self._schemes_lock:
            self._schemes[endpoint.host] = "http"
        return True

    def _may_send_secrets(self, url: httpx.URL) -> bool:
        """Credentials travel over HTTPS, or to loopback and ``plain_http`` hosts."""
        netloc = url.netloc.decode().lower()
        return (
            url.scheme == "https"
            or is_loopback(netloc)
            or netloc in self._plain_http
            or url.host.lower() in self._plain_http
        )

    def _creds(self, endpoint: Endpoint) -> tuple[str, str] | None:
        return self._credentials.lookup(endpoint.host if endpoint.mirror else endpoint.registry)

    def _authorization(self, endpoint: Endpoint, repository: str, base: str) -> str | None:
        """The Authorization header to send up front, learnt from an earlier challenge."""
        with self._auth.lock:
            challenge = self._auth.challenges.get((base, repository))
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            creds = self._creds(endpoint)
            return _basic(creds) if creds else None
        key = _token_key(challenge, repository)
        with self._auth.lock:
            token = self._auth.tokens.get(key)
        if token is None or token.expires <= time.monotonic():
            return None  # the 401 that follows fetches a fresh one
        return f"Bearer {token.value}"

    def _on_challenge(
        self, endpoint: Endpoint, repository: str, base: str, header: str, where: str
    ) -> None:
        challenge = parse_challenge(header) if header else None
        if challenge is None or challenge.scheme not in ("basic", "bearer"):
            raise AuthError(
                f"{where} requires authentication (HTTP 401) but offers no usable challenge "
                f"({header[:100] or 'no WWW-Authenticate header'}); quay supports Basic and "
                "Bearer token authentication"
            )
        with self._auth.lock:
            self._auth.challenges[(base, repository)] = challenge
        if challenge.scheme == "basic":
            if self._creds(endpoint) is None:
                raise AuthError(_needs_credentials(endpoint, repository, self._settings))
            if not self._may_send_secrets(httpx.URL(base)):
                raise AuthError(f"{where} asks for a password over plain HTTP; refused")
            return
        self._fetch_token(endpoint, repository, challenge, where)

    def _fetch_token(
        self, endpoint: Endpoint, repository: str, challenge: Challenge, where: str
    ) -> None:
        realm = challenge.params.get("realm", "")
        try:
            realm_url = httpx.URL(realm)
        except httpx.InvalidURL:
            realm_url = httpx.URL("")
        if realm_url.scheme not in ("http", "https") or not realm_url.host:
            raise AuthError(f"{where} sent a Bearer challenge with a bad realm {realm[:200]!r}")
        params = {"scope": f"repository:{repository}:pull"}
        if challenge.params.get("service"):
            params["service"] = challenge.params["service"]
        creds = self._creds(endpoint)
        headers: dict[str, str] = {}
        if creds is not None:
            if not self._may_send_secrets(realm_url):
                raise AuthError(
                    f"{where}: the token realm {realm} is plain HTTP; refusing to send a password"
                )
            headers["Authorization"] = _basic(creds)
        response = self._token_response(realm_url, params, headers, where)
        if response.status_code in (401, 403):
            if creds is None:
                raise AuthError(_needs_credentials(endpoint, repository, self._settings))
            raise AuthError(
                f"token server {realm} refused the credentials of user {creds[0]!r} for {where} "
                f"(HTTP {response.status_code}); check the auth file"
            )
        if response.status_code != 200:
            raise RegistryError(
                f"token server {realm} answered HTTP {response.status_code} for {where}"
            )
        token, lifetime = _parse_token(response)
        if token is None:
            raise RegistryError(f"token server {realm} sent no token for {where}")
        with self._auth.lock:
            # A little early, so that a token does not expire between the check and its use.
            expires = time.monotonic() + lifetime - min(5.0, lifetime / 4)
            self._auth.tokens[_token_key(challenge, repository)] = _Token(token, expires)

    def _token_response(
        self, realm: httpx.URL, params: dict[str, str], headers: dict[str, str], where: str
    ) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = self._http.get(realm, params=params, headers=headers)
            except httpx.TransportError as error:
                if attempt + 1 < self._retry.attempts and not _cert_error(error):
                    time.sleep(self._retry.delay(attempt))
                    attempt += 1
                    continue
                message = _transport_message(error, f"token server {realm}")
                raise RegistryError(f"{message} (needed for {where})") from None
            if response.status_code >= 500 and attempt + 1 < self._retry.attempts:
                time.sleep(self._retry.delay(attempt))
                attempt += 1
                continue
            return response


class BlobStream:
    """An open blob download. Iterate :meth:`chunks`; close it (or use ``with``)."""

    def __init__(self, response: httpx.Response, offset: int, where: str) -> None:
        self._response = response
        self.offset = offset
        """Byte offset of the first byte the stream yields."""
        self.where = where
        length = response.headers.get("content-length")
        self.length: int | None = int(length) if length and length.isdigit() else None
        """Bytes the registry announced for this response (from ``offset``), if it did."""

    def chunks(self) -> Iterator[bytes]:
        """The body, as sent, in the pieces it arrives in (none is held back, so everything
        received before a break counts). A broken connection raises
        :class:`InterruptedTransferError`."""
        try:
            yield from self._response.iter_raw()
        except httpx.TransportError as error:
            raise InterruptedTransferError(
                f"the connection to {self.where} broke during a download: "
                f"{error or type(error).__name__}"
            ) from None

    def close(self) -> None:
        self._response.close()

    def __enter__(self) -> BlobStream:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


# --- helpers -------------------------------------------------------------------------------------

_T = TypeVar("_T")


def _path(value: str | Path) -> Path:
    return Path(value)


def _origin(url: httpx.URL | str) -> tuple[str, str, int | None]:
    url = httpx.URL(url)
    port = url.port or {"http": 80, "https": 443}.get(url.scheme)
    return url.scheme, url.host.lower(), port


def _basic(creds: tuple[str, str]) -> str:
    return "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()


def _token_key(challenge: Challenge, repository: str) -> tuple[str, str, str]:
    return (
        challenge.params.get("realm", ""),
        challenge.params.get("service", ""),
        f"repository:{repository}:pull",
    )


def _parse_token(response: httpx.Response) -> tuple[str | None, float]:
    try:
        document = response.json()
    except ValueError:
        return None, DEFAULT_TOKEN_LIFETIME
    if not isinstance(document, dict):
        return None, DEFAULT_TOKEN_LIFETIME
    token = document.get("token") or document.get("access_token")
    lifetime = DEFAULT_TOKEN_LIFETIME
    expires_in = document.get("expires_in")
    if isinstance(expires_in, int | float) and not isinstance(expires_in, bool) and expires_in > 0:
        lifetime = float(expires_in)
    return (token if isinstance(token, str) and token else None), lifetime


def _tls_context() -> ssl.SSLContext:
    """The system's CAs for verifying registries.

    ``ssl.create_default_context()`` parses the whole CA bundle up front (about 60 ms and 1.7 MiB
    here, at every agent start that pulls). Where the system keeps a hashed CA directory
    (Debian's /etc/ssl/certs, kept by update-ca-certificates from the same sources as the
    bundle), OpenSSL looks a CA up there only when a chain needs it: the same trust, loaded on
    demand. A ``SSL_CERT_FILE`` naming another bundle than the system's, or no hashed directory:
    the default context, as before.
    """
    paths = ssl.get_default_verify_paths()
    if _other_bundle(paths) or paths.capath is None or not _hashed_directory(paths.capath):
        return ssl.create_default_context()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies chains and host names
    context.load_verify_locations(capath=paths.capath)
    return context


def _other_bundle(paths: ssl.DefaultVerifyPaths) -> bool:
    chosen = os.environ.get(paths.openssl_cafile_env)
    if not chosen:
        return False
    try:
        return not os.path.samefile(chosen, paths.openssl_cafile)
    except OSError:
        return True


def _hashed_directory(path: str) -> bool:
    """A directory with OpenSSL's ``HASH.0`` names (``c_rehash``/``openssl rehash``)."""
    try:
        with os.scandir(path) as entries:
            return any(len(e.name) == 10 and e.name.endswith(".0") for e in entries)
    except OSError:
        return False


def _ssl_cause(error: BaseException) -> ssl.SSLError | None:
    seen: BaseException | None = error
    for _ in range(8):
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _cert_error(error: BaseException) -> bool:
    return isinstance(_ssl_cause(error), ssl.SSLCertVerificationError)


def _transport_message(error: httpx.TransportError, where: str) -> str:
    cause = _ssl_cause(error)
    if isinstance(cause, ssl.SSLCertVerificationError):
        return (
            f"the TLS certificate of {where} is not trusted ({cause.verify_message}); "
            "add the CA that signed it to registries.ca_files in the settings"
        )
    if cause is not None:
        return f"TLS with {where} failed: {cause.reason or cause}"
    if isinstance(error, httpx.TimeoutException):
        return f"{where} did not answer in time ({type(error).__name__})"
    return f"cannot reach {where}: {error or type(error).__name__}"


def _read_capped(response: httpx.Response, cap: int, endpoint: Endpoint, repository: str) -> bytes:
    where = f"{endpoint.display}, repository {repository}"
    length = response.headers.get("content-length")
    if length and length.isdigit() and int(length) > cap:
        raise ManifestError(f"manifest from {where} is {length} bytes, over the {cap} cap")
    body = bytearray()
    try:
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > cap:
                raise ManifestError(f"manifest from {where} is over the {cap} byte cap")
    except httpx.TransportError as error:
        raise InterruptedTransferError(
            f"the connection to {where} broke while reading a manifest: {error}"
        ) from None
    return bytes(body)


def _range_start(response: httpx.Response) -> int | None:
    """Where a 206 response starts; None if it is not a usable byte range of the raw blob."""
    if response.status_code != 206:
        return None
    if response.headers.get("content-encoding", "identity").lower() != "identity":
        return None
    match = _CONTENT_RANGE.fullmatch(response.headers.get("content-range", "").strip())
    return int(match.group(1)) if match else None


def _error_detail(response: httpx.Response) -> str:
    """The registry's own words (the distribution ``errors`` array), bounded."""
    body = bytearray()
    try:
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > MAX_ERROR_BODY:
                break
    except httpx.HTTPError:
        pass
    try:
        document = json.loads(bytes(body[:MAX_ERROR_BODY]))
    except ValueError:
        return ""
    errors = document.get("errors") if isinstance(document, dict) else None
    if not isinstance(errors, list):
        return ""
    words = [
        str(e.get("message") or e.get("code"))
        for e in errors
        if isinstance(e, dict) and (e.get("message") or e.get("code"))
    ]
    return "; ".join(words)[:300]


def _what(path: str) -> str:
    """``manifest latest`` or ``blob sha256:…`` from a request path."""
    parts = path.rsplit("/", 2)
    if len(parts) == 3 and parts[1] in ("manifests", "blobs"):
        return f"{parts[1][:-1]} {parts[2]}"
    return path


def _needs_credentials(endpoint: Endpoint, repository: str, settings: RegistrySettings) -> str:
    host = endpoint.host if endpoint.mirror else endpoint.registry
    source = (
        f"the auth file {settings.auth_file}"
        if settings.auth_file
        else "an auth file (registries.auth_file in the settings, Docker config.json format)"
    )
    return (
        f"{endpoint.display} requires credentials to pull {repository} and none are configured "
        f"for {host}: add them to {source}"
    )


def _status_error(
    status: int,
    *,
    detail: str,
    path: str,
    where: str,
    has_credentials: bool,
    settings: RegistrySettings,
) -> RegistryError:
    what = _what(path)
    said = f": {detail}" if detail else ""
    if status == 401:
        if has_credentials:
            return AuthError(
                f"{where} refused our credentials for {what} (HTTP 401{said}); "
                "check the user and password in the auth file"
            )
        source = settings.auth_file or "registries.auth_file"
        return AuthError(
            f"{where} requires credentials for {what} (HTTP 401{said}); add them to {source}"
        )
    if status == 403:
        return AuthError(
            f"{where} denied access to {what} (HTTP 403{said}); the credentials may lack "
            "permission to pull it"
        )
    if status == 404:
        return NotFoundError(
            f"{what} not found on {where} (HTTP 404{said}); check the image name and tag"
        )
    if status == 429:
        return RegistryError(f"{where} is rate limiting us (HTTP 429{said}); try again later")
    return RegistryError(f"{where} answered HTTP {status} for {what}{said}")
