"""One container, end to end: root filesystem, bundle, runtime, stop policy, OOM kills, removal.

The small high-level API the reconciler drives, over :mod:`spec`, :mod:`rootfs` and
:mod:`runtime`:

* :func:`prepare` mounts the overlay root, resolves the user in it, builds ``config.json`` and
  writes it atomically; it gives a :class:`Bundle`.
* :func:`start` creates and starts the container (stdout and stderr to ``logs``): a
  :class:`Started` with the init's pid. :func:`create` and :func:`start_created` are its two
  halves, for a caller with work to finish before the process runs (:func:`abort` undoes a
  create).
* :func:`stop` sends the stop signal, waits up to the timeout through the pidfd
  :class:`ExitWatcher` (no polling), sends SIGKILL, waits again, reads the OOM-kill count while the
  cgroup still exists, deletes the runtime's state and unmounts the root: a :class:`StopResult`.
  :func:`wait_exit` is the same for a container that ends on its own.
* :func:`remove` deletes whatever the runtime still has, unmounts and removes the container
  directory. Volumes live elsewhere (``volumes_dir``) and stay.

Exit status: known only to the init's parent, i.e. when this process became a subreaper
(:func:`runtime.become_subreaper`) before :func:`start`; otherwise ``code`` and ``signal`` are None
("unknown").

OOM kills: :func:`create` opens a watch on the init's memory cgroup (:mod:`oom`) between the
runtime's create and start, so none is missed, and the waits take its events in as they come;
the count read at exit is the other source. With neither, ``oom`` is None (unknown), never a
guess.
"""

from __future__ import annotations

import contextlib
import json
import selectors
import shutil
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from quayd.atomicfile import replace_file
from quayd.isolation.cgroups import (
    CGROUP_ROOT,
    Driver,
    HostCgroups,
    Usage,
    block_devices,
    host_cgroups,
    usage,
)
from quayd.isolation.errors import IsolationError
from quayd.isolation.leftovers import end_leftovers
from quayd.isolation.oom import OomEvents, oom_kills, oom_verdict, watch_oom
from quayd.isolation.resources import device_paths
from quayd.isolation.rootfs import ROOTFS, mount_rootfs, mounts_below, unmount_rootfs
from quayd.isolation.runtime import (
    ContainerNotFoundError,
    Exit,
    ExitWatcher,
    Runtime,
    RuntimeCommandError,
    Stdio,
)
from quayd.isolation.seccomp_bpf import precompiled
from quayd.isolation.spec import (
    EtcFiles,
    ImageDefaults,
    SpecInputs,
    build_spec,
    stop_signal,
    user_spec,
    volumes_for,
)
from quayd.isolation.users import resolve_user
from quayd.units.model import Unit

CONFIG = "config.json"
PID_FILE = "init.pid"
KILL_TIMEOUT = 10.0
"""How long to wait for the init after SIGKILL before giving up (it cannot normally take long)."""
_NO_WAIT = 1e-6

log = structlog.get_logger("quayd.isolation")
_WARNED: set[str] = set()
"""Units told their io_weight is ignored here."""


class ContainerError(IsolationError):
    """A container cannot be prepared, started, stopped or removed; the message says why."""


@dataclass(frozen=True)
class ContainerConfig:
    """What :func:`prepare` needs besides the name and the layers (see :class:`SpecInputs`)."""

    unit: Unit
    image: ImageDefaults
    etc_files: EtcFiles
    volumes_dir: Path
    cgroup_driver: Driver
    netns: str | None = None
    env_files: Mapping[str, str] | None = None
    notify_socket_dir: Path | None = None
    seccomp: dict[str, Any] | None = None
    seccomp_cache_dir: Path | None = None
    """Where compiled seccomp filters are kept (``STATE_DIR/seccomp``); give it for crun only.
    ``seccomp`` is then compiled once per distinct filter and handed to crun ready-made (the
    ``run.oci.seccomp_bpf_data`` annotation; :mod:`seccomp_bpf`), which saves crun compiling it
    at every create (about 23 ms of 36). runc does not know the annotation. When compiling is
    not possible the JSON filter is used alone, as without this."""
    nofile_ceiling: int | None = None
    swap_limit: bool = True
    terminal: bool = False
    """A terminal for the process (see :attr:`SpecInputs.terminal`); start it with a console
    socket."""
    console_size: tuple[int, int] | None = None
    cgroups: HostCgroups | None = None
    """The host's cgroup facts; None: looked up at :func:`prepare` (:func:`host_cgroups`)."""
    init_binary: Path | None = None
    """The host's static init, run as PID 1 when the unit's ``init`` is on (:mod:`init`)."""


@dataclass(frozen=True)
class Bundle:
    """A prepared container: its directory holds ``config.json`` and the mounted ``rootfs``."""

    name: str
    directory: Path
    stop_signal: str
    """Canonical name (``"SIGTERM"``): the unit's, else the image's, else SIGTERM."""
    stop_timeout: float
    """Seconds between the stop signal and SIGKILL."""
    cgroup_driver: Driver

    @property
    def rootfs(self) -> Path:
        return self.directory / ROOTFS

    @property
    def config(self) -> Path:
        return self.directory / CONFIG


@dataclass(frozen=True)
class Started:
    pid: int
    """The container's init, as this (the host's) pid namespace sees it."""
    id: str
    oom_events: OomEvents | None = field(default=None, compare=False, repr=False)
    """Opened between create and start, so no OOM kill escapes it; pass it to :func:`stop` or
    :func:`wait_exit`, close it after (None on cgroup v2)."""


@dataclass(frozen=True)
class StopResult:
    code: int | None
    """Exit status, or None when it was killed by a signal or the status is unknown."""
    signal: str | None
    """The signal that ended it (``"SIGKILL"``), or None."""
    killed: bool
    """True when :func:`stop` had to send SIGKILL after the timeout."""
    oom: bool | None
    """True when the kernel OOM-killed a process of the container; None: unknown."""

    @property
    def known(self) -> bool:
        return self.code is not None or self.signal is not None


# --- prepare and start ---------------------------------------------------------------------------


def prepare(
    name: str, layers: Sequence[Path], config: ContainerConfig, container_dir: Path
) -> Bundle:
    """Mount the root at ``container_dir/rootfs`` and write ``config.json`` next to it.

    The user is resolved in the mounted root (its ``/etc/passwd``), volume directories are
    created. On any error the root is unmounted again.
    """
    rootfs = mount_rootfs(layers, container_dir)
    directory = rootfs.parent
    try:
        spec = build_spec(_spec_inputs(name, rootfs, config))
        for volume in volumes_for(name, config.unit, config.image, config.volumes_dir):
            volume.host_path.mkdir(mode=0o755, parents=True, exist_ok=True)
        write_atomically(directory / CONFIG, json.dumps(spec, indent=1).encode())
    except BaseException:
        unmount_rootfs(directory)
        raise
    return Bundle(
        name=name,
        directory=directory,
        stop_signal=stop_signal(config.unit, config.image),
        stop_timeout=config.unit.container.stop_timeout.total_seconds(),
        cgroup_driver=config.cgroup_driver,
    )


def _spec_inputs(name: str, rootfs: Path, config: ContainerConfig) -> SpecInputs:
    unit = config.unit
    user = resolve_user(user_spec(unit, config.image), rootfs, image=unit.container.image)
    cgroups = config.cgroups or host_cgroups()
    if unit.resources.io_weight is not None and not cgroups.io_weight and name not in _WARNED:
        # As Docker does with --blkio-weight there: the weight is dropped, the start goes on
        # (said once per unit, not at every restart).
        _WARNED.add(name)
        log.warning(
            "resources.io_weight is ignored: this kernel has no I/O weight for cgroups",
            unit=name,
            needs="cgroup v2 with io.cost, or cgroup v1 with blkio.weight (CFQ)",
        )
    return SpecInputs(
        name=name,
        unit=unit,
        image=config.image,
        rootfs=rootfs,
        netns=config.netns,
        user=user,
        env_files=config.env_files or {},
        etc_files=config.etc_files,
        volumes_dir=config.volumes_dir,
        notify_socket_dir=config.notify_socket_dir,
        cgroup_driver=config.cgroup_driver,
        seccomp=config.seccomp,
        seccomp_bpf=precompiled(config.seccomp, config.seccomp_cache_dir),
        nofile_ceiling=config.nofile_ceiling,
        swap_limit=config.swap_limit,
        terminal=config.terminal,
        console_size=config.console_size,
        init_binary=config.init_binary,
        cgroups=cgroups,
        # The numbers of the I/O limits' devices, looked up here, on the host.
        devices=block_devices(device_paths(unit)),
    )


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``path`` so that a reader sees the old or the new content, never a part. Not
    durable: a bundle matters only while its container runs, which a power cut ends anyway."""
    replace_file(path, data, mode=0o600, durable=False)


def start(
    bundle: Bundle, runtime: Runtime, logs: int | Stdio, *, console_socket: Path | None = None
) -> Started:
    """Create and start the container; its stdout and stderr go to ``logs`` (caller closes).

    A bundle with a terminal needs ``console_socket``: a listening unix socket (see
    :class:`runtime.ConsoleSocket`) the runtime sends the pty's master to. The same as
    :func:`create` then :func:`start_created`, for a caller with nothing to do in between.
    """
    return start_created(create(bundle, runtime, logs, console_socket=console_socket), runtime)


@dataclass(frozen=True)
class Created:
    """A created container whose init waits for :func:`start_created` (or :func:`abort`)."""

    pid: int
    id: str
    oom_events: OomEvents | None = field(default=None, compare=False, repr=False)


def create(
    bundle: Bundle, runtime: Runtime, logs: int | Stdio, *, console_socket: Path | None = None
) -> Created:
    """The runtime's create (see :func:`start`) and the OOM watch; the process does not run
    yet. Work that must be done before it runs (its network) goes between this and
    :func:`start_created`; on failure there, :func:`abort` removes what was created."""
    stdio = logs if isinstance(logs, Stdio) else Stdio(stdout=logs, stderr=logs)
    _clear_dead_create(bundle.name, runtime)
    try:
        pid = runtime.create(
            bundle.name,
            bundle.directory,
            pid_file=bundle.directory / PID_FILE,
            stdio=stdio,
            console_socket=console_socket,
        )
    except BaseException:
        _undo_create(bundle.name, runtime)
        raise
    try:
        events = watch_oom(pid)
    except BaseException:
        with contextlib.suppress(RuntimeCommandError):
            runtime.delete(bundle.name, force=True)
        raise
    return Created(pid=pid, id=bundle.name, oom_events=events)


def _clear_dead_create(container_id: str, runtime: Runtime) -> None:
    """Before a create: what a create that died left of ``container_id`` is removed, a state
    the runtime cannot read (killed mid-create) and processes it cannot name (:mod:`leftovers`).
    A container the runtime knows is left alone: its create says it exists."""
    try:
        if runtime.state(container_id) is not None:
            return
    except RuntimeCommandError:  # a state directory without its status file
        with contextlib.suppress(IsolationError):
            runtime.delete(container_id, force=True)
    end_leftovers(container_id, systemd_driver=runtime.systemd_cgroup)


def _undo_create(container_id: str, runtime: Runtime) -> None:
    """After a create that failed: a container the runtime knows is deleted; otherwise what
    the create left is cleared as before a create (an unreadable state, processes the runtime
    cannot name: the init of a create killed on its timeout)."""
    with contextlib.suppress(IsolationError):
        if runtime.state(container_id) is not None:
            runtime.delete(container_id, force=True)
            return
    with contextlib.suppress(IsolationError):
        _clear_dead_create(container_id, runtime)


def start_created(created: Created, runtime: Runtime) -> Started:
    """Run the user's process of a created container; on failure it is deleted."""
    try:
        runtime.start(created.id)
    except BaseException:
        abort(created, runtime)
        raise
    return Started(pid=created.pid, id=created.id, oom_events=created.oom_events)


def abort(created: Created, runtime: Runtime) -> None:
    """Delete a created container that will not be started (and close its OOM watch)."""
    if created.oom_events is not None:
        created.oom_events.close()
    with contextlib.suppress(RuntimeCommandError):
        runtime.delete(created.id, force=True)


# --- stop and exit -------------------------------------------------------------------------------


def stop(
    container_id: str,
    *,
    signal_name: str,
    timeout: float,
    runtime: Runtime,
    watcher: ExitWatcher,
    pid: int | None = None,
    oom_events: OomEvents | None = None,
) -> StopResult:
    """Stop signal, up to ``timeout`` s, SIGKILL, wait; then delete and unmount.

    ``pid`` is the init (from :class:`Started`); without it the runtime's state gives it.
    ``oom_events`` (from :func:`watch_oom` at start) sees OOM kills the cgroup's count could no
    longer tell; without it one is opened now. A container that already ended is only deleted
    and unmounted.
    """
    state = runtime.state(container_id)
    if state is None:
        raise ContainerError(f"container {container_id} does not exist ({runtime.name} knows none)")
    pid = pid or state.pid
    ended: Exit | None = None
    killed = False
    events = oom_events
    try:
        if pid is not None:
            watcher.watch(pid)
            events = events or watch_oom(pid)
            kill(runtime, container_id, signal_number(signal_name))
            ended = _wait(pid, timeout, watcher, events)
            if ended is None:
                killed = True
                kill(runtime, container_id, signal.SIGKILL)
                ended = _wait(pid, KILL_TIMEOUT, watcher, events)
                if ended is None:
                    raise ContainerError(
                        f"container {container_id} (pid {pid}) did not end {KILL_TIMEOUT:.0f} s "
                        "after SIGKILL; it may be stuck in the kernel (D state): see "
                        f"/proc/{pid}/stack"
                    )
        return finish(
            container_id, ended, killed=killed, runtime=runtime, bundle=state.bundle, events=events
        )
    finally:
        if events is not None and events is not oom_events:
            events.close()


def wait_exit(
    started: Started,
    *,
    timeout: float | None,
    runtime: Runtime,
    watcher: ExitWatcher,
    oom_events: OomEvents | None = None,
) -> StopResult | None:
    """Wait for a container to end on its own (None after ``timeout`` s); then as :func:`stop`.

    OOM events come from ``oom_events``, else from ``started.oom_events``.
    """
    state = runtime.state(started.id)
    bundle = state.bundle if state is not None else None
    events = oom_events or started.oom_events
    watcher.watch(started.pid)
    ended = _wait(started.pid, float("inf") if timeout is None else timeout, watcher, events)
    if ended is None:
        return None
    return finish(started.id, ended, killed=False, runtime=runtime, bundle=bundle, events=events)


def _wait(pid: int, timeout: float, watcher: ExitWatcher, events: OomEvents | None) -> Exit | None:
    """``watcher.wait_for``, also taking in OOM events as they come (both by select, no polling)."""
    if events is None:
        return watcher.wait_for(pid, timeout)
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(watcher.fileno(), selectors.EVENT_READ)
        selector.register(events.fileno(), selectors.EVENT_READ)
        while True:
            # A tiny timeout: wait_for collects what is ready; it never blocks here.
            ended = watcher.wait_for(pid, _NO_WAIT)
            if ended is not None:
                return ended
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            for key, _ in selector.select(remaining):
                if key.fd == events.fileno():
                    events.take()


def finish(
    container_id: str,
    ended: Exit | None,
    *,
    killed: bool,
    runtime: Runtime,
    bundle: Path | None,
    events: OomEvents | None,
) -> StopResult:
    """Read the OOM count while the cgroup exists, delete, unmount."""
    count = oom_kills(container_id)
    if events is not None:
        events.take()
    with contextlib.suppress(ContainerNotFoundError):
        runtime.delete(container_id, force=True)
    if bundle is not None and str(bundle):
        unmount_rootfs(bundle)
    name = None
    if ended is not None and ended.signal is not None:
        name = _signal_name(ended.signal)
    return StopResult(
        code=ended.code if ended is not None else None,
        signal=name,
        killed=killed,
        oom=oom_verdict(count, events),
    )


def kill(runtime: Runtime, container_id: str, sig: int) -> None:
    """Signal the init; one that has just ended is not an error (the watcher will say so)."""
    try:
        runtime.kill(container_id, sig)
    except RuntimeCommandError:
        state = runtime.state(container_id)
        if state is not None and state.status == "running":
            raise


def signal_number(name: str) -> int:
    """The number of a canonical signal name (``SIGTERM``, ``SIGRTMIN+3``)."""
    if name.startswith("SIGRTMIN+"):
        return signal.SIGRTMIN + int(name.removeprefix("SIGRTMIN+"))
    if name.startswith("SIGRTMAX-"):
        return signal.SIGRTMAX - int(name.removeprefix("SIGRTMAX-"))
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise ContainerError(f"{name!r} is not a signal name (expected e.g. SIGTERM)") from None


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"SIG{number}"


# --- remove --------------------------------------------------------------------------------------


def remove(bundle: Bundle, runtime: Runtime) -> None:
    """Delete the runtime's state (killing what still runs), unmount, remove the directory."""
    with contextlib.suppress(ContainerNotFoundError):
        if runtime.state(bundle.name) is not None:
            runtime.delete(bundle.name, force=True)
    unmount_rootfs(bundle.directory)
    left = mounts_below(bundle.directory)
    if left:
        raise ContainerError(
            f"cannot remove {bundle.directory}: still mounted below it: "
            f"{', '.join(map(str, left))}; unmount them (umount -R) and remove again"
        )
    if bundle.directory.exists():
        shutil.rmtree(bundle.directory)


# The cgroup and OOM parts moved to cgroups.py and oom.py; callers still find them here.
__all__ = [
    "CGROUP_ROOT",
    "CONFIG",
    "KILL_TIMEOUT",
    "PID_FILE",
    "Bundle",
    "ContainerConfig",
    "ContainerError",
    "Created",
    "Driver",
    "OomEvents",
    "Started",
    "StopResult",
    "Usage",
    "abort",
    "create",
    "finish",
    "kill",
    "oom_kills",
    "prepare",
    "remove",
    "signal_number",
    "start",
    "start_created",
    "stop",
    "usage",
    "wait_exit",
    "watch_oom",
    "write_atomically",
]
