"""Argument checks shared by the ``python -m atlas_search.bench.*`` tools.

The ``type=`` functions raise :class:`argparse.ArgumentTypeError`, so argparse exits 2 with
one ``error: argument --x: ...`` line; :func:`check_out` is called right after parsing, so a
bad output path fails before the long work starts, not after it.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None


def _float(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not math.isfinite(x):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return x


def positive_int(text: str) -> int:
    """An integer >= 1."""
    n = _int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def nonneg_int(text: str) -> int:
    """An integer >= 0."""
    n = _int(text)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {n}")
    return n


def int_in(lo: int, hi: int):  # noqa: ANN201
    """An integer in ``[lo, hi]``."""

    def check(text: str) -> int:
        n = _int(text)
        if not lo <= n <= hi:
            raise argparse.ArgumentTypeError(f"must be in [{lo}, {hi}], got {n}")
        return n

    check.__name__ = f"int in [{lo}, {hi}]"
    return check


def positive_float(text: str) -> float:
    """A finite number > 0."""
    x = _float(text)
    if x <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return x


def nonneg_float(text: str) -> float:
    """A finite number >= 0."""
    x = _float(text)
    if x < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return x


def unit_float(text: str) -> float:
    """A finite number in ``(0, 1]``."""
    x = _float(text)
    if not 0 < x <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return x


def positive_int_list(text: str) -> tuple[int, ...]:
    """A comma list of integers >= 1 (``1,16``), duplicates dropped, order kept."""
    parts = [p.strip() for p in text.split(",")]
    if not all(parts):
        raise argparse.ArgumentTypeError(f"expected a comma list of integers, got {text!r}")
    return tuple(dict.fromkeys(positive_int(p) for p in parts))


def dedupe(xs):  # noqa: ANN001, ANN201
    """``xs`` without repeats, first occurrences in order."""
    return list(dict.fromkeys(xs))


def out_problem(path: str | os.PathLike, is_dir: bool = False) -> str | None:
    """Why ``path`` cannot be written (as a file, or as a folder to create files in), or
    ``None``. Creates nothing: the nearest existing ancestor must be a writable folder."""
    p = Path(path)
    if p.exists():
        if is_dir and not p.is_dir():
            return f"{path} exists and is not a directory"
        if not is_dir and p.is_dir():
            return f"{path} is a directory"
        if not os.access(p, os.W_OK):
            return f"{path} is not writable"
        return None
    anc = p.absolute().parent
    while not anc.exists():
        anc = anc.parent
    if not anc.is_dir():
        return f"{anc} is not a directory"
    if not os.access(anc, os.W_OK | os.X_OK):
        return f"{anc} is not writable"
    return None


def check_out(parser: argparse.ArgumentParser, flag: str, path: str | os.PathLike | None,
              is_dir: bool = False) -> None:
    """``parser.error`` (exit 2) when ``path`` (if given) cannot be written."""
    if path is None:
        return
    why = out_problem(path, is_dir)
    if why:
        parser.error(f"argument {flag}: cannot write there: {why}")
