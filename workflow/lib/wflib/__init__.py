"""Pure helpers of the Snakemake workflow (no ML logic, no Snakemake imports).

Kept out of the Snakefile so they are unit-testable: the config schema, the one source of the
workflow's defaults (:mod:`wflib.schema`), defaults read from the stage packages' sources
(:mod:`wflib.stage_defaults`), multi-stage methods as data (:mod:`wflib.stages`), the training
rules' shared shell and file-name pieces (:mod:`wflib.rule_parts`), the report's sections
(:mod:`wflib.report_sections`), config loading and name checks
(:mod:`wflib.pipeline_config`), the stage CLIs' overrides checked by their own config loaders
(:mod:`wflib.validate`), round decisions (:mod:`wflib.rounds`), source hashing
(:mod:`wflib.codehash`), resumable launching (:mod:`wflib.launch`), multi-process training
commands and SLURM resources (:mod:`wflib.distributed`), figures
(:mod:`wflib.figures`), summary tables (:mod:`wflib.tables`, :mod:`wflib.table`) and the
multi-seed method comparison (:mod:`wflib.compare`). The stage packages (domains, segmenters,
translators) never import this.
"""
