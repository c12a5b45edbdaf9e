"""What ``quayd`` and ``quayctl`` share: the global options and how findings are printed."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from quayd import __version__
from quayd.units.findings import Finding, QuayConfigError
from quayd.units.settings import DEFAULT_SETTINGS_FILE, Overrides, Settings, load_settings

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2


def add_global_options(parser: argparse.ArgumentParser) -> None:
    """Options that come before any subcommand (``quayctl --config-dir D status``)."""
    group = parser.add_argument_group("global options")
    group.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help=f"agent settings file (default {DEFAULT_SETTINGS_FILE}, optional)",
    )
    group.add_argument(
        "--config-dir", type=Path, metavar="DIR", help="unit files directory (default /etc/quay.d)"
    )
    group.add_argument(
        "--state-dir", type=Path, metavar="DIR", help="persistent state (default /var/lib/quay)"
    )
    group.add_argument(
        "--run-dir", type=Path, metavar="DIR", help="runtime state and sockets (default /run/quay)"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")


def settings_from(args: argparse.Namespace) -> Settings:
    """Settings from ``--config`` (or the default file), with the directory options on top."""
    overrides = Overrides(
        config_dir=args.config_dir, state_dir=args.state_dir, run_dir=args.run_dir
    )
    return load_settings(args.config, overrides)


def print_findings(findings: Sequence[Finding], stream: TextIO | None = None) -> None:
    stream = stream or sys.stderr
    for finding in findings:
        print(finding, file=stream)


def print_json(document: Any) -> None:
    json.dump(document, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def report_config_error(error: QuayConfigError) -> int:
    print_findings(error.findings)
    return EXIT_INVALID
