"""The mapping table (quayd/kube/table.py) against the unit model, docs/units.md and export."""

from __future__ import annotations

import textwrap
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from quayd.kube.export import export_unit
from quayd.kube.table import BEGIN_MARKER, END_MARKER, ROWS, TABLE, markdown_table
from quayd.units.model import Unit
from tests.support.units import MINIMAL, unit_from

DOCS = Path(__file__).parents[2] / "docs" / "units.md"

# A non-default value for each key that has no Kubernetes equivalent (by default: some need an
# export option).
UNMAPPED_SAMPLES = {
    "container.init": "init = false\n",
    "container.user_namespaces": "user_namespaces = true\n",
    "restart.backoff": '[restart]\nbackoff = "2s"\n',
    "restart.backoff_max": '[restart]\nbackoff_max = "10m"\n',
    "restart.reset_after": '[restart]\nreset_after = "1h"\n',
    "resources.cpu_weight": "[resources]\ncpu_weight = 50\n",
    "resources.pids": "[resources]\npids = 64\n",
    "resources.io_weight": "[resources]\nio_weight = 50\n",
    "resources.device_read_bps": '[resources]\ndevice_read_bps = { "/dev/sda" = "10M" }\n',
    "resources.device_write_bps": '[resources]\ndevice_write_bps = { "/dev/sda" = "10M" }\n',
    "resources.device_read_iops": '[resources]\ndevice_read_iops = { "/dev/sda" = 100 }\n',
    "resources.device_write_iops": '[resources]\ndevice_write_iops = { "/dev/sda" = 100 }\n',
    "network.aliases": '[network]\naliases = ["www"]\n',
    "depends.requires": '[depends]\nrequires = ["db"]\n',
    "update.policy": '[update]\npolicy = "registry"\n',
    "update.strategy": '[update]\nstrategy = "stop-then-download"\n',
    "update.rollback": "[update]\nrollback = false\n",
}


def model_keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    keys = set()
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if typing.get_origin(annotation) is list:
            (annotation,) = typing.get_args(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys |= model_keys(annotation, f"{prefix}{name}.")
        else:
            keys.add(f"{prefix}{name}")
    return keys


def test_every_unit_key_has_one_row() -> None:
    keys = [row.key for row in TABLE]
    assert len(keys) == len(set(keys))
    assert set(keys) == model_keys(Unit)


def test_docs_show_the_table_generated_from_the_code() -> None:
    text = DOCS.read_text()
    begin, end = text.index(BEGIN_MARKER), text.index(END_MARKER)
    shown = text[begin + len(BEGIN_MARKER) : end].strip("\n") + "\n"
    assert shown == markdown_table(), "regenerate it: python -m quayd.kube.table"


def test_every_unmapped_row_has_a_sample() -> None:
    assert set(UNMAPPED_SAMPLES) == {row.key for row in TABLE if not row.mapped or row.only_with}


@pytest.mark.parametrize("key", sorted(UNMAPPED_SAMPLES))
def test_export_names_each_unmapped_key_with_the_tables_reason(key: str) -> None:
    unit = unit_from(MINIMAL + textwrap.dedent(UNMAPPED_SAMPLES[key]))
    exported = export_unit("web", unit)
    notes = [str(n) for n in exported.notes if n.key == key and not n.mapped]
    assert len(notes) == 1
    assert notes[0].startswith(f"not mapped: {key} = ")
    assert notes[0].endswith(ROWS[key].notes)


def test_a_unit_at_its_defaults_needs_no_note() -> None:
    assert export_unit("web", unit_from(MINIMAL)).notes == []
