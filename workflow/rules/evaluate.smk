# Score segmenter k on the target val split. A checkpoint: once its CSV exists, the final table's
# input function decides whether round k + 1 is requested (rounds.max, rounds.min_delta).


checkpoint evaluate:
    input:
        unpack(evaluate_input),
    output:
        csv="results/{pair}/{uda}_{translator}/r{k}.csv",
        confusion="results/{pair}/{uda}_{translator}/r{k}.confusion.npy",
    params:
        split=lambda wc: pair_cfg(wc.pair)["evaluate"]["split"],
        class_set=lambda wc: pair_cfg(wc.pair)["evaluate"]["class_set"],
        code=CODE["segment"],
    threads: threads_for("evaluate")
    resources:
        mem_mb=resource("evaluate", "mem_mb"),
        runtime=resource("evaluate", "runtime"),
    log:
        "logs/{pair}/evaluate/{uda}_{translator}_r{k}.log",
    benchmark:
        "results/benchmarks/{pair}/evaluate/{uda}_{translator}_r{k}.tsv"
    conda:
        "../../environment.yml"
    shell:
        '"$UDA_PYTHON" -m segmenters evaluate --checkpoint {input.segmenter} --target {input.tgt}'
        " --split {params.split} --class-set {params.class_set} --round {wildcards.k} --out {output.csv}"
        " > {log} 2>&1"
