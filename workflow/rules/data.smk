# Raw data (minicity generator, when a pair's datasets are generated) and prepared datasets.


rule minicity:
    """Generate the procedural minicity benchmark in the GTA5/SYNTHIA/Cityscapes layouts."""
    output:
        directory("data/raw/{mc}"),
    params:
        args=minicity_args,
        code=CODE["data"],
    threads: threads_for("minicity")
    resources:
        mem_mb=resource("minicity", "mem_mb"),
        runtime=resource("minicity", "runtime"),
    log:
        "logs/data/minicity_{mc}.log",
    benchmark:
        "results/benchmarks/data/minicity_{mc}.tsv"
    conda:
        "../../environment.yml"
    shell:
        '"$UDA_PYTHON" -m domains.minicity --out {output} {params.args} --workers {threads} --no-progress'
        " > {log} 2>&1"


rule prepare:
    """Convert a raw dataset into data/prepared/<name> (trainId labels, split lists, class stats)."""
    input:
        prepare_input,
    output:
        directory("data/prepared/{dataset}"),
    params:
        format=lambda wc: DATASETS[wc.dataset]["format"],
        raw=lambda wc: DATASETS[wc.dataset]["raw"],
        code=CODE["data"],
    threads: threads_for("prepare")
    resources:
        mem_mb=resource("prepare", "mem_mb"),
        runtime=resource("prepare", "runtime"),
    log:
        "logs/data/prepare_{dataset}.log",
    benchmark:
        "results/benchmarks/data/prepare_{dataset}.tsv"
    conda:
        "../../environment.yml"
    shell:
        '"$UDA_PYTHON" -m domains prepare --dataset {params.format} --raw {params.raw} --out {output}'
        " --workers {threads} > {log} 2>&1"
