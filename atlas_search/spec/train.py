"""The ``train:`` block: optimisation of the outer loop."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from .base import Spec, rule_error

MAX_SEED = 2**63 - 1
"""The largest seed: ``torch.manual_seed`` and ``torch.Generator`` take 64-bit seeds."""
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
LearningRate = Annotated[float, Field(gt=0, le=1)]
"""An AdamW peak learning rate (``train.lr`` and each value of a MAD ``lr_grid``)."""
WeightDecay = Annotated[float, Field(ge=0, allow_inf_nan=False)]
"""An AdamW weight decay (``train.weight_decay`` and each value of a MAD ``wd_grid``)."""


class TrainSpec(Spec):
    """AdamW with warmup and a decay schedule, evaluated every ``eval_every`` steps."""

    steps: int = Field(1000, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: LearningRate = 1e-3
    weight_decay: WeightDecay = Field(0.1, description="AdamW decay, on matrices only")
    warmup: int = Field(50, ge=0, description="linear warmup steps")
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="final lr / peak lr")
    grad_clip: float | None = Field(1.0, gt=0, description="global grad-norm clip (null = off)")
    eval_every: int = Field(100, ge=1)
    seed: Seed = Field(0, description="model initialisation and batch order (0 to 2**63 - 1)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 autocast on CUDA, fp32 on CPU"
    )

    @model_validator(mode="after")
    def _rules(self) -> TrainSpec:
        if self.warmup >= self.steps and self.steps > 1:
            raise rule_error("warmup", f"warmup {self.warmup} must be below steps {self.steps}")
        return self
