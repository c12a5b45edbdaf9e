"""The ``[update]`` unit keys and the ``[updates]`` agent settings: defaults, validation with
file/key/line, and the unit hash left alone by them."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from quayd.reconcile.records import unit_hash
from quayd.units.findings import QuayConfigError
from quayd.units.settings import Settings, load_settings
from tests.support.units import MINIMAL, only_finding, unit_from


def test_update_defaults_are_off_with_rollback() -> None:
    update = unit_from(MINIMAL).update
    assert (update.policy, update.strategy, update.rollback) == (
        "off",
        "download-then-replace",
        True,
    )


def test_every_strategy_is_accepted() -> None:
    for strategy in ("download-then-replace", "replace-then-download", "stop-then-download"):
        text = MINIMAL + f'[update]\npolicy = "registry"\nstrategy = "{strategy}"\n'
        assert unit_from(text).update.strategy == strategy


@pytest.mark.parametrize(
    ("text", "key", "line", "message"),
    [
        pytest.param('[update]\npolicy = "auto"\n', "update.policy", 4, "", id="policy"),
        pytest.param('[update]\nstrategy = "download"\n', "update.strategy", 4, "", id="strategy"),
        pytest.param('[update]\nrollback = "yes"\n', "update.rollback", 4, "", id="rollback"),
        pytest.param(
            "[update]\nroll_back = true\n", "update.roll_back", 4, "did you mean", id="typo"
        ),
    ],
)
def test_a_bad_update_key_is_named_with_its_line(
    text: str, key: str, line: int, message: str
) -> None:
    finding = only_finding(MINIMAL + text)
    assert (finding.key, finding.line) == (key, line)
    assert message in finding.message
    assert str(finding).startswith(f"web.toml:{line}: ")


def test_a_digest_pinned_image_cannot_follow_the_registry() -> None:
    text = '[container]\nimage = "app@sha256:' + "a" * 64 + '"\n[update]\npolicy = "registry"\n'
    finding = only_finding(text)
    assert (finding.key, finding.line) == ("update.policy", 4)
    assert "pinned by digest" in finding.message
    assert unit_from(text.replace('"registry"', '"local"')).update.policy == "local"


def test_the_update_table_leaves_the_unit_hash_alone() -> None:
    """An upgrade of quay (the table is new) or a change of policy replaces no container."""
    plain = unit_from(MINIMAL)
    updating = unit_from(MINIMAL + '[update]\npolicy = "registry"\nrollback = false\n')
    assert unit_hash(plain) == unit_hash(updating)
    assert unit_hash(plain, "sha256:1") != unit_hash(plain, "sha256:2")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "quayd.toml"
    path.write_text(text)
    return path


def test_update_settings_defaults_and_values(tmp_path: Path) -> None:
    defaults = Settings().updates
    assert (defaults.check_interval, defaults.jitter) == (timedelta(hours=1), timedelta(minutes=15))
    assert (defaults.window, defaults.bandwidth) == (None, None)
    path = write(
        tmp_path,
        '[updates]\ncheck_interval = "6h"\njitter = "30m"\nwindow = "2:00-04:30"\n'
        'bandwidth = "2M"\n',
    )
    updates = load_settings(path).updates
    assert updates.check_interval == timedelta(hours=6)
    assert updates.jitter == timedelta(minutes=30)
    assert updates.window == "02:00-04:30"
    assert updates.bandwidth == 2 << 20
    wrapping = write(tmp_path, '[updates]\nwindow = "23:30-01:00"\n')
    assert load_settings(wrapping).updates.window == "23:30-01:00"


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        pytest.param('window = "02:00"\n', "updates.window", "not a time range", id="no-end"),
        pytest.param('window = "24:00-01:00"\n', "updates.window", "not a time range", id="hour"),
        pytest.param('window = "02:60-03:00"\n', "updates.window", "not a time range", id="minute"),
        pytest.param('window = "03:00-03:00"\n', "updates.window", "empty", id="empty"),
        pytest.param('check_interval = "often"\n', "updates.check_interval", "", id="interval"),
        pytest.param('bandwidth = "1"\n', "updates.bandwidth", "", id="bandwidth"),
    ],
)
def test_bad_update_settings_name_the_key_and_line(
    tmp_path: Path, text: str, key: str, message: str
) -> None:
    path = write(tmp_path, "[updates]\n" + text)
    with pytest.raises(QuayConfigError) as caught:
        load_settings(path)
    (finding,) = caught.value.findings
    assert (finding.file, finding.key, finding.line) == (path, key, 2)
    assert message in finding.message
