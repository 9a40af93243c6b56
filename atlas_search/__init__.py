"""atlas-search: declarative architecture search for ATLAS-family test-time-memory models.

Importing the package is cheap: torch, ray and triton load only where used.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "load", "build_model"]


def __getattr__(name: str) -> Any:
    if name == "load":
        from .spec import load

        return load
    if name == "build_model":
        from .models.builder import build_model

        return build_model
    raise AttributeError(f"module 'atlas_search' has no attribute {name!r}")
