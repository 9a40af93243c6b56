"""The memory ops and every preset model run under ``torch.inference_mode`` and give the
same results as under ``torch.no_grad`` (the reference deep-memory op takes its inner
gradient by autograd, which records nothing in inference mode: it must step out locally).

Ops: exact (bitwise) equality in float64. Models: forward, token-by-token ``step`` and a
``forward_chunk`` continuation, in float64, at tiny shapes (``head_dim`` 8, ``T = 12``).
"""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import SPACES
from test_ops_mlp import make_inputs

from atlas_search.models import build_model
from atlas_search.ops.omega_kernel import omega_kernel
from atlas_search.ops.omega_linear import omega_linear
from atlas_search.ops.omega_mlp import omega_mlp
from atlas_search.spec import ModelSpec, load

F64 = torch.float64
T, D = 9, 4
CUT = 5  # split point of a continued call (mid-chunk for chunk_size 4)


def _inputs(seed: int, kind: str = "mlp", depth: int = 2, dv: int = D) -> dict:
    return make_inputs(seed, dk=D, dv=dv, kind=kind, depth=depth, t=T)


def _flat(x) -> list[torch.Tensor]:
    if x is None or isinstance(x, int):
        return []
    if isinstance(x, torch.Tensor):
        return [x]
    return [t for item in x for t in _flat(item)]


def _assert_same(a, b) -> None:
    fa, fb = _flat(a), _flat(b)
    assert len(fa) == len(fb)
    for x, y in zip(fa, fb, strict=True):
        assert x.shape == y.shape and x.dtype == y.dtype
        assert torch.equal(x, y), (x - y).abs().max().item()


def _mlp_call(inp: dict, sl: slice, state, **kw):
    gates = {n: inp[n][:, sl] for n in ("alpha", "eta", "gamma", "theta")}
    if kw["optimizer"] == "gd":
        gates["theta"] = None
    return omega_mlp(
        inp["q"][:, sl], inp["k"][:, sl], inp["v"][:, sl], inp["weights"],
        initial_state=state, **gates, **kw,
    )


def _mlp_two_calls(inp: dict, **kw):
    """A whole-sequence call, and the same sequence as two calls chained by the state."""
    o, st = _mlp_call(inp, slice(None), None, **kw)
    o1, st1 = _mlp_call(inp, slice(0, CUT), None, **kw)
    o2, st2 = _mlp_call(inp, slice(CUT, None), st1, **kw)
    return o, st, o1, o2, st2


MLP_CASES = [
    # (backend, kind, depth, optimizer, objective, layer_norm, dv)
    *[("reference", "mlp", 2, opt, obj, False, D)
      for opt, obj in itertools.product(("gd", "momentum", "muon"), ("l2", "dot"))],
    ("reference", "gated_mlp", 2, "momentum", "l2", True, D),
    ("reference", "mlp", 3, "gd", "l2", True, D + 1),  # no residual (Dk != Dv), depth 3
    ("torch", "mlp", 2, "muon", "l2", False, D),
    ("torch", "gated_mlp", 3, "momentum", "dot", True, D),
    ("auto", "mlp", 2, "gd", "l2", False, D),
    ("triton", "gated_mlp", 2, "gd", "l2", False, D),
]


@pytest.mark.parametrize("case", MLP_CASES, ids=lambda c: "-".join(map(str, c)))
def test_omega_mlp_inference_mode_equals_no_grad(case):
    backend, kind, depth, opt, obj, ln, dv = case
    inp = _inputs(0, kind, depth, dv)
    kw = dict(kind=kind, layer_norm=ln, window=3, chunk_size=4, optimizer=opt, objective=obj,
              backend=backend)
    with torch.no_grad():
        ref = _mlp_two_calls(inp, **kw)
    with torch.inference_mode():
        got = _mlp_two_calls(inp, **kw)
        assert got[0].is_inference()  # usual inference-mode outputs for the caller
        assert torch.isfinite(got[0] * 2).all()
    _assert_same(got, ref)
    assert not got[0].requires_grad and all(not w.requires_grad for w in got[1].weights)


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_omega_mlp_state_from_inference_mode_continues(backend):
    """A state made under inference_mode continues under no_grad like a no_grad state."""
    inp = _inputs(1)
    kw = dict(kind="mlp", window=3, chunk_size=4, optimizer="momentum", objective="l2",
              backend=backend)
    with torch.no_grad():
        _, st_ref = _mlp_call(inp, slice(0, CUT), None, **kw)
        ref = _mlp_call(inp, slice(CUT, None), st_ref, **kw)
    with torch.inference_mode():
        _, st_inf = _mlp_call(inp, slice(0, CUT), None, **kw)
    with torch.no_grad():
        got = _mlp_call(inp, slice(CUT, None), st_inf, **kw)
    _assert_same(got, ref)


def test_omega_mlp_reference_grad_path_unchanged():
    """With grad enabled the reference op still builds the graph through the inner
    gradient (create_graph) and its values equal the no_grad / inference_mode ones."""
    inp = _inputs(2)
    kw = dict(kind="mlp", window=3, chunk_size=4, optimizer="gd", objective="l2",
              backend="reference")
    leaves = {n: x.clone().requires_grad_(True) for n, x in inp.items() if n != "weights"}
    leaves["weights"] = [w.clone().requires_grad_(True) for w in inp["weights"]]
    o, st = _mlp_call(leaves, slice(None), None, **kw)
    with torch.inference_mode():
        o_inf, _ = _mlp_call(inp, slice(None), None, **kw)
    assert torch.equal(o.detach(), o_inf)
    (o.square().sum() + sum(w.sum() for w in st.weights)).backward()
    for name in ("k", "v", "eta", "gamma", "alpha"):
        assert leaves[name].grad is not None and leaves[name].grad.abs().sum() > 0, name
    for w in leaves["weights"]:
        assert w.grad is not None and w.grad.abs().sum() > 0


@pytest.mark.parametrize("backend", ["reference", "torch"])
@pytest.mark.parametrize("opt", ["gd", "momentum", "muon"])
def test_linear_ops_inference_mode_equal_no_grad(backend, opt):
    inp = _inputs(3)
    gates = {n: inp[n] for n in ("alpha", "eta", "gamma", "theta")}
    if opt == "gd":
        gates["theta"] = None
    kw = dict(window=3, chunk_size=4, optimizer=opt, objective="l2", backend=backend, **gates)

    def calls():
        lin = omega_linear(inp["q"], inp["k"], inp["v"], **kw)
        if opt == "muon":  # the kernel form has no Muon
            return lin
        return lin, omega_kernel(inp["q"], inp["k"], inp["v"], kernel="exp", **kw)

    with torch.no_grad():
        ref = calls()
    with torch.inference_mode():
        got = calls()
    _assert_same(got, ref)


# ----------------------------------------------------------------------------- models

PRESETS = sorted((SPACES / "presets").glob("*.yaml"))
VOCAB = 32


def _model(path, backend: str | None = None):
    data = {**load(path).model.model_dump(), "head_dim": 8}
    if backend is not None:
        data["memory"] = {**data["memory"], "backend": backend}
    torch.manual_seed(0)
    return build_model(ModelSpec.model_validate(data), vocab_size=VOCAB, dtype=F64).eval()


def _model_outputs(model, tokens):
    full = model(tokens)
    rec = model.generate_logits(tokens)
    first, cache = model.forward_chunk(tokens[:, :CUT], model.init_cache(tokens.shape[0]))
    rest, cache = model.forward_chunk(tokens[:, CUT:], cache)
    return full, rec, first, rest


def _check_model(model) -> None:
    tokens = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = _model_outputs(model, tokens)
    with torch.inference_mode():
        got = _model_outputs(model, tokens)
    for r, x in zip(ref, got, strict=True):
        assert torch.isfinite(x).all()
        torch.testing.assert_close(x, r, rtol=1e-12, atol=1e-12)
    # the recurrent paths agree with the parallel forward under inference_mode too
    torch.testing.assert_close(got[1], got[0], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(torch.cat(got[2:], 1), got[0], rtol=1e-9, atol=1e-9)


def test_presets_found():
    assert len(PRESETS) >= 22


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_preset_inference_mode_equals_no_grad(path):
    _check_model(_model(path))


DEEP = [p for p in PRESETS if load(p).model.memory.kind != "linear"]


@pytest.mark.parametrize("path", DEEP, ids=lambda p: p.stem)
def test_deep_preset_reference_backend_inference_mode(path):
    _check_model(_model(path, "reference"))
