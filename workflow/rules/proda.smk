# ProDA (segmenters/uda/proda.py) as rounds of results/<pair>_proda_<translator>.csv, one rule per stage:
#   r0  proda_warmup      --uda proda_warmup   (source CE + LS-GAN output-space adversarial)
#   r0  proda_prototypes  soft pseudo-labels + initial prototypes of the warm-up model
#   r1  proda_stage1      --uda proda_stage1   (online prototype rectification, SCE, consistency, KL reg.)
#   rk  proda_pseudolabel hard pseudo-labels of segmenter k (confidence > PRODA_THRESHOLD), k >= 1
#   r2+ proda_distill     --uda proda_distill  (stage 2, stage 3, ...: hard labels + KL self-distillation)
# Evaluation, the rounds checkpoint and the final table are the generic rules (evaluate.smk, report.smk);
# ProDA sets its own `rounds` in config.yaml (uda.proda.rounds: all four stages run, max 3), overriding the pair's.
# The generic segmenter_train / pseudolabel rules also match these paths: ruleorder gives ProDA's rules
# precedence for the `proda` combo. Input/flag functions: proda_train_input/proda_train_flags in common.smk.

# PRODA_THRESHOLD (common.smk): ProDA --threshold, ProDAConfig.threshold of segmenters/uda/proda_parts.py


ruleorder: proda_warmup > segmenter_train
ruleorder: proda_stage1 > segmenter_train
ruleorder: proda_distill > segmenter_train
ruleorder: proda_prototypes > pseudolabel
ruleorder: proda_pseudolabel > pseudolabel


PRODA_TRAIN_SHELL = (
    "{params.python} {params.launcher} --run-dir {params.out} {params.state} --key {params.code}"
    " --key-input {input} --"
    " {params.train} --arch {params.arch} --preset {params.preset} --uda {params.uda}"
    " --source {input.src} --target {input.tgt} --work-dir {params.out} {params.flags} > {log} 2>&1"
)


rule proda_warmup:
    """ProDA stage 0 (round 0): source CE + LS-GAN output-space adversarial."""
    input:
        unpack(proda_train_input(0)),
    output:
        "results/runs/{pair}/proda_{translator}/r0/final.pth",
    params:
        python=PYTHON,
        launcher=RESUMABLE,
        train=train_command("segment", "segmenters"),
        state=SEGMENTER_STATE,
        uda="proda_warmup",
        arch=lambda wc: pair_cfg(wc.pair)["segmenter"]["arch"],
        preset=lambda wc: preset_of(wc.pair),
        out=lambda wc, output: os.path.dirname(output[0]),
        flags=proda_train_flags(0),
        code=CODE["segment"],
    threads: threads_for("segment")
    resources:
        mem_mb=resource("segment", "mem_mb"),
        runtime=resource("segment", "runtime"),
        **training_resources("segment"),
    log:
        "logs/{pair}/segment/proda_{translator}_r0.log",
    benchmark:
        "results/benchmarks/{pair}/segment/proda_{translator}_r0.tsv"
    conda:
        "../../environment.yml"
    shell:
        PRODA_TRAIN_SHELL


rule proda_prototypes:
    """Soft pseudo-labels (confidences.h5 soft/<stem>) and initial prototypes (prototypes.h5) of the warm-up model."""
    input:
        segmenter="results/runs/{pair}/proda_{translator}/r0/final.pth",
        tgt=lambda wc: target_dir(wc.pair),
    output:
        "data/pseudo/{pair}/proda_{translator}/r0/meta.json",
    params:
        python=PYTHON,
        out=lambda wc, output: os.path.dirname(output[0]),
        split=lambda wc: pair_cfg(wc.pair)["pseudolabel"]["split"],
        code=CODE["segment"],
    threads: threads_for("pseudolabel")
    resources:
        mem_mb=resource("pseudolabel", "mem_mb"),
        runtime=resource("pseudolabel", "runtime"),
    log:
        "logs/{pair}/pseudolabel/proda_{translator}_r0.log",
    benchmark:
        "results/benchmarks/{pair}/pseudolabel/proda_{translator}_r0.tsv"
    conda:
        "../../environment.yml"
    shell:
        "{params.python} -m segmenters prototypes --checkpoint {input.segmenter} --target {input.tgt}"
        " --split {params.split} --out {params.out} > {log} 2>&1"


rule proda_stage1:
    """ProDA stage 1 (round 1): rectified soft pseudo-labels with prototypes, EMA teacher = warm-up model."""
    input:
        unpack(proda_train_input(1)),
    output:
        "results/runs/{pair}/proda_{translator}/r1/final.pth",
    params:
        python=PYTHON,
        launcher=RESUMABLE,
        train=train_command("segment", "segmenters"),
        state=SEGMENTER_STATE,
        uda="proda_stage1",
        arch=lambda wc: pair_cfg(wc.pair)["segmenter"]["arch"],
        preset=lambda wc: preset_of(wc.pair),
        out=lambda wc, output: os.path.dirname(output[0]),
        flags=proda_train_flags(1),
        code=CODE["segment"],
    threads: threads_for("segment")
    resources:
        mem_mb=resource("segment", "mem_mb"),
        runtime=resource("segment", "runtime"),
        **training_resources("segment"),
    log:
        "logs/{pair}/segment/proda_{translator}_r1.log",
    benchmark:
        "results/benchmarks/{pair}/segment/proda_{translator}_r1.tsv"
    conda:
        "../../environment.yml"
    shell:
        PRODA_TRAIN_SHELL


rule proda_pseudolabel:
    """Hard pseudo-labels of ProDA segmenter k >= 1 (stage k+1's targets): argmax, confidence < PRODA_THRESHOLD ignored."""
    input:
        segmenter="results/runs/{pair}/proda_{translator}/r{k}/final.pth",
        tgt=lambda wc: target_dir(wc.pair),
    output:
        "data/pseudo/{pair}/proda_{translator}/r{k}/meta.json",
    wildcard_constraints:
        k=r"[1-9][0-9]*",
    params:
        python=PYTHON,
        out=lambda wc, output: os.path.dirname(output[0]),
        split=lambda wc: pair_cfg(wc.pair)["pseudolabel"]["split"],
        threshold=PRODA_THRESHOLD,
        code=CODE["segment"],
    threads: threads_for("pseudolabel")
    resources:
        mem_mb=resource("pseudolabel", "mem_mb"),
        runtime=resource("pseudolabel", "runtime"),
    log:
        "logs/{pair}/pseudolabel/proda_{translator}_r{k}.log",
    benchmark:
        "results/benchmarks/{pair}/pseudolabel/proda_{translator}_r{k}.tsv"
    conda:
        "../../environment.yml"
    shell:
        "{params.python} -m segmenters pseudolabel --checkpoint {input.segmenter} --target {input.tgt}"
        " --split {params.split} --rule fixed --threshold {params.threshold} --out {params.out} > {log} 2>&1"


rule proda_distill:
    """ProDA stages 2, 3 (rounds k >= 2): hard pseudo-labels + KL self-distillation from segmenter k-1."""
    input:
        unpack(proda_train_input()),
    output:
        "results/runs/{pair}/proda_{translator}/r{k}/final.pth",
    wildcard_constraints:
        k=r"[2-9]|[1-9][0-9]+",
    params:
        python=PYTHON,
        launcher=RESUMABLE,
        train=train_command("segment", "segmenters"),
        state=SEGMENTER_STATE,
        uda="proda_distill",
        arch=lambda wc: pair_cfg(wc.pair)["segmenter"]["arch"],
        preset=lambda wc: preset_of(wc.pair),
        out=lambda wc, output: os.path.dirname(output[0]),
        flags=proda_train_flags(),
        code=CODE["segment"],
    threads: threads_for("segment")
    resources:
        mem_mb=resource("segment", "mem_mb"),
        runtime=resource("segment", "runtime"),
        **training_resources("segment"),
    log:
        "logs/{pair}/segment/proda_{translator}_r{k}.log",
    benchmark:
        "results/benchmarks/{pair}/segment/proda_{translator}_r{k}.tsv"
    conda:
        "../../environment.yml"
    shell:
        PRODA_TRAIN_SHELL
