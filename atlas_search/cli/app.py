"""The typer application and the two rich consoles every command prints to."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
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


@contextlib.contextmanager
def stop_signals() -> Iterator[Callable[[], str | None]]:
    """While inside: the first SIGINT or SIGTERM is only noted (the yielded ``stop()``
    returns its name, for the work to stop at a safe point, e.g. after a checkpoint); a
    second one, of either kind, acts as usual (KeyboardInterrupt, or termination).
    Handlers are restored on leaving. Outside the main thread nothing is installed and
    ``stop()`` stays None."""
    seen: list[str] = []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    before = {s: h for s in (signal.SIGINT, signal.SIGTERM)
              if (h := signal.getsignal(s)) is not signal.SIG_IGN}  # ignored stays ignored

    def note(signum: int, frame: object) -> None:
        seen.append(signal.Signals(signum).name)
        for s, handler in before.items():  # the next one, of either kind, acts as usual
            signal.signal(s, handler)

    for s in before:
        signal.signal(s, note)
    try:
        yield lambda: seen[0] if seen else None
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def exit_code(reason: str | None) -> int:
    """The shell's exit status for a run stopped by a signal named in ``reason``: 128 + its
    number (130 for SIGINT, 143 for SIGTERM)."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        if reason and sig.name in reason:
            return 128 + sig.value
    return 130

