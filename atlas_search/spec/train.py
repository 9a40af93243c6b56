"""The ``train:`` block: optimisation of the outer loop."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .base import Spec, rule_error


class TrainSpec(Spec):
    """AdamW with warmup and a decay schedule, evaluated every ``eval_every`` steps."""

    steps: int = Field(1000, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0, le=1)
    weight_decay: float = Field(0.1, ge=0, description="AdamW decay, on matrices only")
    warmup: int = Field(50, ge=0, description="linear warmup steps")
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="final lr / peak lr")
    grad_clip: float | None = Field(1.0, gt=0, description="global grad-norm clip (null = off)")
    eval_every: int = Field(100, ge=1)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 autocast on CUDA, fp32 on CPU"
    )

    @model_validator(mode="after")
    def _rules(self) -> TrainSpec:
        if self.warmup >= self.steps and self.steps > 1:
            raise rule_error("warmup", f"warmup {self.warmup} must be below steps {self.steps}")
        return self
