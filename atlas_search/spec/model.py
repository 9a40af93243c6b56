"""The ``model:`` block: mixers, memory (DESIGN.md §2-§6) and block layout.

Choices made where DESIGN.md is silent are documented on the fields.
"""

from __future__ import annotations

from math import comb
from typing import Literal

from pydantic import Field, model_validator

from .base import Spec, rule_error

MAX_FEATURE_DIM = 16384


def poly_feature_dim(d: int, degree: int, mode: str) -> int:
    """Width of the polynomial feature map of DESIGN.md §3 on a d-dim input."""
    if mode == "tensor":
        return sum(d**i for i in range(degree + 1))
    if mode == "symmetric":
        return comb(d + degree, degree)
    return 1 + degree * d  # elementwise: [a_0, a_1 x, ..., a_p x^p]


class MemorySpec(Spec):
    """The test-time memory of a memory mixer (DESIGN.md §2-§4)."""

    kind: Literal["linear", "mlp", "gated_mlp"] = Field(
        "linear", description="linear matrix memory (§2) or deep MLP memory (§4)"
    )
    depth: int = Field(2, ge=2, le=8, description="layers of an mlp/gated_mlp memory (L_M)")
    expansion: int = Field(4, ge=1, le=16, description="hidden width of deep memory / head dim")
    activation: Literal["gelu", "silu"] = Field("gelu", description="deep-memory nonlinearity")
    layer_norm: bool = Field(False, description="deep memory: x + LN(branch) instead of x + branch")
    objective: Literal["l2", "dot"] = Field(
        "l2", description="inner loss: l2 = 1/2||kM - v||^2 (delta rule), dot = -<kM, v> (Hebbian)"
    )
    feature_map: Literal["identity", "poly", "exp"] = Field(
        "identity", description="phi applied to q and k (§3); exp only for linear memory"
    )
    poly_degree: int = Field(2, ge=1, le=4, description="degree p of the poly feature map")
    poly_mode: Literal["tensor", "symmetric", "elementwise"] = Field(
        "symmetric",
        description="tensor (d^i dims per degree), symmetric (C(d+p,p) dims, same kernel), "
        "elementwise (a_i x^i per channel, a different cheap kernel)",
    )
    learn_poly_coeffs: bool = Field(True, description="learn a_i >= 0 (initialised to 1/i!)")
    normalize: bool = Field(
        False, description="divide the read-out by the same op on v=1 (dot objective only)"
    )
    window: int = Field(1, ge=1, description="Omega window c: tokens in each inner objective")
    chunk_size: int = Field(
        16, ge=1, description="chunk b: gradients taken at the state of the chunk start"
    )
    optimizer: Literal["gd", "momentum", "muon"] = Field("gd", description="inner optimizer (§2)")
    ns_steps: int = Field(5, ge=1, le=10, description="Newton-Schulz steps k (muon)")
    retention: Literal["none", "gated", "fixed"] = Field(
        "gated",
        description="forget gate alpha: none (alpha=1), gated (input-dependent alpha_t), "
        "fixed (a learned constant per head, RetNet-style)",
    )
    lr_max: float = Field(
        1.0, gt=0, le=10, description="eta_t = lr_max * sigmoid(w.x) / window (inner step size)"
    )
    window_gate: bool = Field(True, description="learn gamma_i = sigmoid(w.x_i); else gamma = 1")
    backend: Literal["auto", "reference", "torch", "triton"] = Field(
        "auto",
        description="op backend: reference (token loop), torch (chunk-parallel), triton "
        "(Triton kernels for linear memory with gd/momentum; muon and MLP memories run "
        "torch; without Triton or CUDA it runs torch with a warning); auto = triton for "
        "bf16/fp16 (autocast) on CUDA where it applies, else torch",
    )

    @model_validator(mode="after")
    def _rules(self) -> MemorySpec:
        if self.feature_map == "exp":
            if self.kind != "linear":
                raise rule_error(
                    "feature_map",
                    f"feature_map 'exp' needs kind 'linear' (got {self.kind!r}): the exponential "
                    "kernel is infinite-dimensional and only linear memory has a kernel form; "
                    "use feature_map 'poly' (Taylor coefficients approximate exp, ATLAS Eq. 4-5)",
                )
            if self.optimizer == "muon":
                raise rule_error(
                    "optimizer",
                    "optimizer 'muon' cannot run with feature_map 'exp': Newton-Schulz needs the "
                    "explicit memory matrix; use 'gd' or 'momentum', or feature_map 'poly'",
                )
        if self.normalize and self.objective != "dot":
            raise rule_error(
                "normalize", "normalize: true needs objective 'dot' (normalised Hebbian read-out)"
            )
        if self.normalize and self.kind != "linear":
            raise rule_error(
                "normalize",
                f"normalize: true needs kind 'linear' (got {self.kind!r}): the normaliser is the "
                "same linear op applied to v = 1, which a deep memory does not have",
            )
        if self.normalize and self.feature_map == "identity":
            raise rule_error(
                "normalize",
                "normalize: true needs feature_map 'exp' or 'poly': with identity features the "
                "normaliser sum_i eta_i gamma_i q.k_i changes sign and crosses zero",
            )
        return self


class ModelSpec(Spec):
    """A language model: embedding, ``n_layers`` pre-norm blocks (mixer + SwiGLU), tied head."""

    preset: str | None = Field(
        None, description="start from a named preset (spaces/presets/NAME.yaml) and override"
    )
    d_model: int = Field(128, ge=4, le=65536)
    n_layers: int = Field(2, ge=1, le=256)
    n_heads: int = Field(2, ge=1, le=256)
    head_dim: int | None = Field(None, ge=1, description="per-head width; default d_model/n_heads")
    vocab_size: int | None = Field(None, ge=2, description="default: the task's vocabulary")
    mixer: Literal["memory", "attention", "swa"] = Field(
        "memory",
        description="token mixer of every block: test-time memory, global softmax attention "
        "(RoPE), or sliding-window attention of swa_window tokens",
    )
    mixing: Literal["none", "mag", "mal"] = Field(
        "none",
        description="memory + SWA hybrid (Titans): mag = parallel branches with a learned gate, "
        "mal = memory layer then SWA layer",
    )
    swa_window: int = Field(64, ge=1, description="sliding-window attention width (swa, mag, mal)")
    short_conv: int = Field(
        4, ge=0, le=16, description="causal depthwise conv size on q/k/v (0 = off), all mixers"
    )
    rope_theta: float = Field(10000.0, gt=0, description="RoPE base of attention mixers")
    mlp: Literal["swiglu", "none"] = Field("swiglu", description="channel mixer of each block")
    mlp_ratio: float = Field(4.0, gt=0, le=16, description="SwiGLU hidden width / d_model")
    memory: MemorySpec = Field(default_factory=MemorySpec)

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim if self.head_dim is not None else self.d_model // self.n_heads

    @model_validator(mode="after")
    def _rules(self) -> ModelSpec:
        if self.head_dim is None and self.d_model % self.n_heads:
            raise rule_error(
                "n_heads",
                f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}; "
                "change one or set head_dim",
            )
        if self.mixing != "none" and self.mixer != "memory":
            raise rule_error(
                "mixing",
                f"mixing {self.mixing!r} combines memory with SWA; it needs mixer 'memory' "
                f"(got {self.mixer!r})",
            )
        mem = self.memory
        if self.mixer == "memory" and mem.feature_map == "poly":
            dim = poly_feature_dim(self.resolved_head_dim, mem.poly_degree, mem.poly_mode)
            if dim > MAX_FEATURE_DIM:
                raise rule_error(
                    "memory",
                    f"poly features of degree {mem.poly_degree} ({mem.poly_mode}) on head_dim "
                    f"{self.resolved_head_dim} have {dim} dims (limit {MAX_FEATURE_DIM}); lower "
                    "the degree, use more heads, or poly_mode 'elementwise'",
                )
        return self
