# Summary tables of a pair in the SemST paper's layout (logic in workflow/lib/wflib/tables.py):
#   results/<pair>_translation_table.csv  Table 1: FCN-score, semantic distortion (+ FID/KID) per translator
#   results/<pair>_uda_table.csv          Table 2: per-class IoU and mIoU of the best round per UDA x translator
# Rows come from config key `tables` (per pair: tables.per_pair.<pair>, pairs.<pair>.tables);
# published numbers (tables.published) are written to separate *_published.csv files.

# The table names would also match final_table's results/{pair}_{combo}.csv: exclude them from
# {combo}. A global constraint applies to rules defined *after* it (Snakemake keeps a rule's
# constraints once set), so the Snakefile includes this file before report.smk.
wildcard_constraints:
    combo=table_free_combo(),


localrules:
    translation_distortion,
    translation_table,
    uda_table,


rule translation_fcn:
    """FCN-score of one translator's round-0 refined source set (translator none: the raw source)."""
    input:
        unpack(translation_fcn_input),
    output:
        csv="results/{pair}/translation/{translator}/fcn.csv",
        confusion="results/{pair}/translation/{translator}/fcn.confusion.npy",
    params:
        flags=translation_fcn_flags,
        code=metrics_code(),
    threads: threads_for("evaluate")
    resources:
        mem_mb=resource("evaluate", "mem_mb"),
        runtime=resource("evaluate", "runtime"),
    log:
        "logs/{pair}/tables/{translator}_fcn.log",
    benchmark:
        "results/benchmarks/{pair}/tables/{translator}_fcn.tsv"
    conda:
        "../../environment.yml"
    shell:
        '"$UDA_PYTHON" -m translators.metrics fcn-score --segmenter {input.segmenter} --source {input.src}'
        " {params.flags} --out {output.csv} > {log} 2>&1"


rule translation_distortion:
    """Semantic distortion of one translator vs the reference (both confusions from translation_fcn)."""
    input:
        confusion="results/{pair}/translation/{translator}/fcn.confusion.npy",
        reference=lambda wc: f"results/{wc.pair}/translation/{translation_rows(wc.pair)[0][0]}/fcn.confusion.npy",
    output:
        delta="results/{pair}/translation/{translator}/distortion.npy",
        heatmap=report(
            "results/plots/{pair}/translation/{translator}_distortion.png",
            caption="../report/tables_distortion.rst",
            category=wfrs.TABLES,
            subcategory="{pair}",
            labels={"table": "translation", "figure": "distortion {translator}"},
        ),
    params:
        reference=lambda wc: translation_rows(wc.pair)[0][0],
        code=CODE["report"],
    resources:
        mem_mb=resource("report", "mem_mb"),
        runtime=resource("report", "runtime"),
    log:
        "logs/{pair}/tables/{translator}_distortion.log",
    conda:
        "../../environment.yml"
    script:
        "../scripts/translation_table.py"


rule translation_fid:
    """FID/KID of one translator's refined set vs the target val images (only with inception_weights)."""
    input:
        unpack(translation_fid_input),
    output:
        "results/{pair}/translation/{translator}/fid.csv",
    params:
        flags=translation_fid_flags,
        code=metrics_code(),
    threads: threads_for("evaluate")
    resources:
        mem_mb=resource("evaluate", "mem_mb"),
        runtime=resource("evaluate", "runtime"),
    log:
        "logs/{pair}/tables/{translator}_fid.log",
    benchmark:
        "results/benchmarks/{pair}/tables/{translator}_fid.tsv"
    conda:
        "../../environment.yml"
    shell:
        '"$UDA_PYTHON" -m translators.metrics fid --inception-weights {input.weights} {params.flags}'
        " --out {output} > {log} 2>&1"


rule translation_table:
    """results/<pair>_translation_table.csv (SemST Table 1 layout) and the published numbers beside it."""
    input:
        unpack(translation_table_input),
    output:
        table=report(
            "results/{pair}_translation_table.csv",
            caption="../report/tables_translation.rst",
            category=wfrs.TABLES,
            subcategory="{pair}",
            labels={"table": "translation", "figure": "ours ({pair})"},
        ),
        published=report(
            "results/{pair}_translation_published.csv",
            caption="../report/tables_translation_published.rst",
            category=wfrs.TABLES,
            subcategory="{pair}",
            labels={"table": "translation", "figure": "published (SemST paper)"},
        ),
    params:
        translators=lambda wc: translation_rows(wc.pair)[0],
        descriptions=lambda wc: {t: translator_cfg(t).get("description", translator_cfg(t)["method"])
                                 for t in translation_rows(wc.pair)[0]},
        settings=lambda wc: tables_settings(wc.pair)["translation"],
        notes=translation_table_notes,
        published=lambda wc: published_params(wc, "translation"),
        code=CODE["report"],
    resources:
        mem_mb=resource("report", "mem_mb"),
        runtime=resource("report", "runtime"),
    log:
        "logs/{pair}/tables/translation_table.log",
    conda:
        "../../environment.yml"
    script:
        "../scripts/translation_table.py"


rule uda_table:
    """results/<pair>_uda_table.csv (SemST Table 2 layout) and the published numbers beside it."""
    input:
        unpack(uda_table_input),
    output:
        table=report(
            "results/{pair}_uda_table.csv",
            caption="../report/tables_uda.rst",
            category=wfrs.TABLES,
            subcategory="{pair}",
            labels={"table": "UDA", "figure": "ours ({pair})"},
        ),
        published=report(
            "results/{pair}_uda_published.csv",
            caption="../report/tables_uda_published.rst",
            category=wfrs.TABLES,
            subcategory="{pair}",
            labels={"table": "UDA", "figure": "published (SemST paper)"},
        ),
    params:
        combos=lambda wc: [list(c) for c in uda_rows(wc.pair)[0]],
        notes=lambda wc: uda_rows(wc.pair)[1],
        class_set=lambda wc: pair_cfg(wc.pair)["evaluate"]["class_set"],
        published=lambda wc: published_params(wc, "uda"),
        code=CODE["report"],
    resources:
        mem_mb=resource("report", "mem_mb"),
        runtime=resource("report", "runtime"),
    log:
        "logs/{pair}/tables/uda_table.log",
    conda:
        "../../environment.yml"
    script:
        "../scripts/uda_table.py"
