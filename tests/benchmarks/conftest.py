"""Make the repository's ``benchmarks`` package importable (it is a folder of scripts, not part of the wheel)."""

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
