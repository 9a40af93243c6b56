"""Checkpoints (model + optimizer + step + history), written atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn


class CheckpointError(Exception):
    """A checkpoint that cannot be read or does not fit the config: bad input, which the
    CLI reports without a traceback."""


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` via a temporary file and an atomic rename, so a crash
    never leaves a half-written checkpoint behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (CheckpointError when the file
    is unreadable, truncated or not such a checkpoint). Read with ``weights_only=True``:
    tensors and plain data only, so a file from elsewhere cannot run code when loaded."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001  (torch raises many types for a bad file)
        text = str(exc).strip()
        why = (text.splitlines() or ["corrupt file"])[0].split(". ")[0]
        if "global" in text.lower():  # a pickled class or function, refused
            why = ("it holds objects other than tensors and plain data, which are not "
                   "loaded (loading them could run code)")
        elif why.startswith("Weights only load failed"):
            why = "not a PyTorch checkpoint (a corrupt file, or another kind of file)"
        raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {why}"
                              ) from None
    missing = [k for k in ("model", "step") if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"cannot read checkpoint {path}: not an atlas-search checkpoint "
                              f"(no {', '.join(missing)})")
    return state


def load_model_state(model: nn.Module, state: dict[str, Any], what: str) -> None:
    """Load a checkpoint's weights into ``model``; CheckpointError naming the first
    differing tensors when the model built from the config has other names or shapes.
    ``what`` says which config the model was built from."""
    have = model.state_dict()
    saved = state["model"]
    diffs = [f"{k}: {tuple(v.shape)} in the checkpoint, {tuple(have[k].shape)} here"
             for k, v in saved.items() if k in have and tuple(v.shape) != tuple(have[k].shape)]
    diffs += [f"{k}: only in the checkpoint" for k in saved if k not in have]
    diffs += [f"{k}: not in the checkpoint" for k in have if k not in saved]
    if diffs:
        more = f" (and {len(diffs) - 2} more)" if len(diffs) > 2 else ""
        raise CheckpointError(f"the checkpoint's model does not match {what}: "
                              + "; ".join(diffs[:2]) + more)
    model.load_state_dict(saved)


def check_resumable(state: dict[str, Any], path: Path | str) -> None:
    """CheckpointError naming ``path`` when ``state`` lacks what resuming needs: the
    optimizer state, the evaluation history (a list of metric dicts) and an integer step
    (an ``eval``-only checkpoint needs just the model and step)."""
    missing = [k for k in ("optimizer", "history") if k not in state]
    if missing:
        raise CheckpointError(
            f"cannot resume from {path}: it has no {' or '.join(missing)} (a checkpoint "
            "written by `train` holds the model, optimizer, step and history); start over "
            "with --force")
    step, history = state["step"], state["history"]
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise CheckpointError(f"cannot resume from {path}: its step {step!r} is not a "
                              "step count")
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise CheckpointError(f"cannot resume from {path}: its history is not a list of "
                              "evaluations")
    if not isinstance(state["optimizer"], dict):
        raise CheckpointError(f"cannot resume from {path}: its optimizer state is not an "
                              "optimizer state dict")


def load_optimizer_state(opt: torch.optim.Optimizer, state: dict[str, Any],
                         path: Path | str) -> None:
    """Load a checkpoint's optimizer state into ``opt``; CheckpointError naming ``path``
    when it does not fit ``opt``'s parameter groups (their number, sizes or tensor
    shapes), e.g. a checkpoint from before a change of the AdamW groups."""
    def refuse(why: str) -> CheckpointError:
        return CheckpointError(
            f"cannot resume from {path}: its optimizer state does not fit this model's AdamW "
            f"parameter groups ({why}); start over with --force, or train into another --out "
            "folder")

    saved = state["optimizer"]
    groups = saved.get("param_groups") if isinstance(saved, dict) else None
    if not isinstance(groups, list) or not isinstance(saved.get("state"), dict):
        raise refuse("no param_groups and state")
    have = [len(g["params"]) for g in opt.param_groups]
    got = [len(g.get("params", [])) if isinstance(g, dict) else -1 for g in groups]
    if have != got:
        raise refuse(f"groups of {got} parameters in the checkpoint, {have} here")
    try:
        opt.load_state_dict(saved)
    except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as exc:
        raise refuse(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    for gi, group in enumerate(opt.param_groups):
        for pi, p in enumerate(group["params"]):
            for key, value in opt.state.get(p, {}).items():
                if torch.is_tensor(value) and value.dim() and value.shape != p.shape:
                    raise refuse(f"group {gi} parameter {pi}: {key} has shape "
                                 f"{tuple(value.shape)}, the parameter {tuple(p.shape)}")
