rule acquire:
    """Fetch one (field, month) of ERA5 as GRIB from the configured source; validated, then renamed into place."""
    output:
        f"{RES}/grib/{{field}}/{{month}}.grib",
    log:
        f"{LOGS}/acquire/{{field}}_{{month}}.log",
    benchmark:
        f"{LOGS}/acquire/{{field}}_{{month}}.benchmark.tsv"
    conda:
        "../envs/data.yaml"
    envmodules:
        *CFG.software.modules_for("data"),
    resources:
        mem_mb=1000,
        # CDS requests in flight are capped by acquire.cds.max_concurrent (lock files); `--resources cds=N`
        # caps the jobs Snakemake starts as well
        cds=1 if CFG.acquire.source == "cds" else 0,
    params:
        cfg=stage_params("acquire"),
    shell:
        "atmorep acquire --params {params.cfg:q} --field {wildcards.field} --month {wildcards.month}"
        " --output {output} > {log} 2>&1"
