"""Units from manifests written by others (the Kubernetes documentation's examples, in
tests/data/kube), and the errors that name what does not map by its YAML path."""

from __future__ import annotations

import copy
import textwrap
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from quayd.kube.importer import ImportedUnit, import_manifests
from quayd.kube.quantity import QuantityError, bytes_quantity, cpu_quantity, parse_quantity
from quayd.kube.reader import KubeImportError
from quayd.kube.yamltext import ManifestSyntaxError, load_documents
from quayd.units.loader import SourceFile, load_unit

DATA = Path(__file__).parents[1] / "data" / "kube"


def manifest(name: str) -> list[dict[str, Any]]:
    path = DATA / name
    return load_documents(path.read_text(), str(path))


def import_one(documents: list[dict[str, Any]], *, lossy: bool = False) -> ImportedUnit:
    units, _ = import_manifests(documents, "test.yaml", lossy=lossy)
    (unit,) = units
    return unit


def problems_of(documents: list[dict[str, Any]], *, lossy: bool = False) -> list[str]:
    with pytest.raises(KubeImportError) as caught:
        import_manifests(documents, "test.yaml", lossy=lossy)
    return [str(p) for p in caught.value.problems]


def pod(**container: Any) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "app"},
            "spec": {"containers": [{"name": "app", "image": "busybox:1.36", **container}]},
        }
    ]


def assert_loads_back(imported: ImportedUnit) -> None:
    """The unit file written validates, as `quayctl validate` would, to the same unit."""
    unit, _ = load_unit(SourceFile(Path(f"{imported.name}.toml"), imported.text))
    assert unit == imported.unit


@pytest.mark.parametrize(
    "name", ["nginx-deployment.yaml", "probes-resources-pod.yaml", "fluentd-daemonset.yaml"]
)
def test_the_documentation_examples_are_valid_kubernetes(name: str) -> None:
    for document in manifest(name):
        kubernetes_validate.validate(copy.deepcopy(document), "1.37", strict=True)


def test_nginx_deployment() -> None:
    assert problems_of(manifest("nginx-deployment.yaml")) == [
        "spec.replicas: 3 replicas: a unit is one container"
    ]
    imported = import_one(manifest("nginx-deployment.yaml"), lossy=True)
    assert imported.name == "nginx-deployment"
    assert imported.unit.container.image == "nginx:1.14.2"
    assert imported.unit.container.labels == {"app": "nginx"}
    assert imported.unit.container.stop_timeout.total_seconds() == 30  # Kubernetes' default
    assert imported.unit.network.ports == []
    warnings = [str(w) for w in imported.warnings]
    assert "spec.replicas: 3 replicas: a unit is one container: not imported" in warnings
    assert any(
        w.startswith(
            "spec.template.spec.containers[0].ports[0]: containerPort 80 is information only"
        )
        for w in warnings
    )
    assert "# warning: spec.replicas: 3 replicas" in imported.text
    assert_loads_back(imported)


def test_pod_with_probes_and_resources() -> None:
    assert problems_of(manifest("probes-resources-pod.yaml")) == [
        "spec.containers[0].resources.requests.memory: a memory request other than the limit: "
        "quay schedules nothing",
        "spec.containers[0].resources.requests.cpu: a CPU request is for scheduling; the CPU "
        "weight it implies has no exact resources.cpu_weight",
    ]
    unit = import_one(manifest("probes-resources-pod.yaml"), lossy=True).unit
    assert unit.container.command is None
    assert unit.container.args == [
        "/bin/sh",
        "-c",
        "touch /tmp/healthy; mkdir -p /tmp/www; echo hello > /tmp/www/index.html; "
        "exec httpd -f -p 8080 -h /tmp/www",
    ]
    assert (unit.ready.mode, unit.ready.port) == ("tcp", 8080)
    assert unit.health.command == ["cat", "/tmp/healthy"]
    assert unit.health.on_unhealthy == "restart"
    assert [unit.health.interval, unit.health.timeout, unit.health.start_period] == [
        timedelta(seconds=s) for s in (5, 1, 5)
    ]
    assert unit.health.retries == 3
    assert (unit.resources.memory, unit.resources.cpus) == (200 * 2**20, 1.0)
    assert [str(p) for p in unit.network.ports] == ["8080:8080"]


def test_fluentd_daemonset() -> None:
    assert problems_of(manifest("fluentd-daemonset.yaml")) == [
        "spec.template.spec.containers[0].resources.requests.cpu: a CPU request is for "
        "scheduling; the CPU weight it implies has no exact resources.cpu_weight",
        "spec.template.spec.tolerations: no quay equivalent",
    ]
    imported = import_one(manifest("fluentd-daemonset.yaml"), lossy=True)
    unit = imported.unit
    assert imported.name == "fluentd-elasticsearch"
    assert unit.container.image == "quay.io/fluentd_elasticsearch/fluentd:v2.5.2"
    assert [(m.type, m.source, m.target) for m in unit.mounts] == [("bind", "/var/log", "/var/log")]
    assert unit.resources.memory == 200 * 2**20
    assert "metadata.namespace: a namespace has no meaning on one host" in [
        str(w) for w in imported.warnings
    ]
    assert_loads_back(imported)


def test_an_http_probe_is_named_by_its_path() -> None:
    documents = pod(livenessProbe={"httpGet": {"path": "/healthz", "port": 8080}})
    assert problems_of(documents) == [
        "spec.containers[0].livenessProbe.httpGet: quay checks with a command (health) or a TCP "
        "connection (ready)"
    ]
    unit = import_one(documents, lossy=True).unit
    assert unit.health.command is None


def test_unknown_fields_anywhere_are_named() -> None:
    documents = pod(stdin=True, securityContext={"privileged": True})
    documents[0]["spec"]["initContainers"] = [{"name": "wait", "image": "busybox"}]
    assert problems_of(documents) == [
        "spec.initContainers[0]: quay runs one container per unit, no init steps",
        "spec.containers[0].securityContext.privileged: no quay equivalent",
        "spec.containers[0].stdin: no quay equivalent",
    ]


def test_one_container_per_unit() -> None:
    documents = pod()
    documents[0]["spec"]["containers"].append({"name": "sidecar", "image": "busybox"})
    assert problems_of(documents) == [
        "spec.containers: 2 containers: a unit is one container; split the pod"
    ]


def test_a_wrong_type_is_an_error_even_when_lossy() -> None:
    assert problems_of(pod(ports=[{"containerPort": "80", "hostPort": 8080}]), lossy=True) == [
        "spec.containers[0].ports[0].containerPort: '80' is not a whole number"
    ]


def test_an_invalid_unit_is_an_error_that_names_the_unit_key() -> None:
    (problem,) = problems_of(pod(workingDir="relative/dir"))
    assert problem.startswith("Pod app: gives an invalid unit: app.toml")
    assert "container.workdir" in problem


def test_other_kinds() -> None:
    documents = [*pod(), {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "app"}}]
    units, skipped = import_manifests(documents, "test.yaml")
    assert [u.name for u in units] == ["app"]
    assert [str(s) for s in skipped] == [
        "[1]kind: a Service, not imported: quay publishes with network.ports and names units on "
        "its bridge"
    ]
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "x"}}
    assert problems_of([job]) == [
        "kind: batch/v1/Job is not a Pod, Deployment or DaemonSet (v1, apps/v1)"
    ]


def test_named_ports_env_from_and_volumes() -> None:
    documents = pod(
        ports=[{"name": "http", "containerPort": 80, "hostPort": 8080, "hostIP": "127.0.0.1"}],
        readinessProbe={"tcpSocket": {"port": "http"}},
        envFrom=[{"configMapRef": {"name": "app-config"}}],
        env=[{"name": "A", "value": "1"}],
        volumeMounts=[
            {"name": "scratch", "mountPath": "/scratch"},
            {"name": "cache", "mountPath": "/cache", "readOnly": True},
        ],
        imagePullPolicy="Always",
    )
    documents[0]["spec"]["volumes"] = [
        {"name": "scratch", "emptyDir": {}},
        {"name": "cache", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
    ]
    assert problems_of(documents) == [
        "spec.volumes[0].emptyDir: a disk-backed emptyDir: quay has tmpfs (memory) or volumes "
        "(kept)"
    ]
    imported = import_one(documents, lossy=True)
    unit = imported.unit
    assert (unit.ready.mode, unit.ready.port) == ("tcp", 80)
    assert [str(p) for p in unit.network.ports] == ["127.0.0.1:8080:80"]
    assert unit.container.env == {"A": "1"}
    assert unit.container.env_files == ["/etc/quay/env/app-config.env"]
    assert any(
        "app-config -> env file /etc/quay/env/app-config.env" in str(w) for w in imported.warnings
    )
    assert [(m.type, m.target, m.read_only, m.size) for m in unit.mounts] == [
        ("tmpfs", "/scratch", False, None),
        ("tmpfs", "/cache", True, 64 * 2**20),
    ]
    assert unit.image.pull == "always"


def test_pull_policy_defaults_follow_kubernetes() -> None:
    assert import_one(pod()).unit.image.pull == "missing"
    latest = pod()
    latest[0]["spec"]["containers"][0]["image"] = "busybox"
    assert import_one(latest).unit.image.pull == "always"


def test_yaml_errors() -> None:
    with pytest.raises(ManifestSyntaxError, match=r"x\.yaml: not YAML"):
        load_documents("a: [", "x.yaml")
    with pytest.raises(ManifestSyntaxError, match="document 2 is not a mapping"):
        load_documents("a: 1\n---\n- 2\n", "x.yaml")
    assert load_documents("---\n# only a comment\n---\na: 1\n", "x.yaml") == [{"a": 1}]


def test_quantities() -> None:
    assert parse_quantity("512Mi") == 512 * 2**20
    assert parse_quantity("1G") == 10**9
    assert parse_quantity("500m") == Decimal("0.5")
    assert parse_quantity(2) == 2
    assert parse_quantity("1e3") == 1000
    assert parse_quantity("1.5Gi") == 1.5 * 2**30
    for bad in ("lots", "1 Gi", True, None, "1Mb"):
        with pytest.raises(QuantityError):
            parse_quantity(bad)
    assert bytes_quantity(64 * 2**20) == "64Mi"
    assert bytes_quantity(2**30) == "1Gi"
    assert bytes_quantity(1000) == "1000"
    assert cpu_quantity(1.5) == "1500m"
    assert cpu_quantity(2.0) == "2"


def test_a_yaml_file_from_an_export_with_comments_loads() -> None:
    text = yaml.safe_dump({"apiVersion": "v1"}) + textwrap.dedent(
        """\
        # not mapped: restart.backoff = "2s": fixed
        """
    )
    assert load_documents(text, "x.yaml") == [{"apiVersion": "v1"}]
