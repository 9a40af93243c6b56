"""The typer application and the two rich consoles every command prints to."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer
from rich.console import Console

from ..spec.errors import SpecError

app = typer.Typer(
    name="atlas-search",
    help="Search the design space of ATLAS-family test-time-memory sequence models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
# Piped output (files, CI logs) gets wide lines instead of rich's 80-column default.
_WIDTH = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 120
out = Console(highlight=False, width=_WIDTH)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def bad(message: str) -> typer.Exit:
    """Print ``error: message`` to stderr; the caller raises the returned Exit(2)."""
    err.print(f"error: {message}", markup=False)
    return typer.Exit(2)


def not_a_file(path: Path, label: str) -> None:
    """Exit(2) when a file is where the folder ``path`` should be (``label`` names it in
    the message, e.g. ``--out DIR``)."""
    if path.exists() and not path.is_dir():
        raise bad(f"{label}: a file is in the way (it is a file, not a folder)")


def out_folder(path: Path, label: str) -> Path:
    """``path`` as an output folder, created; Exit(2) naming ``label`` when a file is in
    the way or it cannot be created."""
    not_a_file(path, label)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise bad(f"{label}: cannot create the folder: {exc.strerror or exc}") from None
    return path


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
