"""The agent's image policy against a real registry, inside each test host.

A ``docker-registry`` runs inside the host (a transient systemd service on the host's own
127.0.0.1, which quayd there reaches), images are pushed to it with skopeo from inside the host,
and quayd — the packaged service — pulls them as a device would: ``pull = "always"`` takes a new
digest at the next (re)start, ``pull = "missing"`` keeps starting from the store with the
registry gone.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from quayd.images.model import Platform
from tests.support.agent import HOSTS, RUN_DIR, Deployment, deployed, running, wait_until
from tests.support.images import Entry, Layer, OciLayout, busybox_entries, file
from tests.support.systemd_host import CONTAINER_TEST_MARKS

pytestmark = [*CONTAINER_TEST_MARKS, pytest.mark.e2e]

REGISTRY = "127.0.0.1:5000"  # inside the host's network: nothing else listens there


class Registry:
    """Debian's docker-registry in the host, as ``systemd-run --unit quay-test-registry``."""

    UNIT = "quay-test-registry"

    def __init__(self, deployment: Deployment) -> None:
        self.host = deployment.host
        self.root = deployment.host.scratch / "registry"

    def start(self) -> None:
        config = self.root / "config.yml"
        self.host.write_file(
            str(config),
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
            f"    rootdirectory: {self.root / 'storage'}\n"
            f"http:\n  addr: {REGISTRY}\n  secret: {secrets.token_hex(8)}\n",
        )
        self.host.run(
            ["systemd-run", f"--unit={self.UNIT}", "--collect", "--quiet",
             "/usr/bin/docker-registry", "serve", str(config)]
        )  # fmt: skip
        wait_until("the registry", self._up)

    def _up(self) -> bool:
        probe = ["busybox", "wget", "-q", "-O", "/dev/null", f"http://{REGISTRY}/v2/"]
        return self.host.run(probe, check=False).returncode == 0

    def stop(self) -> None:
        self.host.systemctl("stop", self.UNIT)
        wait_until("the registry gone", lambda: not self._up())

    def push(self, repository: str, version: str, extra: Sequence[Entry] = ()) -> None:
        """An image whose /version says ``version`` (and ``extra`` entries), pushed as
        ``repository:latest``."""
        name = f"layout-{repository.replace('/', '-')}-{version}"
        layout = OciLayout(self.host.staging / name)
        entries = [*busybox_entries(), file("version", f"{version}\n".encode()), *extra]
        descriptor, _ = layout.image([Layer.of(entries)], Platform.host())
        layout.tag(descriptor, "latest")
        remote = self.root / name
        self.host.copy_in(layout.root, str(remote))
        self.host.run(
            [
                "skopeo",
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
                f"oci:{remote}:latest",
                f"docker://{REGISTRY}/{repository}:latest",
            ],
            env={"HOME": str(self.root)},
            timeout=120,
        )


@pytest.fixture(scope="module", params=HOSTS)
def deployment(request: pytest.FixtureRequest, sd_notify: Path) -> Iterator[Deployment]:
    with deployed(sd_notify, host=request.param) as deployment:
        yield deployment


@pytest.fixture(scope="module")
def registry(deployment: Deployment) -> Registry:
    registry = Registry(deployment)
    registry.start()
    return registry


def unit(repository: str, pull: str) -> str:
    return (
        f'[container]\nimage = "{REGISTRY}/{repository}:latest"\n'
        'command = ["sh", "-c", "trap \'exit 0\' TERM; while :; do sleep 0.2; done"]\n'
        f'[image]\npull = "{pull}"\n[restart]\nbackoff = "500ms"\n'
    )


def version_in(deployment: Deployment, name: str) -> str:
    done = deployment.host.run(
        ["crun", "--root", "/run/quay/crun", "exec", name, "cat", "/version"]
    )
    return done.stdout.strip()


def _events(deployment: Deployment, unit: str, kind: str) -> list[str]:
    """The messages of the agent's events of ``kind`` for ``unit``."""
    return [e["message"] for e in deployment.events() if e["unit"] == unit and e["kind"] == kind]


def test_pull_always_takes_the_new_digest_at_the_next_start(
    deployment: Deployment, registry: Registry
) -> None:
    registry.push("r/auto", "1")
    deployment.write("auto", unit("r/auto", "always"))
    first = running(deployment, "auto")
    assert version_in(deployment, "auto") == "1"

    pulling = _events(deployment, "auto", "pulling")
    assert any(" MB" in message for message in pulling), pulling

    registry.push("r/auto", "2")
    assert deployment.running_pid("auto") == first  # a running container is not replaced
    deployment.host.run(["kill", "-KILL", str(first)])
    wait_until(
        "auto restarted with version 2",
        lambda: (
            deployment.running_pid("auto") not in (None, first)
            and version_in(deployment, "auto") == "2"
        ),
    )


def test_quayctl_image_pull_goes_through_the_agent(
    deployment: Deployment, registry: Registry
) -> None:
    registry.push("r/manual", "1")
    reference = f"{REGISTRY}/r/manual:latest"

    def pull(*options: str) -> subprocess.CompletedProcess[str]:
        argv = [deployment.quayctl, "--run-dir", RUN_DIR, *options, "image", "pull", "-q"]
        argv.append(reference)
        return deployment.host.run(argv, check=False, timeout=120)

    done = pull("--state-dir", str(deployment.state_dir))
    assert done.returncode == 0, done.stderr
    pulled, digest, platform = done.stdout.split()
    assert (pulled, platform) == (reference, str(Platform.host()))
    assert digest.startswith("sha256:")
    assert f'"image": "{reference}"' in deployment.journal()  # the agent pulled it
    # ... into its store, where a unit finds it without asking the registry again.
    registry.stop()
    try:
        deployment.write("manual", unit("r/manual", "missing"))
        running(deployment, "manual")
        assert version_in(deployment, "manual") == "1"
        # Another store than the agent's: the agent refuses, the command pulls in-process
        # (and fails here, the registry being down, with the registry's error).
        other = deployment.host.scratch / "other-store"
        failed = pull("--state-dir", str(other))
        assert failed.returncode == 1
        assert "quayctl: pulling 127.0.0.1:5000/r/manual:latest:" in failed.stderr
        # Through the agent, a failed pull's message is the agent's and the exit is 1 too.
        failed = pull("--state-dir", str(deployment.state_dir))
        assert failed.returncode == 1
        assert failed.stderr.startswith(f"quayctl: pulling {reference}: "), failed.stderr
    finally:
        deployment.delete("manual")
        registry.start()
    # --local pulls in this process even with the agent running (and the same store).
    registry.push("r/local", "1")
    local = f"{REGISTRY}/r/local:latest"
    argv = [deployment.quayctl, "--run-dir", RUN_DIR, "--state-dir", str(deployment.state_dir)]
    done = deployment.host.run(
        [*argv, "image", "pull", "-q", "--local", local], check=False, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == local
    assert local not in deployment.journal()


def test_pull_missing_starts_from_the_store_with_the_registry_gone(
    deployment: Deployment, registry: Registry
) -> None:
    registry.push("r/pinned", "1")
    deployment.write("pinned", unit("r/pinned", "missing"))
    first = running(deployment, "pinned")
    registry.stop()
    deployment.host.run(["kill", "-KILL", str(first)])
    second = wait_until(
        "pinned back without a registry",
        lambda: (pid := deployment.running_pid("pinned")) and pid != first and pid,
    )
    assert version_in(deployment, "pinned") == "1"
    # And an agent restart while offline adopts it as it is.
    deployment.host.systemctl("restart", "quayd")
    assert wait_until("pinned adopted", lambda: deployment.running_pid("pinned")) == second
