"""quayd installed as the packaged systemd service in a test host, and ways to watch it.

Two hosts run it (``deployed(..., host=...)``, and :data:`HOSTS` to parametrize a module's
fixture over both):

* ``namespace``: a systemd test host in namespaces of this machine (``systemd_host.py``), the
  packaged ``quayd.service`` written to its private /run with ``ExecStart`` pointed at the
  venv's quayd and the test's directories;
* ``vm``: a Debian 12 guest (``vm_host.py``, cgroup v2 unified), quay installed there as a user
  installs it (``vm_install.py``), the packaged service with its default paths (/etc/quay.d,
  /var/lib/quay, /run/quay) and a drop-in, as a user would tweak it.

Both get a 3 s watchdog, a 0.5 s restart delay and the test hang hook. :class:`Deployment` only
uses the :class:`Host` interface: commands, Python with quay inside the host, files there.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol, TypeVar

import pytest

from quayd.images.model import Platform
from tests.support import vm_host as vm
from tests.support.images import Layer, OciLayout, busybox_entries, file
from tests.support.systemd_host import REPO, STATE_PARENT, SystemdHost, systemd_host
from tests.support.vm_image import ensure_image

T = TypeVar("T")
VENV_BIN = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin"
QUAYD = VENV_BIN / "quayd"
QUAYCTL = VENV_BIN / "quayctl"
IMAGE = "localhost/busybox:1.36"
NOTIFY_IMAGE = "localhost/notify:1"
RUN_DIR = "/run/quay"
SERVE = "mkdir -p /tmp/w; echo hello > /tmp/w/index.html; exec httpd -f -p 80 -h /tmp/w"
WEB_BASE = f"""
[container]
image = "{IMAGE}"
command = ["sh", "-c", "{SERVE}"]
stop_timeout = "2s"
[ready]
mode = "tcp"
port = 80
"""
"""A busybox httpd serving "hello", ready when port 80 accepts: tests add their own tables."""

HOSTS = [
    pytest.param("namespace", id="namespace"),
    pytest.param(
        "vm",
        id="vm",
        marks=pytest.mark.skipif(
            vm.unavailable_reason() is not None, reason=vm.unavailable_reason() or ""
        ),
    ),
]
"""``params`` for a module's deployment fixture: the e2e suite runs on both hosts."""


def wait_until(what: str, check: Callable[[], T | None], timeout: float = 30.0) -> T:
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last!r}")


class Host(Protocol):
    """What a deployment needs of a test host; paths are the host's own."""

    kind: str
    """``namespace`` or ``vm``."""

    @property
    def scratch(self) -> PurePosixPath:
        """A directory in the host for the tests' files."""
        ...

    @property
    def staging(self) -> Path:
        """On this machine: where files are made before :meth:`copy_in` takes them in."""
        ...

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 60.0,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]: ...
    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]: ...
    def python(
        self, code: str, *args: str, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """A Python that imports quayd (and the tests' helpers) inside the host."""
        ...

    def call(
        self, function: Callable[..., Any], /, *, timeout: float = 60.0, **kwargs: Any
    ) -> Any: ...
    def write_file(self, path: str, text: str, *, atomic: bool = True) -> None: ...
    def read_file(self, path: str) -> str | None: ...
    def delete(self, path: str) -> None: ...
    def exists(self, path: str) -> bool: ...
    def copy_in(self, local: Path, remote: str) -> None: ...


@dataclass
class NamespaceHost:
    """A :class:`SystemdHost` as a :class:`Host`. Its state dir is shared with this machine,
    so files there are read and written directly; elsewhere (its private /run, /tmp) through
    a command inside."""

    inner: SystemdHost
    kind: str = "namespace"

    @property
    def scratch(self) -> PurePosixPath:
        return PurePosixPath(self.inner.state_dir)

    @property
    def staging(self) -> Path:
        return self.inner.state_dir

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 60.0,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return self.inner.run(argv, check=check, timeout=timeout, input=input, env=env)

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.inner.systemctl(*args, check=check)

    def python(
        self, code: str, *args: str, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        return self.inner.python(code, *args, check=check, timeout=timeout)

    def call(self, function: Callable[..., Any], /, *, timeout: float = 60.0, **kwargs: Any) -> Any:
        return self.inner.call(function, timeout=timeout, **kwargs)

    def _shared(self, path: str) -> Path | None:
        local = Path(path)
        return local if local.is_relative_to(self.inner.state_dir) else None

    def write_file(self, path: str, text: str, *, atomic: bool = True) -> None:
        local = self._shared(path)
        if local is None:
            self.run(
                ["sh", "-c", 'mkdir -p "$(dirname "$1")" && cat > "$1"', "sh", path], input=text
            )
            return
        local.parent.mkdir(parents=True, exist_ok=True)
        if not atomic:
            local.write_text(text)
            return
        temporary = local.with_name(f".{local.name}.{secrets.token_hex(3)}.tmp")
        temporary.write_text(text)
        temporary.rename(local)

    def read_file(self, path: str) -> str | None:
        local = self._shared(path)
        if local is None:
            done = self.run(["sh", "-c", 'test -f "$1" && cat "$1"', "sh", path], check=False)
            return done.stdout if done.returncode == 0 else None
        return local.read_text() if local.is_file() else None

    def delete(self, path: str) -> None:
        local = self._shared(path)
        if local is None:
            self.run(["rm", "--", path])
        else:
            local.unlink()

    def exists(self, path: str) -> bool:
        local = self._shared(path)
        if local is None:
            return self.run(["test", "-e", path], check=False).returncode == 0
        return local.exists()

    def copy_in(self, local: Path, remote: str) -> None:
        target = self._shared(remote)
        if target is None:
            raise ValueError(f"{remote} is not in the host's state dir, shared with the machine")
        if target == local:
            return
        if local.is_dir():
            shutil.copytree(local, target, dirs_exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(local, target)


VM_DROP_IN = """\
# The tests' tweaks of the packaged service, as a user makes them: a drop-in.
[Service]
WatchdogSec=3s
RestartSec=500ms
Environment=QUAYD_TEST_HANG_FILE={hang}
"""


class Deployment:
    def __init__(self, host: Host) -> None:
        self.host = host
        if host.kind == "vm":  # the packaged service's defaults
            self.config_dir = PurePosixPath("/etc/quay.d")
            self.state_dir = PurePosixPath("/var/lib/quay")
            self.quayd = "/usr/local/bin/quayd"
            self.quayctl = "/usr/local/bin/quayctl"
        else:
            self.config_dir = host.scratch / "etc-quay.d"
            self.state_dir = host.scratch / "state"
            self.quayd = str(QUAYD)
            self.quayctl = str(QUAYCTL)
        self.hang_file = host.scratch / "hang"

    def install(self, sd_notify: Path) -> None:
        """The test images loaded, the service installed (namespace) or tweaked (vm), and
        quayd stopped: a test starts it."""
        self.host.run(["mkdir", "-p", str(self.host.scratch), str(self.config_dir)])
        if self.host.kind == "vm":
            self.host.systemctl("stop", "quayd")  # enabled and started by the install
            dropin = "/etc/systemd/system/quayd.service.d/test.conf"
            self.host.run(["mkdir", "-p", os.path.dirname(dropin)])
            self.host.write_file(dropin, VM_DROP_IN.format(hang=self.hang_file))
        else:
            self._install_namespace_service()
        self.host.systemctl("daemon-reload")
        image = self.host.staging / "busybox-oci"
        subprocess.run(
            [REPO / "examples" / "build-busybox-image", image], check=True, capture_output=True
        )
        self.load(image, IMAGE)
        # busybox plus the static sd_notify helper, for readiness through NOTIFY_SOCKET
        layout = OciLayout(self.host.staging / "notify-oci")
        entries = [*busybox_entries(), file("bin/sd_notify", sd_notify.read_bytes(), 0o755)]
        descriptor, _ = layout.image([Layer.of(entries)], Platform.host())
        layout.tag(descriptor, "1")
        self.load(layout.root, NOTIFY_IMAGE)

    def _install_namespace_service(self) -> None:
        service = (REPO / "packaging/systemd/quayd.service").read_text()
        exec_start = (
            f"ExecStart={QUAYD} --state-dir {self.state_dir} --config-dir {self.config_dir} "
            f"--run-dir {RUN_DIR}"
        )
        service = service.replace("ExecStart=/usr/local/bin/quayd", exec_start)
        service = service.replace("WatchdogSec=30s", "WatchdogSec=3s")
        service = service.replace("RestartSec=2s", "RestartSec=500ms")
        service = service.replace(
            "Environment=PYTHONUNBUFFERED=1",
            f"Environment=PYTHONUNBUFFERED=1 QUAYD_TEST_HANG_FILE={self.hang_file}",
        )
        units = "/run/systemd/system"  # inside the host: its private /run
        for name, text in (
            ("quayd.service", service),
            ("quay.slice", (REPO / "packaging/systemd/quay.slice").read_text()),
        ):
            self.host.write_file(f"{units}/{name}", text, atomic=False)

    def load(self, layout: Path, reference: str) -> None:
        """``quayctl image load`` in the host, of a layout made on this machine."""
        remote = str(self.host.scratch / layout.name)
        self.host.copy_in(layout, remote)
        load = [self.quayctl, "--state-dir", str(self.state_dir), "image", "load", remote]
        self.host.run([*load, "--reference", reference], timeout=120)

    def path(self, name: str) -> str:
        return str(self.config_dir / f"{name}.toml")

    def write(self, name: str, text: str) -> None:
        """The unit file ``name``, written atomically (a dot file renamed over it)."""
        self.host.write_file(self.path(name), text)

    def delete(self, name: str) -> None:
        self.host.delete(self.path(name))

    def config_files(self) -> dict[str, str]:
        """Every file below the config directory, by its relative path, with its text."""
        listed = self.host.run(["find", str(self.config_dir), "-type", "f"]).stdout.split()
        found = {}
        for path in sorted(listed):
            text = self.host.read_file(path)
            if text is not None:
                found[str(PurePosixPath(path).relative_to(self.config_dir))] = text
        return found

    def show(self, *properties: str) -> dict[str, str]:
        shown = self.host.systemctl("show", "quayd", "-p", ",".join(properties)).stdout
        return dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)

    def status(self) -> dict[str, Any]:
        done = self.host.run([self.quayctl, "--run-dir", RUN_DIR, "status", "--json"], check=False)
        if done.returncode == 4:
            return {}
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    def api(self, method: str, path: str, body: Any = None) -> Any:
        """One call to the agent's API from inside the host: the result, or
        ``{"error": {"code", "message", "status"}}``."""
        code = (
            "import json, sys\n"
            "from quayd.cli.client import AgentError, request\n"
            "try:\n"
            f"    result = request({RUN_DIR + '/quayd.sock'!r}, sys.argv[1], sys.argv[2],"
            " json.loads(sys.argv[3]), timeout=30)\n"
            "except AgentError as error:\n"
            "    result = {'error': {'code': error.code, 'message': str(error),"
            " 'status': getattr(error, 'status', None)}}\n"
            "print(json.dumps(result))\n"
        )
        done = self.host.python(code, method, path, json.dumps(body))
        return json.loads(done.stdout)

    def events(self) -> list[dict[str, Any]]:
        """The agent's event log, oldest first."""
        lines = self.host.python(
            "import json\n"
            "from quayd.cli.client import stream\n"
            f"for e in stream('{RUN_DIR}/quayd.sock', '/v1/events?follow=false'):\n"
            "    print(json.dumps(e))\n"
        ).stdout.splitlines()
        return [json.loads(line) for line in lines]

    def journal(self) -> str:
        """quayd's journal (its JSON lines), flushed first."""
        self.host.run(["journalctl", "--sync"], check=False)
        return self.host.run(["journalctl", "-u", "quayd", "-o", "cat", "--no-pager"]).stdout

    def diagnosis(self, *names: str) -> str:
        """For a failure's message: the units' status entries, what systemd says of their
        scopes and the processes left in them, the runtime's containers, quayd's journal lines
        on each unit, its last watchdog dump, and its journal's last lines."""
        units = self.units()
        parts = [f"--- unit {name}: {units.get(name)}" for name in names]
        for name in names:
            scope = f"quay-{name}.scope"
            properties = "LoadState,ActiveState,SubState,Result,ControlGroup"
            shown = self.host.systemctl("show", scope, "-p", properties, check=False).stdout
            status = self.host.systemctl("status", "--no-pager", "-n", "5", scope, check=False)
            parts.append(f"--- {scope}\n{shown}{status.stdout}{self._processes_of(scope)}")
        runtime = self.host.run(["crun", "--root", f"{RUN_DIR}/crun", "list"], check=False)
        parts.append(f"--- crun list:\n{runtime.stdout}{runtime.stderr}")
        lines = self.journal().splitlines()
        for name in names:
            theirs = [line for line in lines if f'"{name}"' in line or f" {name} " in line]
            parts.append(f"--- quayd on {name}:\n" + "\n".join(theirs[-30:]))
        dumps = [n for n, line in enumerate(lines) if "Fatal Python error" in line]
        if dumps:  # the last watchdog kill's stacks (faulthandler)
            parts += ["--- quayd's stacks when it was last aborted:", *lines[dumps[-1] :][:80]]
        return "\n".join([*parts, "--- quayd:", *lines[-40:]])

    def _processes_of(self, scope: str) -> str:
        """Each process left in the scope's cgroup: its state, wait channel and kernel stack."""
        script = (
            f"for f in $(find /sys/fs/cgroup -path '*/{scope}*' -name cgroup.procs); do"
            " for p in $(cat $f); do echo \"pid $p in $f: $(tr '\\0' ' ' < /proc/$p/cmdline)\";"
            " grep -E '^(State|PPid|SigBlk|SigIgn)' /proc/$p/status;"
            ' echo "wchan $(cat /proc/$p/wchan)"; cat /proc/$p/stack; done; done'
        )
        return self.host.run(["sh", "-c", script], check=False).stdout

    def units(self) -> dict[str, dict[str, Any]]:
        return {unit["name"]: unit for unit in self.status().get("units", [])}

    def unit_state(self, name: str) -> str | None:
        unit = self.units().get(name)
        return unit["state"] if unit else None

    def running_pid(self, name: str) -> int | None:
        unit = self.units().get(name)
        if unit and unit["state"] == "running" and unit["pid"]:
            return int(unit["pid"])
        return None

    def http(self, port: int = 8080) -> str:
        done = self.host.run(
            ["busybox", "wget", "-q", "-O", "-", f"http://127.0.0.1:{port}/"], check=False
        )
        return done.stdout.strip()

    def main_pid(self) -> int:
        """quayd's PID as systemd knows it (0 while none runs)."""
        return int(self.show("MainPID")["MainPID"] or 0)

    def alive(self, pid: int) -> bool:
        return self.host.run(["kill", "-0", str(pid)], check=False).returncode == 0


SETTINGS_DROP_IN = "[Service]\nExecStart=\nExecStart={exec_start} --config {settings}\n"


def use_settings(deployment: Deployment, text: str) -> None:
    """quayd's settings file (quayd.toml) ``text``, passed with ``--config`` by a drop-in of the
    service, as a user would; quayd is restarted by the caller (``systemctl start``/``restart``)."""
    host = deployment.host
    settings = host.scratch / "quayd.toml"
    host.write_file(str(settings), text)
    shown = host.systemctl("show", "-p", "ExecStart", "--value", "quayd").stdout
    argv = shown.split("argv[]=", 1)[1].split(" ;", 1)[0].strip()
    directory = "/etc/systemd/system" if host.kind == "vm" else "/run/systemd/system"
    host.write_file(
        f"{directory}/quayd.service.d/settings.conf",
        SETTINGS_DROP_IN.format(exec_start=argv, settings=settings),
        atomic=False,
    )
    host.systemctl("daemon-reload")


def running(deployment: Deployment, name: str) -> int:
    return wait_until(f"{name} running", lambda: deployment.running_pid(name))


@functools.cache
def _session_wheels() -> Path:
    """Wheels of the checkout, built once per test run (removed when it ends)."""
    from tests.support.vm_install import build_wheels  # noqa: PLC0415 (only for the VM)

    wheels = STATE_PARENT / f"quay-test-wheels-{secrets.token_hex(4)}"
    atexit.register(shutil.rmtree, wheels, ignore_errors=True)
    build_wheels(wheels)
    return wheels


@contextlib.contextmanager
def booted_host(kind: str) -> Iterator[Host]:
    """A fresh host of ``kind``: a namespace host, or a guest booted from the installed layer
    (quay as the checkout is, installed and enabled)."""
    if kind == "namespace":
        with systemd_host() as host:
            yield NamespaceHost(host)
        return
    from tests.support import vm_install  # noqa: PLC0415 (only for the VM)

    image = ensure_image()
    wheels = _session_wheels()
    layer = vm_install.installed_layer(image, wheels)
    with vm.vm_host(image=image, base=layer) as guest:
        vm_install.copy_checkout(guest, wheels)  # this run's tests package, for call()
        yield guest


@contextlib.contextmanager
def deployed(
    sd_notify: Path,
    units: Mapping[str, str] | None = None,
    *,
    start: bool = True,
    host: str = "namespace",
    settings: str | None = None,
) -> Iterator[Deployment]:
    """A throwaway host (``namespace`` or ``vm``) with quayd installed as its packaged
    service, its ``settings`` (quayd.toml text, :func:`use_settings`), ``units`` written, and
    (with ``start``) the service started; quayd is stopped before the host goes."""
    with booted_host(host) as inner:
        deployment = Deployment(inner)
        deployment.install(sd_notify)
        if settings is not None:
            use_settings(deployment, settings)
        for name, text in (units or {}).items():
            deployment.write(name, text)
        if start:
            inner.systemctl("start", "quayd")
        yield deployment
        inner.systemctl("stop", "quayd", check=False)
