"""Translation-quality metrics (library + CLI ``python -m translators.metrics``).

* :mod:`.fcn_score` -- FCN-score: a target-trained segmenter segments (refined) source images,
  scored against the source labels (pixel accuracy, mean class accuracy, mIoU).
* :mod:`.distortion` -- semantic distortion: row-normalised label->prediction confusion on refined
  images minus the same on the untranslated source; top class flows and a heat map.
* :mod:`.fid` / :mod:`.features` -- FID and KID for any feature extractor; the FID Inception-V3
  loaded from a weights file given by path or by the registry name ``pt_inception`` (docs/weights.md).
* :mod:`.maps` -- Photo->Map RMSE and pixel accuracy at delta = 5, 10.

Every function is independent of the workflow; the CLI writes one-row CSVs atomically. Submodules
are imported lazily (``from translators.metrics.fid import fid_kid``) so that importing this package
does not load torch or MMSegmentation.
"""


class MetricsInputError(RuntimeError):
    """Bad input to a metric (missing files, weights, pairs); the message names the file and the fix."""
