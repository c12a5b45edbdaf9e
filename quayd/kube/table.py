"""The mapping between unit keys and Kubernetes fields: one row per key of the unit model.

docs/units.md ("Moving to Kubernetes") shows :func:`markdown_table` verbatim, and
tests/unit/test_kube_table.py holds both to the model: a key added to the unit format fails that
test until it has a row here. Export takes its "not mapped" reasons from these rows, so a comment
in an exported manifest and the documentation say the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    key: str
    kubernetes: str
    """The Kubernetes field, or "" where there is none."""
    notes: str
    only_with: str = ""
    """The export option without which the key is not mapped (and is named in a comment)."""

    @property
    def mapped(self) -> bool:
        return bool(self.kubernetes)


TABLE: tuple[Row, ...] = (
    Row(
        "container.image",
        "`containers[].image`",
        "Same reference syntax; `--digests` pins the digest of the stored image.",
    ),
    Row(
        "container.command",
        "`containers[].command`",
        "Same semantics: replaces Entrypoint, and the image's Cmd is dropped.",
    ),
    Row("container.args", "`containers[].args`", "Same semantics: replaces Cmd only."),
    Row("container.env", "`containers[].env`", "One `{name, value}` per variable."),
    Row(
        "container.env_files",
        "`containers[].envFrom[].configMapRef` (or `secretRef` with `--env-from secret`)",
        "One ConfigMap per file, named `UNIT-env` (`UNIT-env-2`, …); create it from the file "
        "(`kubectl create configmap web-env --from-env-file=/etc/quay/web.env`). The paths are "
        "kept in the annotation `quay/env-files` for import; without it, import reads "
        "`/etc/quay/env/NAME.env` and says so. As in quay, `env` wins over `envFrom`.",
    ),
    Row(
        "container.user",
        "`securityContext.runAsUser` / `runAsGroup`",
        "Numeric IDs only: Kubernetes does not look names up in the image; a name is not mapped.",
    ),
    Row("container.workdir", "`containers[].workingDir`", ""),
    Row(
        "container.hostname",
        "pod `spec.hostname`",
        "A single DNS label only; a dotted name is not mapped (Kubernetes' `subdomain` means a "
        "headless Service's domain, not the rest of the name).",
    ),
    Row("container.read_only", "`securityContext.readOnlyRootFilesystem`", ""),
    Row(
        "container.stop_signal",
        "`lifecycle.stopSignal`",
        "Kubernetes 1.33+ behind the feature gate `ContainerStopSignals`; needs `spec.os.name: "
        "linux`, which export sets.",
    ),
    Row(
        "container.stop_timeout",
        "pod `spec.terminationGracePeriodSeconds`",
        "Whole seconds, rounded up. Always written: Kubernetes' default is 30s, quay's 10s; "
        "import takes 30s when it is absent.",
    ),
    Row(
        "container.cap_add",
        "`securityContext.capabilities.add`",
        "Kubernetes names have no `CAP_` prefix: export drops it, import adds it.",
    ),
    Row("container.cap_drop", "`securityContext.capabilities.drop`", ""),
    Row(
        "container.sysctls",
        "pod `spec.securityContext.sysctls`",
        "Values as strings. Only a small safe set is allowed by default; others need the "
        "kubelet's `--allowed-unsafe-sysctls`.",
    ),
    Row(
        "container.labels",
        "`metadata.labels`",
        "Kubernetes limits label keys and values (63 characters, a restricted set); a label "
        "that is not a valid Kubernetes label is not mapped. Deployments and DaemonSets select "
        "their pods by `quay/unit: UNIT`, which import drops.",
    ),
    Row(
        "container.init",
        "",
        "Kubernetes starts no init in a container: the image brings its own (tini), or the pod "
        "shares one process namespace (`shareProcessNamespace`, the pause process as PID 1).",
    ),
    Row(
        "container.user_namespaces",
        "",
        "Kubernetes has no such switch: nested user namespaces follow the pod's seccomp profile "
        "(containerd's `RuntimeDefault`, Docker's profile, refuses them as quay does).",
    ),
    Row(
        "restart.policy",
        "pod `spec.restartPolicy`",
        "`always` → `Always`, `on-failure` → `OnFailure`, `no` → `Never`. Deployments and "
        "DaemonSets allow only `Always`: export refuses the others there.",
    ),
    Row(
        "restart.backoff",
        "",
        "The kubelet's crash-loop back-off is fixed: 10s doubling to 5m, reset after 10 minutes.",
    ),
    Row("restart.backoff_max", "", "Fixed by the kubelet at 5m (quay's default)."),
    Row("restart.reset_after", "", "Fixed by the kubelet at 10m (quay's default)."),
    Row(
        "ready.mode",
        "`readinessProbe`",
        "`tcp` → `tcpSocket`; `healthy` → `exec` with `health.command`; `started` → no probe. "
        "`notify` is not mapped: Kubernetes has no notify socket.",
    ),
    Row("ready.port", "`readinessProbe.tcpSocket.port`", ""),
    Row(
        "ready.timeout",
        "`startupProbe` (`failureThreshold` times `periodSeconds`)",
        "The readiness check with `periodSeconds: 1`, with `tcp` and `healthy` only. A "
        "Kubernetes readiness probe keeps running and gates Service traffic; quay's readiness "
        "is decided once per start and gates dependents.",
    ),
    Row(
        "health.command",
        "`livenessProbe.exec.command`",
        'With `on_unhealthy = "restart"` (with `"none"` only as the readiness probe of '
        '`ready.mode = "healthy"`). A missing command (the image\'s HEALTHCHECK) is not mapped: '
        "Kubernetes ignores HEALTHCHECK.",
    ),
    Row(
        "health.interval",
        "`periodSeconds`",
        "Whole seconds. Unset keys are written with Docker's defaults (30s, 30s, 3, 0s), and "
        "import writes out Kubernetes' (10s, 1s, 3, 0s).",
    ),
    Row("health.timeout", "`timeoutSeconds`", ""),
    Row("health.retries", "`failureThreshold`", ""),
    Row(
        "health.start_period",
        "`initialDelaySeconds`",
        "Approximate: Kubernetes does not run the probe in that time, quay runs it and does "
        "not count failures.",
    ),
    Row(
        "health.on_unhealthy",
        "`livenessProbe`",
        "`restart` → a `livenessProbe`. `none` (report only) is not mapped: Kubernetes has no "
        "report-only check.",
    ),
    Row(
        "resources.memory",
        "`resources.limits.memory` and `requests.memory`",
        "Both the same (the request is for scheduling); import refuses a different request.",
    ),
    Row(
        "resources.cpus",
        "`resources.limits.cpu`",
        "In millicores; a request is left to Kubernetes (the limit).",
    ),
    Row(
        "resources.cpu_weight",
        "",
        "Kubernetes derives the cgroup weight from `requests.cpu`; there is no exact weight.",
    ),
    Row("resources.pids", "", "Only node-wide: the kubelet's `podPidsLimit`."),
    Row("resources.io_weight", "", "Kubernetes sets no disk I/O weights on containers."),
    Row("resources.device_read_bps", "", "Kubernetes sets no disk I/O limits on containers."),
    Row("resources.device_write_bps", "", "Kubernetes sets no disk I/O limits on containers."),
    Row("resources.device_read_iops", "", "Kubernetes sets no disk I/O limits on containers."),
    Row("resources.device_write_iops", "", "Kubernetes sets no disk I/O limits on containers."),
    Row(
        "network.mode",
        "pod `spec.hostNetwork`",
        "`bridge` → the pod network, `host` → `hostNetwork: true`. `none` is not mapped: every "
        "pod has a network.",
    ),
    Row(
        "network.ports",
        "`ports[]`: `containerPort`, `hostPort`, `hostIP`, `protocol`",
        "One entry per port (a range comes back as single ports). `hostPort` ties the pod to a "
        "node; a load-balancing Service is the usual way to publish in a cluster. Import takes "
        "a `containerPort` without `hostPort` as information only (quay publishes nothing).",
    ),
    Row(
        "network.aliases",
        "a headless Service per alias",
        "A headless Service answers with the addresses of the ready pods it selects, on every "
        "port, as quay's bridge answers to a unit's names. An alias that is not a Service name "
        "(one lowercase DNS label) is not mapped. `hostAliases` is not equivalent: it only adds "
        "lines to the pod's own `/etc/hosts`.",
        only_with="--service",
    ),
    Row(
        "mounts.type",
        "`volumes[]`",
        "`volume` → `persistentVolumeClaim` (claim named after the volume; export adds the "
        "claim, 1Gi, ReadWriteOnce: adjust it), or with `--volumes hostpath` a `hostPath` of "
        "the agent's own copy, `STATE_DIR/volumes/NAME` (imported back as a `bind`); `bind` → "
        "`hostPath` (ties the pod to a node); `tmpfs` → `emptyDir` with `medium: Memory`.",
    ),
    Row("mounts.source", "`claimName` / `hostPath.path`", ""),
    Row("mounts.target", "`volumeMounts[].mountPath`", ""),
    Row("mounts.read_only", "`volumeMounts[].readOnly`", ""),
    Row("mounts.size", "`emptyDir.sizeLimit`", ""),
    Row(
        "depends.requires",
        "`initContainers` that wait",
        "Kubernetes does not order pods: an init container waits until the required unit's "
        "Service name resolves (a headless Service lists ready pods only), the pattern of the "
        "documentation's Init Containers page, with its `busybox:1.28`. Export the required "
        "units with `--service` too.",
        only_with="--service",
    ),
    Row(
        "image.pull",
        "`imagePullPolicy`",
        "`missing` → `IfNotPresent`, `always` → `Always`. Import of a manifest without it "
        "follows Kubernetes: `Always` for `:latest` and untagged images.",
    ),
    Row(
        "image.platform",
        "`nodeSelector`: `kubernetes.io/os`, `kubernetes.io/arch`",
        "Schedules on matching nodes instead of choosing an image variant; a variant (`v8`) is "
        "not mapped.",
    ),
    Row(
        "update.policy",
        "",
        "Kubernetes does not watch tags: a new image is a new Deployment revision (a CD tool, "
        "or Keel, changes the manifest).",
    ),
    Row(
        "update.strategy",
        "",
        "A Deployment's rollout `strategy` replaces pods, not downloads; the kubelet pulls "
        "before it starts.",
    ),
    Row(
        "update.rollback",
        "",
        "A Deployment stops a failing rollout (`progressDeadlineSeconds`) but never rolls "
        "back by itself.",
    ),
)

ROWS = {row.key: row for row in TABLE}

BEGIN_MARKER = "<!-- kube-table: generated from quayd/kube/table.py; do not edit by hand -->"
END_MARKER = "<!-- /kube-table -->"


def why_not(key: str) -> str:
    """The reason a key has no Kubernetes equivalent, for the comment export writes."""
    return ROWS[key].notes


def markdown_table() -> str:
    lines = ["| quay key | Kubernetes | Notes |", "|---|---|---|"]
    for row in TABLE:
        kubernetes = row.kubernetes or "none"
        if row.only_with:
            kubernetes = f"with `{row.only_with}`: {kubernetes}; else none"
        lines.append(f"| `{row.key}` | {kubernetes} | {row.notes} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(BEGIN_MARKER)
    print(markdown_table(), end="")
    print(END_MARKER)
