# Offline pseudo-labels on the target train split, predicted by segmenter j and consumed by round
# j + 1 (data/pseudo/<pair>/<uda>_<translator>/r<j>: PNGs + confidences.h5 + meta.json, last); in the
# warm-up order (uda.<uda>.round_labels: warmup) predicted by round k's warm-up segmenter and consumed
# by round k (.../r<k>_warmup).


rule pseudolabel:
    input:
        unpack(pseudolabel_input),
    output:
        wfs.PSEUDO,
    params:
        out=lambda wc, output: os.path.dirname(output[0]),
        flags=pseudolabel_flags,
        code=CODE["segment"],
    threads: threads_for("pseudolabel")
    resources:
        mem_mb=resource("pseudolabel", "mem_mb"),
        runtime=resource("pseudolabel", "runtime"),
    log:
        "logs/{pair}/pseudolabel/{uda}_{translator}_r{k}.log",
    benchmark:
        "results/benchmarks/{pair}/pseudolabel/{uda}_{translator}_r{k}.tsv"
    conda:
        "../../environment.yml"
    shell:
        '"$UDA_PYTHON" -m segmenters pseudolabel --checkpoint {input.segmenter} --target {input.tgt}'
        " --out {params.out} {params.flags} > {log} 2>&1"


use rule pseudolabel as pseudolabel_warmup with:
    input:
        unpack(warmup_pseudolabel_input),
    output:
        wfs.WARMUP_PSEUDO,
    log:
        "logs/{pair}/pseudolabel/{uda}_{translator}_r{k}_warmup.log",
    benchmark:
        "results/benchmarks/{pair}/pseudolabel/{uda}_{translator}_r{k}_warmup.tsv"
