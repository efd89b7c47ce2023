"""Bad input ends with one clear message and exit code 2 (docs/errors.md): the shared pieces.

* :func:`torch_load_problem` says in a few words why ``torch.load(..., weights_only=True)`` failed
  (truncated, not a PyTorch file, pickles Python objects), never passing on torch's advice to
  re-run with ``weights_only=False`` (the project never unpickles a user-supplied file fully);
* :func:`short_message` is what a CLI prints for a bad-input exception: that advice removed, at
  most :data:`MAX_LINES` lines;
* :func:`pop_debug` / :func:`debug_enabled`: ``--debug`` on a command line, or ``SEMST_DEBUG=1`` in
  the environment, makes the CLIs re-raise instead (the full traceback, for bug reports).

No torch import here (``domains`` stays light).
"""
from __future__ import annotations

import os
import re
from typing import Mapping, Sequence

#: exit status of every CLI for bad input (config, data, checkpoint, weights)
EXIT_BAD_INPUT = 2
#: environment variable that turns on --debug for every CLI (and the workflow's config checks)
DEBUG_ENV = "SEMST_DEBUG"
DEBUG_FLAG = "--debug"
#: most lines a bad-input message takes
MAX_LINES = 5

# sentences of torch's messages that advise loading the file fully (or allow-listing its classes)
_UNSAFE_ADVICE = re.compile(
    r"weights_only`? (?:set to|=) ?`?False|weights_only=False|add_safe_globals|safe_globals|arbitrary code|"
    r"trusted source|you have two options|do those steps only|Please file an issue|documentation of torch\.load|"
    r"recommended steps|we changed the default value", re.IGNORECASE)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def strip_torch_advice(text: str) -> str:
    """``text`` without torch's advice to load with ``weights_only=False`` (or to allow-list globals):
    every sentence that gives it is dropped, and so are lines left empty."""
    out = []
    for line in _ANSI.sub("", text).splitlines():
        sentences = re.split(r"(?<=[.!?])\s+", line.strip())
        kept = " ".join(s for s in sentences if s and not _UNSAFE_ADVICE.search(s))
        kept = re.sub(r"^\(\d\)\s*", "", kept).strip()
        if kept:
            out.append(kept)
    return "\n".join(out)


def torch_load_problem(err: BaseException) -> str:
    """Why ``torch.load(path, weights_only=True)`` raised ``err``, in a few words (no torch advice)."""
    text = _ANSI.sub("", str(err))
    unsafe = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if unsafe:
        return (f"it pickles Python objects ({unsafe.group(1)}), which a weights file must not hold; it is not "
                "a plain state dict of tensors")
    if "Weights only load failed" in text:
        detail = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|$)", text, re.S)
        what = f" ({' '.join(detail.group(1).split())[:120]})" if detail else ""
        return f"not a PyTorch weights file: its data is not a readable pickle{what}; truncated or another format?"
    if isinstance(err, EOFError) or not text.strip():
        return "the file is empty or truncated"
    if "PytorchStreamReader" in text:
        reason = text.split(". This is an internal miniz error")[0].replace("PytorchStreamReader ", "")
        return f"truncated or corrupt ({reason.strip()})"
    if isinstance(err, KeyError) or "invalid load key" in text or "Invalid magic number" in text:
        return "not a PyTorch file (neither a torch.save zip archive nor a pickle)"
    first = strip_torch_advice(text).splitlines()
    detail = f"{type(err).__name__}: {first[0] if first else text.strip()}"[:200]
    return f"unreadable ({detail}); truncated, or not a torch.save file?"


def short_message(err: BaseException | str, max_lines: int = MAX_LINES) -> str:
    """The message of a bad-input error for the terminal: torch's advice stripped, <= ``max_lines`` lines."""
    if isinstance(err, KeyError) and err.args:      # str(KeyError) is the repr of its argument
        text = str(err.args[0])
    else:
        text = str(err)
    lines = strip_torch_advice(text).splitlines() or [type(err).__name__ if not isinstance(err, str) else ""]
    if len(lines) > max_lines:
        more = len(lines) - (max_lines - 1)
        lines = lines[:max_lines - 1] + [f"... ({more} more lines; rerun with {DEBUG_FLAG} for everything)"]
    return "\n".join(lines)


def debug_enabled(env: Mapping[str, str] | None = None) -> bool:
    """``SEMST_DEBUG`` set to anything but '', 0, false, no, off."""
    value = (os.environ if env is None else env).get(DEBUG_ENV, "")
    return value.strip().lower() not in ("", "0", "false", "no", "off")


def pop_debug(argv: Sequence[str]) -> tuple[bool, list[str]]:
    """(``--debug`` given or :func:`debug_enabled`, ``argv`` without ``--debug``); a ``--`` ends the options."""
    argv = list(argv)
    end = argv.index("--") if "--" in argv else len(argv)
    found = DEBUG_FLAG in argv[:end]
    rest = [a for a in argv[:end] if a != DEBUG_FLAG] + argv[end:]
    return found or debug_enabled(), rest


__all__ = ["DEBUG_ENV", "DEBUG_FLAG", "EXIT_BAD_INPUT", "MAX_LINES", "debug_enabled", "pop_debug", "short_message",
           "strip_torch_advice", "torch_load_problem"]
