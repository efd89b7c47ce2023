"""Plan-time checks of the overrides the jobs get (issue #15 point 3; workflow/lib/wflib/validate.py).

A translator's ``--cfg-options`` (``pairs.<pair>.translator.cfg_options``, ``translators.<t>.cfg_options``)
and a segmenter's (``pairs.<pair>.segmenter.cfg_options``, ``uda.<u>.cfg_options``) are handed to the
loaders the jobs use; an unknown or ill-typed key stops ``snakemake -n`` with exit 2 and one line
naming the config key, before any job. Unit tests of the pure functions, then Snakemake itself.
"""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO / "workflow" / "lib"))  # appended: a mutation run puts its mutated wflib first

from test_bad_inputs import _snakemake_error, assert_one_clear_message  # noqa: E402
from test_workflow_config import snakemake  # noqa: E402
from wflib import pipeline_config as wfc  # noqa: E402
from wflib import validate as wfv  # noqa: E402

EXPERIMENTS = sorted((REPO / "config" / "experiments").glob("*.yaml"))


def workflow_config(*overlays: dict) -> dict:
    """config/config.yaml with ``overlays`` merged as Snakemake merges --configfile files, the pairs
    loaded and the schema's defaults filled in: what common.smk checks."""
    from snakemake.utils import update_config, validate

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for overlay in overlays:
        update_config(config, copy.deepcopy(overlay))
    wfc.load_pairs(config, REPO, REPO)
    validate(config, str(REPO / "workflow" / "schemas" / "config.schema.yaml"))
    return config


def refusal(*overlays: dict) -> str:
    with pytest.raises(wfc.ConfigError) as info:
        wfv.check_overrides(workflow_config(*overlays), REPO)
    return str(info.value)


# ---------------------------------------------------------------- what the jobs get
def test_overrides_are_merged_as_the_rules_pass_them():
    config = workflow_config({"pairs": {"minicity": {"translator": {"cfg_options": {"train.lr": 1e-4,
                                                                                     "loss.lambda_TS": 0.5}},
                                                     "segmenter": {"cfg_options": {"init_from": None}}}},
                              "translators": {"semst": {"cfg_options": {"loss.lambda_TS": 1.0}}},
                              "uda": {"bdl": {"cfg_options": {"optim_wrapper.optimizer.lr": 0.02}}}})
    sets = wfv.translator_overrides(config, "minicity", "semst")
    assert [(o.key, o.value, o.origin) for o in sets] == [
        ("train.lr", 1e-4, "pairs.minicity.translator.cfg_options"),
        ("loss.lambda_TS", 1.0, "translators.semst.cfg_options")]
    assert wfv.cfg_option_items(sets) == ["train.lr=0.0001", "loss.lambda_TS=1.0"]
    options = wfv.segmenter_overrides(config, "minicity", "bdl")
    # the pair file's optim_wrapper.optimizer.lr keeps its place and takes the method's value
    assert [o.origin for o in options] == ["uda.bdl.cfg_options", "pairs.minicity.segmenter.cfg_options"]
    # mmengine's DictAction reads None, not YAML's null (which would become the string 'null')
    assert wfv.cfg_option_items(options) == ["optim_wrapper.optimizer.lr=0.02", "init_from=None"]
    assert wfv.translator_config_path(REPO, "semst", "tiny") == REPO / "translators/configs/semst_tiny.yaml"


@pytest.mark.parametrize("overlay", [None, *EXPERIMENTS], ids=["config.yaml", *(p.stem for p in EXPERIMENTS)])
def test_every_shipped_config_validates(overlay):
    config = workflow_config(*([yaml.safe_load(overlay.read_text())] if overlay else []))
    assert any(wfv.segmenter_overrides(config, p, "bdl") for p in config["pairs"])  # the pairs' lr is checked
    wfv.check_overrides(config, REPO)


def test_valid_overrides_pass():
    wfv.check_overrides(workflow_config(
        {"pairs": {"minicity": {"translator": {"cfg_options": {"train.lr": 1e-4, "semst.gan_on": ["fused", "local"]}},
                                "segmenter": {"cfg_options": {"uda.lambda_adv": 1e-4, "crop_size": [64, 128],
                                                              "amp": False, "param_scheduler.0.power": 1}}},
                   "gta2cs": {"segmenter": {"cfg_options": {"init_from": None}}}},
         "translators": {"semst": {"cfg_options": {"loss.lambda_TS": 1, "refine.tile": None,
                                                   "loss.nce_layers": [0, 4]}}},
         "uda": {"bdl": {"cfg_options": {"uda.lambda_pseudo": 0.8}}}},
    ), REPO)
    # a key only the tiny preset has is fine for a tiny pair, and refused where a paper pair would get it
    sepico = {"uda": {"sepico": {"cfg_options": {"uda.sepico.alpha": 0.99}}}}
    wfv.check_overrides(workflow_config(sepico), REPO, pairs=["minicity", "minibench"])
    assert "uda.sepico.cfg_options: uda.sepico.alpha=0.99" in refusal(sepico) and "preset paper" in refusal(sepico)


# ---------------------------------------------------------------- refused, naming the config key
@pytest.mark.parametrize("overlay, names", [
    ({"translators": {"semst": {"cfg_options": {"loss.lambda_TZ": 1.0}}}},
     ["translators.semst.cfg_options: loss.lambda_TZ=1.0", "unknown config key 'loss.lambda_TZ'",
      "did you mean 'loss.lambda_TS'", "translators/configs/semst_"]),
    ({"translators": {"semst": {"cfg_options": {"loss.lambda_TS": "high"}}}},
     ["translators.semst.cfg_options: loss.lambda_TS=high", "'loss.lambda_TS' must be a number"]),
    ({"translators": {"semst_noms": {"cfg_options": {"semst": 1}}}},
     ["translators.semst_noms.cfg_options: semst=1", "is a section"]),
    ({"pairs": {"minicity": {"translator": {"cfg_options": {"train.iterz": 5}}}}},
     ["pairs.minicity.translator.cfg_options: train.iterz=5", "did you mean 'train.iters'", "pair 'minicity'"]),
    ({"pairs": {"minicity": {"translator": {"cfg_options": {"data.flip": "maybe"}}}}},
     ["pairs.minicity.translator.cfg_options: data.flip=maybe", "must be true/false"]),
    ({"pairs": {"minicity": {"segmenter": {"cfg_options": {"uda.lambda_advv": 0.001}}}}},
     ["pairs.minicity.segmenter.cfg_options: uda.lambda_advv=0.001", "'lambda_advv' is not a key of uda",
      "did you mean 'uda.lambda_adv'", "deeplabv2_r101_tiny.py"]),
    ({"pairs": {"minicity": {"segmenter": {"cfg_options": {"batch_size": "two"}}}}},
     ["pairs.minicity.segmenter.cfg_options: batch_size=two", "must be a number like its value 2"]),
    ({"uda": {"bdl": {"cfg_options": {"uda.discriminator.ndff": 8}}}},
     ["uda.bdl.cfg_options: uda.discriminator.ndff=8", "did you mean 'uda.discriminator.ndf'", "uda 'bdl'"]),
    ({"uda": {"bdl": {"cfg_options": {"uda.lambda_adv": "abc"}}}},
     ["uda.bdl.cfg_options: uda.lambda_adv=abc", "must be a number"]),
    ({"uda": {"sepico": {"cfg_options": {"uda.sepico": {"alpha": 0.9}}}}},
     ["uda.sepico.cfg_options: uda.sepico={alpha: 0.9}", "must be a dict", "write dotted keys"]),
], ids=["translator_unknown", "translator_ill_typed", "translator_section", "pair_translator_unknown",
        "pair_translator_ill_typed", "pair_cfg_unknown", "pair_cfg_ill_typed", "uda_cfg_unknown", "uda_cfg_ill_typed",
        "uda_cfg_dict_value"])
def test_bad_overrides_are_refused_naming_the_config_key(overlay, names):
    message = refusal(overlay)
    assert "\n" not in message
    for name in names:
        assert name in message, message


def test_the_refused_override_is_the_one_named_when_several_are_given():
    message = refusal({"pairs": {"minicity": {"translator": {"cfg_options": {"train.lr": 1e-4}},
                                              "segmenter": {"cfg_options": {"amp": 1}}}},
                       "translators": {"semst": {"cfg_options": {"loss.lambda_TS": 1.0, "semst.multiscal": False}}}})
    assert message.startswith("translators.semst.cfg_options: semst.multiscal=false: "), message
    message = refusal({"pairs": {"minicity": {"segmenter": {"cfg_options": {"amp": 1}}}}})
    assert message.startswith("pairs.minicity.segmenter.cfg_options: amp=1: ") and "must be true/false" in message


@pytest.mark.parametrize("overlay, section", [
    ({"translators": {"semst": {"set": {"loss.lambda_TS": 1.0}}}}, "translators.semst"),
    ({"pairs": {"minicity": {"translator": {"set": {"train.iters": 5}}}}}, "pairs.minicity.translator"),
], ids=["translators", "pair_translator"])
def test_the_former_set_key_is_refused_naming_its_new_name(overlay, section):
    """``set`` (the translators' former --set) was renamed ``cfg_options``: one line says so."""
    import jsonschema
    from snakemake.utils import update_config
    from wflib import schema as wfschema

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    update_config(config, copy.deepcopy(overlay))
    wfc.load_pairs(config, REPO, REPO)
    with pytest.raises(jsonschema.ValidationError) as info:
        wfschema.fill_defaults(config)
    assert wfc.schema_error_message(info.value) == (f"config key '{section}.set' was renamed to 'cfg_options': "
                                                    f"write '{section}.cfg_options' (the same entries)")


def test_translators_none_and_planned_methods_are_not_checked():
    wfv.check_overrides(workflow_config({"translators": {"none": {"cfg_options": {"no.such": 1}},
                                                         "cut": {"status": "planned", "cfg_options": {"no.such": 1}}},
                                         "uda": {"bdl": {"status": "planned", "cfg_options": {"no.such": 1}}}}), REPO)


def test_plan_time_check_never_imports_torch():
    """segmenters/configs is read without its package (torch, mmseg: seconds at every plan)."""
    code = f"""
import sys, yaml
from pathlib import Path
sys.path[:0] = [{str(REPO / "workflow" / "lib")!r}, {str(REPO)!r}]
from snakemake.utils import validate as schema_check
from wflib import pipeline_config as wfc, validate
REPO = Path({str(REPO)!r})
config = yaml.safe_load((REPO / "config/config.yaml").read_text())
wfc.load_pairs(config, REPO, REPO)
schema_check(config, str(REPO / "workflow/schemas/config.schema.yaml"))
validate.check_overrides(config, REPO)
assert "torch" not in sys.modules and "segmenters" not in sys.modules, "torch imported"
module = validate.segmenter_configs(REPO)
assert module.__file__ == str(REPO / "segmenters/configs/__init__.py")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------- the segmenter loader's type rule
def test_segmenter_cfg_options_keep_the_kind_of_the_value_they_replace():
    load = wfv.segmenter_configs(REPO).load_config
    cfg = load("deeplabv2", "tiny", ["optim_wrapper.optimizer.lr=1", "max_iters=1e3", "amp=false", "crop_size=[64,128]",
                                     "init_from=resnet101_v1c", "uda.vgg19_weights=/x/vgg19.pth"])
    assert cfg.max_iters == 1000 and cfg.amp is False and cfg.init_from == "resnet101_v1c"
    assert load("deeplabv2", "paper", ["init_from=None"]).init_from is None
    for option, kind in [("amp=1", "true/false"), ("max_iters=True", "a number"), ("crop_size=64", "a list/tuple"),
                         ("optim_wrapper.optimizer.type=3", "a string"), ("uda.discriminator=FC", "a dict")]:
        with pytest.raises(ValueError, match=f"--cfg-options key '{option.split('=')[0]}' must be {kind}"):
            load("deeplabv2", "tiny", [option])
    with pytest.raises(KeyError, match="did you mean 'max_iters'"):
        load("deeplabv2", "tiny", ["max_iter=3"])


# ---------------------------------------------------------------- snakemake -n
def _config_file(tmp_path: Path, overlay: dict) -> Path:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    from snakemake.utils import update_config

    update_config(config, overlay)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("overlay, key", [
    ({"translators": {"semst": {"cfg_options": {"loss.lambda_TZ": 1.0}}}},
     "translators.semst.cfg_options: loss.lambda_TZ"),
    ({"pairs": {"minicity": {"segmenter": {"cfg_options": {"uda.lambda_advv": 0.001}}}}},
     "pairs.minicity.segmenter.cfg_options: uda.lambda_advv"),
    ({"uda": {"bdl": {"cfg_options": {"uda.lambda_adv": "abc"}}}}, "uda.bdl.cfg_options: uda.lambda_adv=abc"),
    ({"translators": {"semst": {"set": {"loss.lambda_TS": 1.0}}}},
     "config key 'translators.semst.set' was renamed to 'cfg_options': write 'translators.semst.cfg_options'"),
], ids=["translator_cfg_options_typo", "pair_cfg_options_typo", "uda_cfg_options_ill_typed", "translator_former_set"])
def test_snakemake_dry_run_stops_on_a_bad_override(tmp_path, overlay, key):
    work = tmp_path / "work"
    work.mkdir()
    result = snakemake(work, "-n", "results/minicity_bdl_semst.csv", configfile=_config_file(tmp_path, overlay))
    assert result.returncode == 2, result.stdout + result.stderr
    text = _snakemake_error(result)
    message = assert_one_clear_message(text, "Config error", key)
    assert len(message.splitlines()) == 1, message
    assert "WorkflowError" not in text and "$schema" not in text
    assert not (work / "data").exists() and not (work / "results").exists()
