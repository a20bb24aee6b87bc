# Evaluation (AtmoRep spec §6) in two rules: `infer` runs the model on the held-out period (stored
# forecasts, ensembles, attention maps: the GPU part) and `score` scores them on the CPU (climatology
# and baselines, WeatherBench 2 scores with intervals, comparisons, rank histograms, spectra, figures).
# The infer rule's params leave out the scoring keys (atmorep.config.SCORING_KEYS): changing e.g.
# evaluate.bootstrap_iterations reruns `score` only. Figures and tables carry report() so that
# `snakemake --report report.html` gathers them with the captions in workflow/report/.
INFER = f"results/{RUN}/infer"
EVAL = f"results/{RUN}/evaluate"
ATTENTION_FIELDS = (
    (list(CFG.evaluate.attention.fields) or MODEL_FIELDS[:1])
    if CFG.evaluate.attention.layers and CFG.evaluate.attention.samples
    else []
)
WB2 = ["wb2_forecast", "wb2_ensemble", "wb2_truth"] if CFG.evaluate.mode == "global_forecast" else []


rule infer:
    """Run evaluate.mode on held-out windows: forecasts, ensembles and targets (windows.zarr), WB2 stores, attention."""
    input:
        model=rules.pretrain.output.model,
        shards=model_stores(),
    output:
        windows=directory(f"{INFER}/windows.zarr"),
        wb2=[directory(f"{INFER}/{name}.zarr") for name in WB2],
        attention_maps=[directory(f"{INFER}/attention.zarr")] if ATTENTION_FIELDS else [],
    log:
        f"{LOGS}/infer.log",
    benchmark:
        f"{LOGS}/infer.benchmark.tsv"
    conda:
        "../envs/evaluate.yaml"
    envmodules:
        *CFG.software.modules_for("evaluate"),
    resources:
        mem_mb=3000,
    params:
        cfg=stage_params("infer"),
        outdir=lambda wildcards, output: os.path.dirname(output.windows),
    shell:
        "atmorep infer --params {params.cfg:q} --model {input.model} --shards {input.shards}"
        " --output-dir {params.outdir} > {log} 2>&1"


rule score:
    """Score the stored forecasts against persistence/climatology/linear: tables, intervals, figures."""
    input:
        windows=rules.infer.output.windows,
        attention_maps=rules.infer.output.attention_maps,
        shards=model_stores(),
    output:
        scores=report(
            f"{EVAL}/scores.csv",
            caption="../report/scores.rst",
            category="Evaluation",
            subcategory="Tables",
            labels={"table": "scores"},
        ),
        scores_parquet=f"{EVAL}/scores.parquet",
        rank_histograms=f"{EVAL}/rank_histogram.csv",
        comparisons=report(
            f"{EVAL}/comparisons.csv",
            caption="../report/comparisons.rst",
            category="Evaluation",
            subcategory="Tables",
            labels={"table": "comparisons"},
        ),
        comparisons_parquet=f"{EVAL}/comparisons.parquet",
        spectra=f"{EVAL}/spectra.csv",
        sample_scores=directory(f"{EVAL}/sample_scores.zarr"),
        climatology=directory(f"{EVAL}/climatology.zarr"),
        baselines=directory(f"{EVAL}/baselines.zarr"),
        maps=[evaluate_figure(f"forecast_{f}", "forecast_map", "Maps", f) for f in MODEL_FIELDS],
        leads=[evaluate_figure(f"scores_{f}", "scores_vs_lead", "Scores against lead", f) for f in MODEL_FIELDS],
        ranks=[evaluate_figure(f"rank_histogram_{f}", "rank_histogram", "Rank histograms", f) for f in MODEL_FIELDS],
        skill=evaluate_figure("skill", "skill", "Skill against baselines"),
        scorecard=evaluate_figure("scorecard", "scorecard", "Skill against baselines"),
        power_spectra=evaluate_figure("spectra", "spectra", "Spectra"),
        attention=[evaluate_figure(f"attention_{f}", "attention", "Attention", f) for f in ATTENTION_FIELDS],
    log:
        f"{LOGS}/score.log",
    benchmark:
        f"{LOGS}/score.benchmark.tsv"
    conda:
        "../envs/evaluate.yaml"
    envmodules:
        *CFG.software.modules_for("evaluate"),
    resources:
        mem_mb=3000,
    params:
        cfg=stage_params("score"),
        attention=lambda wildcards, input: f"--attention {input.attention_maps[0]}" if input.attention_maps else "",
        outdir=lambda wildcards, output: os.path.dirname(output.scores),
    shell:
        "atmorep score --params {params.cfg:q} --forecasts {input.windows} {params.attention}"
        " --shards {input.shards} --output-dir {params.outdir} > {log} 2>&1"
