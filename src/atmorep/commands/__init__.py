"""One module per subcommand: its ``HELP`` (and optional ``DESCRIPTION``), ``add_arguments(parser)``
beside ``run(args)``, the one library call it makes. A new command is a new module listed in
:data:`COMMANDS`; :func:`atmorep.cli.parser` builds ``atmorep --help`` from this table, in this order
(the pipeline's, then the tools around it). Each ``run`` imports its stage inside, so ``atmorep --help``
and light commands pay for no torch or zarr.
"""

from __future__ import annotations

from types import ModuleType

from atmorep.commands import (
    acquire,
    check,
    climatology,
    embed,
    evaluate,
    finetune,
    import_original,
    infer,
    inspect,
    launch,
    moments,
    normalize,
    plan,
    score,
    shard,
    train,
    verify,
)

#: subcommand name -> its module
COMMANDS: dict[str, ModuleType] = {
    "acquire": acquire,
    "normalize": normalize,
    "moments": moments,
    "climatology": climatology,
    "shard": shard,
    "verify": verify,
    "train": train,
    "launch": launch,
    "infer": infer,
    "score": score,
    "evaluate": evaluate,
    "embed": embed,
    "finetune": finetune,
    "plan": plan,
    "check": check,
    "inspect": inspect,
    "import-original": import_original,
}
