"""Defaults the workflow takes from the stage packages, read from their source without importing them.

A value that belongs to a method (ProDA's pseudo-label threshold) is defined once, in the method's
own code; the workflow writes it into a job's command line. Importing ``segmenters.uda`` at plan time
would load torch and mmseg (seconds for every ``snakemake -n``), so :func:`literal_default` reads
the field's default out of the source file with :mod:`ast` (a literal only; anything else is an
error). tests/test_defaults.py checks that it equals the imported value.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

#: ProDA's settings (segmenters/uda/proda_parts.py, class ProDAConfig)
PRODA_PARTS = Path("segmenters") / "uda" / "proda_parts.py"


def literal_default(path: str | Path, cls: str, name: str) -> Any:
    """The default of field ``name`` (``name: type = <literal>``) of class ``cls`` in the Python file ``path``."""
    tree = ast.parse(Path(path).read_text(), filename=str(path))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for stmt in node.body:
                if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                        and stmt.target.id == name and stmt.value is not None):
                    try:
                        return ast.literal_eval(stmt.value)
                    except ValueError:
                        raise ValueError(f"{path}: {cls}.{name} has no literal default") from None
            raise LookupError(f"{path}: class {cls} has no field '{name}' with a default")
    raise LookupError(f"{path}: no class {cls}")


def proda_threshold(repo: str | Path) -> float:
    """ProDA's stage-2/3 pseudo-label confidence threshold: ``ProDAConfig.threshold``."""
    return float(literal_default(Path(repo) / PRODA_PARTS, "ProDAConfig", "threshold"))


__all__ = ["PRODA_PARTS", "literal_default", "proda_threshold"]
