"""The install contract: pinned requirements, a mirroring conda env, the two README commands, CI."""
from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pins(lines: list[str]) -> dict[str, str]:
    pins = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+(?:\[[a-z,]+\])?)==([^\s;]+)", line)
        assert m, f"requirement '{line}' is not an exact pin (name==version)"
        pins[m.group(1).lower()] = m.group(2)
    return pins


def test_requirements_are_exact_pins_of_the_designed_stack():
    pins = _pins((ROOT / "requirements.txt").read_text().splitlines())
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
    assert pins["numpy"].startswith("2.4.")
    assert pins["mmengine"] == "0.10.7" and pins["mmcv-lite"] == "2.1.0"
    assert pins["mmsegmentation"] == "1.2.2"
    assert pins["snakemake[reports]"].startswith("9.")
    for name in ("ftfy", "regex", "snakemake-executor-plugin-slurm", "pandas", "h5py", "cityscapesscripts",
                 "opencv-python-headless", "pillow", "tqdm", "matplotlib", "pytest"):
        assert name in pins, f"{name} missing from requirements.txt"


def test_environment_yml_mirrors_requirements():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert "python=3.11" in env["dependencies"]
    assert _pins(pip_section) == _pins((ROOT / "requirements.txt").read_text().splitlines()), (
        "environment.yml and requirements.txt disagree: update both")


def test_installed_versions_match_the_pins():
    from importlib.metadata import version

    pins = _pins((ROOT / "requirements.txt").read_text().splitlines())
    for name, pinned in pins.items():
        dist = name.split("[")[0]
        installed = version(dist).split("+")[0]
        assert installed == pinned, f"{dist}: installed {installed}, pinned {pinned}; run `make test` to reinstall"


def test_readme_opens_with_the_two_commands():
    lines = [ln.strip() for ln in (ROOT / "README.md").read_text().splitlines()]
    commands = [ln for ln in lines if ln.startswith("make ")]
    assert commands[:2] == ["make demo", "make test"]


def test_ci_runs_exactly_the_readme_test_command():
    body = [ln.strip() for ln in (ROOT / ".ci/run").read_text().splitlines()
            if ln.strip() and not ln.strip().startswith("#")]
    assert body[-1] == "make test"
    assert not any(ln.startswith(("pip", "python", "pytest", "apt")) for ln in body)


def test_data_and_results_are_ignored_except_their_readme():
    out = subprocess.run(["git", "check-ignore", "--no-index", "data/x.png", "results/y.csv",
                          "data/README.md", "results/README.md"],
                         cwd=ROOT, capture_output=True, text=True)
    ignored = set(out.stdout.split())
    assert {"data/x.png", "results/y.csv"} <= ignored
    assert "data/README.md" not in ignored and "results/README.md" not in ignored


def test_packages_import_without_workflow():
    code = "import domains, nets, segmenters, translators, sys; assert 'snakemake' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_every_top_level_package_is_packaged():
    """pyproject.toml's package list names every package folder (a new one is otherwise missing from the
    editable install and the wheel)."""
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    assert sorted(p.rstrip("*") for p in include) == sorted(p.parent.name for p in ROOT.glob("*/__init__.py"))


def test_nets_is_a_bottom_layer_package():
    """The shared GAN blocks import no project package (docs/design.md §2.2); ``import nets`` alone is free."""
    code = ("import sys, nets; assert 'torch' not in sys.modules, 'import nets imported torch'; "
            "import nets.pix2pixhd, nets.vgg, nets.losses; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('domains', 'segmenters', 'translators')); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
