"""Run a training CLI so that an interrupted job resumes and a finished one never does.

``python workflow/scripts/resumable.py --run-dir D --state checkpoint.pt --key-input IN ... -- CMD ...``

* The *run key* is the command line, ``--key`` text (the code hash) and the *content* of every
  ``--key-input``: the SHA-256 of a file's bytes; for a directory (a prepared dataset), a digest of
  its listing (relative path, size and mtime of every file). It is stored as ``D/.resume_key``
  (JSON) when the job starts. Size and mtime alone are not enough: checkpoints of one architecture
  all have the same size, and ``cp -p`` / ``rsync -a`` carry the mtime of the file they copy.
* A file's hash is cached in the key file under its stat signature (size, mtime, ctime, inode),
  so an unchanged multi-GB input is read once per run folder; a copy always gets a new ctime and
  inode, so the cache can never vouch for different bytes.
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
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Sequence

KEY_FILE = ".resume_key"


HASH_CHUNK = 1 << 20


def _stat_signature(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def file_digest(path: str, cache: dict) -> str:
    """``sha256:<hex>`` of a file's bytes, reusing ``cache[path]`` while its stat signature holds."""
    signature = _stat_signature(os.stat(path))
    hit = cache.get(path)
    if hit is not None and hit.get("stat") == signature:
        return hit["digest"]
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(HASH_CHUNK), b""):
            sha.update(chunk)
    digest = "sha256:" + sha.hexdigest()
    cache[path] = {"stat": signature, "digest": digest}
    return digest


def dir_digest(path: str) -> str:
    """``listing:<hex>`` over the relative path, size and mtime of every file below ``path``."""
    sha = hashlib.sha256()
    root = Path(path)
    for item in sorted(p for p in root.rglob("*") if p.is_file()):
        st = item.stat()
        sha.update(f"{item.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return "listing:" + sha.hexdigest()


def run_key(command: Sequence[str], key_text: str, inputs: Sequence[str], cache: dict | None = None) -> dict:
    """What identifies a run: command line, code hash and each input's content digest."""
    cache = {} if cache is None else cache
    files = {name: dir_digest(name) if os.path.isdir(name) else file_digest(name, cache) for name in inputs}
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
    from domains.io import atomic_write_text  # here: importing this module stays standard-library only

    atomic_write_text(path, text)


def read_key_file(run_dir: Path) -> tuple[dict | None, dict]:
    """The run key stored in ``run_dir`` (None when absent or unreadable) and its hash cache."""
    key_path = run_dir / KEY_FILE
    try:
        stored = json.loads(key_path.read_text()) if key_path.is_file() else None
    except ValueError:
        stored = None
    if not isinstance(stored, dict) or "key" not in stored:
        return None, {}
    return stored["key"], stored.get("hash_cache", {})


def prepare(run_dir: Path, patterns: Sequence[str], command: list[str], key_text: str, inputs: Sequence[str],
            resume_flag: str) -> list[str]:
    """Decide resume vs fresh start; returns the command to run (with ``resume_flag`` when resuming).

    Resume state is used only when a key file exists and equals the current key: state without a
    key (a crash before the key was written, a hand-copied folder) is removed like stale state."""
    run_dir.mkdir(parents=True, exist_ok=True)
    found = state_files(run_dir, patterns)
    old_key, cache = read_key_file(run_dir)
    key = run_key(command, key_text, inputs, cache)
    if found and old_key is not None and old_key == key:
        print(f"resumable: resuming interrupted run in {run_dir} from {', '.join(p.name for p in found)}", flush=True)
        command = command + [resume_flag]
    elif found:
        why = key_difference(old_key, key) if old_key else "no run key"
        print(f"resumable: removing stale state in {run_dir} ({why}): {', '.join(p.name for p in found)}", flush=True)
        for path in found:
            path.unlink()
    else:
        print(f"resumable: fresh run in {run_dir}", flush=True)
    cache = {name: cache[name] for name in inputs if name in cache}
    _write_atomic(run_dir / KEY_FILE, json.dumps({"key": key, "hash_cache": cache}, indent=1) + "\n")
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
    parser.add_argument("--key-input", nargs="*", default=[], help="files or folders whose content enters the run key")
    parser.add_argument("--keep-state", action="store_true", help="keep resume state after success")
    args = parser.parse_args(argv[:split])
    command = argv[split + 1:]
    if not command:
        parser.error("no command after --")
    scheduler = {k: os.environ[k] for k in ("SLURM_JOB_ID", "SLURM_JOB_NODELIST", "CUDA_VISIBLE_DEVICES") if k in os.environ}
    if scheduler:  # shows in the rule's log that (and where) the job ran under a scheduler
        print("resumable: " + " ".join(f"{k}={v}" for k, v in scheduler.items()), flush=True)
    command = prepare(args.run_dir, args.state, command, args.key, args.key_input, args.resume_flag)
    print("resumable: " + " ".join(command), flush=True)
    child = subprocess.Popen(command)

    def forward(signum, _frame):
        child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        rc = child.wait()
    finally:  # restore the caller's handlers (main() also runs in-process, e.g. in tests)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if rc == 0 and not args.keep_state:
        finish(args.run_dir, args.state)
    return rc


if __name__ == "__main__":
    sys.exit(main())
