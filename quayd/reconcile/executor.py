"""The executor: the blocking work behind each action, over images, isolation and net.

Each method does one action for one unit and is called from a worker thread (the agent's loop
serialises work per unit, so two calls for the same unit never overlap; calls for different
units do). It knows the public API of ``quayd.images``, ``quayd.isolation`` and ``quayd.net``
and nothing of their insides; it decides nothing (the planner did).

Waiting for a container to end is not done here: the agent's loop owns the one
:class:`ExitWatcher` (pidfds), and :meth:`Executor.finish` is called once the init is gone.
"""

from __future__ import annotations

import contextlib
import functools
import os
import resource
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from quayd.images.errors import ImageError
from quayd.images.model import ImageConfig, ImageRecord, Platform
from quayd.images.store import Store
from quayd.images.versions import versions
from quayd.isolation.container import (
    Bundle,
    ContainerConfig,
    Driver,
    OomEvents,
    Started,
    StopResult,
    abort,
    create,
    finish,
    kill,
    prepare,
    remove,
    signal_number,
    start,
    start_created,
    watch_oom,
)
from quayd.isolation.environment import read_env_files
from quayd.isolation.init import CANDIDATES as INIT_CANDIDATES
from quayd.isolation.init import PACKAGE as INIT_PACKAGE
from quayd.isolation.init import find_init
from quayd.isolation.leftovers import end_dead_creates
from quayd.isolation.runtime import (
    ConsoleSocket,
    OciRuntime,
    RuntimeCommandError,
    Stdio,
    journald_running,
    journald_stream,
    open_log_file,
)
from quayd.isolation.runtime import (
    Exit as RuntimeExit,
)
from quayd.isolation.spec import EtcFiles, ImageDefaults, seccomp_for, stop_signal
from quayd.net.network import Attachment, Network
from quayd.reconcile.records import ContainerRecord, read_record, write_record
from quayd.units.model import Unit
from quayd.units.reference import parse_reference
from quayd.units.settings import Settings

if TYPE_CHECKING:  # the registry client (httpx) is imported at the first pull, not at start
    from quayd.images.pull import ProgressCallback
    from quayd.images.registry import RegistryClient

log = structlog.get_logger("quayd.executor")

CGROUP_ROOT = Path("/sys/fs/cgroup")


class ExecutorError(Exception):
    """An action failed; the message says why (it becomes the unit's status detail)."""


@dataclass(frozen=True)
class Launched:
    """A container this agent started: its init's pid and its record."""

    pid: int
    record: ContainerRecord
    oom_events: OomEvents | None
    """Opened between create and start (cgroup v1): pass it to :meth:`Executor.finish`."""
    console: int | None = None
    """With a terminal: the master of the container's pty (the caller owns and closes it)."""
    pipes: Pipes | None = None
    """With ``pipes``: the agent's ends of the container's stdio (the caller owns them)."""


@dataclass(frozen=True)
class Pipes:
    """The agent's ends of an attached ad-hoc container's stdio (``quayctl run`` without -t):
    it relays them to its clients and to the log, ``log``."""

    stdout: int
    """Its stdout; with a terminal, a copy of the pty's master (its output)."""
    stderr: int | None
    """Its stderr; None with a terminal (the pty carries both)."""
    stdin: int | None
    """The writing end of its stdin (``-i``), else None: its stdin is /dev/null (or the pty)."""
    log: int

    def close(self) -> None:
        for fd in (self.stdout, self.stderr, self.stdin, self.log):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)


@dataclass(frozen=True)
class Found:
    """A container found on the host at agent start (adoption)."""

    name: str
    pid: int | None
    running: bool
    record: ContainerRecord | None


def cgroup_driver(settings: Settings) -> Driver:
    """``auto``: systemd scopes when systemd runs this host (its notify dir exists)."""
    if settings.cgroup_driver != "auto":
        return settings.cgroup_driver
    return "systemd" if Path("/run/systemd/system").is_dir() else "cgroupfs"


class Executor:
    def __init__(
        self,
        settings: Settings,
        *,
        store: Store,
        network: Network,
        seccomp_profile: Mapping[str, Any] | None,
    ) -> None:
        self.settings = settings
        self.store = store
        self._registry: RegistryClient | None = None
        self._registry_lock = threading.Lock()
        self.network = network
        self.seccomp_profile = seccomp_profile
        self.driver = cgroup_driver(settings)
        self.runtime = OciRuntime(
            settings.runtime,
            run_dir=Path(settings.run_dir),
            systemd_cgroup=self.driver == "systemd",
        )
        self.state_dir = Path(settings.state_dir)
        self.run_dir = Path(settings.run_dir)
        self.init_binary = find_init()
        """PID 1 of the units with ``init`` (the default); None: they run without one."""
        if self.init_binary is None:
            log.warning(
                "no container init: containers run their command as PID 1 (orphans are not "
                "reaped, SIGTERM without a handler does nothing)",
                looked_for=[str(path) for path in INIT_CANDIDATES],
                fix=f"apt-get install {INIT_PACKAGE}",
            )
        self._net_pool = ThreadPoolExecutor(8, thread_name_prefix="quay-net")
        """Where a start's veth work runs while the runtime creates its container."""
        self._swap_limit = (CGROUP_ROOT / "memory" / "memory.memsw.limit_in_bytes").exists() or (
            not (CGROUP_ROOT / "memory").is_dir()
        )

    # --- paths ----------------------------------------------------------------------------------

    def container_dir(self, name: str) -> Path:
        return self.state_dir / "containers" / name

    def notify_dir(self, name: str) -> Path:
        return self.run_dir / "notify" / name

    def log_file(self, name: str) -> Path:
        return self.state_dir / "logs" / f"{name}.log"

    # --- images ---------------------------------------------------------------------------------

    @staticmethod
    def reference(unit: Unit) -> str:
        """The unit's image reference as the store keys it (normalised)."""
        return str(parse_reference(str(unit.container.image)))

    def image(self, unit: Unit) -> ImageRecord | None:
        return self.store.get(self.reference(unit))

    def present_images(self) -> frozenset[str]:
        """Every reference in the store (one read of its index, for a whole pass)."""
        return frozenset(self.store.images())

    @property
    def registry(self) -> RegistryClient:
        """The registry client, made at the first pull: an agent whose images are all stored
        (an offline device) never loads the HTTP stack (about 0.2 s and 10 MB)."""
        with self._registry_lock:
            if self._registry is None:
                from quayd.images.registry import RegistryClient  # noqa: PLC0415

                self._registry = RegistryClient(self.settings.registries)
            return self._registry

    def close(self) -> None:
        self._net_pool.shutdown(wait=False, cancel_futures=True)
        with self._registry_lock:
            if self._registry is not None:
                self._registry.close()
                self._registry = None

    def pull(self, unit: Unit, progress: ProgressCallback | None = None) -> ImageRecord:
        platform = Platform.parse(unit.image.platform) if unit.image.platform else None
        return self.pull_reference(str(unit.container.image), platform, progress)

    def pull_reference(
        self,
        reference: str,
        platform: Platform | None = None,
        progress: ProgressCallback | None = None,
        max_rate: int | None = None,
    ) -> ImageRecord:
        """Pull ``reference`` into the store (a unit's image, or an operator's quayctl pull);
        ``max_rate``: bytes per second at most (an update's background pull)."""
        from quayd.images.pull import pull  # noqa: PLC0415 - see registry
        from quayd.images.unpack import UnpackLimits  # noqa: PLC0415 - zstd, isal and the tar reader too

        images = self.settings.images
        try:
            return pull(
                reference,
                store=self.store,
                client=self.registry,
                progress=progress,
                platform=platform,
                max_concurrent=images.max_concurrent_downloads,
                min_free_bytes=images.min_free_disk,
                max_rate=max_rate,
                limits=UnpackLimits(
                    max_uncompressed_bytes=images.max_layer_size,
                    max_entries=images.max_layer_entries,
                ),
            )
        except ImageError as error:
            raise ExecutorError(str(error)) from error

    # --- start ----------------------------------------------------------------------------------

    def start(
        self,
        name: str,
        unit: Unit,
        unit_hash: str,
        all_units: Mapping[str, Unit],
        *,
        terminal: bool = False,
        console_size: tuple[int, int] | None = None,
        pipes: bool = False,
        stdin: bool = False,
        digest: str | None = None,
    ) -> Launched:
        """Image → network → bundle → record → create + start. Leaves nothing on failure.

        A bridged unit's lease and namespace come first (the spec names them, and its etc
        files, which must exist); the files' content, its veth pair and addresses are made in
        another thread while the runtime creates the container, and joined before the
        runtime's start: the process never runs before its ``eth0`` and ``/etc/hosts`` are
        ready. Only this unit's own etc files (and the ruleset, when this unit publishes ports)
        are written here: the peers' hosts files are the caller's :meth:`sync_peers`, once
        after a burst of starts.

        With ``terminal`` (an ad-hoc ``quayctl run -t``) the process gets a pty: the runtime is
        given a console socket instead of the log as stdio, and :attr:`Launched.console` is the
        pty's master. With ``pipes`` (``quayctl run`` without -t) its stdout and stderr (and
        its stdin, with ``stdin``) are pipes, whose other ends are :attr:`Launched.pipes`; with
        both, :attr:`Launched.pipes` has a copy of the master and of the log, for the caller to
        relay the terminal's output to the log. ``digest``: that version of the unit's image
        (an update's, or the one rolled back to), from :func:`quayd.images.versions.versions`."""
        if digest is None:
            record = self.image(unit)
        else:
            record = versions(self.store, self.reference(unit)).get(digest)
        if record is None:
            at = "" if digest is None else f"@{digest}"
            raise ExecutorError(f"image {unit.container.image}{at} is not in the store")
        config = self.store.image_config(record)
        directory = self.container_dir(name)
        self._clear(name, directory)
        directory.mkdir(parents=True, exist_ok=True)
        prepared = self._attach(name, unit)
        try:
            if prepared is None:
                self.network.sync_unit(name, all_units)
            else:  # written with the veth (see _connect); the spec needs the files to exist
                self.network.ensure_etc_files(name)
            netns = str(prepared.netns) if prepared is not None else None
            launched, started, console, ends = self._create_and_start(
                name,
                unit,
                unit_hash=unit_hash,
                record=record,
                config=config,
                directory=directory,
                netns=netns,
                prepared=prepared,
                all_units=all_units,
                terminal=terminal,
                console_size=console_size,
                pipes=pipes,
                stdin=stdin,
            )
        except BaseException:
            with contextlib.suppress(Exception):
                self._clear(name, directory)
            raise
        return Launched(
            pid=started.pid,
            record=launched,
            oom_events=started.oom_events,
            console=console,
            pipes=ends,
        )

    def _attach(self, name: str, unit: Unit) -> Attachment | None:
        """A bridged unit's lease and namespace (its veth and addresses come with the
        runtime's create: :meth:`_create_join_start`)."""
        return self.network.prepare(name) if unit.network.mode == "bridge" else None

    def _create_and_start(
        self,
        name: str,
        unit: Unit,
        *,
        unit_hash: str,
        record: ImageRecord,
        config: ImageConfig,
        directory: Path,
        netns: str | None,
        prepared: Attachment | None,
        all_units: Mapping[str, Unit],
        terminal: bool,
        console_size: tuple[int, int] | None,
        pipes: bool = False,
        stdin: bool = False,
    ) -> tuple[ContainerRecord, Started, int | None, Pipes | None]:
        notify_dir = self.notify_dir(name) if unit.ready.mode == "notify" else None
        hostname = directory / "hostname"
        hostname.write_text(f"{unit.container.hostname or name}\n")
        etc = self.network.etc_paths(name)
        container_config = ContainerConfig(
            unit=unit,
            image=image_defaults(config),
            etc_files=EtcFiles(hostname=hostname, hosts=etc.hosts, resolv_conf=etc.resolv_conf),
            volumes_dir=self.state_dir / "volumes",
            cgroup_driver=self.driver,
            netns=netns,
            env_files=read_env_files(unit.container.env_files) or None,
            notify_socket_dir=notify_dir,
            seccomp=seccomp_for(unit, self.seccomp_profile),
            # crun loads a filter compiled once (runc knows no such annotation: JSON only)
            seccomp_cache_dir=self.state_dir / "seccomp" if self.runtime.name == "crun" else None,
            nofile_ceiling=resource.getrlimit(resource.RLIMIT_NOFILE)[1],
            swap_limit=self._swap_limit,
            terminal=terminal,
            console_size=console_size,
            init_binary=self.init_binary,
        )
        layers = [self.store.layer_path(layer.chain_id) for layer in record.layers]
        bundle = prepare(name, layers, container_config, directory)
        launched = ContainerRecord(
            name=name,
            hash=unit_hash,
            unit=unit,
            started_at=time.time(),
            image_digest=record.manifest_digest,
        )
        write_record(directory, launched)

        network_work = (
            functools.partial(self._connect, prepared, all_units) if prepared is not None else None
        )
        out = self._open_logs(name)
        if pipes and not terminal:
            return launched, *self._start_with_pipes(bundle, out, network_work, stdin=stdin)
        try:
            if terminal:
                started, console = self._start_with_terminal(name, bundle, out, network_work)
                # with pipes, the caller reads the terminal too, for the log: ends of its own
                ends = (
                    Pipes(stdout=os.dup(console), stderr=None, stdin=None, log=os.dup(out))
                    if pipes
                    else None
                )
                return launched, started, console, ends
            return launched, self._create_join_start(bundle, out, network_work), None, None
        finally:
            os.close(out)

    def _start_with_pipes(
        self, bundle: Bundle, out: int, network_work: Callable[[], object] | None, *, stdin: bool
    ) -> tuple[Started, None, Pipes]:
        """create and start with pipes as stdio; the container's ends are closed here once the
        runtime has handed them on, so the agent's ends see EOF when its processes are gone."""
        child: list[int] = []
        mine: list[int] = [out]
        try:
            for _ in range(3 if stdin else 2):
                read_end, write_end = os.pipe2(os.O_CLOEXEC)
                child.append(write_end if len(child) < 2 else read_end)
                mine.append(read_end if len(mine) < 3 else write_end)
            stdio = Stdio(stdout=child[0], stderr=child[1], stdin=child[2] if stdin else None)
            started = self._create_join_start(bundle, stdio, network_work)
        except BaseException:
            for fd in mine:
                os.close(fd)
            raise
        finally:
            for fd in child:
                os.close(fd)
        return (
            started,
            None,
            Pipes(stdout=mine[1], stderr=mine[2], stdin=mine[3] if stdin else None, log=out),
        )

    def _connect(self, prepared: Attachment, all_units: Mapping[str, Unit]) -> None:
        """A bridged unit's own etc files (and the ruleset when it publishes ports), then its
        veth and addresses: what must be done before its process runs, not before its create."""
        self.network.sync_unit(prepared.unit, all_units)
        self.network.connect(prepared)

    def _create_join_start(
        self,
        bundle: Bundle,
        out: int | Stdio,
        network_work: Callable[[], object] | None,
        console_socket: Path | None = None,
    ) -> Started:
        """The network work in another thread while this one waits for the runtime's create
        (a process: the GIL is free for it), joined before the runtime's start; on a failure of
        either side the other is waited for and a created container deleted."""
        if network_work is None:
            return start(bundle, self.runtime, out, console_socket=console_socket)
        connecting = self._net_pool.submit(network_work)
        try:
            created = create(bundle, self.runtime, out, console_socket=console_socket)
        except BaseException:
            with contextlib.suppress(BaseException):
                connecting.result()  # no veth work may outlive a failed start
            raise
        try:
            connecting.result()
        except BaseException:
            abort(created, self.runtime)
            raise
        return start_created(created, self.runtime)

    def console_socket(self, name: str) -> Path:
        return self.run_dir / "console" / f"{name}.sock"

    def _start_with_terminal(
        self, name: str, bundle: Bundle, out: int, network_work: Callable[[], object] | None
    ) -> tuple[Started, int]:
        """create (with ``--console-socket``) and start, then take the pty's master: the
        runtime's connection waits in the socket's backlog until it is accepted."""
        with ConsoleSocket(self.console_socket(name)) as console_socket:
            started = self._create_join_start(bundle, out, network_work, console_socket.path)
            return started, console_socket.receive()

    def sync_peers(self, all_units: Mapping[str, Unit]) -> None:
        """Every unit's hosts file with the current peers (after a burst of starts or
        removals: one pass over the files instead of one per start)."""
        self.network.sync(all_units, verify=False)

    def sync_network(self, all_units: Mapping[str, Unit]) -> None:
        """Read the ruleset and the etc files back and repair any drift (the periodic resync)."""
        report = self.network.sync(all_units, verify=True)
        if report.drifted:
            log.warning("the nftables ruleset had drifted; replaced it", table="inet quay")

    def _open_logs(self, name: str) -> int:
        if journald_running():
            with contextlib.suppress(OSError):
                return journald_stream(f"quay-{name}", unit_name=f"quay-{name}.scope")
        return open_log_file(self.log_file(name))

    def _clear(self, name: str, directory: Path) -> None:
        """Remove a previous container of ``name`` (its runtime state, mounts, directory)."""
        if not directory.exists() and self.runtime.state(name) is None:
            return  # nothing can be mounted below a missing directory: skip the mount table
        bundle = Bundle(name, directory, "SIGTERM", 0.0, self.driver)
        remove(bundle, self.runtime)

    # --- stop and exit --------------------------------------------------------------------------

    def signal(self, name: str, signal_name: str) -> None:
        kill(self.runtime, name, signal_number(signal_name))

    def stop_signal(self, unit: Unit) -> str:
        record = self.image(unit)
        config = self.store.image_config(record) if record is not None else ImageConfig()
        return stop_signal(unit, image_defaults(config))

    def finish(
        self, name: str, ended: RuntimeExit | None, *, killed: bool, events: OomEvents | None
    ) -> StopResult:
        """After the init ended: OOM count, runtime delete, unmount, remove the directory."""
        directory = self.container_dir(name)
        result = finish(
            name, ended, killed=killed, runtime=self.runtime, bundle=directory, events=events
        )
        self._clear(name, directory)
        return result

    def release(self, name: str, all_units: Mapping[str, Unit]) -> None:
        """A unit that no longer exists: its network, lease, files, its rules; volumes stay.
        Its name leaves the peers' hosts files with the next :meth:`sync_peers`."""
        self._clear(name, self.container_dir(name))
        self.network.detach(name)
        self.network.release([name])
        self.network.sync_unit(name, all_units)  # its rules; the peers' files: sync_peers
        shutil.rmtree(self.notify_dir(name), ignore_errors=True)

    def mark_ready(self, name: str, at: float) -> None:
        """Persist readiness, so an adopted container is not asked to be ready again."""
        directory = self.container_dir(name)
        record = read_record(directory)
        if record is not None and record.ready_at is None:
            write_record(directory, replace(record, ready_at=at))

    # --- adoption -------------------------------------------------------------------------------

    def end_dead_creates(self) -> list[str]:
        """At the start (no create runs then): what creates killed with the last agent left
        in cgroups, ended (:func:`leftovers.end_dead_creates`); their names."""
        return end_dead_creates(self.runtime)

    def find_containers(self) -> list[Found]:
        """Every container the runtime knows under quay's root, with its record."""
        found = []
        for container_id in self.runtime.list_ids():
            try:
                state = self.runtime.state(container_id)
            except RuntimeCommandError as error:
                # A runtime killed mid-create (with the agent: systemd ends the agent's whole
                # cgroup) leaves a state directory without its status file. That container
                # never ran: it is reported ended, and finish() deletes what is left of it.
                log.warning("unreadable runtime state", unit=container_id, error=str(error))
                state = None
            record = read_record(self.container_dir(container_id))
            found.append(
                Found(
                    name=container_id,
                    pid=state.pid if state is not None else None,
                    # "created": an agent died between create and start; that container never
                    # ran its command, so it is cleaned up and started afresh, not adopted.
                    running=state is not None and state.status == "running",
                    record=record,
                )
            )
        return found

    def watch_oom(self, pid: int) -> OomEvents | None:
        """For an adopted container: OOM kills from now on (its earlier ones are in the count)."""
        return watch_oom(pid)


def image_defaults(config: ImageConfig) -> ImageDefaults:
    return ImageDefaults(
        entrypoint=config.entrypoint,
        cmd=config.cmd,
        env=config.env,
        working_dir=config.working_dir,
        user=config.user,
        stop_signal=config.stop_signal,
        volumes=config.volumes,
    )
