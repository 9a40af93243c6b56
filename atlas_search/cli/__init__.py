"""The ``atlas-search`` command line (typer + rich).

Bad input never shows a traceback: spec errors print located messages and exit 2.
"""

from __future__ import annotations

import sys

from . import search_cmds, spec_cmds, train_cmds  # noqa: F401  (register the commands)
from .app import app, err


def main() -> None:
    """Entry point of the ``atlas-search`` script."""
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted", markup=False)
        sys.exit(130)


__all__ = ["app", "main"]
