"""Bad input gets one clear message, exit code 2, no traceback, and leaves nothing behind (docs/errors.md).

One test per case of issue #15 point 4 (parametrised over the ways a file can be bad). Each asserts:
exit code 2, a message of at most 5 lines that names the file or config key, no "Traceback", never
torch's advice to load with ``weights_only=False``, and, where a command writes a folder, that none
was created. The CLIs run in-process through their ``main(argv)``; a subprocess only where the entry
point itself is under test (Snakemake's config checks, the scripts' ``--help``).
"""
from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
UNSAFE_ADVICE = ("weights_only=False", "will likely succeed", "add_safe_globals")
# log lines of other levels (the CLIs' progress) are not part of the error message
_LOG_LINE = re.compile(r"^(?:\S+ \S+ )?(?:INFO|WARNING|DEBUG)\b")


def message_lines(text: str) -> list[str]:
    """The lines of ``text`` that belong to the error (not progress logging, not blank)."""
    return [line for line in text.splitlines() if line.strip() and not _LOG_LINE.match(line)]


def assert_one_clear_message(text: str, *names: str) -> str:
    """<= 5 lines naming every one of ``names``, no traceback, no weights_only=False advice."""
    lines = message_lines(text)
    message = "\n".join(lines)
    assert 1 <= len(lines) <= 5, message
    assert "Traceback" not in text, text
    for bad in UNSAFE_ADVICE:
        assert bad not in text, text
    for name in names:
        assert name in message, message
    return message


# ------------------------------------------------------------------ bad files, built in the test
def _truncated(path: Path) -> Path:
    torch.save({"state_dict": {"w": torch.zeros(64, 64)}}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _text(path: Path) -> Path:
    path.write_text("this is a text file, not a checkpoint\n")
    return path


def _no_meta(path: Path) -> Path:
    torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    return path


def _pickles_objects(path: Path) -> Path:
    torch.save({"state_dict": {"w": np.zeros(3)}}, path)   # a numpy array: needs full unpickling
    return path


def _three_bytes(path: Path) -> Path:
    """A legacy-format file cut after 3 bytes: torch's weights-only unpickler advises weights_only=False."""
    torch.save({"w": torch.zeros(2)}, path, _use_new_zipfile_serialization=False)
    path.write_bytes(path.read_bytes()[:3])
    return path


def _wrong_arch(path: Path) -> Path:
    torch.save({"conv.weight": torch.zeros(4, 3, 3, 3)}, path)
    return path


def _vgg16(path: Path) -> Path:
    import torchvision

    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])   # VGG16, not VGG19
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    return path


BAD_CHECKPOINTS = {"truncated": _truncated, "text": _text, "no_meta": _no_meta}


# ------------------------------------------------------------------ 1. segmenter inference CLIs
@pytest.mark.parametrize("kind", sorted(BAD_CHECKPOINTS))
@pytest.mark.parametrize("command", ["evaluate", "pseudolabel", "prototypes"])
def test_segmenter_cli_refuses_a_bad_checkpoint(command, kind, tiny_prepared, tmp_path, capsys):
    from segmenters.__main__ import main

    bad = BAD_CHECKPOINTS[kind](tmp_path / f"{kind}.pth")
    out = tmp_path / ("out.csv" if command == "evaluate" else "out")
    argv = [command, "--checkpoint", str(bad), "--target", str(tiny_prepared["target"]), "--out", str(out),
            "--device", "cpu"]
    assert main(argv) == 2
    message = assert_one_clear_message(capsys.readouterr().err, str(bad))
    assert "final.pth" in message                    # what the file should be
    assert not out.exists()


# ------------------------------------------------------------------ 2. LDR's VGG19 weights
@pytest.mark.parametrize("make", [_wrong_arch, _vgg16, _truncated, _pickles_objects],
                         ids=["wrong_keys", "vgg16", "truncated", "pickles_objects"])
def test_ldr_refuses_bad_vgg19_weights_before_the_runner(make, tiny_prepared, tmp_path, capsys):
    from segmenters.__main__ import main

    bad = make(tmp_path / "vgg19.pth")
    work = tmp_path / "work"
    argv = ["train", "--arch", "fcn8s", "--preset", "tiny", "--uda", "ldr", "--source", str(tiny_prepared["source"]),
            "--target", str(tiny_prepared["target"]), "--work-dir", str(work), "--max-iters", "1", "--workers", "0",
            "--cfg-options", f"uda.vgg19_weights={bad}"]
    assert main(argv) == 2
    message = assert_one_clear_message(capsys.readouterr().err, str(bad))
    assert "vgg19" in message.lower() and "python -m domains.weights fetch vgg19" in message
    assert not work.exists()


# ------------------------------------------------------------------ 3./4. the workflow config
def _snakemake(workdir: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(REPO / "config" / "config.yaml"), "--workflow-profile", "none", "--cores", "1",
           "-n", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)


def _snakemake_error(result: subprocess.CompletedProcess) -> str:
    # Snakemake's own notice that --config extends the config file is not part of the error
    return "\n".join(line for line in (result.stdout + result.stderr).splitlines()
                     if not line.startswith("Config file ") or "extended" not in line)


@pytest.mark.parametrize("config, names", [
    ("bogus_key=1", ["'bogus_key'", "pairs_dir, pairs, targets"]),
    ("pairs={minicity: {segmentr: {seed: 1}}}", ["'pairs.minicity.segmentr'", "did you mean 'segmenter'"]),
], ids=["top_level", "in_a_pair"])
def test_workflow_schema_error_is_the_key_and_the_reason(config, names, tmp_path):
    result = _snakemake(tmp_path, "--config", config)
    assert result.returncode == 2, result.stdout + result.stderr
    text = _snakemake_error(result)
    message = assert_one_clear_message(text, "Config error", "unknown config key", *names)
    assert "$schema" not in text and "additionalProperties" not in text    # no schema dump
    assert not any(tmp_path.iterdir()) or sorted(p.name for p in tmp_path.iterdir()) == [".snakemake"], message


@pytest.mark.parametrize("pair, hint", [("nopair", ""), ("minicty", "did you mean 'minicity'?")],
                         ids=["undefined", "typo"])
def test_workflow_override_of_an_undefined_pair_says_so(pair, hint, tmp_path):
    result = _snakemake(tmp_path, "--config", f"pairs={{{pair}: {{segmenter: {{seed: 1}}}}}}")
    assert result.returncode == 2, result.stdout + result.stderr
    message = assert_one_clear_message(_snakemake_error(result), f"pair '{pair}' is not defined",
                                       "gta2cs, minibench, minicity, syn2cs", "source, target, preset", hint)
    assert "'source' is a required property" not in message
    assert not (tmp_path / "data").exists() and not (tmp_path / "results").exists()


def test_workflow_schema_error_message_without_snakemake():
    """wflib's formatter on jsonschema's own errors (the unit under the two tests above)."""
    import jsonschema
    import yaml

    sys.path.insert(0, str(REPO / "workflow" / "lib"))
    from wflib.pipeline_config import schema_error_message

    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config["pairs"] = {"newpair": {"preset": "tiny"}}
    error = jsonschema.Draft202012Validator(schema).iter_errors(config).__next__()
    new_pair = schema_error_message(error, ["minicity"])
    assert "pair 'newpair' is not defined (defined: minicity)" in new_pair and "(missing: source, target)" in new_pair
    config["pairs"] = {"minicity": {"source": {"name": "a", "format": "gta5"}, "target": {"name": "b", "format": "x"},
                                    "preset": "tiny"}}
    error = next(iter(jsonschema.Draft202012Validator(schema).iter_errors(config)))
    assert schema_error_message(error, ["minicity"]) == ("config key 'pairs.minicity.target.format' = 'x': must be "
                                                         "one of gta5, synthia, cityscapes")


# ------------------------------------------------------------------ 5. a missing pseudo-label folder
def test_missing_pseudo_label_folder_is_named_not_a_template(tiny_prepared, tmp_path, capsys):
    from segmenters.__main__ import main

    pseudo, work = tmp_path / "no_pseudo", tmp_path / "work"
    argv = ["train", "--arch", "deeplabv2", "--preset", "tiny", "--uda", "bdl", "--source", str(tiny_prepared["source"]),
            "--target", str(tiny_prepared["target"]), "--pseudo", str(pseudo), "--work-dir", str(work),
            "--max-iters", "1", "--workers", "0"]
    assert main(argv) == 2
    message = assert_one_clear_message(capsys.readouterr().err, str(pseudo))
    assert "{label_dir}" not in message and f"--out {pseudo}" in message
    assert not work.exists()


# ------------------------------------------------------------------ 6. never torch's weights_only=False advice
def _load_translator(path):
    from translators.checkpoint import load_checkpoint

    return load_checkpoint(path)


def _load_inception(path):
    from translators.metrics.features import load_inception

    return load_inception(path)


def _load_vgg19(path):
    from segmenters.uda.ldr_parts import load_vgg19_features

    return load_vgg19_features(path)


def _load_segmenter(path):
    from segmenters.loader import load_segmenter

    return load_segmenter(path)


def _load_init(path):
    from segmenters.checkpoint import build_segmentor, load_init_weights
    from segmenters.configs import load_config

    return load_init_weights(build_segmentor(load_config("fcn8s", "tiny").model, device="meta"), path)


def _load_ema_teacher(path):
    from segmenters.uda.ema import load_teacher_state

    return load_teacher_state(torch.nn.Linear(2, 2), path)


LOADERS = {"translator": (_load_translator, "python -m translators train"),
           "inception": (_load_inception, "python -m domains.weights fetch pt_inception"),
           "vgg19": (_load_vgg19, "python -m domains.weights fetch vgg19"),
           "segmenter": (_load_segmenter, "final.pth"),
           "segmenter_init": (_load_init, "state dict"),
           "ema_teacher": (_load_ema_teacher, "final.pth")}


@pytest.mark.parametrize("make", [_pickles_objects, _three_bytes, _truncated],
                         ids=["pickles_objects", "three_bytes", "truncated"])
@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_weight_loaders_never_pass_on_weights_only_advice(loader, make, tmp_path):
    load, expected = LOADERS[loader]
    bad = make(tmp_path / "weights.pth")
    with pytest.raises(Exception) as err:  # noqa: PT011 - each loader's own error type
        load(bad)
    assert_one_clear_message(str(err.value), str(bad))
    if make is not _truncated:     # what the file should be (where the loader can tell)
        assert expected in str(err.value), str(err.value)


def test_short_message_strips_torch_advice_from_any_text(tmp_path):
    from domains.errors import short_message, torch_load_problem

    with pytest.raises(Exception) as err:  # noqa: PT011 - torch's own error
        torch.load(_pickles_objects(tmp_path / "objects.pth"), weights_only=True)
    raw = err.value
    assert "weights_only` set to `False`" in str(raw)          # torch's text gives that advice ...
    cleaned = short_message(raw)                               # ... and what a CLI prints does not
    assert not any(a in cleaned for a in ("set to `False`", "will likely succeed", "safe_globals", "trusted source"))
    assert "numpy" in torch_load_problem(raw) and "False" not in torch_load_problem(raw)
    assert len(short_message("\n".join(map(str, range(20)))).splitlines()) == 5


# ------------------------------------------------------------------ 7. translator --init
@pytest.mark.parametrize("make", [_pickles_objects, _text, _no_meta], ids=["pickles_objects", "text", "not_a_translator"])
def test_translator_train_refuses_bad_init_before_creating_the_run_folder(make, tiny_prepared, tmp_path, caplog):
    from translators.__main__ import main

    bad = make(tmp_path / "init.pt")
    out = tmp_path / "run"
    argv = ["train", "--config", str(REPO / "translators/configs/cut_tiny.yaml"), "--source",
            str(tiny_prepared["source"]), "--target", str(tiny_prepared["target"]), "--out", str(out),
            "--init", str(bad), "--iters", "1", "--device", "cpu", "--no-progress"]
    with caplog.at_level(logging.INFO):
        assert main(argv) == 2
    errors = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)
    message = assert_one_clear_message(errors, str(bad))
    assert "translators train" in message
    assert not out.exists()


# ------------------------------------------------------------------ 8. every script answers --help
SCRIPTS = sorted([*(p for p in (REPO / "workflow/scripts").iterdir() if p.suffix in (".py", ".sh")),
                  *(REPO / "benchmarks").glob("*.py")])


@pytest.mark.parametrize("script", SCRIPTS, ids=[f"{p.parent.name}/{p.name}" for p in SCRIPTS])
def test_every_script_answers_help(script):
    cmd = ["bash", str(script), "--help"] if script.suffix == ".sh" else [sys.executable, str(script), "--help"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    text = script.read_text()
    if script.suffix == ".sh" or '__name__ == "__main__"' in text or '"snakemake" not in globals()' in text:
        # a script (not a helper module such as benchmarks/paper_plan.py) says what it does
        assert result.stdout.strip(), f"{script}: --help printed nothing"


def test_show_table_refuses_a_missing_or_malformed_table(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("show_table", REPO / "workflow/scripts/show_table.py")
    show_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(show_table)
    not_a_table = tmp_path / "x.csv"
    not_a_table.write_text("a,b\n1,2\n")
    for path in (tmp_path / "missing.csv", not_a_table):
        assert show_table.main([str(path)]) == 2
        assert_one_clear_message(capsys.readouterr().err, str(path))


# ------------------------------------------------------------------ 9. translators --help lists every method
def test_translators_help_lists_every_registered_method(capsys):
    from translators.__main__ import main
    from translators.config import METHODS as CONFIG_METHODS
    from translators.methods import LAZY_METHODS, METHODS

    for argv in (["--help"], ["train", "--help"]):
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code == 0
        text = " ".join(capsys.readouterr().out.split())
        labels = [cls.__name__ for cls in METHODS.values()] + [cls for _, cls in LAZY_METHODS.values()]
        for name, label in zip([*METHODS, *LAZY_METHODS], labels):
            assert f"{label} ({name})" in text, text
        assert {"CUT", "SemST", "CycleGAN", "SpadeGuided"} <= set(labels)
        assert set(CONFIG_METHODS) == {*METHODS, *LAZY_METHODS}          # one list of methods


# ------------------------------------------------------------------ --debug / SEMST_DEBUG=1
def test_debug_shows_the_traceback(tiny_prepared, tmp_path, monkeypatch):
    from segmenters.__main__ import main as segmenters_main
    from translators.__main__ import main as translators_main
    from translators.checkpoint import CheckpointError

    bad = _text(tmp_path / "bad.pth")
    argv = ["evaluate", "--checkpoint", str(bad), "--target", str(tiny_prepared["target"]), "--out",
            str(tmp_path / "o.csv")]
    with pytest.raises(ValueError, match="bad.pth"):
        segmenters_main([*argv, "--debug"])
    refine = ["refine", "--checkpoint", str(bad), "--source", str(tiny_prepared["source"]), "--out",
              str(tmp_path / "r"), "--no-progress"]
    with pytest.raises(CheckpointError, match="bad.pth"):
        translators_main(["--debug", *refine])
    assert translators_main(refine) == 2
    monkeypatch.setenv("SEMST_DEBUG", "1")
    with pytest.raises(ValueError, match="bad.pth"):
        segmenters_main(argv)
    with pytest.raises(CheckpointError, match="bad.pth"):
        translators_main(refine)
