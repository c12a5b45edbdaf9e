"""A pod (its metadata and spec) as a unit document: the mapping table read right to left.

Every key read is either mapped or reported through :class:`~quayd.kube.reader.Context` by its
YAML path. Kubernetes' defaults are written out where quay's differ (a 30 s grace period,
probe timing of 10 s, 1 s, 3).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from quayd.kube.export import ENV_FILES_ANNOTATION
from quayd.kube.names import UNIT_LABEL, waited_for
from quayd.kube.quantity import QuantityError, parse_quantity
from quayd.kube.reader import Context, Mapping, Problem
from quayd.units.reference import ImageReferenceError, parse_reference
from quayd.units.values import format_size

SERVER_FIELDS = ("uid", "resourceVersion", "generation", "creationTimestamp", "managedFields")
_RESTART = {"Always": "always", "OnFailure": "on-failure", "Never": "no"}
_PULL = {"IfNotPresent": "missing", "Always": "always"}
# Kubernetes' probe defaults, written out into the unit (quay's differ).
_PROBE_DEFAULTS = {
    "periodSeconds": 10,
    "timeoutSeconds": 1,
    "failureThreshold": 3,
    "initialDelaySeconds": 0,
}
DEFAULT_GRACE_SECONDS = 30
ENV_DIR = "/etc/quay/env"


@dataclass(frozen=True)
class _Probe:
    path: str
    check: tuple[str, Any]
    """("tcp", port) or ("exec", command)."""
    timing: dict[str, int]


class PodReader:
    """A pod's metadata and spec, read into a unit document (:attr:`document`)."""

    def __init__(self, context: Context, name: str) -> None:
        self.context = context
        self.name = name
        self.document: dict[str, Any] = {"container": {}}
        self.container: dict[str, Any] = self.document["container"]
        self.volumes: dict[str | None, Mapping] = {}
        self.port_names: dict[str, int] = {}
        self.pod_user: tuple[int | None, int | None] = (None, None)

    def table(self, name: str) -> dict[str, Any]:
        table: dict[str, Any] = self.document.setdefault(name, {})
        return table

    def pod(self, meta: Mapping, spec: Mapping) -> None:
        meta.skip(*SERVER_FIELDS, "name")
        if meta.take("namespace") is not None:
            self.context.note(meta.at("namespace"), "a namespace has no meaning on one host")
        labels = meta.string_map("labels")
        if labels.get(UNIT_LABEL) in (self.name, None):
            labels.pop(UNIT_LABEL, None)
        if labels:
            self.container["labels"] = labels
        annotations = meta.string_map("annotations")
        env_files_text = annotations.pop(ENV_FILES_ANNOTATION, None)
        if annotations:
            self.context.note(meta.at("annotations"), "annotations are not kept")
        meta.finish()
        containers = spec.mappings("containers")
        if len(containers) != 1:
            self.context.unmappable(
                spec.at("containers"),
                f"{len(containers)} containers: a unit is one container; split the pod",
            )
            return
        self.pod_spec(spec)
        self.container_spec(containers[0], env_files_text)
        spec.finish()

    def pod_spec(self, spec: Mapping) -> None:
        restart = spec.text("restartPolicy") or "Always"
        if restart in _RESTART:
            self.table("restart")["policy"] = _RESTART[restart]
        else:
            self.context.wrong(spec.at("restartPolicy"), restart, "Always, OnFailure or Never")
        grace = spec.integer("terminationGracePeriodSeconds")
        self.container["stop_timeout"] = f"{DEFAULT_GRACE_SECONDS if grace is None else grace}s"
        hostname = spec.text("hostname")
        if hostname is not None:
            self.container["hostname"] = hostname
        if spec.boolean("hostNetwork"):
            self.table("network")["mode"] = "host"
        dns = spec.text("dnsPolicy")
        if dns not in (None, "ClusterFirst", "ClusterFirstWithHostNet", "Default"):
            self.context.unmappable(spec.at("dnsPolicy"), f"{dns}: quay's bridge has its own DNS")
        if spec.text("schedulerName") not in (None, "default-scheduler"):
            self.context.unmappable(spec.at("schedulerName"), "quay does not schedule")
        self.pod_security(spec)
        self.platform(spec)
        self.init_containers(spec)
        self.volumes = {v.text("name"): v for v in spec.mappings("volumes")}

    def init_containers(self, spec: Mapping) -> None:
        """The waits ``export --service`` writes for required units; nothing else maps."""
        requires = []
        raw = spec.take("initContainers")
        for index, container in enumerate(raw if isinstance(raw, list) else []):
            required = waited_for(container)
            if required is None:
                path = f"{spec.at('initContainers')}[{index}]"
                self.context.unmappable(path, "quay runs one container per unit, no init steps")
            else:
                requires.append(required)
        if raw is not None and not isinstance(raw, list):
            self.context.wrong(spec.at("initContainers"), raw, "a list")
        if requires:
            self.table("depends")["requires"] = requires

    def pod_security(self, spec: Mapping) -> None:
        security = spec.mapping("securityContext")
        if security is None:
            return
        sysctls = {}
        for entry in security.mappings("sysctls"):
            key, value = entry.text("name"), entry.text("value")
            entry.finish()
            if key is not None and value is not None:
                sysctls[key] = value
        if sysctls:
            self.container["sysctls"] = sysctls
        self.pod_user = (security.integer("runAsUser"), security.integer("runAsGroup"))
        security.finish()

    def platform(self, spec: Mapping) -> None:
        os_entry = spec.mapping("os")
        os_name = "linux"
        if os_entry is not None:
            os_name = os_entry.text("name") or "linux"
            os_entry.finish()
            if os_name != "linux":
                self.context.unmappable(os_entry.at("name"), f"{os_name}: quay runs Linux")
        selector = spec.mapping("nodeSelector")
        if selector is None:
            return
        os_label = selector.text("kubernetes.io/os") or os_name
        arch = selector.text("kubernetes.io/arch")
        selector.finish("a node label: quay runs on this host")
        if arch is not None:
            self.table("image")["platform"] = f"{os_label}/{arch}"

    def container_spec(self, c: Mapping, env_files_text: str | None) -> None:
        c.skip("name")
        for key, default in (
            ("terminationMessagePath", "/dev/termination-log"),
            ("terminationMessagePolicy", "File"),
        ):
            if c.text(key) not in (None, default):
                self.context.unmappable(c.at(key), "quay keeps no termination message")
        image = c.text("image")
        if image is None:
            self.context.errors.append(Problem(c.at("image"), "required"))
            return
        self.container["image"] = image
        for key, unit_key in (("command", "command"), ("args", "args")):
            value = c.strings(key)
            if value is not None:
                self.container[unit_key] = value
        workdir = c.text("workingDir")
        if workdir is not None:
            self.container["workdir"] = workdir
        self.env(c, env_files_text)
        self.ports(c)
        self.resources(c)
        self.probes(c)
        self.security(c)
        self.mounts(c)
        self.pull(c, image)
        lifecycle = c.mapping("lifecycle")
        if lifecycle is not None:
            signal = lifecycle.text("stopSignal")
            if signal is not None:
                self.container["stop_signal"] = signal
            lifecycle.finish("a lifecycle hook: quay runs none")
        c.finish()

    def env(self, c: Mapping, env_files_text: str | None) -> None:
        env = {}
        for entry in c.mappings("env"):
            key, value = entry.text("name"), entry.text("value")
            if entry.has("valueFrom"):
                entry.take("valueFrom")
                self.context.unmappable(entry.at("valueFrom"), "quay sets only literal values")
            entry.finish()
            if key is not None:
                env[key] = value or ""
        if env:
            self.container["env"] = env
        refs = c.mappings("envFrom")
        known: list[str] = []
        if env_files_text is not None:
            try:
                known = json.loads(env_files_text)
            except ValueError:
                known = []
        files = []
        for index, ref in enumerate(refs):
            source = ref.mapping("configMapRef") or ref.mapping("secretRef")
            if ref.take("prefix") is not None:
                self.context.unmappable(ref.at("prefix"), "quay's env files have no prefix")
            ref.finish()
            if source is None:
                continue
            ref_name = source.text("name") or ""
            source.take("optional")
            source.finish()
            if index < len(known) and isinstance(known[index], str):
                files.append(known[index])
            else:
                path = f"{ENV_DIR}/{ref_name}.env"
                files.append(path)
                self.context.note(
                    ref.path, f"{ref_name} -> env file {path}: write it on the host from the object"
                )
        if files:
            self.container["env_files"] = files

    def ports(self, c: Mapping) -> None:
        ports = []
        for entry in c.mappings("ports"):
            container_port = entry.integer("containerPort")
            host_port = entry.integer("hostPort")
            host_ip = entry.text("hostIP")
            protocol = (entry.text("protocol") or "TCP").lower()
            port_name = entry.text("name")
            entry.finish()
            if container_port is None:
                continue
            if port_name is not None:
                self.port_names[port_name] = container_port
            if protocol not in ("tcp", "udp"):
                self.context.unmappable(entry.at("protocol"), f"{protocol}: quay has tcp and udp")
            elif host_port is None:
                self.context.note(
                    entry.path,
                    f"containerPort {container_port} is information only: no host port is "
                    "published (other units reach it by name on the bridge)",
                )
            elif self.document.get("network", {}).get("mode") == "host":
                self.context.note(entry.path, "hostNetwork: the container binds its ports itself")
            else:
                text = f"{host_port}:{container_port}"
                if host_ip is not None and host_ip not in ("0.0.0.0", "::"):
                    text = f"[{host_ip}]:{text}" if ":" in host_ip else f"{host_ip}:{text}"
                ports.append(text if protocol == "tcp" else f"{text}/udp")
        if ports:
            self.table("network")["ports"] = ports

    def quantity(self, m: Mapping, key: str) -> Decimal | None:
        value = m.take(key)
        if value is None:
            return None
        try:
            return parse_quantity(value)
        except QuantityError as error:
            self.context.errors.append(Problem(m.at(key), str(error)))
            return None

    def resources(self, c: Mapping) -> None:
        r = c.mapping("resources")
        if r is None:
            return
        limits = r.mapping("limits") or Mapping(self.context, {}, r.at("limits"))
        requests = r.mapping("requests") or Mapping(self.context, {}, r.at("requests"))
        memory, cpu = self.quantity(limits, "memory"), self.quantity(limits, "cpu")
        requested = self.quantity(requests, "memory")
        table = self.table("resources")
        if memory is not None:
            table["memory"] = format_size(int(memory))
        if cpu is not None:
            table["cpus"] = float(cpu)
        if requested is not None and requested != memory:
            self.context.unmappable(
                requests.at("memory"),
                "a memory request other than the limit: quay schedules nothing",
            )
        if requests.has("cpu"):
            requests.take("cpu")
            self.context.unmappable(
                requests.at("cpu"),
                "a CPU request is for scheduling; the CPU weight it implies has no exact "
                "resources.cpu_weight",
            )
        limits.finish()
        requests.finish()
        r.finish()
        if not table:
            del self.document["resources"]

    def probe(self, c: Mapping, key: str) -> _Probe | None:
        p = c.mapping(key)
        if p is None:
            return None
        check: tuple[str, Any] | None = None
        tcp, exec_ = p.mapping("tcpSocket"), p.mapping("exec")
        if tcp is not None:
            port: Any = tcp.take("port")
            if isinstance(port, str):
                port = self.port_names.get(port, port)
            if isinstance(port, int):
                check = ("tcp", port)
            else:
                self.context.wrong(tcp.at("port"), port, "a port number or a port's name")
            tcp.finish("quay connects to the container's own address")
        elif exec_ is not None:
            command = exec_.strings("command")
            exec_.finish()
            if command:
                check = ("exec", command)
        timing = {}
        for name, default in _PROBE_DEFAULTS.items():
            value = p.integer(name)
            timing[name] = default if value is None else value
        success = p.integer("successThreshold")
        if success not in (None, 1):
            self.context.unmappable(p.at("successThreshold"), "quay counts one success")
        p.finish("quay checks with a command (health) or a TCP connection (ready)")
        return None if check is None else _Probe(p.path, check, timing)

    def probes(self, c: Mapping) -> None:
        readiness = self.probe(c, "readinessProbe")
        liveness = self.probe(c, "livenessProbe")
        startup = self.probe(c, "startupProbe")
        ready: dict[str, Any] = {}
        health: dict[str, Any] = {}
        timing: _Probe | None = None
        if readiness is not None and readiness.check[0] == "tcp":
            ready = {"mode": "tcp", "port": readiness.check[1]}
            if readiness.timing != _PROBE_DEFAULTS:
                self.context.note(readiness.path, "quay's tcp readiness has no timing to set")
        elif readiness is not None:
            ready = {"mode": "healthy"}
            health = {"command": readiness.check[1]}
            timing = readiness
        if liveness is not None and liveness.check[0] == "exec":
            if health and health["command"] != liveness.check[1]:
                self.context.unmappable(
                    readiness.path if readiness else liveness.path,
                    "an exec readiness probe other than the liveness probe: quay's readiness "
                    "is the health command",
                )
            health = {"command": liveness.check[1], "on_unhealthy": "restart"}
            timing = liveness
        elif liveness is not None:
            self.context.unmappable(liveness.path, "quay's health check is a command")
        if timing is not None:
            health["interval"] = f"{timing.timing['periodSeconds']}s"
            health["timeout"] = f"{timing.timing['timeoutSeconds']}s"
            health["retries"] = timing.timing["failureThreshold"]
            health["start_period"] = f"{timing.timing['initialDelaySeconds']}s"
        if startup is not None:
            if readiness is not None and startup.check == readiness.check:
                seconds = startup.timing["periodSeconds"] * startup.timing["failureThreshold"]
                ready["timeout"] = f"{seconds}s"
            else:
                self.context.unmappable(
                    startup.path,
                    "a startup probe other than the readiness probe: quay times readiness only",
                )
        if ready:
            self.document["ready"] = ready
        if health:
            self.document["health"] = health

    def security(self, c: Mapping) -> None:
        s = c.mapping("securityContext")
        user, group = self.pod_user
        if s is not None:
            user = s.integer("runAsUser") if s.has("runAsUser") else user
            group = s.integer("runAsGroup") if s.has("runAsGroup") else group
            if s.boolean("readOnlyRootFilesystem"):
                self.container["read_only"] = True
            caps = s.mapping("capabilities")
            if caps is not None:
                for key, unit_key in (("add", "cap_add"), ("drop", "cap_drop")):
                    value = caps.strings(key)
                    if value:
                        self.container[unit_key] = value
                caps.finish()
            s.finish()
        if user is not None:
            self.container["user"] = str(user) if group is None else f"{user}:{group}"
        elif group is not None:
            self.context.unmappable(
                f"{c.path}.securityContext.runAsGroup", "a group without a user: set runAsUser"
            )

    def mounts(self, c: Mapping) -> None:
        mounts = []
        used = set()
        for entry in c.mappings("volumeMounts"):
            volume_name, target = entry.text("name"), entry.text("mountPath")
            read_only = entry.boolean("readOnly")
            entry.finish("quay mounts a whole volume at one path")
            volume = self.volumes.get(volume_name)
            if volume is None or target is None:
                self.context.errors.append(Problem(entry.path, f"no volume {volume_name!r}"))
                continue
            used.add(volume_name)
            mount = self.volume_mount(volume)
            if mount is None:
                continue
            mount["target"] = target
            if read_only:
                mount["read_only"] = True
            mounts.append(mount)
        for volume_name, volume in self.volumes.items():
            if volume_name not in used:
                volume.skip(*volume.data)
                self.context.note(volume.path, "a volume no container mounts")
        if mounts:
            self.document["mounts"] = mounts

    def volume_mount(self, volume: Mapping) -> dict[str, Any] | None:
        volume.skip("name")
        claim, host, empty = (
            volume.mapping(k) for k in ("persistentVolumeClaim", "hostPath", "emptyDir")
        )
        mount: dict[str, Any] | None = None
        if claim is not None:
            mount = {"type": "volume", "source": claim.text("claimName")}
            if claim.boolean("readOnly"):
                mount["read_only"] = True
            claim.finish()
        elif host is not None:
            mount = {"type": "bind", "source": host.text("path")}
            host.take("type")  # what the path must be; quay's bind takes it as it is
            host.finish()
        elif empty is not None:
            mount = {"type": "tmpfs"}
            if empty.text("medium") != "Memory":
                self.context.unmappable(
                    empty.path, "a disk-backed emptyDir: quay has tmpfs (memory) or volumes (kept)"
                )
                if not self.context.lossy:
                    mount = None
            size = self.quantity(empty, "sizeLimit")
            if mount is not None and size is not None:
                mount["size"] = format_size(int(size))
            empty.finish()
        volume.finish("a volume source quay does not have (it has volume, bind and tmpfs)")
        return mount

    def pull(self, c: Mapping, image: str) -> None:
        policy = c.text("imagePullPolicy")
        if policy is None:
            try:
                reference = parse_reference(image)
            except ImageReferenceError:
                return  # the unit's own check names the image
            latest = reference.digest is None and reference.tag in (None, "latest")
            policy = "Always" if latest else "IfNotPresent"
        if policy in _PULL:
            if _PULL[policy] != "missing":
                self.table("image")["pull"] = _PULL[policy]
        else:
            self.context.unmappable(
                c.at("imagePullPolicy"), f"{policy}: quay pulls what is missing"
            )
