# Evaluation (AtmoRep spec §6): one inference mode on the held-out period, WeatherBench 2 scores
# against baselines, CF zarr products, figures and (opt-in) attention maps. Figures and tables carry
# report() so that `snakemake --report report.html` gathers them with the captions in workflow/report/.
EVAL = f"results/{RUN}/evaluate"
ATTENTION_FIELDS = (
    (list(CFG.evaluate.attention.fields) or MODEL_FIELDS[:1])
    if CFG.evaluate.attention.layers and CFG.evaluate.attention.samples
    else []
)
WB2 = ["wb2_forecast", "wb2_ensemble", "wb2_truth"] if CFG.evaluate.mode == "global_forecast" else []


rule evaluate:
    """Run evaluate.mode on held-out windows; scores vs persistence/climatology/linear, products, figures."""
    input:
        model=rules.pretrain.output.model,
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
        windows=directory(f"{EVAL}/windows.zarr"),
        sample_scores=directory(f"{EVAL}/sample_scores.zarr"),
        climatology=directory(f"{EVAL}/climatology.zarr"),
        wb2=[directory(f"{EVAL}/{name}.zarr") for name in WB2],
        maps=[evaluate_figure(f"forecast_{f}", "forecast_map", "Maps", f) for f in MODEL_FIELDS],
        leads=[evaluate_figure(f"scores_{f}", "scores_vs_lead", "Scores against lead", f) for f in MODEL_FIELDS],
        ranks=[evaluate_figure(f"rank_histogram_{f}", "rank_histogram", "Rank histograms", f) for f in MODEL_FIELDS],
        skill=evaluate_figure("skill", "skill", "Skill against baselines"),
        scorecard=evaluate_figure("scorecard", "scorecard", "Skill against baselines"),
        power_spectra=evaluate_figure("spectra", "spectra", "Spectra"),
        attention=[evaluate_figure(f"attention_{f}", "attention", "Attention", f) for f in ATTENTION_FIELDS],
        attention_maps=[directory(f"{EVAL}/attention.zarr")] if ATTENTION_FIELDS else [],
    log:
        f"{LOGS}/evaluate.log",
    benchmark:
        f"{LOGS}/evaluate.benchmark.tsv"
    conda:
        "../envs/evaluate.yaml"
    envmodules:
        *CFG.software.modules_for("evaluate"),
    resources:
        mem_mb=3000,
    params:
        cfg=stage_params("evaluate"),
        outdir=lambda wildcards, output: os.path.dirname(output.scores),
    shell:
        "atmorep evaluate --params {params.cfg:q} --model {input.model} --shards {input.shards}"
        " --output-dir {params.outdir} > {log} 2>&1"
