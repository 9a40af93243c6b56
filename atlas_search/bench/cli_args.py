"""Argument checks shared by the ``python -m atlas_search.bench.*`` tools.

The ``type=`` functions raise :class:`argparse.ArgumentTypeError`, so argparse exits 2 with
one ``error: argument --x: ...`` line; :func:`check_out` is called right after parsing, so a
bad output path fails before the long work starts, not after it.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


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


def _bounded(parse: Callable[[str], Any], test: Callable[[Any], bool], what: str,
             name: str) -> Callable[[str], Any]:
    """A ``type=`` function: ``parse`` the text, then require ``test`` (``what`` says it)."""

    def check(text: str) -> Any:
        x = parse(text)
        if not test(x):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return x

    check.__name__ = name
    return check


positive_int = _bounded(_int, lambda n: n >= 1, ">= 1", "positive_int")
nonneg_int = _bounded(_int, lambda n: n >= 0, ">= 0", "nonneg_int")
positive_float = _bounded(_float, lambda x: x > 0, "> 0", "positive_float")
nonneg_float = _bounded(_float, lambda x: x >= 0, ">= 0", "nonneg_float")
unit_float = _bounded(_float, lambda x: 0 < x <= 1, "in (0, 1]", "unit_float")


def int_in(lo: int, hi: int) -> Callable[[str], int]:
    """An integer in ``[lo, hi]``."""
    return _bounded(_int, lambda n: lo <= n <= hi, f"in [{lo}, {hi}]", f"int in [{lo}, {hi}]")


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
