# Translator training. Round 0 (no feedback) depends only on <pair>/<translator> and is shared by
# every UDA method; rounds >= 1 fine-tune it with the previous segmenter's feedback (translators
# with `feedback: true`) under <pair>/<uda>_<translator>/r<k>/translator/. Guided translators
# (`guide:`, SPADE) train round 0 with the guide's round-0 segmenter; target_to_source ones (LDR's
# CycleGAN) swap --source and --target.


rule translator_train:
    """Round-0 translator: results/runs/<pair>/<translator>/r0/final.pt."""
    input:
        unpack(translator_r0_input),
    output:
        "results/runs/{pair}/{translator}/r0/final.pt",
    params:
        python=PYTHON,
        launcher=RESUMABLE,
        train=train_command("translate", "translators"),
        state=TRANSLATOR_STATE,
        out=lambda wc, output: os.path.dirname(output[0]),
        flags=lambda wc: translator_flags(wc, 0),
        guide=translator_guide_flags,
        code=translator_r0_code,
    threads: threads_for("translate")
    resources:
        mem_mb=resource("translate", "mem_mb"),
        runtime=resource("translate", "runtime"),
        **training_resources("translate"),
    log:
        "logs/{pair}/translate/{translator}_r0.log",
    benchmark:
        "results/benchmarks/{pair}/translate/{translator}_r0.tsv"
    conda:
        "../../environment.yml"
    shell:
        "{params.python} {params.launcher} --run-dir {params.out} {params.state} --key {params.code}"
        " --key-input {input} --"
        " {params.train} --config {input.config} --source {input.src} --target {input.tgt}"
        " --out {params.out} --no-progress {params.guide} {params.flags} > {log} 2>&1"


rule translator_finetune:
    """Round-k translator (k >= 1): fine-tuned from round k-1 with segmenter k-1 as feedback."""
    input:
        unpack(translator_round_input),
    output:
        "results/runs/{pair}/{uda}_{translator}/r{k}/translator/final.pt",
    params:
        python=PYTHON,
        launcher=RESUMABLE,
        train=train_command("translate", "translators"),
        state=TRANSLATOR_STATE,
        out=lambda wc, output: os.path.dirname(output[0]),
        flags=lambda wc: translator_flags(wc, int(wc.k)),
        code=CODE["translate_feedback"],
    threads: threads_for("translate")
    resources:
        mem_mb=resource("translate", "mem_mb"),
        runtime=resource("translate", "runtime"),
        **training_resources("translate"),
    log:
        "logs/{pair}/translate/{uda}_{translator}_r{k}.log",
    benchmark:
        "results/benchmarks/{pair}/translate/{uda}_{translator}_r{k}.tsv"
    conda:
        "../../environment.yml"
    shell:
        "{params.python} {params.launcher} --run-dir {params.out} {params.state} --key {params.code}"
        " --key-input {input} --"
        " {params.train} --config {input.config} --source {input.src} --target {input.tgt}"
        " --out {params.out} --init {input.prev} --feedback-segmenter {input.segmenter} --no-progress {params.flags}"
        " > {log} 2>&1"
