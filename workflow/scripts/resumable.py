"""Entry point of :mod:`wflib.launch` for shell rules (see its docstring)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

from wflib.launch import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
