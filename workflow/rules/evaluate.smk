rule evaluate:
    """Forecast held-out windows; scores against persistence, maps and an attention map."""
    input:
        model=rules.pretrain.output.model,
        shards=shard_stores(),
    output:
        scores=f"results/{RUN}/evaluate/scores.csv",
        maps=expand(f"results/{RUN}/evaluate/forecast_{{field}}.png", field=FIELDS),
        attention=f"results/{RUN}/evaluate/attention_{FIELDS[0]}.png",
    params:
        cfg=stage_params("evaluate"),
        outdir=f"results/{RUN}/evaluate",
    log:
        f"logs/evaluate/{RUN}.log",
    benchmark:
        f"logs/evaluate/{RUN}.benchmark.tsv"
    resources:
        mem_mb=2000,
    shell:
        "atmorep evaluate --params {params.cfg:q} --model {input.model} --shards {input.shards}"
        " --output-dir {params.outdir} > {log} 2>&1"
