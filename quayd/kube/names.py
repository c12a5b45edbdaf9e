"""How units find each other, in Kubernetes terms: headless Services and init containers.

On quay's bridge a unit answers to its name and its aliases, at its container's address, on
every port, once it runs; and a unit starts only once those it ``requires`` are ready. With
``--service``, export says the same with a headless Service per name (DNS answers with the
addresses of the ready pods the Service selects) and, per required unit, an init container
that waits until that unit's name resolves: the pattern of the Kubernetes documentation's
"Init Containers" page. Import reads both back.
"""

from __future__ import annotations

import re
from typing import Any

from quayd.units.model import Unit

UNIT_LABEL = "quay/unit"
"""The label Deployments, DaemonSets and Services select a unit's pods by; import drops it."""
WAIT_IMAGE = "busybox:1.28"
"""The documentation's image for the wait (later busybox nslookups ignore the search path)."""

_SERVICE_NAME = re.compile(r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?")


def is_service_name(name: str) -> bool:
    """A Service name is an RFC 1035 label: lowercase, a letter first, at most 63 characters."""
    return bool(_SERVICE_NAME.fullmatch(name))


def headless_service(service: str, unit_name: str, unit: Unit) -> dict[str, Any]:
    """Service ``service`` for the pods of ``unit_name``: a name, not a load balancer."""
    seen = []
    for published in unit.network.ports:
        for mapping in published.mappings:
            port = (mapping.container_port, mapping.protocol)
            if port not in seen:
                seen.append(port)
    spec: dict[str, Any] = {"clusterIP": "None", "selector": {UNIT_LABEL: unit_name}}
    if seen:  # information: a headless Service answers on every port
        spec["ports"] = [
            {"name": f"{proto}-{port}", "port": port, "protocol": proto.upper()}
            for port, proto in seen
        ]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": service, "labels": {UNIT_LABEL: unit_name}},
        "spec": spec,
    }


def wait_container(required: str) -> dict[str, Any]:
    """An init container that ends once ``required``'s Service name resolves (it is ready)."""
    return {
        "name": f"wait-{required}",
        "image": WAIT_IMAGE,
        "command": ["sh", "-c", _wait_script(required)],
    }


def _wait_script(required: str) -> str:
    namespace = "$(cat /var/run/secrets/kubernetes.io/serviceaccount/namespace)"
    return (
        f"until nslookup {required}.{namespace}.svc.cluster.local; "
        f"do echo waiting for {required}; sleep 2; done"
    )


def waited_for(container: Any) -> str | None:
    """The unit an init container written by :func:`wait_container` waits for, else None."""
    if not isinstance(container, dict):
        return None
    name = container.get("name")
    if not (isinstance(name, str) and name.startswith("wait-")):
        return None
    required = name.removeprefix("wait-")
    return required if container == wait_container(required) else None


def aliases_of(documents: list[dict[str, Any]]) -> dict[str, list[str]]:
    """The names headless Services give each unit (other than its own name), by unit."""
    aliases: dict[str, list[str]] = {}
    for document in documents:
        unit_name = _selected_unit(document)
        name = document.get("metadata", {}).get("name")
        if unit_name is not None and isinstance(name, str) and name != unit_name:
            aliases.setdefault(unit_name, []).append(name)
    return aliases


def _selected_unit(document: dict[str, Any]) -> str | None:
    """The unit a Service written by :func:`headless_service` selects, else None."""
    if (document.get("apiVersion"), document.get("kind")) != ("v1", "Service"):
        return None
    spec = document.get("spec")
    if not isinstance(spec, dict) or spec.get("clusterIP") != "None":
        return None
    selector = spec.get("selector")
    if not isinstance(selector, dict) or set(selector) != {UNIT_LABEL}:
        return None
    unit_name = selector[UNIT_LABEL]
    return unit_name if isinstance(unit_name, str) else None


def is_unit_service(document: dict[str, Any]) -> bool:
    return _selected_unit(document) is not None
