rule normalize:
    """Decode, check and normalize one (field, month) with AtmoRep's statistics."""
    input:
        "resources/grib/{field}/{month}.grib",
    output:
        directory("resources/normalized/{field}/{month}.zarr"),
    params:
        cfg=stage_params("normalize"),
    log:
        "logs/normalize/{field}_{month}.log",
    benchmark:
        "logs/normalize/{field}_{month}.benchmark.tsv"
    resources:
        mem_mb=2000,
    shell:
        "atmorep normalize --params {params.cfg:q} --field {wildcards.field} --month {wildcards.month}"
        " --input {input} --output {output} > {log} 2>&1"
