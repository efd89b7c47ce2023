"""The paper-scale readiness benchmark (benchmarks/paper_readiness.py) and the guide (docs/paper_scale.md).

* the memory estimator on models whose saved-for-backward bytes are known by hand, the static
  parts (parameters, gradients, SGD momentum) and the linear extrapolation;
* the benchmark's plumbing without running the CLIs: locally built weight files resolve and load
  into the paper DeepLab-V2, the CLI steps chain to the files of the steps before them and are
  skipped when a prerequisite failed, translator crops and batch extrapolation, a ProDA memory stage;
* one planning call of the benchmark on the fake tree in the real datasets' layout
  (benchmarks/paper_plan.py), through its ``main`` (tables written);
* every shell command of docs/paper_scale.md runs: each ``snakemake`` command is dry-run (``-n``)
  on the fake tree from the repository root, every other command's program or module answers
  ``--help`` (``export`` sets a variable); YAML blocks parse; the experiment files of the guide
  turn training jobs into torchrun / srun jobs.
"""
from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import paper_plan  # noqa: E402
import paper_readiness as pr  # noqa: E402

GUIDE = REPO / "docs" / "paper_scale.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


# ----------------------------------------------------------------------------------- estimator
def _conv_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))


@pytest.mark.parametrize("h,w", [(8, 8), (16, 32)])
def test_saved_bytes_of_a_conv_net_are_counted_by_hand(h, w):
    """conv1 saves its input x (3 channels), ReLU its output (4 channels), which conv2 saves again
    (same storage: counted once); the weights are parameters (left out): 4 bytes x (3 + 4) x h x w."""
    net = _conv_net()
    with pr.SavedTensorTracker(exclude=net.parameters()) as tracker:
        net(torch.randn(1, 3, h, w)).mean().backward()
    assert tracker.peak == 4 * (3 + 4) * h * w
    assert tracker.current == 0 and not tracker.live      # everything released after backward


def test_saved_bytes_of_an_mlp_and_of_parameters():
    """Linear(4, 8) saves its input (5 x 4 floats), ReLU its output (5 x 8), shared with the second
    Linear; without the exclusion the weights the linears save are counted too."""
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    x = torch.randn(5, 4)
    with pr.SavedTensorTracker(exclude=mlp.parameters()) as tracker:
        mlp(x).sum().backward()
    assert tracker.peak == 4 * 5 * (4 + 8)
    with pr.SavedTensorTracker() as tracker:
        mlp(x).sum().backward()
    assert tracker.peak == 4 * 5 * (4 + 8) + 4 * 8 * 2     # + the second weight (the first's input x needs no grad)


def test_graph_kept_alive_holds_its_bytes_and_frees_them():
    """Peak is the high-water mark of what is alive: two graphs alive at once add up (an input both
    save is one storage, counted once); a graph freed before the next one starts does not add."""
    net = _conv_net()
    x, y = torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 8)
    with pr.SavedTensorTracker(exclude=net.parameters()) as tracker:
        a, b = net(x).mean(), net(y).mean()
        (a + b).backward()
    assert tracker.peak == 2 * 4 * (3 + 4) * 64           # x, y and the two ReLU outputs
    assert tracker.current == 0 and not tracker.live
    with pr.SavedTensorTracker(exclude=net.parameters()) as tracker:
        a, b = net(x).mean(), net(x).mean()
        (a + b).backward()
    assert tracker.peak == 4 * (3 + 4 + 4) * 64           # x once, the two ReLU outputs
    with pr.SavedTensorTracker(exclude=net.parameters()) as tracker:
        net(x).mean().backward()
        net(y).mean().backward()
    assert tracker.peak == 4 * 7 * 64
    with pr.SavedTensorTracker(exclude=net.parameters()) as tracker:
        kept = net(x).mean()                               # graph alive (not backpropagated) ...
        net(y).mean().backward()
    assert tracker.peak == 2 * 4 * 7 * 64
    assert tracker.current == 4 * 7 * 64                   # ... still holding its bytes
    del kept
    assert tracker.current == 0 and not tracker.live       # freed with the graph


def test_extrapolation_is_the_line_through_the_points():
    assert pr.extrapolate([(1.0, 3.0), (2.0, 5.0)], 10.0) == pytest.approx(21.0)
    assert pr.extrapolate([(0.0, 1.0), (1.0, 2.0), (2.0, 3.0)], 4.0) == pytest.approx(5.0)
    with pytest.raises(ValueError):
        pr.extrapolate([(1.0, 1.0)], 2.0)


def test_estimate_stage_by_hand():
    """Static bytes: parameters, their gradients and SGD momentum (one buffer per parameter); the
    activation line through 8x8 and 16x16 predicts 64x64 exactly for a conv net."""
    net = _conv_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)

    def step(size: tuple[int, int]) -> None:
        opt.zero_grad(set_to_none=True)
        net(torch.randn(1, 3, *size)).mean().backward()
        opt.step()

    stage = pr.Stage(name="conv", modules=[net], optimizers=lambda: [opt], step=step,
                     pixels=lambda s: float(s[0] * s[1]), sizes=[(8, 8), (16, 16)], full=(64, 64), full_label="64x64")
    est = pr.estimate_stage(stage)
    n_params = sum(p.numel() for p in net.parameters())     # 3*4*9 + 4 + 4*2 + 2 = 122
    assert n_params == 122
    assert est.params_gib * pr.GIB == pytest.approx(4 * 122)
    assert est.grads_gib * pr.GIB == pytest.approx(4 * 122)
    assert est.optim_gib * pr.GIB == pytest.approx(4 * 122)
    assert est.act_full_gib * pr.GIB == pytest.approx(28 * 64 * 64)
    assert est.fp32_gib == pytest.approx(est.static_gib + est.act_full_gib)
    assert est.amp_gib == pytest.approx(est.static_gib + est.act_full_gib / 2 + est.params_gib / 2)
    row = est.row(reserve_gib=2.0)
    assert row["fits 24GB fp32"] == "yes" and row["fit sizes"] == "8x8, 16x16"
    assert pr.MemoryEstimate("big", "x", 20.0, 1.0, 1.0, [("a", 0, 0), ("b", 0, 0)], 1.0).row(2.0)["fits 24GB fp32"] == "no"


def test_tables_are_written_atomically(tmp_path):
    rows = [{"a": 1, "b": 0.5}, {"a": 2, "b": 1.25}]
    pr.write_csv(tmp_path / "t.csv", rows)
    assert (tmp_path / "t.csv").read_text().splitlines() == ["a,b", "1,0.5", "2,1.25"]
    assert pr.table_text(rows).splitlines()[2] == "| 1 | 0.50 |"


def test_built_weight_files_resolve_and_load_into_the_paper_model(tmp_path, monkeypatch):
    """The locally built ResNet-101 file (the CLI part's pretrained weights) sits under its registry
    name, is what ``init_from = "resnet101_v1c"`` resolves to with $SEMST_WEIGHTS_DIR, and loads
    strictly into every backbone tensor of the paper DeepLab-V2; a second call keeps the file."""
    import segmenters  # noqa: F401
    from domains.weights import REGISTRY, WEIGHTS_DIR_ENV
    from segmenters.checkpoint import build_segmentor, load_init_weights, resolve_weights
    from segmenters.configs import load_config

    folder = pr.build_weight_files(tmp_path / "w", names=("resnet101_v1c",))
    path = folder / REGISTRY["resnet101_v1c"].filename
    assert sorted(p.name for p in folder.iterdir()) == [path.name]
    mtime = path.stat().st_mtime_ns
    assert pr.build_weight_files(folder, names=("resnet101_v1c",)) == folder and path.stat().st_mtime_ns == mtime
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(folder))
    assert resolve_weights("resnet101_v1c", "init_from") == path
    model = build_segmentor(load_config("deeplabv2", "paper", ["init_from=None"]).model)
    load_init_weights(model, "resnet101_v1c")                # strict: every backbone tensor from the file
    saved = torch.load(path, weights_only=True)
    assert torch.equal(model.backbone.layer4[2].conv3.weight, saved["layer4.2.conv3.weight"])


def test_translator_crops_are_multiples_of_4_and_batch_is_extrapolated():
    """CycleGAN's 452 crop x 0.25 becomes 112 (the translators refuse 113); its memory stage is
    measured at batch 1 and extrapolated to the config's batch 4 at full crops."""
    assert [pr.scaled_crop(452, 0.25), pr.scaled_crop(452, 0.5), pr.scaled_crop(256, 0.25), pr.scaled_crop(40, 0.1)] \
        == [112, 224, 64, 16]
    args = pr.translator_cli_args("cyclegan", Path("p"), Path("o"), 0.25)
    assert "data.crop=112" in args and "data.resize_short=128" in args
    assert args[args.index("--source") + 1] == "p/cityscapes"        # LDR's CycleGAN: target -> source
    stage = pr.translator_stage("cyclegan", [0.25, 0.5])
    assert stage.sizes == [(0.25, 1), (0.5, 1)] and stage.full == (1.0, 4)
    assert stage.pixels(stage.sizes[0]) == 112 * 112 and stage.pixels(stage.full) == 4 * 452 * 452
    assert stage.full_label == "452x452, batch 4" and pr.size_label(stage.sizes[1]) == "crops x0.5"


def test_cli_steps_chain_each_step_to_the_files_of_the_one_before(tmp_path):
    """The ProDA chain and the feedback runs read what their prerequisite writes, as the workflow does."""
    steps = {s.stage: s for s in pr.cli_steps(tmp_path, (64, 128), 0.25)}
    cli = tmp_path / "cli"

    def arg(stage: str, flag: str) -> str:
        a = steps[stage].args
        return a[a.index(flag) + 1]

    warm, proto = "segmenters train deeplabv2 paper proda_warmup", "segmenters prototypes (ProDA)"
    stage1, hard = "segmenters train deeplabv2 paper proda_stage1", "segmenters pseudolabel --rule fixed (ProDA)"
    distill = "segmenters train deeplabv2 paper proda_distill"
    assert arg(proto, "--checkpoint") == str(steps[warm].done) and steps[proto].needs == (warm,)
    assert arg(stage1, "--pseudo") == str(steps[proto].done.parent) and arg(stage1, "--init") == str(steps[warm].done)
    assert f"uda.proda.teacher={steps[warm].done}" in steps[stage1].args and steps[stage1].needs == (proto,)
    assert arg(hard, "--checkpoint") == str(steps[stage1].done)
    assert arg(hard, "--rule") == "fixed" and arg(hard, "--threshold") == "0.95"
    assert arg(distill, "--pseudo") == str(steps[hard].done.parent) and steps[distill].needs == (hard,)
    assert f"uda.proda.teacher={steps[stage1].done}" in steps[distill].args
    seg = str(cli / "deeplabv2_source_only" / "final.pth")
    spade = "translators train spade_paper (guide: DeepLab-V2)"
    r1 = "translators train semst_paper round 1 (--init, feedback DeepLab-V2)"
    assert arg(spade, "--feedback-segmenter") == seg and arg(r1, "--feedback-segmenter") == seg
    assert arg(r1, "--init") == str(steps["translators train semst_paper"].done)
    for step in steps.values():       # every prerequisite comes earlier, every run is 2 iterations
        order = list(steps)
        assert all(order.index(n) < order.index(step.stage) for n in step.needs)
        if " train " in step.stage:
            assert ("--max-iters" if step.args[1] == "segmenters" else "--iters") in step.args
    assert len(pr.cli_steps(tmp_path, (64, 128), 0.25, chains=False)) == 8


def test_cli_rows_skip_the_steps_whose_prerequisite_failed(tmp_path, monkeypatch):
    ran = []

    def fake_run(stage, args, env, done, timeout=900):
        ran.append(stage)
        ok = "proda_warmup" not in stage
        return {"stage": stage, "ok": "yes" if ok else "NO", "exit": 0 if ok else 1, "wall_s": 0.0, "note": ""}

    monkeypatch.setattr(pr, "run_cli", fake_run)
    rows = {r["stage"]: r for r in pr.cli_rows(tmp_path, tmp_path / "w", 1, (64, 128), 0.25)}
    assert rows["segmenters train deeplabv2 paper proda_warmup"]["ok"] == "NO"
    for stage in ("segmenters prototypes (ProDA)", "segmenters train deeplabv2 paper proda_stage1",
                  "segmenters pseudolabel --rule fixed (ProDA)", "segmenters train deeplabv2 paper proda_distill"):
        assert rows[stage]["ok"] == "skipped" and stage not in ran
    assert rows["segmenters prototypes (ProDA)"]["note"] == "needs segmenters train deeplabv2 paper proda_warmup"
    assert rows["translators train spade_paper (guide: DeepLab-V2)"]["ok"] == "yes"


def test_proda_stage1_memory_stage_builds_its_files_and_steps(tmp_path):
    """ProDA stage 1 reads a prototypes file and a teacher final.pth: both are built (random) in the
    aux folder, and the stage steps with soft labels; the EMA teacher counts as parameters only."""
    stage = pr.segmenter_stage("deeplabv2", "proda_stage1", [(32, 64), (64, 128)], aux=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prototypes.h5", "teacher_deeplabv2.pth"]
    est = pr.estimate_stage(stage)
    assert est.params_gib > 1.9 * est.grads_gib                 # student + EMA teacher, one optimiser
    (_, small, _), (_, large, _) = est.act_points
    assert 3.0 < large / small < 4.5                            # 4x the pixels


# ----------------------------------------------------------------------------------- planning
@pytest.fixture(scope="module")
def fake_tree(tmp_path_factory) -> Path:
    return paper_plan.build_fake_tree(tmp_path_factory.mktemp("readiness") / "tree")


def test_paper_targets_cover_each_method_and_translator():
    names = {f"{t.pair}_{t.combo}": t for t in paper_plan.paper_targets()}
    for pair in paper_plan.PAPER_PAIRS:
        for combo in ("source_only_none", "oracle_none", "bdl_semst", "bdl_cut", "sepico_semst", "proda_semst", "ldr_ldr"):
            assert f"{pair}_{combo}" in names
        assert f"{pair}_oracle_semst" not in names and f"{pair}_ldr_semst" not in names
    assert names["gta2cs_bdl_semst"].last_round_target == "results/gta2cs/bdl_semst/r3.csv"
    assert names["gta2cs_source_only_semst"].last_round_target is None


def test_benchmark_plans_a_paper_target_on_the_fake_tree(fake_tree, tmp_path):
    out = tmp_path / "out"
    threads, omp = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    levels = [logging.getLogger(n).level for n in ("", "segmenters", "translators", "mmengine")]
    handlers = list(logging.getLogger().handlers)
    assert pr.main(["--parts", "plan", "--work", str(fake_tree.parent), "--out", str(out), "--pairs", "gta2cs",
                    "--targets", "gta2cs_sepico_semst", "--threads", "1"]) == 0
    # run in-process, it leaves the thread settings as they were (later tests and their subprocesses
    # would run on one thread; `nproc` in tests/slurm/start.sh reads OMP_NUM_THREADS)
    assert (torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")) == (threads, omp)
    assert [logging.getLogger(n).level for n in ("", "segmenters", "translators", "mmengine")] == levels
    assert logging.getLogger().handlers == handlers     # nor the logging of later tests' CLIs
    lines = (out / "paper_readiness_plan.csv").read_text().splitlines()
    assert lines[0] == "pair,target,plans,jobs_r0,last_round,jobs_to_last_round,seconds"
    assert len(lines) == 2 and lines[1].startswith("gta2cs,results/gta2cs_sepico_semst.csv,yes,6,3,13,")
    assert "results/gta2cs_sepico_semst.csv | yes | 6 |" in (out / "paper_readiness.md").read_text()


# ----------------------------------------------------------------------------------- the guide
def guide_blocks() -> list[tuple[str, str]]:
    """(language, body) of every fenced block of docs/paper_scale.md."""
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(GUIDE.read_text())]


def shell_commands(body: str) -> list[list[str]]:
    """Commands of a shell block: continuation lines joined, comments dropped, split like a shell."""
    text = re.sub(r"\\\n\s*", " ", body)
    return [shlex.split(line, comments=True) for line in text.splitlines() if shlex.split(line, comments=True)]


def _env() -> dict[str, str]:
    return dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")


def _help_argv(words: list[str]) -> list[str]:
    """The command with its options dropped and ``--help`` appended (``python`` = this interpreter)."""
    keep = []
    for i, w in enumerate(words):
        if w.startswith("-") and not (words[0] == "python" and i == 1 and w == "-m"):
            break
        keep.append(w)
    if keep[0] == "python":
        keep[0] = sys.executable
    return keep + ["--help"]


@pytest.mark.slow   # ~13 snakemake dry-runs + ~8 `--help` calls: 25-90 s on 2 shared cores
def test_guide_commands_run(fake_tree):
    """Every shell command of docs/paper_scale.md runs: snakemake ones as dry-runs on the fake tree,
    the others answer --help; YAML blocks parse; the guide covers both pairs and every setup."""
    blocks = guide_blocks()
    shells = [b for lang, b in blocks if lang in ("", "sh", "bash", "shell")]
    assert len(shells) >= 6
    for lang, body in blocks:
        if lang == "yaml":
            assert isinstance(yaml.safe_load(body), dict), body
    commands = [c for body in shells for c in shell_commands(body)]
    snakemake = [c for c in commands if c[0] == "snakemake"]
    assert len(snakemake) >= 8
    # the guide covers both pairs on one GPU, 4 and 8 GPUs on a node, SLURM, and the weights
    joined = [" ".join(c) for c in snakemake]
    for needle in ("results/gta2cs_", "results/syn2cs_", "gpu=1", "paper_4gpus.yaml", "paper_8gpus.yaml",
                   "--profile profiles/slurm", "paper_slurm_2nodes.yaml"):
        assert any(needle in c for c in joined), f"no snakemake command of docs/paper_scale.md has {needle!r}"
    assert ["python", "-m", "domains.weights", "fetch"] in commands
    for words in commands:
        words = [w for w in words]
        while re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):   # VAR=value prefixes
            words = words[1:]
        if words[0] == "export":
            assert all(re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S+", w) for w in words[1:]), words
            continue
        if words[0] == "snakemake":
            argv = [sys.executable, "-m", "snakemake", *words[1:], "--directory", str(fake_tree)]
            argv += [] if "-n" in words else ["-n"]
            proc = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, env=_env(), timeout=300)
            out = proc.stdout + proc.stderr
            assert proc.returncode == 0, f"{shlex.join(words)}\n{out[-3000:]}"
            assert "Nothing to be done" in out or "Job stats:" in out, out[-2000:]
            continue
        if words[0] != "python":
            assert shutil.which(words[0]), f"{words[0]} is not on PATH"
        if words[0] == "python" and words[1] != "-m":
            assert (REPO / words[1]).is_file(), words
        proc = subprocess.run(_help_argv(words), capture_output=True, text=True, cwd=REPO, env=_env(), timeout=120)
        assert proc.returncode == 0 and proc.stdout.strip(), f"{shlex.join(_help_argv(words))}\n{proc.stderr[-2000:]}"


def test_guide_gpu_configs_request_the_gpus(fake_tree):
    """The 4-GPU / 2-node experiment files turn the training jobs into torchrun / srun jobs, and LDR's
    CycleGAN (batch 4 in its config) trains one image per GPU there."""
    def plan(*args: str, targets: tuple[str, ...] = ("results/gta2cs_sepico_semst.csv",)) -> str:
        proc = subprocess.run([sys.executable, "-m", "snakemake", *targets, "-n", "-p",
                               "--directory", str(fake_tree), *args], capture_output=True, text=True, cwd=REPO,
                              env=_env(), timeout=300)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        return proc.stdout + proc.stderr

    blocks = paper_plan.job_blocks(plan("--configfile", "config/config.yaml", "config/experiments/paper_4gpus.yaml",
                                        targets=("results/gta2cs_sepico_semst.csv", "results/gta2cs_ldr_ldr.csv")))
    seg = blocks["segmenter_train"][0]
    assert "gpu=4" in seg and "--nproc_per_node 4 -m segmenters train --launcher pytorch" in seg
    translators = {("cyclegan" if "cyclegan_paper" in b else "semst"): b for b in blocks["translator_train"]}
    for block in translators.values():
        assert "--nproc_per_node 4 -m translators train --launcher pytorch" in block
    assert "--cfg-options train.batch_size=1" in translators["cyclegan"] and "batch_size" not in translators["semst"]
    blocks = paper_plan.job_blocks(plan("--profile", "profiles/slurm", "--configfile", "config/config.yaml",
                                        "config/experiments/paper_slurm_2nodes.yaml"))
    seg = blocks["segmenter_train"][0]
    assert "nodes=2" in seg and "tasks_per_node=4" in seg and "gres=gpu:4" in seg
    assert "srun --nodes=2 --ntasks-per-node=4" in seg and "--launcher slurm" in seg
