"""Polynomial feature maps: kernel identities, widths, gradients (DESIGN.md §3)."""

from __future__ import annotations

import math

import pytest
import torch

from atlas_search.ops.feature_maps import feature_dim, poly_features, taylor_coeffs

F64 = torch.float64


def rel(ref: torch.Tensor, x: torch.Tensor) -> float:
    assert not torch.isnan(x).any()
    return ((ref - x).norm() / ref.norm()).item()


def unit(*shape: int, dtype=F64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(*shape, generator=g, dtype=dtype), dim=-1)


def test_taylor_coeffs():
    assert taylor_coeffs(0) == [1.0]
    assert taylor_coeffs(3) == pytest.approx([1.0, 1.0, 0.5, 1.0 / 6.0])
    with pytest.raises(ValueError):
        taylor_coeffs(-1)


@pytest.mark.parametrize("d", [1, 5, 7])
@pytest.mark.parametrize("p", [0, 1, 2, 3])
def test_feature_dim_formulas(d, p):
    assert feature_dim(d, p, "tensor") == sum(d**i for i in range(p + 1))
    assert feature_dim(d, p, "symmetric") == math.comb(d + p, p)
    assert feature_dim(d, p, "elementwise") == 1 + p * d
    x = unit(3, d)
    a = torch.tensor(taylor_coeffs(p), dtype=F64)
    for mode in ("tensor", "symmetric", "elementwise"):
        assert poly_features(x, a, degree=p, mode=mode).shape == (3, feature_dim(d, p, mode))


def test_bad_arguments():
    x = unit(2, 3)
    with pytest.raises(ValueError):
        feature_dim(3, 2, "sketch")
    with pytest.raises(ValueError):
        poly_features(x, torch.ones(2, dtype=F64), degree=2, mode="tensor")  # needs 3 coeffs


@pytest.mark.parametrize("mode", ["tensor", "symmetric"])
@pytest.mark.parametrize("p", [1, 2, 3])
@pytest.mark.parametrize("dtype,budget", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_kernel_identity(mode, p, dtype, budget):
    """phi(x).phi(y) == sum_i a_i (x.y)^i, exactly, for random non-negative a."""
    d = 7
    x, y = unit(2, 13, d, dtype=dtype, seed=1), unit(2, 13, d, dtype=dtype, seed=2)
    g = torch.Generator().manual_seed(p)
    a = torch.rand(p + 1, generator=g, dtype=F64).to(dtype)
    a[p - 1] = 0.0  # a zero coefficient switches a whole degree block off
    fx = poly_features(x, a, degree=p, mode=mode)
    fy = poly_features(y, a, degree=p, mode=mode)
    s = (x.double() * y.double()).sum(-1)
    ref = sum(a[i].double() * s**i for i in range(p + 1))
    assert rel(ref, (fx * fy).sum(-1).double()) < budget
    # all pairs, as used in attention-like maps: Gram matrices agree too
    gram = fx[0] @ fy[0].T
    ref_gram = sum(a[i].double() * (x[0].double() @ y[0].double().T) ** i for i in range(p + 1))
    assert rel(ref_gram, gram.double()) < budget


def test_symmetric_narrower_than_tensor_same_kernel():
    x, y = unit(9, 6, seed=3), unit(9, 6, seed=4)
    a = torch.tensor(taylor_coeffs(3), dtype=F64)
    ft = [poly_features(z, a, degree=3, mode="tensor") for z in (x, y)]
    fs = [poly_features(z, a, degree=3, mode="symmetric") for z in (x, y)]
    assert fs[0].shape[-1] < ft[0].shape[-1]
    assert rel((ft[0] * ft[1]).sum(-1), (fs[0] * fs[1]).sum(-1)) < 1e-12
    # with Taylor coefficients the truncated kernel approaches exp(x.y)
    p8 = 8
    a8 = torch.tensor(taylor_coeffs(p8), dtype=F64)
    f8 = [poly_features(z, a8, degree=p8, mode="symmetric") for z in (x, y)]
    assert f8[0].shape[-1] == math.comb(6 + p8, p8)
    assert rel(torch.exp((x * y).sum(-1)), (f8[0] * f8[1]).sum(-1)) < 1e-5


@pytest.mark.parametrize("p", [1, 2, 3])
def test_elementwise_kernel(p):
    """elementwise: phi(x).phi(y) = a_0^2 + sum_{i>=1} a_i^2 sum_j (x_j y_j)^i."""
    d = 5
    x, y = unit(11, d, seed=5), unit(11, d, seed=6)
    a = torch.rand(p + 1, generator=torch.Generator().manual_seed(7), dtype=F64)
    fx = poly_features(x, a, degree=p, mode="elementwise")
    fy = poly_features(y, a, degree=p, mode="elementwise")
    ref = a[0] ** 2 + sum(a[i] ** 2 * ((x * y) ** i).sum(-1) for i in range(1, p + 1))
    assert rel(ref, (fx * fy).sum(-1)) < 1e-12
    assert torch.equal(fx[:, 1 : 1 + d], a[1] * x)  # the layout: [a_0, a_1 x, a_2 x^2, ...]


def test_no_normalisation_inside():
    """The caller normalises: scaling x by 2 scales the degree-i kernel term by 2^i."""
    x = unit(4, 5, seed=8)
    a = torch.tensor([0.0, 0.0, 1.0], dtype=F64)  # pure degree 2
    f1 = poly_features(x, a, degree=2, mode="symmetric")
    f2 = poly_features(2 * x, a, degree=2, mode="symmetric")
    assert rel(4 * (f1 * f1).sum(-1), (f2 * f1).sum(-1)) < 1e-12


@pytest.mark.parametrize("mode", ["tensor", "symmetric", "elementwise"])
def test_gradients_finite_including_zero_coeffs(mode):
    p, d = 3, 5
    x = unit(6, d, seed=9).requires_grad_(True)
    y = unit(6, d, seed=10)
    a = torch.tensor([0.0, 1.0, 0.0, 1.0 / 6.0], dtype=F64, requires_grad=True)
    fx = poly_features(x, a, degree=p, mode=mode)
    fy = poly_features(y, a, degree=p, mode=mode)
    w = torch.randn(fx.shape[-1], generator=torch.Generator().manual_seed(11), dtype=F64)
    # a loss that is linear in phi (the worst case for d sqrt(a)/da at 0) plus the kernel
    loss = (fx @ w).sum() + ((fx * fy).sum(-1) ** 2).sum()
    loss.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert torch.isfinite(a.grad).all()
    assert (a.grad != 0).all()  # zero coefficients still receive a gradient


@pytest.mark.parametrize("mode", ["tensor", "symmetric"])
def test_kernel_gradient_wrt_coeffs_is_exact(mode):
    """Through the kernel, d/da_i sum_pairs phi(x).phi(y) = sum_pairs (x.y)^i (a_i > 0)."""
    p = 3
    x, y = unit(8, 4, seed=12), unit(8, 4, seed=13)
    a = torch.tensor([0.3, 0.7, 0.2, 0.9], dtype=F64, requires_grad=True)
    kern = poly_features(x, a, degree=p, mode=mode) * poly_features(y, a, degree=p, mode=mode)
    kern.sum().backward()
    s = (x * y).sum(-1)
    ref = torch.stack([(s**i).sum() for i in range(p + 1)])
    assert rel(ref, a.grad) < 1e-12
