"""Metrics: the restart counter, exit codes, cgroup and veth readings on small trees, the
families built from a snapshot, and the ``[metrics] listen`` setting."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from quayd.agent.api import RequestError
from quayd.agent.events import Event
from quayd.agent.metrics import (
    STATES,
    AgentMetrics,
    OomCounter,
    RestartCounter,
    Snapshot,
    UnitSample,
    count_requests,
    exit_code,
)
from quayd.isolation.cgroup_stats import CgroupStats, cgroup_stats
from quayd.net.counters import Traffic, container_traffic, parse_net_dev, read_traffic
from quayd.net.naming import host_veth_name
from quayd.reconcile.model import Exit
from quayd.units.findings import QuayConfigError
from quayd.units.settings import load_settings


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_restarts_count_starts_of_one_hash_and_never_go_down() -> None:
    counter = RestartCounter()
    assert counter.update({"web": ("h1", 1)}) == {}
    assert counter.update({"web": ("h1", 3)}) == {"web": 2}
    # A changed unit starts its count afresh: a replacement, not a restart; the total stays.
    assert counter.update({"web": ("h2", 1)}) == {"web": 2}
    assert counter.update({"web": ("h2", 2)}) == {"web": 3}
    # A unit seen first (or again after it went) counts as the status API does: starts - 1.
    counter.forget(["web"])
    assert counter.update({"web": ("h2", 2)}) == {"web": 1}
    assert counter.update({"db": ("h3", 1)}) == {"web": 1}


def test_oom_kills_count_each_exit_once() -> None:
    counter = OomCounter()
    first = Exit(at=1, hash="h", started_at=0, signal="SIGKILL", oom=True)
    second = Exit(at=2, hash="h", started_at=1, code=1, oom=False)
    assert counter.update({"web": [first]}) == {"web": 1}
    assert counter.update({"web": [first, second]}) == {"web": 1}
    third = Exit(at=3, hash="h", started_at=2, signal="SIGKILL", oom=True)
    assert counter.update({"web": [first, second, third]}) == {"web": 2}


def test_exit_code_of_a_signal_is_128_plus_its_number() -> None:
    assert exit_code(Exit(at=1, hash="h", started_at=0, code=3)) == 3
    assert exit_code(Exit(at=1, hash="h", started_at=0, signal="SIGKILL")) == 137
    assert exit_code(Exit(at=1, hash="h", started_at=0, signal="SIGNOPE")) is None
    assert exit_code(Exit(at=1, hash="h", started_at=0)) is None


def test_cgroup_stats_v2(tmp_path: Path) -> None:
    write(tmp_path / "cgroup.controllers", "")
    scope = tmp_path / "quay.slice" / "quay-web.scope"
    write(scope / "memory.current", "31457280\n")
    write(scope / "memory.peak", "41943040\n")
    write(scope / "memory.events", "low 0\nhigh 0\nmax 4\noom 2\noom_kill 1\n")
    write(scope / "cpu.stat", "usage_usec 1500000\n")
    write(scope / "pids.current", "2\n")
    assert cgroup_stats("web", cgroup_root=tmp_path) == CgroupStats(1.5, 31457280, 41943040, 1, 2)
    (scope / "memory.peak").unlink()  # before Linux 5.19
    assert cgroup_stats("web", cgroup_root=tmp_path) == CgroupStats(1.5, 31457280, None, 1, 2)
    assert cgroup_stats("gone", cgroup_root=tmp_path) is None


def test_cgroup_stats_v1(tmp_path: Path) -> None:
    scope = "quay.slice/quay-web.scope"
    write(tmp_path / "memory" / scope / "memory.usage_in_bytes", "1048576\n")
    write(tmp_path / "memory" / scope / "memory.max_usage_in_bytes", "2097152\n")
    write(
        tmp_path / "memory" / scope / "memory.oom_control",
        "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
    )
    write(tmp_path / "cpuacct" / scope / "cpuacct.usage", "2000000000\n")
    write(tmp_path / "pids" / scope / "pids.current", "5\n")
    assert cgroup_stats("web", cgroup_root=tmp_path) == CgroupStats(2.0, 1 << 20, 2 << 20, 3, 5)
    # crun's systemd driver puts the container in a child, which counts its own kills.
    write(
        tmp_path / "memory" / scope / "container" / "memory.oom_control",
        "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
    )
    assert cgroup_stats("web", cgroup_root=tmp_path) == CgroupStats(2.0, 1 << 20, 2 << 20, 5, 5)


NET_DEV = """\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:    1000      10    0    0    0     0          0         0     1000      10    0    0    0     0       0          0
{veth}:     700       7    0    0    0     0          0         0     9000      90    0    0    0     0       0          0
"""  # noqa: E501 - the kernel's own layout


def test_veth_counters_are_turned_to_the_containers_side(tmp_path: Path) -> None:
    text = NET_DEV.format(veth=host_veth_name("web"))
    counters = parse_net_dev(text)
    assert counters["lo"] == (1000, 1000)
    assert counters[host_veth_name("web")] == (700, 9000)
    # What the host end sent, the container received.
    assert container_traffic(["web", "db"], counters) == {"web": Traffic(9000, 700)}
    write(tmp_path / "dev", text)
    assert read_traffic(["web"], proc_net_dev=tmp_path / "dev") == {"web": Traffic(9000, 700)}
    assert read_traffic(["web"], proc_net_dev=tmp_path / "missing") == {}


def fixed_readers(
    stats: Mapping[str, CgroupStats | None], traffic: Mapping[str, Traffic]
) -> AgentMetrics:
    def read_traffic(units: Iterable[str]) -> Mapping[str, Traffic]:
        return {unit: traffic[unit] for unit in units if unit in traffic}

    return AgentMetrics(read_cgroup=stats.get, read_traffic=read_traffic)


def samples(metrics: AgentMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.render("")[0].decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_families_from_a_snapshot() -> None:
    metrics = fixed_readers(
        {"web": CgroupStats(1.5, 30 << 20, 40 << 20, 1, 2), "gone": None},
        {"web": Traffic(9000, 700)},
    )
    web = UnitSample(
        name="web",
        state="running",
        ready=True,
        health="healthy",
        restarts=2,
        oom_kills=1,
        last_exit_code=137,
        image="localhost/busybox:1.36",
        digest="sha256:abc",
        running=True,
    )
    job = UnitSample(name="job", state="exited", ready=False, last_exit_code=0)
    gone = UnitSample(name="gone", state="running", ready=True, running=True)
    metrics.publish(Snapshot(units=(web, job, gone), ready=True, last_pass_at=100.0), (), 0.004)
    found = samples(metrics)
    assert found[("quay_unit_ready", (("unit", "web"),))] == 1
    assert found[("quay_unit_ready", (("unit", "job"),))] == 0
    states = {labels for (name, labels), v in found.items() if name == "quay_unit_state" and v}
    assert len(states) == 3
    assert sum(1 for name, _ in found if name == "quay_unit_state") == 3 * len(STATES)
    assert found[("quay_unit_state", (("state", "exited"), ("unit", "job")))] == 1
    assert found[("quay_unit_health", (("health", "healthy"), ("unit", "web")))] == 1
    assert found[("quay_unit_health", (("health", "unhealthy"), ("unit", "web")))] == 0
    assert not any(
        name == "quay_unit_health" and ("unit", "job") in labels for name, labels in found
    )
    assert found[("quay_unit_restarts_total", (("unit", "web"),))] == 2
    assert found[("quay_unit_oom_kills_total", (("unit", "web"),))] == 1
    assert found[("quay_unit_oom_kills_total", (("unit", "job"),))] == 0
    assert found[("quay_unit_last_exit_code", (("unit", "job"),))] == 0
    image_labels = (("digest", "sha256:abc"), ("image", "localhost/busybox:1.36"), ("unit", "web"))
    assert found[("quay_unit_image_info", image_labels)] == 1
    assert found[("quay_container_cpu_seconds_total", (("unit", "web"),))] == 1.5
    assert found[("quay_container_memory_bytes", (("unit", "web"),))] == 30 << 20
    assert found[("quay_container_memory_peak_bytes", (("unit", "web"),))] == 40 << 20
    assert found[("quay_container_oom_kills_total", (("unit", "web"),))] == 1
    assert found[("quay_container_pids", (("unit", "web"),))] == 2
    assert found[("quay_container_network_receive_bytes_total", (("unit", "web"),))] == 9000
    assert found[("quay_container_network_transmit_bytes_total", (("unit", "web"),))] == 700
    # A container that ended between the pass and the scrape has no figures, and no error.
    assert ("quay_container_memory_bytes", (("unit", "gone"),)) not in found
    assert found[("quay_agent_ready", ())] == 1
    assert found[("quay_agent_passes_total", ())] == 1
    assert found[("quay_agent_pass_duration_seconds_count", ())] == 1
    assert found[("quay_agent_pass_duration_seconds_bucket", (("le", "0.005"),))] == 1
    assert found[("quay_agent_pass_duration_seconds_bucket", (("le", "0.0025"),))] == 0
    assert found[("quay_agent_last_pass_timestamp_seconds", ())] == 100.0
    assert ("process_resident_memory_bytes", ()) in found
    assert ("process_open_fds", ()) in found
    assert any(name == "quay_build_info" for name, _ in found)
    # OpenMetrics: the cached unit families and the live ones, one EOF at the very end.
    opened, content_type = metrics.render("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert opened.count(b"# EOF\n") == 1
    assert opened.endswith(b"# EOF\n")
    assert b'quay_unit_ready{unit="web"} 1.0' in opened
    # A changed unit is rendered anew, an unchanged set of units is not.
    rendered = metrics.render("")[0]
    metrics.publish(Snapshot(units=(web, job, gone), ready=True, last_pass_at=101.0))
    assert metrics.render("")[0].count(b"quay_unit_ready") == rendered.count(b"quay_unit_ready")
    metrics.publish(Snapshot(units=(replace(web, ready=False), job, gone), ready=True))
    assert samples(metrics)[("quay_unit_ready", (("unit", "web"),))] == 0
    # A removed unit's series go with it.
    metrics.publish(Snapshot(units=(job,), ready=True))
    assert ("quay_unit_ready", (("unit", "web"),)) not in samples(metrics)


def test_api_requests_are_counted_by_handler_and_status() -> None:
    asyncio.run(count_api_requests())


async def count_api_requests() -> None:
    metrics = fixed_readers({}, {})

    async def status(params: dict[str, object]) -> object:
        if params.get("missing"):
            raise RequestError("not-found", "no such unit")
        return {"ok": True}

    handlers = count_requests(metrics, {"status": status})
    assert await handlers["status"]({}) == {"ok": True}  # type: ignore[misc]
    with pytest.raises(RequestError):
        await handlers["status"]({"missing": True})  # type: ignore[misc]
    found = samples(metrics)
    assert found[("quay_api_requests_total", (("code", "200"), ("route", "status")))] == 1
    assert found[("quay_api_requests_total", (("code", "404"), ("route", "status")))] == 1
    assert count_requests(None, {"status": status})["status"] is status

    # A streaming handler (an async generator function, or a coroutine returning an iterator)
    # still hands the server its stream, counted once when the stream begins.
    async def pull(params: dict[str, object]) -> AsyncIterator[dict[str, int]]:
        del params
        for step in range(3):
            yield {"step": step}

    async def events(params: dict[str, object]) -> AsyncIterator[dict[str, int]]:
        return pull(params)

    streaming = count_requests(metrics, {"image_pull": pull, "events": events})
    for route in ("image_pull", "events"):
        stream = await streaming[route]({})  # type: ignore[misc]
        assert isinstance(stream, AsyncIterator)
        assert [item async for item in stream] == [{"step": 0}, {"step": 1}, {"step": 2}]
        labels = (("code", "200"), ("route", route))
        assert samples(metrics)[("quay_api_requests_total", labels)] == 1


def test_pulls_updates_and_rollbacks_are_counted_from_events() -> None:
    metrics = fixed_readers({}, {})
    web = UnitSample(name="web", state="running", ready=True)
    events = [
        Event(1, 1.0, "web", "pulled", "pulled"),
        Event(2, 2.0, "web", "pull-failed", "refused"),
        Event(3, 3.0, "web", "updated", "updated to v2"),
        Event(4, 4.0, "web", "update-failed", "rolled back"),
        Event(5, 5.0, "web", "updated", "updated to v4"),
        Event(6, 6.0, "web", "exited", "exited 0"),
    ]
    metrics.publish(Snapshot(units=(web,)), events)
    found = samples(metrics)
    assert found[("quay_agent_pulls_total", (("result", "ok"),))] == 1
    assert found[("quay_agent_pulls_total", (("result", "failed"),))] == 1
    assert found[("quay_unit_updates_total", (("unit", "web"),))] == 2
    assert found[("quay_unit_rollbacks_total", (("unit", "web"),))] == 1
    metrics.publish(Snapshot(units=()))
    assert not any(name.startswith("quay_unit_updates") for name, _ in samples(metrics))


def test_pulled_bytes_count_downloaded_layers() -> None:
    metrics = fixed_readers({}, {})
    metrics.on_pull_step("download", 100)
    metrics.on_pull_step("downloaded", 4096)
    metrics.on_pull_step("exists", 8192)
    assert samples(metrics)[("quay_agent_pulled_bytes_total", ())] == 4096


@pytest.mark.parametrize(
    ("written", "listen"),
    [
        ('"9464"', "127.0.0.1:9464"),
        ('":9464"', "127.0.0.1:9464"),
        ('"0.0.0.0:9100"', "0.0.0.0:9100"),
        ('"[::1]:9464"', "[::1]:9464"),
        ('"/run/quay/metrics.sock"', "/run/quay/metrics.sock"),
    ],
)
def test_listen_setting(tmp_path: Path, written: str, listen: str) -> None:
    path = tmp_path / "quayd.toml"
    path.write_text(f"[metrics]\nlisten = {written}\n")
    assert load_settings(path).metrics.listen == listen


@pytest.mark.parametrize(
    ("written", "message"),
    [
        ('"127.0.0.1:0"', "not a port"),
        ('"localhost:9464"', "not an IP address"),
        ('"run/metrics.sock"', "not a port"),
        ('"/' + "x" * 120 + '"', "longer than"),
    ],
)
def test_listen_setting_refused(tmp_path: Path, written: str, message: str) -> None:
    path = tmp_path / "quayd.toml"
    path.write_text(f"[metrics]\nlisten = {written}\n")
    with pytest.raises(QuayConfigError) as caught:
        load_settings(path)
    assert message in str(caught.value)
    assert "metrics.listen" in str(caught.value)


def test_metrics_are_off_by_default(tmp_path: Path) -> None:
    path = tmp_path / "quayd.toml"
    path.write_text("")
    assert load_settings(path).metrics.listen is None
