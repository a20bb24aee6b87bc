rule acquire:
    """Fetch one (field, month) of ERA5 as GRIB from the configured source."""
    output:
        "resources/grib/{field}/{month}.grib",
    params:
        cfg=stage_params("acquire"),
    log:
        "logs/acquire/{field}_{month}.log",
    benchmark:
        "logs/acquire/{field}_{month}.benchmark.tsv"
    resources:
        mem_mb=1000,
    shell:
        "atmorep acquire --params {params.cfg:q} --field {wildcards.field} --month {wildcards.month}"
        " --output {output} > {log} 2>&1"
