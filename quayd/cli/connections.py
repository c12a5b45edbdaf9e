"""Named connections, as podman's ``system connection`` and docker's contexts:
``quayctl connection add|ls|rm|default``, kept in ``$XDG_CONFIG_HOME/quay/connections.toml``
(``~/.config/quay/connections.toml`` without it)::

    default = "prod"

    [connections.prod]
    url = "ssh://root@prod1.example.net"

    [connections.lab]
    url = "ssh://ops@10.0.0.7:2222/run/quay/quayd.sock"
    quayctl = "/opt/quay/bin/quayctl"

The file is read with tomllib and written atomically with tomli-w (a temporary file renamed over
it), mode 0600 (it says which hosts this user reaches). ``--host NAME`` takes a name; with no
``--host`` nor ``QUAY_HOST``, the default connection is used (``--host local``: this host).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from quayd.cli.remote import LOCAL, HostError, SshTarget, parse_url

FILE_NAME = "connections.toml"
EXIT_OK = 0
EXIT_FAILED = 1
_NAME_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


class ConnectionsError(Exception):
    """The connections file cannot be read or written, or a change to it cannot be made."""


class Connection(NamedTuple):
    name: str
    url: str
    quayctl: str | None = None


class Connections(NamedTuple):
    connections: dict[str, Connection]
    default: str | None = None


def config_file(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME/quay/connections.toml``, else ``~/.config/quay/connections.toml``."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_CONFIG_HOME") or ""
    if not os.path.isabs(base):  # the XDG spec: a relative value is to be ignored
        base = os.path.join(env.get("HOME") or os.path.expanduser("~"), ".config")
    return Path(base) / "quay" / FILE_NAME


def load(path: Path) -> Connections:
    """The file's connections (none when it does not exist)."""
    import tomllib  # noqa: PLC0415

    try:
        with path.open("rb") as file:
            document = tomllib.load(file)
    except FileNotFoundError:
        return Connections({})
    except (OSError, ValueError) as error:
        raise ConnectionsError(f"{path}: cannot be read: {error}") from None
    return parse_document(path, document)


def parse_document(path: Path, document: Mapping[str, Any]) -> Connections:
    table = document.get("connections", {})
    if not isinstance(table, dict):
        raise ConnectionsError(f"{path}: connections is not a table")
    found = {}
    for name, entry in table.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("url"), str):
            raise ConnectionsError(f'{path}: connections.{name} has no url = "ssh://…"')
        quayctl = entry.get("quayctl")
        if quayctl is not None and not isinstance(quayctl, str):
            raise ConnectionsError(f"{path}: connections.{name}.quayctl is not a string")
        found[name] = Connection(name, entry["url"], quayctl)
    default = document.get("default")
    if default is not None and not isinstance(default, str):
        raise ConnectionsError(f"{path}: default is not a connection's name")
    return Connections(found, default)


def dump(connections: Connections) -> dict[str, Any]:
    document: dict[str, Any] = {}
    if connections.default is not None:
        document["default"] = connections.default
    table: dict[str, Any] = {}
    for name in sorted(connections.connections):
        entry = connections.connections[name]
        table[name] = {"url": entry.url}
        if entry.quayctl:
            table[name]["quayctl"] = entry.quayctl
    document["connections"] = table
    return document


def save(path: Path, connections: Connections) -> None:
    """Written whole to a temporary file beside it, then renamed over it (never half a file)."""
    import tomli_w  # noqa: PLC0415

    text = tomli_w.dumps(dump(connections))
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise ConnectionsError(f"{path}: cannot be written: {error.strerror}") from None


def check_name(name: str) -> None:
    if not name or not set(name) <= _NAME_CHARACTERS or name.startswith(("-", ".")):
        raise ConnectionsError(
            f"{name!r} is not a connection name: letters, digits, '-', '_' and '.', not first "
            "'-' or '.'"
        )
    if name == LOCAL:
        raise ConnectionsError(f"{LOCAL!r} is reserved: it names this host's own agent")


def target_of(connection: Connection) -> SshTarget:
    """The connection's URL as a target, with its far quayctl."""
    try:
        target = parse_url(connection.url)
    except HostError as error:
        raise ConnectionsError(f"connection {connection.name}: {error}") from None
    if not isinstance(target, SshTarget):
        raise ConnectionsError(f"connection {connection.name}: {connection.url} is not ssh://")
    return target._replace(quayctl=connection.quayctl)


# --- the commands --------------------------------------------------------------------------------


def add_connection_commands(commands: Any) -> None:
    from quayd.cli.control import add_parser  # noqa: PLC0415

    connection = add_parser(
        commands,
        "connection",
        "name the hosts quayctl reaches over ssh",
        "Keep named connections to other hosts' agents (ssh://[USER@]HOST[:PORT][/SOCKET]) in "
        "$XDG_CONFIG_HOME/quay/connections.toml (~/.config/quay/ without it). --host NAME "
        "uses one; the default one is used when neither --host nor QUAY_HOST is given. "
        "See docs/remote.md.",
        "quayctl connection add prod ssh://root@prod1.example.net",
        "quayctl connection add lab ssh://ops@lab:2222 --quayctl /opt/quay/bin/quayctl",
        "quayctl connection default prod",
        "quayctl --host lab status",
    )
    verbs = connection.add_subparsers(dest="verb", metavar="VERB", required=True)
    add = verbs.add_parser("add", help="add (or replace) a connection")
    add.add_argument("name", metavar="NAME")
    add.add_argument("url", metavar="URL", help="ssh://[USER@]HOST[:PORT][/path/to/quayd.sock]")
    add.add_argument(
        "--quayctl", metavar="PATH", help="quayctl on that host (default: quayctl on its PATH)"
    )
    add.add_argument("--default", action="store_true", help="make it the default connection")
    listing = verbs.add_parser("ls", help="list the connections")
    listing.add_argument("--json", action="store_true", help="print them as JSON")
    remove = verbs.add_parser("rm", help="remove a connection")
    remove.add_argument("name", metavar="NAME")
    default = verbs.add_parser("default", help="use NAME when no --host is given")
    default.add_argument("name", metavar="NAME", help=f"a connection, or {LOCAL!r} for none")
    connection.set_defaults(handler=cmd_connection)


def cmd_connection(args: argparse.Namespace) -> int:
    path = config_file()
    try:
        current = load(path)
        changed, message = _apply(args, current)
        if changed is not None:
            save(path, changed)
    except ConnectionsError as error:
        print(f"quayctl connection {args.verb}: {error}", file=sys.stderr)
        return EXIT_FAILED
    if message:
        sys.stdout.write(message)
    return EXIT_OK


def _apply(args: argparse.Namespace, current: Connections) -> tuple[Connections | None, str]:
    """The file as the command leaves it (None: unchanged) and what to print."""
    table = dict(current.connections)
    if args.verb == "ls":
        return None, format_list(current, json_output=args.json)
    if args.verb == "add":
        check_name(args.name)
        entry = Connection(args.name, args.url, args.quayctl)
        target_of(entry)  # a bad URL is refused before it is kept
        table[args.name] = entry
        default = args.name if args.default else current.default
        return Connections(table, default), ""
    if args.verb == "rm":
        if table.pop(args.name, None) is None:
            raise ConnectionsError(f"no connection {args.name!r} (quayctl connection ls)")
        default = None if current.default == args.name else current.default
        return Connections(table, default), ""
    if args.name == LOCAL:
        return Connections(table, None), ""
    if args.name not in table:
        raise ConnectionsError(f"no connection {args.name!r} (quayctl connection ls)")
    return Connections(table, args.name), ""


def format_list(current: Connections, *, json_output: bool = False) -> str:
    """``NAME URL DEFAULT`` rows (``*`` marks the default), or JSON."""
    entries = [current.connections[n] for n in sorted(current.connections)]
    if json_output:
        import json  # noqa: PLC0415

        listed = [
            {
                "name": e.name,
                "url": e.url,
                "quayctl": e.quayctl,
                "default": e.name == current.default,
            }
            for e in entries
        ]
        return json.dumps(listed, indent=2) + "\n"
    rows = [("NAME", "URL", "DEFAULT")]
    rows += [(e.name, e.url, "*" if e.name == current.default else "") for e in entries]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    lines = [f"{r[0].ljust(widths[0])}  {r[1].ljust(widths[1])}  {r[2]}".rstrip() for r in rows]
    return "\n".join(lines) + "\n"
