# Segmenter training (MMSegmentation) of round k on the round's source images (raw or refined),
# the target, and from round 1 on the previous round's pseudo-labels, initialised from segmenter
# k-1 (pairs.<pair>.segmenter.init_from_previous).


rule segmenter_train:
    """Segmenter of round k: results/runs/<pair>/<uda>_<translator>/r<k>/final.pth."""
    input:
        unpack(segmenter_input),
    output:
        "results/runs/{pair}/{uda}_{translator}/r{k}/final.pth",
    params:
        python=PYTHON,
        launcher=RESUMABLE,
        train=train_command("segment", "segmenters"),
        state=SEGMENTER_STATE,
        arch=lambda wc: pair_cfg(wc.pair)["segmenter"]["arch"],
        preset=lambda wc: preset_of(wc.pair),
        out=lambda wc, output: os.path.dirname(output[0]),
        flags=segmenter_flags,
        code=CODE["segment"],
    threads: threads_for("segment")
    resources:
        mem_mb=resource("segment", "mem_mb"),
        runtime=resource("segment", "runtime"),
        **training_resources("segment"),
    log:
        "logs/{pair}/segment/{uda}_{translator}_r{k}.log",
    benchmark:
        "results/benchmarks/{pair}/segment/{uda}_{translator}_r{k}.tsv"
    conda:
        "../../environment.yml"
    shell:
        "{params.python} {params.launcher} --run-dir {params.out} {params.state} --key {params.code}"
        " --key-input {input} --"
        " {params.train} --arch {params.arch} --preset {params.preset} --uda {wildcards.uda}"
        " --source {input.src} --target {input.tgt} --work-dir {params.out} {params.flags} > {log} 2>&1"
