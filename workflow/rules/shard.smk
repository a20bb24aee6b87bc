rule shard:
    """One token-aligned, sharded zarr v3 store per (field, year), then checked as written on disk
    (atmorep verify: bit-equal to the normalized months, shard index checksums, finite values)."""
    input:
        lambda wc: expand(f"{RES}/normalized/{{field}}/{{month}}.zarr", field=wc.field, month=months_of(wc.year)),
    output:
        directory(f"{RES}/shards/{{field}}/{{year}}.zarr"),
    log:
        f"{LOGS}/shard/{{field}}_{{year}}.log",
    benchmark:
        f"{LOGS}/shard/{{field}}_{{year}}.benchmark.tsv"
    conda:
        "../envs/data.yaml"
    envmodules:
        *CFG.software.modules_for("data"),
    resources:
        mem_mb=2000,
    params:
        cfg=stage_params("shard"),
    shell:
        "atmorep shard --params {params.cfg:q} --field {wildcards.field} --year {wildcards.year}"
        " --inputs {input} --output {output} > {log} 2>&1"
        " && atmorep verify --params {params.cfg:q} {output} >> {log} 2>&1"
