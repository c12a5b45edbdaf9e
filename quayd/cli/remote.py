"""quayctl against another host's agent, over ssh (docs/remote.md), as docker contexts do.

``--host ssh://[user@]host[:port][/path/to/quayd.sock]`` (or ``QUAY_HOST``, or a named
connection: :mod:`quayd.cli.connections`) makes the agent's commands talk to that host's agent:
:class:`SshConnector` runs the system's ``ssh`` (so its config, agent, known_hosts and
ProxyJump all apply) with ``quayctl system dial-stdio`` as the far command, which relays its
stdin and stdout to the agent's socket there (:mod:`quayd.cli.dial_stdio`). ssh's stdin and
stdout are one end of a ``socketpair()``; the HTTP client uses the other end as it uses the
local socket, so streams (``events -f``) work unchanged. The far agent checks the caller with
``SO_PEERCRED`` as it does for a local one: the caller is dial-stdio, which runs as the ssh
user, so that user gets exactly what it gets on that host.

Standard library only (``subprocess`` and ``threading`` load only when a host is used).
"""

from __future__ import annotations

import os
import shlex
import socket
from collections.abc import Mapping, Sequence
from typing import IO, TYPE_CHECKING, NamedTuple

from quayd.cli.client import AgentUnreachableError

if TYPE_CHECKING:
    import subprocess
    import threading

SCHEMES = ("ssh", "unix")
LOCAL = "local"
"""The reserved name of this host's own agent (``--host local``), whatever the default."""
SSH_COMMAND_VARIABLE = "QUAY_SSH_COMMAND"
"""Replaces ``ssh`` (split as a shell would), as ``GIT_SSH_COMMAND``: ``ssh -F FILE``."""
REMOTE_QUAYCTL_VARIABLE = "QUAY_REMOTE_QUAYCTL"
"""The far side's quayctl, where it is not ``quayctl`` on the ssh user's PATH."""
HOST_VARIABLE = "QUAY_HOST"
SSH_FAILED = 255
"""ssh's own exit status for its failures (unreachable, refused, authentication)."""
_STDERR_KEPT = 8192
_FINISH_WAIT = 2.0  # seconds for ssh to end by itself once our end of its socket is closed
_EXPLAIN_WAIT = 5.0  # seconds for ssh to end and say why, once the connection failed


class HostError(Exception):
    """A ``--host`` value, a connection or a URL quayctl cannot use; the message says why."""


class SshTarget(NamedTuple):
    """An agent on another host, reached with ssh."""

    host: str
    user: str | None = None
    port: int | None = None
    socket: str | None = None
    """The far agent's socket, when not the far quayctl's default (the URL's path)."""
    quayctl: str | None = None
    """The far quayctl (a connection's ``quayctl``), else :data:`REMOTE_QUAYCTL_VARIABLE`."""

    @property
    def url(self) -> str:
        user = f"{self.user}@" if self.user else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = f":{self.port}" if self.port is not None else ""
        return f"ssh://{user}{host}{port}{self.socket or ''}"


class UnixTarget(NamedTuple):
    """An agent on this host: its socket (``unix:///run/quay/quayd.sock``), or None for the
    one the global options and the settings file say (``--host local``)."""

    socket: str | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}" if self.socket else LOCAL


Target = SshTarget | UnixTarget


class Destination(NamedTuple):
    """A target with the name it goes by (a connection's name, or the URL as given)."""

    name: str
    target: Target


def parse_url(text: str) -> Target:
    """``ssh://[user@]host[:port][/socket]`` or ``unix:///path``; :class:`HostError` otherwise."""
    from urllib.parse import urlsplit  # noqa: PLC0415 (loaded with http.client already)

    scheme, sep, _ = text.partition("://")
    if not sep or scheme not in SCHEMES:
        raise HostError(
            f"{text!r} is not a host URL: accepted are ssh://[USER@]HOST[:PORT][/SOCKET] "
            "and unix:///PATH/TO/quayd.sock, or a connection's name (quayctl connection ls)"
        )
    if any(c.isspace() for c in text):
        raise HostError(f"{text!r}: a host URL has no spaces")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as error:
        raise HostError(f"{text!r}: {error}; a port is a number from 1 to 65535") from None
    if parts.query or parts.fragment:
        raise HostError(f"{text!r}: a host URL has no ?query or #fragment")
    if scheme == "unix":
        return _unix_target(text, parts.netloc, parts.path)
    if parts.password is not None:
        raise HostError(f"{text!r}: no password in the URL; use a key or ssh-agent")
    return _ssh_target(text, parts.username, parts.hostname, port, parts.path)


def _unix_target(text: str, netloc: str, path: str) -> UnixTarget:
    if netloc or not path.startswith("/"):
        raise HostError(f"{text!r}: a unix URL is unix:// and an absolute path (unix:///run/…)")
    return UnixTarget(path)


def _ssh_target(
    text: str,
    user: str | None,
    host: str | None,
    port: int | None,
    path: str,
) -> SshTarget:
    if not host:
        raise HostError(f"{text!r}: no host; ssh://[USER@]HOST[:PORT]")
    if host.startswith("-") or (user or "").startswith("-"):
        raise HostError(f"{text!r}: a host or user cannot start with '-'")
    if port == 0:
        raise HostError(f"{text!r}: port 0; a port is a number from 1 to 65535")
    if path in ("", "/"):
        return SshTarget(host=host, user=user or None, port=port)
    return SshTarget(host=host, user=user or None, port=port, socket=path)


def ssh_command(environ: Mapping[str, str]) -> list[str]:
    """``ssh``, or :data:`SSH_COMMAND_VARIABLE` split as a shell would."""
    given = environ.get(SSH_COMMAND_VARIABLE, "").strip()
    if not given:
        return ["ssh"]
    try:
        words = shlex.split(given)
    except ValueError as error:
        raise HostError(f"{SSH_COMMAND_VARIABLE}={given!r}: {error}") from None
    return words or ["ssh"]


def far_quayctl(target: SshTarget, environ: Mapping[str, str]) -> str:
    return target.quayctl or environ.get(REMOTE_QUAYCTL_VARIABLE) or "quayctl"


def remote_argv(
    target: SshTarget, environ: Mapping[str, str], global_options: Sequence[str], *command: str
) -> list[str]:
    """The far quayctl's command line: always ``--host local`` (a default connection over
    there must not send it on), the global options given here (they are the far host's), then
    ``command``."""
    return [far_quayctl(target, environ), "--host", LOCAL, *global_options, *command]


def ssh_argv(
    target: SshTarget, far_command: Sequence[str], environ: Mapping[str, str], *, tty: bool
) -> list[str]:
    """``ssh [-t|-T] [-p PORT] [-l USER] -- HOST 'far command'`` (quoted for the far shell)."""
    argv = [*ssh_command(environ), "-t" if tty else "-T"]
    if target.port is not None:
        argv += ["-p", str(target.port)]
    if target.user:
        argv += ["-l", target.user]
    return [*argv, "--", target.host, shlex.join(far_command)]


def dial_command(
    target: SshTarget, environ: Mapping[str, str], global_options: Sequence[str], *, attach: bool
) -> list[str]:
    """The far ``quayctl system dial-stdio``: to the agent's socket, or its attach socket."""
    dial = ["system", "dial-stdio"]
    if target.socket:
        dial += ["--socket", target.socket]
    if attach:
        dial.append("--attach")
    return remote_argv(target, environ, global_options, *dial)


# --- the connector ------------------------------------------------------------------------------


class SshConnector:
    """A :class:`quayd.cli.client.Connector` to an agent over ssh: one ssh process per HTTP
    connection, as docker's ssh connection helper."""

    def __init__(
        self,
        name: str,
        target: SshTarget,
        global_options: Sequence[str] = (),
        *,
        attach: bool = False,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.target = target
        self.environ = dict(os.environ if environ is None else environ)
        far = dial_command(target, self.environ, global_options, attach=attach)
        self.argv = ssh_argv(target, far, self.environ, tty=False)

    @property
    def where(self) -> str:
        return self.name

    def open(self, timeout: float | None) -> SshSession:
        return SshSession(self.name, self.argv, timeout)


class SshSession:
    """ssh running with one end of a socketpair as its stdin and stdout; its stderr kept, to
    say why when the connection fails."""

    def __init__(self, name: str, argv: list[str], timeout: float | None) -> None:
        import subprocess  # noqa: PLC0415
        import threading  # noqa: PLC0415

        self.name = name
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # Its own process group: a Ctrl-C at the terminal is quayctl's to handle (run
            # forwards it to the container over another connection), not ssh's to die of.
            self.process: subprocess.Popen[bytes] = subprocess.Popen(
                argv,
                stdin=theirs.fileno(),
                stdout=theirs.fileno(),
                stderr=subprocess.PIPE,
                process_group=0,
            )
        except OSError as error:
            ours.close()
            raise AgentUnreachableError(
                f"cannot run {argv[0]} to reach {name}: {error.strerror} (is openssh-client "
                f"installed? {SSH_COMMAND_VARIABLE} replaces the command)"
            ) from None
        finally:
            theirs.close()
        ours.settimeout(timeout)
        self._socket = ours
        self.stderr = bytearray()
        assert self.process.stderr is not None
        self.reader: threading.Thread = threading.Thread(
            target=_keep, args=(self.process.stderr, self.stderr), daemon=True
        )
        self.reader.start()

    @property
    def socket(self) -> socket.socket:
        return self._socket

    def unreachable(self, error: BaseException, timeout: float | None) -> str:
        return explain_failure(self.name, error, timeout, self._ended(_EXPLAIN_WAIT), self.said())

    def said(self) -> str:
        self.reader.join(0.5)
        return bytes(self.stderr).decode(errors="replace").strip()

    def _ended(self, wait: float) -> int | None:
        import subprocess  # noqa: PLC0415

        try:
            return self.process.wait(wait)
        except subprocess.TimeoutExpired:
            return None

    def close(self) -> None:
        """Our end is closed: ssh passes the end on and ends; it is stopped if it does not."""
        import subprocess  # noqa: PLC0415

        self._socket.close()
        if self._ended(_FINISH_WAIT) is None:
            self.process.terminate()
            try:
                self.process.wait(_FINISH_WAIT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr is not None:
            self.reader.join(0.5)
            self.process.stderr.close()


def _keep(stream: IO[bytes], into: bytearray) -> None:
    """Read ssh's stderr to its end, keeping its last bytes."""
    while chunk := os.read(stream.fileno(), 4096):
        into += chunk
        del into[:-_STDERR_KEPT]


def explain_failure(
    name: str, error: BaseException, timeout: float | None, status: int | None, said: str
) -> str:
    """What to tell the user when the session to ``name`` failed with ``error``: ssh's own
    failure (exit 255) with what it said, the far dial-stdio's (it names the far socket), or
    a host that does not answer in time."""
    if status == SSH_FAILED:
        words = said or "no message"
        return (
            f"cannot reach {name} over ssh (ssh exited {status}): {words} "
            "(check the host name, the port, your key or ssh-agent, and known_hosts)"
        )
    if status is not None and status != 0:
        words = said or f"exited {status} without a message"
        return f"on {name}: {words}"
    if isinstance(error, TimeoutError) and status is None:
        limit = "in time" if timeout is None else f"within {timeout:g}s"
        return (
            f"{name} did not answer {limit} over ssh (is the host up? ssh may be waiting for a "
            "password or a host key confirmation: quayctl needs key or ssh-agent "
            "authentication and a known host key)" + (f"; ssh said: {said}" if said else "")
        )
    suffix = f"; ssh said: {said}" if said else ""
    return f"the connection to quayd on {name} over ssh ended without an answer{suffix}"
