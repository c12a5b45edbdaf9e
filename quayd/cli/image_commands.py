"""``quayctl image …``: the subcommands and their options.

The work is in :mod:`quayd.cli.image_actions`, imported only when an image command runs, so
``quayctl validate`` does not pay for loading an HTTP client and the image store.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

Handler = Callable[[argparse.Namespace], int]


def _action(name: str) -> Handler:
    def run(args: argparse.Namespace) -> int:
        handler: Handler = getattr(importlib.import_module("quayd.cli.image_actions"), name)
        return handler(args)

    return run


def _pull(args: argparse.Namespace) -> int:
    """Through the agent when it can (a request, no heavy imports), else in-process."""
    if not args.local:
        from quayd.cli import image_remote  # noqa: PLC0415

        through_agent = image_remote.pull(args)
        if through_agent is not None:
            return through_agent
    return _action("cmd_pull")(args)


def add_pull_command(verbs: Any) -> argparse.ArgumentParser:
    """``image pull``: on the full parser, and on the lean one that tries the agent first."""
    pull_cmd: argparse.ArgumentParser = verbs.add_parser(
        "pull",
        help="pull an image from its registry",
        description="Pull an image into the store: through the running agent when there is one "
        "(for the same state directory), else in this process.",
    )
    pull_cmd.add_argument("reference", metavar="REF")
    pull_cmd.add_argument("--platform", help='e.g. "linux/arm64/v8" (default: this host)')
    pull_cmd.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    pull_cmd.add_argument(
        "--local",
        action="store_true",
        help="pull in this process even when the agent runs (the store's locks keep both safe)",
    )
    pull_cmd.set_defaults(handler=_pull)
    return pull_cmd


def add_image_commands(commands: Any) -> None:
    """Register ``image`` and its subcommands on quayctl's subparsers."""
    image = commands.add_parser("image", help="manage the local image store")
    verbs = image.add_subparsers(dest="image_command", metavar="COMMAND", required=True)

    add_pull_command(verbs)

    ls_cmd = verbs.add_parser("ls", help="list stored images")
    ls_cmd.add_argument("--json", action="store_true")
    ls_cmd.set_defaults(handler=_action("cmd_ls"))

    rm_cmd = verbs.add_parser("rm", help="remove images and the content only they use")
    rm_cmd.add_argument("references", nargs="+", metavar="REF")
    rm_cmd.set_defaults(handler=_action("cmd_rm"))

    prune_cmd = verbs.add_parser(
        "prune",
        help="delete content no image uses (with --unused: also images no unit names)",
    )
    prune_cmd.add_argument(
        "--unused",
        action="store_true",
        help="also remove images that no unit file in the config directory names",
    )
    prune_cmd.set_defaults(handler=_action("cmd_prune"))

    load_cmd = verbs.add_parser(
        "load", help="store images from a docker save tarball, an OCI archive or an OCI layout"
    )
    load_cmd.add_argument("path", type=Path, metavar="FILE|DIR")
    load_cmd.add_argument(
        "--reference", metavar="REF", help="the name to give an image the archive names only by tag"
    )
    load_cmd.add_argument("--platform", help="which image of a multi-platform archive")
    load_cmd.set_defaults(handler=_action("cmd_load"))

    verify_cmd = verbs.add_parser("verify", help="re-hash stored content; --repair re-fetches")
    verify_cmd.add_argument("--repair", action="store_true", help="re-fetch what is damaged")
    verify_cmd.set_defaults(handler=_action("cmd_verify"))
