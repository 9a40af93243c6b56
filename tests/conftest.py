"""Shared test fixtures: repository paths and a CLI runner."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
SPACES = ROOT / "spaces"


@pytest.fixture
def cli():
    """Run ``atlas-search`` in-process; returns the click Result (exit_code, stdout, stderr)."""
    from atlas_search.cli import app

    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(app, [str(a) for a in args])

    return run
