"""Snakemake script of rules translation_distortion and translation_table (wflib.tables).

* translation_distortion: D = rownorm(C_translator) - rownorm(C_reference) from the two FCN-score
  confusions (no second inference); saves D (.npy) and its heat map (translators.metrics.distortion).
* translation_table: one row per translator (SemST Table 1 layout) + the published numbers of the
  configured task in a separate CSV, so they are never mixed into our rows.
"""
import logging
import sys
from pathlib import Path

if "snakemake" not in globals():  # run by hand: --help only (Snakemake runs it with a `snakemake` object)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
    from wflib.scripthelp import snakemake_only

    sys.exit(snakemake_only(__doc__, "translation_table.py", "translation_distortion, translation_table", "results/minicity_translation_table.csv"))

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "lib"))  # noqa: F821
sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1]))  # noqa: F821  (the repository: domains, translators)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from domains.io import atomic_path  # noqa: E402
from wflib import tables as wft  # noqa: E402

sm = snakemake  # noqa: F821
logging.basicConfig(filename=sm.log[0], level=logging.INFO, format="%(levelname)s %(message)s")
log = logging.getLogger("translation_table")


def class_names(n: int) -> list[str]:
    from domains.labels import CLASSES

    return list(CLASSES) if n == len(CLASSES) else [f"class_{c}" for c in range(n)]


def save_npy_atomic(array: np.ndarray, path: str) -> None:
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, array)


def distortion_job() -> None:
    from translators.metrics.distortion import distortion_matrix, plot_heatmap

    cm, cm_ref = np.load(sm.input.confusion), np.load(sm.input.reference)
    delta = distortion_matrix(cm, cm_ref)
    save_npy_atomic(delta, sm.output.delta)
    t = sm.wildcards.translator
    plot_heatmap(delta, sm.output.heatmap, class_names(delta.shape[0]),
                 title=f"{sm.wildcards.pair}: {t} \u2212 {sm.params.reference} (oracle segmenter, % of label pixels)")
    names = class_names(delta.shape[0])
    for cls in ("sky",) if "sky" in names else ():
        flows = wft.class_flows(delta, names.index(cls), names)[:3]
        log.info("%s: %s", t, ", ".join(f"{cls}->{n} {v:+.2f} pp" for n, v in flows))
    log.info("wrote %s and %s", sm.output.delta, sm.output.heatmap)


def table_job() -> None:
    s = sm.params.settings
    translators = list(sm.params.translators)
    ref = translators[0]
    deltas = dict(zip(translators[1:], sm.input.delta))
    fids = dict(zip(translators, sm.input.fid)) if "fid" in sm.input.keys() else {}
    rows = []
    for t, fcn_csv in zip(translators, sm.input.fcn):
        fcn = pd.read_csv(fcn_csv).iloc[0].to_dict()
        delta = np.load(deltas[t]) if t in deltas else None
        names = class_names(delta.shape[0]) if delta is not None else class_names(19)
        fid = pd.read_csv(fids[t]).iloc[0].to_dict() if t in fids else None
        rows.append(wft.translation_row(t, fcn, delta, names, s["watch"], s["top_flows"], fid,
                                        sm.params.descriptions.get(t, "")))
    table = wft.translation_table(rows, ref)
    wft.write_csv_atomic(table, sm.output.table)
    for note in sm.params.notes:
        log.info("note: %s", note)
    n_published = wft.write_published(sm.params.published, sm.wildcards.pair, sm.output.published,
                                       Path(sm.scriptdir).resolve().parents[1])
    log.info("wrote %s (%d translators) and %s (%d published rows)", sm.output.table, len(table),
             sm.output.published, n_published)


if sm.rule == "translation_distortion":
    distortion_job()
else:
    table_job()
