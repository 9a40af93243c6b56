"""Kernel-form linear memory (exp / truncated-Taylor kernels), DESIGN.md §2-§3."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from atlas_search.ops.feature_maps import poly_features, taylor_coeffs
from atlas_search.ops.omega_kernel import omega_kernel

F64 = torch.float64
B, T, H, D, DV = 2, 29, 3, 5, 7


def rel(ref: torch.Tensor, x: torch.Tensor) -> float:
    assert not torch.isnan(x).any()
    return ((ref - x).norm() / ref.norm()).item()


def make(seed: int = 0, dtype=F64, t: int = T, unit_gates: bool = False) -> dict:
    g = torch.Generator().manual_seed(seed)

    def rnd(*s):
        return torch.randn(*s, generator=g, dtype=F64)

    def sig(lo=0.0):
        return (lo + (1 - lo) * torch.sigmoid(rnd(B, t, H))).to(dtype)

    x = {
        "q": F.normalize(rnd(B, t, H, D), dim=-1).to(dtype),
        "k": F.normalize(rnd(B, t, H, D), dim=-1).to(dtype),
        "v": rnd(B, t, H, DV).to(dtype),
    }
    if unit_gates:
        x |= {"alpha": None, "eta": 1.0, "gamma": None, "theta": None}
    else:
        x |= {"alpha": sig(0.5), "eta": sig(), "gamma": sig(), "theta": sig()}
    return x


def explicit_memory(phq, phk, v, alpha, eta, gamma, theta, c, b, optimizer, objective):
    """Straightforward token loop of DESIGN §2 on explicit features (M: [B, H, F, Dv])."""
    bsz, t_len, h, f = phk.shape
    M = phk.new_zeros(bsz, h, f, v.shape[-1])
    S = torch.zeros_like(M)
    anchor = M
    outs = []
    for t in range(1, t_len + 1):  # 1-indexed as in the contract
        if (t - 1) % b == 0:
            anchor = M  # M_{t'}, t' = b floor((t-1)/b)
        G = torch.zeros_like(M)
        for i in range(max(1, t - c + 1), t + 1):
            ki, vi = phk[:, i - 1], v[:, i - 1]  # [B, H, F], [B, H, Dv]
            if objective == "l2":
                resid = torch.einsum("bhf,bhfv->bhv", ki, anchor) - vi
            else:
                resid = -vi
            G = G + gamma[:, i - 1, :, None, None] * ki[..., :, None] * resid[..., None, :]
        a_t, e_t = alpha[:, t - 1, :, None, None], eta[:, t - 1, :, None, None]
        if optimizer == "gd":
            M = a_t * M - e_t * G
        else:
            S = theta[:, t - 1, :, None, None] * S - e_t * G
            M = a_t * M + S
        outs.append(torch.einsum("bhf,bhfv->bhv", phq[:, t - 1], M))
    return torch.stack(outs, dim=1)


@pytest.mark.parametrize("optimizer", ["gd", "momentum"])
@pytest.mark.parametrize("objective", ["l2", "dot"])
@pytest.mark.parametrize("c,b", [(1, 1), (1, 4), (3, 1), (3, 4)])
def test_poly_kernel_equals_explicit_features(optimizer, objective, c, b):
    """THE identity: kernel form with the truncated Taylor kernel == explicit op on
    symmetric poly features, for both backends."""
    p = 2
    x = make(seed=c * 10 + b)
    a = torch.tensor(taylor_coeffs(p), dtype=F64)
    phq = poly_features(x["q"], a, degree=p, mode="symmetric")
    phk = poly_features(x["k"], a, degree=p, mode="symmetric")
    gates = {n: x[n] for n in ("alpha", "eta", "gamma", "theta")}
    ref = explicit_memory(
        phq, phk, x["v"], **gates, c=c, b=b, optimizer=optimizer, objective=objective
    )
    for backend in ("reference", "torch"):
        o = omega_kernel(
            x["q"],
            x["k"],
            x["v"],
            **gates,
            window=c,
            chunk_size=b,
            optimizer=optimizer,
            objective=objective,
            kernel="poly",
            degree=p,
            backend=backend,
        )
        assert o.shape == (B, T, H, DV)
        assert rel(ref, o) < 1e-10, backend


def test_poly_kernel_custom_coeffs_and_scale():
    """coeffs and scale: kappa = sum_i a_i (scale x.y)^i == features of sqrt(scale) x."""
    p, c, b, sc = 3, 2, 3, 0.7
    x = make(seed=5)
    a = torch.tensor([0.2, 0.0, 1.3, 0.4], dtype=F64)
    phq = poly_features(sc**0.5 * x["q"], a, degree=p, mode="tensor")
    phk = poly_features(sc**0.5 * x["k"], a, degree=p, mode="tensor")
    gates = {n: x[n] for n in ("alpha", "eta", "gamma", "theta")}
    ref = explicit_memory(phq, phk, x["v"], **gates, c=c, b=b, optimizer="momentum", objective="l2")
    o = omega_kernel(
        x["q"],
        x["k"],
        x["v"],
        **gates,
        window=c,
        chunk_size=b,
        optimizer="momentum",
        objective="l2",
        kernel="poly",
        degree=p,
        coeffs=a,
        scale=sc,
    )
    assert rel(ref, o) < 1e-10


@pytest.mark.parametrize("optimizer", ["gd", "momentum"])
@pytest.mark.parametrize("objective", ["l2", "dot"])
@pytest.mark.parametrize("c,b", [(1, 1), (3, 4), (4, 3), (2, 64)])
@pytest.mark.parametrize("dtype,budget", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_exp_chunked_matches_reference(optimizer, objective, c, b, dtype, budget):
    x = make(seed=c + 7 * b, dtype=dtype)
    x64 = make(seed=c + 7 * b)
    kw = {"window": c, "chunk_size": b, "optimizer": optimizer, "objective": objective}
    ref = omega_kernel(**x64, **kw, backend="reference")
    o = omega_kernel(**x, **kw, backend="torch")
    assert o.dtype == dtype
    assert rel(ref, o.double()) < budget


def test_window_covering_everything_and_b_independence_for_dot():
    """dot: the gradient never depends on M, so every chunk size gives the same output.
    l2 with c >= T and b = T: every gradient is taken at M_0 = 0 (closed form below)."""
    x = make(seed=3)
    kw = {"optimizer": "gd", "objective": "dot", "window": 2}
    outs = [omega_kernel(**x, chunk_size=b, **kw) for b in (1, 5, 29)]
    assert rel(outs[0], outs[1]) < 1e-12 and rel(outs[0], outs[2]) < 1e-12
    # c >= T, alpha = 1, b = T, l2: every step's gradient is at M_0 = 0, token i is in every
    # window from i on, so o_t = sum_{i<=t} (sum_{s=i..t} eta_s) gamma_i exp(q_t.k_i) v_i
    x |= {"alpha": None}
    o = omega_kernel(**x, window=T, chunk_size=T, optimizer="gd", objective="l2")
    kqk = torch.einsum("bthd,bshd->bhts", x["q"], x["k"]).exp()
    cum = x["eta"].cumsum(1).transpose(1, 2)  # [B, H, T]
    prev = cum - x["eta"].transpose(1, 2)  # sum_{s<i} eta_s
    w = (cum[..., :, None] - prev[..., None, :]) * x["gamma"].transpose(1, 2)[..., None, :]
    w = (w * kqk).tril()  # [B, H, t, i]
    ref = torch.einsum("bhti,bihv->bthv", w, x["v"])
    assert rel(ref, o) < 1e-10


@pytest.mark.parametrize("dtype,budget", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_normalised_dot_exp_is_softmax_attention(dtype, budget, backend):
    g = torch.Generator().manual_seed(11)
    q, k = (3 * torch.randn(B, T, H, D, generator=g, dtype=F64).to(dtype) for _ in range(2))
    v = torch.randn(B, T, H, DV, generator=g, dtype=F64).to(dtype)
    sc = D**-0.5
    o = omega_kernel(
        q,
        k,
        v,
        alpha=None,
        eta=1.0,
        gamma=None,
        theta=None,
        window=1,
        chunk_size=4,
        optimizer="gd",
        objective="dot",
        kernel="exp",
        scale=sc,
        normalize=True,
        backend=backend,
    )
    ref = F.scaled_dot_product_attention(
        *(z.double().transpose(1, 2) for z in (q, k, v)), is_causal=True, scale=sc
    ).transpose(1, 2)
    assert o.dtype == dtype
    assert rel(ref, o.double()) < budget


def test_unnormalised_dot_exp_is_deep_transformer():
    """DeepTransformers (ATLAS Eq. 26): o_t = sum_{i<=t} exp(q_t.k_i) v_i."""
    x = make(seed=4, unit_gates=True)
    o = omega_kernel(**x, window=1, chunk_size=8, optimizer="gd", objective="dot")
    w = torch.einsum("bthd,bshd->bhts", x["q"], x["k"]).exp().tril()
    ref = torch.einsum("bhts,bshv->bthv", w, x["v"])
    assert rel(ref, o) < 1e-10


def test_dot_kernel_delta_rule():
    """Dot (c = b = 1, no decay): u_t = eta_t (v_t - sum_{j<t} u_j kappa(k_j, k_t)),
    o_t = sum_{j<=t} u_j kappa(k_j, q_t); and the batched triangular-solve form."""
    x = make(seed=6)
    eta = x["eta"]
    o = omega_kernel(
        x["q"],
        x["k"],
        x["v"],
        alpha=None,
        eta=eta,
        gamma=None,
        theta=None,
        window=1,
        chunk_size=1,
        optimizer="gd",
        objective="l2",
    )
    kap = lambda a, b: torch.einsum("bhd,bhd->bh", a, b).exp()  # noqa: E731
    us, outs = [], []
    for t in range(T):
        u = x["v"][:, t] - sum(
            (us[j] * kap(x["k"][:, j], x["k"][:, t])[..., None] for j in range(t)),
            torch.zeros_like(x["v"][:, t]),
        )
        us.append(eta[:, t, :, None] * u)
        outs.append(sum(us[j] * kap(x["k"][:, j], x["q"][:, t])[..., None] for j in range(t + 1)))
    ref = torch.stack(outs, dim=1)
    assert rel(ref, o) < 1e-10
    # U = (I + diag(eta) stril(exp(K K^T)))^{-1} diag(eta) V
    kk = torch.einsum("bthd,bshd->bhts", x["k"], x["k"]).exp().tril(-1)
    et = eta.permute(0, 2, 1)[..., None]
    U = torch.linalg.solve_triangular(
        torch.eye(T, dtype=F64) + et * kk, et * x["v"].transpose(1, 2), upper=False
    )
    assert rel(U, torch.stack(us, dim=2)) < 1e-10


@pytest.mark.parametrize("optimizer", ["gd", "momentum"])
@pytest.mark.parametrize("objective", ["l2", "dot"])
@pytest.mark.parametrize("kernel", ["exp", "poly"])
def test_gradients_finite_and_nonzero(optimizer, objective, kernel):
    t = 11
    x = make(seed=8, t=t)
    leaves = {n: z.clone().requires_grad_(True) for n, z in x.items()}
    coeffs = torch.tensor(taylor_coeffs(2), dtype=F64, requires_grad=True)
    extra = {"degree": 2, "coeffs": coeffs} if kernel == "poly" else {}
    grads = {}
    for backend in ("reference", "torch"):
        o = omega_kernel(
            **leaves,
            window=2,
            chunk_size=3,
            optimizer=optimizer,
            objective=objective,
            kernel=kernel,
            backend=backend,
            **extra,
        )
        w = torch.randn(o.shape, generator=torch.Generator().manual_seed(9), dtype=F64)
        params = [leaves[n] for n in ("q", "k", "v", "alpha", "eta", "gamma")]
        if optimizer == "momentum":
            params.append(leaves["theta"])
        if kernel == "poly":
            params.append(coeffs)
        grads[backend] = torch.autograd.grad((o * w).sum(), params)
    for gr, gt in zip(grads["reference"], grads["torch"], strict=True):
        assert torch.isfinite(gt).all() and gt.abs().sum() > 0
        assert rel(gr, gt) < 1e-10
    if objective == "dot" and kernel == "exp":
        # normalised softmax-like path also back-propagates everywhere
        o = omega_kernel(
            **leaves, window=2, chunk_size=3, optimizer=optimizer, objective="dot", normalize=True
        )
        gs = torch.autograd.grad(o.square().sum(), [leaves[n] for n in ("q", "k", "v")])
        assert all(torch.isfinite(g_).all() and g_.abs().sum() > 0 for g_ in gs)


def test_errors():
    x = make(seed=1, t=5)
    kw = {"window": 1, "chunk_size": 1}
    with pytest.raises(ValueError, match="Newton-Schulz"):
        omega_kernel(**x, **kw, optimizer="muon", objective="l2")
    with pytest.raises(ValueError, match="normalize"):
        omega_kernel(**x, **kw, optimizer="gd", objective="l2", normalize=True)
    with pytest.raises(ValueError, match="theta"):
        omega_kernel(**(x | {"theta": None}), **kw, optimizer="momentum", objective="l2")
    with pytest.raises(ValueError, match="degree"):
        omega_kernel(**x, **kw, optimizer="gd", objective="l2", kernel="poly")


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_normalised_softmax_survives_large_logits_fp32(backend):
    """Logits up to ~300 overflow exp in fp32; the per-query max shift keeps it exact."""
    g = torch.Generator().manual_seed(12)
    q, k = (F.normalize(torch.randn(1, T, 2, D, generator=g), dim=-1) for _ in range(2))
    v = torch.randn(1, T, 2, DV, generator=g)
    sc = 300.0
    o = omega_kernel(
        q, k, v, alpha=None, eta=1.0, gamma=None, theta=None, window=1, chunk_size=5,
        optimizer="gd", objective="dot", scale=sc, normalize=True, backend=backend,
    )  # fmt: skip
    ref = F.scaled_dot_product_attention(
        *(z.double().transpose(1, 2) for z in (q, k, v)), is_causal=True, scale=sc
    ).transpose(1, 2)
    assert rel(ref, o.double()) < 1e-5


def test_triton_backend_name_runs_the_torch_form():
    """The kernel form has no Triton kernel: ``backend="triton"`` is accepted (one setting
    serves every memory kind) and computes exactly what the torch form computes."""
    x = make(seed=3)
    kw = {"window": 3, "chunk_size": 4, "optimizer": "momentum", "objective": "l2"}
    got = omega_kernel(**x, **kw, backend="triton")
    assert torch.equal(got, omega_kernel(**x, **kw, backend="torch"))
