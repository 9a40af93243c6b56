"""The ``task:`` block: which synthetic or real task a config trains and scores on.

Tasks form a union discriminated by ``name``; each task adds its own model here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .base import Spec, rule_error


class MQARTask(Spec):
    """Multi-query associative recall as Zoology defines it (keys from the first half of the
    vocabulary, values from the second, queries at power-law gaps; scored on answers only)."""

    name: Literal["mqar"] = "mqar"
    vocab_size: int = Field(8192, ge=8)
    seq_len: int = Field(64, ge=4)
    num_kv_pairs: int = Field(4, ge=1)
    power_a: float = Field(0.01, gt=0, le=1, description="power-law exponent of query gaps")
    random_non_queries: bool = Field(True, description="fill non-query slots with random tokens")
    num_train: int = Field(20000, ge=1, description="training examples")
    num_test: int = Field(1000, ge=1, description="held-out examples")
    test_seq_len: int | None = Field(None, ge=4, description="extrapolation: test length")
    test_num_kv_pairs: int | None = Field(None, ge=1, description="extrapolation: test pairs")
    seed: int = Field(0, description="data seed (train and test never overlap)")

    @model_validator(mode="after")
    def _rules(self) -> MQARTask:
        for length_field, pairs_field in (
            ("seq_len", "num_kv_pairs"),
            ("test_seq_len", "test_num_kv_pairs"),
        ):
            length = getattr(self, length_field) or self.seq_len
            pairs = getattr(self, pairs_field) or self.num_kv_pairs
            if 4 * pairs > length:
                raise rule_error(
                    pairs_field,
                    f"{pairs} key-value pairs need seq_len >= {4 * pairs} (got {length}): "
                    "each pair is written once and queried once",
                )
            if 2 * pairs > self.vocab_size // 2:
                raise rule_error(
                    pairs_field,
                    f"{pairs} distinct keys do not fit in half of vocab_size {self.vocab_size}",
                )
        return self


TaskSpec = MQARTask
"""All tasks; becomes a union discriminated by ``name`` as tasks are added."""
TASK_NAMES: tuple[str, ...] = ("mqar",)
