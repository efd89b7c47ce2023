"""Planning the paper-scale DAG without the real data: a fake tree in the real datasets' layout.

minicity writes GTA5 / SYNTHIA / Cityscapes trees at the real image sizes (1914x1052, 1280x760,
2048x1024) with a handful of images; ``domains prepare`` (through the workflow) converts them, and
``snakemake -n`` of any paper target then plans the same jobs it plans on the real datasets (the DAG
depends on the layout, not on the number of images). Used by ``benchmarks/paper_readiness.py`` and
the tests (``tests/test_workflow_plan.py``, ``tests/test_paper_readiness.py``).

::

    from paper_plan import build_fake_tree, run_snakemake, job_counts
    work = build_fake_tree(Path("/tmp/paper_plan"))
    out = run_snakemake(work, "-n", "results/gta2cs_sepico_semst.csv")
    job_counts(out.stdout)          # Counter({'translator_train': 1, ...})
"""
from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml

REPO = Path(__file__).resolve().parents[1]
#: the paper pairs (config/pairs/<pair>.yaml) and the datasets they read under data/raw/
PAPER_PAIRS = ("gta2cs", "syn2cs")
RAW_DATASETS = ("gta5", "synthia", "cityscapes")
#: the real datasets' image sizes (width x height)
REAL_SIZES = {"gta5_size": "1914x1052", "synthia_size": "1280x760", "target_size": "2048x1024"}


class PlanError(RuntimeError):
    """A step of building or planning the fake tree failed (the message holds the output's tail)."""


def snakemake_command(workdir: Path, *args: str, configfiles: Sequence[str | Path] = (),
                      workflow_profile: str = "none", cores: int = 2) -> list[str]:
    """``python -m snakemake`` on this repository's Snakefile in ``workdir`` with config/config.yaml
    (+ ``configfiles``) and no workflow profile unless one is named."""
    return [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
            "--configfile", str(REPO / "config/config.yaml"), *map(str, configfiles),
            "--workflow-profile", workflow_profile, "--cores", str(cores), *args]


def run_snakemake(workdir: Path, *args: str, timeout: float = 300, **kwargs: Any) -> subprocess.CompletedProcess:
    """Run :func:`snakemake_command` (output captured as text)."""
    return subprocess.run(snakemake_command(workdir, *args, **kwargs), capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def job_counts(output: str) -> Counter:
    """The 'Job stats' table of a dry-run as {rule: count} (empty when there is none)."""
    if "Job stats:" not in output:
        return Counter()
    table = output.split("Job stats:", 1)[1].split("total", 1)[0]
    return Counter({m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)})


def job_blocks(output: str) -> dict[str, list[str]]:
    """Dry-run job descriptions grouped by rule name."""
    blocks: dict[str, list[str]] = {}
    for block in re.split(r"\n(?=\[[^\]]+\]\n(?:local)?(?:rule|checkpoint) )", output):
        m = re.search(r"^(?:local)?(?:rule|checkpoint) (\w+):", block, re.M)
        if m:
            blocks.setdefault(m.group(1), []).append(block)
    return blocks


def _check(proc: subprocess.CompletedProcess, what: str) -> None:
    if proc.returncode != 0:
        raise PlanError(f"{what} failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")


def build_fake_tree(work: Path, n_images: int = 2, workers: int = 2, prepare: bool = True) -> Path:
    """``work`` as a working directory holding ``data/raw/{gta5,synthia,cityscapes}`` in the real
    layouts and sizes (``n_images`` per split) and, with ``prepare``, ``data/prepared/<dataset>``
    made by the workflow's own rules. Returns ``work``; reuses a tree already there."""
    work = Path(work)
    fake, raw = work / "fake_raw", work / "data" / "raw"
    if not (fake / "minicity.json").is_file():
        sizes = [a for k, v in REAL_SIZES.items() for a in (f"--{k.replace('_', '-')}", v)]
        gen = subprocess.run([sys.executable, "-m", "domains.minicity", "--out", str(fake), "--n-source", str(n_images),
                              "--n-train", str(n_images), "--n-val", str(n_images), *sizes, "--workers", str(workers),
                              "--no-progress"], capture_output=True, text=True, timeout=600, cwd=REPO)
        _check(gen, "python -m domains.minicity")
    raw.mkdir(parents=True, exist_ok=True)
    for name in RAW_DATASETS:  # data/raw/<dataset>, as config/pairs/*.yaml expect
        if not (raw / name).exists():
            (raw / name).symlink_to(fake / name)
    if prepare and not all((work / "data" / "prepared" / n / "meta.json").is_file() for n in RAW_DATASETS):
        _check(run_snakemake(work, *(f"data/prepared/{n}" for n in RAW_DATASETS)), "snakemake data/prepared/*")
    return work


@dataclass(frozen=True)
class PaperTarget:
    """One paper result: ``results/<pair>_<uda>_<translator>.csv`` and its last possible round."""

    pair: str
    uda: str
    translator: str
    max_round: int

    @property
    def combo(self) -> str:
        return f"{self.uda}_{self.translator}"

    @property
    def target(self) -> str:
        return f"results/{self.pair}_{self.combo}.csv"

    @property
    def last_round_target(self) -> str | None:
        """``results/<pair>/<combo>/r<max>.csv`` (plans every round up to the last), None for one round."""
        return f"results/{self.pair}/{self.combo}/r{self.max_round}.csv" if self.max_round > 0 else None


def load_yaml(path: Path) -> dict:
    """A YAML file as a dict (empty file: {})."""
    return yaml.safe_load(Path(path).read_text()) or {}


def workflow_config() -> dict:
    """config/config.yaml with its pairs loaded and the schema's defaults filled in, as the workflow
    has it (common.smk): the YAML lists only what differs from the defaults."""
    sys.path.append(str(REPO / "workflow" / "lib"))
    from wflib import pipeline_config as wfc
    from wflib import schema as wfschema

    config = load_yaml(REPO / "config/config.yaml")
    wfc.load_pairs(config, REPO, REPO)
    return wfschema.fill_defaults(config)


def paper_targets(config: dict | None = None, pairs: Sequence[str] = PAPER_PAIRS) -> list[PaperTarget]:
    """Every UDA method x translator of the config's UDA table (``tables.uda``; oracle with ``none``
    only) plus ``tables.uda.extra`` and each target-to-source UDA method with its own translator
    (LDR), for each paper pair; ``max_round`` from the method's or the pair's ``rounds.max``.
    ``config``: a workflow config with its defaults filled in (default: :func:`workflow_config`)."""
    config = workflow_config() if config is None else config
    table, uda_cfg, translators = config["tables"]["uda"], config["uda"], config["translators"]
    forward = "source_to_target"
    combos = [(u, t) for u in table["methods"] for t in table["translators"]
              if (t == "none" or u != "oracle") and (uda_cfg[u]["translator_direction"] == forward or t == "none")]
    combos += [tuple(c.split("_", 1)) for c in table["extra"]]
    for u, spec in uda_cfg.items():  # methods with their own (target -> source) translator, e.g. ldr_ldr
        direction = spec["translator_direction"]
        combos += [(u, t) for t, ts in translators.items() if direction != forward and ts["direction"] == direction]
    combos = list(dict.fromkeys(combos))
    out = []
    for pair in pairs:
        for u, t in combos:
            spec = uda_cfg[u]
            max_round = spec["rounds"].get("max", config["pairs"][pair]["rounds"]["max"]) if spec["multi_round"] else 0
            out.append(PaperTarget(pair, u, t, int(max_round)))
    return out


def plan(work: Path, target: str, *args: str, **kwargs: Any) -> tuple[bool, Counter, str]:
    """``snakemake -n <target>`` on the fake tree: (ok, job counts, output)."""
    proc = run_snakemake(work, "-n", *args, target, **kwargs)
    out = proc.stdout + proc.stderr
    return proc.returncode == 0, job_counts(out), out
