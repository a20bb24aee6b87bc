rule plan:
    """Capacity plan of this run (not part of `all`): `snakemake plan --cores 1`."""
    output:
        f"results/{RUN}/plan.txt",
    log:
        f"{LOGS}/plan.log",
    benchmark:
        f"{LOGS}/plan.benchmark.tsv"
    localrule: True
    conda:
        "../envs/data.yaml"
    envmodules:
        *CFG.software.modules_for("data"),
    params:
        cfg=json.dumps(PARAMS, sort_keys=True),
        profile=workflow.source_path("../../profiles/slurm/config.yaml"),
    shell:
        "atmorep plan --params {params.cfg:q} --profile {params.profile} --output {output} > {log} 2>&1"
