# Shared by all rules: config validation (at workflow start), stage slices, campaign units.
import json
import os
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake_interface_executor_plugins.settings import DeploymentMethod
from snakemake.utils import validate

from atmorep import config as atmorep_config

from atmorep import preflight

# where the keys came from, for every message about them
CONFIG_FROM = " + ".join(
    ([str(p) for p in workflow.overwrite_configfiles] or ["config/config.yaml (the default)"])
    + (["--config"] if workflow.config_settings.config else [])
)

try:
    # one declaration (atmorep.config) names the first unknown, missing or wrong-typed key precisely
    # ("unknown config key 'normalize.lokal' (allowed: ...)") and fills in every default
    CFG = atmorep_config.build(atmorep_config.Config, config)
except atmorep_config.ConfigError as exc:
    raise WorkflowError(f"invalid configuration ({CONFIG_FROM}): {exc}")
# the schema generated from that declaration (make schema), with the registries' names (sources, losses, ...)
validate(config, workflow.source_path("../schemas/config.schema.yaml"), set_default=False)
try:
    # everything knowable before the first job: periods, windows, grid, tokens, field names
    preflight.check(CFG)
except atmorep_config.ConfigError as exc:
    raise WorkflowError(f"invalid configuration ({CONFIG_FROM}): {exc}")
# What the jobs receive: every key with its value, so a job's --params rebuilds exactly CFG (a default
# that changes reruns the stages that read it, as an edited key does).
PARAMS = atmorep_config.as_dict(CFG)

# Software: the project's venv by default. With --software-deployment-method conda or env-modules
# the jobs' Python comes from workflow/envs/*.yaml or the site's modules (software.modules), and the
# `atmorep` command from this checkout (workflow/bin): nothing of atmorep is installed there.
if {DeploymentMethod.CONDA, DeploymentMethod.ENV_MODULES} & set(workflow.deployment_settings.deployment_method):
    shell.prefix(f"export PATH={Path(workflow.basedir) / 'workflow' / 'bin'}:$PATH; ")

RUN = CFG.run
# every product of a run lives under its name, so runs of several configurations never collide
RES = f"resources/{RUN}"
LOGS = f"logs/{RUN}"
FIELDS = list(CFG.data.fields)
MODEL_FIELDS = list(atmorep_config.model_fields(CFG.data, CFG.model))  # what the backbone reads (model.fields)
MONTHS = CFG.data.months()
YEARS = CFG.data.years()


def stage_params(stage):
    """The config slice a stage reads, as JSON: a change reruns that stage and what follows."""
    return json.dumps(atmorep_config.stage_slice(PARAMS, stage), sort_keys=True)


def months_of(year):
    return [m for m in MONTHS if m.startswith(f"{year}-")]


def shard_stores(wildcards=None, fields=None):
    return expand(f"{RES}/shards/{{field}}/{{year}}.zarr", field=fields or FIELDS, year=YEARS)


def model_stores(wildcards=None):
    """The shard stores of the model's fields: a field kept out of the backbone (a finetune target) is not
    an input of pretraining or evaluation."""
    return shard_stores(fields=MODEL_FIELDS)


# --- acquire / normalize helpers --------------------------------------------------------------


def normalize_params(*keys):
    """The data section plus only ``keys`` of the normalize section, as JSON (for the moments and
    climatology rules: a change of e.g. normalize.local does not recompute them)."""
    norm = PARAMS["normalize"]
    return json.dumps({"data": PARAMS["data"], "normalize": {k: norm[k] for k in keys}}, sort_keys=True)


def climatology_months():
    """Months of normalize.climatology (validated against the campaign at workflow start: preflight)."""
    return CFG.normalize.climatology.months() if CFG.normalize.climatology.fields else []


CLIMATOLOGY_MONTHS = climatology_months()


def climatology_input(wildcards):
    """The field's climatology store when it uses climatological statistics, else nothing."""
    if wildcards.field in CFG.normalize.climatology.fields:
        return f"{RES}/climatology/{wildcards.field}.zarr"
    return []


def normalize_mem_mb():
    """A month up to normalize.memory_mb in memory, plus float64 blocks and the interpreter."""
    return CFG.normalize.memory_mb + 3 * CFG.normalize.block_mb + 512


# --- infer / score helpers -------------------------------------------------------------------------


def evaluate_figure(name, caption, subcategory, field=None):
    """A figure of the evaluation in the Snakemake report (captions in workflow/report/)."""
    labels = {"figure": subcategory, **({"field": field} if field else {})}
    return report(
        f"results/{RUN}/evaluate/{name}.png",
        caption=f"../report/{caption}.rst",
        category="Evaluation",
        subcategory=subcategory,
        labels=labels,
    )


# --- finetune helpers -------------------------------------------------------------------------

FINETUNE = f"results/{RUN}/finetune"
FINETUNE_TASKS = list(CFG.finetune.tasks)


def finetune_params(wildcards):
    """The task's own slice (seed, data, finetune with only this task): a change to one task reruns it alone."""
    raw = atmorep_config.stage_slice(PARAMS, "finetune")
    section = dict(raw["finetune"])
    section["tasks"] = {wildcards.task: section["tasks"][wildcards.task]}
    return json.dumps({**raw, "finetune": section}, sort_keys=True)


def finetune_shards(wildcards):
    """The backbone's shard stores (this run's model fields; every field for another backbone) and the
    target's when it is a field of this run (not target_shards)."""
    task = CFG.finetune.tasks[wildcards.task]
    fields = MODEL_FIELDS if CFG.finetune.backbone is None else FIELDS
    target = [] if task.target_shards or task.target in fields else [task.target]
    return shard_stores(fields=fields + target)


def finetune_figure(name, caption, subcategory):
    return report(
        f"{FINETUNE}/{{task}}/{name}",
        caption=f"../report/{caption}.rst",
        category="Fine-tuning",
        subcategory=subcategory,
        labels={"task": "{task}", "figure": subcategory},
    )
