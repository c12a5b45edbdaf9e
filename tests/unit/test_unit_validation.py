"""Each validation rule of a single unit file: the finding names the key, the line, the value, the
message and what is accepted."""

from __future__ import annotations

from datetime import timedelta

import pytest

from quayd.units.findings import Finding
from quayd.units.model import HEALTH_DEFAULTS
from tests.support.units import MINIMAL, findings_for, only_finding, unit_from


def case(
    text: str,
    key: str,
    line: int,
    message: str,
    accepted: str | None = None,
    *,
    id: str,
) -> object:
    return pytest.param(text, key, line, message, accepted, id=id)


CASES = [
    # --- unknown keys and tables ---
    case('[container]\nimagee = "x"\nimage = "a"\n', "container.imagee", 2,
         'did you mean "image"?', "image, command", id="unknown-key-suggests"),
    case(MINIMAL + '[contianer]\nimage = "x"\n', "contianer", 3,
         'did you mean "container"?', "container, restart", id="unknown-table-suggests"),
    case(MINIMAL + 'policy = "always"\n', "container.policy", 3,
         "did you mean it in [restart]?", None, id="key-in-wrong-table"),
    case(MINIMAL + "[resources]\nzzz = 1\n", "resources.zzz", 4, "unknown key",
         "memory, cpus", id="unknown-key-no-suggestion"),
    # --- required ---
    case("[container]\ncommand = []\n", "container.image", 1, "this key is required",
         "image reference", id="image-required"),
    case("[restart]\npolicy = \"no\"\n", "container", 0, "the [container] table is required",
         None, id="container-table-required"),
    # --- types ---
    case('[container]\nimage = 5\n', "container.image", 2, "wrong type: a whole number",
         None, id="image-wrong-type"),
    case(MINIMAL + 'read_only = "yes"\n', "container.read_only", 3, "wrong type: a string",
         "true or false", id="bool-wrong-type"),
    case(MINIMAL + "env = { PORT = 8080 }\n", "container.env.PORT", 3,
         'quote it: "8080"', "a string", id="env-number-quote-hint"),
    case(MINIMAL + 'command = "sh -c true"\n', "container.command", 3, "wrong type: a string",
         "an array of strings", id="command-not-list"),
    case('restart = "always"\n' + MINIMAL, "restart", 1, "expected a table, not a string",
         "policy, backoff", id="table-given-scalar"),
    case(MINIMAL + '[resources]\npids = 1.5\n', "resources.pids", 4, "wrong type",
         "whole number of processes", id="int-given-float"),
    # --- value syntax ---
    case(MINIMAL + '[resources]\nmemory = "lots"\n', "resources.memory", 4, "not a size",
         '"256M", "1G"', id="memory-lots"),
    case(MINIMAL + "[resources]\nmemory = -5\n", "resources.memory", 4,
         "a size cannot be negative", "bytes", id="memory-negative"),
    case(MINIMAL + '[resources]\nmemory = "-1G"\n', "resources.memory", 4,
         "a size cannot be negative", None, id="memory-negative-text"),
    case(MINIMAL + '[resources]\nmemory = "1K"\n', "resources.memory", 4,
         "too little memory", '"6M"', id="memory-too-small"),
    case(MINIMAL + "[resources]\ncpus = 0\n", "resources.cpus", 4, "greater than 0",
         "above 0", id="cpus-zero"),
    case(MINIMAL + "[resources]\ncpu_weight = 0\n", "resources.cpu_weight", 4,
         "greater than or equal to 1", "1 to 10000", id="cpu-weight-zero"),
    case(MINIMAL + '[restart]\nbackoff = "soon"\n', "restart.backoff", 4, "not a duration",
         '"1h30m"', id="duration-word"),
    case(MINIMAL + '[restart]\nbackoff = "-1s"\n', "restart.backoff", 4,
         "cannot be negative", None, id="duration-negative"),
    case(MINIMAL + '[restart]\npolicy = "sometimes"\n', "restart.policy", 4,
         "not one of the accepted values", '"no", "on-failure", "always"', id="policy-literal"),
    case(MINIMAL + 'stop_signal = "SIGFOO"\n', "container.stop_signal", 3, "not a signal name",
         "SIGTERM", id="bad-signal"),
    case(MINIMAL + 'cap_add = ["CAP_FLY"]\n', "container.cap_add[0]", 3,
         "not a Linux capability", "NET_ADMIN", id="bad-capability"),
    case(MINIMAL + '[network]\nports = ["70000:80"]\n', "network.ports[0]", 4,
         "port 70000 is outside 1-65535", "HOST:CONTAINER", id="port-too-big"),
    case(MINIMAL + '[network]\nports = ["80"]\n', "network.ports[0]", 4,
         "name the host port too", None, id="port-no-host"),
    case(MINIMAL + '[network]\nports = [\n  "8080:80",\n  "1:2/sctp",\n]\n',
         "network.ports[1]", 6, "unknown protocol", None, id="port-line-in-multiline-array"),
    case(MINIMAL + "[ready]\nmode = \"tcp\"\nport = 70000\n", "ready.port", 5,
         "less than or equal to 65535", "1 to 65535", id="ready-port-range"),
    case(MINIMAL + '[[mounts]]\ntype = "bind"\nsource = "/srv"\ntarget = "data"\n',
         "mounts[0].target", 6, "must be absolute", "absolute path", id="mount-relative-target"),
    case(MINIMAL + '[[mounts]]\ntype = "tmpfs"\ntarget = "/a/../etc"\n', "mounts[0].target", 5,
         "cannot contain '..'", None, id="mount-dotdot-target"),
    case('[container]\nimage = "Busybox"\n', "container.image", 2, "must be lowercase",
         "image reference", id="image-uppercase"),
    case(MINIMAL + 'hostname = "-bad-"\n', "container.hostname", 3, "not a valid hostname",
         "DNS name", id="bad-hostname"),
    case(MINIMAL + 'user = "root user"\n', "container.user", 3, "not a valid user",
         '"UID:GID"', id="bad-user"),
    case(MINIMAL + 'workdir = "app"\n', "container.workdir", 3, "must be absolute", None,
         id="relative-workdir"),
    case(MINIMAL + '[image]\nplatform = "arm64"\n', "image.platform", 4, "not a valid platform",
         '"linux/arm64/v8"', id="bad-platform"),
    case(MINIMAL + '[depends]\nrequires = ["Web"]\n', "depends.requires[0]", 4,
         "not a valid unit name", "lowercase", id="bad-required-name"),
    case(MINIMAL + '[container.env]\n"A=B" = "x"\n', 'container.env."A=B"', 4,
         "the key name is not a valid variable name", "without '='", id="bad-env-name"),
    # --- rules relating keys ---
    case(MINIMAL + '[ready]\nmode = "tcp"\n', "ready.mode", 4, "needs ready.port", "port =",
         id="tcp-needs-port"),
    case(MINIMAL + "[ready]\nport = 80\n", "ready.port", 4, 'only with mode = "tcp"', None,
         id="port-without-tcp"),
    case(MINIMAL + '[restart]\nbackoff = "10s"\nbackoff_max = "1s"\n', "restart.backoff_max",
         5, "shorter than backoff", "at least as long", id="backoff-max-short"),
    case(MINIMAL + "command = []\n", "container.command", 3, "would run nothing",
         "image's command", id="empty-command"),
    case(MINIMAL + 'cap_add = ["NET_ADMIN"]\ncap_drop = ["net_admin"]\n',
         "container.cap_add[0]", 3, "in both cap_add and cap_drop", None, id="cap-both"),
    case(MINIMAL + '[container.sysctls]\n"kernel.panic" = "1"\n',
         'container.sysctls."kernel.panic"', 4, "not namespaced", "net.*", id="sysctl-host"),
    case(MINIMAL + '[container.sysctls]\n"net.core.somaxconn" = 1024\n[network]\nmode = "host"\n',
         'container.sysctls."net.core.somaxconn"', 4, 'not with network.mode = "host"', None,
         id="sysctl-net-on-host-network"),
    case(MINIMAL + '[health]\ncommand = []\n', "health.command", 4, "checks nothing", None,
         id="empty-health-command"),
    case(MINIMAL + '[health]\ninterval = "0s"\n', "health.interval", 4, "longer than 0s", None,
         id="health-interval-zero"),
    case(MINIMAL + '[network]\nmode = "host"\nports = ["80:80"]\n', "network.ports", 5,
         'only with mode = "bridge"', None, id="ports-need-bridge"),
    case(MINIMAL + '[network]\nmode = "none"\naliases = ["x"]\n', "network.aliases", 5,
         "resolve only on the bridge", None, id="aliases-need-bridge"),
    case(MINIMAL + '[network]\nports = ["80:80", "0.0.0.0:80:81"]\n', "network.ports[1]", 4,
         "already published by ports[0]", None, id="same-host-port-twice"),
    case(MINIMAL + '[[mounts]]\ntype = "bind"\ntarget = "/data"\n', "mounts[0]", 3,
         'needs "source"', "absolute host path", id="bind-needs-source"),
    case(MINIMAL + '[[mounts]]\ntype = "bind"\nsource = "data"\ntarget = "/data"\n',
         "mounts[0].source", 5, "bind source: a path here must be absolute", "/srv/data",
         id="bind-relative-source"),
    case(MINIMAL + '[[mounts]]\ntype = "bind"\nsource = "/srv/../etc"\ntarget = "/data"\n',
         "mounts[0].source", 5, "cannot contain '..'", None, id="bind-dotdot-source"),
    case(MINIMAL + '[[mounts]]\ntype = "tmpfs"\ntarget = "/t"\nsize = 0\n',
         "mounts[0].size", 6, "size 0 would be unlimited", None, id="tmpfs-size-zero"),
    case(MINIMAL + '[[mounts]]\ntype = "volume"\nsource = "/srv"\ntarget = "/data"\n',
         "mounts[0].source", 5, "not a volume name", 'type = "bind"', id="volume-path"),
    case(MINIMAL + '[[mounts]]\ntype = "tmpfs"\nsource = "x"\ntarget = "/t"\n',
         "mounts[0].source", 5, "tmpfs mount has no source", None, id="tmpfs-source"),
    case(MINIMAL + '[[mounts]]\ntype = "volume"\nsource = "v"\ntarget = "/t"\nsize = "1M"\n',
         "mounts[0].size", 7, "only to tmpfs", None, id="size-not-tmpfs"),
    case(MINIMAL + '[[mounts]]\ntype = "tmpfs"\ntarget = "/t"\n'
         '[[mounts]]\ntype = "tmpfs"\ntarget = "/t/"\n',
         "mounts[1].target", 8, "mounts[0] already mounts /t", None, id="same-target-twice"),
    case(MINIMAL + '[[mounts]]\ntype = "tmpfs"\ntarget = "/"\n', "mounts[0].target", 5,
         "over the container's root", None, id="mount-root"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "key", "line", "message", "accepted"), CASES)
def test_a_bad_key_is_named_with_its_line_and_what_is_accepted(
    text: str, key: str, line: int, message: str, accepted: str | None
) -> None:
    finding = only_finding(text)
    assert finding.key == key
    assert (finding.line or 0) == line
    assert str(finding.file) == "web.toml"
    assert message in finding.message
    if accepted is not None:
        assert finding.accepted is not None
        assert accepted in finding.accepted
    assert str(finding).startswith(f"web.toml:{line}: " if line else "web.toml: ")


def test_the_printed_finding_has_file_line_key_value_and_accepted_form() -> None:
    finding = only_finding(MINIMAL + '[resources]\nmemory = "lots"\n')
    assert str(finding) == (
        'web.toml:4: resources.memory = "lots": not a size; accepted: a size such as '
        '"512K", "256M", "1G" or a whole number of bytes'
    )


def test_every_error_of_a_file_is_reported_at_once() -> None:
    findings = findings_for(
        """\
        [container]
        imagee = "x"
        image = "busybox"
        [resources]
        memory = "lots"
        [restart]
        policy = "sometimes"
        [ready]
        mode = "tcp"
        [[mounts]]
        type = "bind"
        source = "rel"
        target = "/data"
        """
    )
    # Shape errors in some tables do not hide the rule errors of the others (ready, mounts).
    assert [(f.key, f.line) for f in findings] == [
        ("container.imagee", 2),
        ("resources.memory", 5),
        ("restart.policy", 7),
        ("ready.mode", 9),
        ("mounts[0].source", 12),
    ]


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [
        pytest.param('[container]\nimage = "busybox\n', 2, 17, id="unterminated-string"),
        pytest.param("[container]\nimage = busybox\n", 2, 9, id="bare-word"),
        pytest.param('[container]\nimage = "a"\nimage = "b"\n', 3, 12, id="duplicate-key"),
        pytest.param("[container\n", 1, 11, id="unclosed-header"),
    ],
)
def test_toml_syntax_errors_name_file_line_and_column(text: str, line: int, column: int) -> None:
    finding = only_finding(text)
    assert finding.message.startswith("TOML syntax error: ")
    assert (finding.line, finding.column) == (line, column)
    assert str(finding).startswith(f"web.toml:{line}:{column}: TOML syntax error")


def test_an_empty_file_says_the_container_table_is_required() -> None:
    finding = only_finding("")
    assert finding.key == "container"
    assert finding.line is None
    assert "required" in finding.message


def test_defaults_are_filled_in() -> None:
    unit = unit_from(MINIMAL)
    assert unit.container.image == "busybox"
    assert str(unit.container.image_reference) == "docker.io/library/busybox:latest"
    assert unit.container.stop_timeout == timedelta(seconds=10)
    assert unit.container.stop_signal is None  # falls back to the image's, then SIGTERM
    assert unit.restart.policy == "always"
    assert (unit.restart.backoff, unit.restart.backoff_max, unit.restart.reset_after) == (
        timedelta(seconds=1),
        timedelta(minutes=5),
        timedelta(minutes=10),
    )
    assert unit.ready.mode == "started"
    assert unit.ready.timeout == timedelta(seconds=60)
    assert unit.health.command is None
    # Unset health timings take the image's HEALTHCHECK values, else Docker's defaults.
    health = unit.health
    assert (health.interval, health.timeout, health.retries, health.start_period) == (
        None,
        None,
        None,
        None,
    )
    assert {
        "interval": timedelta(seconds=30),
        "timeout": timedelta(seconds=30),
        "retries": 3,
        "start_period": timedelta(0),
    } == HEALTH_DEFAULTS
    assert unit.health.on_unhealthy == "none"
    assert unit.resources.memory is None
    assert unit.network.mode == "bridge"
    assert unit.mounts == []
    assert unit.depends.requires == []
    assert unit.image.pull == "missing"
    assert unit.image.platform is None


def test_a_full_unit_is_parsed_into_canonical_values() -> None:
    unit = unit_from(
        """\
        [container]
        image = "registry.example:5000/team/app:v2"
        command = ["/app", "--serve"]
        env = { A = "1" }
        stop_signal = "int"
        stop_timeout = "1m30s"
        cap_drop = ["all"]
        cap_add = ["net_bind_service"]
        sysctls = { "net.core.somaxconn" = 1024 }
        [resources]
        memory = "256M"
        cpus = 1.5
        [network]
        ports = ["127.0.0.1:53:53/udp", "8000-8001:9000-9001"]
        [[mounts]]
        type = "tmpfs"
        target = "/run"
        size = "1.5G"
        """
    )
    assert unit.container.stop_signal == "SIGINT"
    assert unit.container.stop_timeout == timedelta(seconds=90)
    assert unit.container.cap_drop == ["ALL"]
    assert unit.container.cap_add == ["CAP_NET_BIND_SERVICE"]
    assert unit.container.sysctls == {"net.core.somaxconn": "1024"}
    assert unit.resources.memory == 256 * 1024 * 1024
    assert unit.resources.cpus == 1.5
    mappings = [m for spec in unit.network.ports for m in spec.mappings]
    assert [(m.host_ip, m.host_port, m.container_port, m.protocol) for m in mappings] == [
        ("127.0.0.1", 53, 53, "udp"),
        (None, 8000, 9000, "tcp"),
        (None, 8001, 9001, "tcp"),
    ]
    assert unit.mounts[0].size == 1536 * 1024 * 1024


def test_units_are_immutable() -> None:
    unit = unit_from(MINIMAL)
    with pytest.raises(ValueError, match="frozen"):
        unit.container.image = "other"  # type: ignore[misc]


def _keys(findings: list[Finding]) -> list[str | None]:
    return [f.key for f in findings]


def test_a_value_of_the_wrong_toml_type_in_a_nested_array_is_reported_once() -> None:
    findings = findings_for(MINIMAL + "[network]\nports = [[1, 2]]\n")
    assert _keys(findings) == ["network.ports[0]"]
    assert "expected a string, not an array" in findings[0].message
