rule pretrain:
    """Pretrain the multiformer on train.ranks processes (DeepSpeed ZeRO; gloo on CPU, NCCL on GPU).

    The launcher is the `mpi` resource: torchrun locally; profiles/slurm sets `srun`, so the ranks are
    the job's SLURM tasks (`tasks`, spread over `nodes`; one per GPU with `tasks_per_gpu: 1`). A run
    stopped by SIGTERM/SIGUSR1 saves a checkpoint and exits 75; running the rule again resumes from
    results/{run}/train/checkpoints. With train.init_from (fine-tuning) that model file is an input.
    """
    input:
        shards=model_stores(),
        init=CFG.train.init_from or [],  # fine-tuning: a changed starting model reruns the training
    output:
        model=f"results/{RUN}/train/model.safetensors",
        metrics=f"results/{RUN}/train/metrics.csv",
        loss=report(
            f"results/{RUN}/train/loss.png",
            caption="../report/loss.rst",
            category="Training",
            labels={"figure": "loss"},
        ),
    log:
        f"{LOGS}/pretrain.log",
    benchmark:
        f"{LOGS}/pretrain.benchmark.tsv"
    conda:
        "../envs/train.yaml"
    envmodules:
        *CFG.software.modules_for("train"),
    threads: CFG.train.ranks
    resources:
        tasks=CFG.train.ranks,
        mpi="torchrun",
        mem_mb_per_cpu=2000,
    params:
        cfg=stage_params("train"),
        outdir=lambda wildcards, output: os.path.dirname(output.model),
    shell:
        "atmorep launch --with {resources.mpi} --ranks {resources.tasks} -- train --params {params.cfg:q}"
        " --shards {input.shards} --output-dir {params.outdir} > {log} 2>&1"
