"""Mutation testing of the modules where a silent fault costs most (``make mutation``).

mutmut plants one small fault (a mutant) at a time in the modules of ``tests/mutation/modules.yaml``
and runs the tests that execute the mutated function; a mutant that no test notices *survives*.
The score of a module is killed / (mutants - equivalent): survivors that cannot change behaviour
are listed under ``equivalent`` in that file, each by its function, its mutated line (the ``+``
line of the diff, stripped; mutmut's mutant numbers shift when a function changes) and one line
on why.

mutmut names modules after their path from the folder it runs in (``src/`` stripped), and our
workflow helpers live in ``workflow/lib/wflib``. So each group runs in a staging folder,
``build/mutation/<group>``, where ``src/<package>`` links to each package (``src/wflib`` to the
helpers); mutmut copies them into ``<group>/mutants`` and mutates the copies: the checkout is never
modified. While a group's modules are unchanged (their SHA-256 is recorded), a rerun tests again
only the mutants that were not killed (after new tests, say); a changed module, or ``--fresh``,
tests every mutant of the group in a fresh copy. ``--only`` runs some groups; the report always
covers all of them.

Writes ``build/mutation/report.md`` and ``report.csv`` (``--report`` elsewhere); exits 1 when a
module scores below ``target_score`` or a group has no results yet.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
SPEC = Path(__file__).with_name("modules.yaml")
PACKAGES = {"segmenters": "segmenters", "translators": "translators", "domains": "domains", "nets": "nets",
            "wflib": "workflow/lib/wflib"}
# what the selected tests read by path (package folders too: tests open their YAML/config files by
# path; imports still get the mutated copies under src/, which mutmut puts first on sys.path)
COPIED = ["tests", "config", "workflow", "Snakefile", "profiles", "segmenters", "translators", "domains", "nets"]
log = logging.getLogger("mutation")


def staged_path(repo_path: str) -> str:
    """``workflow/lib/wflib/rounds.py`` -> ``src/wflib/rounds.py`` (the path mutmut sees)."""
    for name, where in PACKAGES.items():
        if repo_path.startswith(where + "/"):
            return "src/" + name + repo_path[len(where):]
    raise ValueError(f"tests/mutation/modules.yaml: {repo_path} is not inside one of {sorted(PACKAGES.values())}")


def module_name(repo_path: str) -> str:
    return staged_path(repo_path)[len("src/"):-len(".py")].replace("/", ".")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def refresh_unmutated(root: Path, group: dict) -> None:
    """Bring mutmut's copies of the files it does not mutate up to date (it copies them only once)."""
    mutated = {staged_path(m) for m in group["modules"]}
    for name, where in PACKAGES.items():
        for src in (REPO / where).rglob("*"):
            rel = "src/" + name + "/" + src.relative_to(REPO / where).as_posix()
            copy = root / "mutants" / rel
            if src.is_file() and rel not in mutated and "__pycache__" not in rel and (
                    not copy.is_file() or copy.read_bytes() != src.read_bytes()):
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, copy)


def stage(spec: dict, group: dict, root: Path) -> None:
    """Build a group's staging folder: package links, test inputs, a pyproject with mutmut's config."""
    (root / "src").mkdir(parents=True, exist_ok=True)
    for name, where in PACKAGES.items():
        link = root / "src" / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(REPO / where, target_is_directory=True)
    for name in COPIED:
        link = root / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(REPO / name)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    ini = project["tool"]["pytest"]["ini_options"]
    files = [staged_path(p) for p in group["modules"]]
    lines = ["[tool.pytest.ini_options]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in ini.items() if k != "testpaths"]
    lines += ["", "[tool.mutmut]",
              f"source_paths = {json.dumps(['src/' + n for n in PACKAGES])}",
              f"only_mutate = {json.dumps(files)}",
              f"also_copy = {json.dumps(COPIED)}",
              f"pytest_add_cli_args_test_selection = {json.dumps(group['tests'])}",
              'pytest_add_cli_args = ["-p", "no:cacheprovider", "-p", "no:randomly", "-x", "-q"]',
              'process_isolation = "forkserver"',
              "use_git_change_detection = false",
              f"do_not_mutate_patterns = {json.dumps(spec.get('do_not_mutate_patterns', []))}"]
    (root / "pyproject.toml").write_text("\n".join(lines) + "\n")


@dataclass
class ModuleScore:
    group: str
    path: str
    status: dict[str, list[str]] = field(default_factory=dict)  # mutmut status -> mutant names

    def count(self, status: str) -> int:
        return len(self.status.get(status, []))

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.status.values())


def collect() -> dict[str, dict[str, str]]:
    """mutant name -> {status, diff}, read with mutmut's own API (runs with cwd = the staging folder)."""
    from mutmut.__main__ import walk_mutatable_files
    from mutmut.mutation.data import SourceFileMutationData
    from mutmut.mutation.diff_apply import get_diff_for_mutant
    from mutmut.stats import status_by_exit_code

    results = {}
    for path in walk_mutatable_files():
        data = SourceFileMutationData(path=path)
        data.load()
        for name, code in data.exit_code_by_key.items():
            status = status_by_exit_code[code]
            diff = "\n".join(
                line for line in get_diff_for_mutant(name, path=path).splitlines()
                if line[:1] in "+-" and not line.startswith(("+++", "---")))
            results[name] = {"status": status, "diff": diff}
    return results


def read_results(root: Path) -> dict[str, dict[str, str]]:
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--collect"], cwd=root, text=True,
                          capture_output=True)
    if done.returncode != 0:
        raise RuntimeError(f"reading mutmut's results failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def on_ignored_line(spec: dict, diff: str) -> bool:
    """A mutant of a line that ``do_not_mutate_patterns`` now excludes (the patterns changed after
    the run that made it): left out of the score, as a fresh run would not make it."""
    lines = [line[1:] for line in diff.splitlines() if line.startswith("-")]
    return any(re.search(p, line) for p in spec.get("do_not_mutate_patterns", []) for line in lines)


def score(spec: dict, results: dict[str, dict[str, str]]) -> list[ModuleScore]:
    results = {n: r for n, r in results.items() if not on_ignored_line(spec, r["diff"])}
    scores = []
    for group, entry in spec["groups"].items():
        for path in entry["modules"]:
            prefix = module_name(path) + "."
            ms = ModuleScore(group, path)
            for name, result in results.items():
                if name.startswith(prefix) and "." not in name[len(prefix):].split("__mutmut_")[0]:
                    ms.status.setdefault(result["status"], []).append(name)
            scores.append(ms)
    return scores


def mutant_key(name: str, diff: str) -> tuple[str, str]:
    """What identifies a mutant across runs: its function and its mutated line(s). mutmut's
    numbering (``x_f__mutmut_7``) shifts whenever the function changes."""
    function = name.split("__mutmut_")[0].replace(".x_", ".").replace(".xǁ", ".").replace("ǁ", ".")
    plus = " / ".join(line[1:].strip() for line in diff.splitlines() if line.startswith("+"))
    return function, plus


def equivalent_reasons(spec: dict, results: dict[str, dict[str, str]]) -> tuple[dict[str, str], list[dict]]:
    """Surviving mutant name -> why it is equivalent, and the entries that match no survivor (stale)."""
    entries = spec.get("equivalent") or []
    wanted = {(e["function"], e["mutant"].strip()): e for e in entries}
    found, used = {}, set()
    for name, result in results.items():
        if result["status"] != "survived":
            continue
        key = mutant_key(name, result["diff"])
        if key in wanted:
            found[name] = wanted[key]["why"]
            used.add(key)
    return found, [e for k, e in wanted.items() if k not in used]


def report(spec: dict, scores: list[ModuleScore], results: dict, out: Path, minutes: dict[str, float]) -> bool:
    """Write the markdown and CSV reports; True when every module meets the target."""
    equivalent, stale = equivalent_reasons(spec, results)
    target = float(spec["target_score"])
    rows, ok = [], True
    survivors_md = []
    for ms in scores:
        killed = ms.count("killed") + ms.count("timeout")  # a mutant that hangs the tests is noticed
        equiv = [n for n in ms.status.get("survived", []) if n in equivalent]
        live = [n for s in ("survived", "no tests", "suspicious", "skipped") for n in ms.status.get(s, [])
                if n not in equivalent]
        denominator = ms.total - len(equiv)
        value = killed / denominator if denominator else 1.0
        ok &= value >= target
        rows.append({"group": ms.group, "module": ms.path, "mutants": ms.total, "killed": killed,
                     "equivalent": len(equiv), "surviving": len(live), "score": round(value, 4),
                     "meets_target": value >= target})
        for name in live:
            survivors_md.append(f"- `{name}` ({ms.path}, {next(s for s, v in ms.status.items() if name in v)})\n"
                                f"  ```diff\n  " + results[name]["diff"].replace("\n", "\n  ") + "\n  ```")
        for name in equiv:
            survivors_md.append(f"- `{name}` ({ms.path}, equivalent): {equivalent[name]}")
    import pandas as pd

    for group, entry in spec["groups"].items():  # groups never run: listed, and they fail the target
        if not any(ms.group == group for ms in scores if ms.total):
            ok = False
            rows = [r for r in rows if r["group"] != group]
            rows += [{"group": group, "module": m, "mutants": 0, "killed": 0, "equivalent": 0, "surviving": 0,
                      "score": float("nan"), "meets_target": False} for m in entry["modules"]]
    table = pd.DataFrame(rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out.with_suffix(".csv"), index=False)
    timing = ", ".join(f"{g} {m:.1f} min" for g, m in minutes.items())
    head = ["# Mutation score (`make mutation`)", "", f"Wall time of the groups run last: {timing or 'n/a'}.", "",
            f"Target: at least {target:.0%} of non-equivalent mutants killed in every module. "
            f"{'All modules meet it.' if ok else 'Modules below the target: ' + ', '.join(r['module'] for r in rows if not r['meets_target'])}",
            "", table.to_markdown(index=False), "", "## Surviving and equivalent mutants", ""]
    if stale:
        survivors_md += ["", "## Equivalent entries that match no surviving mutant (stale: remove or update)", ""]
        survivors_md += [f"- `{e['function']}`: `{e['mutant']}`" for e in stale]
    out.write_text("\n".join(head + (survivors_md or ["None."])) + "\n")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=REPO / "build" / "mutation", help="staging folder")
    parser.add_argument("--workers", type=int, default=1,
                        help="mutants tested in parallel (default 1: with 2 forkserver workers mutmut 3.8.1 reported "
                             "killable mutants as surviving here)")
    parser.add_argument("--report", type=Path, default=None, help="report path (.md; a .csv is written beside it)")
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from the last run")
    parser.add_argument("--fresh", action="store_true",
                        help="test every mutant again (default: only those not killed last time, while the modules "
                             "are unchanged)")
    parser.add_argument("--only", nargs="+", metavar="GROUP", help="run only these groups of modules.yaml")
    parser.add_argument("--collect", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.collect:  # internal: print the results as JSON (cwd = the staging folder)
        print(json.dumps(collect()))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    spec = yaml.safe_load(SPEC.read_text())
    groups = args.only or list(spec["groups"])
    unknown = sorted(set(groups) - set(spec["groups"]))
    if unknown:
        parser.error(f"--only: no group {unknown} in {SPEC.relative_to(REPO)} (groups: {sorted(spec['groups'])})")
    args.root.mkdir(parents=True, exist_ok=True)
    times_path = args.root / "minutes.json"
    minutes = json.loads(times_path.read_text()) if times_path.is_file() else {}
    for name in ([] if args.report_only else groups):
        group, root = spec["groups"][name], args.root / name
        sources = {m: sha256(REPO / m) for m in group["modules"]}
        recorded = root / "sources.json"
        again = None  # mutants to test again; None: all of them, in a fresh copy
        if not args.fresh and recorded.is_file() and json.loads(recorded.read_text()) == sources:
            again = [n for n, r in read_results(root).items()
                     if r["status"] not in ("killed", "timeout") and not on_ignored_line(spec, r["diff"])]
            if not again:
                log.info("mutation: group %s unchanged and every mutant killed", name)
                continue
            refresh_unmutated(root, group)
            # which tests run which function: collected again, mutmut's incremental update misses new tests
            (root / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)
        else:
            shutil.rmtree(root / "mutants", ignore_errors=True)
            recorded.unlink(missing_ok=True)
        root.mkdir(parents=True, exist_ok=True)
        stage(spec, group, root)
        log.info("mutation: group %s (%s)%s", name, ", ".join(group["modules"]),
                 "" if again is None else f": the {len(again)} mutants that were not killed last time")
        t0 = time.perf_counter()
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
        command = [sys.executable, "-m", "mutmut", "run", "--max-children", str(args.workers)]
        if again:  # mutmut tests named mutants with the test mapping it loaded, not one it collects in the
            # same call: collect it first (testing one mutant), then test them all
            subprocess.run(command + again[:1], cwd=root, env=env, capture_output=True)
        done = subprocess.run(command + (again or []), cwd=root, env=env)
        if done.returncode != 0:
            log.error("mutmut run of group %s failed (exit %d); see above", name, done.returncode)
            return 2
        if again is None:
            recorded.write_text(json.dumps(sources, indent=1))
            minutes[name] = round((time.perf_counter() - t0) / 60, 1)
        else:
            minutes[name + " (rerun)"] = round((time.perf_counter() - t0) / 60, 1)
        times_path.write_text(json.dumps(minutes, indent=1))
    results = {}
    for name in spec["groups"]:
        if (args.root / name / "mutants").is_dir():
            results.update(read_results(args.root / name))
    out = args.report or args.root / "report.md"
    ok = report(spec, score(spec, results), results, out, minutes)
    print(out.read_text())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
