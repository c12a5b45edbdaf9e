"""A VM test host: a real Debian 12 guest (systemd as PID 1, cgroup v2 unified).

Beside the namespace host (``systemd_host.py``, which shares the machine's kernel and its cgroup
v1 hybrid layout), this one boots Debian's own kernel and systemd, as a user's machine does.
:func:`vm_host` creates a qcow2 overlay of the cached image (``vm_image.py``), boots it under KVM
where the machine has hardware virtualisation, else TCG (:func:`accelerator`), with the
image's kernel and initrd (no bootloader), user-mode networking with ``restrict=on`` (the guest
reaches nothing outside; its ssh port is forwarded on 127.0.0.1 only) and the serial console in
a log file, waits for ssh, and yields a :class:`VmHost`. Commands run over ssh (one master
connection per boot). :meth:`VmHost.reboot`, :meth:`VmHost.power_cut` and :meth:`VmHost.boot`
act on the same overlay. On exit the guest is powered off, qemu is ended by its PID, and the
overlay is removed. ``vm_install.py`` installs quay in it as a user would.

As a command (for working on quay in the guest by hand)::

    python -m tests.support.vm_host build     # build or find the cached image
    python -m tests.support.vm_host shell     # boot a guest, install quay, print ssh; Ctrl-C ends
    python -m tests.support.vm_host shell --no-install
    python -m tests.support.vm_host sync      # reinstall the checkout in the running shell guest
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from tests.support.systemd_host import STATE_PARENT, HostCallError, call_function
from tests.support.vm_image import HOST_KEY_ALIAS, GuestImage, ensure_image

QEMU = "qemu-system-x86_64"
MEMORY_MIB = 2048
CPUS = 2
"""The machine has 2 cores, shared: the guest gets at most that and 2 GiB."""


def accelerator() -> tuple[str, str]:
    """qemu's accelerator and CPU model: KVM where the machine has hardware virtualisation
    (``kvm_intel`` or ``kvm_amd``), else TCG (``QUAY_VM_ACCEL=kvm|tcg`` chooses).

    A /dev/kvm alone is not enough: on a machine that is itself a guest, KVM may be ``kvm_pvm``
    (pagetable-based, no hardware virtualisation), which runs only kernels built as PVM guests;
    Debian's kernel hangs there right after "Probing EDD", and ``-cpu host`` even aborts qemu
    ("failed to set MSR 0x10a"). TCG boots the same guest to ssh in about half a minute.
    """
    chosen = os.environ.get("QUAY_VM_ACCEL", "")
    hardware = any(Path(f"/sys/module/{name}").is_dir() for name in ("kvm_intel", "kvm_amd"))
    if chosen == "kvm" or (not chosen and hardware and Path("/dev/kvm").exists()):
        return "kvm", "host"
    return "tcg,thread=multi", "max"


BOOT_TIMEOUT = 180.0
KERNEL_ARGS = "root=/dev/vda rw console=ttyS0"
GUEST_PYTHON = "/opt/quay/bin/python"
GUEST_TESTS = "/opt/quay-tests"
"""A copy of the checkout's ``tests`` package, so :meth:`VmHost.call` can import from it."""
SHELL_STATE = Path("/run/quay-test-vm-shell.json")

TOOLS = {
    QEMU: "qemu-system-x86",
    "qemu-img": "qemu-utils",
    "debootstrap": "debootstrap",
    "mkfs.ext4": "e2fsprogs",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
}


def unavailable_reason() -> str | None:
    """Why a VM host cannot be booted here, or None. Each reason starts with its cause."""
    # No /dev/kvm is no reason: the guest boots under TCG then (see accelerator()).
    if os.geteuid() != 0:
        return "needs root: the VM image is built with debootstrap"
    for tool, package in TOOLS.items():
        if shutil.which(tool) is None:
            return f"{tool} is missing (apt-get install {package})"
    return None


def _free_port() -> int:
    import socket  # noqa: PLC0415 (only here)

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class VmHost:
    image: GuestImage
    work: Path
    """On the machine: the overlay, the console log, the ssh control socket."""
    name: str
    disk: Path
    """The qcow2 the guest runs on: an overlay of the cached image, usually."""
    kind: str = "vm"
    scratch: PurePosixPath = field(default=PurePosixPath("/var/lib/quay-test"))
    """A directory in the guest for the tests' own files."""
    port: int = 0
    boot_seconds: float = 0.0
    boots: int = 0
    process: subprocess.Popen[bytes] | None = None
    master: subprocess.Popen[bytes] | None = None
    log: list[str] = field(default_factory=list)
    """What happened, with times: boots, reboots, power cuts."""

    @property
    def console(self) -> Path:
        return self.work / "console.log"

    @property
    def staging(self) -> Path:
        """On the machine: where files are made before :meth:`copy_in` takes them in."""
        path = self.work / "files"
        path.mkdir(exist_ok=True)
        return path

    def ssh_options(self) -> list[str]:
        return [
            "-i", str(self.image.key), "-p", str(self.port),
            "-o", f"HostKeyAlias={HOST_KEY_ALIAS}",
            "-o", f"UserKnownHostsFile={self.image.known_hosts}",
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=5", "-o", "ServerAliveInterval=5", "-o", "LogLevel=ERROR",
        ]  # fmt: skip

    def ssh(self) -> list[str]:
        """ssh to root in the guest, through this boot's master connection when it is up."""
        control = ["-o", f"ControlPath={self.work / 'ssh.sock'}", "-o", "ControlMaster=no"]
        return ["ssh", *self.ssh_options(), *control, "root@127.0.0.1"]

    def ssh_command(self) -> str:
        """What a person types to get a shell in the guest."""
        return shlex.join(["ssh", *self.ssh_options(), "root@127.0.0.1"])

    def console_tail(self, lines: int = 40) -> str:
        try:
            text = self.console.read_text(errors="replace")
        except OSError:
            return "(no console log)"
        return "\n".join(text.splitlines()[-lines:])

    # --- commands ----------------------------------------------------------------------------

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 60.0,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in the guest as root, over ssh (in ``/`` unless ``cwd``)."""
        command = shlex.join(argv)
        if env:
            command = shlex.join(["env", *(f"{k}={v}" for k, v in env.items())]) + " " + command
        command = f"cd {shlex.quote(cwd or '/')} && {command}"
        done = subprocess.run(
            [*self.ssh(), command],
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            lost = "\n(ssh lost the guest: its console follows)\n" + self.console_tail()
            raise HostCallError(
                f"in the VM, {shlex.join(argv)} exited {done.returncode}\n"
                f"--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
                + (lost if done.returncode == 255 else "")
            )
        return done

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(["systemctl", *args], check=check)

    def python(
        self, code: str, *args: str, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """The installed quay's Python in the guest: ``python -c CODE ARGS…``."""
        return self.run(
            [GUEST_PYTHON, "-c", code, *args],
            check=check,
            timeout=timeout,
            env={"PYTHONPATH": GUEST_TESTS, "PYTHONDONTWRITEBYTECODE": "1"},
        )

    def call(self, function: Callable[..., Any], /, *, timeout: float = 60.0, **kwargs: Any) -> Any:
        """Call a module-level ``function`` (of quayd or the tests' copy) in a fresh Python
        process in the guest; arguments and result travel as JSON, as in SystemdHost.call."""
        return call_function(self.python, function, timeout, kwargs)

    # --- files -------------------------------------------------------------------------------

    def write_file(self, path: str, text: str, *, atomic: bool = True) -> None:
        """Write ``text`` to ``path`` in the guest: through a dot file renamed over it (what
        a careful tool does), or in place (``atomic=False``: what an editor may do)."""
        if atomic:
            parent, base = os.path.split(path)
            temporary = os.path.join(parent, f".{base}.{secrets.token_hex(3)}.tmp")
            script = 'mkdir -p "$(dirname "$2")" && cat > "$1" && mv -f "$1" "$2"'
            self.run(["sh", "-c", script, "sh", temporary, path], input=text)
        else:
            script = 'mkdir -p "$(dirname "$1")" && cat > "$1"'
            self.run(["sh", "-c", script, "sh", path], input=text)

    def read_file(self, path: str) -> str | None:
        """The text of ``path`` in the guest, or None when there is no such file."""
        done = self.run(["sh", "-c", 'test -f "$1" && cat "$1"', "sh", path], check=False)
        return done.stdout if done.returncode == 0 else None

    def delete(self, path: str) -> None:
        self.run(["rm", "--", path])

    def exists(self, path: str) -> bool:
        return self.run(["test", "-e", path], check=False).returncode == 0

    def copy_in(self, local: Path, remote: str) -> None:
        """Copy a file, or a directory's contents, from the machine to ``remote`` in the guest."""
        if local.is_dir():
            pack = ["tar", "-C", str(local), "-cf", "-", "."]
            unpack = f"mkdir -p {shlex.quote(remote)} && tar -C {shlex.quote(remote)} -xf -"
        else:
            pack = ["cat", str(local)]
            parent = shlex.quote(os.path.dirname(remote) or "/")
            unpack = f"mkdir -p {parent} && cat > {shlex.quote(remote)}"
        with subprocess.Popen(pack, stdout=subprocess.PIPE) as packer:
            done = subprocess.run(
                [*self.ssh(), unpack],
                stdin=packer.stdout,
                capture_output=True,
                timeout=600,
                check=False,
            )
        if packer.returncode != 0 or done.returncode != 0:
            raise HostCallError(f"copying {local} into the VM failed:\n{done.stderr.decode()}")

    # --- power -------------------------------------------------------------------------------

    def boot(self) -> None:
        """Start qemu on the overlay and wait until ssh answers (a few times, should qemu lose
        the race for the port chosen)."""
        for _ in range(3):
            self.port = _free_port()
            started = time.monotonic()
            self._start_qemu()
            try:
                self._wait_for_ssh()
            except _PortTakenError:
                self._end_qemu()
                continue
            self.boot_seconds = time.monotonic() - started
            self.boots += 1
            self.log.append(f"boot {self.boots}: ssh after {self.boot_seconds:.1f} s")
            self._start_master()
            return
        raise RuntimeError("qemu could not forward a port on 127.0.0.1, three times")

    def boot_id(self) -> str:
        return self.run(["cat", "/proc/sys/kernel/random/boot_id"]).stdout.strip()

    def reboot(self) -> float:
        """``systemctl reboot`` in the guest; returns once ssh answers from the next boot."""
        before = self.boot_id()
        started = time.monotonic()
        self.run(["systemctl", "reboot"], check=False)  # ssh may lose the guest mid-answer
        self._stop_master()
        deadline = started + BOOT_TIMEOUT
        while time.monotonic() < deadline:
            self._check_qemu()
            done = subprocess.run(
                [*self.ssh(), "cat /proc/sys/kernel/random/boot_id"],
                capture_output=True,
                text=True,
                stdin=subprocess.DEVNULL,
                timeout=30,
                check=False,
            )
            if done.returncode == 0 and done.stdout.strip() not in ("", before):
                seconds = time.monotonic() - started
                self.boots += 1
                self.log.append(f"reboot: ssh again after {seconds:.1f} s")
                self._start_master()
                return seconds
            time.sleep(0.5)
        raise RuntimeError(f"the guest did not come back from a reboot:\n{self.console_tail()}")

    def power_cut(self) -> None:
        """Pull the plug: SIGKILL qemu. Only what the guest had written to its disk stays
        (the disk is ``cache=writethrough``: nothing waits in qemu's or the machine's cache)."""
        self._stop_master()
        self._end_qemu()
        self.log.append("power cut")

    def poweroff(self, grace: float = 60.0) -> None:
        """``systemctl poweroff``, then qemu's end (killed by PID if it has not ended within
        ``grace`` seconds)."""
        if self.process is not None and self.process.poll() is None:
            subprocess.run(
                [*self.ssh(), "systemctl poweroff"],
                capture_output=True,
                stdin=subprocess.DEVNULL,
                timeout=30,
                check=False,
            )
        self._stop_master()
        self._end_qemu(grace=grace)

    def _start_qemu(self) -> None:
        pidfile = self.work / "qemu.pid"
        pidfile.unlink(missing_ok=True)
        accel, cpu = accelerator()
        nic = f"user,model=virtio-net-pci,restrict=on,hostfwd=tcp:127.0.0.1:{self.port}-:22"
        drive = f"file={self.disk},format=qcow2,if=virtio,cache=writethrough,discard=unmap"
        argv = [
            QEMU, "-name", self.name, "-accel", accel, "-cpu", cpu,
            "-m", str(MEMORY_MIB), "-smp", str(CPUS),
            "-nodefaults", "-display", "none", "-no-user-config",
            "-kernel", str(self.image.kernel), "-initrd", str(self.image.initrd),
            "-append", KERNEL_ARGS,
            "-drive", drive, "-nic", nic, "-device", "virtio-rng-pci",
            "-chardev", f"file,id=console,path={self.console},append=on",
            "-serial", "chardev:console", "-monitor", "none",
            "-pidfile", str(pidfile),
        ]  # fmt: skip
        with open(self.work / "qemu.log", "ab") as log:
            self.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )

    def _check_qemu(self) -> None:
        if self.process is None or self.process.poll() is not None:
            qemu_log = (self.work / "qemu.log").read_text(errors="replace")
            if "Could not set up host forwarding rule" in qemu_log:
                raise _PortTakenError
            raise RuntimeError(
                f"qemu ended:\n{qemu_log[-2000:]}\n--- console\n{self.console_tail()}"
            )

    def _wait_for_ssh(self) -> None:
        deadline = time.monotonic() + BOOT_TIMEOUT
        while time.monotonic() < deadline:
            self._check_qemu()
            done = subprocess.run(
                [*self.ssh(), "true"],
                capture_output=True,
                stdin=subprocess.DEVNULL,
                timeout=30,
                check=False,
            )
            if done.returncode == 0:
                return
            time.sleep(0.5)
        raise RuntimeError(f"no ssh in the guest after {BOOT_TIMEOUT} s:\n{self.console_tail()}")

    def _start_master(self) -> None:
        """One ssh connection per boot that every command rides on (-o ControlPath)."""
        socket_path = self.work / "ssh.sock"
        socket_path.unlink(missing_ok=True)
        control = ["-o", f"ControlPath={socket_path}", "-o", "ControlMaster=yes"]
        self.master = subprocess.Popen(
            ["ssh", *self.ssh_options(), *control, "-N", "root@127.0.0.1"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while not socket_path.exists() and time.monotonic() < deadline:
            if self.master.poll() is not None:
                self.master = None  # commands connect one by one instead: slower, as correct
                return
            time.sleep(0.02)

    def _stop_master(self) -> None:
        if self.master is not None:
            if self.master.poll() is None:
                self.master.terminate()
            try:
                self.master.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.master.kill()
                self.master.wait()
            self.master = None
        (self.work / "ssh.sock").unlink(missing_ok=True)

    def _end_qemu(self, grace: float = 0.0) -> None:
        process = self.process
        if process is None:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace)
        if process.poll() is None:
            # our child, not reaped yet: the PID (also in qemu.pid) is still this qemu's
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        self.process = None


class _PortTakenError(Exception):
    """qemu could not bind the forwarded port: another process took it since we probed."""


@contextlib.contextmanager
def vm_host(
    *, image: GuestImage | None = None, base: Path | None = None, disk: Path | None = None
) -> Iterator[VmHost]:
    """Boot a guest on a fresh overlay of ``base`` (the image's raw disk unless given: an
    installed layer, say), yield it, power it off and remove everything it had. With ``disk``
    the guest boots on that qcow2 itself, which is kept (how a cached layer is made), and its
    poweroff is waited for."""
    reason = unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"cannot boot a VM host: {reason}")
    image = image or ensure_image()
    name = f"quay-test-vm-{secrets.token_hex(4)}"
    work = STATE_PARENT / name
    work.mkdir(mode=0o700)
    host = VmHost(image=image, work=work, name=name, disk=disk or work / "disk.qcow2")
    try:
        if disk is None:
            backing = base or image.disk
            fmt = "raw" if backing == image.disk else "qcow2"
            subprocess.run(
                ["qemu-img", "create", "-q", "-f", "qcow2", "-F", fmt, "-b", str(backing),
                 str(host.disk)],
                check=True,
                capture_output=True,
            )  # fmt: skip
        host.boot()
        yield host
    finally:
        try:
            # A thrown-away overlay needs no clean shutdown, and containers whose PID 1 ignores
            # SIGTERM hold a poweroff for their scopes' 90 s stop timeout: 10 s, then SIGKILL.
            host.poweroff(grace=60.0 if disk is not None else 10.0)
        finally:
            shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def installed_vm() -> Iterator[VmHost]:
    """A fresh guest with the checkout installed as a user installs it, quayd enabled and
    running (booted from the cached installed layer: vm_install.installed_layer), and the
    tests package in GUEST_TESTS."""
    from tests.support import vm_install  # noqa: PLC0415 (it imports this module)

    image = ensure_image()
    with machine_scratch() as wheels:
        vm_install.build_wheels(wheels)
        layer = vm_install.installed_layer(image, wheels)
        with vm_host(image=image, base=layer) as host:
            vm_install.copy_checkout(host, wheels)
            yield host


@contextlib.contextmanager
def machine_scratch() -> Iterator[Path]:
    """A private directory on the machine, removed at the end."""
    path = STATE_PARENT / f"quay-test-vm-files-{secrets.token_hex(4)}"
    path.mkdir(mode=0o700)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive flock on ``path`` (two test runs never build the same thing at once)."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- as a command -------------------------------------------------------------------------------


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM ends the shell as Ctrl-C does: the guest is powered off


def _shell(install: bool) -> int:
    from tests.support import vm_install  # noqa: PLC0415 (it imports this module)

    with machine_scratch() as wheels:
        image = ensure_image(log=True)
        base = None
        if install:
            print(f"wheels built in {vm_install.build_wheels(wheels):.1f} s", flush=True)
            base = vm_install.installed_layer(image, wheels)
        with vm_host(image=image, base=base) as host:
            print(f"booted {host.name} in {host.boot_seconds:.1f} s", flush=True)
            if install:
                vm_install.copy_checkout(host, wheels)  # the tests package, for call()
            SHELL_STATE.write_text(json.dumps({"work": str(host.work), "port": host.port}))
            print(f"\n  {host.ssh_command()}\n", flush=True)
            print("python -m tests.support.vm_host sync: the checkout reinstalled; Ctrl-C ends")
            signal.signal(signal.SIGTERM, _interrupt)
            try:
                while host.process is not None and host.process.poll() is None:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
            finally:
                SHELL_STATE.unlink(missing_ok=True)
    return 0


def _sync() -> int:
    """Reinstall the checkout in the guest that ``shell`` runs, and restart quayd."""
    from tests.support import vm_install  # noqa: PLC0415 (it imports this module)

    state = json.loads(SHELL_STATE.read_text())
    work = Path(state["work"])
    host = VmHost(image=ensure_image(), work=work, name="shell", disk=work / "disk.qcow2")
    host.port = int(state["port"])
    with machine_scratch() as wheels:
        vm_install.build_wheels(wheels)
        vm_install.reinstall_quay(host, wheels)
    print("reinstalled; quayd restarted")
    return 0


def main(argv: Sequence[str]) -> int:
    command = argv[0] if argv else ""
    if command == "build":
        image = ensure_image(log=True)
        print(image.directory)
        return 0
    if command == "shell":
        return _shell(install="--no-install" not in argv[1:])
    if command == "sync":
        return _sync()
    print(__doc__.split("As a command", 1)[1], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
