# Refine the whole source train split with a trained translator (images + manifest.json, last);
# target_to_source translators refine the target train split instead.


rule refine:
    """Round-0 refined set, shared by every UDA method: data/refined/<pair>/<translator>/r0."""
    input:
        checkpoint="results/runs/{pair}/{translator}/r0/final.pt",
        src=lambda wc: translation_domains(wc.pair, wc.translator)[0],
    output:
        "data/refined/{pair}/{translator}/r0/manifest.json",
    params:
        out=lambda wc, output: os.path.dirname(output[0]),
        code=CODE["refine"],
    threads: threads_for("refine")
    resources:
        mem_mb=resource("refine", "mem_mb"),
        runtime=resource("refine", "runtime"),
    log:
        "logs/{pair}/refine/{translator}_r0.log",
    benchmark:
        "results/benchmarks/{pair}/refine/{translator}_r0.tsv"
    conda:
        "../../environment.yml"
    shell:
        '"$UDA_PYTHON" -m translators refine --checkpoint {input.checkpoint} --source {input.src} --split train'
        " --out {params.out} --no-progress > {log} 2>&1"


rule refine_round:
    """Round-k refined set (k >= 1, feedback translators): data/refined/<pair>/<uda>_<translator>/r<k>."""
    input:
        checkpoint="results/runs/{pair}/{uda}_{translator}/r{k}/translator/final.pt",
        src=lambda wc: translation_domains(wc.pair, wc.translator)[0],
    output:
        "data/refined/{pair}/{uda}_{translator}/r{k}/manifest.json",
    params:
        out=lambda wc, output: os.path.dirname(output[0]),
        code=CODE["refine"],
    threads: threads_for("refine")
    resources:
        mem_mb=resource("refine", "mem_mb"),
        runtime=resource("refine", "runtime"),
    log:
        "logs/{pair}/refine/{uda}_{translator}_r{k}.log",
    benchmark:
        "results/benchmarks/{pair}/refine/{uda}_{translator}_r{k}.tsv"
    conda:
        "../../environment.yml"
    shell:
        '"$UDA_PYTHON" -m translators refine --checkpoint {input.checkpoint} --source {input.src} --split train'
        " --out {params.out} --no-progress > {log} 2>&1"
