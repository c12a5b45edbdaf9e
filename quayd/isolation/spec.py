"""The OCI runtime spec (``config.json``) of a container, as a pure function of its inputs.

:func:`build_spec` takes the unit, the image's config (as :class:`ImageDefaults`, which the
reconciler converts from quayd.images) and what the host side prepared (the mounted root, the
network namespace, the resolved user, the /etc files, the seccomp object), and returns the whole
document. Nothing here touches the system, so every field is unit-tested and the same inputs
always give the same document (its hash can tell whether a running container is up to date).

The defaults are Docker's, or stricter where noted:

- namespaces: pid, mount, uts, ipc, cgroup, and network unless ``network.mode = "host"``;
- podman's 11 default capabilities (Docker's 14 without NET_RAW, MKNOD and AUDIT_WRITE),
  ``cap_drop`` then ``cap_add`` applied as Docker applies them, in the bounding, effective and
  permitted sets; inheritable and ambient empty (as Docker since
  CVE-2022-24769); ``noNewPrivileges``;
- masked and read-only /proc and /sys paths as Docker's (``/proc/asound`` masked, as Docker does,
  which is stricter than runc's read-only);
- /dev a small tmpfs with only the devices the runtime creates (null, zero, full, random,
  urandom, tty, ptmx, pts) and a device cgroup that denies everything else;
- /sys and /sys/fs/cgroup read-only; /dev/shm 64 MiB, ``noexec``;
- RLIMIT_NOFILE soft 1024, hard 524288 (see ``RLIMITS``);
- no new user namespaces inside (the seccomp filter, as Docker's; ``user_namespaces`` allows);
- PID 1 a small init that runs the command, forwards signals and reaps orphans (:mod:`init`),
  as ``docker run --init``; ``init = false`` runs the command as PID 1.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from quayd.isolation.cgroups import HostCgroups
from quayd.isolation.environment import DEFAULT_PATH, container_env
from quayd.isolation.errors import SpecError
from quayd.isolation.init import INIT_PATH, with_init
from quayd.isolation.resources import SYSTEMD_PROPERTY, linux_resources, systemd_properties
from quayd.isolation.seccomp import kernel_version, native_arch, oci_seccomp
from quayd.isolation.seccomp_bpf import annotation as seccomp_bpf_annotation
from quayd.isolation.seccomp_userns import refuse_user_namespaces
from quayd.isolation.users import ResolvedUser
from quayd.units.model import Mount, Unit
from quayd.units.values import CAPABILITIES, ValueSyntaxError, parse_signal

OCI_VERSION = "1.0.2"

# podman's default capability set (containers.conf's default_capabilities since podman 4.0):
# Docker's (moby oci/caps/defaults.go) without the three below, which few services need and which
# each widen what a compromised container can do. A unit gets any of them back with cap_add.
DEFAULT_CAPABILITIES = frozenset(
    {
        "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_SETGID",
        "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT",
        "CAP_KILL",
    }
)  # fmt: skip
# In Docker's set, not in quay's: raw and packet sockets (ping, ARP and DHCP spoofing on the
# bridge), device nodes (the device cgroup is then the only barrier to a disk's node), and
# writes to the host's audit log.
DOCKER_ONLY_CAPABILITIES = frozenset({"CAP_NET_RAW", "CAP_MKNOD", "CAP_AUDIT_WRITE"})

# RLIMIT_NOFILE: soft 1024, hard 524288 — what Docker 25+ containers get (dockerd's and
# containerd's units no longer raise it to infinity) and what systemd gives its services. A soft
# limit of 1024 keeps select()-based code safe and programs that close every possible fd fast;
# the hard limit lets a server that needs more raise its own soft limit without privileges.
# Older Docker's huge limits (infinity, or 1048576 both soft and hard) made some programs
# allocate or loop over that many fds at start.
RLIMITS: tuple[dict[str, Any], ...] = ({"type": "RLIMIT_NOFILE", "hard": 524288, "soft": 1024},)

MASKED_PATHS = (
    "/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
    "/sys/firmware", "/sys/devices/virtual/powercap",
)  # fmt: skip
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

SHM_SIZE = 64 << 20  # Docker's default --shm-size

# Where quay's sd_notify socket directory appears in the container, and the socket's name in it.
NOTIFY_DIR = "/run/quay-notify"
NOTIFY_SOCKET_NAME = "notify.sock"

UNIT_ANNOTATION = "org.quay.unit"
IMAGE_ANNOTATION = "org.quay.image"

# Mount targets a unit cannot use (the tree below each too, except below /dev): the runtime's own
# mounts there make anything else meaningless, and runc refuses most mounts under /proc anyway,
# with a less clear message. /dev/shm and /dev/mqueue may be replaced, as in Docker.
_RESERVED_TREES = ("/proc", "/sys", "/dev/pts")
_RESERVED_TARGETS = ("/dev",)


@dataclass(frozen=True)
class ImageDefaults:
    """What the image's config says (the reconciler converts it from quayd.images)."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    working_dir: str = ""
    user: str = ""
    stop_signal: str | None = None
    volumes: tuple[str, ...] = ()


@dataclass(frozen=True)
class EtcFiles:
    """Host files bound read-only over the container's /etc/hostname, /etc/hosts, resolv.conf."""

    hostname: Path
    hosts: Path
    resolv_conf: Path


@dataclass(frozen=True)
class SpecInputs:
    name: str
    """The unit name."""
    unit: Unit
    image: ImageDefaults
    rootfs: Path
    """The mounted root filesystem (absolute)."""
    netns: str | None
    """The network namespace to join; None: a new empty one. Must be None with mode "host"."""
    user: ResolvedUser
    env_files: Mapping[str, str]
    """The unit's env files, read and merged in order (:func:`environment.read_env_files`)."""
    etc_files: EtcFiles
    volumes_dir: Path
    """Named volumes live in ``volumes_dir/NAME``."""
    notify_socket_dir: Path | None
    """A host directory holding quay's notify socket (``NOTIFY_SOCKET_NAME``), or None."""
    cgroup_driver: Literal["systemd", "cgroupfs"]
    seccomp: dict[str, Any] | None
    """An OCI seccomp object (:func:`seccomp.oci_seccomp`), or None for no filter."""
    seccomp_bpf: bytes | None = None
    """``seccomp`` compiled (:mod:`seccomp_bpf`), for crun: it goes in the
    ``run.oci.seccomp_bpf_data`` annotation and crun loads it instead of compiling
    ``linux.seccomp``, which stays in the spec (crun takes the filter's flags from it, and runc
    knows only it). Ignored without ``seccomp``."""
    nofile_ceiling: int | None = None
    """quayd's own hard RLIMIT_NOFILE, when the runtime cannot raise limits above it (no
    CAP_SYS_RESOURCE, as in some sandboxes); the container's limits are capped at it."""
    swap_limit: bool = True
    """Whether the host's memory cgroup can limit swap (v1: ``memory.memsw.*`` exists). Without
    it the runtimes fail to write the swap limit, so the memory limit is set alone (as Docker
    does on such hosts)."""
    cgroups: HostCgroups = field(default_factory=HostCgroups)
    """The host's cgroup layout and what its kernel can limit (:func:`cgroups.host_cgroups`)."""
    devices: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    """Major and minor number of each device path the unit's I/O limits name
    (:func:`cgroups.block_devices` of :func:`resources.device_paths`)."""
    terminal: bool = False
    """Give the process a terminal (``quayctl run -t``): the runtime makes a pty in the container
    and hands its master over the console socket; ``TERM`` defaults to ``xterm``."""
    console_size: tuple[int, int] | None = None
    """The terminal's first size, (rows, columns), with ``terminal`` (the client's window)."""
    init_binary: Path | None = None
    """The host's static init (:func:`init.find_init`): with the unit's ``init`` (the default)
    it is bound at :data:`init.INIT_PATH` and runs the command as PID 1. None: no init."""


@dataclass(frozen=True)
class VolumeUse:
    """A volume a container mounts: the host side must create ``host_path`` before starting it."""

    name: str
    host_path: Path
    target: str
    read_only: bool
    anonymous: bool
    """True for a volume the image declares (``VOLUME``) and no unit mount covers."""


def build_spec(inputs: SpecInputs) -> dict[str, Any]:
    """The whole ``config.json`` of the container described by ``inputs``."""
    unit = inputs.unit
    container = unit.container
    if not inputs.rootfs.is_absolute():
        raise SpecError(f"the root filesystem path {inputs.rootfs} is not absolute")
    hostname = container.hostname or inputs.name
    capabilities = sorted(capabilities_for(unit))
    process: dict[str, Any] = {
        "terminal": inputs.terminal,
    }
    if inputs.terminal and inputs.console_size is not None:
        rows, columns = inputs.console_size
        process["consoleSize"] = {"height": rows, "width": columns}
    return {
        "ociVersion": OCI_VERSION,
        "process": {
            **process,
            "user": _user(inputs.user),
            "args": _with_init(inputs, process_args(unit, inputs.image)),
            "env": _env(inputs, hostname),
            "cwd": _cwd(container.workdir, inputs.image.working_dir),
            "capabilities": {
                "bounding": capabilities,
                "effective": capabilities,
                "permitted": capabilities,
                "inheritable": [],
                "ambient": [],
            },
            "rlimits": _rlimits(inputs.nofile_ceiling),
            "noNewPrivileges": True,
        },
        "root": {"path": str(inputs.rootfs), "readonly": container.read_only},
        "hostname": hostname,
        "mounts": _mounts(inputs),
        "annotations": {
            UNIT_ANNOTATION: inputs.name,
            IMAGE_ANNOTATION: container.image,
            **(_scope_properties(inputs) if inputs.cgroup_driver == "systemd" else {}),
            **_seccomp_bpf(inputs),
        },
        "linux": _linux(inputs),
    }


def process_args(unit: Unit, image: ImageDefaults) -> list[str]:
    """The argv, by Docker's rules: ``command`` replaces Entrypoint and Cmd; ``args`` only Cmd."""
    command, args = unit.container.command, unit.container.args
    if command is not None:
        argv = [*command, *(args or [])]
    else:
        argv = [*image.entrypoint, *(args if args is not None else image.cmd)]
    if not argv and args == [] and image.cmd:
        raise SpecError(
            "nothing to run: container.args = [] replaces the image's Cmd and the image has "
            "no Entrypoint; set container.command, or leave args out"
        )
    if not argv:
        raise SpecError("nothing to run: the image has no Entrypoint or Cmd; set container.command")
    return argv


def uses_init(inputs: SpecInputs) -> bool:
    """Whether the container's PID 1 is the init: the unit wants it and the host has one."""
    return inputs.unit.container.init and inputs.init_binary is not None


def _with_init(inputs: SpecInputs, argv: list[str]) -> list[str]:
    return with_init(argv) if uses_init(inputs) else argv


def capabilities_for(unit: Unit) -> frozenset[str]:
    """The default set with ``cap_drop`` and ``cap_add`` applied as Docker applies them.

    ``cap_add = ["ALL"]`` gives every capability except those in ``cap_drop``;
    ``cap_drop = ["ALL"]`` gives exactly ``cap_add``; otherwise the defaults minus ``cap_drop``
    plus ``cap_add`` (moby's TweakCapabilities).
    """
    add, drop = set(unit.container.cap_add), set(unit.container.cap_drop)
    if "ALL" in add:
        return frozenset(CAPABILITIES - drop)
    if "ALL" in drop:
        return frozenset(add)
    return frozenset((DEFAULT_CAPABILITIES - drop) | add)


def seccomp_for(unit: Unit, profile: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The OCI seccomp filter of ``unit`` on this host: ``profile`` (containers-common form)
    converted for this architecture, kernel and the unit's capabilities, new user namespaces
    refused unless the unit allows them (:mod:`seccomp_userns`); None without a profile."""
    if profile is None:
        return None
    arch, capabilities = native_arch(), capabilities_for(unit)
    converted = oci_seccomp(profile, arch=arch, capabilities=capabilities, kernel=kernel_version())
    if unit.container.user_namespaces or "CAP_SYS_ADMIN" in capabilities:
        return converted
    return refuse_user_namespaces(converted, arch=arch)


def user_spec(unit: Unit, image: ImageDefaults) -> str:
    """The user to resolve (:func:`users.resolve_user`): the unit's, else the image's, else root."""
    return unit.container.user or image.user


def stop_signal(unit: Unit, image: ImageDefaults) -> str:
    """The unit's ``stop_signal``, else the image's StopSignal, else ``"SIGTERM"`` (canonical)."""
    if unit.container.stop_signal:
        return unit.container.stop_signal
    if image.stop_signal:
        try:
            return parse_signal(image.stop_signal)
        except ValueSyntaxError:
            raise SpecError(
                f"the image's StopSignal {image.stop_signal!r} is not a signal; "
                "set container.stop_signal in the unit"
            ) from None
    return "SIGTERM"


def cgroups_path(name: str, driver: Literal["systemd", "cgroupfs"]) -> str:
    """``quay-NAME.scope`` in ``quay.slice``, in the notation of each cgroup driver."""
    if driver == "systemd":
        return f"quay.slice:quay:{name}"
    return f"/quay.slice/quay-{name}.scope"


def volumes_for(
    name: str, unit: Unit, image: ImageDefaults, volumes_dir: Path
) -> tuple[VolumeUse, ...]:
    """The named volumes of ``unit`` and the anonymous volumes of the image's ``VOLUME``\\ s.

    An image volume that no unit mount covers (same target) becomes a volume of its own,
    ``_anon-UNIT-HASH`` under ``volumes_dir``, HASH from the path: like Docker's anonymous
    volumes its data outlives the container's writable layer, but unlike them it is found again
    when the container is re-created, so a database image run without a declared mount keeps
    its data across upgrades. The leading ``_`` keeps these names apart from the unit's own
    volume names, which must start with a letter or digit. (A tmpfs would lose the data at every
    restart; leaving the path in the overlay would lose it at every re-creation.)
    """
    targets = {_clean(m.target) for m in unit.mounts}
    uses = [
        VolumeUse(
            name=m.source or "",
            host_path=volumes_dir / (m.source or ""),
            target=_clean(m.target),
            read_only=m.read_only,
            anonymous=False,
        )
        for m in unit.mounts
        if m.type == "volume"
    ]
    seen: set[str] = set()
    for raw in image.volumes:
        target = _clean(raw)
        if not raw.startswith("/") or target == "/" or ".." in raw.split("/"):
            raise SpecError(f"the image declares VOLUME {raw!r}, which is not a usable path")
        if target in targets or target in seen:
            continue
        seen.add(target)
        digest = hashlib.sha256(target.encode()).hexdigest()[:16]
        volume = f"_anon-{name}-{digest}"
        uses.append(VolumeUse(volume, volumes_dir / volume, target, False, anonymous=True))
    return tuple(uses)


# --- process -------------------------------------------------------------------------------------


def _user(user: ResolvedUser) -> dict[str, Any]:
    spec: dict[str, Any] = {"uid": user.uid, "gid": user.gid}
    if user.additional_gids:
        spec["additionalGids"] = list(user.additional_gids)
    return spec


def _env(inputs: SpecInputs, hostname: str) -> list[str]:
    env = container_env(
        inputs.image.env,
        inputs.env_files,
        inputs.unit.container.env,
        defaults={"PATH": DEFAULT_PATH, "HOSTNAME": hostname},
    )
    # HOME from the safely read passwd entry, so the runtime never looks it up in the image.
    if not any(entry.startswith("HOME=") for entry in env):
        env.append(f"HOME={inputs.user.home}")
    if inputs.terminal and not any(entry.startswith("TERM=") for entry in env):
        env.append("TERM=xterm")  # as docker run -t
    if inputs.notify_socket_dir is not None:
        env = [entry for entry in env if not entry.startswith("NOTIFY_SOCKET=")]
        env.append(f"NOTIFY_SOCKET={NOTIFY_DIR}/{NOTIFY_SOCKET_NAME}")
    return env


def _rlimits(ceiling: int | None) -> list[dict[str, Any]]:
    rlimits = [dict(r) for r in RLIMITS]
    if ceiling is not None:
        for rlimit in rlimits:
            rlimit["hard"] = min(rlimit["hard"], ceiling)
            rlimit["soft"] = min(rlimit["soft"], rlimit["hard"])
    return rlimits


def _cwd(workdir: str | None, image_workdir: str) -> str:
    cwd = workdir or image_workdir or "/"
    return _clean(cwd if cwd.startswith("/") else "/" + cwd)


# --- mounts --------------------------------------------------------------------------------------


def _mounts(inputs: SpecInputs) -> list[dict[str, Any]]:
    unit_mounts = inputs.unit.mounts
    targets = {_clean(m.target) for m in unit_mounts}
    for target in sorted(targets):
        if target in _RESERVED_TARGETS or any(
            target == tree or target.startswith(tree + "/") for tree in _RESERVED_TREES
        ):
            raise SpecError(f"a mount at {target} is not allowed: the runtime provides it")
    if inputs.notify_socket_dir is not None and NOTIFY_DIR in targets:
        raise SpecError(f"{NOTIFY_DIR} is where quay's notify socket goes; mount elsewhere")

    defaults = [m for m in _default_mounts() if m["destination"] not in targets]
    own: list[dict[str, Any]] = [_unit_mount(m, inputs.volumes_dir) for m in unit_mounts]
    own += [
        _bind(str(v.host_path), v.target, ["rbind", "rprivate", "nosuid", "nodev"])
        for v in volumes_for(inputs.name, inputs.unit, inputs.image, inputs.volumes_dir)
        if v.anonymous
    ]
    # quay's own files, read-only and inert, as Podman binds them into read-only containers.
    etc_options = ["bind", "rprivate", "nosuid", "nodev", "noexec", "ro"]
    for target, source in (
        ("/etc/hostname", inputs.etc_files.hostname),
        ("/etc/hosts", inputs.etc_files.hosts),
        ("/etc/resolv.conf", inputs.etc_files.resolv_conf),
    ):
        if target not in targets:  # a unit's own bind of the file wins, as in Docker
            own.append(_bind(str(source), target, etc_options))
    if inputs.notify_socket_dir is not None:
        notify_options = ["bind", "rprivate", "nosuid", "nodev", "noexec"]
        own.append(_bind(str(inputs.notify_socket_dir), NOTIFY_DIR, notify_options))
    if uses_init(inputs):
        # On the runtime's /dev tmpfs: the mount point is made there, not in the image's root
        # or a volume (units cannot mount at /dev). Read-only, and executable: no noexec.
        init_options = ["bind", "rprivate", "nosuid", "nodev", "ro"]
        own.append(_bind(str(inputs.init_binary), INIT_PATH, init_options))
    # Parents before children (Docker sorts by depth), so /srv then /srv/data; stable otherwise.
    own.sort(key=lambda m: _depth(m["destination"]))
    return defaults + own


def _default_mounts() -> list[dict[str, Any]]:
    return [
        {"destination": "/proc", "type": "proc", "source": "proc",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", f"size={SHM_SIZE}"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
    ]  # fmt: skip


def _unit_mount(mount: Mount, volumes_dir: Path) -> dict[str, Any]:
    target = _clean(mount.target)
    # "rro" (recursive, mount_setattr, kernel 5.12+; crun and runc 1.1 know it): with plain
    # "ro", mounts under a bound host directory would stay writable.
    rro = ["rro"] if mount.read_only else []
    if mount.type == "volume":
        # Stricter than Docker, which adds neither: a volume holds data, and a setuid binary or
        # device node planted in a volume (possibly shared with another unit) must not work.
        source = volumes_dir / (mount.source or "")
        return _bind(str(source), target, ["rbind", "rprivate", "nosuid", "nodev", *rro])
    if mount.type == "bind":
        # As Docker's --mount type=bind: no nosuid/nodev, the administrator chose the path.
        return _bind(mount.source or "", target, ["rbind", "rprivate", *rro])
    # tmpfs: nosuid and nodev as Docker. Docker also adds noexec; quay does not, since a unit
    # has no way to ask for exec back and /tmp on tmpfs commonly holds executables.
    options = ["nosuid", "nodev", "mode=1777"]
    if mount.size is not None:
        options.append(f"size={mount.size}")
    return {
        "destination": target,
        "type": "tmpfs",
        "source": "tmpfs",
        "options": options + (["ro"] if mount.read_only else []),
    }


def _bind(source: str, target: str, options: list[str]) -> dict[str, Any]:
    return {"destination": target, "type": "bind", "source": source, "options": options}


def _clean(path: str) -> str:
    cleaned = posixpath.normpath(path)
    return "/" if cleaned == "//" else cleaned


def _depth(path: str) -> int:
    return len([part for part in path.split("/") if part])


# --- linux ---------------------------------------------------------------------------------------


def _linux(inputs: SpecInputs) -> dict[str, Any]:
    linux: dict[str, Any] = {
        "namespaces": _namespaces(inputs),
        "cgroupsPath": cgroups_path(inputs.name, inputs.cgroup_driver),
        "resources": linux_resources(
            inputs.unit,
            driver=inputs.cgroup_driver,
            cgroups=inputs.cgroups,
            swap_limit=inputs.swap_limit,
            devices=inputs.devices,
        ),
        "sysctl": _sysctls(inputs.unit),
        "devices": [],
        "maskedPaths": list(MASKED_PATHS),
        "readonlyPaths": list(READONLY_PATHS),
    }
    if inputs.seccomp is not None:
        linux["seccomp"] = inputs.seccomp
    return linux


def _scope_properties(inputs: SpecInputs) -> dict[str, str]:
    limits = systemd_properties(inputs.unit, cgroups=inputs.cgroups, swap_limit=inputs.swap_limit)
    # At shutdown systemd stops every scope itself (SIGTERM, then SIGKILL after the scope's
    # TimeoutStopSec, 90 s by default): a PID 1 that ignores SIGTERM, as many do, would hold the
    # host's reboot for 90 s. The unit's stop_timeout is what quay itself would wait.
    stop_usec = round(inputs.unit.container.stop_timeout.total_seconds() * 1_000_000)
    return {**limits, f"{SYSTEMD_PROPERTY}TimeoutStopUSec": f"uint64 {stop_usec}"}


def _seccomp_bpf(inputs: SpecInputs) -> dict[str, str]:
    if inputs.seccomp is None or not inputs.seccomp_bpf:
        return {}
    return seccomp_bpf_annotation(inputs.seccomp_bpf)


def _namespaces(inputs: SpecInputs) -> list[dict[str, str]]:
    namespaces = [{"type": t} for t in ("pid", "mount", "uts", "ipc", "cgroup")]
    mode = inputs.unit.network.mode
    if mode == "host":
        if inputs.netns is not None:
            raise SpecError('network.mode = "host" joins no network namespace; got a netns path')
    elif inputs.netns is not None:
        namespaces.append({"type": "network", "path": inputs.netns})
    elif mode == "bridge":
        raise SpecError('network.mode = "bridge" needs the network namespace quay prepared')
    else:
        namespaces.append({"type": "network"})  # "none": a new one, loopback only
    return namespaces


def _sysctls(unit: Unit) -> dict[str, str]:
    host_network = unit.network.mode == "host"
    sysctls = {}
    for raw, value in unit.container.sysctls.items():
        name = _sysctl_name(raw)
        if host_network and name.startswith("net."):
            raise SpecError(f'sysctl {raw} would change the host\'s network (network.mode "host")')
        sysctls[name] = value
    return sysctls


def _sysctl_name(name: str) -> str:
    """The dotted form runtimes expect; ``net/ipv4/ip_forward`` is ``net.ipv4.ip_forward``.

    runc and crun turn dots back into slashes, so a slash form whose parts contain dots
    (``net/ipv4/conf/eth0.100/forwarding``) has no spelling they would write correctly.
    """
    if "/" not in name:
        return name
    parts = name.split("/")
    if any("." in part for part in parts):
        raise SpecError(
            f"sysctl {name}: a name with '.' inside a '/'-separated part cannot be passed "
            "to the OCI runtime"
        )
    return ".".join(parts)
