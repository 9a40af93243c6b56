"""Triton backend of the linear-memory Omega op (DESIGN.md §2, §8) vs the reference loop.

On CPU the kernels run in the Triton interpreter. Triton fixes interpreter vs compiled mode
when it is *first imported* (its standard library, e.g. ``tl.sum``, is decorated then), so
tests/conftest.py sets ``TRITON_INTERPRET=1`` on machines without CUDA before any test
module is imported. There the CPU tests never skip: if triton was imported in compiled mode
anyway, they fail. On a CUDA machine the environment is left alone: the ``cuda`` params run
the compiled kernels in fp32 and bf16, and the ``cpu`` params run in a subprocess with
``TRITON_INTERPRET=1`` (``test_cpu_params_in_interpreter_subprocess``), because one process
cannot hold both modes.
"""

from __future__ import annotations

import functools
import itertools
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from atlas_search.bench.kernel_check import budget_of, make_inputs, rel_err, run_case
from atlas_search.ops import omega_mlp, omega_triton
from atlas_search.ops.omega_linear import omega_linear

F64, F32, BF16 = torch.float64, torch.float32, torch.bfloat16
INTERP = os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")
CUDA = torch.cuda.is_available()
SHAPE = (1, 21, 1, 5, 7)  # B, T, H, Dk, Dv: odd T (partial last chunk for b = 4, 16)
SHAPE_B1 = (1, 13, 1, 5, 7)  # b = 1: one chunk per token, the interpreter's slow case
GRID = list(itertools.product(("gd", "momentum"), ("l2", "dot"), (1, 3, 8), (1, 4, 16)))

DEVICES = [
    pytest.param("cpu", marks=pytest.mark.skipif(
        CUDA and not INTERP, reason="runs in test_cpu_params_in_interpreter_subprocess")),
    pytest.param("cuda", marks=pytest.mark.skipif(
        not CUDA or INTERP, reason="needs CUDA and a process without TRITON_INTERPRET")),
]


@pytest.fixture(autouse=True)
def _nan_buffers_and_fresh_warnings(monkeypatch):
    """Every kernel buffer starts as NaN (unwritten memory shows up as NaN in the checks);
    every test sees the fallback warnings (and the failed-compile memory) afresh."""
    monkeypatch.setattr(omega_triton, "NAN_FILL", True)
    monkeypatch.setattr(omega_triton, "AUTOTUNE", False)  # on CUDA: one compile per shape
    # (the once-per-process note that backend="triton" runs in fla #640's Triton range on
    # Hopper counts as given: these tests check the kernels there, with warnings as errors)
    monkeypatch.setattr(omega_triton, "_WARNED", {"hopper-triton"})
    monkeypatch.setattr(omega_triton, "_BROKEN", set())


def dtypes_for(device: str) -> tuple[torch.dtype, ...]:
    return (F64, F32) if device == "cpu" else (F32, BF16)


@functools.cache
def reference(opt, obj, c, b, shape=SHAPE, round_to=None):
    return run_case("reference", F64, "cpu", opt, obj, c, b, make_inputs(*shape),
                    round_to=round_to)


def triton_run(device, dtype, opt, obj, c, b, shape=SHAPE, round_to=None, **kw):
    n0 = omega_triton.stats["backward"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback allowed here
        got = run_case("triton", dtype, device, opt, obj, c, b, make_inputs(*shape),
                       round_to=round_to, **kw)
    assert omega_triton.stats["backward"] == n0 + 1, "the Triton kernels did not run"
    return got


def check(ref, got, dtype, extra=""):
    assert got.keys() == ref.keys()
    budget = 1e-10 if dtype == F64 else None
    errs = {n: rel_err(ref[n], got[n]) for n in ref}
    for n, e in errs.items():
        assert e <= (budget or budget_of(dtype, n)), (extra, dtype, n, errs)
    return errs


# ---------------------------------------------------------------- 1. the support grid


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("opt,obj,c,b", GRID)
def test_grid_matches_reference(device, opt, obj, c, b):
    """Outputs, final memory/momentum/anchor and the gradients of q, k, v, every gate and
    M_0: fp64 <= 1e-10 and fp32 <= 1e-5 on CPU (interpreter); fp32 <= 1e-5 and bf16
    within the DESIGN.md §8 budgets on CUDA."""
    shape = SHAPE if b > 1 else SHAPE_B1
    for dtype in dtypes_for(device):
        rnd = dtype if dtype == BF16 else None
        ref = reference(opt, obj, c, b, shape=shape, round_to=rnd)
        got = triton_run(device, dtype, opt, obj, c, b, shape=shape, round_to=rnd)
        check(ref, got, dtype, (opt, obj, c, b))


@pytest.mark.parametrize("device", DEVICES)
def test_batch_heads_and_column_blocks(device):
    """B = H = 2 and Dk = Dv = 20 (two column blocks and two Dk blocks of 16 under the
    interpreter): the per-(b, h, column block) offsets, the Dv loop of the dQ/dK kernel and
    the partial sums over Dk blocks."""
    shape = (2, 11, 2, 20, 20)
    for opt in ("gd", "momentum"):
        ref = reference(opt, "l2", 3, 4, shape=shape)
        got = triton_run(device, F32, opt, "l2", 3, 4, shape=shape)
        check(ref, got, F32, opt)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("opt,obj", [("gd", "l2"), ("momentum", "dot")])
def test_half_precision_operands(device, opt, obj):
    """fp16 inputs take the low-precision ``tl.dot`` operand path (fp32 accumulation, fp32
    states) that bf16 takes on a GPU; bf16 itself in the interpreter computes its dots in
    fp32 (the interpreter's bf16 dot is broken). DESIGN.md §8 half-precision budgets
    against the fp64 reference on the same rounded inputs."""
    f16 = torch.float16
    ref = reference(opt, obj, 3, 4, round_to=f16)
    got = triton_run(device, f16, opt, obj, 3, 4, round_to=f16)
    check(ref, got, f16, (opt, obj))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("opt,obj,c", [("gd", "l2", 1), ("gd", "l2", 3), ("gd", "dot", 8),
                                       ("momentum", "l2", 3), ("momentum", "dot", 1)])
def test_output_kernel_loop_form(device, opt, obj, c, monkeypatch):
    """The output kernel's ``VLOOP`` form (one program per chunk looping over the Dv
    blocks, ``P = C ∘ Q K_I^T`` computed once) against the reference: Dv = 20 is two
    column blocks under the interpreter (and a masked partial one), T = 11 a partial last
    chunk; on CUDA the loop configs are put first, so the fixed config is one of them."""
    monkeypatch.setattr(omega_triton, "INTERPRET_VLOOP", True)
    if device == "cuda":
        first = omega_triton.configs

        def loop_first(name, dk, dv):
            return tuple(sorted(first(name, dk, dv), key=lambda cfg: not cfg.loop))

        monkeypatch.setattr(omega_triton, "configs", loop_first)
        assert omega_triton.configs("out", 20, 20)[0].loop
    shape = (2, 11, 2, 20, 20)
    for dtype in dtypes_for(device):
        rnd = dtype if dtype == BF16 else None
        ref = reference(opt, obj, c, 4, shape=shape, round_to=rnd)
        got = triton_run(device, dtype, opt, obj, c, 4, shape=shape, round_to=rnd)
        check(ref, got, dtype, (opt, obj, c))


@pytest.mark.parametrize("device", DEVICES)
def test_dc_end_partials_beyond_the_launched_blocks_are_zero(device, monkeypatch):
    """``_omega_bwd_dv`` writes ``dc_end`` (``dcS_end``) per Dv block into partials sized
    for the narrowest ``BV``; a wider autotuned config leaves rows unwritten, which must
    add nothing. Two rows more than the launch writes (NaN-filled buffers elsewhere): the
    gate gradients still match the reference."""
    first = omega_triton._dv_partials
    monkeypatch.setattr(omega_triton, "_dv_partials", lambda dk, dv, i: first(dk, dv, i) + 2)
    shape = (1, 11, 2, 20, 20)
    for opt, obj in (("gd", "l2"), ("momentum", "dot")):
        ref = reference(opt, obj, 3, 4, shape=shape)
        got = triton_run(device, F32, opt, obj, 3, 4, shape=shape)
        check(ref, got, F32, opt)


@pytest.mark.parametrize("device", DEVICES)
def test_column_blocks_dot_objective(device):
    """The dot objective (no ``E`` buffer, no ``K_I^T dE`` term in the dM recurrence) with
    two column blocks and two Dk blocks; one forward pass counts one in ``stats``."""
    shape = (2, 11, 2, 20, 20)
    for opt in ("gd", "momentum"):
        ref = reference(opt, "dot", 3, 4, shape=shape)
        n0 = dict(omega_triton.stats)
        got = triton_run(device, F32, opt, "dot", 3, 4, shape=shape)
        assert omega_triton.stats["forward"] == n0["forward"] + 1
        check(ref, got, F32, opt)


@pytest.mark.skipif(CUDA and not INTERP, reason="CUDA machine: runs in the subprocess")
@pytest.mark.parametrize("mom,l2", [(False, True), (True, False), (True, True)])
def test_state_kernel_writes_every_chunk_start(mom, l2):
    """``_omega_states`` (the only sequential forward kernel): the buffer of chunk-start
    states ``[BH, NT, Dk, Dv]`` and the final state equal the torch chunk recurrence."""
    g = torch.Generator().manual_seed(3)
    bh, nt, b, n, dk, dv = 3, 4, 4, 6, 5, 20

    def rnd(*s, scale=1.0):
        return scale * torch.randn(*s, generator=g, dtype=F64)

    t_len = nt * b - 1  # a partial last chunk (its tokens past T are zeros)
    q = rnd(1, t_len, bh, dk)
    k, v = rnd(1, t_len, bh, dk, scale=0.5), rnd(1, t_len, bh, dv)
    hk, hv = rnd(bh, n - b, dk, scale=0.5), rnd(bh, n - b, dv)  # the halo before T = 0
    a, c, bm = rnd(bh, nt, b), rnd(bh, nt, b, n, scale=0.1), rnd(bh, nt, b)
    ae, be, te = rnd(bh, nt), rnd(bh, nt), rnd(bh, nt)
    ce, cse = rnd(bh, nt, n, scale=0.1), rnd(bh, nt, n, scale=0.1)
    m0, s0 = rnd(bh, dk, dv), rnd(bh, dk, dv)
    if not mom:
        bm = be = te = cse = s0 = None
    kern = omega_triton._kernels()
    mf, sf, ms, ss, man = omega_triton._launch_states(kern, k, v, hk, hv, a, ae, be, te, ce,
                                                      cse, m0, s0, mom, l2)
    assert torch.equal(man, ms[:, nt - 1])  # the anchor: the start state of the last chunk
    q, k, v = (omega_triton._windows(x, h, b, nt) for x, h in ((q, None), (k, hk), (v, hv)))
    assert rel_err(m0, ms[:, 0]) == 0 and (not mom or rel_err(s0, ss[:, 0]) == 0)
    for j in range(1, nt + 1):
        sl = (slice(None), slice(0, j))
        args = [x if x is None else x[sl] for x in (q, k, v, a, c, bm, ae, be, te, ce, cse)]
        _, m_j, s_j, _ = omega_triton._scan_torch(*args, m0, s0, l2)
        got_m, got_s = (mf, sf) if j == nt else (ms[:, j], ss[:, j])
        assert rel_err(m_j, got_m) <= 1e-12, j
        if mom:
            assert rel_err(s_j, got_s) <= 1e-12, j


# ---------------------------------------------------------------- 2. state continuation


def _pieces(device, backends, lengths, opt, c, b, dtype=F64):
    """Run the sequence in pieces (backend i % len) and return o, final state and the
    gradients of q, k, v, alpha, gamma and M_0 through the whole chain (gamma's through
    the halo gammas the state carries too)."""
    d = make_inputs(1, sum(lengths), 1, 5, 7)
    leaves = {n: d[n].to(device=device, dtype=dtype).requires_grad_()
              for n in ("q", "k", "v", "alpha", "gamma", "m0")}
    st = leaves["m0"]
    outs, pos = [], 0
    for i, n in enumerate(lengths):
        sl = slice(pos, pos + n)
        o, st = omega_linear(
            leaves["q"][:, sl], leaves["k"][:, sl], leaves["v"][:, sl],
            alpha=leaves["alpha"][:, sl], eta=d["eta"][:, sl].to(device, dtype),
            gamma=leaves["gamma"][:, sl],
            theta=None if opt == "gd" else d["theta"][:, sl].to(device, dtype),
            window=c, chunk_size=b, optimizer=opt, objective="l2", initial_state=st,
            backend=backends[i % len(backends)],
        )
        outs.append(o)
        pos += n
    o = torch.cat(outs, 1)
    loss = (o * d["co"].to(device, dtype)).sum() + (st.memory * d["cm"].to(device, dtype)).sum()
    loss = loss + (st.anchor * d["ca"].to(device, dtype)).sum()
    if opt != "gd":
        loss = loss + (st.momentum * d["cs"].to(device, dtype)).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()))
    res = {"o": o, "memory": st.memory, "anchor": st.anchor, "pos": st.position}
    res.update({"d_" + n: g for n, g in zip(leaves, grads, strict=True)})
    return res


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("opt", ["gd", "momentum"])
def test_chained_calls(device, opt):
    """Aligned continuations run the kernels (gradients reach the previous call through
    the state's memory/momentum/halo); a continuation off a chunk boundary falls back to
    torch with one warning; the chain equals one reference call."""
    dtype = F64 if device == "cpu" else F32
    lengths = [8, 5, 8]  # b = 4: starts at 0, 8 (aligned, ends mid-chunk), 13 (unaligned)
    ref = _pieces("cpu", ["reference"], [21], opt, 3, 4)
    n0 = omega_triton.stats["backward"]
    with pytest.warns(RuntimeWarning, match="chunk boundary") as rec:
        got = _pieces(device, ["triton"], lengths, opt, 3, 4, dtype)
    assert len([w for w in rec if "triton" in str(w.message)]) == 1
    assert omega_triton.stats["backward"] == n0 + 2  # the two aligned pieces
    assert got["pos"] == ref["pos"] == 21
    mixed = _pieces(device, ["triton", "torch", "reference"], lengths, opt, 3, 4, dtype)
    budget = 1e-10 if dtype == F64 else 1e-5
    for res in (got, mixed):
        for n in ref:
            if n != "pos":
                assert rel_err(ref[n], res[n]) <= budget, n


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("opt,c", [("gd", 1), ("gd", 3), ("momentum", 3)])
def test_output_only_loss(device, opt, c):
    """A loss on the output alone: no state output has a cotangent, so the backward starts
    dM at zero without zero-filled cotangent buffers (``_omega_bwd_dh`` with ``DMI = 0``);
    every gradient, ``M_0``'s included, still matches the reference."""
    dtype = F64 if device == "cpu" else F32
    ref = run_case("reference", F64, "cpu", opt, "l2", c, 4, make_inputs(*SHAPE),
                   state_loss=False)
    got = triton_run(device, dtype, opt, "l2", c, 4, state_loss=False)
    full = reference(opt, "l2", c, 4)
    assert max(rel_err(full[n], ref[n]) for n in ref if n.startswith("d_")) > 1e-2  # dropped
    budget = 1e-10 if dtype == F64 else 1e-5
    for n in ref:
        assert rel_err(ref[n], got[n]) <= budget, n


# ---------------------------------------------------------------- 3. fallbacks


def _simple(backend, device="cpu", opt="gd", dtype=F32, **kw):
    d = make_inputs(*SHAPE)
    return omega_linear(
        d["q"].to(device, dtype), d["k"].to(device, dtype), d["v"].to(device, dtype),
        alpha=d["alpha"].to(device, dtype), eta=d["eta"].to(device, dtype),
        gamma=d["gamma"].to(device, dtype),
        theta=None if opt == "gd" else d["theta"].to(device, dtype),
        window=3, chunk_size=4, optimizer=opt, objective="l2", backend=backend, **kw,
    )


def _fallback_warns_once(match):
    n0 = omega_triton.stats["forward"]
    with pytest.warns(RuntimeWarning, match=match) as rec:
        o1, _ = _simple("triton")
        o2, st = _simple("triton")
    assert len([w for w in rec if "backend 'triton'" in str(w.message)]) == 1
    assert omega_triton.stats["forward"] == n0
    o_t, st_t = _simple("torch")
    assert torch.equal(o1, o_t) and torch.equal(o2, o_t) and torch.equal(st.memory, st_t.memory)


def test_fallback_cpu_without_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    _fallback_warns_once("TRITON_INTERPRET")


def test_fallback_triton_not_importable(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")

    def broken():
        raise ImportError("No module named 'triton'")

    monkeypatch.setattr(omega_triton, "_load_triton", broken)
    _fallback_warns_once("not importable")


@pytest.mark.skipif(CUDA and not INTERP, reason="CUDA machine: runs in the subprocess")
def test_fallback_launch_error(monkeypatch):
    def broken():
        raise RuntimeError("simulated compile error")

    monkeypatch.setattr(omega_triton, "_kernels", broken)
    _fallback_warns_once("compile/launch failed")


@pytest.mark.skipif(CUDA and not INTERP, reason="CUDA machine: runs in the subprocess")
def test_backward_kernel_error_recomputes_in_torch(monkeypatch):
    def broken(*a, **k):
        raise omega_triton._KernelError("simulated") from RuntimeError("simulated")

    monkeypatch.setattr(omega_triton, "_launch_backward", broken)
    ref = reference("momentum", "l2", 3, 4)
    with pytest.warns(RuntimeWarning, match="recomputed"):
        got = run_case("triton", F64, "cpu", "momentum", "l2", 3, 4, make_inputs(*SHAPE))
    check(ref, got, F64)


@pytest.mark.skipif(CUDA and not INTERP, reason="CUDA machine: runs in the subprocess")
@pytest.mark.parametrize("window", [3, 8])
def test_coefficient_backward_error_recomputes_in_torch(monkeypatch, window):
    """A failing ``_coef_bwd`` warns once and the gate gradients (the halo gammas of a
    continued state included; c = 8 > b takes the general halo fold) come from torch
    autograd through ``_gate_blocks``: equal to one reference call."""
    real = omega_triton._call_plain

    def broken(kern, name, *a, **k):
        if name == "coef_bwd":
            raise RuntimeError("simulated")
        return real(kern, name, *a, **k)

    monkeypatch.setattr(omega_triton, "_call_plain", broken)
    ref = _pieces("cpu", ["reference"], [21], "gd", window, 4)
    n0 = omega_triton.stats["backward"]
    with pytest.warns(RuntimeWarning, match="coefficient backward kernel failed"):
        got = _pieces("cpu", ["triton"], [8, 13], "gd", window, 4)
    assert omega_triton.stats["backward"] == n0 + 2
    for n in ref:
        assert n == "pos" or rel_err(ref[n], got[n]) <= 1e-10, n


@pytest.mark.parametrize("backend,opt", [
    ("auto", "momentum"),  # auto on CPU tensors: torch
    pytest.param("triton", "muon", marks=pytest.mark.skipif(  # muon: batched torch NS
        CUDA and not INTERP, reason="CUDA machine: runs in the subprocess")),
])
def test_torch_path_without_warning(backend, opt):
    n0 = dict(omega_triton.stats)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        o, st = _simple(backend, opt=opt)
    o_t, st_t = _simple("torch", opt=opt)
    assert torch.equal(o, o_t) and torch.equal(st.momentum, st_t.momentum)
    assert omega_triton.stats == n0


def test_auto_on_cpu_does_not_import_triton():
    code = (
        "import sys, torch; from atlas_search.ops import omega_linear; "
        "x = torch.randn(1, 5, 1, 3); g = torch.rand(1, 5, 1); "
        "omega_linear(x, x, x, alpha=g, eta=g, gamma=g, theta=None, window=2, chunk_size=2, "
        "optimizer='gd', objective='l2', backend='auto'); "
        "assert 'triton' not in sys.modules, 'triton imported'"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, env=env,
                   cwd=Path(__file__).resolve().parents[1])


def test_mlp_accepts_triton_and_runs_torch():
    d = make_inputs(1, 6, 1, 4, 4)
    g = torch.Generator().manual_seed(1)
    w = [0.3 * torch.randn(1, 4, 8, generator=g, dtype=F64),
         0.3 * torch.randn(1, 8, 4, generator=g, dtype=F64)]
    outs = []
    for backend in ("torch", "triton"):
        o, _ = omega_mlp(d["q"], d["k"], d["v"], w, kind="mlp", alpha=d["alpha"],
                         eta=d["eta"], gamma=d["gamma"], theta=None, window=2, chunk_size=2,
                         optimizer="gd", objective="l2", backend=backend)
        outs.append(o)
    assert torch.equal(outs[0], outs[1])


@pytest.mark.skipif(CUDA and not INTERP, reason="CUDA machine: runs in the subprocess")
def test_nan_fill_and_no_grad():
    """NAN_FILL really fills the buffers; the op runs under no_grad (forward kernel only)."""
    assert torch.isnan(omega_triton._empty((3,), F32, "cpu")).all()
    n0 = dict(omega_triton.stats)
    with torch.no_grad():
        o, st = _simple("triton", opt="momentum", dtype=F64)
    o_r, st_r = _simple("reference", opt="momentum", dtype=F64)
    assert omega_triton.stats["forward"] == n0["forward"] + 1
    for a, b in ((o_r, o), (st_r.memory, st.memory), (st_r.momentum, st.momentum),
                 (st_r.anchor, st.anchor)):
        assert rel_err(a, b) <= 1e-10


# ---------------------------------------------------------------- 4. CUDA machines


@pytest.mark.skipif(not CUDA or INTERP, reason="only on CUDA machines (compiled mode)")
@pytest.mark.timeout(1500)  # above the 600 s default: its own subprocess limits
def test_cpu_params_in_interpreter_subprocess():
    """The CPU params need an interpreter-mode process: run them there."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", __file__, "-k", "not cuda"],
        env=env, capture_output=True, text=True, timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


# ---------------------------------------------------------------- 5. inside a model


@pytest.mark.skipif(CUDA and not INTERP, reason="CUDA machine: runs in the subprocess")
@pytest.mark.parametrize("preset", ["deltanet", "gated_deltanet"])
def test_model_with_triton_backend_matches_torch(preset):
    """``memory.backend: triton`` in a built LM: the kernels run (forward and backward, also
    under bf16 autocast, where the mixer hands the op mixed dtypes) and the logits and every
    parameter gradient equal the torch backend's (fp32 budget)."""
    from atlas_search.models import build_model
    from atlas_search.spec import ModelSpec

    base = ModelSpec.model_validate({"preset": preset, "d_model": 32, "n_layers": 1,
                                     "n_heads": 2})
    x = torch.randint(0, 64, (2, 37), generator=torch.Generator().manual_seed(0))
    got = {}
    for backend in ("torch", "triton"):
        spec = base.model_copy(deep=True)
        spec.memory.backend = backend
        torch.manual_seed(0)
        model = build_model(spec, vocab_size=64)
        n0 = omega_triton.stats["backward"]
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            y = model(x)
            y.pow(2).mean().backward()
        assert omega_triton.stats["backward"] - n0 == (backend == "triton")
        got[backend] = (y.detach(), [p.grad.clone() for p in model.parameters()])
        if backend == "triton":
            n0 = omega_triton.stats["backward"]
            with torch.autocast("cpu", dtype=torch.bfloat16):
                model(x).float().pow(2).mean().backward()
            assert omega_triton.stats["backward"] == n0 + 1
    (y0, g0), (y1, g1) = got["torch"], got["triton"]
    assert rel_err(y0, y1) <= 1e-5
    assert all(rel_err(a, b) <= 1e-5 for a, b in zip(g0, g1, strict=True))


def test_gpu_hazard_names_the_measured_cuda_faults(monkeypatch):
    """The case refused on CUDA: Hopper with a Triton in fla #640's range (auto only);
    ATLAS_TRITON_UNSAFE=1 lifts it. Wide heads with a window run (their fault is fixed)."""
    monkeypatch.delenv(omega_triton.UNSAFE_ENV, raising=False)
    hz = omega_triton.gpu_hazard
    assert hz(128, 128, 16, (9, 0), "3.9.0") is None
    assert hz(64, 128, 2, (8, 0), "3.9.0") is None
    assert hz(64, 64, 16, (9, 0), "3.6.0")[0::2] == ("hopper-triton", False)
    assert hz(128, 128, 16, (9, 0), "3.6.0")[0::2] == ("hopper-triton", False)
    assert hz(64, 64, 16, (9, 0), "3.7.1") is None and hz(64, 64, 16, (9, 0), "3.3.1") is None
    assert hz(64, 64, 16, (8, 0), "3.6.0") is None  # A100: not the Hopper codegen bug
    assert hz(64, 64, 1, (9, 0), "3.7.0+git1234")[0] == "hopper-triton"
    monkeypatch.setenv(omega_triton.UNSAFE_ENV, "1")
    assert hz(128, 128, 16, (9, 0), "3.6.0") is None


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("opt,c", [("gd", 1), ("momentum", 3)])
def test_dqk_dk_block_wider_than_the_partials(device, opt, c, monkeypatch):
    """``_omega_bwd_dqk`` with one Dk block covering Dk = 20 (``bk = 32``, the D = 128
    ``bk = 128`` config in small) while its Dk-block partials are sized for the narrowest
    block (two rows, NaN-filled): only the rows the launch wrote are summed, and every
    gradient matches the reference."""
    if device == "cuda":
        first = omega_triton.configs

        def wide_first(name, dk, dv):
            cfgs = first(name, dk, dv)
            return ((cfgs[0]._replace(bk=32),) + cfgs) if name == "bwd_dqk" else cfgs

        monkeypatch.setattr(omega_triton, "configs", wide_first)
        monkeypatch.setattr(omega_triton, "_dqk_bk", lambda dk, interpret=False: 16)
    else:
        real = omega_triton._interpret_cfg

        def wide(name):
            cfg = real(name)
            return cfg._replace(bk=32) if name == "bwd_dqk" else cfg

        monkeypatch.setattr(omega_triton, "_interpret_cfg", wide)
    shape = (2, 11, 2, 20, 20)
    for dtype in dtypes_for(device):
        rnd = dtype if dtype == BF16 else None
        ref = reference(opt, "l2", c, 4, shape=shape, round_to=rnd)
        got = triton_run(device, dtype, opt, "l2", c, 4, shape=shape, round_to=rnd)
        check(ref, got, dtype, (opt, c))


def test_autotune_picks_reports_each_winning_config(monkeypatch):
    """``autotune_picks`` names, per kernel and autotune key, the config that won (as a
    skip entry) and how many it chose from; the benchmark's text report lists them."""
    from types import SimpleNamespace

    from atlas_search.bench import kernels_speed as ks

    cfgs = omega_triton.configs("bwd_dqk", 128, 128)
    won = SimpleNamespace(kwargs={"BV": 16, "BK": 128}, num_warps=8)
    tuner = SimpleNamespace(cache={(64, 64, 128, 128, "torch.bfloat16"): won})
    monkeypatch.setattr(omega_triton, "_TUNERS", {("bwd_dqk", cfgs): tuner})
    picks = omega_triton.autotune_picks()
    assert picks == [{"kernel": "bwd_dqk", "key": {"L": 64, "N": 64, "DK": 128, "DV": 128},
                      "config": "bwd_dqk:16:8:0:128", "of": len(cfgs)}]
    assert omega_triton.Cfg(16, 8, False, 128) in cfgs
    lines = ks.tail_lines({"autotune": picks, "skipped": [], "footnotes": [],
                           "elapsed_s": 1.0})
    assert any("bwd_dqk" in ln and "L=64 N=64 DK=128 DV=128: bwd_dqk:16:8:0:128 of" in ln
               for ln in lines)


def test_autotune_configs_distinct_and_four_warps_only_where_allowed():
    """4 warps only for the sequential kernels (the output kernel at 4 warps returned
    wrong outputs on an H100 with Triton 3.6.0); no duplicates after capping BV at the head
    dim; the fixed config is the per-block form; ``bwd_dqk``'s Dk block divides into its
    partials (at most 64 in the first config, 128 only at Dk = 128)."""
    for name in ("states", "out", "bwd_local", "bwd_dh", "bwd_dv", "bwd_dqk"):
        for d in (16, 64, 128):
            cfgs = omega_triton.configs(name, d, d)
            assert cfgs and len(set(cfgs)) == len(cfgs)
            assert all(c.warps in ((4, 8) if name in ("states", "bwd_dh") else (8,))
                       and c.bv <= max(16, d) for c in cfgs)
            assert cfgs[0].warps == 8 and not cfgs[0].loop
            assert name in omega_triton.LOOP_KERNELS or not any(c.loop for c in cfgs)
            bks = [c.bk for c in cfgs]
            if name == "bwd_dqk":
                assert bks[0] == min(64, max(16, d)) == omega_triton._dqk_bk(d)
                assert set(bks) == ({64, 128} if d == 128 else {bks[0]})
            else:
                assert set(bks) == {0}


def test_autotuned_launch_returns_the_config_that_ran(monkeypatch):
    """``_call`` on the autotuned path returns the config the autotuner ran (the caller
    sums ``bwd_dqk``'s partial rows by its Dk block), launches on that config's grid, and
    raises (-> the torch fallback) when the autotuner does not say which one it was."""
    from types import SimpleNamespace

    omega_triton._kernels()  # binds the module's triton
    seen = []

    class Tuner:
        def __init__(self, best):
            if best is not None:
                self.best_config = best

        def __getitem__(self, grid):
            def launch(*args, **consts):
                seen.append((grid({"BV": 16, "BK": 128}), sorted(consts)))
            return launch

    monkeypatch.setattr(omega_triton, "AUTOTUNE", True)
    monkeypatch.delenv("ATLAS_TRITON_AUTOTUNE", raising=False)
    best = SimpleNamespace(kwargs={"BV": 16, "BK": 128}, num_warps=8)
    kern = {"interpret": False, "tuned": lambda name, cfgs: Tuner(best)}
    consts = {"BK": 128, "BL": 64}
    ran = omega_triton._call(kern, "bwd_dqk", 7, 128, 128, (), consts)
    assert ran == omega_triton.Cfg(16, 8, False, 128)
    assert seen == [((7, 1), ["BL"])]  # one Dk block; BK comes from the config only
    kern["tuned"] = lambda name, cfgs: Tuner(None)
    with pytest.raises(RuntimeError, match="did not say which config ran"):
        omega_triton._call(kern, "bwd_dqk", 7, 128, 128, (), consts)


def test_sequential_kernels_tune_per_grid_size():
    """``states`` and ``bwd_dh`` key their autotuning on ``B*H`` rounded up to a power of
    two (their parallelism), the parallel kernels do not."""
    assert [omega_triton._grid_rows(n) for n in (1, 16, 17, 128, 129)] == [16, 16, 32, 128,
                                                                             256]
    for name, keys in omega_triton._KEYS.items():
        assert ("NBH" in keys) == (name in ("states", "bwd_dh"))
        assert set(keys) <= set(omega_triton._kernels()[name].arg_names)


def test_skip_env_leaves_configs_out(monkeypatch):
    """``ATLAS_TRITON_SKIP_CONFIGS`` (what the GPU check sets for configs that failed its
    config checks) removes exactly the named configs; a kernel whose every config is named
    keeps its first; malformed entries are ignored."""
    full = omega_triton.configs("states", 128, 128)
    full_dv = omega_triton.configs("bwd_dv", 64, 64)
    assert len(full) >= 4 and len(full_dv) >= 2
    entries = [omega_triton.skip_entry("states", c) for c in full[1:3]]
    monkeypatch.setenv(omega_triton.SKIP_ENV, ",".join(entries + ["junk", "out:x:8:0:0"]))
    omega_triton._skipped.cache_clear()
    omega_triton.configs.cache_clear()
    try:
        assert omega_triton.configs("states", 128, 128) == full[:1] + full[3:]
        assert omega_triton.configs("out", 128, 128) == omega_triton.configs.__wrapped__(
            "out", 128, 128)
        every = [omega_triton.skip_entry("bwd_dv", c) for c in full_dv]
        monkeypatch.setenv(omega_triton.SKIP_ENV, ",".join(every))
        omega_triton._skipped.cache_clear()
        omega_triton.configs.cache_clear()
        assert omega_triton.configs("bwd_dv", 64, 64) == full_dv[:1]
    finally:
        monkeypatch.delenv(omega_triton.SKIP_ENV)
        omega_triton._skipped.cache_clear()
        omega_triton.configs.cache_clear()
    assert omega_triton.configs("states", 128, 128) == full


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("window", [1, 3])
def test_gd_coefficient_kernels_exact_for_zero_and_tiny_gates(device, window):
    """gd builds its dual-form coefficients in ``_coef_fwd`` / ``_coef_bwd`` (no division
    by a gate): with retention gates exactly 0, 1e-30 and 1 mixed in, outputs and the
    gradients of every input and gate equal the float64 reference token loop, and are
    finite; a partial last chunk exercises the chunk-end index, c = 3 the halo rows."""
    dtype = F64 if device == "cpu" else F32
    gen = torch.Generator().manual_seed(3)
    b_, t, h, dk, dv, chunk = 1, 11, 2, 5, 7, 4

    def leaf(x):
        return x.to(device=device, dtype=dtype).requires_grad_()

    base = {"q": torch.randn(b_, t, h, dk, generator=gen),
            "k": torch.nn.functional.normalize(torch.randn(b_, t, h, dk, generator=gen), dim=-1),
            "v": torch.randn(b_, t, h, dv, generator=gen),
            "alpha": torch.rand(b_, t, h, generator=gen),
            "eta": torch.rand(b_, t, h, generator=gen),
            "gamma": torch.rand(b_, t, h, generator=gen) + 0.5}
    base["alpha"][0, 2, 0] = 0.0
    base["alpha"][0, 5, 1] = 1e-30
    base["alpha"][0, 9, :] = 1.0
    do = torch.randn(b_, t, h, dv, generator=gen)
    grads = {}
    for backend in ("reference", "triton"):
        x = {n: leaf(v) for n, v in base.items()}
        dev_do = do.to(device=device, dtype=dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            n0 = omega_triton.stats["backward"]
            o, _ = omega_linear(x["q"], x["k"], x["v"], alpha=x["alpha"], eta=x["eta"],
                                gamma=x["gamma"], theta=None, window=window,
                                chunk_size=chunk,
                                optimizer="gd", objective="l2", backend=backend)
            (o * dev_do).sum().backward()
        if backend == "triton":
            assert omega_triton.stats["backward"] == n0 + 1
        grads[backend] = {"o": o.detach().cpu().double(),
                          **{n: v.grad.cpu().double() for n, v in x.items()}}
    tol = 1e-10 if dtype == F64 else 1e-5
    for n, ref in grads["reference"].items():
        got = grads["triton"][n]
        assert torch.isfinite(got).all(), n
        assert rel_err(ref, got) <= tol, (n, rel_err(ref, got))
