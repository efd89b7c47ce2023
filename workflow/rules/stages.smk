# Multi-stage UDA methods (ProDA): every round of such a method is a training stage of its own, and
# the pseudo-labels between rounds may come from another CLI. The stages are data, in
# workflow/lib/wflib/stages.py (METHODS); this file expands each stage into one rule, named as the
# stage (ProDA: proda_warmup r0, proda_prototypes r0, proda_stage1 r1, proda_pseudolabel r>=1,
# proda_distill r>=2), that takes precedence over the generic segmenter_train / pseudolabel rule for
# its method's paths. A new multi-stage method is a new entry there, not a rule here.
#   training stage:     segmenters train --uda <stage.uda> on the round's generic inputs (segmenter_input:
#                       source, target, refined set, previous pseudo-labels, --init) + the previous round's
#                       segmenter as --cfg-options <teacher_option>=... when stage.teacher
#   pseudo-label stage: segmenters <stage.command> --checkpoint <the round's segmenter> ... <stage.args>
# Evaluation, the rounds checkpoint and the final table are the generic rules (evaluate.smk, report.smk);
# a method's `uda.<name>.rounds` in config.yaml (ProDA: all four stages run) overrides the pair's.
# Input/flag functions: stage_train_input / stage_train_flags in common.smk.

for _method in wfs.METHODS.values():
    for _stage in wfs.rule_order(_method):
        workflow.ruleorder(_stage.rule, wfs.GENERIC_RULE[_stage.kind])
        if _stage.kind == "train":

            rule:
                name:
                    _stage.rule
                input:
                    unpack(stage_train_input(_method, _stage)),
                output:
                    wfs.segmenter_path(_method, _stage.rounds),
                wildcard_constraints:
                    **_stage.rounds.constraints,
                params:
                    **training_params("segment", "segmenters", SEGMENTER_STATE),
                    uda=_stage.uda,
                    **segmenter_params(),
                    flags=stage_train_flags(_method, _stage),
                    code=CODE["segment"],
                threads: threads_for("segment")
                resources:
                    **job_resources("segment", training=True),
                log:
                    wfr.log_file("segment", wfs.job_name(_method, _stage.rounds)),
                benchmark:
                    wfr.benchmark_file("segment", wfs.job_name(_method, _stage.rounds)),
                conda:
                    "../../environment.yml"
                shell:
                    wfr.segmenter_train_shell("{params.uda}")

        else:

            rule:
                name:
                    _stage.rule
                input:
                    segmenter=wfs.segmenter_path(_method, _stage.rounds),
                    tgt=lambda wc: target_dir(wc.pair),
                output:
                    wfs.pseudo_path(_method, _stage.rounds),
                wildcard_constraints:
                    **_stage.rounds.constraints,
                params:
                    out=run_dir,
                    split=lambda wc: pair_cfg(wc.pair)["pseudolabel"]["split"],
                    **wfs.stage_values(_method, _stage, STAGE_VALUES[_method.uda]),
                    **wfs.pseudo_params(_stage, wfs.stage_values(_method, _stage, STAGE_VALUES[_method.uda])),
                    code=CODE["segment"],
                threads: threads_for("pseudolabel")
                resources:
                    **job_resources("pseudolabel"),
                log:
                    wfr.log_file("pseudolabel", wfs.job_name(_method, _stage.rounds)),
                benchmark:
                    wfr.benchmark_file("pseudolabel", wfs.job_name(_method, _stage.rounds)),
                conda:
                    "../../environment.yml"
                shell:
                    wfs.PSEUDO_SHELL  # not built from _stage: Snakemake evaluates shell: again at run time

        workflow.get_rule(_stage.rule).docstring = _stage.doc
