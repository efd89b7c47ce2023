# Method comparison of a pair in this working directory (one seed): every row of the UDA table
# (config key `tables.uda`) plus source_only_none and oracle_none, IoU recomputed from the round
# confusions over one class set (logic in workflow/lib/wflib/compare.py; several seeds:
# `python workflow/scripts/compare.py --pair P --runs DIR ... --out OUTDIR`, the same code).
#   results/<pair>_comparison.html   self-contained page (figure, tables, confusion heat maps)
#   results/plots/<pair>_comparison.png, results/<pair>_comparison{,_per_class,_rounds}.csv, .md
# The *_per_class/_rounds CSV names would match final_table's results/{pair}_{combo}.csv:
# table_free_combo() (common.smk) excludes them from {combo}.


localrules:
    comparison,


rule comparison:
    """results/<pair>_comparison.html: source-only, oracle and every UDA-table row side by side."""
    input:
        unpack(comparison_input),
    output:
        html=report(
            "results/{pair}_comparison.html",
            caption="../report/comparison.rst",
            category=wfrs.COMPARISON,
            subcategory="{pair}",
            labels={"pair": "{pair}", "figure": "comparison page"},
        ),
        plot=report(
            "results/plots/{pair}_comparison.png",
            caption="../report/comparison.rst",
            category=wfrs.COMPARISON,
            subcategory="{pair}",
            labels={"pair": "{pair}", "figure": "mIoU per round and gap closed"},
        ),
        summary="results/{pair}_comparison.csv",
        per_class="results/{pair}_comparison_per_class.csv",
        rounds="results/{pair}_comparison_rounds.csv",
        markdown="results/{pair}_comparison.md",
    params:
        rows=lambda wc: [list(r) for r in comparison_rows(wc.pair)],
        notes=lambda wc: uda_rows(wc.pair)[1],
        class_set=lambda wc: pair_cfg(wc.pair)["evaluate"]["class_set"],
        seed=lambda wc: pair_cfg(wc.pair)["segmenter"]["seed"],
        code=CODE["report"],
    resources:
        mem_mb=resource("report", "mem_mb"),
        runtime=resource("report", "runtime"),
    log:
        "logs/{pair}/tables/comparison.log",
    conda:
        "../../environment.yml"
    script:
        "../scripts/compare.py"
