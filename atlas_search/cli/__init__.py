"""The ``atlas-search`` command line (typer + rich).

Bad input never shows a traceback: spec errors print located messages and exit 2.
"""

from __future__ import annotations

import sys

# isort: off
# registration order is the order of --help: specs, one run, the search, benchmarks
from . import spec_cmds  # noqa: F401
from . import train_cmds  # noqa: F401
from . import search_cmds  # noqa: F401
from . import bench_cmds  # noqa: F401
# isort: on
from .app import app, err


def main() -> None:
    """Entry point of the ``atlas-search`` script."""
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted", markup=False)
        sys.exit(130)


__all__ = ["app", "main"]
