"""Units imported from Kubernetes manifests run in the test host, and export back.

The manifests are those of tests/data/kube (the Kubernetes documentation's nginx Deployment,
its probes and resources examples as a Pod, its fluentd DaemonSet), imported unchanged with
``quayctl import kube --lossy --into`` straight into the agent's config directory. The host
has no registry access, so each image is a stand-in loaded under the manifest's reference:
busybox, with a Cmd that does the image's job in miniature (nginx: httpd on port 80; fluentd:
a process that keeps reading the bound /var/log).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import kubernetes_validate
import pytest

from quayd.images.model import Platform
from quayd.kube.yamltext import load_documents
from tests.support.agent import HOSTS, RUN_DIR, Deployment, deployed, wait_until
from tests.support.images import Layer, OciLayout, busybox_entries, directory, file
from tests.support.systemd_host import CONTAINER_TEST_MARKS, REPO

pytestmark = [*CONTAINER_TEST_MARKS, pytest.mark.e2e]

DATA = REPO / "tests" / "data" / "kube"
STAND_INS = {
    # reference: (layout name, Cmd)
    "registry.k8s.io/busybox:1.27.2": ("k8s-busybox", ("/bin/sh",)),
    "nginx:1.14.2": (
        "nginx",
        ("busybox", "httpd", "-f", "-p", "80", "-h", "/usr/share/nginx/html"),
    ),
    "quay.io/fluentd_elasticsearch/fluentd:v2.5.2": (
        "fluentd",
        ("sh", "-c", "while :; do cat /var/log/kube-test.log >/dev/null; sleep 1; done"),
    ),
}
LOG_LINE = "a line for fluentd"


@pytest.fixture(scope="module", params=HOSTS)
def deployment(request: pytest.FixtureRequest, sd_notify: Path) -> Iterator[Deployment]:
    with deployed(sd_notify, {}, host=request.param) as deployment:
        page = file("usr/share/nginx/html/index.html", b"Welcome to nginx!\n")
        html = [directory(d) for d in ("usr/share", "usr/share/nginx", "usr/share/nginx/html")]
        for reference, (name, cmd) in STAND_INS.items():
            layout = OciLayout(deployment.host.staging / name)
            entries = busybox_entries() + ([*html, page] if name == "nginx" else [])
            descriptor, _ = layout.image([Layer.of(entries)], Platform.host(), cmd=cmd)
            layout.tag(descriptor, "latest")
            deployment.load(layout.root, reference)
        deployment.host.write_file("/var/log/kube-test.log", LOG_LINE + "\n")
        yield deployment
        deployment.host.delete("/var/log/kube-test.log")


def quayctl(deployment: Deployment, *args: str) -> tuple[int, str, str]:
    argv = [deployment.quayctl, "--config-dir", str(deployment.config_dir), "--run-dir", RUN_DIR]
    done = deployment.host.run([*argv, *args], check=False, timeout=90)
    return done.returncode, done.stdout, done.stderr


def imported(deployment: Deployment, manifest: str, name: str) -> None:
    """``manifest`` imported into the config directory as unit ``name``, which must start."""
    remote = str(deployment.host.scratch / manifest)
    deployment.host.write_file(remote, (DATA / manifest).read_text())
    code, _, err = quayctl(deployment, "import", "kube", remote)
    assert code == 1, err  # each has a key with no quay equivalent: named, nothing written
    assert not deployment.host.exists(deployment.path(name))
    into = str(deployment.config_dir)
    code, out, err = quayctl(deployment, "import", "kube", "--lossy", "--into", into, remote)
    assert code == 0, err
    assert out.strip() == deployment.path(name)
    code, _, err = quayctl(deployment, "wait", "--timeout", "60", name)
    assert code == 0, err


def test_the_probes_pod_runs_ready_healthy_and_published(deployment: Deployment) -> None:
    imported(deployment, "probes-resources-pod.yaml", "liveness-exec")
    assert deployment.http(8080) == "hello"  # the hostPort is published
    # The liveness probe became the health check: `cat /tmp/healthy` every 5 s.
    wait_until(
        "healthy", lambda: deployment.units()["liveness-exec"]["health"] == "healthy", timeout=60
    )


def test_the_nginx_deployment_serves_on_the_bridge(deployment: Deployment) -> None:
    imported(deployment, "nginx-deployment.yaml", "nginx-deployment")
    ip = deployment.units()["nginx-deployment"]["ip"]
    assert ip.startswith("10.89.0.")
    # containerPort 80 has no hostPort: reachable on the bridge, published nowhere.
    page = deployment.host.run(["busybox", "wget", "-q", "-O", "-", f"http://{ip}/"], check=False)
    assert page.stdout == "Welcome to nginx!\n"
    assert deployment.units()["nginx-deployment"]["ports"] == []


def test_the_fluentd_daemonset_reads_the_hosts_logs(deployment: Deployment) -> None:
    imported(deployment, "fluentd-daemonset.yaml", "fluentd-elasticsearch")
    done = deployment.api(
        "POST", "/v1/units/fluentd-elasticsearch/exec", {"argv": ["cat", "/var/log/kube-test.log"]}
    )
    assert done == {"code": 0, "stdout": LOG_LINE + "\n", "stderr": ""}


def test_a_running_unit_exports_pinned_and_valid(deployment: Deployment) -> None:
    if not deployment.host.exists(deployment.path("liveness-exec")):
        imported(deployment, "probes-resources-pod.yaml", "liveness-exec")
    code, out, err = quayctl(
        deployment,
        "--state-dir",
        str(deployment.state_dir),
        "export",
        "kube",
        "--digests",
        "liveness-exec",
    )
    assert code == 0, err
    (pod,) = load_documents(out, "export")
    kubernetes_validate.validate(copy.deepcopy(pod), "1.37", strict=True)
    container = pod["spec"]["containers"][0]
    assert container["image"].startswith("registry.k8s.io/busybox:1.27.2@sha256:")
    assert container["readinessProbe"] == {"tcpSocket": {"port": 8080}}
    assert container["livenessProbe"]["exec"] == {"command": ["cat", "/tmp/healthy"]}
    assert container["resources"]["limits"] == {"memory": "200Mi", "cpu": "1"}
