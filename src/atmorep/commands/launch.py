"""atmorep launch: start N ranks of an atmorep command with torchrun, srun or mpirun."""

from __future__ import annotations

import argparse

from atmorep import config as C

HELP = "start N ranks of an atmorep command with torchrun, srun or mpirun"
DESCRIPTION = (
    "Start --ranks processes of `python -m atmorep COMMAND ...` with a launcher; "
    "e.g. atmorep launch --with srun --ranks 8 -- train --config run.yaml ..."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--with",
        dest="launcher",
        default="torchrun",
        choices=["torchrun", "srun", "mpirun", "none"],
        help="torchrun (one machine), srun (inside a SLURM job), mpirun (any MPI), none (one process)",
    )
    p.add_argument("--ranks", type=int, default=1, help="number of ranks (processes) in all")
    p.add_argument("--per-node", type=int, help="srun: ranks per node on multi-node jobs (one per GPU)")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="-- COMMAND ARGS (the atmorep command to start)")


def run(args: argparse.Namespace) -> int:
    from atmorep.train.launch import launch

    rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest  # REMAINDER keeps the separator
    if not rest:
        raise C.ConfigError("nothing to launch: give the command after --, e.g. -- train --config FILE ...")
    return launch(args.launcher, args.ranks, rest, args.per_node)
