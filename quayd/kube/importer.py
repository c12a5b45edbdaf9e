"""Units from Kubernetes manifests: a Pod, or the pod template of a Deployment or DaemonSet.

The table of :mod:`quayd.kube.table` in reverse. Each manifest key is either mapped, or reported
by its YAML path (:mod:`quayd.kube.reader`): an error, or a warning with ``lossy``. The result
is a unit document checked by the unit loader, as a unit file would be.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from quayd.kube.names import UNIT_LABEL, aliases_of, is_unit_service
from quayd.kube.podspec import SERVER_FIELDS, PodReader
from quayd.kube.reader import Context, KubeImportError, Mapping, Problem
from quayd.units.fieldtypes import UNIT_NAME
from quayd.units.findings import QuayConfigError
from quayd.units.loader import SourceFile, load_unit
from quayd.units.model import Unit

_WORKLOADS = {("v1", "Pod"), ("apps/v1", "Deployment"), ("apps/v1", "DaemonSet")}
# Objects an export writes beside a pod (and that come with many manifests): quay has its own
# way for each, so they are named in a warning, not imported.
_BESIDE = {
    "Service": "quay publishes with network.ports and names units on its bridge",
    "PersistentVolumeClaim": "quay creates a volume the first time a unit mounts it",
    "ConfigMap": "quay reads env files on the host (container.env_files)",
    "Secret": "quay reads env files on the host (container.env_files)",
}


@dataclass
class ImportedUnit:
    name: str
    unit: Unit
    text: str
    """The unit file: TOML, headed by where it came from and what did not come along."""
    warnings: list[Problem] = field(default_factory=list)


def import_manifests(
    documents: list[dict[str, Any]], origin: str, *, lossy: bool = False
) -> tuple[list[ImportedUnit], list[Problem]]:
    """The units of ``documents`` (from file ``origin``), and the warnings about the others.

    Headless Services that select a unit's pods (as ``export --service`` writes them) give it
    its aliases.
    """
    aliases = aliases_of(documents)
    units = []
    skipped: list[Problem] = []
    for index, document in enumerate(documents):
        where = f"[{index}]" if len(documents) > 1 else ""
        kind, api = document.get("kind"), document.get("apiVersion")
        if (api, kind) in _WORKLOADS:
            name = document.get("metadata", {}).get("name")
            names = aliases.get(name, []) if isinstance(name, str) else []
            units.append(import_workload(document, origin, where, lossy=lossy, aliases=names))
        elif is_unit_service(document):
            continue  # a name of a unit: its own, or one of its aliases
        elif isinstance(kind, str) and kind in _BESIDE:
            skipped.append(Problem(f"{where}kind", f"a {kind}, not imported: {_BESIDE[kind]}"))
        else:
            problem = Problem(
                f"{where}kind",
                f"{api}/{kind} is not a Pod, Deployment or DaemonSet (v1, apps/v1)",
            )
            raise KubeImportError(origin, [problem])
    return units, skipped


def import_workload(
    document: dict[str, Any],
    origin: str,
    where: str = "",
    *,
    lossy: bool = False,
    aliases: list[str] | None = None,
) -> ImportedUnit:
    context = Context(origin=origin, lossy=lossy)
    top = Mapping(context, document, where.rstrip("."))
    kind = top.text("kind")
    top.skip("apiVersion", "status")
    meta = top.mapping("metadata") or Mapping(context, {}, top.at("metadata"))
    name = meta.text("name") or ""
    spec = top.mapping("spec") or Mapping(context, {}, top.at("spec"))
    if kind == "Pod":
        pod_meta, pod_spec = meta, spec
    else:
        _metadata(meta)
        pod_meta, pod_spec = _template(spec, kind or "")
    top.finish()
    if not UNIT_NAME.fullmatch(name):
        context.errors.append(
            Problem(
                meta.at("name"), f"{name!r} cannot be a unit name ([a-z0-9][a-z0-9_.-]{{0,62}})"
            )
        )
    builder = PodReader(context, name)
    builder.pod(pod_meta, pod_spec)
    if aliases:
        builder.table("network")["aliases"] = aliases
    if context.errors:
        raise KubeImportError(origin, context.errors)
    return _checked(builder.document, name, origin, f"{kind} {name}", context.warnings)


def _metadata(meta: Mapping) -> None:
    """A workload's own metadata: information about the object, not about its pods."""
    meta.skip(*SERVER_FIELDS)
    if meta.take("namespace") is not None:
        meta.context.note(meta.at("namespace"), "a namespace has no meaning on one host")
    labels = meta.string_map("labels")
    labels.pop(UNIT_LABEL, None)
    if labels:
        meta.context.note(meta.at("labels"), "the workload's own labels; the pod's are kept")
    annotations = meta.string_map("annotations")
    if annotations:
        meta.context.note(meta.at("annotations"), "annotations are not kept")
    meta.finish()


def _template(spec: Mapping, kind: str) -> tuple[Mapping, Mapping]:
    context = spec.context
    replicas = spec.integer("replicas")
    if kind == "Deployment" and replicas not in (None, 1):
        context.unmappable(spec.at("replicas"), f"{replicas} replicas: a unit is one container")
    spec.take("selector")  # selects the template's pods, which the unit is
    template = spec.mapping("template") or Mapping(context, {}, spec.at("template"))
    pod_meta = template.mapping("metadata") or Mapping(context, {}, template.at("metadata"))
    pod_spec = template.mapping("spec") or Mapping(context, {}, template.at("spec"))
    template.finish()
    spec.finish("rollout and scheduling settings: quay replaces the one container")
    return pod_meta, pod_spec


def _checked(
    document: dict[str, Any], name: str, origin: str, what: str, warnings: list[Problem]
) -> ImportedUnit:
    """The unit file, checked by the unit loader: a manifest that maps to an invalid unit fails.

    The file is written from the validated unit, in the model's order and without the keys
    that only repeat quay's defaults, so it reads as a hand-written one.
    """
    path = Path(f"{name}.toml")
    try:
        unit, _ = load_unit(SourceFile(path=path, text=tomli_w.dumps(document)))
    except QuayConfigError as error:
        raise KubeImportError(
            origin, [Problem(what, f"gives an invalid unit: {f}") for f in error.findings]
        ) from None
    header = f"# {path}: imported by quayctl import kube from {origin} ({what}).\n"
    header += "".join(f"# warning: {w}\n" for w in warnings)
    body = tomli_w.dumps(unit.model_dump(mode="json", exclude_defaults=True, exclude_none=True))
    return ImportedUnit(name=name, unit=unit, text=header + body, warnings=warnings)
