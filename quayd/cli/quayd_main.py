"""quayd: the agent. ``quayd`` runs it; ``quayd --check`` only checks its inputs.

``quayd --check`` loads the settings and the whole config directory and reports what it finds,
exactly as the agent reads them, and exits (0 when all is valid). Without it the agent starts
(quayd/agent/agent.py): invalid units are reported and the valid ones run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import faulthandler
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from quayd.cli.common import (
    EXIT_INVALID,
    EXIT_OK,
    add_global_options,
    print_findings,
    report_config_error,
    settings_from,
)
from quayd.units.directory import load_directory
from quayd.units.findings import QuayConfigError
from quayd.units.settings import Settings

EXIT_AGENT_FAILED = 1
_M_ARENA_MAX = -8  # glibc's mallopt() parameter (malloc.h)
MALLOC_ARENAS = 2
"""glibc malloc arenas at most: by default each thread that allocates may get its own (up to 8 per
CPU), and the agent's dozen worker threads each kept a few hundred KiB of RSS in theirs."""
TRIM_EVERY = 30.0
"""Seconds between two ``malloc_trim(0)``: glibc keeps what a burst (100 starts, a pull) freed
inside its heaps; trimming gives those pages back (2.4 MiB of 62 with 100 containers)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quayd",
        description=(
            "The quay agent: keeps this host's containers matching the unit files in the config "
            "directory (default /etc/quay.d)."
        ),
    )
    add_global_options(parser)
    parser.add_argument(
        "--check",
        action="store_true",
        help="load the settings and every unit, report problems, and exit (0 when all are valid)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    _limit_malloc_arenas()  # first: it only counts for the arenas of threads not yet started
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from(args)
        snapshot = load_directory(Path(settings.config_dir))
    except QuayConfigError as error:
        return report_config_error(error)
    print_findings(snapshot.findings)
    if args.check:
        print(
            f"quayd: {len(snapshot.units)} valid unit(s), {len(snapshot.invalid)} invalid, "
            f"in {settings.config_dir}",
            file=sys.stdout if snapshot.valid else sys.stderr,
        )
        return EXIT_OK if snapshot.valid else EXIT_INVALID
    return run_agent(settings)


def run_agent(settings: Settings) -> int:
    _without_rich()
    # systemd's watchdog ends a hung agent with SIGABRT: every thread's stack goes to stderr
    # (the journal) first, so the hang can be found (sd_watchdog_enabled(3) advises as much).
    faulthandler.enable(all_threads=True)
    # Imported here: `quayd --check` needs none of the agent's machinery.
    from quayd.agent.agent import Agent, AgentError  # noqa: PLC0415
    from quayd.agent.logs import configure  # noqa: PLC0415

    configure(settings.log_level)
    try:
        return asyncio.run(_trimming_meanwhile(Agent(settings).run()))
    except AgentError as error:
        print(f"quayd: {error}", file=sys.stderr)
        return EXIT_AGENT_FAILED


async def _trimming_meanwhile(agent: Coroutine[Any, Any, int]) -> int:
    """Run the agent; meanwhile give the memory glibc holds free back every :data:`TRIM_EVERY`."""
    trimming = asyncio.create_task(_trim_now_and_then())
    try:
        return await agent
    finally:
        trimming.cancel()


async def _trim_now_and_then() -> None:
    import ctypes  # noqa: PLC0415 (see _limit_malloc_arenas)

    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return
    while True:
        await asyncio.sleep(TRIM_EVERY)
        trim(0)  # a few milliseconds at most, for heaps of tens of MiB


def _limit_malloc_arenas() -> None:
    """Cap glibc's malloc arenas (:data:`MALLOC_ARENAS`), as ``MALLOC_ARENA_MAX`` would.

    The variable is read when the process starts, too early for quayd to set it; ``mallopt`` does
    the same at run time. ctypes costs nothing here: the agent imports it anyway (pyroute2).
    Another C library (musl) has no such call: then nothing changes.
    """
    import ctypes  # noqa: PLC0415 (only quayd, not the modules quayctl shares, needs it)

    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL(None).mallopt(_M_ARENA_MAX, MALLOC_ARENAS)  # the process's own libc


def _without_rich() -> None:
    """Keep structlog from importing rich (4.9 MiB of RSS, 90 modules).

    structlog imports rich whenever it is installed (the dev venv has it: import-linter needs it)
    only to draw tracebacks on a terminal, which quayd never asks for (logs.py formats them as
    text). A None in ``sys.modules`` makes ``import rich`` fail with ImportError, as if rich were
    not installed, which structlog handles. Done only in the agent's process, before anything
    imports structlog; in a process where something already imported rich, nothing changes.
    """
    if "structlog" not in sys.modules:
        sys.modules.setdefault("rich", None)  # type: ignore[arg-type]


if __name__ == "__main__":
    sys.exit(main())
