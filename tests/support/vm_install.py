"""quay in the VM test host, installed as a user installs it (packaging/systemd/README.md).

On the machine (PyPI is reachable from here, never from the guest), :func:`build_wheels` makes
wheels of the checkout as it is (uncommitted changes too) and of its dependencies. In the guest,
:func:`install_quay` makes the venv ``/opt/quay``, installs quay from those wheels only, links
``quayd`` and ``quayctl`` into ``/usr/local/bin``, installs the packaged units into
``/etc/systemd/system`` and runs ``systemctl enable --now quayd``.

Under TCG that install takes most of a minute, so the e2e modules boot from
:func:`installed_layer`: a qcow2 layer over the image holding exactly that install, made once
per image and set of wheels (keyed by the wheels' contents, not their timestamps) and kept in
the image's cache directory. The install test itself (tests/vm) installs on a bare image.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from tests.support.systemd_host import REPO
from tests.support.vm_host import GUEST_TESTS, VmHost, locked, machine_scratch, vm_host
from tests.support.vm_image import GuestImage

INSTALL_SCRIPT = """\
set -e
cd /root/quay
python3 -m venv /opt/quay
/opt/quay/bin/pip install -q --disable-pip-version-check --no-index --find-links wheels quay
ln -sf /opt/quay/bin/quayd /usr/local/bin/quayd
ln -sf /opt/quay/bin/quayctl /usr/local/bin/quayctl
install -m 0644 packaging/systemd/quayd.service packaging/systemd/quay.slice /etc/systemd/system/
# Not in packaging/systemd/README.md: quayd refuses to start without its config directory
# ("/etc/quay.d: the config directory does not exist"), and a fresh machine has none.
install -d -m 0755 /etc/quay.d
systemctl daemon-reload
systemctl enable --now quayd
"""
"""packaging/systemd/README.md's steps, after the venv a user makes for quay."""

LAYER_UNUSED_SECONDS = 3 * 3600
"""An installed layer not booted from for this long is removed when another is made."""

REINSTALL_SCRIPT = """\
set -e
cd /root/quay
/opt/quay/bin/pip install -q --disable-pip-version-check --no-index --find-links wheels \\
    --force-reinstall --no-deps quay
install -m 0644 packaging/systemd/quayd.service packaging/systemd/quay.slice /etc/systemd/system/
systemctl daemon-reload
systemctl restart quayd
"""
"""An upgrade in place: the new quay, the new units, quayd restarted (containers stay)."""


def source_files() -> list[str]:
    """The checkout's files as they are now: what git tracks and the new files it does not
    ignore; without git (CI's fresh root has none: its clone is made outside), every file
    but hidden, cache and build directories."""
    if shutil.which("git") is not None and (REPO / ".git").exists():
        done = subprocess.run(
            [
                "git",
                "-C",
                str(REPO),
                "ls-files",
                "-z",
                "--cached",
                "--others",
                "--exclude-standard",
            ],
            capture_output=True,
            check=True,
        )
        names = done.stdout.decode().split("\0")
        return [name for name in names if name and (REPO / name).is_file()]
    found = []
    for directory, subdirectories, files in os.walk(REPO):
        subdirectories[:] = [
            d for d in subdirectories
            if not d.startswith(".") and d not in ("build", "dist", "__pycache__")
            and not d.endswith(".egg-info")
        ]  # fmt: skip
        found += [str(Path(directory, name).relative_to(REPO)) for name in files]
    return found


def build_wheels(destination: Path) -> float:
    """Wheels of the checkout and its dependencies into ``destination``, built from a copy of
    the files a wheel is made of (so no build/ or egg-info is left in the checkout). Returns
    the seconds it took."""
    started = time.monotonic()
    destination.mkdir(parents=True, exist_ok=True)
    source = destination / ".source"
    for name in source_files():
        if name.startswith(("quayd/", "packaging/")) or name in ("pyproject.toml", "README.md"):
            target = source / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, target)
    try:
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check",
             "-w", str(destination), str(source)],
            check=True,
            capture_output=True,
            text=True,
            timeout=900,
        )  # fmt: skip
    except subprocess.CalledProcessError as error:
        raise RuntimeError(f"pip wheel of the checkout failed:\n{error.stderr}") from error
    finally:
        shutil.rmtree(source)
    return time.monotonic() - started


def wheels_key(wheels: Path) -> str:
    """A hash of what the wheels install (member names and bytes; zip timestamps left out),
    and of the install script and the packaged units."""
    digest = hashlib.sha256(INSTALL_SCRIPT.encode())
    for path in sorted(wheels.glob("*.whl")):
        digest.update(path.name.encode())
        with zipfile.ZipFile(path) as archive:
            for member in sorted(archive.namelist()):
                digest.update(member.encode() + b"\0" + archive.read(member))
    for path in sorted((REPO / "packaging").rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def copy_checkout(host: VmHost, wheels: Path) -> None:
    """Wheels and packaging/ into /root/quay, the tests package into GUEST_TESTS (so
    VmHost.call can import test helpers there)."""
    host.run(["rm", "-rf", "/root/quay", GUEST_TESTS])
    host.copy_in(wheels, "/root/quay/wheels")
    host.copy_in(REPO / "packaging", "/root/quay/packaging")
    with machine_scratch() as staging:
        for name in source_files():
            if name.startswith("tests/") and name.endswith(".py"):
                target = staging / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / name, target)
        host.copy_in(staging, GUEST_TESTS)


def install_quay(host: VmHost, wheels: Path) -> float:
    """Install quay from ``wheels`` as packaging/systemd/README.md says: quayd enabled and
    started. Returns the seconds it took (copying in, and the install in the guest)."""
    started = time.monotonic()
    copy_checkout(host, wheels)
    host.run(["sh", "-c", INSTALL_SCRIPT], timeout=900)
    return time.monotonic() - started


def reinstall_quay(host: VmHost, wheels: Path) -> None:
    """The checkout over the installed quay, in place; quayd restarted."""
    copy_checkout(host, wheels)
    host.run(["sh", "-c", REINSTALL_SCRIPT], timeout=900)


def installed_layer(image: GuestImage, wheels: Path) -> Path:
    """A qcow2 layer over ``image`` with quay from ``wheels`` installed and enabled (quayd
    starts at the guest's boot): made once per image and wheels, under a lock."""
    key = wheels_key(wheels)[:32]
    layer = image.directory / f"installed-{key}.qcow2"
    if layer.is_file():
        os.utime(layer)  # in use: see the pruning below
        return layer
    with locked(image.directory / f".lock-installed-{key}"):
        if layer.is_file():
            return layer
        for stale in image.directory.glob("installed-*.qcow2"):
            # Other checkouts' layers, unused for a while (another test run may be about to
            # boot from a newer one: each use touches its layer).
            if time.time() - stale.stat().st_mtime > LAYER_UNUSED_SECONDS:
                stale.unlink()
        building = image.directory / f".installed-{key}.qcow2"
        building.unlink(missing_ok=True)
        # the backing file by its name: the layer works wherever the cache directory is
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", image.disk.name,
             str(building)],
            check=True,
            capture_output=True,
            cwd=image.directory,
        )  # fmt: skip
        try:
            with vm_host(image=image, disk=building) as host:
                install_quay(host, wheels)
                # Each VM booted from the layer gets its own machine-id and journal.
                host.run(["sh", "-c", ": > /etc/machine-id; rm -rf /var/log/journal/*"])
            building.rename(layer)
        finally:
            building.unlink(missing_ok=True)
    return layer
