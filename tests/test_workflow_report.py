"""`snakemake --report` stops with one line when a section the configuration asks for is not in the job
graph (workflow/rules/report.smk, report_section_errors in common.smk, wflib/report_sections.py).

The working directories hold a finished minicity run written by hand (empty files, in dependency
order, so every job is up to date and the rounds checkpoint resolves from the round CSVs): nothing
trains. BDL trains on pseudo-labels from round 1 on; a run whose round 0 scored NaN stopped there,
so its report would lack the *Pseudo-labels* section.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from paper_plan import run_snakemake  # noqa: E402

TARGET = "results/minicity_bdl_none.csv"
DATA = ["data/raw/minicity/minicity.json", "data/prepared/minicity_gta5/meta.json",
        "data/prepared/minicity_cityscapes/meta.json"]


def _round(k: int, score: str) -> list[tuple[str, str]]:
    """(file, content) of round k, its inputs first."""
    run = "results/runs/minicity/bdl_none"
    pseudo = [(f"data/pseudo/minicity/bdl_none/r{k - 1}/meta.json", "{}")] if k else []
    return [*pseudo, (f"{run}/r{k}/final.pth", "x"), (f"results/minicity/bdl_none/r{k}.csv", f"round,mIoU\n{k},{score}\n"),
            (f"results/minicity/bdl_none/r{k}.confusion.npy", "x")]


def _finished_run(work: Path, scores: list[str], report_files: list[str] = ()) -> Path:
    """Files of a finished minicity bdl_none run with ``scores`` per round, older inputs first."""
    from PIL import Image

    files = [(f, "{}") for f in DATA] + [f for k, score in enumerate(scores) for f in _round(k, score)]
    files += [(f, "x") for f in report_files]
    start = time.time() - 10_000
    for i, (name, content) in enumerate(files):
        path = work / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith(".png"):
            Image.new("RGB", (4, 4)).save(path)
        else:
            path.write_text(content)
        for p in (path, path.parent):
            os.utime(p, (start + 10 * i, start + 10 * i))
    return work


def test_report_stops_naming_a_missing_section(tmp_path):
    work = _finished_run(tmp_path / "work", ["nan"])
    out = tmp_path / "report.html"
    proc = run_snakemake(work, "--report", str(out), TARGET, timeout=240)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("Report error")]
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith(f"Report error: section 'Pseudo-labels' of {TARGET} has no inputs in the job graph")
    assert "uda.bdl.pseudo_labels" in lines[0] and "stopped after round 0 (score is NaN)" in lines[0]
    assert "Traceback" not in proc.stderr and not out.exists()


def test_report_is_written_when_every_section_is_there(tmp_path):
    # rounds 0 and 1 (no improvement after round 1: stop), the table, its plot and round 0's pseudo-label grid
    work = _finished_run(tmp_path / "work", ["10", "10"],
                         ["results/plots/minicity/bdl_none/r0/pseudo.png", TARGET,
                          "results/plots/minicity_bdl_none_miou.png"])
    out = tmp_path / "report.html"
    proc = run_snakemake(work, "--report", str(out), TARGET, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Report error" not in proc.stderr and out.is_file()
