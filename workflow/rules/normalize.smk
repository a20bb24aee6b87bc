rule normalize:
    """Decode, check (QC) and normalize one (field, month) with AtmoRep's statistics."""
    input:
        grib=f"{RES}/grib/{{field}}/{{month}}.grib",
        climatology=climatology_input,
    output:
        data=directory(f"{RES}/normalized/{{field}}/{{month}}.zarr"),
        qc=f"{RES}/qc/{{field}}/{{month}}.json",
    log:
        f"{LOGS}/normalize/{{field}}_{{month}}.log",
    benchmark:
        f"{LOGS}/normalize/{{field}}_{{month}}.benchmark.tsv"
    conda:
        "../envs/data.yaml"
    envmodules:
        *CFG.software.modules_for("data"),
    resources:
        mem_mb=normalize_mem_mb(),
    params:
        cfg=stage_params("normalize"),
        climatology=lambda wildcards, input: f"--climatology {input.climatology}" if input.climatology else "",
    shell:
        "atmorep normalize --params {params.cfg:q} --field {wildcards.field} --month {wildcards.month}"
        " --input {input.grib} --output {output.data} --qc {output.qc} {params.climatology} > {log} 2>&1"


rule moments:
    """Count, mean and M2 per grid point of one (field, month) of the climatology period."""
    input:
        f"{RES}/grib/{{field}}/{{month}}.grib",
    output:
        directory(f"{RES}/moments/{{field}}/{{month}}.zarr"),
    log:
        f"{LOGS}/moments/{{field}}_{{month}}.log",
    benchmark:
        f"{LOGS}/moments/{{field}}_{{month}}.benchmark.tsv"
    conda:
        "../envs/data.yaml"
    envmodules:
        *CFG.software.modules_for("data"),
    resources:
        mem_mb=normalize_mem_mb(),
    params:
        cfg=normalize_params("qc", "memory_mb", "block_mb", "scratch_dir"),
    shell:
        "atmorep moments --params {params.cfg:q} --field {wildcards.field} --month {wildcards.month}"
        " --input {input} --output {output} > {log} 2>&1"


rule climatology:
    """Statistics of a field over the climatology period (per calendar month or overall)."""
    input:
        lambda wildcards: expand(
            f"{RES}/moments/{{field}}/{{month}}.zarr", field=wildcards.field, month=CLIMATOLOGY_MONTHS
        ),
    output:
        directory(f"{RES}/climatology/{{field}}.zarr"),
    log:
        f"{LOGS}/climatology/{{field}}.log",
    benchmark:
        f"{LOGS}/climatology/{{field}}.benchmark.tsv"
    conda:
        "../envs/data.yaml"
    envmodules:
        *CFG.software.modules_for("data"),
    resources:
        mem_mb=2000,
    params:
        cfg=normalize_params("climatology"),
    shell:
        "atmorep climatology --params {params.cfg:q} --field {wildcards.field} --inputs {input}"
        " --output {output} > {log} 2>&1"
