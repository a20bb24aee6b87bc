"""atmorep command line: one subcommand per pipeline stage (``moments`` and ``climatology`` included),
plus the tools around them: ``launch``, ``verify``, ``plan``, ``check``, ``inspect``, ``import-original``.

Each subcommand is one module of :mod:`atmorep.commands` (its arguments beside the one library function
it calls); this module builds the parser from that table and turns every failure into one line on
stderr naming what failed and the next step, exit status 1 (130 on Ctrl-C, 75 for "checkpointed,
requeue"); ``--debug`` or ``ATMOREP_DEBUG=1`` shows the traceback. The library raises; only this module
decides exit statuses.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from atmorep import config as C
from atmorep.commands import COMMANDS

log = logging.getLogger("atmorep")

EPILOG = """\
The stages run in this order; Snakemake (`snakemake --cores 2`) chains them from config/config.yaml:
  acquire -> normalize -> shard -> train -> infer -> score   (evaluate = infer + score by hand)
Every stage can also run on its own, e.g.
  atmorep acquire --config config/config.yaml --field t2m --month 2026-03 --output t2m.grib
  atmorep inspect t2m.grib
`atmorep COMMAND --help` explains each command.
"""


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="atmorep",
        description="AtmoRep as a reproducible pipeline: ERA5 GRIB -> "
        "normalized, token-aligned zarr -> DeepSpeed multiformer -> evaluation.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    ap.add_argument(
        "--debug",
        action="store_true",
        help="show tracebacks (also of launched ranks) instead of "
        "one-line errors; the environment variable ATMOREP_DEBUG=1 does the same",
    )
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.HELP, description=getattr(command, "DESCRIPTION", command.HELP))
        command.add_arguments(p)
        p.set_defaults(func=command.run)
    return ap


def main(argv: list[str] | None = None) -> int:
    from atmorep.train import launch

    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.debug:
        os.environ["ATMOREP_DEBUG"] = "1"  # also for the ranks `launch` starts
    launch.watch_launcher()  # a rank started by `atmorep launch` dies with it
    try:
        return args.func(args) or 0
    except BaseException as exc:  # KeyboardInterrupt too: one line and 130, not a traceback
        if isinstance(exc, SystemExit) or (launch.debug() and not isinstance(exc, launch.Requeue)):
            raise
        code, line = failure(args.command, exc)
        if not launch.report(code, line):  # a launched rank leaves its line to the launcher
            if code == launch.EXIT_REQUEUE:  # as `atmorep launch` says it for its ranks
                line = f"atmorep {args.command}: {line}: checkpointed, requeue (exit {code})"
            print(line, file=sys.stderr)
        return code


def failure(command: str, exc: BaseException) -> tuple[int, str]:
    """Exit status and the one line that names what failed and what to do next."""
    import errno

    from atmorep.train.launch import EXIT_INTERRUPTED, EXIT_REQUEUE, Requeue

    if isinstance(exc, Requeue):  # not a failure: checkpointed on a signal; `launch` words it for every rank
        return EXIT_REQUEUE, str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED, f"atmorep {command}: interrupted; nothing unfinished is left looking complete"
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):  # before OSError below
        from atmorep.formats.atomic import DiskFull

        return 1, f"atmorep {command}: error: {DiskFull.describe(exc)}"
    # Errors the user can act on (incl. DataError, TooManyBadSteps, Locked); anything else is our bug.
    if isinstance(exc, (C.ConfigError, ValueError, OSError)):
        return 1, f"atmorep {command}: error: {exc}"
    return 1, (
        f"atmorep {command}: internal error: {type(exc).__name__}: {exc} (rerun with --debug or "
        "ATMOREP_DEBUG=1 for the traceback, and report it)"
    )


if __name__ == "__main__":
    sys.exit(main())
