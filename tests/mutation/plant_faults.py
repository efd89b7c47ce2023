"""Re-plant ten known faults, one at a time, and show that the named tests catch each.

Evidence for issue #16 ("each fault, planted again by hand, fails at least one test in make test"):
each fault is one exact text replacement in one file of a scratch copy of the committed tree
(``git archive <rev>``: tracked files only, never the working tree's edits), then
``python -m pytest -q -x -p no:cacheprovider <tests>`` runs in that copy with this Python.
pytest exit 1 (a test failed) = CAUGHT, 0 = MISSED, anything else = ERROR. A control run of every
selected test on the unmodified copy must pass, or the results mean nothing. A fault whose original
text no longer occurs exactly once "no longer applies" (an error). Writes a markdown table to
``--out``; exits 0 only when the control passes and every fault is CAUGHT.

    .venv/bin/python tests/mutation/plant_faults.py [--only NAME ...] [--rev REV] [--out F] [--keep]
"""
from __future__ import annotations

import argparse
import io
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
log = logging.getLogger("plant_faults")
EVAL, REFINE = "tests/test_segmenters_evaluate.py::", "tests/test_translator_refine.py::"
WF, PL = "tests/test_workflow_lib.py::", "tests/test_segmenters_pseudolabel.py::"
ROUNDS = [WF + "test_rounds_rule_on_whole_histories",
          WF + "test_rounds_rule_measures_from_the_best_round_not_the_previous_one"]
SAME_BYTES = WF + "test_launcher_restarts_when_an_input_is_replaced_by_same_size_same_mtime_bytes"
HASH_CACHE = WF + "test_launcher_key_hashes_content_with_a_stat_cache"


@dataclass(frozen=True)
class Fault:
    name: str
    what: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]


FAULTS = [
    Fault("argmax_before_resize", "argmax at the inference size, label map upsampled (nearest)",
          "segmenters/evaluate.py", "pred = up.argmax(dim=1)[0]",
          "pred = torch.nn.functional.interpolate(logits[i:i + 1].argmax(dim=1, keepdim=True).float(), "
          "size=tuple(label.shape), mode='nearest')[0, 0]", (EVAL + "test_evaluate_scores_a_known_model_exactly",)),
    Fault("test_scale_ignored", "images predicted at their own size (test_scale -> None)",
          "segmenters/evaluate.py", "InferenceSet([s.image for s in samples], segmenter.test_scale,",
          "InferenceSet([s.image for s in samples], None,", (EVAL + "test_evaluate_scores_a_known_model_exactly",)),
    Fault("refine_weights_not_loaded", "refine skips load_state_dict of the checkpoint's models",
          "translators/refine.py", 'method.load_state_dict(ckpt["models"])', "pass  # weights never loaded",
          (REFINE + "test_refine_pixels_equal_the_checkpoint_translation",)),
    Fault("bdl_pseudo_ce_on_source_labels", "BDL target CE against the source batch's labels",
          "segmenters/uda/bdl.py", 'self.seg_losses(feats_t, logits_t, trg["data_samples"]',
          'self.seg_losses(feats_t, logits_t, src["data_samples"]',
          ("tests/test_uda_step_losses.py::test_bdl_step_losses",)),
    Fault("rounds_vs_previous_round", "delta measured from the previous round, not the best so far",
          "workflow/lib/wflib/rounds.py", "best_before = max(previous) if previous else None",
          "best_before = previous[-1] if previous else None", tuple(ROUNDS)),
    Fault("rounds_min_delta_inclusive", "a gain of exactly min_delta stops (`<=` for `<`)",
          "workflow/lib/wflib/rounds.py", "delta is not None and delta < min_delta:",
          "delta is not None and delta <= min_delta:", tuple(ROUNDS)),
    Fault("launcher_key_size_mtime", "file inputs keyed by size + mtime, no content hash",
          "workflow/lib/wflib/launch.py", "else file_digest(name, cache) for name in inputs}",
          'else f"stat:{os.stat(name).st_size}:{os.stat(name).st_mtime_ns}" for name in inputs}',
          (SAME_BYTES, HASH_CACHE)),
    Fault("launcher_cache_size_only", "hash cache trusted on size alone (stat signature = [size])",
          "workflow/lib/wflib/launch.py", "return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]",
          "return [st.st_size]",
          (WF + "test_launcher_trusts_its_hash_cache_only_while_the_stat_signature_holds", SAME_BYTES, HASH_CACHE)),
    Fault("launcher_resumes_without_key", "state without a key file is resumed",
          "workflow/lib/wflib/launch.py", "if found and old_key is not None and old_key == key:",
          "if found and (old_key is None or old_key == key):",
          (WF + "test_launcher_never_resumes_state_without_a_key",)),
    Fault("pseudolabel_global_threshold", "bdl rule: one median over all pixels (capped) for every class",
          "segmenters/pseudolabel.py", "return np.minimum(class_order_statistics(counts, percentile / 100.0), cap)",
          "return np.full(counts.shape[0], min(class_order_statistics(counts.sum(0, keepdims=True), "
          "percentile / 100.0)[0], cap))",
          (PL + "test_apply_thresholds_keeps_confident_pixels", PL + "test_apply_thresholds_at_equal_confidences",
           PL + "test_pseudolabel_per_class_thresholds_and_cap_of_a_known_model")),
]


def extract(rev: str, dest: Path) -> None:
    """The tracked files of ``rev`` (git archive) into ``dest``."""
    tar = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", rev], check=True,
                         capture_output=True).stdout
    dest.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        tf.extractall(dest, filter="data")


def plant(tree: Path, fault: Fault) -> None:
    path = tree / fault.file
    text = path.read_text()
    count = text.count(fault.old)
    if count != 1:
        raise LookupError(f"fault no longer applies: {fault.file} has {count} occurrences of {fault.old!r}")
    path.write_text(text.replace(fault.old, fault.new))


def pytest(tree: Path, tests: list[str]) -> tuple[int, str, list[str], float]:
    """Exit code, output tail, failed test ids and seconds of pytest on ``tests`` in ``tree``
    (its packages first on the path, also for the subprocesses the tests start)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
               PYTHONDONTWRITEBYTECODE="1")
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
                          cwd=tree, env=env, capture_output=True, text=True)
    out = (done.stdout + done.stderr).splitlines()
    failed = [line[len("FAILED "):].split(" - ")[0] for line in out if line.startswith("FAILED ")]
    return done.returncode, "\n".join(out[-25:]), failed, time.monotonic() - start


def short(test: str) -> str:
    return test.split("/")[-1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="+", metavar="NAME", choices=[f.name for f in FAULTS], help="faults to plant")
    p.add_argument("--rev", default="HEAD", help="commit whose tracked files are copied (default HEAD)")
    p.add_argument("--out", type=Path, default=REPO / "build/mutation/planted_faults.md", help="markdown table")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder (its path is logged)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    faults = [f for f in FAULTS if not args.only or f.name in args.only]
    rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", "--short", args.rev + "^{commit}"],
                         capture_output=True, text=True).stdout.strip()
    if not rev:
        p.error(f"--rev {args.rev}: not a commit of {REPO}")
    scratch = Path(tempfile.mkdtemp(prefix="plant_faults_"))
    rows, ok, begin, control = [], True, time.monotonic(), "not run"
    try:
        union = list(dict.fromkeys(t for f in faults for t in f.tests))
        log.info("control: %d tests on the unmodified %s in %s", len(union), args.rev, scratch)
        extract(rev, scratch / "control")
        rc, tail, _, secs = pytest(scratch / "control", union)
        control = "PASS" if rc == 0 else f"FAIL (exit {rc})"
        ok &= rc == 0
        if rc != 0:
            log.error("control failed: the fault results below mean nothing\n%s", tail)
        rows.append(("control (unmodified)", "-", "all tests below", control, secs))
        for fault in faults:
            tree = scratch / fault.name
            extract(rev, tree)
            try:
                plant(tree, fault)
            except LookupError as err:
                log.error("%s: %s", fault.name, err)
                rows.append((fault.name, fault.file, "-", "ERROR: fault no longer applies", 0.0))
                ok = False
                continue
            log.info("%s: planted in %s; running %d test(s)", fault.name, fault.file, len(fault.tests))
            rc, tail, failed, secs = pytest(tree, list(fault.tests))
            result = {1: "CAUGHT", 0: "MISSED"}.get(rc, f"ERROR (exit {rc})")
            ok &= rc == 1
            log.info("%s: %s in %.0f s %s", fault.name, result, secs, " ".join(failed))
            if rc not in (0, 1):
                log.error("%s: pytest output tail:\n%s", fault.name, tail)
            by = {1: "<br>".join(map(short, failed)), 0: "none of " + "<br>".join(map(short, fault.tests))}.get(rc, "-")
            rows.append((f"`{fault.name}`: {fault.what}", fault.file, by, result, secs))
    finally:
        if args.keep:
            log.info("scratch kept: %s", scratch)
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    lines = ["| fault | file | caught by | result | seconds |", "|---|---|---|---|---|"]
    lines += [f"| {a} | `{b}` | {c} | {d} | {e:.0f} |" for a, b, c, d, e in rows]
    caught = sum(row[3] == "CAUGHT" for row in rows)
    table = "\n".join(lines) + (f"\n\nrev {rev}; control {control}; {caught}/{len(faults)} caught; "
                                f"total {time.monotonic() - begin:.0f} s\n")
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(f"# Planted faults (`tests/mutation/plant_faults.py`)\n\n{table}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
