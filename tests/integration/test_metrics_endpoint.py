"""The metrics endpoint over real sockets (TCP on loopback, a unix socket), its output checked by
Debian's ``promtool check metrics``, and what docs/metrics.md shows (the scrape config and the
alert rules) checked by ``promtool check config`` and ``check rules``."""

from __future__ import annotations

import re
import shutil
import socket
import stat
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from quayd.agent.events import Event
from quayd.agent.metrics import AgentMetrics, Snapshot, UnitSample
from quayd.agent.metrics_server import MetricsServer, MetricsServerError
from quayd.isolation.cgroup_stats import CgroupStats
from quayd.net.counters import Traffic
from tests.support.metrics_doc import DOC, doc_block

pytestmark = pytest.mark.integration

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: apt-get install prometheus (./dev installs it)"
    return found


def check_metrics(text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), "check", "metrics"],
        input=text,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


def published() -> AgentMetrics:
    metrics = AgentMetrics(
        read_cgroup={"web": CgroupStats(1.5, 30 << 20, 40 << 20, 0, 2)}.get,
        read_traffic=lambda _units: {"web": Traffic(9000, 700)},
    )
    web = UnitSample(
        "web", "running", True, "healthy", 1, 0, 137, "localhost/busybox:1.36", "sha256:ab", True
    )
    events = [Event(1, 1.0, "web", "updated", "updated"), Event(2, 2.0, "web", "update-failed", "")]
    metrics.publish(Snapshot(units=(web,), ready=True, last_pass_at=time.time()), events, 0.003)
    metrics.start_seconds.observe(0.4)
    metrics.api_requests.labels("status", "200").inc()
    metrics.pulls.labels("ok").inc()
    return metrics


def test_tcp_text_and_openmetrics_pass_promtool() -> None:
    server = MetricsServer("127.0.0.1:0", published().render)
    server.start()
    try:
        url = f"http://{server.address}/metrics"
        text = httpx.get(url, timeout=10)
        assert text.status_code == 200
        assert text.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert 'quay_unit_ready{unit="web"} 1.0' in text.text
        checked = check_metrics(text.text)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        opened = httpx.get(url, headers={"Accept": OPENMETRICS}, timeout=10)
        assert opened.headers["content-type"].startswith("application/openmetrics-text")
        assert opened.text.endswith("# EOF\n")
        assert 'quay_unit_restarts_total{unit="web"} 1.0' in opened.text
    finally:
        server.close()
    with pytest.raises(httpx.ConnectError):
        httpx.get(url, timeout=2)


def test_promtool_refuses_what_breaks_the_conventions() -> None:
    """The check above can fail: a counter without ``_total`` is refused."""
    checked = check_metrics("# HELP quay_x A count.\n# TYPE quay_x counter\nquay_x 1\n")
    assert checked.returncode != 0
    assert "_total" in checked.stdout + checked.stderr


def test_unix_socket(tmp_path: Path) -> None:
    path = tmp_path / "run" / "metrics.sock"
    server = MetricsServer(str(path), published().render)
    server.start()
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o660
        transport = httpx.HTTPTransport(uds=str(path))
        with httpx.Client(transport=transport, timeout=10) as client:
            answer = client.get("http://quayd/metrics")
        assert answer.status_code == 200
        assert "quay_container_memory_bytes" in answer.text
        with pytest.raises(MetricsServerError, match="another process serves this socket"):
            MetricsServer(str(path), published().render)
    finally:
        server.close()
    assert not path.exists()
    # A dead agent's socket file is replaced.
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()
    MetricsServer(str(path), published().render).close()


def test_a_taken_port_is_an_error_that_says_what_to_do() -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        port = holder.getsockname()[1]
        with pytest.raises(MetricsServerError, match=r"\[metrics\] listen"):
            MetricsServer(f"127.0.0.1:{port}", published().render)
    finally:
        holder.close()


def test_a_slow_scraper_does_not_hold_up_another() -> None:
    """One thread per scrape: a client that sends half a request delays nobody."""
    server = MetricsServer("127.0.0.1:0", published().render)
    server.start()
    host, port = server.address.rsplit(":", 1)
    slow = socket.create_connection((host, int(port)))
    try:
        slow.sendall(b"GET /metrics HTTP/1.1\r\n")  # and nothing more
        started = time.monotonic()
        assert httpx.get(f"http://{server.address}/", timeout=5).status_code == 200
        assert time.monotonic() - started < 1.0
    finally:
        slow.close()
        server.close()
    assert not any(t.name == "quay-metrics" and t.is_alive() for t in threading.enumerate())


def test_documented_alert_rules_pass_promtool(tmp_path: Path) -> None:
    rules = tmp_path / "quay-rules.yml"
    rules.write_text(doc_block("Alert rules"))
    checked = subprocess.run(
        [promtool(), "check", "rules", str(rules)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 3 rules found" in checked.stdout
    names = set(re.findall(r"alert: (\w+)", rules.read_text()))
    assert names == {"QuayUnitInBackoff", "QuayUnitOOMKilled", "QuayAgentNotReady"}


def test_documented_scrape_config_passes_promtool(tmp_path: Path) -> None:
    config = tmp_path / "prometheus.yml"
    config.write_text(doc_block("Scrape config"))
    (tmp_path / "quay-rules.yml").write_text(doc_block("Alert rules"))
    checked = subprocess.run(
        [promtool(), "check", "config", str(config)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_metric_is_documented() -> None:
    text = published().render("")[0].decode()
    names = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    documented = DOC.read_text()
    missing = sorted(
        name for name in names if not name.startswith("process_") and f"`{name}" not in documented
    )
    assert not missing, f"docs/metrics.md does not list {missing}"
