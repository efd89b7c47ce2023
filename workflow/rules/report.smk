# Final per-round table + mIoU plot, translated sample grids and pseudo-label examples (all marked
# for `snakemake --report`; the sections are wflib/report_sections.py's). `snakemake --report` stops
# with one line per missing section when a final table's configuration asks for a section (samples of
# its refined sets, pseudo-label examples) that has no file in the job graph (report_section_errors,
# common.smk; docs/pipeline.md "Report"): checked on the planned graph before Snakemake writes the report.


workflow.create_report = report_with_section_check(workflow.create_report)


localrules:
    round_plan,
    final_table,
    sample_grid,
    pseudo_grid,


rule round_plan:
    """results/<pair>/<uda>_<translator>/rounds.json: the rounds settings of a run (workflow/scripts/round_plan.py).

    An input of final_table with the same `rounds` params: Snakemake checks no params of a job that
    waits on a checkpoint round, so without it a config giving a finished run more rounds built nothing.
    """
    output:
        "results/{pair}/{combo}/rounds.json",
    params:
        rounds=rounds_param,
    log:
        "logs/{pair}/report/{combo}_rounds.log",
    conda:
        "../../environment.yml"
    script:
        "../scripts/round_plan.py"


rule final_table:
    """results/<pair>_<uda>_<translator>.csv: one row per round, per-class IoU, means, best flag."""
    input:
        unpack(final_table_input),
        # its own input item, not final_table_input's: that one is replaced by the checkpoint target
        # while a round is unfinished, and this file must stay in the job to carry the rerun
        plan="results/{pair}/{combo}/rounds.json",
    output:
        table=report(
            "results/{pair}_{combo}.csv",
            caption="../report/final_table.rst",
            category=wfrs.RESULTS,
            subcategory="{pair}",
            labels={"run": "{pair}_{combo}", "figure": "per-round table"},
        ),
        plot=report(
            "results/plots/{pair}_{combo}_miou.png",
            caption="../report/miou_plot.rst",
            category=wfrs.RESULTS,
            subcategory="{pair}",
            labels={"run": "{pair}_{combo}", "figure": "mIoU per round"},
        ),
    params:
        stages=stage_descriptions,
        rounds=rounds_param,
        code=CODE["report"],
    resources:
        mem_mb=resource("report", "mem_mb"),
        runtime=resource("report", "runtime"),
    log:
        "logs/{pair}/report/{combo}_table.log",
    conda:
        "../../environment.yml"
    script:
        "../scripts/final_table.py"


rule sample_grid:
    """Source images next to their refined versions (first rows of a refined set)."""
    input:
        manifest="data/refined/{pair}/{tag}/r{k}/manifest.json",
        src=lambda wc: refined_origin_dir(wc.pair, wc.tag),
    output:
        report(
            "results/plots/{pair}/{tag}/r{k}/samples.png",
            caption="../report/samples.rst",
            category=wfrs.SAMPLES,
            subcategory="{pair}",
            labels={"set": "{tag}", "round": "r{k}"},
        ),
    params:
        n=4,
        code=CODE["report"],
    resources:
        mem_mb=resource("report", "mem_mb"),
        runtime=resource("report", "runtime"),
    log:
        "logs/{pair}/report/{tag}_r{k}_samples.log",
    conda:
        "../../environment.yml"
    script:
        "../scripts/sample_grid.py"


rule pseudo_grid:
    """Target images, their pseudo-labels and ground truth (first rows of a pseudo-label set)."""
    input:
        meta="data/pseudo/{pair}/{tag}/{labelset}/meta.json",
        tgt=lambda wc: target_dir(wc.pair),
    output:
        report(
            "results/plots/{pair}/{tag}/{labelset}/pseudo.png",
            caption="../report/pseudo.rst",
            category=wfrs.PSEUDO,
            subcategory="{pair}",
            labels={"run": "{tag}", "from segmenter": "{labelset}"},
        ),
    params:
        n=4,
        split=lambda wc: pair_cfg(wc.pair)["pseudolabel"]["split"],
        code=CODE["report"],
    resources:
        mem_mb=resource("report", "mem_mb"),
        runtime=resource("report", "runtime"),
    log:
        "logs/{pair}/report/{tag}_{labelset}_pseudo.log",
    conda:
        "../../environment.yml"
    script:
        "../scripts/pseudo_grid.py"
