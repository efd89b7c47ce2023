"""Run a training CLI so that an interrupted job resumes and a finished one never does.

``python workflow/scripts/resumable.py --run-dir D --state checkpoint.pt --key-input IN ... -- CMD ...``

* The *run key* is the command line, ``--key`` text (the code hash) and the size and mtime of
  every ``--key-input`` file. It is stored as ``D/.resume_key`` (JSON) when the job starts.
* When resume state (``--state`` glob patterns, e.g. ``checkpoint.pt``, ``iter_*.pth``) exists in
  ``D`` *and* its key equals the current one, the job was interrupted with the same code, inputs
  and arguments: ``--resume`` is appended to CMD and a line ``resumable: resuming ...`` is logged.
* Otherwise stale state (from other code/inputs) is deleted first, so a rerun after a change
  starts from scratch instead of silently continuing an old run.
* On success the state and key are removed: only the CLI's final file (written atomically by the
  CLI, and the rule's only output) marks the job as done.

SIGINT/SIGTERM are forwarded to the child, whose exit status is returned. Under a scheduler the
job id (``SLURM_JOB_ID``) and ``CUDA_VISIBLE_DEVICES`` are logged first.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Sequence

KEY_FILE = ".resume_key"


def run_key(command: Sequence[str], key_text: str, inputs: Sequence[str]) -> dict:
    """What identifies a run: command line, code hash and each input's size and mtime."""
    files = {}
    for name in inputs:
        st = os.stat(name)
        files[name] = [st.st_size, st.st_mtime_ns]
    return {"command": list(command), "code": key_text, "inputs": files}


def key_difference(old: dict, new: dict) -> str:
    """Human-readable reason why two run keys differ."""
    if old.get("command") != new["command"]:
        return "arguments changed"
    if old.get("code") != new["code"]:
        return "code changed"
    changed = [n for n in set(old.get("inputs", {})) | set(new["inputs"]) if old.get("inputs", {}).get(n) != new["inputs"].get(n)]
    return "inputs changed: " + ", ".join(sorted(changed))


def state_files(run_dir: Path, patterns: Sequence[str]) -> list[Path]:
    return sorted({p for pattern in patterns for p in run_dir.glob(pattern) if p.is_file()})


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def prepare(run_dir: Path, patterns: Sequence[str], key: dict, resume_flag: str, command: list[str]) -> list[str]:
    """Decide resume vs fresh start; returns the command to run (with ``resume_flag`` when resuming)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    found = state_files(run_dir, patterns)
    key_path = run_dir / KEY_FILE
    try:
        old_key = json.loads(key_path.read_text()) if key_path.is_file() else None
    except ValueError:
        old_key = None
    if found and old_key == key:
        print(f"resumable: resuming interrupted run in {run_dir} from {', '.join(p.name for p in found)}", flush=True)
        command = command + [resume_flag]
    elif found:
        why = key_difference(old_key, key) if old_key else "no run key"
        print(f"resumable: removing stale state in {run_dir} ({why}): {', '.join(p.name for p in found)}", flush=True)
        for path in found:
            path.unlink()
    else:
        print(f"resumable: fresh run in {run_dir}", flush=True)
    _write_atomic(key_path, json.dumps(key, indent=1) + "\n")
    return command


def finish(run_dir: Path, patterns: Sequence[str]) -> None:
    """After success: drop resume state and key so a later rerun starts fresh."""
    for path in state_files(run_dir, patterns):
        path.unlink()
    (run_dir / KEY_FILE).unlink(missing_ok=True)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        print("usage: resumable.py --run-dir D [--state GLOB ...] [--key TEXT] [--key-input FILE ...] -- CMD ...",
              file=sys.stderr)
        return 2
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="resumable.py")
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--state", action="append", default=[], help="glob (relative to --run-dir) of resume state")
    parser.add_argument("--resume-flag", default="--resume")
    parser.add_argument("--key", default="", help="extra text in the run key (e.g. the code hash)")
    parser.add_argument("--key-input", nargs="*", default=[], help="files whose size+mtime enter the run key")
    parser.add_argument("--keep-state", action="store_true", help="keep resume state after success")
    args = parser.parse_args(argv[:split])
    command = argv[split + 1:]
    if not command:
        parser.error("no command after --")
    scheduler = {k: os.environ[k] for k in ("SLURM_JOB_ID", "SLURM_JOB_NODELIST", "CUDA_VISIBLE_DEVICES") if k in os.environ}
    if scheduler:  # shows in the rule's log that (and where) the job ran under a scheduler
        print("resumable: " + " ".join(f"{k}={v}" for k, v in scheduler.items()), flush=True)
    key = run_key(command, args.key, args.key_input)
    command = prepare(args.run_dir, args.state, key, args.resume_flag, command)
    print("resumable: " + " ".join(command), flush=True)
    child = subprocess.Popen(command)

    def forward(signum, _frame):
        child.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, forward)
    rc = child.wait()
    if rc == 0 and not args.keep_state:
        finish(args.run_dir, args.state)
    return rc


if __name__ == "__main__":
    sys.exit(main())
