# Two commands: `make run` (set up, then the whole DAG on the embedded sample) and `make test`.
# A GPU cluster installs its CUDA torch instead: `make run TORCH="torch --index-url https://download.pytorch.org/whl/cu128"`
# (or any torch >= 2.3 already in the environment: `make run TORCH=`).
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PYTEST_ARGS ?=
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
export OMP_NUM_THREADS ?= 1

.PHONY: setup run test format schema clean help

help:
	@echo "make run    set up .venv and run the whole pipeline on the embedded ERA5 sample (results/demo/)"
	@echo "make test   set up .venv and run the test suite"
	@echo "make format ruff and snakefmt: fix what they can, format the tree and the workflow files"
	@echo "make schema write workflow/schemas/config.schema.yaml from src/atmorep/config.py (generated, never edited)"
	@echo "make clean  remove outputs (resources/, results/, logs/, .snakemake/)"

setup: $(VENV)/.installed

# torch first: with no torch installed, pip would resolve 'torch>=2.6' to a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(if $(strip $(TORCH)),$(BIN)/pip install --quiet $(TORCH))
	$(BIN)/pip install --quiet -e ".[test,mpich]"
	touch $@

run: setup
	snakemake --profile profiles/local

# the workflow files snakefmt formats (rules and the Snakefile)
WORKFLOW_FILES := Snakefile $(wildcard workflow/rules/*.smk)

# lint, format, types and workflow format first (seconds), then the suite
test: setup
	ruff check .
	ruff format --check .
	mypy
	snakefmt --check $(WORKFLOW_FILES)
	@pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: that is a failure here"; fi; exit $$rc

format: setup
	ruff check --fix .
	ruff format .
	snakefmt $(WORKFLOW_FILES)

# the JSON schema Snakemake validates with, generated from the configuration's one declaration
schema: setup
	$(BIN)/python -m atmorep.schema --write

clean:
	rm -rf resources results logs .snakemake
