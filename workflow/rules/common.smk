# Shared by all rules: config validation (at workflow start), stage slices, campaign units.
import json

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from atmorep import config as atmorep_config

try:
    # the dataclasses name the first unknown or missing key precisely ("unknown config key 'normalize.lokal'")
    CFG = atmorep_config.build(atmorep_config.Config, config)
except atmorep_config.ConfigError as exc:
    raise WorkflowError(f"invalid configuration: {exc}")
validate(config, workflow.source_path("../schemas/config.schema.yaml"))  # also fills in defaults

RUN = CFG.run
FIELDS = list(CFG.data.fields)
MONTHS = CFG.data.months()
YEARS = CFG.data.years()


def stage_params(stage):
    """The config slice a stage reads, as JSON: a change reruns that stage and what follows."""
    return json.dumps(atmorep_config.stage_slice(config, stage), sort_keys=True)


def months_of(year):
    return [m for m in MONTHS if m.startswith(f"{year}-")]


def shard_stores(wildcards=None):
    return expand("resources/shards/{field}/{year}.zarr", field=FIELDS, year=YEARS)
