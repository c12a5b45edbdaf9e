"""A real Prometheus scrapes quayd in each test host (issue 18).

quayd, the packaged service, serves its metrics on the host's own 127.0.0.1:9464 (a drop-in adds
``--config`` with ``[metrics] listen``); Debian's ``prometheus`` runs there as a transient
service (``systemd-run``, as the registry of test_agent_images.py) scraping it every second, and
the tests ask Prometheus' HTTP API, on the host's loopback, what it stored: a ready unit, the
restart counter rising after its container is killed, the memory of a unit holding 30 MiB. The
live exposition passes ``promtool check metrics``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent import (
    HOSTS,
    WEB_BASE,
    Deployment,
    deployed,
    running,
    wait_until,
)
from tests.support.metrics_doc import doc_block
from tests.support.systemd_host import CONTAINER_TEST_MARKS

pytestmark = [*CONTAINER_TEST_MARKS, pytest.mark.e2e]

METRICS = "127.0.0.1:9464"
SETTINGS = f'[metrics]\nlisten = "{METRICS}"\n'
"""quayd.toml: the metrics endpoint on the host's loopback."""
PROMETHEUS_BINARY = "/usr/bin/prometheus"
PROMETHEUS = "127.0.0.1:9090"  # inside the host's network: nothing else listens there
MiB = 1 << 20
WEB = WEB_BASE + '[restart]\npolicy = "always"\nbackoff = "200ms"\n'
HOG = """
[container]
image = "localhost/busybox:1.36"
command = ["sh", "-c", "head -c 31457280 /dev/zero > /dev/shm/hog && exec sleep 3600"]
stop_timeout = "1s"
[ready]
mode = "started"
"""
"""30 MiB in the container's /dev/shm (a tmpfs: its pages are charged to the cgroup)."""
OOMER = """
[container]
image = "localhost/busybox:1.36"
command = ["sh", "-c", "sleep 10; (x=a; while :; do x=$x$x; done); exec sleep 3600"]
[resources]
memory = "32M"
[restart]
policy = "no"
"""
"""Held at 0 OOM kills for 10 s (Prometheus sees the series before it rises), then a subshell
grows past the limit and is the OOM killer's choice (the largest process); the init lives on,
so its cgroup, and the kill it counts, stay for the scrapes."""


class Prometheus:
    """Debian's prometheus in the host, as ``systemd-run --unit quay-test-prometheus``.

    The namespace host runs the machine's ``/usr/bin/prometheus``. The VM guest's image has no
    prometheus package: the same binary (a Go program linked only to libc, and the guest is the
    same Debian 12) is copied in, so the image recipe, and every image cached by it, stays.
    """

    UNIT = "quay-test-prometheus"

    def __init__(self, deployment: Deployment) -> None:
        self.host = deployment.host
        self.root = deployment.host.scratch / "prometheus"

    def start(self) -> None:
        config = self.root / "prometheus.yml"
        self.host.write_file(
            str(config),
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
            f"rule_files:\n  - {self.root / 'quay-rules.yml'}\n"
            "scrape_configs:\n  - job_name: quayd\n    static_configs:\n"
            f'      - targets: ["{METRICS}"]\n',
        )
        # docs/metrics.md's alert rules, as an operator would load them
        self.host.write_file(str(self.root / "quay-rules.yml"), doc_block("Alert rules"))
        binary = PROMETHEUS_BINARY
        if self.host.kind == "vm":
            binary = str(self.root / "prometheus")
            self.host.copy_in(Path(PROMETHEUS_BINARY), binary)
            self.host.run(["chmod", "0755", binary])
        self.host.run(
            ["systemd-run", f"--unit={self.UNIT}", "--collect", "--quiet",
             binary, f"--config.file={config}",
             f"--storage.tsdb.path={self.root / 'data'}", f"--web.listen-address={PROMETHEUS}"]
        )  # fmt: skip
        wait_until("prometheus ready", self._ready, timeout=60)

    def _ready(self) -> bool:
        probe = ["busybox", "wget", "-q", "-O", "/dev/null", f"http://{PROMETHEUS}/-/ready"]
        return self.host.run(probe, check=False).returncode == 0

    def stop(self) -> None:
        self.host.systemctl("stop", self.UNIT, check=False)

    def query(self, expression: str) -> list[dict[str, object]]:
        """The instant vector Prometheus' HTTP API answers for ``expression``."""
        url = f"http://{PROMETHEUS}/api/v1/query?query={urllib.parse.quote(expression)}"
        done = self.host.run(["busybox", "wget", "-q", "-O", "-", url])
        answer = json.loads(done.stdout)
        assert answer["status"] == "success", answer
        result: list[dict[str, object]] = answer["data"]["result"]
        return result

    def alerts(self) -> list[dict[str, Any]]:
        """The alerts Prometheus evaluates now (pending and firing)."""
        url = f"http://{PROMETHEUS}/api/v1/alerts"
        answer = json.loads(self.host.run(["busybox", "wget", "-q", "-O", "-", url]).stdout)
        alerts: list[dict[str, Any]] = answer["data"]["alerts"]
        return alerts

    def value(self, expression: str) -> float | None:
        """The one sample's value, None when the vector is empty."""
        result = self.query(expression)
        if not result:
            return None
        assert len(result) == 1, result
        sample = result[0]["value"]
        assert isinstance(sample, list)
        return float(sample[1])


@pytest.fixture(scope="module", params=HOSTS)
def deployment(request: pytest.FixtureRequest, sd_notify: Path) -> Iterator[Deployment]:
    with deployed(sd_notify, {"web": WEB}, host=request.param, settings=SETTINGS) as deployment:
        yield deployment


@pytest.fixture(scope="module")
def prometheus(deployment: Deployment) -> Iterator[Prometheus]:
    server = Prometheus(deployment)
    server.start()
    yield server
    server.stop()


def scrape(deployment: Deployment, accept: str | None = None) -> str:
    argv = ["busybox", "wget", "-q", "-O", "-", f"http://{METRICS}/metrics"]
    if accept is not None:
        argv[2:2] = ["--header", f"Accept: {accept}"]
    return deployment.host.run(argv).stdout


def test_live_output_passes_promtool(deployment: Deployment) -> None:
    running(deployment, "web")

    def ready_output() -> str | None:
        text = scrape(deployment)
        return text if 'quay_unit_ready{unit="web"} 1.0' in text else None

    text = wait_until("web ready in the metrics", ready_output)
    assert 'quay_unit_state{state="running",unit="web"} 1.0' in text
    assert 'quay_container_memory_bytes{unit="web"}' in text
    assert 'quay_container_network_receive_bytes_total{unit="web"}' in text
    # quayctl status --json (which running() calls) went through the API's status handler.
    assert 'quay_api_requests_total{code="200",route="status"}' in text
    assert "quay_agent_pass_duration_seconds_count" in text
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install prometheus (./dev installs it)"
    checked = subprocess.run(
        [promtool, "check", "metrics"],
        input=text,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_prometheus_sees_web_ready_and_its_restarts_rise(
    deployment: Deployment, prometheus: Prometheus
) -> None:
    pid = running(deployment, "web")
    wait_until(
        "Prometheus: web ready",
        lambda: prometheus.value('quay_unit_ready{unit="web"}') == 1,
        timeout=60,
    )
    before = prometheus.value('quay_unit_restarts_total{unit="web"}')
    assert before is not None
    deployment.host.run(["kill", "-KILL", str(pid)])  # the container crashes
    wait_until("web restarted", lambda: (p := deployment.running_pid("web")) and p != pid)
    after = wait_until(
        "Prometheus: web's restarts rise",
        lambda: (
            (v := prometheus.value('quay_unit_restarts_total{unit="web"}')) and v > before and v
        ),
        timeout=60,
    )
    assert after == before + 1
    assert prometheus.value('quay_unit_last_exit_code{unit="web"}') == 137  # 128 + SIGKILL
    wait_until(
        "Prometheus: web ready again",
        lambda: prometheus.value('quay_unit_ready{unit="web"}') == 1,
        timeout=60,
    )
    assert prometheus.value('up{job="quayd"}') == 1


def test_memory_of_a_unit_holding_30_mib(deployment: Deployment, prometheus: Prometheus) -> None:
    deployment.write("hog", HOG)
    running(deployment, "hog")
    memory = wait_until(
        "Prometheus: hog holds its 30 MiB",
        lambda: (
            (v := prometheus.value('quay_container_memory_bytes{unit="hog"}'))
            and v >= 30 * MiB
            and v
        ),
        timeout=60,
    )
    assert 30 * MiB <= memory <= 64 * MiB, memory
    peak = prometheus.value('quay_container_memory_peak_bytes{unit="hog"}')
    assert peak is not None
    assert memory <= peak <= 64 * MiB, peak
    assert (prometheus.value('quay_container_pids{unit="hog"}') or 0) >= 1
    deployment.delete("hog")
    wait_until(
        "Prometheus: hog's series gone",
        lambda: prometheus.value('quay_unit_ready{unit="hog"}') is None,
        timeout=60,
    )


def test_an_oom_kill_in_a_container_is_counted_and_the_documented_alert_fires(
    deployment: Deployment, prometheus: Prometheus
) -> None:
    deployment.write("oomer", OOMER)
    series = 'quay_container_oom_kills_total{unit="oomer"}'
    wait_until("Prometheus: oomer at 0", lambda: prometheus.value(series) == 0, timeout=60)
    wait_until("Prometheus: oomer's kill", lambda: prometheus.value(series) == 1, timeout=60)
    assert prometheus.value('quay_unit_state{unit="oomer",state="running"}') == 1
    limit = 32 * MiB
    assert (prometheus.value('quay_container_memory_peak_bytes{unit="oomer"}') or 0) >= limit - MiB

    def firing() -> dict[str, Any] | None:
        for alert in prometheus.alerts():
            labels = alert["labels"]
            if labels.get("alertname") == "QuayUnitOOMKilled" and labels.get("unit") == "oomer":
                return alert if alert["state"] == "firing" else None
        return None

    alert = wait_until("QuayUnitOOMKilled firing for oomer", firing, timeout=60)
    assert "oomer" in alert["annotations"]["summary"]
    # The agent is up and ready: its alert is not among them.
    assert not any(a["labels"]["alertname"] == "QuayAgentNotReady" for a in prometheus.alerts())
    deployment.delete("oomer")
