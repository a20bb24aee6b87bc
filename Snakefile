# atmorep: acquire -> normalize -> shard -> pretrain -> infer -> score, embed, finetune
# Run: snakemake --profile profiles/local   (or `make run`); dry run: snakemake -n
import os

from snakemake.utils import min_version

min_version("9.0")


# A config file describes a whole run: `--configfile mine.yaml` replaces the embedded demo configuration
# (Snakemake would merge it into the default, keeping e.g. the demo's t2m field); without one the demo runs.
if not workflow.overwrite_configfiles:

    configfile: os.path.join(workflow.basedir, "config", "config.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/acquire.smk"
include: "workflow/rules/normalize.smk"
include: "workflow/rules/shard.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/embed.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/plan.smk"


rule all:
    default_target: True
    input:
        rules.score.output,
        rules.embed.output,
        expand(rules.finetune.output.scores, task=FINETUNE_TASKS),
        expand(rules.finetune.output.head, task=FINETUNE_TASKS),
        # the model and the shards it was trained on are targets too: after a killed forced run deleted
        # them, a plain rerun rebuilds them (and what depends on them) instead of "Nothing to be done"
        rules.pretrain.output,
        shard_stores(),
