rule pretrain:
    """Pretrain the multiformer with DeepSpeed ZeRO on train.ranks processes (torchrun, gloo on CPU)."""
    input:
        shards=shard_stores(),
    output:
        model=f"results/{RUN}/train/model.pt",
        metrics=f"results/{RUN}/train/metrics.csv",
        loss=f"results/{RUN}/train/loss.png",
    params:
        cfg=stage_params("train"),
        outdir=f"results/{RUN}/train",
    log:
        f"logs/pretrain/{RUN}.log",
    benchmark:
        f"logs/pretrain/{RUN}.benchmark.tsv"
    threads: CFG.train.ranks
    resources:
        tasks=CFG.train.ranks,
        mem_mb=4000,
    shell:
        "OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node {resources.tasks} -m atmorep train"
        " --params {params.cfg:q} --shards {input.shards} --output-dir {params.outdir} > {log} 2>&1"
