"""Shared test fixtures: repository paths and a CLI runner."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    # Triton fixes interpreter vs compiled mode at its first import: on a machine without
    # CUDA the Triton kernel tests (tests/test_ops_triton.py) run in the interpreter.
    os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = Path(__file__).resolve().parents[1]
SPACES = ROOT / "spaces"


@pytest.fixture
def cli():
    """Run ``atlas-search`` in-process; returns the click Result (exit_code, stdout, stderr)."""
    from typer.testing import CliRunner  # here: the GPU check runs the kernel tests without typer

    from atlas_search.cli import app

    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(app, [str(a) for a in args])

    return run


@pytest.fixture(autouse=True)
def _thread_env_restored(monkeypatch):
    """``train(threads=N)`` sets ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` for its process:
    undo that after each test, so later tests' subprocesses do not inherit it."""
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if key in os.environ:
            monkeypatch.setenv(key, os.environ[key])
        else:
            monkeypatch.delenv(key, raising=False)


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """The tests run tiny ops, where one intra-op thread is several times faster than two
    contended ones on a 2-core machine; tests that set threads restore this afterwards."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
