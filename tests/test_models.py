"""The nn.Module layer (DESIGN.md §5): memory mixer vs a direct op call, short conv, SWA
window, positions-subset logits, builder, summary numbers, spec variants the presets do not
cover (recurrent = parallel, gradients everywhere)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import SPACES

from atlas_search.models import AttentionMixer, MemoryMixer, build_model, count_params, summarize
from atlas_search.models.gates import ALPHA_INIT, ETA_INIT, GAMMA_INIT, THETA_INIT
from atlas_search.ops.feature_maps import poly_features
from atlas_search.ops.omega_kernel import omega_kernel
from atlas_search.ops.omega_linear import omega_linear
from atlas_search.ops.omega_mlp import omega_mlp
from atlas_search.spec import ModelSpec, load

F64 = torch.float64


def spec(**kw) -> ModelSpec:
    base = dict(d_model=16, n_layers=2, n_heads=2, mlp_ratio=2.0)
    mem = kw.pop("memory", {})
    return ModelSpec.model_validate({**base, **kw, "memory": mem})


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


# ----------------------------------------------------------------------------- mixer vs op


def _conv_explicit(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """y_t = sum_m w[c, m] x_{t-(K-1)+m} (zero before the sequence), as a plain loop."""
    k = w.shape[-1]
    y = torch.zeros_like(x)
    for m in range(k):
        shift = k - 1 - m
        y[:, shift:] += w[:, 0, m] * x[:, : x.shape[1] - shift]
    return y


def _manual_mixer(mix: MemoryMixer, x: torch.Tensor) -> torch.Tensor:
    """The DESIGN §5 pipeline written out with the mixer's weights and a reference op."""
    b, t, _ = x.shape
    h, dh, mem = mix.n_heads, mix.head_dim, mix.mem
    qkv = x @ mix.qkv.weight.t()
    if mix.conv is not None:
        qkv = _conv_explicit(qkv, mix.conv.weight)
    q, k, v = F.silu(qkv).view(b, t, 3, h, dh).unbind(2)
    q, k = q / q.norm(dim=-1, keepdim=True), k / k.norm(dim=-1, keepdim=True)
    z = torch.sigmoid(x @ mix.gates.proj.weight.t() + mix.gates.proj.bias)
    g = dict(zip(mix.gates.names, z.view(b, t, -1, h).unbind(2), strict=True))
    if mem.retention == "fixed":
        g["alpha"] = torch.sigmoid(mix.gates.alpha_logit).expand(b, t, h)
    gates = dict(
        alpha=g.get("alpha"),
        eta=g["eta"]
        * mem.lr_max
        / mem.window
        * ((1 - g["theta"]) if mem.optimizer == "momentum" else 1.0),
        gamma=g.get("gamma", torch.ones(b, t, h, dtype=x.dtype)),
        theta=g.get("theta"),
        window=mem.window,
        chunk_size=mem.chunk_size,
        optimizer=mem.optimizer,
        objective=mem.objective,
        backend="reference",
    )
    if mem.feature_map == "poly":
        a = torch.log1p(torch.exp(mix.poly_raw))
        q = poly_features(q, a, degree=mem.poly_degree, mode=mem.poly_mode)
        k = poly_features(k, a, degree=mem.poly_degree, mode=mem.poly_mode)
    if mem.feature_map == "exp":
        o = omega_kernel(q, k, v, kernel="exp", **gates)
    elif mem.kind == "linear":
        o, _ = omega_linear(q, k, v, ns_steps=mem.ns_steps, **gates)
    else:
        o, _ = omega_mlp(
            q,
            k,
            v,
            list(mix.memory_weights),
            kind=mem.kind,
            activation=mem.activation,
            layer_norm=mem.layer_norm,
            ns_steps=mem.ns_steps,
            **gates,
        )
    assert o.shape == (b, t, h, dh)
    o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + 1e-6) * mix.out_norm.weight
    o = o.reshape(b, t, h * dh) * F.silu(x @ mix.g_proj.weight.t())
    return o @ mix.o_proj.weight.t()


MIXER_CASES = {
    "deltanet": dict(memory=dict(kind="linear", objective="l2", window=1, retention="none")),
    "swla_c3_momentum": dict(
        memory=dict(
            kind="linear",
            objective="dot",
            feature_map="poly",
            window=3,
            optimizer="momentum",
            chunk_size=4,
        )
    ),
    "atlas_like": dict(
        memory=dict(
            kind="mlp",
            feature_map="poly",
            poly_degree=2,
            window=3,
            optimizer="muon",
            chunk_size=4,
            expansion=2,
        )
    ),
    "dot_exp_noconv": dict(
        short_conv=0,
        memory=dict(
            kind="linear",
            objective="l2",
            feature_map="exp",
            window=2,
            chunk_size=4,
            retention="fixed",
        ),
    ),
}


@pytest.mark.parametrize("case", MIXER_CASES)
def test_memory_mixer_matches_direct_op(case):
    torch.manual_seed(0)
    mix = MemoryMixer(spec(**MIXER_CASES[case])).to(F64)
    x = torch.randn(2, 11, 16, dtype=F64)
    y = mix(x)
    assert y.shape == (2, 11, 16)
    assert rel(y, _manual_mixer(mix, x)) <= 1e-10


def test_gate_inits():
    """At x = 0 every gate sits at its documented initial value."""
    s = spec(memory=dict(window=4, optimizer="momentum", retention="gated", lr_max=2.0))
    mix = MemoryMixer(s)
    g = mix.gates(torch.zeros(1, 3, 16))
    torch.testing.assert_close(g.alpha, torch.full((1, 3, 2), ALPHA_INIT))
    # momentum: the step is eta (1 - theta), an exponential average of gradients
    torch.testing.assert_close(g.eta, torch.full((1, 3, 2), ETA_INIT * 2.0 / 4 * (1 - THETA_INIT)))
    torch.testing.assert_close(g.gamma, torch.full((1, 3, 2), GAMMA_INIT))
    torch.testing.assert_close(g.theta, torch.full((1, 3, 2), THETA_INIT))
    fixed = MemoryMixer(spec(memory=dict(retention="fixed", window_gate=False))).gates
    g = fixed(torch.randn(2, 5, 16))
    assert g.theta is None and torch.equal(g.gamma, torch.ones(2, 5, 2))
    expect = torch.tensor([1 - 2**-5, 1 - 2**-6]).expand(2, 5, 2)
    torch.testing.assert_close(g.alpha, expect)  # constant over time, per head
    poly = MemoryMixer(spec(memory=dict(feature_map="poly", poly_degree=3)))
    torch.testing.assert_close(poly.poly_coeffs(), torch.tensor([1.0, 1.0, 1 / 2, 1 / 6]))
    none = MemoryMixer(spec(memory=dict(retention="none"))).gates
    assert none(torch.randn(1, 2, 16)).alpha is None


# ----------------------------------------------------------------------------- short conv


@pytest.mark.parametrize("mixer", ["memory", "attention"])
def test_short_conv_zero_removes_conv(mixer):
    """short_conv 0 has no conv parameters, and equals a conv whose only tap is 1 on x_t."""
    torch.manual_seed(0)
    s_on, s_off = spec(mixer=mixer, short_conv=4), spec(mixer=mixer, short_conv=0)
    m_on, m_off = build_model(s_on, vocab_size=32), build_model(s_off, vocab_size=32)
    assert not any("conv" in n for n, _ in m_off.named_parameters())
    assert any("conv" in n for n, _ in m_on.named_parameters())
    missing, unexpected = m_off.load_state_dict(m_on.state_dict(), strict=False)
    assert not missing and all("conv" in n for n in unexpected)
    tokens = torch.randint(0, 32, (2, 9))
    with torch.no_grad():
        assert rel(m_on(tokens), m_off(tokens)) > 1e-3  # the random conv does something
        for n, p in m_on.named_parameters():
            if "conv" in n:
                p.zero_()
                p[..., -1] = 1.0
        torch.testing.assert_close(m_on(tokens), m_off(tokens), rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- attention


@pytest.mark.parametrize("conv", [0, 3])
def test_swa_ignores_tokens_outside_window(conv):
    """Query t sees tokens t-w+1..t (and, through a size-K conv, back to t-w-K+2)."""
    torch.manual_seed(0)
    w, s, t_len = 5, 4, 20
    att = AttentionMixer(16, 2, 8, window=w, short_conv=conv).to(F64)
    x = torch.randn(1, t_len, 16, dtype=F64)
    x2 = x.clone()
    x2[:, s] += 1.0
    y, y2 = att(x), att(x2)
    reach = s + w - 1 + max(conv - 1, 0)  # last output that can see token s
    assert torch.allclose(y[:, :s], y2[:, :s], rtol=0, atol=1e-14)  # causal
    assert (y[:, reach] - y2[:, reach]).abs().max() > 1e-6
    assert torch.allclose(y[:, reach + 1 :], y2[:, reach + 1 :], rtol=0, atol=1e-14)
    glob = AttentionMixer(16, 2, 8, window=None, short_conv=conv).to(F64)
    assert (glob(x)[:, -1] - glob(x2)[:, -1]).abs().max() > 1e-6  # global attention sees it


def test_attention_rope_relative_and_cache():
    """RoPE: scores depend on relative position only (a shifted start gives the same
    outputs), and the windowed KV cache keeps exactly w keys."""
    torch.manual_seed(0)
    att = AttentionMixer(16, 2, 7, window=4, rope_theta=100.0).to(F64)  # odd head_dim
    x = torch.randn(2, 9, 16, dtype=F64)
    st = att.init_state(2, x.device, F64)
    y0, st0 = att.forward_chunk(x, st)
    shifted = st._replace(pos=37)
    y1, _ = att.forward_chunk(x, shifted)
    assert rel(y1, y0) <= 1e-12
    assert st0.k.shape == (2, 4, 2, 7) and st0.pos == 9


# ----------------------------------------------------------------------------- LM


def test_positions_subset_logits():
    torch.manual_seed(0)
    model = build_model(spec(memory=dict(objective="dot")), vocab_size=40)
    tokens = torch.randint(0, 40, (3, 12))
    with torch.no_grad():
        full = model(tokens)
        mask = torch.rand(3, 12) < 0.3
        mask[0, 5] = True
        torch.testing.assert_close(model(tokens, positions=mask), full[mask])
        shared = torch.zeros(12, dtype=torch.bool)
        shared[[2, 7]] = True
        torch.testing.assert_close(model(tokens, positions=shared), full[:, [2, 7]])
        idx = torch.tensor([11, 0, 6])
        torch.testing.assert_close(model(tokens, positions=idx), full[:, idx])
        idx2 = torch.tensor([[1, 2], [11, 3], [4, 4]])
        expect = torch.stack([full[b, idx2[b]] for b in range(3)])
        torch.testing.assert_close(model(tokens, positions=idx2), expect)


def test_lm_ties_head_and_shapes():
    model = build_model(spec(mixer="attention"), vocab_size=40)
    assert model.embed.weight.shape == (40, 16)
    with torch.no_grad():
        h = model.hidden(torch.zeros(1, 3, dtype=torch.long))
        torch.testing.assert_close(
            model(torch.zeros(1, 3, dtype=torch.long)), model.norm_f(h) @ model.embed.weight.t()
        )


def test_chunked_recurrence_fp32():
    """Arbitrary chunk lengths continue the state; fp32 tolerance 1e-5 (DESIGN §8)."""
    torch.manual_seed(0)
    s = spec(
        mixing="mag",
        swa_window=6,
        memory=dict(
            kind="mlp",
            feature_map="poly",
            window=3,
            optimizer="muon",
            chunk_size=4,
        ),
    )
    model = build_model(s, vocab_size=32)
    tokens = torch.randint(0, 32, (2, 17))
    with torch.no_grad():
        ref = model(tokens)
        cache = model.init_cache(2)
        outs = []
        for a, b in [(0, 3), (3, 4), (4, 12), (12, 17)]:
            o, cache = model.forward_chunk(tokens[:, a:b], cache)
            outs.append(o)
        assert rel(torch.cat(outs, 1), ref) <= 1e-5
        assert rel(model.generate_logits(tokens), ref) <= 1e-5


# ----------------------------------------------------------------------------- builder


def test_build_from_config_and_spec():
    cfg = load(SPACES / "presets" / "deltanet.yaml")
    m = build_model(cfg)
    assert m.vocab_size == cfg.vocab_size()
    assert build_model(cfg, vocab_size=50).vocab_size == 50
    m64 = build_model(cfg.model, vocab_size=10, dtype=F64)
    assert all(p.dtype == F64 for p in m64.parameters())
    with pytest.raises(ValueError, match="vocab_size"):
        build_model(cfg.model)
    with pytest.raises(TypeError):
        build_model({"d_model": 8})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="normalize"):
        build_model(spec(memory=dict(kind="mlp", objective="dot", normalize=True)), vocab_size=8)
    with pytest.raises(ValueError, match="feature_map 'exp' or 'poly'"):
        build_model(spec(memory=dict(objective="dot", normalize=True)), vocab_size=8)


# ----------------------------------------------------------------------------- variants

VARIANTS = {
    "normalize_gd_poly": dict(
        memory=dict(objective="dot", feature_map="poly", normalize=True, chunk_size=4)
    ),
    "normalize_muon_poly": dict(
        memory=dict(
            objective="dot",
            feature_map="poly",
            normalize=True,
            optimizer="muon",
            window=2,
            chunk_size=4,
        )
    ),
    "normalize_exp_momentum": dict(
        memory=dict(
            objective="dot",
            feature_map="exp",
            normalize=True,
            optimizer="momentum",
            window=2,
            chunk_size=4,
        )
    ),
    "fixed_momentum_nogate": dict(
        memory=dict(
            retention="fixed", optimizer="momentum", window=3, window_gate=False, chunk_size=5
        )
    ),
    "poly_tensor_frozen_coeffs": dict(
        memory=dict(feature_map="poly", poly_mode="tensor", learn_poly_coeffs=False, window=2)
    ),
    "poly_elementwise_deg3": dict(
        memory=dict(feature_map="poly", poly_mode="elementwise", poly_degree=3, retention="none")
    ),
    "gated_mlp_depth3_ln_silu": dict(
        memory=dict(
            kind="gated_mlp",
            depth=3,
            expansion=1,
            layer_norm=True,
            activation="silu",
            optimizer="momentum",
            window=2,
            chunk_size=3,
        )
    ),
    "mlp_reference_backend": dict(
        memory=dict(kind="mlp", expansion=2, backend="reference", window=2, chunk_size=3)
    ),
    "mal_no_mlp_head_dim": dict(mixing="mal", swa_window=3, mlp="none", head_dim=6),
    "attention_odd_head_dim": dict(d_model=18, mixer="attention", short_conv=2),
}


@pytest.mark.parametrize("case", VARIANTS)
def test_variant_recurrent_and_grads(case):
    s = spec(**VARIANTS[case])
    torch.manual_seed(0)
    model = build_model(s, vocab_size=24, dtype=F64)
    tokens = torch.randint(0, 24, (2, 13))
    ref = model(tokens)
    with torch.no_grad():
        assert rel(model.generate_logits(tokens), ref.detach()) <= 1e-10
    F.cross_entropy(ref.reshape(-1, 24), tokens.reshape(-1)).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{case}: no gradient on {name}"
        assert torch.isfinite(p.grad).all(), f"{case}: non-finite gradient on {name}"
    if case == "poly_tensor_frozen_coeffs":
        assert not any("poly_raw" in n for n, _ in model.named_parameters())


# ----------------------------------------------------------------------------- summary


def _state_floats(state, anchor: bool = False) -> int:
    """Per-batch floats held by a recurrent state; the op's chunk anchor only when
    ``anchor`` (needed to continue mid-chunk with the l2 objective)."""
    if state is None or isinstance(state, int):
        return 0
    if isinstance(state, torch.Tensor):
        return state.numel()
    if isinstance(state, (list, tuple)):
        fields = getattr(state, "_fields", None)
        items = (
            [v for f, v in zip(fields, state, strict=True) if anchor or f != "anchor"]
            if fields
            else list(state)
        )
        return sum(_state_floats(v, anchor) for v in items)
    raise TypeError(type(state))


def test_summary_params():
    model = build_model(load(SPACES / "presets" / "atlas_mal.yaml").model, vocab_size=64)
    s = summarize(model, 128)
    assert s["params"] == count_params(model) == sum(p.numel() for p in model.parameters())
    assert sum(r["params"] for r in s["layers"]) == s["params"]
    assert s["state_size"] == sum(r["state_size"] for r in s["layers"])
    assert [r["name"] for r in s["layers"]] == ["embed", "blocks.0", "blocks.1", "norm_f"]
    assert s["layers"][1]["mixer"] == "memory mlp x2 poly2 l2 c=4 muon | swa w=32 (mal) + swiglu"


@pytest.mark.parametrize("seq_len", [7, 40])
def test_summary_state_attention(seq_len):
    h, dh, layers = 2, 8, 2
    glob = build_model(spec(mixer="attention", short_conv=0), vocab_size=8)
    assert summarize(glob, seq_len)["state_size"] == layers * 2 * h * dh * seq_len
    swa = build_model(spec(mixer="swa", swa_window=10, short_conv=4), vocab_size=8)
    expect = layers * (2 * h * dh * min(seq_len, 10) + 3 * (3 * h * dh))
    assert summarize(swa, seq_len)["state_size"] == expect


def test_summary_state_linear_memory():
    """At a chunk boundary (48 = 3 x 16): no anchor (see the anchor test)."""
    h, dh, layers = 2, 8, 2
    gd = build_model(spec(memory=dict(window=1)), vocab_size=8)
    assert summarize(gd, 48)["state_size"] == layers * (h * dh * dh + 3 * 3 * h * dh)
    mom = build_model(spec(short_conv=0, memory=dict(window=3, optimizer="momentum")), vocab_size=8)
    expect = layers * h * (2 * dh * dh + 2 * (dh + dh + 1))  # M, S, halo of c-1 (k, v, gamma)
    assert summarize(mom, 48)["state_size"] == expect
    poly = build_model(spec(memory=dict(feature_map="poly", poly_degree=2)), vocab_size=8)
    fdim = math.comb(dh + 2, 2)
    assert summarize(poly, 48)["state_size"] == layers * (h * fdim * dh + 3 * 3 * h * dh)


@pytest.mark.parametrize(
    "name",
    [
        "deltanet",
        "atlas_mag",
        "titans",
        "gated_deltanet_h2",
        "swa",
        "transformer",
        "omeganet",
    ],
)
def test_summary_state_matches_cache(name):
    """The formula equals the floats the recurrent cache really holds after seq_len tokens."""
    s = ModelSpec.model_validate(
        {
            **load(SPACES / "presets" / f"{name}.yaml").model.model_dump(),
            "head_dim": 4,
            "swa_window": 8,
        }
    )
    model = build_model(s, vocab_size=16)
    seq_len, b = 11, 2  # mid-chunk: the l2 objective needs its anchor to continue
    with torch.no_grad():
        _, cache = model.forward_chunk(torch.randint(0, 16, (b, seq_len)), model.init_cache(b))
    anchor = s.mixer == "memory" and s.memory.objective == "l2"
    assert _state_floats(cache, anchor) == b * summarize(model, seq_len)["state_size"]


@pytest.mark.parametrize(("objective", "kind"), [("l2", "linear"), ("l2", "mlp"),
                                                 ("dot", "linear")])
def test_state_size_counts_the_anchor_off_a_chunk_boundary(objective, kind):
    """Continuing mid-chunk with the l2 objective needs the memory at the chunk start (the
    chunk's remaining gradients are taken there); on a boundary, or for dot, it does not."""
    m = build_model(spec(memory=dict(kind=kind, objective=objective, chunk_size=4)),
                    vocab_size=8)
    mixer = m.blocks[0].mixer
    on, off = mixer.state_size(8), mixer.state_size(9)
    fast = sum(p.numel() for n, p in mixer.named_parameters() if "memory_weights" in n)
    anchor = (mixer.n_heads * mixer.fdim * mixer.head_dim if kind == "linear" else fast)
    assert off - on == (anchor if objective == "l2" else 0)
    assert anchor > 0


def test_fixed_retention_stays_finite_for_many_heads():
    m = build_model(spec(d_model=128, n_heads=64, memory=dict(retention="fixed")),
                    vocab_size=8)
    logit = m.blocks[0].mixer.gates.alpha_logit.detach().double()
    assert torch.isfinite(logit).all()
    h = torch.arange(64, dtype=torch.float64)
    want = 1.0 - 2.0 ** (-5.0 - h)
    assert torch.allclose(torch.sigmoid(logit)[:20], want[:20], rtol=0, atol=1e-7)
