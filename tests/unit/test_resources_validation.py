"""The I/O keys of [resources]: parsed to canonical values, each mistake reported with file, line,
key, value and the accepted form; rendered back to a spelling that validates the same."""

from __future__ import annotations

import pytest
import tomli_w

from tests.support.units import MINIMAL, only_finding, unit_from

IO = (
    MINIMAL
    + """\
[resources]
io_weight = 250
device_read_bps = { "/dev/vda" = "10M", "/dev/disk/by-id/virtio-data" = 1048576 }
device_write_iops = { "/dev/vda" = 100 }

[resources.device_write_bps]
"/dev/mapper/vg-data" = "1.5M"
"""
)


def test_io_keys_parse_to_numbers() -> None:
    limits = unit_from(IO).resources
    assert limits.io_weight == 250
    assert limits.device_read_bps == {"/dev/vda": 10 << 20, "/dev/disk/by-id/virtio-data": 1 << 20}
    assert limits.device_write_bps == {"/dev/mapper/vg-data": 3 << 19}
    assert limits.device_read_iops == {}
    assert limits.device_write_iops == {"/dev/vda": 100}


def test_io_keys_default_to_no_limit() -> None:
    limits = unit_from(MINIMAL).resources
    assert limits.io_weight is None
    assert limits.device_read_bps == limits.device_write_bps == {}
    assert limits.device_read_iops == limits.device_write_iops == {}


def test_rendered_io_keys_validate_to_the_same_unit() -> None:
    unit = unit_from(IO)
    # What quayctl render writes: the canonical spellings.
    rendered = tomli_w.dumps(unit.model_dump(mode="json", exclude_none=True))
    assert '"/dev/vda" = "10M"' in rendered
    assert '"/dev/mapper/vg-data" = "1536K"' in rendered
    assert unit_from(rendered) == unit


@pytest.mark.parametrize(
    ("text", "key", "line", "message", "accepted"),
    [
        pytest.param("io_weight = 0\n", "resources.io_weight", 4, "greater than or equal to 1",
                     "1 to 10000", id="io-weight-zero"),
        pytest.param("io_weight = 10001\n", "resources.io_weight", 4, "less than or equal to",
                     "1 to 10000", id="io-weight-too-big"),
        pytest.param('device_read_bps = { "/dev/vda" = "lots" }\n',
                     'resources.device_read_bps."/dev/vda"', 4, "not a size", '"256M"',
                     id="rate-not-a-size"),
        pytest.param('device_write_bps = { "/dev/vda" = 1 }\n',
                     'resources.device_write_bps."/dev/vda"', 4, "greater than or equal to 2",
                     "at least 2", id="rate-below-kernel-minimum"),
        pytest.param('device_read_iops = { "/dev/vda" = 1.5 }\n',
                     'resources.device_read_iops."/dev/vda"', 4, "wrong type",
                     "operations per second", id="iops-float"),
        pytest.param('device_write_iops = { "/dev/vda" = 4294967296 }\n',
                     'resources.device_write_iops."/dev/vda"', 4, "less than or equal to",
                     "operations per second", id="iops-above-kernel-maximum"),
        pytest.param('device_read_bps = { "/etc/passwd" = "1M" }\n',
                     'resources.device_read_bps."/etc/passwd"', 4,
                     "the key name is not a valid device path", '"/dev/sda"',
                     id="not-under-dev"),
        pytest.param('device_read_bps = { "/dev/../etc/x" = "1M" }\n',
                     'resources.device_read_bps."/dev/../etc/x"', 4,
                     "the key name is not a valid device path", None, id="dotdot"),
        pytest.param('device_read_bps = ["/dev/vda:1M"]\n', "resources.device_read_bps", 4,
                     "expected a table", None, id="docker-list-form"),
        pytest.param('device_read_bps = { "/dev/vda" = "1M" }\nio_weigth = 5\n',
                     "resources.io_weigth", 5, 'did you mean "io_weight"?', None,
                     id="misspelt-key"),
    ],
)  # fmt: skip
def test_io_key_findings(
    text: str, key: str, line: int, message: str, accepted: str | None
) -> None:
    finding = only_finding(MINIMAL + "[resources]\n" + text)
    assert finding.key == key
    assert finding.line == line
    assert str(finding.file) == "web.toml"
    assert message in finding.message
    if accepted is not None:
        assert finding.accepted is not None
        assert accepted in finding.accepted


def test_a_table_form_finding_points_at_the_entrys_own_line() -> None:
    text = MINIMAL + '[resources.device_read_iops]\n"/dev/vda" = 10\n"/dev/vdb" = 0\n'
    finding = only_finding(text)
    assert finding.key == 'resources.device_read_iops."/dev/vdb"'
    assert finding.line == 5
    assert str(finding).startswith('web.toml:5: resources.device_read_iops."/dev/vdb" = 0: ')
