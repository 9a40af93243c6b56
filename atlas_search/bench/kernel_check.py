"""Correctness check of the Triton Omega kernels against the reference loop (DESIGN.md §8).

:func:`run_kernel_checks` runs ``omega_linear(..., backend="triton")`` over a grid of
cases (optimizer gd/momentum x objective l2/dot x window {1, 3, 8} x chunk {1, 4, 16}, odd
``T``, odd widths ``Dk=5, Dv=7``; on CUDA also realistic widths ``Dk = Dv = 64``) and
compares outputs, final states (memory, momentum, anchor) and the gradients of ``q, k, v``,
every gate and ``M_0`` with the reference token loop run in float64 on CPU on the same
(dtype-rounded) inputs. Metric: relative RMS error ``||ref - x|| / ||ref||``; a NaN anywhere
fails the row. Kernel buffers are NaN-filled during the checks (``omega_triton.NAN_FILL``),
so memory a kernel forgets to write shows up, and autotuning is off
(``omega_triton.AUTOTUNE``: one compile per shape). A case whose Triton path did not run (a
fallback to the torch backend) gets a failing ``triton_path`` row.

Budgets (``BUDGETS``): fp64 1e-10, fp32 1e-5 for every quantity (DESIGN.md §8). bf16/fp16
kernels vs the fp64 reference on the same rounded inputs: outputs 6e-3, q/k/v gradients
8e-3, gate gradients 2e-2 (DESIGN.md §8, fla's thresholds); the returned states are
rounded to the initial memory's dtype, so they get the output budget 6e-3, and the ``M_0``
gradient the q/k/v budget 8e-3 (fla's ``dh0``).

Imports only torch and :mod:`atlas_search.ops` (the GPU check runs where pydantic, optuna
and ray are absent). On CPU the kernels run in the Triton interpreter, which Triton fixes
when it is first imported: this module sets ``TRITON_INTERPRET=1`` itself when triton is
not imported yet, and raises if it was imported in compiled mode. The interpreter is slow:
the full CPU grid takes minutes, ``quick=True`` a few seconds per case.
"""

from __future__ import annotations

import functools
import itertools
import os
import sys
from collections.abc import Sequence

import torch

GATES = ("alpha", "eta", "gamma", "theta")
OUTPUTS = ("o",)
STATES = ("memory", "momentum", "anchor")
QKV = ("d_q", "d_k", "d_v")
GATE_GRADS = tuple("d_" + g for g in GATES)

BUDGETS = {
    torch.float64: {"out": 1e-10, "state": 1e-10, "qkv": 1e-10, "gate": 1e-10, "m0": 1e-10},
    torch.float32: {"out": 1e-5, "state": 1e-5, "qkv": 1e-5, "gate": 1e-5, "m0": 1e-5},
    torch.bfloat16: {"out": 6e-3, "state": 6e-3, "qkv": 8e-3, "gate": 2e-2, "m0": 8e-3},
    torch.float16: {"out": 6e-3, "state": 6e-3, "qkv": 8e-3, "gate": 2e-2, "m0": 8e-3},
}


def budget_of(dtype: torch.dtype, quantity: str) -> float:
    """The DESIGN.md §8 budget of one quantity (``o``, a state name or ``d_<input>``)."""
    b = BUDGETS[dtype]
    if quantity in OUTPUTS:
        return b["out"]
    if quantity in STATES:
        return b["state"]
    if quantity in QKV:
        return b["qkv"]
    if quantity in GATE_GRADS:
        return b["gate"]
    if quantity == "d_m0":
        return b["m0"]
    raise KeyError(quantity)


def rel_err(ref: torch.Tensor, x: torch.Tensor) -> float:
    """``||ref - x|| / ||ref||`` in float64 on CPU; ``inf`` when ``x`` has a NaN."""
    x = x.detach().double().cpu()
    ref = ref.detach().double().cpu()
    if torch.isnan(x).any() or torch.isnan(ref).any():
        return float("inf")
    den = ref.norm().item()
    num = (ref - x).norm().item()
    return num / den if den > 0 else num


@functools.cache
def make_inputs(
    b_: int, t: int, h: int, dk: int, dv: int, seed: int = 0
) -> dict[str, torch.Tensor]:
    """float64 CPU inputs (DESIGN.md §8): l2-normalised q, k; gates sigmoid of normals; a
    random ``M_0``; random cotangents for o and the final memory, momentum and anchor."""
    g = torch.Generator().manual_seed(seed)

    def rn(*s: int) -> torch.Tensor:
        return torch.randn(*s, generator=g, dtype=torch.float64)

    nrm = torch.nn.functional.normalize
    return {
        "q": nrm(rn(b_, t, h, dk), dim=-1),
        "k": nrm(rn(b_, t, h, dk), dim=-1),
        "v": rn(b_, t, h, dv),
        **{name: torch.sigmoid(rn(b_, t, h)) for name in GATES},
        "m0": 0.3 * rn(b_, h, dk, dv),
        "co": rn(b_, t, h, dv),
        "cm": rn(b_, h, dk, dv),
        "cs": rn(b_, h, dk, dv),
        "ca": rn(b_, h, dk, dv),
    }


def run_case(
    backend: str,
    dtype: torch.dtype,
    device: str,
    opt: str,
    obj: str,
    c: int,
    b: int,
    inputs: dict[str, torch.Tensor],
    round_to: torch.dtype | None = None,
    state_loss: bool = True,
) -> dict[str, torch.Tensor]:
    """Outputs, final states and gradients of ``loss = <o, co> + <M, cm> (+ <S, cs>) +
    <anchor, ca>`` (``state_loss=False``: ``<o, co>`` alone, no state output has a
    cotangent) w.r.t. q, k, v, every gate and ``M_0``, detached on CPU. Inputs are first
    rounded to ``round_to`` (if given), so a float64 reference sees the exact values a
    low-precision run gets."""
    from atlas_search.ops import omega_linear

    names = ["q", "k", "v", "alpha", "eta", "gamma", "m0"] + ([] if opt == "gd" else ["theta"])
    src = {n: x if round_to is None else x.to(round_to) for n, x in inputs.items()}
    leaves = {n: src[n].to(device=device, dtype=dtype).requires_grad_() for n in names}
    cot = {n: src[n].to(device=device, dtype=dtype) for n in ("co", "cm", "cs", "ca")}
    o, st = omega_linear(
        leaves["q"], leaves["k"], leaves["v"],
        alpha=leaves["alpha"], eta=leaves["eta"], gamma=leaves["gamma"],
        theta=leaves.get("theta"), window=c, chunk_size=b, optimizer=opt, objective=obj,
        initial_state=leaves["m0"], backend=backend,
    )
    loss = (o * cot["co"]).sum()
    if state_loss:
        loss = loss + (st.memory * cot["cm"]).sum() + (st.anchor * cot["ca"]).sum()
    out = {"o": o, "memory": st.memory, "anchor": st.anchor}
    if opt != "gd":
        if state_loss:
            loss = loss + (st.momentum * cot["cs"]).sum()
        out["momentum"] = st.momentum
    grads = torch.autograd.grad(loss, list(leaves.values()))
    out.update({"d_" + n: g for n, g in zip(leaves, grads, strict=True)})
    return {n: x.detach().cpu() for n, x in out.items()}


def _cases(device: str, quick: bool) -> list[tuple]:
    """``(opt, obj, c, b, B, T, H, Dk, Dv)``."""
    grid = list(itertools.product(("gd", "momentum"), ("l2", "dot"), (1, 3, 8), (1, 4, 16)))
    if quick:
        grid = [("gd", "l2", 1, 1), ("gd", "dot", 3, 4), ("gd", "l2", 8, 16),
                ("momentum", "l2", 3, 4), ("momentum", "dot", 1, 16), ("momentum", "l2", 8, 1)]
    cpu = device == "cpu"
    t = 23 if (cpu and quick) else (37 if cpu else 63)
    cases = [(o, j, c, b, 1, t, 2, 5, 7) for o, j, c, b in grid]
    if not cpu:  # realistic widths, several column blocks, bigger chunks
        big = [("gd", "l2", 4, 64), ("momentum", "l2", 4, 64), ("momentum", "dot", 1, 16)]
        if not quick:
            big += [("gd", "dot", 8, 32), ("gd", "l2", 1, 1), ("momentum", "l2", 16, 16)]
        cases += [(o, j, c, b, 2, 100, 2, 64, 64) for o, j, c, b in big]
    return cases


def _ensure_interpreter() -> None:
    if "triton" not in sys.modules:
        os.environ["TRITON_INTERPRET"] = "1"
    from atlas_search.ops import omega_triton

    if not omega_triton.interpret_ready():
        raise RuntimeError(
            "CPU kernel checks need the Triton interpreter: set TRITON_INTERPRET=1 before "
            "triton is first imported (triton fixes the mode at import)"
        )


def run_kernel_checks(
    device: str, dtypes: Sequence[torch.dtype], quick: bool = False
) -> list[dict]:
    """Triton vs float64 reference on every case; one row per (case, dtype, quantity):
    ``dict(case, dtype, quantity, error, budget, ok)``. ``device``: ``"cpu"`` (interpreter)
    or ``"cuda"``. Extra rows: ``quantity="triton_path"`` (error 0 if the kernels ran, 1
    if the op fell back to torch) and ``"exception"`` (a crash, error inf)."""
    from atlas_search.ops import omega_triton

    if device == "cpu":
        _ensure_interpreter()
    rows: list[dict] = []
    old_fill, old_tune = omega_triton.NAN_FILL, omega_triton.AUTOTUNE
    omega_triton.NAN_FILL = True
    omega_triton.AUTOTUNE = False  # one config per shape: the grid has many shapes
    try:
        for opt, obj, c, b, b_, t, h, dk, dv in _cases(device, quick):
            case = f"{opt}/{obj}/c={c}/b={b}/B={b_}/T={t}/H={h}/Dk={dk}/Dv={dv}"
            inputs = make_inputs(b_, t, h, dk, dv)
            for dtype in dtypes:
                dname = str(dtype).replace("torch.", "")
                low = dtype in (torch.bfloat16, torch.float16)
                rnd = dtype if low else None
                try:
                    ref = run_case("reference", torch.float64, "cpu", opt, obj, c, b, inputs,
                                   round_to=rnd)
                    n0 = omega_triton.stats["backward"]
                    got = run_case("triton", dtype, device, opt, obj, c, b, inputs,
                                   round_to=rnd)
                    ran = omega_triton.stats["backward"] > n0
                except Exception as exc:  # report, do not crash the whole check
                    rows.append(dict(case=case, dtype=dname, quantity="exception",
                                     error=float("inf"), budget=0.0, ok=False,
                                     note=repr(exc)))
                    continue
                rows.append(dict(case=case, dtype=dname, quantity="triton_path",
                                 error=0.0 if ran else 1.0, budget=0.0, ok=ran))
                for name in ref:
                    err = rel_err(ref[name], got[name])
                    bud = budget_of(dtype, name)
                    rows.append(dict(case=case, dtype=dname, quantity=name, error=err,
                                     budget=bud, ok=err <= bud))
    finally:
        omega_triton.NAN_FILL, omega_triton.AUTOTUNE = old_fill, old_tune
    return rows


def summarize(rows: list[dict]) -> dict[tuple[str, str], float]:
    """Max error per (dtype, quantity) over all cases."""
    out: dict[tuple[str, str], float] = {}
    for r in rows:
        key = (r["dtype"], r["quantity"])
        out[key] = max(out.get(key, 0.0), r["error"])
    return out


def main() -> None:  # pragma: no cover - manual use: python -m atlas_search.bench.kernel_check
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    dts = [torch.float32, torch.bfloat16] if a.device == "cuda" else [torch.float64,
                                                                      torch.float32]
    rows = run_kernel_checks(a.device, dts, quick=a.quick)
    for (dt, q), e in sorted(summarize(rows).items()):
        print(f"{dt:9s} {q:12s} max rel err {e:.2e}")
    bad = [r for r in rows if not r["ok"]]
    for r in bad:
        print("FAIL", r)
    print(f"{len(rows) - len(bad)}/{len(rows)} rows within budget")
    raise SystemExit(1 if bad else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
