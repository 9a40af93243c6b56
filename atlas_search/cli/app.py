"""The typer application and the two rich consoles every command prints to."""

from __future__ import annotations

import os
import sys

import typer
from rich.console import Console

from ..spec.errors import SpecError

app = typer.Typer(
    name="atlas-search",
    help="Search the design space of ATLAS-family test-time-memory sequence models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Piped output (files, CI logs) gets wide lines instead of rich's 80-column default.
_WIDTH = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 120
out = Console(highlight=False, width=_WIDTH)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def bad(message: str) -> typer.Exit:
    """Print ``error: message`` to stderr; the caller raises the returned Exit(2)."""
    err.print(f"error: {message}", markup=False)
    return typer.Exit(2)


def fail(exc: SpecError) -> typer.Exit:
    """Print a SpecError's located issues to stderr; the caller raises the returned Exit(2)."""
    n = len(exc.issues)
    err.print(
        f"error: {exc.source or '<input>'}: {n} problem{'s' if n != 1 else ''}",
        style="bold red",
        markup=False,
    )
    for issue in exc.issues:
        err.print(issue.render(exc.source), markup=False)
    return typer.Exit(2)
