# Fine-tuning (README "Using the representation"): one job per task of finetune.tasks, a head for a target
# the backbone never predicted, trained on the pretraining engine and scored on the held-out period.
rule finetune:
    """Train task {wildcards.task}'s head on finetune.train.ranks processes, then score it against
    climatology and a linear model on the raw inputs (a signal checkpoints and exits 75, a rerun resumes)."""
    input:
        backbone=CFG.finetune.backbone or rules.pretrain.output.model,
        shards=finetune_shards,
        target=lambda wildcards: list(CFG.finetune.tasks[wildcards.task].target_shards),
    output:
        head=f"{FINETUNE}/{{task}}/head.safetensors",
        metrics=f"{FINETUNE}/{{task}}/metrics.csv",
        loss=finetune_figure("loss.png", "loss", "Training loss"),
        windows=directory(f"{FINETUNE}/{{task}}/windows.zarr"),
        sample_scores=directory(f"{FINETUNE}/{{task}}/sample_scores.zarr"),
        scores=report(
            f"{FINETUNE}/{{task}}/scores.csv",
            caption="../report/scores.rst",
            category="Fine-tuning",
            subcategory="Tables",
            labels={"task": "{task}", "table": "scores"},
        ),
        scores_parquet=f"{FINETUNE}/{{task}}/scores.parquet",
        comparisons=report(
            f"{FINETUNE}/{{task}}/comparisons.csv",
            caption="../report/comparisons.rst",
            category="Fine-tuning",
            subcategory="Tables",
            labels={"task": "{task}", "table": "comparisons"},
        ),
        comparisons_parquet=f"{FINETUNE}/{{task}}/comparisons.parquet",
        forecast=finetune_figure("forecast.png", "forecast_map", "Maps"),
        scorecard=finetune_figure("scorecard.png", "scorecard", "Skill against baselines"),
    log:
        f"{LOGS}/finetune/{{task}}.log",
    benchmark:
        f"{LOGS}/finetune/{{task}}.benchmark.tsv"
    wildcard_constraints:
        task="|".join(FINETUNE_TASKS) or "no-task",
    conda:
        "../envs/train.yaml"
    envmodules:
        *CFG.software.modules_for("train"),
    threads: CFG.finetune.train.ranks
    resources:
        tasks=CFG.finetune.train.ranks,
        mpi="torchrun",
        mem_mb_per_cpu=2000,
    params:
        cfg=finetune_params,
        outdir=lambda wildcards, output: os.path.dirname(output.head),
    shell:
        "atmorep launch --with {resources.mpi} --ranks {resources.tasks} -- finetune --params {params.cfg:q}"
        " --task {wildcards.task} --backbone {input.backbone} --shards {input.shards} {input.target}"
        " --output-dir {params.outdir} > {log} 2>&1"
