"""Make the single source of the contracts (contracts/ at the repository root) importable as ``contracts``."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
