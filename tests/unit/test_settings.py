"""Agent settings: defaults, validation with file/key/line, and command-line overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from quayd.units.findings import QuayConfigError
from quayd.units.settings import Overrides, Settings, load_settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "quayd.toml"
    path.write_text(text)
    return path


def test_defaults() -> None:
    settings = Settings()
    assert (settings.config_dir, settings.state_dir, settings.run_dir) == (
        "/etc/quay.d",
        "/var/lib/quay",
        "/run/quay",
    )
    assert settings.runtime == "crun"
    assert settings.cgroup_driver == "auto"
    assert (settings.network.bridge, settings.network.subnet) == ("quay0", "10.89.0.0/24")
    assert settings.registries.plain_http == []


def test_a_full_settings_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
config_dir = "/srv/quay.d"
runtime = "/usr/local/bin/crun"
cgroup_driver = "cgroupfs"
[network]
bridge = "edge0"
subnet = "172.30.0.0/16"
subnet6 = "fd89::/64"
[registries]
auth_file = "/etc/quay/auth.json"
ca_files = ["/etc/quay/ca.pem"]
plain_http = ["registry.lan:5000"]
mirrors = { "docker.io" = ["https://mirror.lan", "mirror2.lan:5000"] }
""",
    )
    settings = load_settings(path)
    assert settings.config_dir == "/srv/quay.d"
    assert settings.runtime == "/usr/local/bin/crun"
    assert settings.network.subnet6 == "fd89::/64"
    assert settings.registries.mirrors == {"docker.io": ["https://mirror.lan", "mirror2.lan:5000"]}


def test_registry_hosts_are_normalised_like_references(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[registries]\nplain_http = ["index.docker.io", "[::1]:5000"]\n'
        '[registries.mirrors]\n"registry-1.docker.io" = ["http://mirror.lan:5000"]\n',
    )
    registries = load_settings(path).registries
    assert registries.plain_http == ["docker.io", "[::1]:5000"]
    assert registries.mirrors == {"docker.io": ["http://mirror.lan:5000"]}


@pytest.mark.parametrize(
    ("text", "key", "line", "message"),
    [
        pytest.param('runtime = "podman"\n', "runtime", 1, "not a known OCI runtime", id="runtime"),
        pytest.param('state_dir = "var/lib"\n', "state_dir", 1, "must be absolute", id="relative"),
        pytest.param(
            '[network]\nsubnet = "10.89.0.1/24"\n', "network.subnet", 2, "host bits set", id="cidr"
        ),
        pytest.param(
            '[network]\nsubnet = "10.0.0.0/31"\n', "network.subnet", 2, "too small", id="tiny"
        ),
        pytest.param(
            '[network]\nbridge = "a-very-long-bridge-name"\n',
            "network.bridge",
            2,
            "not an interface name",
            id="ifname",
        ),
        pytest.param(
            '[registries]\nplain_http = ["http://x/y"]\n',
            "registries.plain_http[0]",
            2,
            "not a registry host",
            id="plain-http-url",
        ),
        pytest.param(
            'cgroup_drivr = "systemd"\n',
            "cgroup_drivr",
            1,
            'did you mean "cgroup_driver"',
            id="typo",
        ),
        pytest.param(
            '[registries]\nplain_http = ["a:b:c"]\n',
            "registries.plain_http[0]",
            2,
            "not a registry host",
            id="many-colons",
        ),
        pytest.param(
            '[registries]\nplain_http = ["x:99999"]\n',
            "registries.plain_http[0]",
            2,
            "not a registry host",
            id="port-too-big",
        ),
        pytest.param(
            '[registries]\nplain_http = ["reg istry"]\n',
            "registries.plain_http[0]",
            2,
            "not a registry host",
            id="space",
        ),
        pytest.param(
            '[registries.mirrors]\n"docker.io" = ["ftp://m"]\n',
            'registries.mirrors."docker.io"[0]',
            2,
            "not a mirror host or URL",
            id="mirror",
        ),
    ],
)
def test_bad_settings_name_the_key_and_line(
    tmp_path: Path, text: str, key: str, line: int, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(QuayConfigError) as caught:
        load_settings(path)
    (finding,) = caught.value.findings
    assert (finding.file, finding.key, finding.line) == (path, key, line)
    assert message in finding.message


def test_an_explicit_settings_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(QuayConfigError, match="the settings file does not exist"):
        load_settings(tmp_path / "missing.toml")


def test_command_line_directories_override_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'config_dir = "/srv/a"\nstate_dir = "/srv/state"\n')
    settings = load_settings(
        path, Overrides(config_dir=tmp_path / "units", run_dir=Path("relative/run"))
    )
    assert settings.config_dir == str(tmp_path / "units")
    assert settings.state_dir == "/srv/state"
    assert settings.run_dir == str(Path.cwd() / "relative" / "run")


def test_image_settings(tmp_path: Path) -> None:
    defaults = Settings().images
    assert (defaults.min_free_disk, defaults.max_concurrent_downloads) == (512 * 1024 * 1024, 3)
    path = write(tmp_path, '[images]\nmin_free_disk = "2G"\nmax_concurrent_downloads = 6\n')
    images = load_settings(path).images
    assert (images.min_free_disk, images.max_concurrent_downloads) == (2 << 30, 6)
    bad = write(tmp_path, "[images]\nmax_concurrent_downloads = 0\n")
    with pytest.raises(QuayConfigError) as caught:
        load_settings(bad)
    (finding,) = caught.value.findings
    assert (finding.key, finding.line) == ("images.max_concurrent_downloads", 2)
    assert finding.accepted == "a whole number from 1 to 16"
