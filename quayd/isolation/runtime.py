"""The OCI runtime driver: crun (default) or runc behind one small interface.

quay runs each container through the runtime's two-step, detached lifecycle:

* ``create`` (``crun create --bundle B --pid-file P ID``) forks the container's init, which waits
  on the runtime's exec fifo, and returns. The init is *not* quayd's child for long: the runtime
  process that forked it exits, so it is reparented — to quayd when quayd is a child subreaper
  (:func:`become_subreaper`), otherwise to PID 1. Either way it does not die with quayd: no parent
  death signal, its own cgroup (its systemd scope), and its stdio is not a pipe quayd must drain.
* ``start`` runs the user's process; ``state``, ``kill``, ``delete`` and ``exec`` are the runtime's
  commands of the same names.

**Cgroups.** With ``systemd_cgroup=True`` the runtime is run with ``--systemd-cgroup`` and asks
systemd (over D-Bus) for a transient scope; the spec's ``linux.cgroupsPath`` is
``quay.slice:quay:NAME``, so the container lives in ``quay-NAME.scope`` inside ``quay.slice``.
Scope properties (``MemoryMax``, ``TasksMax`` …, shown by ``systemctl show``) come from the spec's
``org.systemd.property.*`` annotations, which crun and runc both pass to systemd; the runtime also
writes the spec's ``linux.resources`` into the cgroup files itself (crun in a ``container`` child
cgroup on v1, runc in the scope's own).

**Runtime state** lives under quay's run dir (``--root RUN_DIR/crun`` or ``RUN_DIR/runc``), on
tmpfs: it is gone after a reboot, as the containers are.

**Stdio and logs.** The container's stdout and stderr are the file descriptors given to
:meth:`OciRuntime.create` (the runtime passes its own stdio to the container when there is no
terminal). Two sinks that never block the container on quayd:

* :func:`journald_stream` — a connection to journald's stdout-stream socket, set up exactly as
  ``sd_journal_stream_fd(3)`` does (identifier ``quay-NAME``, unit id ``quay-NAME.scope``).
  journald reads it whether or not quayd runs. It attributes each line to the process that wrote
  it (``SO_PASSCRED``; journald 246+), so a container's entries carry
  ``_SYSTEMD_UNIT=quay-NAME.scope``, its slice, cgroup and ``_PID``, and the header's unit id
  stands in for a writer that was gone before journald read its line: ``journalctl -u
  quay-NAME.scope`` finds them all. Custom fields (``CONTAINER_ID=``, ``QUAY_UNIT=``) are out of
  reach: the stream protocol has none, and systemd 252 refuses ``LogExtraFields`` on scopes; only
  a native-protocol relay process could add them.
* :func:`open_log_file` — an ``O_APPEND`` file per container. The container writes it directly,
  so nothing is lost while quayd is down; :func:`trim_log_file` caps it in place when quayd runs
  (``FALLOC_FL_COLLAPSE_RANGE`` drops whole blocks from the front while writers keep appending;
  where the filesystem cannot, the file is emptied).

Runtime errors of ``create`` go to a JSON log file (``--log``), read back into the
:class:`RuntimeCommandError`; the other commands' stderr is captured. (runc also prints a fatal
error of ``create`` on its stderr, which is then the container's log: harmless, and rare.)

**Exits without polling.** :class:`ExitWatcher` holds a pidfd (``pidfd_open``) per container init
in one selector; it becomes readable when the process ends. When quayd is the init's parent (a
subreaper that was running when the container was created), the exit status is read with
``waitid(P_PIDFD)``. After an agent restart the inits are PID 1's children, and the exit status of
a container that ended — while quayd was down, or later — is reported as unknown
(``Exit.code is None``): the kernel gives it only to the parent.

The runtime is run with a scrubbed environment: quayd's own ``NOTIFY_SOCKET`` (quayd is a
``Type=notify`` service) would make crun proxy the container's readiness to systemd as quayd's, and
block ``create`` until then.
"""

from __future__ import annotations

import ctypes
import enum
import errno
import json
import os
import re
import selectors
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from quayd.isolation.errors import IsolationError
from quayd.isolation.exec_io import (
    ExecGroup,
    close_pipes,
    communicate,
    process_file,
    reap_stray_zombies,
)
from quayd.isolation.exec_process import ExecProcessError, exec_process

DEFAULT_RUN_DIR = Path("/run/quay")
JOURNAL_STDOUT_SOCKET = Path("/run/systemd/journal/stdout")

# Long enough for a cold cgroup/systemd setup on a loaded machine; short enough to surface a hang.
CREATE_TIMEOUT = 60.0
COMMAND_TIMEOUT = 30.0

# Runtime ids quay uses are unit names; refusing anything else keeps ids out of option syntax.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
# What a supervisor sets for itself and the runtime must not take as its own.
_SCRUBBED_ENV = (
    "NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "WATCHDOG_USEC", "WATCHDOG_PID",
)  # fmt: skip

_PR_SET_CHILD_SUBREAPER = 36
_FALLOC_FL_COLLAPSE_RANGE = 0x08


class RuntimeCommandError(IsolationError):
    """The OCI runtime refused or failed a command; the message carries the runtime's own."""

    def __init__(self, message: str, *, returncode: int | None = None) -> None:
        super().__init__(message)
        self.returncode = returncode


class ContainerNotFoundError(RuntimeCommandError):
    """The runtime has no container of that id."""


class Status(enum.StrEnum):
    """The OCI runtime spec's container statuses."""

    CREATING = "creating"
    CREATED = "created"
    RUNNING = "running"
    STOPPED = "stopped"
    PAUSED = "paused"


@dataclass(frozen=True)
class State:
    """What the runtime reports about one container (``crun state ID``)."""

    id: str
    status: Status
    pid: int | None
    """The container's init process, None once it stopped (the runtime reports 0)."""
    bundle: Path


@dataclass(frozen=True)
class Stdio:
    """The container's standard streams, as open file descriptors; stdin None is /dev/null."""

    stdout: int
    stderr: int
    stdin: int | None = None


class Runtime(Protocol):
    """What the rest of quay needs from an OCI runtime."""

    name: str
    systemd_cgroup: bool
    """The container's cgroup is a systemd scope (``--systemd-cgroup``), else the runtime's own."""

    def create(
        self,
        container_id: str,
        bundle: Path,
        *,
        pid_file: Path,
        stdio: Stdio,
        console_socket: Path | None = None,
    ) -> int: ...
    def start(self, container_id: str) -> None: ...
    def state(self, container_id: str) -> State | None: ...
    def list_ids(self) -> list[str]: ...
    def kill(
        self, container_id: str, sig: int = signal.SIGTERM, *, all_processes: bool = False
    ) -> None: ...
    def delete(self, container_id: str, *, force: bool = False) -> None: ...
    def exec(
        self,
        container_id: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        timeout: float | None = None,
        stdin: bytes | None = None,
    ) -> subprocess.CompletedProcess[bytes]: ...


class OciRuntime:
    """crun or runc, run as a command per operation. Both take the same options for these."""

    def __init__(
        self,
        name: str,
        *,
        binary: str | Path | None = None,
        run_dir: Path = DEFAULT_RUN_DIR,
        systemd_cgroup: bool = True,
    ) -> None:
        self.name = name
        self.binary = str(binary or name)
        self.root = run_dir / name
        self.systemd_cgroup = systemd_cgroup

    def __repr__(self) -> str:
        driver = "systemd" if self.systemd_cgroup else "cgroupfs"
        return f"OciRuntime({self.name!r}, root={str(self.root)!r}, cgroups={driver})"

    # --- lifecycle -------------------------------------------------------------------------------

    def create(
        self,
        container_id: str,
        bundle: Path,
        *,
        pid_file: Path,
        stdio: Stdio,
        console_socket: Path | None = None,
    ) -> int:
        """Create the container (its init waits for :meth:`start`); return the init's pid.

        With ``console_socket`` (a bundle whose process has a terminal) the runtime sends the
        pty's master there (:class:`ConsoleSocket`); ``stdio`` is then only the runtime's own.
        """
        _check_id(container_id)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        log = bundle / f"{self.name}.log"
        log.unlink(missing_ok=True)
        pid_file.unlink(missing_ok=True)
        console = ["--console-socket", str(console_socket)] if console_socket is not None else []
        argv = [
            *self._global(),
            "--log", str(log), "--log-format", "json",
            "create", "--bundle", str(bundle), "--pid-file", str(pid_file), *console,
            container_id,
        ]  # fmt: skip
        done = self._invoke(
            argv,
            what=f"create {container_id}",
            timeout=CREATE_TIMEOUT,
            stdin=stdio.stdin if stdio.stdin is not None else subprocess.DEVNULL,
            stdout=stdio.stdout,
            stderr=stdio.stderr,
        )
        if done.returncode != 0:
            raise RuntimeCommandError(
                f"{self.name} create {container_id} failed: {_read_json_log(log)}",
                returncode=done.returncode,
            )
        try:
            return int(pid_file.read_text().strip())
        except (OSError, ValueError) as error:
            raise RuntimeCommandError(
                f"{self.name} create {container_id}: no pid in {pid_file}: {error}"
            ) from error

    def start(self, container_id: str) -> None:
        """Run the user's process in a created container."""
        _check_id(container_id)
        self._run("start", container_id)

    def state(self, container_id: str) -> State | None:
        """The container's state, or None when the runtime does not know it."""
        _check_id(container_id)
        if not (self.root / container_id).is_dir():
            return None
        try:
            done = self._run("state", container_id)
        except RuntimeCommandError:
            if not (self.root / container_id).is_dir():  # deleted meanwhile
                return None
            raise
        return _parse_state(done.stdout, self.name)

    def list_ids(self) -> list[str]:
        """Ids of the containers in this runtime's root (quay's own, as the root is quay's)."""
        try:
            return sorted(entry.name for entry in self.root.iterdir() if entry.is_dir())
        except FileNotFoundError:
            return []

    def kill(
        self, container_id: str, sig: int = signal.SIGTERM, *, all_processes: bool = False
    ) -> None:
        """Send ``sig`` to the container's init (or, with ``all_processes``, to all of them)."""
        _check_id(container_id)
        name = signal.Signals(sig).name
        self._run("kill", container_id, options=["--all"] if all_processes else [], after=[name])

    def delete(self, container_id: str, *, force: bool = False) -> None:
        """Remove the runtime's state (and cgroup/scope); ``force`` kills a running container."""
        _check_id(container_id)
        self._run("delete", container_id, options=["--force"] if force else [])

    def exec(
        self,
        container_id: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        timeout: float | None = None,
        stdin: bytes | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``argv`` in the running container and wait for it; output is captured.

        The process is the container's own with ``argv`` (:func:`exec_process.exec_process`:
        its no_new_privs, capabilities, rlimits, user and environment), given to the runtime as
        ``--process``. The returned ``returncode`` is the command's. On ``timeout`` the command
        is SIGKILLed (its pid comes from the runtime's ``--pid-file``; killing only the runtime
        process would leave it running inside the container), and :class:`RuntimeCommandError`
        is raised. Either way, once it ends, what is left of its process group (its background
        children) is SIGKILLed too, unlike after ``docker exec``: they would stay in the
        container for good, holding its pids limit. A process that left the group (``setsid``)
        stays.
        """
        process = self.exec_process(container_id, argv, env=env, cwd=cwd, user=user)
        self.root.mkdir(parents=True, exist_ok=True)
        pid_file = self.root / f".exec-{container_id}-{os.getpid()}-{threading.get_native_id()}"
        process_fd = process_file(process)
        command = [
            *self._global(), "exec", "--process", f"/proc/self/fd/{process_fd}",
            "--pid-file", str(pid_file), container_id,
        ]  # fmt: skip
        try:
            runner = subprocess.Popen(
                command,
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=_runtime_env(),
                pass_fds=(process_fd,),
            )
        except OSError as error:
            os.close(process_fd)
            pid_file.unlink(missing_ok=True)
            raise RuntimeCommandError(f"cannot run {self.binary}: {error}") from error
        group = ExecGroup(pid_file)
        try:
            stdout, stderr = communicate(runner, stdin, timeout, group=group)
        except subprocess.TimeoutExpired as error:
            group.kill()
            # The runtime reaps the command and exits; killed only if it does not, since the
            # command's zombie would otherwise pass to quayd and hold the container's end.
            try:
                runner.wait(timeout=COMMAND_TIMEOUT)
            except subprocess.TimeoutExpired:
                runner.kill()
                runner.wait()
            close_pipes(runner)
            raise RuntimeCommandError(
                f"{self.name} exec in {container_id}: {argv[0]} took over {timeout} s (killed)"
            ) from error
        finally:
            os.close(process_fd)
            pid_file.unlink(missing_ok=True)
            reap_stray_zombies()
        return subprocess.CompletedProcess(command, runner.returncode, stdout, stderr)

    def exec_process(
        self,
        container_id: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        terminal: bool = False,
    ) -> dict[str, Any]:
        """The OCI process of an exec of ``argv``: the container's own (read from the
        ``config.json`` of its bundle) with ``argv`` and the given changes."""
        _check_id(container_id)
        if not argv:
            raise RuntimeCommandError("exec needs a command")
        state = self.state(container_id)
        if state is None:
            raise ContainerNotFoundError(f"{self.name} has no container {container_id}")
        config = state.bundle / "config.json"
        try:
            spec = json.loads(config.read_bytes())
        except (OSError, ValueError) as error:
            raise RuntimeCommandError(
                f"exec in {container_id}: cannot read the container's {config}: {error}"
            ) from error
        if not isinstance(spec, dict):
            raise RuntimeCommandError(f"exec in {container_id}: {config} is not a JSON object")
        try:
            return exec_process(spec, argv, env=env, cwd=cwd, user=user, terminal=terminal)
        except ExecProcessError as error:
            raise RuntimeCommandError(f"exec in {container_id}: {error}") from error

    def exec_argv(self, container_id: str, process_path: str, *, tty: bool = False) -> list[str]:
        """The command line that runs the process in ``process_path`` (:meth:`exec_process`,
        written with :func:`process_file`) in the container attached to the caller's own stdio
        (``quayctl exec -it`` executes it): with ``tty``, the runtime makes a terminal in the
        container and relays it to the caller's. Pure: nothing is run."""
        _check_id(container_id)
        tty_option = ["--tty"] if tty else []
        return [*self._global(), "exec", *tty_option, "--process", process_path, container_id]

    # --- plumbing --------------------------------------------------------------------------------

    def _global(self) -> list[str]:
        return [
            self.binary,
            "--root", str(self.root),
            *(["--systemd-cgroup"] if self.systemd_cgroup else []),
        ]  # fmt: skip

    def _run(
        self,
        command: str,
        container_id: str,
        *,
        options: Sequence[str] = (),
        after: Sequence[str] = (),
    ) -> subprocess.CompletedProcess[str]:
        """``RUNTIME [global options] COMMAND [options] ID [after]``, stderr captured."""
        args = [*options, container_id, *after]
        done = self._invoke(
            [*self._global(), command, *args],
            what=f"{command} {' '.join(args)}",
            timeout=COMMAND_TIMEOUT,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            message = _clean_stderr(done.stderr)
            # Both runtimes keep a directory per container in their root; its absence is the
            # one sure sign of an unknown id (their messages differ by runtime and command).
            error_type = (
                RuntimeCommandError
                if (self.root / container_id).is_dir()
                else ContainerNotFoundError
            )
            raise error_type(
                f"{self.name} {command} {' '.join(args)} failed: {message}",
                returncode=done.returncode,
            )
        return done

    def _invoke(
        self, argv: list[str], *, what: str, timeout: float, **options: Any
    ) -> subprocess.CompletedProcess[Any]:
        """Run the runtime binary; a hang or a missing binary becomes a RuntimeCommandError."""
        try:
            return subprocess.run(argv, env=_runtime_env(), timeout=timeout, check=False, **options)
        except subprocess.TimeoutExpired as error:
            raise RuntimeCommandError(
                f"{self.name} {what}: no answer in {timeout:.0f} s"
            ) from error
        except OSError as error:
            raise RuntimeCommandError(f"cannot run {self.binary}: {error}") from error


class ConsoleSocket:
    """The listening end of ``--console-socket``: the runtime connects during ``create`` and
    sends the master of the container's pty (``SCM_RIGHTS``), which :meth:`receive` returns.

    The socket file is mode 0600 (root's only). A connection waits in the backlog until it is
    accepted, so :meth:`receive` is called once ``create`` has returned: no thread is needed.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.unlink(missing_ok=True)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            os.fchmod(self._sock.fileno(), 0o600)
            self._sock.bind(str(path))
            self._sock.listen(1)
        except BaseException:
            self._sock.close()
            raise

    def receive(self, timeout: float = COMMAND_TIMEOUT) -> int:
        """The pty master the runtime sent (the caller owns it); RuntimeCommandError if none."""
        self._sock.settimeout(timeout)
        try:
            connection, _ = self._sock.accept()
        except TimeoutError as error:
            raise RuntimeCommandError(f"no terminal on {self.path} within {timeout:g} s") from error
        with connection:
            connection.settimeout(timeout)
            try:
                _, fds, _, _ = socket.recv_fds(connection, 4096, 4)
            except OSError as error:
                raise RuntimeCommandError(f"no terminal received on {self.path}: {error}") from None
        if not fds:
            raise RuntimeCommandError(f"the runtime sent no terminal on {self.path}")
        for extra in fds[1:]:
            os.close(extra)
        os.set_inheritable(fds[0], False)
        return fds[0]

    def close(self) -> None:
        self._sock.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> ConsoleSocket:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def crun(*, run_dir: Path = DEFAULT_RUN_DIR, systemd_cgroup: bool = True) -> OciRuntime:
    return OciRuntime("crun", run_dir=run_dir, systemd_cgroup=systemd_cgroup)


def runc(*, run_dir: Path = DEFAULT_RUN_DIR, systemd_cgroup: bool = True) -> OciRuntime:
    return OciRuntime("runc", run_dir=run_dir, systemd_cgroup=systemd_cgroup)


def _check_id(container_id: str) -> None:
    if not _ID.fullmatch(container_id):
        raise RuntimeCommandError(
            f"{container_id!r} is not a container id quay uses (letters, digits, '_.-', "
            "at most 128, starting with a letter or digit)"
        )


def _runtime_env() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key not in _SCRUBBED_ENV}


def _parse_state(text: str, runtime: str) -> State:
    try:
        data = json.loads(text)
        pid = int(data.get("pid") or 0)
        return State(
            id=str(data["id"]),
            status=Status(data["status"]),
            pid=pid if pid > 0 else None,
            bundle=Path(data.get("bundle", "")),
        )
    except (ValueError, KeyError, TypeError) as error:
        raise RuntimeCommandError(f"{runtime} state: unreadable answer {text[:200]!r}") from error


def _read_json_log(path: Path) -> str:
    """The error (and warning) messages of a ``--log-format json`` log, or its raw text."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(the runtime wrote no log)"
    messages: list[str] = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            if line.strip():
                messages.append(line.strip())
            continue
        if isinstance(entry, dict) and entry.get("level") in ("error", "fatal", "warning"):
            messages.append(str(entry.get("msg", "")).strip())
    return "; ".join(message for message in messages if message) or text.strip() or "no message"


def _clean_stderr(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # runc prefixes its messages with a logrus header: time="…" level=error msg="…"
    cleaned = [re.sub(r'^time="[^"]*" level=\w+ msg="(.*)"$', r"\1", line) for line in lines]
    return "; ".join(cleaned) or "no message"


# --- process lifetime ----------------------------------------------------------------------------


def become_subreaper() -> None:
    """Make this process adopt orphaned descendants (prctl PR_SET_CHILD_SUBREAPER).

    Call once at agent start: container inits created afterwards are reparented to quayd when
    their runtime process exits, so :class:`ExitWatcher` can read their exit status. It does not
    tie their lifetime to quayd's: when quayd exits, they are reparented to PID 1 and go on.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(code)}")


@dataclass(frozen=True)
class Exit:
    """How a container's init ended. ``code`` and ``signal`` both None: unknown."""

    pid: int
    code: int | None = None
    signal: int | None = None

    @property
    def known(self) -> bool:
        return self.code is not None or self.signal is not None

    def describe(self) -> str:
        if self.signal is not None:
            try:
                return f"killed by {signal.Signals(self.signal).name}"
            except ValueError:
                return f"killed by signal {self.signal}"
        if self.code is not None:
            return f"exited with status {self.code}"
        return "ended; exit status unknown (it was not quayd's child)"


class ExitWatcher:
    """Learn of container exits through pidfds in one selector: no polling, no SIGCHLD handler.

    ``fileno()`` is the selector's own descriptor, readable when any watched process has ended,
    so an asyncio loop can ``add_reader`` it and call :meth:`collect` then.
    """

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._pidfds: dict[int, int] = {}
        self._gone: list[Exit] = []

    def watch(self, pid: int) -> None:
        """Watch ``pid``. A process already gone is reported by the next :meth:`collect`."""
        if pid in self._pidfds:
            return
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            self._gone.append(Exit(pid))
            return
        self._pidfds[pid] = pidfd
        self._selector.register(pidfd, selectors.EVENT_READ, pid)

    def unwatch(self, pid: int) -> None:
        pidfd = self._pidfds.pop(pid, None)
        if pidfd is not None:
            self._selector.unregister(pidfd)
            os.close(pidfd)

    def fileno(self) -> int:
        return self._selector.fileno()

    def send_signal(self, pid: int, sig: int) -> bool:
        """Signal a watched process through its pidfd (never a process that reused the pid);
        False when it is not watched or has already ended."""
        pidfd = self._pidfds.get(pid)
        if pidfd is None:
            return False
        try:
            signal.pidfd_send_signal(pidfd, sig)
        except ProcessLookupError:
            return False
        return True

    def watching(self) -> list[int]:
        return sorted(self._pidfds)

    def collect(self, timeout: float | None = 0) -> list[Exit]:
        """The watched processes that ended, waiting up to ``timeout`` s (None: until one does)."""
        self._poll(0 if self._gone else timeout)
        ended, self._gone = self._gone, []
        return ended

    def wait_for(self, pid: int, timeout: float) -> Exit | None:
        """Wait until ``pid`` ends (None after ``timeout`` s); other exits stay for collect()."""
        self.watch(pid)
        deadline = time.monotonic() + timeout
        while True:
            for index, ended in enumerate(self._gone):
                if ended.pid == pid:
                    return self._gone.pop(index)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._poll(remaining)

    def _poll(self, timeout: float | None) -> None:
        for key, _ in self._selector.select(timeout):
            pid = int(key.data)
            self._gone.append(_reap(pid, key.fd))
            self.unwatch(pid)

    def close(self) -> None:
        for pid in list(self._pidfds):
            self.unwatch(pid)
        self._selector.close()

    def __enter__(self) -> ExitWatcher:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _reap(pid: int, pidfd: int) -> Exit:
    try:
        result = os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG)
    except ChildProcessError:  # not our child: PID 1 (or another) reaps it
        return Exit(pid)
    if result is None:
        # The pidfd said it ended, so it is about to be waitable: wait rather than leave a
        # zombie behind (no one else reaps a subreaper's adopted child).
        try:
            result = os.waitid(os.P_PIDFD, pidfd, os.WEXITED)
        except ChildProcessError:
            return Exit(pid)
        if result is None:
            return Exit(pid)
    if result.si_code == os.CLD_EXITED:
        return Exit(pid, code=result.si_status)
    return Exit(pid, signal=result.si_status)


# --- logs ----------------------------------------------------------------------------------------


def journald_running(socket_path: Path = JOURNAL_STDOUT_SOCKET) -> bool:
    return socket_path.is_socket()


def journald_stream(
    identifier: str,
    *,
    unit_name: str | None = None,
    priority: int = 6,
    socket_path: Path = JOURNAL_STDOUT_SOCKET,
) -> int:
    """A write-only stream to journald, as ``sd_journal_stream_fd(3)`` makes it; caller closes.

    journald takes each line as an entry with ``SYSLOG_IDENTIFIER=identifier`` and the given
    priority (6: info). Raises OSError when journald does not listen.

    Who an entry is attributed to (journald 246 and later; checked on 252): journald reads the
    stream with ``SO_PASSCRED`` and takes the ``_PID``, ``_COMM``, ``_SYSTEMD_CGROUP``,
    ``_SYSTEMD_UNIT``, ``_SYSTEMD_SLICE``, ``_SYSTEMD_INVOCATION_ID`` … of each line from the
    process that *wrote* it, not from the process that connected. For a container's output that is
    the container's process, in ``quay-NAME.scope``.

    ``unit_name`` (e.g. ``quay-NAME.scope``) is sent as the header's unit id, which journald keeps
    from root peers only, and uses only when the writer's cgroup cannot be read: the writer
    already exited (and was reaped; a zombie is in the root cgroup on cgroup v1) before journald
    read its line, typically a short-lived container. Then the entry gets
    ``_SYSTEMD_UNIT=unit_name`` (no ``_SYSTEMD_CGROUP``/``_SYSTEMD_SLICE``) instead of no unit at
    all. So ``journalctl -u quay-NAME.scope`` finds all of a container's lines.
    """
    if "\n" in identifier or (unit_name is not None and "\n" in unit_name):
        raise ValueError("a journal identifier or unit name cannot contain a newline")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(socket_path))
        sock.shutdown(socket.SHUT_RD)
        # identifier, unit id (see above), priority, level prefix (``<3>`` at a line's start sets
        # that line's priority), then forward to syslog, kmsg, console.
        header = f"{identifier}\n{unit_name or ''}\n{priority}\n0\n0\n0\n0\n"
        sock.sendall(header.encode())
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        return sock.detach()
    except BaseException:
        sock.close()
        raise


def open_log_file(path: Path) -> int:
    """An append-only descriptor on the container's log file (created 0640); caller closes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)


def trim_log_file(path: Path, max_bytes: int) -> int:
    """Keep ``path`` under ``max_bytes`` while the container may still append to it.

    When it has grown past the cap, the oldest part is dropped so that about half the cap
    remains: in place with ``fallocate(FALLOC_FL_COLLAPSE_RANGE)`` (whole filesystem blocks;
    ext4 and XFS), safe against concurrent ``O_APPEND`` writers. Where that is not supported the
    file is emptied. Returns the bytes dropped.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return 0
    try:
        size = os.fstat(fd).st_size
        if size <= max_bytes:
            return 0
        block = os.fstatvfs(fd).f_bsize or 4096
        drop = (size - max_bytes // 2) // block * block
        libc = ctypes.CDLL(None, use_errno=True)
        libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        if drop > 0 and libc.fallocate(fd, _FALLOC_FL_COLLAPSE_RANGE, 0, drop) == 0:
            return drop
        code = ctypes.get_errno()
        if drop > 0 and code not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise OSError(code, f"collapsing {path}: {os.strerror(code)}")
        os.ftruncate(fd, 0)
        return size
    finally:
        os.close(fd)
