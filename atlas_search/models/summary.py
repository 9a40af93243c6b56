"""Parameter and recurrent-state accounting of a built model (DESIGN.md §6-§7 constraints)."""

from __future__ import annotations

from typing import Any

from torch import nn

from .lm import LM


def count_params(model: nn.Module) -> int:
    """Total parameters (the tied head counted once)."""
    return sum(p.numel() for p in model.parameters())


def summarize(model: LM, seq_len: int) -> dict[str, Any]:
    """``{"params", "state_size", "layers": [...]}`` for ``model`` after ``seq_len`` tokens.

    ``state_size``: floats per sequence of recurrent state needed to continue (memory: its
    fixed state incl. momentum and window halo; attention: ``2 H Dh min(seq_len, window)``;
    conv buffers; see each mixer's ``state_size``). ``layers``: rows ``{name, mixer, params,
    state_size}`` for the embedding (tied head), every block and the final norm; their
    params sum to ``params``.
    """
    rows = [
        {"name": "embed", "mixer": "embedding (tied head)",
         "params": count_params(model.embed), "state_size": 0}
    ]
    for i, block in enumerate(model.blocks):
        rows.append({
            "name": f"blocks.{i}", "mixer": block.describe(),
            "params": count_params(block), "state_size": block.state_size(seq_len),
        })
    rows.append({"name": "norm_f", "mixer": "rmsnorm", "params": count_params(model.norm_f),
                 "state_size": 0})
    return {
        "params": count_params(model),
        "state_size": sum(r["state_size"] for r in rows),
        "layers": rows,
    }
