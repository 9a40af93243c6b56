"""The torch-side memory traffic of ``backend="triton"``, counted on CPU (no GPU needed).

The Triton path builds the dual-form coefficients, reshapes the inputs and maps the kernels'
outputs back with torch ops; on a GPU each is a kernel pass over its tensors. This runs one
forward and one fwd+bwd of ``omega_linear(backend="triton")`` at the benchmark's shape with
the Triton launches stubbed out (nothing is computed in them), under ``torch.profiler``,
and sums the bytes of the tensors every top-level aten op reads (views, allocations,
fills and no-op casts excluded; the writes are not counted; a copy counts its source and
destination), scaled from ``B = 1`` to the benchmark's ``B * T`` tokens. It counts
passes, not time: a byte count that falls is traffic a GPU no longer moves.

``python -m atlas_search.bench.torch_bytes [--head-dim 64] [--window 1] [--T 2048]
[--tokens 32768] [--width 2048] [--top 12]`` (sets ``TRITON_INTERPRET=1`` itself: run it in
a fresh process).
"""

from __future__ import annotations

import argparse
import collections
import os
import sys

NO_WORK = {
    "aten::reshape", "aten::view", "aten::transpose", "aten::expand", "aten::unsqueeze",
    "aten::squeeze", "aten::slice", "aten::select", "aten::alias", "aten::as_strided",
    "aten::permute", "aten::unfold", "aten::empty", "aten::new_empty", "aten::empty_strided",
    "aten::new_empty_strided", "aten::detach", "aten::t", "aten::_unsafe_view",
    "aten::lift_fresh", "aten::set_", "aten::result_type", "aten::movedim", "aten::narrow",
    "aten::split", "aten::chunk", "aten::_reshape_alias", "aten::resize_",
    "aten::new_zeros", "aten::new_ones", "aten::zeros", "aten::ones", "aten::full",
    "aten::zeros_like", "aten::arange",
}
MAYBE_COPY = {"aten::to", "aten::contiguous", "aten::_to_copy", "aten::reshape"}
"""Ops that copy only sometimes: counted when a ``copy_`` runs under them."""
SIZES = {"float": 4, "double": 8, "c10::Half": 2, "c10::BFloat16": 2, "long int": 8,
         "int": 4, "bool": 1}


def _copies(event) -> bool:
    return any(c.name == "aten::copy_" or _copies(c) for c in event.cpu_children)


def _read_bytes(event) -> int:
    total = 0
    for shape, dtype in zip(event.input_shapes, event.input_dtypes, strict=False):
        if shape and dtype in SIZES:
            n = 1
            for d in shape:
                n *= d
            total += n * SIZES[dtype]
    return total


def measure(head_dim: int = 64, window: int = 1, t: int = 2048, tokens: int = 32768,
            width: int = 2048, chunk: int = 64) -> dict:
    """``{"fwd": {...}, "fwd_bwd": {...}}``, each with ``ops`` (leaf aten ops run),
    ``gb`` (bytes read, scaled to ``tokens``), ``by_op`` (GB per op name), ``calls`` (every
    top-level profiler event: views, the autograd functions and engine steps included) and
    ``autograd_nodes`` (backward nodes the engine ran)."""
    os.environ.setdefault("TRITON_INTERPRET", "1")
    import torch

    from ..ops import omega_triton as ot
    from . import kernels_speed as ks

    scale = tokens / t
    x = ks.make_inputs(1, t, max(1, width // head_dim), head_dim, torch.float16, "cpu")
    settings = ks.Settings(device="cpu", chunk=chunk, dtype="float16")
    call = ks._call(ks.Impl("triton", window), x, settings, None)
    real, real_plain, real_bk = ot._call, ot._call_plain, ot._dqk_bk
    # the kernels do nothing (only the torch side is left); each "ran" its first config
    ot._call = lambda kern, name, g0, dk, dv, *a, **k: ot.configs(name, dk, dv)[0]
    ot._call_plain = lambda *a, **k: None
    ot._dqk_bk = lambda dk, interpret=False: real_bk(dk, False)  # the compiled Dk blocks
    before = dict(ot.stats)
    try:
        ks._fwd_bwd(call, x)
        if ot.stats["backward"] == before["backward"]:
            raise RuntimeError("the Triton path did not run (a fallback to torch)")
        out = {}
        for phase in ("fwd", "fwd_bwd"):
            with torch.profiler.profile(record_shapes=True) as prof:
                if phase == "fwd":
                    with torch.no_grad():
                        call()
                else:
                    ks._fwd_bwd(call, x)
            leaves = [e for e in prof.events() if e.name.startswith("aten::")
                      and not (e.cpu_parent and e.cpu_parent.name.startswith("aten::"))
                      and e.name not in NO_WORK
                      and (e.name not in MAYBE_COPY or _copies(e))]
            by_op: collections.Counter = collections.Counter()
            for e in leaves:
                by_op[e.name] += _read_bytes(e) * scale / 1e9
            top = [e for e in prof.events() if e.cpu_parent is None]
            out[phase] = {"ops": len(leaves), "gb": sum(by_op.values()),
                          "by_op": dict(by_op.most_common()), "calls": len(top),
                          "autograd_nodes": sum("evaluate_function" in e.name for e in top)}
        return out
    finally:
        ot._call, ot._call_plain, ot._dqk_bk = real, real_plain, real_bk


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m atlas_search.bench.torch_bytes",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--window", type=int, default=1)
    ap.add_argument("--T", dest="t", type=int, default=2048)
    ap.add_argument("--tokens", type=int, default=32768)
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args(argv)
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        print("torch_bytes: run it in a fresh process", file=sys.stderr)
        return 2
    res = measure(args.head_dim, args.window, args.t, args.tokens, args.width)
    for phase, r in res.items():
        top = ", ".join(f"{k.removeprefix('aten::')} {v:.2f}" for k, v in
                        list(r["by_op"].items())[: args.top])
        print(f"D={args.head_dim} c={args.window} T={args.t} {phase}: {r['ops']} torch ops "
              f"reading {r['gb']:.2f} GB ({top}); {r['calls']} top-level calls, "
              f"{r['autograd_nodes']} autograd nodes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
