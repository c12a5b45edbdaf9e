"""``quayctl completion bash|zsh``: a shell completion script, made from quayctl's own parser.

Subcommands (``image``'s too) and their options complete from the parser's tables, so they stay
in step with it; unit names complete from ``quayctl status --json`` (quietly: nothing when the
agent does not answer within a second), with the ``--run-dir`` of the command line. zsh runs
the same function through its ``bashcompinit``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

SHELLS = ("bash", "zsh")
_VALUE_OPTIONS = ("--config", "--config-dir", "--state-dir", "--run-dir")
_UNIT_ARGUMENTS = ("name", "names")


def add_completion_command(commands: Any) -> None:
    from quayd.cli.control import add_parser  # noqa: PLC0415

    parser = add_parser(
        commands,
        "completion",
        "print a shell completion script",
        "Print a completion script for bash or zsh: subcommands, their options, and unit names "
        "(asked of the agent with quayctl status --json).",
        "quayctl completion bash > /etc/bash_completion.d/quayctl",
        "source <(quayctl completion zsh)    # in ~/.zshrc",
    )
    parser.add_argument("shell", choices=SHELLS)
    parser.set_defaults(handler=cmd_completion)


def cmd_completion(args: argparse.Namespace) -> int:
    from quayd.cli.quayctl import build_parser  # noqa: PLC0415

    sys.stdout.write(script(build_parser(), args.shell))
    return 0


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> list[str]:
    return [o for action in parser._actions for o in action.option_strings]


def _takes_units(parser: argparse.ArgumentParser) -> bool:
    return any(
        not action.option_strings and action.dest in _UNIT_ARGUMENTS for action in parser._actions
    )


def _case(parser: argparse.ArgumentParser, indent: str) -> list[str]:
    """The ``case`` arms setting ``opts``, ``units`` and ``subs`` for each subcommand."""
    lines = []
    for name, sub in _subparsers(parser).items():
        nested = _subparsers(sub)
        settings = [f'opts="{" ".join(_options(sub))}"']
        if _takes_units(sub):
            settings.append("units=1")
        if nested:
            settings.append(f'subs="{" ".join(nested)}"')
        lines.append(f"{indent}{name}) {'; '.join(settings)}")
        if nested:
            lines.append(f'{indent}    case "$sub" in')
            lines += _case(sub, indent + "        ")
            lines.append(f"{indent}    esac")
        lines.append(f"{indent}    ;;")
    return lines


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    commands = " ".join(_subparsers(parser))
    globals_ = " ".join(_options(parser))
    case = "\n".join(_case(parser, "        "))
    body = f"""\
_quayctl_units() {{
    local run_dir="" i
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${{COMP_WORDS[i]}}" in
            --run-dir) run_dir="--run-dir=${{COMP_WORDS[i+1]}}" ;;
            --run-dir=*) run_dir="${{COMP_WORDS[i]}}" ;;
        esac
    done
    command quayctl ${{run_dir:+"$run_dir"}} status --json --timeout 1 2>/dev/null \\
        | sed -n 's/^      "name": "\\([^"]*\\)",\\{{0,1\\}}$/\\1/p'
}}

_quayctl() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    local command="" sub="" opts="" subs="" units="" i
    COMPREPLY=()
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${{COMP_WORDS[i]}}" in
            {"|".join(_VALUE_OPTIONS)}) ((i++)) ;;
            --) break ;;
            -*) ;;
            *)
                if [[ -z "$command" ]]; then command="${{COMP_WORDS[i]}}"
                elif [[ -z "$sub" ]]; then sub="${{COMP_WORDS[i]}}"
                fi
                ;;
        esac
    done
    case "$prev" in
        --config) COMPREPLY=($(compgen -f -- "$cur")); return ;;
        --config-dir|--state-dir|--run-dir) COMPREPLY=($(compgen -d -- "$cur")); return ;;
    esac
    if [[ -z "$command" ]]; then
        COMPREPLY=($(compgen -W "{globals_} {commands}" -- "$cur"))
        return
    fi
    case "$command" in
{case}
    esac
    if [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
    elif [[ -n "$subs" && -z "$sub" ]]; then
        COMPREPLY=($(compgen -W "$subs" -- "$cur"))
    elif [[ -n "$units" ]]; then
        COMPREPLY=($(compgen -W "$(_quayctl_units)" -- "$cur"))
    else
        COMPREPLY=($(compgen -f -- "$cur"))
    fi
}}

complete -F _quayctl quayctl
"""
    if shell == "zsh":
        return (
            "#compdef quayctl\n"
            "# zsh completion for quayctl: source <(quayctl completion zsh)\n"
            "autoload -U +X bashcompinit && bashcompinit\n" + body
        )
    return (
        "# bash completion for quayctl: quayctl completion bash > "
        "/etc/bash_completion.d/quayctl\n" + body
    )
