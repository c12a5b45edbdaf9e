"""quayd installed as the packaged systemd service in a systemd test host, and ways to watch it.

:class:`Deployment` installs ``packaging/systemd/quayd.service`` in the host (``ExecStart``
pointed at the venv's quayd and the test's directories, a 3 s watchdog, a 0.5 s restart delay),
loads images into the store, writes unit files atomically, and reads ``systemctl show``,
``quayctl status --json`` and the containers' PIDs.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from quayd.images.model import Platform
from tests.support.images import Layer, OciLayout, busybox_entries, file
from tests.support.systemd_host import REPO, SystemdHost, systemd_host

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


def wait_until(what: str, check: Callable[[], T | None], timeout: float = 30.0) -> T:
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last!r}")


class Deployment:
    def __init__(self, host: SystemdHost) -> None:
        self.host = host
        self.config_dir = host.state_dir / "etc-quay.d"
        self.state_dir = host.state_dir / "state"
        self.hang_file = host.state_dir / "hang"

    def install(self, sd_notify: Path) -> None:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        image = self.host.state_dir / "busybox-oci"
        subprocess.run([REPO / "examples" / "build-busybox-image", image], check=True)
        self.load(image, IMAGE)
        # busybox plus the static sd_notify helper, for readiness through NOTIFY_SOCKET
        layout = OciLayout(self.host.state_dir / "notify-oci")
        entries = [*busybox_entries(), file("bin/sd_notify", sd_notify.read_bytes(), 0o755)]
        descriptor, _ = layout.image([Layer.of(entries)], Platform.host())
        layout.tag(descriptor, "1")
        self.load(layout.root, NOTIFY_IMAGE)
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
        units = Path("/run/systemd/system")  # inside the host: its private /run
        for name, text in (
            ("quayd.service", service),
            ("quay.slice", (REPO / "packaging/systemd/quay.slice").read_text()),
        ):
            self.host.run(["sh", "-c", f"mkdir -p {units} && cat > {units / name}"], input=text)
        self.host.systemctl("daemon-reload")

    def load(self, layout: Path, reference: str) -> None:
        subprocess.run(
            [
                QUAYCTL,
                "--state-dir",
                self.state_dir,
                "image",
                "load",
                layout,
                "--reference",
                reference,
            ],
            check=True,
            capture_output=True,
        )

    def write(self, name: str, text: str) -> None:
        temporary = self.config_dir / f".{name}.tmp"
        temporary.write_text(text)
        temporary.rename(self.config_dir / f"{name}.toml")

    def delete(self, name: str) -> None:
        (self.config_dir / f"{name}.toml").unlink()

    def show(self, *properties: str) -> dict[str, str]:
        shown = self.host.systemctl("show", "quayd", "-p", ",".join(properties)).stdout
        return dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)

    def status(self) -> dict[str, Any]:
        done = self.host.run([str(QUAYCTL), "--run-dir", RUN_DIR, "status", "--json"], check=False)
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

    def http(self) -> str:
        done = self.host.run(
            ["busybox", "wget", "-q", "-O", "-", "http://127.0.0.1:8080/"], check=False
        )
        return done.stdout.strip()

    def alive(self, pid: int) -> bool:
        return self.host.run(["kill", "-0", str(pid)], check=False).returncode == 0


def running(deployment: Deployment, name: str) -> int:
    return wait_until(f"{name} running", lambda: deployment.running_pid(name))


@contextlib.contextmanager
def deployed(
    sd_notify: Path, units: Mapping[str, str] | None = None, *, start: bool = True
) -> Iterator[Deployment]:
    """A throwaway systemd host with quayd installed as its packaged service, ``units`` written,
    and (with ``start``) the service started; quayd is stopped before the host goes."""
    with systemd_host() as host:
        deployment = Deployment(host)
        deployment.install(sd_notify)
        for name, text in (units or {}).items():
            deployment.write(name, text)
        if start:
            host.systemctl("start", "quayd")
        yield deployment
        host.systemctl("stop", "quayd", check=False)
