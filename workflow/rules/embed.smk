# The representation (issue 21): the encoder's latents over embed.start..end and embed.area, one vector
# per token at the token centres (CF zarr), and with embed.case_study the tropical-cyclone case study.
EMBED = f"results/{RUN}/embed"


rule embed:
    """Latents of the trained model: windows tiled over the period and area, each token from the window
    where it is most central, written slab by slab into embeddings.zarr (atmorep.eval.embed)."""
    input:
        model=rules.pretrain.output.model,
        shards=model_stores(),  # the model's fields (a finetune target, e.g. tp, is no input)
    output:
        store=directory(f"{EMBED}/embeddings.zarr"),
        case_study=(
            [
                report(
                    f"{EMBED}/cyclone.png",
                    caption="../report/cyclone.rst",
                    category="Representation",
                    subcategory="Case study",
                    labels={"figure": "tropical cyclone"},
                ),
                report(
                    f"{EMBED}/cyclone_track.csv",
                    caption="../report/cyclone_track.rst",
                    category="Representation",
                    subcategory="Case study",
                    labels={"table": "cyclone track"},
                ),
                f"{EMBED}/cyclone_similarity.csv",
            ]
            if CFG.embed.case_study
            else []
        ),
    log:
        f"{LOGS}/embed.log",
    benchmark:
        f"{LOGS}/embed.benchmark.tsv"
    conda:
        "../envs/evaluate.yaml"
    envmodules:
        *CFG.software.modules_for("evaluate"),
    resources:
        mem_mb=3000,
    params:
        cfg=stage_params("embed"),
        outdir=lambda wildcards, output: os.path.dirname(output.store),
    shell:
        "atmorep embed --params {params.cfg:q} --model {input.model} --shards {input.shards}"
        " --output-dir {params.outdir} > {log} 2>&1"
