"""Metrics on a token dataset: loss on scored positions, accuracy, perplexity, bpc."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..tasks.base import IGNORE, Task, TokenDataset


def scored_loss(model: nn.Module, inputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Mean cross-entropy over scored positions and the number of correct argmaxes.

    Logits are computed only where ``targets != IGNORE`` (MQAR: 1/16 of the positions)."""
    mask = targets != IGNORE
    logits = model(inputs, positions=mask)
    gold = targets[mask]
    loss = F.cross_entropy(logits.float(), gold)
    correct = (logits.argmax(-1) == gold).sum()
    return loss, correct


@torch.no_grad()
def evaluate(model: nn.Module, data: TokenDataset, task: Task, *, batch_size: int,
             device: torch.device, autocast: bool = False) -> dict[str, float]:
    """``loss`` and ``accuracy`` on scored positions, plus ``perplexity`` (word/token LM)
    or ``bpc`` (character LM) for language-modelling tasks."""
    was_training = model.training
    model.eval()
    total_loss = 0.0
    total_correct = 0
    total = 0
    for s in range(0, len(data), batch_size):
        x = data.inputs[s:s + batch_size].to(device)
        y = data.targets[s:s + batch_size].to(device)
        n = int((y != IGNORE).sum())
        if n == 0:
            continue
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss, correct = scored_loss(model, x, y)
        total_loss += float(loss) * n
        total_correct += int(correct)
        total += n
    model.train(was_training)
    loss = total_loss / max(total, 1)
    out = {"loss": loss, "accuracy": total_correct / max(total, 1)}
    if task.kind == "lm":
        if task.unit == "char":
            out["bpc"] = loss / math.log(2)
        else:
            out["perplexity"] = math.exp(min(loss, 50.0))
    return out


def evaluate_sets(model: nn.Module, task: Task, names: list[str] | None = None, *,
                  batch_size: int, device: torch.device,
                  autocast: bool = False) -> dict[str, dict[str, float]]:
    """:func:`evaluate` on the task's eval sets ``names`` (default: all, in the task's
    order), keyed by set name (``test``, ``test@<T>``, ...)."""
    names = list(task.evals) if names is None else names
    return {name: evaluate(model, task.evals[name], task, batch_size=batch_size,
                           device=device, autocast=autocast) for name in names}


def eval_key(name: str, metric: str) -> str:
    """The flat key of eval set ``name``'s ``metric`` in a training record, e.g.
    ``test@128/accuracy`` (the set named as ``atlas-search eval`` names it)."""
    return f"{name}/{metric}"
