"""The VM test host's disk image: a Debian 12 root built from Debian packages, cached.

:func:`ensure_image` gives a :class:`GuestImage` in ``QUAY_VM_CACHE`` (default
``/var/cache/quay-test/vm``), in a directory named by the sha256 of this file's text: the package
list, the mirror, the configuration below and the code that runs them all live here, so any
change to what the image holds builds a new one (and nothing else does: the code that boots it is
in ``vm_host.py``). A build runs ``debootstrap --variant=minbase`` into a temporary directory,
configures the root (ssh for root with a key made for this cache, systemd-networkd with DHCP,
a registry that is not started), takes the kernel and initrd out, makes the disk with
``mkfs.ext4 -d`` (no loop device, no mount) and renames the result into place, under an flock so
two test runs never build the same image at once. Downloaded packages are kept in
``QUAY_VM_CACHE/debs`` for the next recipe.

``python -m tests.support.vm_host build`` builds (or finds) it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

CACHE_ROOT = Path(os.environ.get("QUAY_VM_CACHE", "/var/cache/quay-test/vm"))
"""Where images are kept; CI points it at a cache it bind-mounts into its fresh root."""
MIRROR = os.environ.get("QUAY_VM_MIRROR", "http://deb.debian.org/debian")
SUITE = "bookworm"
DISK_SIZE = "6G"
"""The ext4 file system's size: sparse, and each VM's overlay only holds what it writes."""
HOST_KEY_ALIAS = "quay-test-guest"
"""The name the guest's host key is known by (the forwarded port changes with every boot)."""

PACKAGES = (
    # a real boot: systemd as PID 1, udev, D-Bus (crun asks systemd for scopes over it), the
    # kernel and an initrd that finds the virtio disk
    "systemd", "systemd-sysv", "udev", "dbus", "linux-image-amd64", "initramfs-tools", "kmod",
    "util-linux", "procps", "iproute2", "openssh-server",
    # quay itself, as packaging/systemd/README.md lists it: Python for its venv, the runtime,
    # nft, the default seccomp profile, tini (tini-static: each container's init) and CAs
    "python3", "python3-venv", "crun", "nftables", "golang-github-containers-common", "tini",
    "ca-certificates",
    # what golang-github-containers-common's virtual dependency container-network-stack is
    # (debootstrap resolves no virtual packages)
    "containernetworking-plugins",
    # the tests' side: busybox for test images, a registry inside the guest and skopeo to push
    "busybox-static", "docker-registry", "skopeo",
    # `python -m bench vm` (bench/suite.py's PACKAGES, as the guest cannot fetch them): podman
    # beside quay, with netavark and aardvark-dns as on the machine (without them podman picks
    # CNI) and iptables for netavark's rules; umoci after skopeo; gcc and libc6-dev for the
    # static sd_notify helper
    "podman", "netavark", "aardvark-dns", "iptables", "umoci", "gcc", "libc6-dev",
)  # fmt: skip

# Files written into the root, relative to it: (path, mode, text).
FILES = (
    ("etc/hostname", 0o644, "quay-guest\n"),
    ("etc/hosts", 0o644, "127.0.0.1 localhost\n127.0.1.1 quay-guest\n::1 localhost\n"),
    ("etc/fstab", 0o644, "/dev/vda / ext4 rw,errors=remount-ro 0 1\n"),
    # no name server: the guest's network reaches nothing outside (restrict=on)
    ("etc/resolv.conf", 0o644, "# the test guest has no name server\n"),
    ("etc/systemd/network/20-wired.network", 0o644, "[Match]\nName=en*\n\n[Network]\nDHCP=ipv4\n"),
    (
        "etc/ssh/sshd_config.d/quay-test.conf",
        0o644,
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\nUseDNS no\n"
        "MaxSessions 64\nMaxStartups 64:30:128\n",
    ),
    # persistent journal: the reboot tests read the previous boot's
    ("etc/systemd/journald.conf.d/quay-test.conf", 0o644, "[Journal]\nStorage=persistent\n"),
)
ENABLE = ("systemd-networkd.service",)
DISABLE = (
    # the package's own instance wants htpasswd auth: the tests run theirs (systemd-run)
    "docker-registry.service",
    # podman's units, enabled by its package, would run podman at every boot (its API service,
    # restart and auto-update): the bench runs podman itself, and boot times stay the tests'
    "podman.socket", "podman.service", "podman-restart.service", "podman-auto-update.service",
    "podman-auto-update.timer",
)  # fmt: skip
MASK = (
    # an empty /etc/machine-id is a first boot: firstboot would ask for a locale on the console
    "systemd-firstboot.service",
    # they would try to reach Debian's mirrors, which the guest cannot
    "apt-daily.timer", "apt-daily-upgrade.timer",
)  # fmt: skip


@dataclass(frozen=True)
class GuestImage:
    directory: Path

    @property
    def disk(self) -> Path:
        """The raw ext4 root file system: read-only, every VM writes to an overlay of it."""
        return self.directory / "root.raw"

    @property
    def kernel(self) -> Path:
        return self.directory / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.directory / "initrd.img"

    @property
    def key(self) -> Path:
        """The private key root in the guest accepts."""
        return self.directory / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        """The guest's host key, under :data:`HOST_KEY_ALIAS`."""
        return self.directory / "known_hosts"


def recipe_hash() -> str:
    """The sha256 of this file (the recipe and the code that follows it) and the mirror."""
    text = Path(__file__).read_bytes() + f"\n{MIRROR}\n".encode()
    return hashlib.sha256(text).hexdigest()


def cached_image() -> GuestImage | None:
    image = GuestImage(CACHE_ROOT / recipe_hash())
    return image if (image.directory / "done").is_file() else None


def ensure_image(*, log: bool = False) -> GuestImage:
    """The cached image for this recipe, built first if there is none (a few minutes)."""
    found = cached_image()
    if found is not None:
        return found
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    digest = recipe_hash()
    with _locked(CACHE_ROOT / f".lock-{digest[:16]}"):
        found = cached_image()  # another run may have built it while we waited
        if found is not None:
            return found
        for stale in CACHE_ROOT.glob(f".build-{digest[:16]}-*"):
            shutil.rmtree(stale)  # a build that died: the lock says nobody is on it
        work = CACHE_ROOT / f".build-{digest[:16]}-{secrets.token_hex(4)}"
        work.mkdir()
        try:
            _build(work, log=log)
            target = CACHE_ROOT / digest
            if target.exists():  # a half-built leftover without "done"
                shutil.rmtree(target)
            os.rename(work, target)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        _prune(keep=digest)
    return GuestImage(CACHE_ROOT / digest)


def _prune(keep: str) -> None:
    """Remove the images of other recipes (a guest still running from one keeps its open
    files; the next boot of that recipe builds it again)."""
    for entry in CACHE_ROOT.iterdir():
        if entry.is_dir() and len(entry.name) == 64 and entry.name != keep:
            shutil.rmtree(entry, ignore_errors=True)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(argv: list[str], log_path: Path, *, timeout: float, detail: Path | None = None) -> None:
    """Run a build step, its output into the build log. It gets a session of its own, ended
    whole (debootstrap's dpkg children too) if the step fails, times out or is interrupted."""
    with open(log_path, "a") as log:
        log.write(f"$ {' '.join(argv)}\n")
        log.flush()
        process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        try:
            returncode = process.wait(timeout=timeout)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # its session: start_new_session
            process.wait()
            raise
    if returncode != 0:
        tail = "\n".join(log_path.read_text().splitlines()[-40:])
        if detail is not None and detail.is_file():  # debootstrap's own log says why
            tail += f"\n--- {detail.name}\n" + "\n".join(detail.read_text().splitlines()[-40:])
        raise RuntimeError(f"building the VM image: {argv[0]} exited {returncode}:\n{tail}")


def _build(work: Path, *, log: bool) -> None:
    log_path = work / "build.log"
    root = work / "root"
    debs = CACHE_ROOT / "debs"
    debs.mkdir(exist_ok=True)
    started = time.monotonic()

    def step(what: str) -> None:
        if log:
            print(f"vm image: {what} ({time.monotonic() - started:.0f} s)", flush=True)

    step(f"debootstrap {SUITE} from {MIRROR}")
    # In a mount namespace of its own: the /proc and /sys debootstrap mounts in the root end
    # with it, even if it is killed (a stale build dir is removed with rmtree, never through a
    # mount).
    _run(
        [
            "unshare", "--mount", "--propagation", "private",
            "debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
            f"--cache-dir={debs}", SUITE, str(root), MIRROR,
        ],
        log_path,
        timeout=1800,
        detail=root / "debootstrap/debootstrap.log",
    )  # fmt: skip
    step("configuring")
    _configure(root, work, log_path)
    step("kernel and initrd")
    for pattern, name in (("vmlinuz-*", "vmlinuz"), ("initrd.img-*", "initrd.img")):
        found = sorted((root / "boot").glob(pattern))
        if len(found) != 1:
            raise RuntimeError(f"building the VM image: expected one /boot/{pattern}: {found}")
        shutil.copyfile(found[0], work / name)
    step("mkfs.ext4 -d")
    _run(
        ["mkfs.ext4", "-q", "-F", "-L", "root", "-d", str(root), str(work / "root.raw"), DISK_SIZE],
        log_path,
        timeout=600,
    )
    shutil.rmtree(root)
    (work / "recipe.sha256").write_text(recipe_hash() + "\n")
    (work / "done").write_text(f"built in {time.monotonic() - started:.0f} s\n")
    step("done")


def _configure(root: Path, work: Path, log_path: Path) -> None:
    for relative, mode, text in FILES:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)  # resolv.conf may be a copy of the machine's, or a link
        path.write_text(text)
        path.chmod(mode)
    # One machine-id per VM, made at its first boot (and kept by its overlay across reboots).
    (root / "etc/machine-id").write_text("")
    (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    (root / "var/log/journal").mkdir(parents=True, exist_ok=True)
    for action, units in (("enable", ENABLE), ("disable", DISABLE), ("mask", MASK)):
        _run(["systemctl", f"--root={root}", action, *units], log_path, timeout=60)
    # root logs in with a key made for this image only
    _run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "quay-test", "-f",
         str(work / "id_ed25519")],
        log_path,
        timeout=60,
    )  # fmt: skip
    ssh_dir = root / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    (ssh_dir / "authorized_keys").write_text((work / "id_ed25519.pub").read_text())
    (ssh_dir / "authorized_keys").chmod(0o600)
    host_key = (root / "etc/ssh/ssh_host_ed25519_key.pub").read_text().split()
    (work / "known_hosts").write_text(f"{HOST_KEY_ALIAS} {host_key[0]} {host_key[1]}\n")
    # what debootstrap downloaded is kept in CACHE_ROOT/debs, not in every image
    for deb in (root / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()
