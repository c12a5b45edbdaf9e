"""build_spec's config.json run by the real crun and runc, checked from inside the container.

Each test writes a bundle (busybox-static copied into a plain directory: no overlay needed, the
spec does not care what the root is), runs ``RUNTIME run`` in a throwaway systemd host (on this
kind of machine crun's cgroupfs mode fails outside it, some v1 controllers not being mounted),
and parses what a shell script printed from inside the container: PID 1, hostname, capability
sets, NoNewPrivs, Seccomp, uid/gid/groups, environment, read-only root and mounts, rlimits, the
cgroup limits, the network namespace.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
from collections.abc import Iterator, Mapping
from typing import Any, Literal

import pytest

from quayd.isolation.environment import read_env_files
from quayd.isolation.resources import cpu_shares
from quayd.isolation.seccomp import load_default_profile
from quayd.isolation.spec import (
    DEFAULT_CAPABILITIES,
    NOTIFY_DIR,
    NOTIFY_SOCKET_NAME,
    EtcFiles,
    ImageDefaults,
    SpecInputs,
    build_spec,
    seccomp_for,
    user_spec,
)
from quayd.isolation.users import resolve_user
from quayd.units.model import Unit
from tests.support.systemd_host import (
    BUSYBOX,
    CONTAINER_TEST_MARKS,
    RUNTIMES,
    SystemdHost,
    systemd_host,
)

Driver = Literal["cgroupfs", "systemd"]

# Linux capability numbers (include/uapi/linux/capability.h), for the masks in /proc/1/status.
CAP_NUMBERS = {
    name: number
    for number, name in enumerate(
        [
            "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
            "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
            "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
            "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO",
            "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN",
            "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME",
            "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE",
            "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN",
            "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
            "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
        ]
    )
}  # fmt: skip


pytestmark = CONTAINER_TEST_MARKS

# What the container reports, one KEY=VALUE per line. Busybox's shell runs its applets without
# links, so the root holds only /bin/busybox and /bin/sh.
PROBE = r"""
echo "pid=$$"
echo "hostname=$(hostname)"
echo "etc_hostname=$(cat /etc/hostname)"
echo "etc_hosts=$(cat /etc/hosts)"
grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/1/status \
  | sed -E 's/:[[:space:]]+/=/'
echo "uid=$(id -u)"
echo "gid=$(id -g)"
echo "groups=$(id -G)"
echo "cwd=$(pwd)"
for v in PATH HOME HOSTNAME NOTIFY_SOCKET FROM_IMAGE FROM_FILE FROM_UNIT LAYERED; do
  eval "echo env_$v=\${$v-<unset>}"
done
probe() { if touch "$1" 2>/dev/null; then echo "$2=rw"; else echo "$2=ro"; fi; }
probe /probe root
probe /data/probe volume
probe /scratch/probe tmpfs
probe /etc/hosts etc_hosts_file
echo "notify_dir=$(test -d /run/quay-notify && echo yes || echo no)"
if echo x 2>/dev/null >/proc/sys/kernel/domainname; then echo procsys=rw; else echo procsys=ro; fi
echo "kcore_bytes=$(cat /proc/kcore 2>/dev/null | wc -c)"
echo "volume_options=$(grep ' /data ' /proc/mounts | cut -d' ' -f4)"
echo "tmpfs_options=$(grep ' /scratch ' /proc/mounts | cut -d' ' -f4)"
echo "nofile=$(ulimit -n)"
echo "nofile_hard=$(ulimit -Hn)"
echo "netdevs=$(ls /sys/class/net | tr '\n' ' ')"
echo "netns=$(readlink /proc/self/ns/net)"
echo "sys=$(grep ' /sys sysfs ' /proc/mounts | cut -d' ' -f4 | cut -d, -f1)"
echo "devs=$(ls /dev | tr '\n' ' ')"
if mknod /dev/probe-null c 1 3 2>/dev/null; then echo mknod=ok; else echo mknod=refused; fi
if ping -c 1 -W 1 127.0.0.1 >/dev/null 2>&1; then echo ping=ok; else echo ping=refused; fi
if unshare -U true 2>/dev/null; then echo userns=ok; else echo userns=refused; fi
# As root of a new user and mount namespace, a tmpfs over /etc (seen there only).
if e=$(unshare -Urm sh -c 'mount -t tmpfs none /etc' 2>&1); then echo userns_mount=ok
else echo userns_mount=refused; echo "userns_error=$e"; fi
echo "fork=$(sh -c 'echo forked')"
c=/sys/fs/cgroup
if [ -d $c/memory ]; then
  echo "memory=$(cat $c/memory/memory.limit_in_bytes)"
  echo "memsw=$(cat $c/memory/memory.memsw.limit_in_bytes 2>/dev/null || echo none)"
  echo "pids=$(cat $c/pids/pids.max)"
  echo "quota=$(cat $c/cpu/cpu.cfs_quota_us) $(cat $c/cpu/cpu.cfs_period_us)"
  echo "shares=$(cat $c/cpu/cpu.shares)"
else
  echo "memory=$(cat $c/memory.max)"
  echo "pids=$(cat $c/pids.max)"
  echo "quota=$(cat $c/cpu.max)"
  echo "weight=$(cat $c/cpu.weight)"
fi
"""

PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:App:/home/app:/bin/sh\n"
GROUP = "root:x:0:\napp:x:1000:\nwheel:x:10:app\nstaff:x:50:app\n"


@pytest.fixture(scope="module")
def host() -> Iterator[SystemdHost]:
    with systemd_host() as booted:
        yield booted


def mask(capabilities: frozenset[str] | set[str]) -> str:
    return f"{sum(1 << CAP_NUMBERS[c] for c in capabilities):016x}"


def run_container(
    host: SystemdHost,
    runtime: str,
    unit_tables: Mapping[str, Any],
    *,
    name: str,
    driver: Driver = "cgroupfs",
    image: ImageDefaults | None = None,
    seccomp: bool = True,
    notify: bool = False,
    env_file: str = "",
) -> dict[str, str]:
    """Write a bundle for the unit, run it to completion, return what PROBE printed."""
    bundle = host.state_dir / name
    rootfs = bundle / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    (rootfs / "etc").mkdir()
    shutil.copy(BUSYBOX, rootfs / "bin" / "busybox")
    os.symlink("busybox", rootfs / "bin" / "sh")
    (rootfs / "etc" / "passwd").write_text(PASSWD)
    (rootfs / "etc" / "group").write_text(GROUP)
    (bundle / "hostname").write_text("from-quay\n")
    (bundle / "hosts").write_text("127.0.0.1 localhost quay-hosts\n")
    (bundle / "resolv.conf").write_text("nameserver 127.0.0.53\n")
    (bundle / "app.env").write_text(f"# env file\nFROM_FILE=file\nLAYERED=file\n{env_file}")
    volumes = bundle / "volumes"
    (volumes / "data").mkdir(parents=True)
    (bundle / "notify").mkdir()

    unit = Unit.model_validate(
        {
            **unit_tables,
            "container": {
                "image": "busybox",
                "command": ["/bin/sh", "-c", PROBE],
                "env_files": [str(bundle / "app.env")],
                **unit_tables.get("container", {}),
            },
        }
    )
    image = image or ImageDefaults(env=("FROM_IMAGE=image", "LAYERED=image"))
    profile = load_default_profile() if seccomp else None
    spec = build_spec(
        SpecInputs(
            name=name,
            unit=unit,
            image=image,
            rootfs=rootfs,
            netns=None,
            user=resolve_user(user_spec(unit, image), rootfs, image="busybox"),
            env_files=read_env_files(unit.container.env_files),
            etc_files=EtcFiles(bundle / "hostname", bundle / "hosts", bundle / "resolv.conf"),
            volumes_dir=volumes,
            notify_socket_dir=bundle / "notify" if notify else None,
            cgroup_driver=driver,
            seccomp=seccomp_for(unit, profile),
            # This machine's root lacks CAP_SYS_RESOURCE: limits cannot go above quayd's own.
            nofile_ceiling=resource.getrlimit(resource.RLIMIT_NOFILE)[1],
        )
    )
    (bundle / "config.json").write_text(json.dumps(spec, indent=1))
    argv = [runtime, "--root", str(host.state_dir / f"runtime-{runtime}")]
    if driver == "systemd":
        argv.append("--systemd-cgroup")
    try:
        done = host.run([*argv, "run", "--bundle", str(bundle), name], check=False, timeout=60)
    finally:
        host.run([*argv, "delete", "--force", name], check=False)
    assert done.returncode == 0, f"{runtime} run exited {done.returncode}:\n{done.stderr}"
    report: dict[str, str] = {}
    for line in done.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            report.setdefault(key, value)
    return report


DEFAULT_UNIT: dict[str, Any] = {
    "container": {
        "read_only": True,
        "hostname": "probe-host",
        "env": {"FROM_UNIT": "unit", "LAYERED": "unit"},
    },
    "resources": {"memory": "64M", "cpus": 0.5, "cpu_weight": 200, "pids": 100},
    "network": {"mode": "none"},
    "mounts": [
        {"type": "volume", "source": "data", "target": "/data", "read_only": True},
        {"type": "tmpfs", "target": "/scratch", "size": "1M"},
    ],
}


@pytest.mark.parametrize("driver", ["cgroupfs", "systemd"])
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_default_isolation(host: SystemdHost, runtime: str, driver: Driver) -> None:
    name = f"spec-default-{runtime}-{driver}"
    report = run_container(host, runtime, DEFAULT_UNIT, name=name, driver=driver, notify=True)

    assert report["pid"] == "1"
    assert report["hostname"] == "probe-host"
    assert report["etc_hostname"] == "from-quay"
    assert report["etc_hosts"] == "127.0.0.1 localhost quay-hosts"
    expected = mask(DEFAULT_CAPABILITIES)
    assert expected == "00000000800405fb"  # podman's well-known default set
    for kind in ("CapEff", "CapPrm", "CapBnd"):
        assert report[kind] == expected, kind
    assert report["CapInh"] == report["CapAmb"] == "0000000000000000"
    assert report["NoNewPrivs"] == "1"
    assert report["Seccomp"] == "2"
    assert (report["uid"], report["gid"], report["groups"]) == ("0", "0", "0")
    assert report["cwd"] == "/"

    assert report["env_PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert report["env_HOME"] == "/root"
    assert report["env_HOSTNAME"] == "probe-host"
    assert report["env_NOTIFY_SOCKET"] == f"{NOTIFY_DIR}/{NOTIFY_SOCKET_NAME}"
    assert report["notify_dir"] == "yes"
    assert (report["env_FROM_IMAGE"], report["env_FROM_FILE"], report["env_FROM_UNIT"]) == (
        "image",
        "file",
        "unit",
    )
    assert report["env_LAYERED"] == "unit"

    assert report["root"] == "ro"
    assert report["volume"] == "ro"
    assert report["tmpfs"] == "rw"
    assert report["etc_hosts_file"] == "ro"
    assert report["sys"] == "ro"
    assert report["procsys"] == "ro"
    assert report["kcore_bytes"] == "0"  # masked
    assert {"ro", "nosuid", "nodev"} <= set(report["volume_options"].split(","))
    assert {"rw", "nosuid", "nodev", "size=1024k"} <= set(report["tmpfs_options"].split(","))
    assert report["nofile"] == "1024"
    assert report["netdevs"].split() == ["lo"]
    # Only the runtime's standard devices (plus the directories and links it makes).
    devices = set(report["devs"].split())
    assert {"null", "zero", "full", "random", "urandom", "tty", "ptmx"} <= devices
    assert not devices & {"sda", "vda", "mem", "kmsg", "loop0", "nvme0"}
    # Neither CAP_MKNOD nor CAP_NET_RAW by default (podman's set, not Docker's).
    assert (report["mknod"], report["ping"]) == ("refused", "refused")
    # No user namespaces either (Docker's profile, not podman's); fork and threads still work.
    assert (report["userns"], report["userns_mount"]) == ("refused", "refused")
    assert report["fork"] == "forked"

    if "shares" in report:  # cgroup v1
        assert report["memory"] == str(64 << 20)
        assert report["memsw"] in (str(64 << 20), "none")
        assert report["pids"] == "100"
        assert report["quota"] == "50000 100000"
        assert report["shares"] == str(cpu_shares(200))
    else:
        assert report["memory"] == str(64 << 20)
        assert report["pids"] == "100"
        assert report["quota"] == "50000 100000"
        assert report["weight"] == "200"


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_capabilities_drop_all_add_some_and_writable_root(host: SystemdHost, runtime: str) -> None:
    unit = {
        "container": {"cap_drop": ["ALL"], "cap_add": ["NET_BIND_SERVICE", "KILL"]},
        "network": {"mode": "none"},
    }
    report = run_container(host, runtime, unit, name=f"spec-caps-{runtime}")
    expected = mask({"CAP_NET_BIND_SERVICE", "CAP_KILL"})
    for kind in ("CapEff", "CapPrm", "CapBnd"):
        assert report[kind] == expected, kind
    assert report["root"] == "rw"
    assert report["hostname"] == f"spec-caps-{runtime}"  # the unit name by default
    assert report["Seccomp"] == "2"


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_cap_add_gives_back_dockers_three(host: SystemdHost, runtime: str) -> None:
    unit = {
        "container": {"cap_add": ["NET_RAW", "MKNOD", "AUDIT_WRITE"]},
        "network": {"mode": "none"},
    }
    report = run_container(host, runtime, unit, name=f"spec-dockers-{runtime}")
    expected = DEFAULT_CAPABILITIES | {"CAP_NET_RAW", "CAP_MKNOD", "CAP_AUDIT_WRITE"}
    assert mask(expected) == "00000000a80425fb"  # Docker's well-known default set
    for kind in ("CapEff", "CapPrm", "CapBnd"):
        assert report[kind] == mask(expected), kind
    assert (report["mknod"], report["ping"]) == ("ok", "ok")


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize(
    "container",
    [{"user_namespaces": True}, {"cap_add": ["SYS_ADMIN"]}],
    ids=["user_namespaces", "sys_admin"],
)
def test_user_namespaces_when_the_unit_allows_them(
    host: SystemdHost, runtime: str, container: dict[str, Any]
) -> None:
    unit = {"container": container, "network": {"mode": "none"}}
    name = f"spec-userns-{runtime}-{next(iter(container))}"[:60]
    report = run_container(host, runtime, unit, name=name)
    assert report["Seccomp"] == "2"  # still filtered, only user namespaces allowed
    assert (report["userns"], report["userns_mount"]) == ("ok", "ok"), report.get("userns_error")


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_named_user_with_groups_without_seccomp(host: SystemdHost, runtime: str) -> None:
    unit = {"container": {"user": "app", "workdir": "/tmp"}, "network": {"mode": "none"}}
    report = run_container(host, runtime, unit, name=f"spec-user-{runtime}", seccomp=False)
    assert (report["uid"], report["gid"]) == ("1000", "1000")
    assert sorted(report["groups"].split(), key=int) == ["10", "50", "1000"]
    assert report["env_HOME"] == "/home/app"
    assert report["cwd"] == "/tmp"
    # A non-root process keeps no effective capabilities; the bounding set is still the default.
    assert report["CapEff"] == "0000000000000000"
    assert report["CapBnd"] == mask(DEFAULT_CAPABILITIES)
    assert report["NoNewPrivs"] == "1"
    assert report["Seccomp"] == "0"
    assert report["env_NOTIFY_SOCKET"] == "<unset>"


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_image_entrypoint_cmd_workdir_and_user(host: SystemdHost, runtime: str) -> None:
    image = ImageDefaults(
        entrypoint=("/bin/sh", "-c"),
        cmd=("echo pid=$$; echo uid=$(id -u):$(id -g); echo cwd=$(pwd); echo args=$0",),
        working_dir="/etc",
        user="1000:50",
    )
    unit = {"container": {"command": None}, "network": {"mode": "none"}}
    report = run_container(host, runtime, unit, name=f"spec-image-{runtime}", image=image)
    assert report == {"pid": "1", "uid": "1000:50", "cwd": "/etc", "args": "/bin/sh"}


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_host_network_shares_the_hosts_namespace(host: SystemdHost, runtime: str) -> None:
    unit = {"network": {"mode": "host"}}
    report = run_container(host, runtime, unit, name=f"spec-hostnet-{runtime}")
    hosts_netns = host.run(["readlink", "/proc/self/ns/net"]).stdout.strip()
    assert report["netns"] == hosts_netns
    assert report["sys"] == "ro"
    assert report["pid"] == "1"
