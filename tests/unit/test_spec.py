"""build_spec field by field: the config.json quay hands to crun and runc."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from quayd.isolation.cgroups import HostCgroups
from quayd.isolation.errors import SpecError
from quayd.isolation.resources import cpu_shares, systemd_properties
from quayd.isolation.spec import (
    DEFAULT_CAPABILITIES,
    DOCKER_ONLY_CAPABILITIES,
    MASKED_PATHS,
    NOTIFY_DIR,
    NOTIFY_SOCKET_NAME,
    READONLY_PATHS,
    EtcFiles,
    ImageDefaults,
    SpecInputs,
    build_spec,
    capabilities_for,
    cgroups_path,
    process_args,
    stop_signal,
    user_spec,
    volumes_for,
)
from quayd.isolation.users import ResolvedUser
from quayd.units.model import Unit
from quayd.units.values import CAPABILITIES

ROOTFS = Path("/var/lib/quay/containers/web/rootfs")
VOLUMES = Path("/var/lib/quay/volumes")
ETC = EtcFiles(
    hostname=Path("/run/quay/web/hostname"),
    hosts=Path("/run/quay/web/hosts"),
    resolv_conf=Path("/run/quay/web/resolv.conf"),
)
NETNS = "/run/netns/quay-web"


def make_unit(**tables: Any) -> Unit:
    container = {"image": "busybox", **tables.pop("container", {})}
    return Unit.model_validate({"container": container, **tables})


def inputs(
    unit: Unit | None = None,
    *,
    image: ImageDefaults | None = None,
    **overrides: Any,
) -> SpecInputs:
    values: dict[str, Any] = {
        "name": "web",
        "unit": unit or make_unit(),
        "image": image or ImageDefaults(cmd=("sh",)),
        "rootfs": ROOTFS,
        "netns": NETNS,
        "user": ResolvedUser(uid=0, gid=0, home="/root"),
        "env_files": {},
        "etc_files": ETC,
        "volumes_dir": VOLUMES,
        "notify_socket_dir": None,
        "cgroup_driver": "systemd",
        "seccomp": None,
    }
    values.update(overrides)
    return SpecInputs(**values)


def spec_of(unit: Unit | None = None, **overrides: Any) -> dict[str, Any]:
    return build_spec(inputs(unit, **overrides))


def mount_at(spec: dict[str, Any], destination: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [m for m in spec["mounts"] if m["destination"] == destination]
    assert len(found) == 1, f"{len(found)} mounts at {destination}"
    return found[0]


# --- the document as a whole ---------------------------------------------------------------------


def test_minimal_spec_is_complete_and_json() -> None:
    spec = spec_of()
    assert spec["ociVersion"] == "1.0.2"
    assert set(spec) == {
        "ociVersion", "process", "root", "hostname", "mounts", "annotations", "linux",
    }  # fmt: skip
    assert json.loads(json.dumps(spec)) == spec  # plain JSON types only
    assert spec["root"] == {"path": str(ROOTFS), "readonly": False}
    assert spec["annotations"] == {
        "org.quay.unit": "web",
        "org.quay.image": "busybox",
        "org.systemd.property.TimeoutStopUSec": "uint64 10000000",
    }
    process = spec["process"]
    assert process["terminal"] is False
    assert process["noNewPrivileges"] is True
    assert process["args"] == ["sh"]
    assert process["cwd"] == "/"


def test_same_inputs_same_document() -> None:
    assert json.dumps(spec_of(), sort_keys=True) == json.dumps(spec_of(), sort_keys=True)


def test_relative_rootfs_is_refused() -> None:
    with pytest.raises(SpecError, match="not absolute"):
        spec_of(rootfs=Path("rootfs"))


# --- process arguments: Docker's rules -----------------------------------------------------------

IMAGE = ImageDefaults(entrypoint=("/entry", "-e"), cmd=("cmd", "-c"))


@pytest.mark.parametrize(
    ("image", "command", "args", "expected"),
    [
        pytest.param(IMAGE, None, None, ["/entry", "-e", "cmd", "-c"], id="entrypoint+cmd"),
        pytest.param(IMAGE, None, ["a"], ["/entry", "-e", "a"], id="args-replace-cmd"),
        pytest.param(IMAGE, None, [], ["/entry", "-e"], id="empty-args-drop-cmd"),
        pytest.param(IMAGE, ["/bin/x"], None, ["/bin/x"], id="command-drops-cmd"),
        pytest.param(IMAGE, ["/bin/x", "1"], ["a"], ["/bin/x", "1", "a"], id="command+args"),
        pytest.param(IMAGE, ["/bin/x"], [], ["/bin/x"], id="command+empty-args"),
        pytest.param(ImageDefaults(cmd=("sh",)), None, None, ["sh"], id="cmd-only"),
        pytest.param(ImageDefaults(cmd=("sh",)), None, ["ls"], ["ls"], id="args-no-entrypoint"),
        pytest.param(ImageDefaults(entrypoint=("/e",)), None, None, ["/e"], id="entrypoint-only"),
        pytest.param(ImageDefaults(), ["/bin/x"], None, ["/bin/x"], id="empty-image+command"),
        pytest.param(ImageDefaults(), None, ["/bin/y"], ["/bin/y"], id="empty-image+args"),
    ],
)
def test_process_args_follow_docker(
    image: ImageDefaults, command: list[str] | None, args: list[str] | None, expected: list[str]
) -> None:
    container: dict[str, Any] = {}
    if command is not None:
        container["command"] = command
    if args is not None:
        container["args"] = args
    unit = make_unit(container=container)
    assert process_args(unit, image) == expected
    assert spec_of(unit, image=image)["process"]["args"] == expected


@pytest.mark.parametrize(
    ("image", "args", "message"),
    [
        pytest.param(ImageDefaults(), None, "image has no Entrypoint or Cmd", id="empty-image"),
        pytest.param(ImageDefaults(), [], "image has no Entrypoint or Cmd", id="empty-both"),
        pytest.param(
            ImageDefaults(cmd=("sh",)), [], r"args = \[\] replaces the image's Cmd", id="args-empty"
        ),
    ],
)
def test_nothing_to_run_is_refused(
    image: ImageDefaults, args: list[str] | None, message: str
) -> None:
    unit = make_unit(container={} if args is None else {"args": args})
    with pytest.raises(SpecError, match=f"nothing to run: .*{message}"):
        spec_of(unit, image=image)


@pytest.mark.parametrize(
    ("workdir", "image_workdir", "expected"),
    [
        (None, "", "/"),
        (None, "/srv", "/srv"),
        (None, "srv/app/", "/srv/app"),
        ("/app", "/srv", "/app"),
        ("/app/", "", "/app"),
    ],
)
def test_cwd(workdir: str | None, image_workdir: str, expected: str) -> None:
    unit = make_unit(container={"workdir": workdir} if workdir else {})
    image = ImageDefaults(cmd=("sh",), working_dir=image_workdir)
    assert spec_of(unit, image=image)["process"]["cwd"] == expected


# --- user and environment ------------------------------------------------------------------------


def test_user_fields() -> None:
    user = ResolvedUser(uid=1000, gid=1001, additional_gids=(10, 20), home="/home/app")
    assert spec_of(user=user)["process"]["user"] == {
        "uid": 1000,
        "gid": 1001,
        "additionalGids": [10, 20],
    }
    assert spec_of(user=ResolvedUser(5, 6))["process"]["user"] == {"uid": 5, "gid": 6}


@pytest.mark.parametrize(
    ("unit_user", "image_user", "expected"),
    [(None, "", ""), (None, "nobody", "nobody"), ("1000:1000", "nobody", "1000:1000")],
)
def test_user_spec(unit_user: str | None, image_user: str, expected: str) -> None:
    unit = make_unit(container={"user": unit_user} if unit_user else {})
    assert user_spec(unit, ImageDefaults(user=image_user)) == expected


def test_env_order_later_wins_and_defaults() -> None:
    unit = make_unit(container={"env": {"B": "unit", "D": "unit"}})
    image = ImageDefaults(cmd=("sh",), env=("A=image", "B=image", "C=image"))
    env = spec_of(unit, image=image, env_files={"C": "file", "D": "file", "E": "file"})["process"][
        "env"
    ]
    assert env == [
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOSTNAME=web",
        "A=image",
        "B=unit",
        "C=file",
        "D=unit",
        "E=file",
        "HOME=/root",
    ]


def test_env_image_path_and_home_win_over_defaults() -> None:
    image = ImageDefaults(cmd=("sh",), env=("PATH=/opt/bin", "HOME=/data"))
    env = spec_of(image=image, user=ResolvedUser(1, 1, home="/home/x"))["process"]["env"]
    assert "PATH=/opt/bin" in env
    assert "HOME=/data" in env
    assert not any(e.startswith("HOME=/home") for e in env)


def test_env_home_from_resolved_user() -> None:
    env = spec_of(user=ResolvedUser(1000, 1000, home="/home/app"))["process"]["env"]
    assert "HOME=/home/app" in env


def test_env_hostname_follows_unit_hostname() -> None:
    unit = make_unit(container={"hostname": "api.internal"})
    spec = spec_of(unit)
    assert spec["hostname"] == "api.internal"
    assert "HOSTNAME=api.internal" in spec["process"]["env"]


def test_env_malformed_image_entry_is_refused() -> None:
    with pytest.raises(SpecError, match="not NAME=value"):
        spec_of(image=ImageDefaults(cmd=("sh",), env=("JUSTANAME",)))


def test_notify_socket_env_and_mount() -> None:
    unit = make_unit(container={"env": {"NOTIFY_SOCKET": "/elsewhere"}})
    spec = spec_of(unit, notify_socket_dir=Path("/run/quay/notify/web"))
    env = spec["process"]["env"]
    assert [e for e in env if e.startswith("NOTIFY_SOCKET=")] == [
        f"NOTIFY_SOCKET={NOTIFY_DIR}/{NOTIFY_SOCKET_NAME}"
    ]
    assert mount_at(spec, NOTIFY_DIR) == {
        "destination": NOTIFY_DIR,
        "type": "bind",
        "source": "/run/quay/notify/web",
        "options": ["bind", "rprivate", "nosuid", "nodev", "noexec"],
    }


def test_no_notify_socket_without_dir() -> None:
    spec = spec_of()
    assert not any(e.startswith("NOTIFY_SOCKET=") for e in spec["process"]["env"])
    assert not [m for m in spec["mounts"] if m["destination"] == NOTIFY_DIR]


def test_unit_mount_at_notify_dir_is_refused() -> None:
    unit = make_unit(mounts=[{"type": "tmpfs", "target": NOTIFY_DIR}])
    with pytest.raises(SpecError, match="notify"):
        spec_of(unit, notify_socket_dir=Path("/run/quay/notify/web"))


@pytest.mark.parametrize(
    ("hostname", "expected"), [(None, "web"), ("db", "db"), ("db.example.org", "db.example.org")]
)
def test_hostname(hostname: str | None, expected: str) -> None:
    unit = make_unit(container={"hostname": hostname} if hostname else {})
    assert spec_of(unit)["hostname"] == expected


# --- capabilities --------------------------------------------------------------------------------

DEFAULTS = set(DEFAULT_CAPABILITIES)


@pytest.mark.parametrize(
    ("add", "drop", "expected"),
    [
        pytest.param([], [], DEFAULTS, id="defaults"),
        pytest.param(["NET_ADMIN"], [], DEFAULTS | {"CAP_NET_ADMIN"}, id="add-one"),
        pytest.param([], ["SETUID"], DEFAULTS - {"CAP_SETUID"}, id="drop-one"),
        pytest.param(["NET_RAW"], [], DEFAULTS | {"CAP_NET_RAW"}, id="add-back-dockers"),
        pytest.param([], ["CAP_SYS_ADMIN"], DEFAULTS, id="drop-absent"),
        pytest.param(["CHOWN"], [], DEFAULTS, id="add-present"),
        pytest.param([], ["ALL"], set(), id="drop-all"),
        pytest.param(["NET_BIND_SERVICE"], ["ALL"], {"CAP_NET_BIND_SERVICE"}, id="drop-all-add"),
        pytest.param(["ALL"], [], set(CAPABILITIES), id="add-all"),
        pytest.param(
            ["ALL"], ["SYS_ADMIN"], set(CAPABILITIES) - {"CAP_SYS_ADMIN"}, id="add-all-drop-one"
        ),
        # Docker's TweakCapabilities: cap_add ALL wins over cap_drop ALL.
        pytest.param(["ALL"], ["ALL"], set(CAPABILITIES), id="add-all-drop-all"),
        pytest.param(
            ["SYS_PTRACE"],
            ["KILL", "SETFCAP"],
            (DEFAULTS - {"CAP_KILL", "CAP_SETFCAP"}) | {"CAP_SYS_PTRACE"},
            id="add-and-drop",
        ),
    ],
)
def test_capabilities(add: list[str], drop: list[str], expected: set[str]) -> None:
    unit = make_unit(container={"cap_add": add, "cap_drop": drop})
    assert capabilities_for(unit) == expected
    caps = spec_of(unit)["process"]["capabilities"]
    for kind in ("bounding", "effective", "permitted"):
        assert caps[kind] == sorted(expected), kind
    assert caps["inheritable"] == []
    assert caps["ambient"] == []


def test_default_capabilities_are_podmans_eleven() -> None:
    assert len(DEFAULT_CAPABILITIES) == 11
    # Docker's 14 are these plus the three podman dropped.
    assert len(DEFAULT_CAPABILITIES | DOCKER_ONLY_CAPABILITIES) == 14
    assert not DEFAULT_CAPABILITIES & DOCKER_ONLY_CAPABILITIES
    assert DOCKER_ONLY_CAPABILITIES <= CAPABILITIES
    assert DEFAULT_CAPABILITIES <= CAPABILITIES
    assert "CAP_SYS_ADMIN" not in DEFAULT_CAPABILITIES
    assert "CAP_NET_ADMIN" not in DEFAULT_CAPABILITIES


# --- namespaces and network modes ----------------------------------------------------------------

BASE_NAMESPACES = [{"type": t} for t in ("pid", "mount", "uts", "ipc", "cgroup")]


@pytest.mark.parametrize(
    ("mode", "netns", "expected"),
    [
        ("bridge", NETNS, [*BASE_NAMESPACES, {"type": "network", "path": NETNS}]),
        ("none", None, [*BASE_NAMESPACES, {"type": "network"}]),
        ("none", NETNS, [*BASE_NAMESPACES, {"type": "network", "path": NETNS}]),
        ("host", None, BASE_NAMESPACES),
    ],
)
def test_namespaces(mode: str, netns: str | None, expected: list[dict[str, str]]) -> None:
    unit = make_unit(network={"mode": mode})
    assert spec_of(unit, netns=netns)["linux"]["namespaces"] == expected


def test_bridge_without_netns_is_refused() -> None:
    with pytest.raises(SpecError, match="bridge"):
        spec_of(netns=None)


def test_host_with_netns_is_refused() -> None:
    with pytest.raises(SpecError, match="host"):
        spec_of(make_unit(network={"mode": "host"}), netns=NETNS)


@pytest.mark.parametrize("mode", ["bridge", "none", "host"])
def test_sys_is_read_only_in_every_network_mode(mode: str) -> None:
    unit = make_unit(network={"mode": mode})
    spec = spec_of(unit, netns=NETNS if mode == "bridge" else None)
    assert mount_at(spec, "/sys")["options"] == ["nosuid", "noexec", "nodev", "ro"]
    assert "ro" in mount_at(spec, "/sys/fs/cgroup")["options"]


# --- linux section -------------------------------------------------------------------------------


def test_masked_and_readonly_paths() -> None:
    linux = spec_of()["linux"]
    assert linux["maskedPaths"] == list(MASKED_PATHS)
    assert linux["readonlyPaths"] == list(READONLY_PATHS)
    for path in (
        "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
        "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
        "/sys/devices/virtual/powercap", "/proc/asound",
    ):  # fmt: skip
        assert path in linux["maskedPaths"]
    for path in ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"):
        assert path in linux["readonlyPaths"]


def test_devices_empty_and_device_cgroup_denies_all() -> None:
    linux = spec_of()["linux"]
    assert linux["devices"] == []
    assert linux["resources"]["devices"] == [{"allow": False, "access": "rwm"}]


@pytest.mark.parametrize(
    ("driver", "expected"),
    [("systemd", "quay.slice:quay:web"), ("cgroupfs", "/quay.slice/quay-web.scope")],
)
def test_cgroups_path(driver: str, expected: str) -> None:
    assert cgroups_path("web", driver) == expected  # type: ignore[arg-type]
    assert spec_of(cgroup_driver=driver)["linux"]["cgroupsPath"] == expected


def test_seccomp_only_when_given() -> None:
    assert "seccomp" not in spec_of()["linux"]
    profile = {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": []}
    assert spec_of(seccomp=profile)["linux"]["seccomp"] == profile


def test_precompiled_seccomp_goes_in_crun_annotation_next_to_the_json_filter() -> None:
    profile = {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": []}
    program = bytes(range(16))
    spec = spec_of(seccomp=profile, seccomp_bpf=program)
    assert spec["annotations"]["run.oci.seccomp_bpf_data"] == "AAECAwQFBgcICQoLDA0ODw=="
    assert spec["linux"]["seccomp"] == profile  # flags for crun, the filter for runc
    # No filter, no program: nothing to load.
    assert "run.oci.seccomp_bpf_data" not in spec_of(seccomp_bpf=program)["annotations"]
    assert "run.oci.seccomp_bpf_data" not in spec_of(seccomp=profile)["annotations"]


def test_rlimits() -> None:
    assert spec_of()["process"]["rlimits"] == [
        {"type": "RLIMIT_NOFILE", "hard": 524288, "soft": 1024}
    ]


@pytest.mark.parametrize(
    ("ceiling", "hard", "soft"), [(1_048_576, 524288, 1024), (20000, 20000, 1024), (512, 512, 512)]
)
def test_rlimits_capped_at_the_agents_own(ceiling: int, hard: int, soft: int) -> None:
    assert spec_of(nofile_ceiling=ceiling)["process"]["rlimits"] == [
        {"type": "RLIMIT_NOFILE", "hard": hard, "soft": soft}
    ]


@pytest.mark.parametrize("read_only", [True, False])
def test_read_only_root(read_only: bool) -> None:
    unit = make_unit(container={"read_only": read_only})
    assert spec_of(unit)["root"]["readonly"] is read_only


def test_sysctls() -> None:
    unit = make_unit(
        container={
            "sysctls": {
                "net.ipv4.ip_unprivileged_port_start": 80,
                "net/core/somaxconn": "1024",
                "kernel.shmmax": "1000",
            }
        }
    )
    assert spec_of(unit)["linux"]["sysctl"] == {
        "net.ipv4.ip_unprivileged_port_start": "80",
        "net.core.somaxconn": "1024",
        "kernel.shmmax": "1000",
    }


def test_sysctl_slash_form_with_dotted_part_is_refused() -> None:
    unit = make_unit(container={"sysctls": {"net/ipv4/conf/eth0.100/forwarding": "1"}})
    with pytest.raises(SpecError, match="cannot be passed"):
        spec_of(unit)


def test_net_sysctl_with_host_network_is_refused() -> None:
    # The unit layer refuses this too; the spec builder does not rely on it.
    unit = Unit.model_construct(
        container=make_unit(container={"sysctls": {"net.core.somaxconn": "1"}}).container,
        network=make_unit(network={"mode": "host"}).network,
        **{k: v for k, v in make_unit() if k not in ("container", "network")},
    )
    with pytest.raises(SpecError, match="host's network"):
        spec_of(unit, netns=None)


# --- resources -----------------------------------------------------------------------------------


def test_no_limits_by_default() -> None:
    assert spec_of()["linux"]["resources"] == {"devices": [{"allow": False, "access": "rwm"}]}


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ({"memory": "256M"}, {"memory": {"limit": 256 << 20, "swap": 256 << 20}}),
        ({"cpus": 1.5}, {"cpu": {"quota": 150000, "period": 100000}}),
        ({"cpus": 0.01}, {"cpu": {"quota": 1000, "period": 100000}}),
        ({"cpus": 2}, {"cpu": {"quota": 200000, "period": 100000}}),
        ({"cpu_weight": 100}, {"cpu": {"shares": 2598}}),
        ({"pids": 512}, {"pids": {"limit": 512}}),
        (
            {"memory": "1G", "cpus": 0.5, "cpu_weight": 1, "pids": 1},
            {
                "memory": {"limit": 1 << 30, "swap": 1 << 30},
                "cpu": {"quota": 50000, "period": 100000, "shares": 2},
                "pids": {"limit": 1},
            },
        ),
    ],
)
def test_resources(table: dict[str, Any], expected: dict[str, Any]) -> None:
    resources = spec_of(make_unit(resources=table))["linux"]["resources"]
    assert resources.pop("devices") == [{"allow": False, "access": "rwm"}]
    assert resources == expected


def test_systemd_scope_properties_carry_the_limits() -> None:
    unit = make_unit(resources={"memory": "64M", "cpus": 0.5, "cpu_weight": 200, "pids": 64})
    annotations = spec_of(unit)["annotations"]
    assert annotations == {
        "org.quay.unit": "web",
        "org.quay.image": "busybox",
        "org.systemd.property.MemoryMax": f"uint64 {64 << 20}",
        "org.systemd.property.TasksMax": "uint64 64",
        "org.systemd.property.CPUQuotaPerSecUSec": "uint64 500000",
        "org.systemd.property.CPUWeight": "uint64 200",
        "org.systemd.property.TimeoutStopUSec": "uint64 10000000",
    }
    assert systemd_properties(unit) == {
        key: value
        for key, value in annotations.items()
        if key.startswith("org.systemd.") and not key.endswith("TimeoutStopUSec")
    }


def test_the_scope_stops_within_the_units_stop_timeout() -> None:
    # systemd stops the scopes itself at shutdown: SIGKILL after TimeoutStopSec (90 s unless set)
    unit = make_unit(container={"stop_timeout": "2s"})
    assert spec_of(unit)["annotations"]["org.systemd.property.TimeoutStopUSec"] == "uint64 2000000"
    cgroupfs = spec_of(unit, cgroup_driver="cgroupfs")["annotations"]
    assert not any(key.startswith("org.systemd.") for key in cgroupfs)


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ({}, {}),
        ({"cpus": 2}, {"org.systemd.property.CPUQuotaPerSecUSec": "uint64 2000000"}),
        ({"cpus": 0.01}, {"org.systemd.property.CPUQuotaPerSecUSec": "uint64 10000"}),
        ({"memory": "1G"}, {"org.systemd.property.MemoryMax": f"uint64 {1 << 30}"}),
    ],
)
def test_systemd_scope_properties_only_for_set_limits(
    table: dict[str, Any], expected: dict[str, str]
) -> None:
    assert systemd_properties(make_unit(resources=table)) == expected


def test_no_systemd_properties_under_cgroupfs() -> None:
    unit = make_unit(resources={"memory": "64M", "cpus": 0.5, "cpu_weight": 200, "pids": 64})
    annotations = spec_of(unit, cgroup_driver="cgroupfs")["annotations"]
    assert annotations == {"org.quay.unit": "web", "org.quay.image": "busybox"}


def test_memory_without_swap_accounting() -> None:
    resources = spec_of(make_unit(resources={"memory": "1G"}), swap_limit=False)["linux"][
        "resources"
    ]
    assert resources["memory"] == {"limit": 1 << 30}


def test_on_v2_under_systemd_the_scope_holds_the_memory_limit() -> None:
    unit = make_unit(resources={"memory": "64M", "pids": 64, "io_weight": 300})
    spec = spec_of(unit, cgroups=HostCgroups(version=2))
    assert "memory" not in spec["linux"]["resources"]
    assert spec["linux"]["resources"]["unified"] == {"io.weight": "default 300"}
    assert spec["annotations"] == {
        "org.quay.unit": "web",
        "org.quay.image": "busybox",
        "org.systemd.property.MemoryMax": f"uint64 {64 << 20}",
        "org.systemd.property.MemorySwapMax": "uint64 0",
        "org.systemd.property.TasksMax": "uint64 64",
        "org.systemd.property.IOWeight": "uint64 300",
        "org.systemd.property.TimeoutStopUSec": "uint64 10000000",
    }


def test_on_v2_under_cgroupfs_the_runtime_writes_every_limit() -> None:
    unit = make_unit(resources={"memory": "64M", "io_weight": 300})
    spec = spec_of(unit, cgroups=HostCgroups(version=2), cgroup_driver="cgroupfs")
    assert spec["linux"]["resources"]["memory"] == {"limit": 64 << 20, "swap": 64 << 20}
    assert spec["annotations"] == {"org.quay.unit": "web", "org.quay.image": "busybox"}


def test_device_limits_take_the_resolved_numbers() -> None:
    unit = make_unit(resources={"device_write_bps": {"/dev/disk/by-id/x": "5M"}})
    spec = spec_of(unit, devices={"/dev/disk/by-id/x": (8, 16)})
    assert spec["linux"]["resources"]["blockIO"] == {
        "throttleWriteBpsDevice": [{"major": 8, "minor": 16, "rate": 5 << 20}]
    }
    with pytest.raises(SpecError, match="no device number"):
        spec_of(unit)


def test_cpus_below_kernel_minimum_is_refused() -> None:
    with pytest.raises(SpecError, match=r"0\.01"):
        spec_of(make_unit(resources={"cpus": 0.005}))


def runtime_weight(shares: int) -> int:
    """What crun 1.8 and runc 1.1 write to cgroup v2 cpu.weight for OCI cpu.shares."""
    return 1 + ((shares - 2) * 9999) // 262142


@pytest.mark.parametrize(("weight", "shares"), [(1, 2), (100, 2598), (200, 5220), (10000, 262144)])
def test_cpu_shares_known_values(weight: int, shares: int) -> None:
    assert cpu_shares(weight) == shares


def test_cpu_shares_round_trip_exactly_through_the_runtime_conversion() -> None:
    for weight in range(1, 10001):
        shares = cpu_shares(weight)
        assert 2 <= shares <= 262144
        assert runtime_weight(shares) == weight, weight


@pytest.mark.parametrize("weight", [0, 10001])
def test_cpu_shares_out_of_range(weight: int) -> None:
    with pytest.raises(SpecError):
        cpu_shares(weight)


# --- mounts --------------------------------------------------------------------------------------


def test_default_mounts() -> None:
    mounts = {m["destination"]: m for m in spec_of()["mounts"]}
    assert mounts["/proc"] == {
        "destination": "/proc",
        "type": "proc",
        "source": "proc",
        "options": ["nosuid", "noexec", "nodev"],
    }
    assert mounts["/dev"]["type"] == "tmpfs"
    assert mounts["/dev"]["options"] == ["nosuid", "strictatime", "mode=755", "size=65536k"]
    assert mounts["/dev/pts"]["type"] == "devpts"
    assert mounts["/dev/pts"]["options"] == [
        "nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5",
    ]  # fmt: skip
    assert mounts["/dev/shm"]["options"] == [
        "nosuid", "noexec", "nodev", "mode=1777", f"size={64 << 20}",
    ]  # fmt: skip
    assert mounts["/dev/mqueue"]["type"] == "mqueue"
    assert mounts["/dev/mqueue"]["options"] == ["nosuid", "noexec", "nodev"]
    assert mounts["/sys"]["type"] == "sysfs"
    assert mounts["/sys/fs/cgroup"]["type"] == "cgroup"
    order = [m["destination"] for m in spec_of()["mounts"]]
    assert order[:7] == [
        "/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/sys/fs/cgroup",
    ]  # fmt: skip


def test_etc_files_bound_read_only() -> None:
    spec = spec_of()
    for target, source in (
        ("/etc/hostname", ETC.hostname),
        ("/etc/hosts", ETC.hosts),
        ("/etc/resolv.conf", ETC.resolv_conf),
    ):
        assert mount_at(spec, target) == {
            "destination": target,
            "type": "bind",
            "source": str(source),
            "options": ["bind", "rprivate", "nosuid", "nodev", "noexec", "ro"],
        }


def test_unit_bind_of_an_etc_file_wins() -> None:
    unit = make_unit(mounts=[{"type": "bind", "source": "/etc/my-hosts", "target": "/etc/hosts"}])
    assert mount_at(spec_of(unit), "/etc/hosts")["source"] == "/etc/my-hosts"


@pytest.mark.parametrize(
    ("mount", "expected"),
    [
        pytest.param(
            {"type": "volume", "source": "data", "target": "/data"},
            {"type": "bind", "source": str(VOLUMES / "data"),
             "options": ["rbind", "rprivate", "nosuid", "nodev"]},
            id="volume",
        ),
        pytest.param(
            {"type": "volume", "source": "data", "target": "/data/", "read_only": True},
            {"type": "bind", "source": str(VOLUMES / "data"),
             "options": ["rbind", "rprivate", "nosuid", "nodev", "rro"]},
            id="volume-ro",
        ),
        pytest.param(
            {"type": "bind", "source": "/srv/www", "target": "/data"},
            {"type": "bind", "source": "/srv/www", "options": ["rbind", "rprivate"]},
            id="bind",
        ),
        pytest.param(
            {"type": "bind", "source": "/srv/www", "target": "/data", "read_only": True},
            {"type": "bind", "source": "/srv/www", "options": ["rbind", "rprivate", "rro"]},
            id="bind-ro",
        ),
        pytest.param(
            {"type": "tmpfs", "target": "/data"},
            {"type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]},
            id="tmpfs",
        ),
        pytest.param(
            {"type": "tmpfs", "target": "/data", "size": "64M", "read_only": True},
            {"type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "nodev", "mode=1777", f"size={64 << 20}", "ro"]},
            id="tmpfs-size-ro",
        ),
    ],
)  # fmt: skip
def test_unit_mounts(mount: dict[str, Any], expected: dict[str, Any]) -> None:
    spec = spec_of(make_unit(mounts=[mount]))
    assert mount_at(spec, "/data") == {"destination": "/data", **expected}


def test_mounts_sorted_parents_first_after_defaults() -> None:
    unit = make_unit(
        mounts=[
            {"type": "tmpfs", "target": "/srv/data/cache"},
            {"type": "volume", "source": "srv", "target": "/srv"},
            {"type": "bind", "source": "/x", "target": "/srv/data"},
            {"type": "tmpfs", "target": "/etc"},
        ]
    )
    order = [m["destination"] for m in spec_of(unit)["mounts"]][7:]
    assert order == [
        "/srv", "/etc", "/srv/data", "/etc/hostname", "/etc/hosts", "/etc/resolv.conf",
        "/srv/data/cache",
    ]  # fmt: skip


def test_unit_mount_replaces_default_shm() -> None:
    unit = make_unit(mounts=[{"type": "tmpfs", "target": "/dev/shm", "size": "1G"}])
    shm = mount_at(spec_of(unit), "/dev/shm")
    assert f"size={1 << 30}" in shm["options"]


@pytest.mark.parametrize(
    "target", ["/proc", "/proc/sys/net", "/sys", "/sys/fs/cgroup", "/dev", "/dev/pts"]
)
def test_mount_over_runtime_mounts_is_refused(target: str) -> None:
    unit = make_unit(mounts=[{"type": "tmpfs", "target": target}])
    with pytest.raises(SpecError, match="not allowed"):
        spec_of(unit)


def test_image_volumes_become_anonymous_volumes() -> None:
    unit = make_unit(mounts=[{"type": "volume", "source": "pg", "target": "/var/lib/pg/"}])
    image = ImageDefaults(cmd=("sh",), volumes=("/var/lib/pg", "/cache/", "/cache"))
    spec = spec_of(unit, image=image)
    assert mount_at(spec, "/var/lib/pg")["source"] == str(VOLUMES / "pg")
    cache = mount_at(spec, "/cache")
    assert cache["type"] == "bind"
    assert cache["options"] == ["rbind", "rprivate", "nosuid", "nodev"]
    assert cache["source"].startswith(str(VOLUMES / "_anon-web-"))

    uses = volumes_for("web", unit, image, VOLUMES)
    assert [(u.target, u.anonymous) for u in uses] == [("/var/lib/pg", False), ("/cache", True)]
    anonymous = uses[1]
    assert cache["source"] == str(anonymous.host_path)
    assert anonymous.host_path == VOLUMES / anonymous.name
    # Stable across re-creation, different per unit and per path.
    assert volumes_for("web", unit, image, VOLUMES)[1].name == anonymous.name
    assert volumes_for("api", unit, image, VOLUMES)[1].name != anonymous.name
    other = ImageDefaults(cmd=("sh",), volumes=("/cache2",))
    assert volumes_for("web", unit, other, VOLUMES)[1].name != anonymous.name


@pytest.mark.parametrize("volume", ["relative", "/", "/a/../etc"])
def test_unusable_image_volume_is_refused(volume: str) -> None:
    with pytest.raises(SpecError, match="VOLUME"):
        spec_of(image=ImageDefaults(cmd=("sh",), volumes=(volume,)))


def test_anonymous_volume_names_cannot_clash_with_unit_volume_names() -> None:
    uses = volumes_for("web", make_unit(), ImageDefaults(volumes=("/data",)), VOLUMES)
    assert uses[0].name.startswith("_")  # unit volume names start with a letter or digit


# --- stop signal ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("unit_signal", "image_signal", "expected"),
    [
        (None, None, "SIGTERM"),
        (None, "SIGQUIT", "SIGQUIT"),
        (None, "quit", "SIGQUIT"),
        (None, "3", "SIGQUIT"),
        ("SIGINT", "SIGQUIT", "SIGINT"),
    ],
)
def test_stop_signal(unit_signal: str | None, image_signal: str | None, expected: str) -> None:
    unit = make_unit(container={"stop_signal": unit_signal} if unit_signal else {})
    assert stop_signal(unit, ImageDefaults(stop_signal=image_signal)) == expected


def test_bad_image_stop_signal_is_refused() -> None:
    with pytest.raises(SpecError, match="StopSignal"):
        stop_signal(make_unit(), ImageDefaults(stop_signal="SIGNOPE"))


def test_no_terminal_by_default() -> None:
    process = spec_of()["process"]
    assert process["terminal"] is False
    assert "consoleSize" not in process
    assert not any(entry.startswith("TERM=") for entry in process["env"])


def test_a_terminal_with_its_size_and_term() -> None:
    process = spec_of(terminal=True, console_size=(24, 80))["process"]
    assert process["terminal"] is True
    assert process["consoleSize"] == {"height": 24, "width": 80}
    assert "TERM=xterm" in process["env"]
    unsized = spec_of(make_unit(container={"env": {"TERM": "vt100"}}), terminal=True)["process"]
    assert "consoleSize" not in unsized
    assert [e for e in unsized["env"] if e.startswith("TERM=")] == ["TERM=vt100"]
