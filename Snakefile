# Two-stage UDA pipeline for street-scene segmentation (docs/design.md): data -> translator -> refined
# source set -> segmenter (UDA) -> pseudo-labels -> next round, until target mIoU stops improving.
# Targets: results/<pair>_<uda>_<translator>.csv, e.g.
#   snakemake --cores 2 --profile workflow/profiles/default results/minicity_bdl_semst.csv
# and results/<pair>_comparison.html (every row of the UDA table beside source-only and oracle).
# Rules are thin calls of the package CLIs (python -m domains|translators|segmenters ...).

# config/config.yaml of the working directory when it has one (`--directory`), else the repository's
configfile: "config/config.yaml" if os.path.exists("config/config.yaml") else f"{workflow.basedir}/config/config.yaml"


include: "workflow/rules/common.smk"


# The stage CLIs run this repository's packages (also on cluster nodes and when the package is
# not pip-installed): the repository goes first on PYTHONPATH of every shell command.
shell.prefix(SHELL_PREFIX)


wildcard_constraints:
    **WILDCARDS,


report: "workflow/report/workflow.rst"


localrules:
    all,


rule all:
    default_target: True
    input:
        default_targets,
    log:
        "logs/all.log",
    conda:
        "environment.yml"
    shell:
        "echo built: {input} > {log}"


include: "workflow/rules/data.smk"
include: "workflow/rules/translate.smk"
include: "workflow/rules/refine.smk"
include: "workflow/rules/segment.smk"
include: "workflow/rules/pseudolabel.smk"
include: "workflow/rules/stages.smk"
include: "workflow/rules/evaluate.smk"
# tables.smk before report.smk: it narrows {combo} so results/<pair>_<table>.csv is not a final table
include: "workflow/rules/tables.smk"
# method comparison page; its results/<pair>_comparison_*.csv are kept out of {combo} by table_free_combo()
include: "workflow/rules/compare.smk"
include: "workflow/rules/report.smk"
