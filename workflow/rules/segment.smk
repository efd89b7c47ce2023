# Segmenter training (MMSegmentation) of round k on the round's source images (raw or refined),
# the target, and from round 1 on the previous round's pseudo-labels, initialised from segmenter
# k-1 (pairs.<pair>.segmenter.init_from_previous). The launcher, params, resources, log and shell
# shared by every training rule: training_params / job_resources (common.smk), wflib/rule_parts.py.


rule segmenter_train:
    """Segmenter of round k: results/runs/<pair>/<uda>_<translator>/r<k>/final.pth."""
    input:
        unpack(segmenter_input),
    output:
        wfs.SEGMENTER,
    params:
        **training_params("segment", "segmenters", SEGMENTER_STATE),
        **segmenter_params(),
        flags=segmenter_flags,
        code=CODE["segment"],
    threads: threads_for("segment")
    resources:
        **job_resources("segment", training=True),
    log:
        wfr.log_file("segment", "{uda}_{translator}_r{k}"),
    benchmark:
        wfr.benchmark_file("segment", "{uda}_{translator}_r{k}"),
    conda:
        "../../environment.yml"
    shell:
        wfr.segmenter_train_shell("{wildcards.uda}")


# Warm-up segmenter of round k >= 1 (uda.<uda>.round_labels: warmup; BDL's Algorithm 1, the round's
# M0): segmenter_train's job on round k's source and iterations without pseudo-labels; its labels
# (pseudolabel_warmup) and, with init_from_previous, its weights then train round k.
use rule segmenter_train as segmenter_warmup with:
    input:
        unpack(warmup_input),
    output:
        wfs.WARMUP_SEGMENTER,
    log:
        wfr.log_file("segment", "{uda}_{translator}_r{k}_warmup"),
    benchmark:
        wfr.benchmark_file("segment", "{uda}_{translator}_r{k}_warmup"),
