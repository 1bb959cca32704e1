"""What the tests share: the repository's paths."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"  # also on the path of the runs that name cli_plugins' classes, and of ddp_run.py
CONFIGS = REPO / "configs"
QUICKSTART = str(CONFIGS / "quickstart.yaml")
