"""quayctl export kube / import kube: the commands around quayd.kube."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import kubernetes_validate
import pytest

from quayd.cli import quayctl
from quayd.kube.yamltext import load_documents
from quayd.units.directory import load_directory
from tests.support.units import write_tree

EXAMPLES = Path(__file__).parents[2] / "examples" / "etc-quay.d"
DATA = Path(__file__).parents[1] / "data" / "kube"


@pytest.fixture
def settings(tmp_path: Path) -> Path:
    """An empty settings file, so the machine's /etc/quay/quayd.toml never leaks into a test."""
    path = tmp_path / "quayd.toml"
    path.write_text("")
    return path


def run(capsys: pytest.CaptureFixture[str], settings: Path, *argv: str) -> tuple[int, str, str]:
    code = quayctl.main(["--config", str(settings), "--config-dir", str(EXAMPLES), *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_export_all_examples_validate(capsys: pytest.CaptureFixture[str], settings: Path) -> None:
    code, out, err = run(capsys, settings, "export", "kube", "--all", "--service")
    assert (code, err) == (0, "")
    documents = load_documents(out, "stdout")
    kinds = [(d["kind"], d["metadata"]["name"]) for d in documents]
    assert kinds == [
        ("Pod", "clock"),
        ("Service", "clock"),
        ("Pod", "job"),
        ("Service", "job"),
        ("Pod", "web"),
        ("PersistentVolumeClaim", "web-content"),
        ("Service", "web"),
        ("Service", "www"),
        ("Pod", "worker"),
        ("Service", "worker"),
    ]
    for document in documents:
        kubernetes_validate.validate(copy.deepcopy(document), "1.37", strict=True)
    assert f"# quayctl export kube: unit web ({EXAMPLES / 'web.toml'})" in out
    assert "# depends.requires: init containers wait until each required unit's Service" in out
    worker = EXAMPLES / "worker.toml"
    assert f"unit worker ({worker}, {EXAMPLES / 'worker.toml.d' / '10-debug.toml'})" in out


def test_export_needs_units(capsys: pytest.CaptureFixture[str], settings: Path) -> None:
    code, _, err = run(capsys, settings, "export", "kube")
    assert (code, err) == (2, "quayctl export kube: name units, or --all\n")


def test_export_refuses_what_the_kind_cannot_hold(
    capsys: pytest.CaptureFixture[str], settings: Path
) -> None:
    code, out, err = run(capsys, settings, "export", "kube", "--kind", "daemonset", "clock")
    assert (code, out) == (1, "")
    assert "restart.policy = 'on-failure': a daemonset restarts its pods always" in err


def test_export_an_unknown_or_invalid_unit(
    capsys: pytest.CaptureFixture[str], settings: Path, tmp_path: Path
) -> None:
    code, _, err = run(capsys, settings, "export", "kube", "nosuch")
    assert code == 1
    assert f"{EXAMPLES / 'nosuch.toml'}: there is no such unit file" in err
    bad = write_tree(tmp_path, {"bad.toml": '[container]\nimage = "busybox"\nread_only = 1\n'})
    code, _, err = run(capsys, settings, "export", "kube", str(bad / "bad.toml"))
    assert code == 1
    assert "container.read_only = 1: wrong type" in err


def test_export_pins_stored_images_by_digest(
    capsys: pytest.CaptureFixture[str], settings: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    code, out, err = run(
        capsys, settings, "--state-dir", str(state), "export", "kube", "--digests", "web"
    )
    assert (code, err) == (0, "")
    assert "# container.image: localhost/busybox:1.36 is not in the store: not pinned" in out
    assert not state.exists()  # looking made no store


def test_import_to_stdout_and_into_a_directory(
    capsys: pytest.CaptureFixture[str], settings: Path, tmp_path: Path
) -> None:
    nginx = str(DATA / "nginx-deployment.yaml")
    code, out, err = run(capsys, settings, "import", "kube", nginx)
    assert (code, out) == (1, "")
    assert f"{nginx}: spec.replicas: 3 replicas: a unit is one container\n" in err
    code, out, err = run(capsys, settings, "import", "kube", "--lossy", nginx)
    assert code == 0
    assert out.startswith("# nginx-deployment.toml: imported by quayctl import kube from ")
    assert f"{nginx}: warning: spec.replicas: 3 replicas: a unit is one container" in err
    into = tmp_path / "units"
    into.mkdir()
    files = [nginx, str(DATA / "fluentd-daemonset.yaml"), str(DATA / "probes-resources-pod.yaml")]
    code, out, _ = run(capsys, settings, "import", "kube", "--lossy", "--into", str(into), *files)
    assert code == 0
    names = ["nginx-deployment", "fluentd-elasticsearch", "liveness-exec"]
    assert out.splitlines() == [str(into / f"{n}.toml") for n in names]
    snapshot = load_directory(into)
    assert sorted(snapshot.units) == sorted(names)
    assert snapshot.valid
    # Never over a unit file that is there.
    code, out, err = run(capsys, settings, "import", "kube", "--lossy", "--into", str(into), nginx)
    assert (code, out) == (1, "")
    assert "exists: move it away first" in err


def test_export_then_import_gives_the_examples_mapped_keys(
    capsys: pytest.CaptureFixture[str], settings: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, exported, _ = run(capsys, settings, "export", "kube", "web")
    assert code == 0
    monkeypatch.setattr("sys.stdin", io.StringIO(exported))
    code, out, err = run(capsys, settings, "import", "kube", "-")
    assert code == 0
    assert err == (
        "<stdin>: [1]kind: a PersistentVolumeClaim, not imported: quay creates a volume the "
        "first time a unit mounts it\n"
    )
    assert 'ports = [\n    "8080:80",\n]' in out
    assert 'command = [\n    "wget",' in out


def test_import_reports_unreadable_and_bad_files(
    capsys: pytest.CaptureFixture[str], settings: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: [\n")
    code, _, err = run(capsys, settings, "import", "kube", str(broken), str(tmp_path / "none"))
    assert code == 1
    assert f"{broken}: not YAML" in err
    assert f"{tmp_path / 'none'}: cannot read the file" in err


def test_export_volumes_as_host_paths_under_the_state_dir(
    capsys: pytest.CaptureFixture[str], settings: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    code, out, err = run(
        capsys,
        settings,
        "--state-dir",
        str(state),
        "export",
        "kube",
        "--volumes",
        "hostpath",
        "web",
    )
    assert (code, err) == (0, "")
    (pod,) = load_documents(out, "stdout")
    assert pod["spec"]["volumes"][0]["hostPath"]["path"] == f"{state}/volumes/web-content"


def test_export_all_with_services_imports_back_with_names_and_requires(
    capsys: pytest.CaptureFixture[str],
    settings: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code, exported, _ = run(capsys, settings, "export", "kube", "--all", "--service")
    assert code == 0
    monkeypatch.setattr("sys.stdin", io.StringIO(exported))
    into = tmp_path / "units"
    into.mkdir()
    code, _, err = run(capsys, settings, "import", "kube", "--into", str(into), "-")
    assert code == 0, err
    snapshot = load_directory(into)
    assert snapshot.valid, snapshot.findings
    assert snapshot.units["web"].unit.network.aliases == ["www"]
    assert snapshot.units["worker"].unit.depends.requires == ["web"]
