"""A unit as Kubernetes manifests: a Pod, a Deployment or a DaemonSet, and what it needs.

Every key of the unit either lands in a manifest, following :mod:`quayd.kube.table`, or is named
in a :class:`Note` (written as a trailing comment) with the reason it does not: nothing is
dropped silently. Keys left at their defaults need no note, since they ask for nothing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel

from quayd.kube.names import (
    UNIT_LABEL,
    headless_service,
    is_service_name,
    wait_container,
)
from quayd.kube.quantity import bytes_quantity, cpu_quantity, whole_seconds
from quayd.kube.table import why_not
from quayd.units.model import HEALTH_DEFAULTS, HealthTable, Unit

Kind = Literal["pod", "deployment", "daemonset"]
EnvFrom = Literal["configmap", "secret"]
VolumesAs = Literal["pvc", "hostpath"]
KINDS: tuple[Kind, ...] = ("pod", "deployment", "daemonset")

ENV_FILES_ANNOTATION = "quay/env-files"
"""The env files' host paths (a JSON list, in envFrom's order), so import can give them back."""
PVC_SIZE = "1Gi"

_SUBDOMAIN = re.compile(r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*")
_LABEL = re.compile(r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?")
_LABEL_NAME = re.compile(r"[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?")
_RESTART = {"always": "Always", "on-failure": "OnFailure", "no": "Never"}
_PULL = {"missing": "IfNotPresent", "always": "Always"}
_NUMERIC_USER = re.compile(r"(\d+)(?::(\d+))?")
_UNMAPPED_RESOURCES = (
    "cpu_weight",
    "pids",
    "io_weight",
    "device_read_bps",
    "device_write_bps",
    "device_read_iops",
    "device_write_iops",
)


class KubeExportError(Exception):
    """A unit that cannot become the manifest asked for; the message says what to change."""


@dataclass(frozen=True)
class Note:
    """A trailing comment: a key that is not mapped (and why), or how a key was mapped."""

    key: str
    text: str
    mapped: bool = True

    def __str__(self) -> str:
        return f"{self.key}: {self.text}" if self.mapped else f"not mapped: {self.key} {self.text}"


@dataclass(frozen=True)
class ExportOptions:
    kind: Kind = "pod"
    service: bool = False
    env_from: EnvFrom = "configmap"
    volumes: VolumesAs = "pvc"
    volumes_dir: str = "/var/lib/quay/volumes"
    """Where the agent keeps named volumes (``STATE_DIR/volumes``), for ``volumes = "hostpath"``."""


@dataclass
class Exported:
    documents: list[dict[str, Any]] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)


def is_label_value(value: str) -> bool:
    return value == "" or (len(value) <= 63 and bool(_LABEL_NAME.fullmatch(value)))


def is_label_key(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _SUBDOMAIN.fullmatch(prefix)):
        return False
    return len(name) <= 63 and bool(_LABEL_NAME.fullmatch(name))


def object_name_problem(name: str) -> str | None:
    if len(name) <= 253 and _SUBDOMAIN.fullmatch(name):
        return None
    return (
        f"unit {name!r}: its name is not a Kubernetes object name (lowercase letters, digits, "
        "'-' and '.', starting and ending with a letter or digit): rename the unit"
    )


def export_unit(
    name: str, unit: Unit, options: ExportOptions = ExportOptions(), image: str | None = None
) -> Exported:
    """The manifests for unit ``name``; ``image`` replaces its reference (pinned by digest)."""
    problem = object_name_problem(name)
    if problem:
        raise KubeExportError(problem)
    out = Exported()
    pod = _PodBuilder(name, unit, options, out)
    spec, meta = pod.build(image or unit.container.image)
    restart = spec["restartPolicy"]
    if options.kind == "pod":
        out.documents.insert(
            0, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, **meta}, "spec": spec}
        )
    else:
        if restart != "Always":
            raise KubeExportError(
                f"unit {name!r}: restart.policy = {unit.restart.policy!r}: a {options.kind} "
                'restarts its pods always; export it with --kind pod, or set policy = "always"'
            )
        workload: dict[str, Any] = {
            "selector": {"matchLabels": {UNIT_LABEL: name}},
            "template": {"metadata": meta, "spec": spec},
        }
        if options.kind == "deployment":
            workload = {"replicas": 1, **workload}
        kind = "Deployment" if options.kind == "deployment" else "DaemonSet"
        out.documents.insert(
            0,
            {
                "apiVersion": "apps/v1",
                "kind": kind,
                "metadata": {"name": name, "labels": {UNIT_LABEL: name}},
                "spec": workload,
            },
        )
    if options.service:
        if not is_service_name(name):
            raise KubeExportError(
                f"unit {name!r}: a Service name is one DNS label starting with a letter "
                "(lowercase letters, digits and '-'): export without --service, or rename the unit"
            )
        out.documents.append(headless_service(name, name, unit))
        for alias in unit.network.aliases:
            if is_service_name(alias):
                out.documents.append(headless_service(alias, name, unit))
            else:
                reason = f"{alias!r} is not a Service name (one lowercase DNS label)"
                out.notes.append(Note("network.aliases", f"= {alias!r}: {reason}", mapped=False))
    return out


def _value_text(table: BaseModel, key: str) -> str:
    return json.dumps(table.model_dump(mode="json")[key], ensure_ascii=False)


def _differs(table: BaseModel, key: str) -> bool:
    default = type(table).model_fields[key].get_default(call_default_factory=True)
    return bool(getattr(table, key) != default)


class _PodBuilder:
    def __init__(self, name: str, unit: Unit, options: ExportOptions, out: Exported) -> None:
        self.name = name
        self.unit = unit
        self.options = options
        self.out = out

    def note(self, table: BaseModel, section: str, key: str, reason: str | None = None) -> None:
        text = f"= {_value_text(table, key)}: {reason or why_not(f'{section}.{key}')}"
        self.out.notes.append(Note(f"{section}.{key}", text, mapped=False))

    def unmapped_defaults(self, table: BaseModel, section: str, keys: tuple[str, ...]) -> None:
        for key in keys:
            if _differs(table, key):
                self.note(table, section, key)

    def build(self, image: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """The pod's spec and metadata."""
        unit, c = self.unit, self.unit.container
        meta: dict[str, Any] = {"labels": self.labels()}
        if c.env_files:
            meta["annotations"] = {ENV_FILES_ANNOTATION: json.dumps(list(c.env_files))}
        container = self.container(image)
        spec: dict[str, Any] = {"restartPolicy": _RESTART[unit.restart.policy]}
        if c.stop_signal is not None:
            spec["os"] = {"name": "linux"}
        spec["terminationGracePeriodSeconds"] = whole_seconds(c.stop_timeout)
        if c.hostname is not None:
            if _LABEL.fullmatch(c.hostname):
                spec["hostname"] = c.hostname
            else:
                self.note(c, "container", "hostname", "a pod's hostname is one DNS label")
        self.pod_network(spec)
        if c.sysctls:
            spec["securityContext"] = {
                "sysctls": [{"name": k, "value": v} for k, v in c.sysctls.items()]
            }
        if unit.image.platform is not None:
            os_name, arch, *variant = unit.image.platform.split("/")
            spec["nodeSelector"] = {"kubernetes.io/os": os_name, "kubernetes.io/arch": arch}
            if variant:
                self.note(unit.image, "image", "platform", "the variant has no node label")
        volumes, mounts = self.volumes()
        if mounts:
            container["volumeMounts"] = mounts
            spec["volumes"] = volumes
        spec["containers"] = [container]
        self.unmapped_defaults(unit.container, "container", ("init", "user_namespaces"))
        self.unmapped_defaults(unit.restart, "restart", ("backoff", "backoff_max", "reset_after"))
        self.unmapped_defaults(unit.resources, "resources", _UNMAPPED_RESOURCES)
        self.unmapped_defaults(unit.update, "update", ("policy", "strategy", "rollback"))
        if self.options.service:
            self.wait_for_required(spec)
        else:
            self.unmapped_defaults(unit.network, "network", ("aliases",))
            self.unmapped_defaults(unit.depends, "depends", ("requires",))
        return spec, meta

    def wait_for_required(self, spec: dict[str, Any]) -> None:
        waits = []
        for required in self.unit.depends.requires:
            if is_service_name(required):
                waits.append(wait_container(required))
            else:
                reason = f"{required!r} is not a Service name to wait for (one DNS label)"
                text = f"= {required!r}: {reason}"
                self.out.notes.append(Note("depends.requires", text, mapped=False))
        if waits:
            spec["initContainers"] = waits
            self.out.notes.append(
                Note(
                    "depends.requires",
                    "init containers wait until each required unit's Service name resolves "
                    "(export those units with --service too)",
                )
            )

    def container(self, image: str) -> dict[str, Any]:
        c = self.unit.container
        container: dict[str, Any] = {"name": self.name.replace(".", "-")[:63], "image": image}
        if c.command is not None:
            container["command"] = list(c.command)
        if c.args is not None:
            container["args"] = list(c.args)
        if c.workdir is not None:
            container["workingDir"] = c.workdir
        if c.env:
            container["env"] = [{"name": k, "value": v} for k, v in c.env.items()]
        if c.env_files:
            container["envFrom"] = self.env_from()
        optional = {
            "ports": self.ports(),
            "resources": self.resources(),
            **self.readiness(),
            **self.liveness(),
            "securityContext": self.container_security(),
        }
        container.update({k: v for k, v in optional.items() if v})
        container["imagePullPolicy"] = _PULL[self.unit.image.pull]
        if c.stop_signal is not None:
            container["lifecycle"] = {"stopSignal": c.stop_signal}
        return container

    def labels(self) -> dict[str, str]:
        labels = {}
        for key, value in self.unit.container.labels.items():
            if key == UNIT_LABEL or not (is_label_key(key) and is_label_value(value)):
                reason = "not a valid Kubernetes label (key or value)"
                text = f"= {json.dumps({key: value})}: {reason}"
                self.out.notes.append(Note("container.labels", text, mapped=False))
                continue
            labels[key] = value
        labels[UNIT_LABEL] = self.name
        return labels

    def env_from(self) -> list[dict[str, Any]]:
        refs = []
        ref_kind = "secretRef" if self.options.env_from == "secret" else "configMapRef"
        make = "secret generic" if self.options.env_from == "secret" else "configmap"
        for index, path in enumerate(self.unit.container.env_files, start=1):
            ref = f"{self.name}-env" if index == 1 else f"{self.name}-env-{index}"
            refs.append({ref_kind: {"name": ref}})
            self.out.notes.append(
                Note(
                    "container.env_files",
                    f"{path} -> {ref_kind} {ref}: create it with "
                    f"kubectl create {make} {ref} --from-env-file={path}",
                )
            )
        return refs

    def ports(self) -> list[dict[str, Any]]:
        entries = []
        for spec in self.unit.network.ports:
            for mapping in spec.mappings:
                entry: dict[str, Any] = {
                    "containerPort": mapping.container_port,
                    "hostPort": mapping.host_port,
                    "protocol": mapping.protocol.upper(),
                }
                if mapping.host_ip is not None:
                    entry["hostIP"] = mapping.host_ip
                entries.append(entry)
        return entries

    def resources(self) -> dict[str, Any]:
        r = self.unit.resources
        limits: dict[str, Any] = {}
        requests: dict[str, Any] = {}
        if r.memory is not None:
            limits["memory"] = requests["memory"] = bytes_quantity(r.memory)
        if r.cpus is not None:
            limits["cpu"] = cpu_quantity(r.cpus)
        out: dict[str, Any] = {}
        if limits:
            out["limits"] = limits
        if requests:
            out["requests"] = requests
        return out

    def readiness(self) -> dict[str, Any]:
        ready, health = self.unit.ready, self.unit.health
        probes: dict[str, Any] = {}
        check: dict[str, Any] | None = None
        if ready.mode == "tcp":
            check = {"tcpSocket": {"port": ready.port}}
            probes["readinessProbe"] = dict(check)
        elif ready.mode == "healthy" and health.command is not None:
            check = {"exec": {"command": list(health.command)}}
            probes["readinessProbe"] = {**check, **probe_timing(health)}
        elif ready.mode == "healthy":
            reason = "the image's HEALTHCHECK: Kubernetes ignores it; set health.command"
            self.note(ready, "ready", "mode", reason)
        elif ready.mode == "notify":
            self.note(ready, "ready", "mode", "Kubernetes has no notify socket; use tcp or healthy")
        if check is None:
            if _differs(ready, "timeout"):
                self.note(ready, "ready", "timeout", "there is no readiness check to time")
            return probes
        startup = {**check, "periodSeconds": 1, "failureThreshold": whole_seconds(ready.timeout)}
        if "exec" in check:
            startup["timeoutSeconds"] = probe_timing(health)["timeoutSeconds"]
        startup["failureThreshold"] = max(1, startup["failureThreshold"])
        probes["startupProbe"] = startup
        return probes

    def liveness(self) -> dict[str, Any]:
        ready, health = self.unit.ready, self.unit.health
        if health.on_unhealthy == "restart" and health.command is not None:
            check = {"exec": {"command": list(health.command)}}
            return {"livenessProbe": {**check, **probe_timing(health)}}
        if health.on_unhealthy == "restart":
            reason = "the image's HEALTHCHECK: Kubernetes ignores it; set health.command"
            self.note(health, "health", "on_unhealthy", reason)
        elif ready.mode != "healthy" or health.command is None:
            for key in ("command", "interval", "timeout", "retries", "start_period"):
                if getattr(health, key) is not None:
                    self.note(health, "health", key, why_not("health.on_unhealthy"))
        return {}

    def volumes(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        volumes: list[dict[str, Any]] = []
        mounts: list[dict[str, Any]] = []
        for index, mount in enumerate(self.unit.mounts):
            volume_name = f"mount-{index}"
            source: dict[str, Any]
            if mount.type == "volume" and self.options.volumes == "hostpath":
                path = f"{self.options.volumes_dir.rstrip('/')}/{mount.source}"
                source = {"hostPath": {"path": path, "type": "DirectoryOrCreate"}}
                self.out.notes.append(
                    Note(
                        f"mounts[{index}]",
                        f"volume {mount.source} -> hostPath {path}, the agent's own copy on "
                        "this host: ties the pod to the node that has it (imported back, a bind)",
                    )
                )
            elif mount.type == "volume":
                claim = mount.source or ""
                if object_name_problem(claim):
                    raise KubeExportError(
                        f"unit {self.name!r}: mounts[{index}].source = {claim!r}: a claim name "
                        "must be lowercase letters, digits, '-' and '.': rename the volume, or "
                        "use --volumes hostpath"
                    )
                source = {"persistentVolumeClaim": {"claimName": claim}}
                self.out.documents.append(_claim(claim))
                self.out.notes.append(
                    Note(
                        f"mounts[{index}]",
                        f"volume {claim} -> PersistentVolumeClaim {claim} "
                        f"({PVC_SIZE}, ReadWriteOnce: adjust to the data)",
                    )
                )
            elif mount.type == "bind":
                source = {"hostPath": {"path": mount.source}}
                self.out.notes.append(
                    Note(
                        f"mounts[{index}]",
                        f"bind {mount.source} -> hostPath: ties the pod to "
                        "a node that has the path",
                    )
                )
            else:
                empty: dict[str, Any] = {"medium": "Memory"}
                if mount.size is not None:
                    empty["sizeLimit"] = bytes_quantity(mount.size)
                source = {"emptyDir": empty}
            volumes.append({"name": volume_name, **source})
            entry: dict[str, Any] = {"name": volume_name, "mountPath": mount.target}
            if mount.read_only:
                entry["readOnly"] = True
            mounts.append(entry)
        return volumes, mounts

    def container_security(self) -> dict[str, Any]:
        c = self.unit.container
        security: dict[str, Any] = {}
        if c.user is not None:
            numeric = _NUMERIC_USER.fullmatch(c.user)
            if numeric:
                security["runAsUser"] = int(numeric[1])
                if numeric[2] is not None:
                    security["runAsGroup"] = int(numeric[2])
            else:
                self.note(c, "container", "user", "Kubernetes takes numeric IDs only")
        if c.read_only:
            security["readOnlyRootFilesystem"] = True
        capabilities: dict[str, Any] = {}
        if c.cap_add:
            capabilities["add"] = [cap.removeprefix("CAP_") for cap in c.cap_add]
        if c.cap_drop:
            capabilities["drop"] = [cap.removeprefix("CAP_") for cap in c.cap_drop]
        if capabilities:
            security["capabilities"] = capabilities
        return security

    def pod_network(self, spec: dict[str, Any]) -> None:
        network = self.unit.network
        if network.mode == "host":
            spec["hostNetwork"] = True
        elif network.mode == "none":
            self.note(network, "network", "mode", "every pod has a network")


def probe_timing(health: HealthTable) -> dict[str, int]:
    """The health check's timing, in whole seconds, unset keys at Docker's defaults."""

    def value(key: str) -> Any:
        given = getattr(health, key)
        return HEALTH_DEFAULTS[key] if given is None else given

    return {
        "periodSeconds": max(1, whole_seconds(value("interval"))),
        "timeoutSeconds": max(1, whole_seconds(value("timeout"))),
        "failureThreshold": int(value("retries")),
        "initialDelaySeconds": whole_seconds(value("start_period")),
    }


def _claim(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": PVC_SIZE}},
        },
    }
