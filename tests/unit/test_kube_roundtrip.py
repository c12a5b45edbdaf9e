"""Units to manifests and back: import(export(u)) == u for the mapped keys, and every manifest
valid against Kubernetes 1.37's published schema (kubernetes-validate, strict: unknown fields,
wrong types and missing required fields are refused)."""

from __future__ import annotations

import copy
import textwrap
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from quayd.kube.export import ExportOptions, Kind, KubeExportError, export_unit
from quayd.kube.importer import import_manifests
from quayd.kube.reader import KubeImportError
from quayd.kube.table import TABLE
from quayd.kube.yamltext import dump_documents, load_documents
from quayd.units.directory import load_directory
from quayd.units.model import HEALTH_DEFAULTS, Unit
from quayd.units.values import format_duration
from tests.support.units import unit_from

KUBERNETES = "1.37"
EXAMPLES = Path(__file__).parents[2] / "examples" / "etc-quay.d"

# Between them, every mapped key of the table set to something other than its default.
EVERY_KEY = {
    "app": """
        [container]
        image = "registry.example:5000/team/app:v2"
        command = ["/usr/local/bin/app"]
        args = ["serve", "--port", "8080"]
        env = { LOG_LEVEL = "info", DATABASE_URL = "postgres://db:5432/app" }
        env_files = ["/etc/quay/app.env", "/etc/quay/secrets.env"]
        user = "1000:1000"
        workdir = "/srv/app"
        hostname = "app"
        read_only = true
        stop_signal = "SIGINT"
        stop_timeout = "30s"
        cap_drop = ["ALL"]
        cap_add = ["NET_BIND_SERVICE", "CAP_CHOWN"]
        sysctls = { "net.ipv4.ip_unprivileged_port_start" = 80, "net.core.somaxconn" = "1024" }
        labels = { "app.kubernetes.io/name" = "app", team = "payments" }

        [restart]
        policy = "on-failure"

        [ready]
        mode = "tcp"
        port = 8080
        timeout = "2m"

        [health]
        command = ["/usr/local/bin/app", "healthcheck"]
        interval = "10s"
        timeout = "3s"
        retries = 5
        start_period = "30s"
        on_unhealthy = "restart"

        [resources]
        memory = "512M"
        cpus = 1.5

        [network]
        ports = ["8080:8080", "127.0.0.1:9090:9090", "[::1]:9443:443", "53:53/udp"]
        aliases = ["api", "app-internal"]

        [depends]
        requires = ["db", "cache"]

        [[mounts]]
        type = "volume"
        source = "app-data"
        target = "/var/lib/app"

        [[mounts]]
        type = "bind"
        source = "/etc/app/config.yaml"
        target = "/etc/app/config.yaml"
        read_only = true

        [[mounts]]
        type = "tmpfs"
        target = "/tmp"
        size = "64M"

        [image]
        pull = "always"
        platform = "linux/arm64"
    """,
    "db": """
        [container]
        image = "postgres:16"
        user = "999"

        [restart]
        policy = "always"

        [ready]
        mode = "healthy"
        timeout = "45s"

        [health]
        command = ["pg_isready", "-q"]
        interval = "5s"

        [network]
        mode = "host"
    """,
    "pinned": """
        [container]
        image = "busybox@sha256:0000000000000000000000000000000000000000000000000000000000000000"
        args = []
        stop_timeout = "1s"

        [restart]
        policy = "no"
    """,
}


def every_key_units() -> dict[str, Unit]:
    return {name: unit_from(text, name=f"{name}.toml") for name, text in EVERY_KEY.items()}


def example_units() -> dict[str, Unit]:
    snapshot = load_directory(EXAMPLES)
    assert snapshot.valid, snapshot.findings
    return {name: loaded.unit for name, loaded in snapshot.units.items()}


def round_trip(name: str, unit: Unit, kind: Kind) -> tuple[Unit, list[dict[str, Any]]]:
    exported = export_unit(name, unit, ExportOptions(kind=kind, service=True))
    for document in exported.documents:
        kubernetes_validate.validate(copy.deepcopy(document), KUBERNETES, strict=True)
    text = dump_documents(exported.documents, [str(n) for n in exported.notes])
    units, _ = import_manifests(load_documents(text, "exported.yaml"), "exported.yaml")
    assert [u.name for u in units] == [name]
    return units[0].unit, exported.documents


def mapped_part(unit: Unit) -> dict[str, Any]:
    """The unit as export (with --service) maps it: unmapped keys at their defaults, health
    timing written out, port ranges as single ports, and the values Kubernetes cannot hold as
    the defaults."""
    document = unit.model_dump(mode="json")
    defaults = Unit(container={"image": "x"}).model_dump(mode="json")  # type: ignore[arg-type]
    for row in TABLE:
        table, key = row.key.split(".")
        if not row.mapped and table != "mounts":
            document[table][key] = defaults[table][key]
    ready, health = document["ready"], document["health"]
    if ready["mode"] == "notify":
        ready["mode"] = "started"
    if document["network"]["mode"] == "none":
        document["network"]["mode"] = "bridge"
    if ready["mode"] not in ("tcp", "healthy"):
        ready["timeout"] = defaults["ready"]["timeout"]
    health_mapped = health["command"] is not None and (
        health["on_unhealthy"] == "restart" or ready["mode"] == "healthy"
    )
    if health_mapped:
        for key, value in HEALTH_DEFAULTS.items():
            if health[key] is None:
                health[key] = value if key == "retries" else format_duration(value)  # type: ignore[arg-type]
    else:
        document["health"] = defaults["health"]
    document["network"]["ports"] = [
        str(mapping) for spec in unit.network.ports for mapping in spec.mappings
    ]
    return document


def test_the_every_key_units_set_every_mapped_key() -> None:
    units = every_key_units()
    defaults = Unit(container={"image": "x"}).model_dump(mode="json")  # type: ignore[arg-type]
    unset = []
    for row in TABLE:
        table, key = row.key.split(".")
        if not row.mapped:
            continue
        if table == "mounts":
            found = any(
                key in m and m[key] for u in units.values() for m in u.model_dump()["mounts"]
            )
        else:
            found = any(
                u.model_dump(mode="json")[table][key] != defaults[table][key]
                for u in units.values()
            )
        if not found:
            unset.append(row.key)
    assert unset == []


@pytest.mark.parametrize("name", sorted(EVERY_KEY))
def test_every_key_round_trips_through_a_pod(name: str) -> None:
    unit = every_key_units()[name]
    back, _ = round_trip(name, unit, "pod")
    assert back.model_dump(mode="json") == mapped_part(unit)


@pytest.mark.parametrize("name", ["clock", "job", "web", "worker"])
def test_the_examples_round_trip_through_a_pod(name: str) -> None:
    unit = example_units()[name]
    back, _ = round_trip(name, unit, "pod")
    assert back.model_dump(mode="json") == mapped_part(unit)


@pytest.mark.parametrize("kind", ["deployment", "daemonset"])
@pytest.mark.parametrize("name", ["db", "web"])
def test_workloads_round_trip(name: str, kind: Kind) -> None:
    unit = {**every_key_units(), **example_units()}[name]
    back, documents = round_trip(name, unit, kind)
    assert back.model_dump(mode="json") == mapped_part(unit)
    assert documents[0]["kind"] == {"deployment": "Deployment", "daemonset": "DaemonSet"}[kind]


def test_a_workload_refuses_a_restart_policy_other_than_always() -> None:
    with pytest.raises(KubeExportError, match=r"restart.policy = 'on-failure'.*--kind pod"):
        export_unit("app", every_key_units()["app"], ExportOptions(kind="deployment"))


def test_the_validator_rejects_broken_manifests() -> None:
    """The validator is not a rubber stamp: wrong types, unknown and missing fields fail."""
    (pod, *_) = export_unit("app", every_key_units()["app"]).documents
    kubernetes_validate.validate(copy.deepcopy(pod), KUBERNETES, strict=True)
    wrong_type = copy.deepcopy(pod)
    wrong_type["spec"]["containers"][0]["ports"][0]["containerPort"] = "8080"
    unknown = copy.deepcopy(pod)
    unknown["spec"]["containers"][0]["entrypoint"] = ["/app"]
    missing = copy.deepcopy(pod)
    del missing["spec"]["containers"][0]["name"]
    bad_enum_shape = copy.deepcopy(pod)
    bad_enum_shape["spec"]["securityContext"]["sysctls"][0]["value"] = 80
    for broken, message in (
        (wrong_type, "is not of type 'integer'"),
        (unknown, "'entrypoint' was unexpected"),
        (missing, "'name' is a required property"),
        (bad_enum_shape, "is not of type 'string'"),
    ):
        with pytest.raises(kubernetes_validate.ValidationError) as caught:
            kubernetes_validate.validate(broken, KUBERNETES, strict=True)
        assert message in caught.value.message


def test_the_trailing_comments_name_what_did_not_map() -> None:
    unit = example_units()["web"]
    exported = export_unit("web", unit)
    text = dump_documents(exported.documents, [str(n) for n in exported.notes])
    comments = [line for line in text.splitlines() if line.startswith("# ")]
    assert '# not mapped: network.aliases = ["www"]: A headless Service answers' in "\n".join(
        comments
    )
    assert any(c.startswith('# not mapped: restart.backoff = "500ms"') for c in comments)
    assert any(c.startswith("# not mapped: resources.pids = 64") for c in comments)
    assert any("PersistentVolumeClaim web-content" in c for c in comments)


def test_conditional_values_are_named_too() -> None:
    unit = unit_from(
        textwrap.dedent(
            """
            [container]
            image = "busybox"
            user = "nobody"
            hostname = "web.example"
            labels = { "has space" = "x" }
            [ready]
            mode = "notify"
            [network]
            mode = "none"
            [image]
            platform = "linux/arm64/v8"
            """
        )
    )
    notes = {n.key: str(n) for n in export_unit("web", unit).notes}
    assert notes["container.user"].endswith("Kubernetes takes numeric IDs only")
    assert notes["container.hostname"].endswith("a pod's hostname is one DNS label")
    assert "has space" in notes["container.labels"]
    assert "notify socket" in notes["ready.mode"]
    assert notes["network.mode"].endswith("every pod has a network")
    assert notes["image.platform"].endswith("the variant has no node label")


def test_volumes_as_host_paths_of_the_agents_copy() -> None:
    unit = every_key_units()["app"]
    options = ExportOptions(volumes="hostpath", volumes_dir="/srv/quay/volumes")
    exported = export_unit("app", unit, options)
    assert [d["kind"] for d in exported.documents] == ["Pod"]  # no claim
    (pod,) = exported.documents
    kubernetes_validate.validate(copy.deepcopy(pod), KUBERNETES, strict=True)
    assert pod["spec"]["volumes"][0] == {
        "name": "mount-0",
        "hostPath": {"path": "/srv/quay/volumes/app-data", "type": "DirectoryOrCreate"},
    }
    text = dump_documents(exported.documents)
    (back,), _ = import_manifests(load_documents(text, "x.yaml"), "x.yaml")
    # The same directory, bound: on this host the container sees the same data.
    first = back.unit.mounts[0]
    assert (first.type, first.source, first.target) == (
        "bind",
        "/srv/quay/volumes/app-data",
        "/var/lib/app",
    )
    assert any("hostPath /srv/quay/volumes/app-data" in str(n) for n in exported.notes)


def test_a_volume_name_kubernetes_cannot_hold_is_refused_as_a_claim() -> None:
    unit = unit_from(
        '[container]\nimage = "busybox"\n'
        '[[mounts]]\ntype = "volume"\nsource = "Data_1"\ntarget = "/data"\n'
    )
    with pytest.raises(KubeExportError, match="rename the volume, or use --volumes hostpath"):
        export_unit("web", unit)
    assert export_unit("web", unit, ExportOptions(volumes="hostpath")).documents[0]["kind"] == "Pod"


def test_with_service_units_find_each_other_by_name() -> None:
    """Aliases become headless Services; requires, init containers waiting for their names."""
    units = example_units()
    web = export_unit("web", units["web"], ExportOptions(service=True))
    services = [d for d in web.documents if d["kind"] == "Service"]
    assert [s["metadata"]["name"] for s in services] == ["web", "www"]
    assert services[1]["spec"] == {
        "clusterIP": "None",
        "selector": {"quay/unit": "web"},
        "ports": [{"name": "tcp-80", "port": 80, "protocol": "TCP"}],
    }
    worker = export_unit("worker", units["worker"], ExportOptions(service=True))
    (wait,) = worker.documents[0]["spec"]["initContainers"]
    assert wait["name"] == "wait-web"
    assert wait["image"] == "busybox:1.28"
    assert wait["command"][2].startswith("until nslookup web.$(cat /var/run/secrets/")
    for document in [*web.documents, *worker.documents]:
        kubernetes_validate.validate(copy.deepcopy(document), KUBERNETES, strict=True)
    assert not [n for n in worker.notes if not n.mapped]
    # Names Kubernetes cannot hold as Services stay named in a comment.
    odd = unit_from(
        '[container]\nimage = "busybox"\n[network]\naliases = ["Www", "a.b"]\n'
        '[depends]\nrequires = ["db_1"]\n'
    )
    notes = [str(n) for n in export_unit("web", odd, ExportOptions(service=True)).notes]
    assert notes == [
        "not mapped: depends.requires = 'db_1': 'db_1' is not a Service name to wait for (one "
        "DNS label)",
        "not mapped: network.aliases = 'Www': 'Www' is not a Service name (one lowercase DNS "
        "label)",
        "not mapped: network.aliases = 'a.b': 'a.b' is not a Service name (one lowercase DNS "
        "label)",
    ]


def test_an_init_container_of_anyone_else_is_not_a_requirement() -> None:
    (pod, *_) = export_unit(
        "worker", example_units()["worker"], ExportOptions(service=True)
    ).documents
    pod["spec"]["initContainers"][0]["command"][2] = "sleep 10"
    with pytest.raises(KubeImportError) as caught:
        import_manifests([pod], "x.yaml")
    assert [str(p) for p in caught.value.problems] == [
        "spec.initContainers[0]: quay runs one container per unit, no init steps"
    ]
