"""The infer tests build their tiny models and mammogram folders with the archive tests' factory
(tests/archive/archive_factory.py)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "archive"))
