"""quayctl's commands that steer or watch the agent: show, logs, events, wait, start, stop,
restart, exec, rm and reload (``status``, ``ping`` and ``plan`` are in
:mod:`quayd.cli.quayctl`; ``exec -i/-t`` loads :mod:`quayd.cli.terminal`; ``run`` and ``attach``
are :mod:`quayd.cli.run`, with Docker's exit codes).

Lean like ``status``: the standard library, :mod:`quayd.cli.client` and :mod:`quayd.cli.status`
(the pure formatting), nothing heavier; ``logs`` loads :mod:`quayd.cli.logs` when it runs.

Exit codes: 0 success; 1 the agent refused (no such unit, a conflict, not allowed, the command
failed); 2 wrong usage; 4 the agent cannot be reached or cannot answer. ``wait``: 0 ready, 1 a
unit failed, 2 timed out, 4 unreachable or an unknown unit. ``exec``: the command's own status.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from quayd.cli.client import AgentError

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 4

CONTROL_COMMANDS = (
    "show",
    "logs",
    "events",
    "wait",
    "start",
    "stop",
    "restart",
    "exec",
    "run",
    "attach",
    "rm",
    "reload",
    "update",
)
_AGENT_FAULTS = frozenset({"not-implemented", "bad-reply", "timeout", "too-large"})


class HelpFormatter(argparse.HelpFormatter):
    """Wraps the description's paragraphs, but keeps indented lines (the examples) as they are."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        blocks = []
        for block in textwrap.dedent(text).strip().split("\n\n"):
            if block.startswith(" "):
                blocks.append("\n".join(indent + line for line in block.splitlines()))
            else:
                blocks.append(
                    textwrap.fill(
                        " ".join(block.split()),
                        width,
                        initial_indent=indent,
                        subsequent_indent=indent,
                    )
                )
        return "\n\n".join(blocks)


def examples(*lines: str) -> str:
    return "examples:\n\n" + "\n".join(f"  {line}" for line in lines)


def add_parser(commands: Any, name: str, help_: str, description: str, *lines: str) -> Any:
    return commands.add_parser(
        name,
        help=help_,
        description=description,
        epilog=examples(*lines),
        formatter_class=HelpFormatter,
    )


def add_control_commands(commands: Any) -> None:
    """Register the commands of this module (on the full parser and the lean one alike)."""
    add_update_command(commands)
    show = add_parser(
        commands,
        "show",
        "show one unit in detail",
        "Show one unit: its state, container (id, pid, scope), image and digest, address and "
        "ports, limits and current usage, health checks, recent exits, findings and its "
        "effective configuration. Exit status: 0; 1 no such unit; 4 the agent cannot be "
        "reached.",
        "quayctl show web",
        "quayctl show web --json | jq .usage",
    )
    show.add_argument("name", metavar="NAME")
    show.add_argument("--json", action="store_true", help="print the agent's answer as JSON")
    _timeout(show, 5.0)
    show.set_defaults(handler=cmd_show)

    logs = add_parser(
        commands,
        "logs",
        "print a unit's container output",
        "Print what the unit's containers wrote. Where journald runs, this is `journalctl -u "
        "quay-NAME.scope -o cat`; else the file STATE_DIR/logs/NAME.log (the agent not needed). "
        "Following goes on across container restarts and the agent's trimming of the file. "
        "--since needs journald (a log file has no times). Exit status: 0; 1 no log to read.",
        "quayctl logs web",
        "quayctl logs -f -n 20 web",
        "quayctl logs --since '10 min ago' web",
    )
    logs.add_argument("name", metavar="NAME")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new output")
    logs.add_argument(
        "-n",
        "--lines",
        type=int,
        metavar="N",
        help="only the last N lines (default all; 10 with -f)",
    )
    logs.add_argument("--since", metavar="TIME", help="journalctl's --since (journald only)")
    logs.add_argument(
        "--file", action="store_true", help="read the log file even where journald runs"
    )
    logs.set_defaults(handler=cmd_logs)

    events = add_parser(
        commands,
        "events",
        "print the agent's events",
        "Print the agent's recent events, one a line (time, unit, kind: message); with -f, then "
        "every new one as it happens, until interrupted. Exit status: 0; 4 the agent cannot be "
        "reached (or, following, it stopped).",
        "quayctl events",
        "quayctl events -f",
        "quayctl events --json --since 41",
    )
    events.add_argument("-f", "--follow", action="store_true", help="keep printing new events")
    events.add_argument("--json", action="store_true", help="print each event as a JSON line")
    events.add_argument(
        "--since", type=int, default=0, metavar="SEQ", help="only events after number SEQ"
    )
    _timeout(events, 5.0)
    events.set_defaults(handler=cmd_events)

    wait = add_parser(
        commands,
        "wait",
        "wait until units are ready",
        "Wait until every NAME (every unit, with none named) is running and ready, or has "
        "exited successfully (a one-shot job). Exit status: 0 all ready; 1 as soon as one "
        "failed (backoff, invalid, stopped, or exited with a failure); 2 timed out (the "
        "message says which units are not ready, and why); 4 the agent cannot be reached, or "
        "a NAME is not one of its units within 10 s (a file just written is waited for).",
        "quayctl wait web",
        "quayctl restart web && quayctl wait --timeout 30 web worker",
    )
    wait.add_argument("names", nargs="*", metavar="NAME", help="the units (default: all)")
    wait.add_argument(
        "--timeout", type=float, default=300.0, metavar="SECONDS", help="default 300 (5 min)"
    )
    wait.set_defaults(handler=cmd_wait)

    for verb, help_, text in (
        (
            "start",
            "start a unit stopped by quayctl stop",
            "Release an operator's hold: the unit starts as its file says.",
        ),
        (
            "stop",
            "stop a unit and keep it stopped",
            "Stop the unit's container and hold it stopped, whatever its restart policy and "
            "across agent restarts, until quayctl start (units that require it wait).",
        ),
        (
            "restart",
            "stop and start a unit again now",
            "Stop the unit and start it again at once (no backoff); a hold is lifted.",
        ),
    ):
        parser = add_parser(
            commands,
            verb,
            help_,
            f"{text} The agent answers once it has planned the change; `quayctl wait` or "
            "`quayctl events -f` shows the outcome. Exit status: 0; 1 no such unit, or the "
            "agent refused (busy, not allowed); 4 the agent cannot be reached.",
            f"quayctl {verb} web",
            *((f"quayctl {verb} web && quayctl wait web",) if verb != "stop" else ()),
        )
        parser.add_argument("name", metavar="NAME")
        parser.add_argument("--json", action="store_true", help="print the agent's answer as JSON")
        _timeout(parser, 60.0)
        parser.set_defaults(handler=cmd_steer, verb=verb)

    exec_ = add_parser(
        commands,
        "exec",
        "run a command in a unit's container",
        "Run CMD in the unit's running container, wait for it, print its output (stdout, then "
        "stderr) and exit with its status. With -i (stdin passed on) or -t (a terminal, which "
        "needs one as input), quayctl runs the OCI runtime's exec itself, attached to its own "
        "stdio (root only; --timeout does not apply). Exit status: the command's; 1 no such "
        "unit, no running container, or the runtime could not run it; 2 -t without a "
        "terminal; 4 the agent cannot be reached.",
        "quayctl exec web -- cat /etc/hostname",
        "quayctl exec --timeout 5 web -- wget -q -O- http://127.0.0.1/",
        "quayctl exec -it web sh",
    )
    exec_.add_argument("name", metavar="NAME")
    exec_.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD ...")
    exec_.add_argument(
        "-i", "--interactive", action="store_true", help="pass stdin on to CMD (root only)"
    )
    exec_.add_argument(
        "-t", "--tty", action="store_true", help="give CMD a terminal, relayed to this one"
    )
    exec_.add_argument("--json", action="store_true", help="print the agent's answer as JSON")
    exec_.add_argument(
        "--timeout", type=float, default=60.0, metavar="SECONDS", help="for CMD (default 60)"
    )
    exec_.set_defaults(handler=cmd_exec)

    add_run_commands(commands)

    reload = add_parser(
        commands,
        "reload",
        "re-read the unit files now",
        "Make the agent re-read its config directory and run a pass now (as `systemctl reload "
        "quayd`). Exit status: 0; 1 refused; 4 the agent cannot be reached.",
        "quayctl reload",
        "quayctl reload && quayctl plan",
    )
    reload.add_argument("--json", action="store_true", help="print the agent's answer as JSON")
    _timeout(reload, 60.0)
    reload.set_defaults(handler=cmd_reload)


def add_run_commands(commands: Any) -> None:
    """``run``, ``attach`` (:mod:`quayd.cli.run_parser`) and ``rm``: ad-hoc units."""
    from quayd.cli import run_parser  # noqa: PLC0415

    run_parser.add_parsers(commands, _timeout)

    rm = add_parser(
        commands,
        "rm",
        "remove an ad-hoc unit",
        "Remove an ad-hoc unit (quayctl run): its container is stopped, its network released. "
        "A unit from a file is removed by deleting its file. Exit status: 0; 1 no such unit, "
        "or not an ad-hoc one; 4 the agent cannot be reached.",
        "quayctl rm run-1a2b3c",
    )
    rm.add_argument("name", metavar="NAME")
    rm.add_argument("--json", action="store_true", help="print the agent's answer as JSON")
    _timeout(rm, 60.0)
    rm.set_defaults(handler=cmd_steer, verb="remove")


def _timeout(parser: argparse.ArgumentParser, default: float) -> None:
    parser.add_argument(
        "--timeout",
        type=float,
        default=default,
        metavar="SECONDS",
        help=f"wait for the agent at most this long (default {default:g})",
    )


def add_update_command(commands: Any) -> None:
    update = add_parser(
        commands,
        "update",
        "check units with [update] now and update them",
        "Ask the registry for the tag of each unit with [update] (or each NAME) now, and update "
        "each that has a new digest, outside the update window; --dry-run only says what would "
        "update, from which digest to which. A digest that failed before (rolled back) is not "
        "tried again until the tag moves. Exit status: 0; 1 no such unit with [update], or the "
        "agent refused; 4 the agent cannot be reached.",
        "quayctl update --dry-run",
        "quayctl update web && quayctl wait web",
    )
    update.add_argument("names", nargs="*", metavar="NAME", help="only these units")
    update.add_argument("--dry-run", action="store_true", help="say what would update, only")
    update.add_argument("--json", action="store_true", help="print the agent's answer as JSON")
    _timeout(update, 120.0)
    update.set_defaults(handler=_cmd_update)


def _cmd_update(args: argparse.Namespace) -> int:
    from quayd.cli.update import cmd_update  # noqa: PLC0415 - only when the command runs

    return cmd_update(args)


# --- calling the agent ---------------------------------------------------------------------------


def call(
    args: argparse.Namespace, method: str, path: str, body: Any = None, timeout: float = 5.0
) -> tuple[int, Any]:
    """(0, the result), or (the exit code, None) once the failure is printed."""
    from quayd.cli import client  # noqa: PLC0415
    from quayd.cli.quayctl import EXIT_INVALID, agent_target  # noqa: PLC0415

    socket_path = agent_target(args)
    if socket_path is None:
        return EXIT_INVALID, None
    try:
        return EXIT_OK, client.request(socket_path, method, path, body, timeout=timeout)
    except client.AgentUnreachableError as error:
        print(f"quayctl {args.command}: {error}", file=sys.stderr)
        return EXIT_UNREACHABLE, None
    except client.AgentError as error:
        print(f"quayctl {args.command}: {refusal(error)}", file=sys.stderr)
        return (EXIT_UNREACHABLE if error.code in _AGENT_FAULTS else EXIT_REFUSED), None


def refusal(error: AgentError) -> str:
    """The agent's message, prefixed by its code unless it speaks for itself (no such unit)."""
    return error.message if error.code == "not-found" else f"{error.code}: {error.message}"


def unit_path(name: str, action: str = "") -> str:
    from urllib.parse import quote  # noqa: PLC0415 (already loaded by http.client)

    return f"/v1/units/{quote(name, safe='')}" + (f"/{action}" if action else "")


def print_json(value: Any) -> None:
    import json  # noqa: PLC0415

    json.dump(value, sys.stdout, indent=2)
    sys.stdout.write("\n")


# --- the commands --------------------------------------------------------------------------------


def cmd_show(args: argparse.Namespace) -> int:
    import time  # noqa: PLC0415

    from quayd.cli import status  # noqa: PLC0415

    code, reply = call(args, "GET", unit_path(args.name), timeout=args.timeout)
    if code:
        return code
    if not isinstance(reply, dict):
        print("quayctl show: the agent's answer is not a unit", file=sys.stderr)
        return EXIT_UNREACHABLE
    if args.json:
        print_json(reply)
    else:
        sys.stdout.write(status.format_show(reply, time.time()))
    return EXIT_OK


def cmd_steer(args: argparse.Namespace) -> int:
    code, reply = call(args, "POST", unit_path(args.name, args.verb), timeout=args.timeout)
    if code:
        return code
    if args.json:
        print_json(reply)
    else:
        message = reply.get("message") if isinstance(reply, dict) else None
        print(message or f"{args.verb}: {args.name}")
    return EXIT_OK


def cmd_reload(args: argparse.Namespace) -> int:
    code, reply = call(args, "POST", "/v1/reload", timeout=args.timeout)
    if code:
        return code
    if args.json:
        print_json(reply)
    else:
        passes = reply.get("passes", "?") if isinstance(reply, dict) else "?"
        print(f"reloaded: the agent re-read its units (pass {passes})")
    return EXIT_OK


def cmd_exec(args: argparse.Namespace) -> int:
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        print("quayctl exec: no command: quayctl exec NAME -- CMD [ARG...]", file=sys.stderr)
        return EXIT_USAGE
    if args.interactive or args.tty:
        from quayd.cli import terminal  # noqa: PLC0415

        return terminal.exec_interactive(args, argv)
    body = {"argv": argv, "timeout": args.timeout}
    code, reply = call(args, "POST", unit_path(args.name, "exec"), body, args.timeout + 10)
    if code:
        return code
    if not isinstance(reply, dict):
        print("quayctl exec: the agent's answer is not a result", file=sys.stderr)
        return EXIT_UNREACHABLE
    if args.json:
        print_json(reply)
    else:
        sys.stdout.write(str(reply.get("stdout") or ""))
        sys.stdout.flush()
        sys.stderr.write(str(reply.get("stderr") or ""))
    return exit_status(reply.get("code"))


def exit_status(code: Any) -> int:
    """The command's status as ours: 0-255 as is, killed by signal N as the shells say 128+N."""
    if isinstance(code, int) and 0 <= code <= 255:
        return code
    if isinstance(code, int) and code < 0:
        return 128 - code
    return EXIT_REFUSED


def cmd_events(args: argparse.Namespace) -> int:
    import json  # noqa: PLC0415

    from quayd.cli import client, status  # noqa: PLC0415
    from quayd.cli.quayctl import EXIT_INVALID, agent_target  # noqa: PLC0415

    socket_path = agent_target(args)
    if socket_path is None:
        return EXIT_INVALID
    if args.since < 0:
        print("quayctl events: --since is an event number, 0 or more", file=sys.stderr)
        return EXIT_USAGE
    follow = "true" if args.follow else "false"
    path = f"/v1/events?since={args.since}&follow={follow}"
    events = client.stream(socket_path, path, timeout=None if args.follow else args.timeout)
    try:
        for event in events:
            if args.json:
                sys.stdout.write(json.dumps(event, separators=(",", ":")) + "\n")
            else:
                sys.stdout.write(status.format_event(event) + "\n")
            sys.stdout.flush()
    except KeyboardInterrupt:
        return EXIT_OK
    except client.AgentUnreachableError as error:
        print(f"quayctl events: {error}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except client.AgentError as error:
        print(f"quayctl events: {refusal(error)}", file=sys.stderr)
        return EXIT_UNREACHABLE if error.code in _AGENT_FAULTS else EXIT_REFUSED
    finally:
        events.close()
    if args.follow:
        print("quayctl events: the agent ended the stream (it stopped)", file=sys.stderr)
        return EXIT_UNREACHABLE
    return EXIT_OK


UNKNOWN_GRACE_SECONDS = 10.0
"""How long ``wait`` lets a name the agent does not know yet appear (its file just written)."""


def cmd_wait(args: argparse.Namespace) -> int:
    """Polls the status every 0.2 s: simple, and cheap for the agent (status is a dict copy)."""
    import time  # noqa: PLC0415

    from quayd.cli import status  # noqa: PLC0415

    began = time.monotonic()
    deadline = began + args.timeout
    while True:
        code, payload = call(args, "GET", "/v1/status", timeout=5.0)
        if code:
            return EXIT_UNREACHABLE if code == EXIT_REFUSED else code
        if not isinstance(payload, dict) or not isinstance(payload.get("units"), list):
            print("quayctl wait: the agent's answer is not a status", file=sys.stderr)
            return EXIT_UNREACHABLE
        selected, unknown = status.select(payload, args.names)
        # A file written just before (Ansible's template, then wait) reaches the agent with its
        # next pass: an unknown name is given a while to appear before it is an error.
        grace = min(UNKNOWN_GRACE_SECONDS, args.timeout)
        if unknown and time.monotonic() - began >= grace:
            for name in unknown:
                print(
                    f"quayctl wait: the agent has no unit {name!r} (none came within {grace:g}s; "
                    f"is {name}.toml in its config directory?)",
                    file=sys.stderr,
                )
            return EXIT_UNREACHABLE
        outcome, text = (
            (None, "") if unknown else status.wait_outcome(selected["units"], time.time())
        )
        if outcome is not None:
            if text:
                print(f"quayctl wait: {text}", file=sys.stderr)
            return outcome
        left = deadline - time.monotonic()
        if left <= 0:
            print(f"quayctl wait: timed out after {args.timeout:g}s; {text}", file=sys.stderr)
            return status.WAIT_TIMEOUT
        try:
            time.sleep(min(0.2, left))
        except KeyboardInterrupt:
            return status.WAIT_TIMEOUT


def cmd_logs(args: argparse.Namespace) -> int:
    from quayd.cli import logs  # noqa: PLC0415

    return logs.run(args)
