# Translator training. Round 0 (no feedback) depends only on <pair>/<translator> and is shared by
# every UDA method; rounds >= 1 fine-tune it with the previous segmenter's feedback (translators
# with `feedback: true`) under <pair>/<uda>_<translator>/r<k>/translator/. Guided translators
# (`guide:`, SPADE) train round 0 with the guide's round-0 segmenter; target_to_source ones (LDR's
# CycleGAN) swap --source and --target. Shared pieces of every training rule: training_params /
# job_resources (common.smk), wflib/rule_parts.py.


rule translator_train:
    """Round-0 translator: results/runs/<pair>/<translator>/r0/final.pt."""
    input:
        unpack(translator_r0_input),
    output:
        "results/runs/{pair}/{translator}/r0/final.pt",
    params:
        **training_params("translate", "translators", TRANSLATOR_STATE),
        config=lambda wc: translator_config_file(wc.pair, wc.translator),
        flags=lambda wc: translator_flags(wc, 0),
        guide=translator_guide_flags,
        code=translator_r0_code,
    threads: threads_for("translate")
    resources:
        **job_resources("translate", training=True),
    log:
        wfr.log_file("translate", "{translator}_r0"),
    benchmark:
        wfr.benchmark_file("translate", "{translator}_r0"),
    conda:
        "../../environment.yml"
    shell:
        wfr.translator_train_shell("--no-progress {params.guide} {params.flags}")


rule translator_finetune:
    """Round-k translator (k >= 1): fine-tuned from round k-1 with segmenter k-1 as feedback."""
    input:
        unpack(translator_round_input),
    output:
        "results/runs/{pair}/{uda}_{translator}/r{k}/translator/final.pt",
    params:
        **training_params("translate", "translators", TRANSLATOR_STATE),
        config=lambda wc: translator_config_file(wc.pair, wc.translator),
        flags=lambda wc: translator_flags(wc, int(wc.k)),
        code=CODE["translate_feedback"],
    threads: threads_for("translate")
    resources:
        **job_resources("translate", training=True),
    log:
        wfr.log_file("translate", "{uda}_{translator}_r{k}"),
    benchmark:
        wfr.benchmark_file("translate", "{uda}_{translator}_r{k}"),
    conda:
        "../../environment.yml"
    shell:
        wfr.translator_train_shell("--init {input.prev} --feedback-segmenter {input.segmenter} --no-progress {params.flags}")
