"""Where the host time of one ``omega_linear`` call goes (Python, autograd, Triton launches).

On a GPU a call is host-bound when issuing its kernels takes longer than running them: the
wall time is then the host time, whatever the kernels cost. This times, at the benchmark's
inputs (:func:`kernels_speed.make_inputs`), for each window:

* ``wall``: CUDA events around the call (what the benchmark reports; ``perf_counter``
  after a synchronize on CPU);
* ``host``: ``perf_counter`` around the call without a synchronize (the time to issue it);
* per function of :mod:`..ops.omega_linear` and :mod:`..ops.omega_triton` (and the
  autograd functions' ``forward``/``backward``, and every kernel launch by name), the
  inclusive and self host time per call, from wrappers installed after the plain timings
  (they add about a microsecond per wrapped call, charged to the caller's self time). The
  wrappers time every thread, so the backward that autograd runs on its device thread is
  counted too.

``python -m atlas_search.bench.host_time [--device cuda] [--head-dim 64] [--T 4096]
[--tokens 32768] [--window 1,16] [--calls 30] [--top 25] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import collections
import importlib
import importlib.util
import inspect
import json
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from . import kernels_speed as ks
from .cli_args import check_out, positive_int, positive_int_list

DTYPES = ("bfloat16", "float16", "float32", "float64")
"""``--dtype`` choices: the input dtypes the op takes."""


class Recorder:
    """Inclusive and self ``perf_counter`` time per wrapped name (thread-safe enough for
    the one caller and autograd's device thread, which do not overlap in a call)."""

    def __init__(self) -> None:
        self.incl: dict[str, float] = collections.defaultdict(float)
        self.self_: dict[str, float] = collections.defaultdict(float)
        self.count: dict[str, int] = collections.defaultdict(int)
        self._local = threading.local()
        self.undo: list[Callable[[], None]] = []

    def _stack(self) -> list[float]:
        st = getattr(self._local, "stack", None)
        if st is None:
            st = self._local.stack = []
        return st

    def wrap(self, name: str, fn: Callable, label: Callable[..., str] | None = None
             ) -> Callable:
        def timed(*args: Any, **kwargs: Any) -> Any:
            st = self._stack()
            st.append(0.0)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                dt = time.perf_counter() - t0
                child = st.pop()
                key = name if label is None else label(*args, **kwargs)
                self.incl[key] += dt
                self.self_[key] += dt - child
                self.count[key] += 1
                if st:
                    st[-1] += dt

        timed.__wrapped__ = fn  # type: ignore[attr-defined]
        return timed

    def patch(self, owner: Any, attr: str, name: str, static: bool = False,
              label: Callable[..., str] | None = None) -> None:
        old = inspect.getattr_static(owner, attr)
        fn = getattr(owner, attr)
        new = self.wrap(name, fn, label)
        setattr(owner, attr, staticmethod(new) if static else new)
        self.undo.append(lambda: setattr(owner, attr, old))

    def restore(self) -> None:
        while self.undo:
            self.undo.pop()()

    def reset(self) -> None:
        self.incl.clear()
        self.self_.clear()
        self.count.clear()


def instrument(rec: Recorder) -> None:
    """Wrap every plain function of the op modules, the autograd functions' ``forward`` and
    ``backward``, and the Triton launch helpers by kernel name."""
    omega_triton = importlib.import_module("atlas_search.ops.omega_triton")
    for mod in (importlib.import_module("atlas_search.ops.omega_linear"), omega_triton):
        for name, obj in list(vars(mod).items()):
            if inspect.isfunction(obj) and obj.__module__ == mod.__name__ and \
                    name not in ("_call", "_call_plain"):
                rec.patch(mod, name, f"{mod.__name__.rsplit('.', 1)[-1]}.{name}")
            elif inspect.isclass(obj) and issubclass(obj, torch.autograd.Function) and \
                    obj.__module__ == mod.__name__:
                for meth in ("forward", "backward"):
                    rec.patch(obj, meth, f"{name}.{meth}", static=True)
    for helper in ("_call", "_call_plain"):
        rec.patch(omega_triton, helper, helper, label=lambda kern, name, *a, **k:
                  f"launch {name}")


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _host_time(fn: Callable[[], Any], device: str) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    _sync(device)
    return dt


def measure(device: str = "cuda", head_dim: int = 64, t: int = 4096, tokens: int = 32768,
            width: int = 2048, windows: tuple[int, ...] = (1, 16), calls: int = 30,
            backend: str = "triton", dtype: torch.dtype = torch.bfloat16, top: int = 25
            ) -> dict:
    """``{"settings", "cells": [{window, fwd: {wall_ms, host_ms}, fwd_bwd: {...},
    functions: [{name, calls_per_op, incl_us, self_us}] (fwd+bwd, by self time)}]}``."""
    settings = ks.default_settings(device, ts=(t,), head_dims=(head_dim,), tokens=tokens,
                                   width=width)
    b, h = settings.batch(t), settings.n_heads(head_dim)
    x = ks.make_inputs(b, t, h, head_dim, dtype, device)
    timer = ks._timer(device)
    cells = []
    for c in windows:
        impl = ks.Impl(backend, c)
        call = ks._call(impl, x, settings, None)  # (instrumented once the wrappers are in)

        def fwd(call: Callable = call) -> None:
            with torch.no_grad():
                call()

        def fwd_bwd(call: Callable = call) -> None:
            ks._fwd_bwd(call, x)

        cell: dict[str, Any] = {"window": c, "B": b, "H": h}
        for key, fn in (("fwd", fwd), ("fwd_bwd", fwd_bwd)):
            if backend == "triton":
                ks._checked(impl, fn, key.replace("_", "+"))  # raises on a torch fallback
            for _ in range(3):
                fn()
            wall = statistics.median(timer(fn) for _ in range(calls))
            host = statistics.median(_host_time(fn, device) for _ in range(calls))
            cell[key] = {"wall_ms": wall * 1e3, "host_ms": host * 1e3}
        if device == "cuda":  # the device time of every kernel of one fwd+bwd
            cell["profile"] = ks.profile_cell(impl, x, settings, None, top=12)
            cell["profile"].update(head_dim=head_dim, T=t)
        rec = Recorder()
        instrument(rec)
        try:
            fwd_bwd()
            rec.reset()
            for _ in range(calls):
                fwd_bwd()
            _sync(device)
        finally:
            rec.restore()
        rows = [{"name": k, "calls_per_op": rec.count[k] / calls,
                 "incl_us": rec.incl[k] / calls * 1e6, "self_us": rec.self_[k] / calls * 1e6}
                for k in rec.incl]
        rows.sort(key=lambda r: -r["self_us"])
        cell["functions"] = rows[:top]
        cell["wrapped_self_us"] = sum(r["self_us"] for r in rows)
        cells.append(cell)
    return {"settings": {"device": device, "head_dim": head_dim, "T": t, "tokens": tokens,
                         "width": width, "dtype": str(dtype).replace("torch.", ""),
                         "backend": backend, "calls": calls}, "cells": cells}


def launch_floor(n_ptr: int = 24, n_int: int = 8, launches: int = 200, device: str = "cuda"
                 ) -> dict:
    """Host microseconds per launch of an empty ``@triton.jit`` kernel with ``n_ptr`` tensor
    and ``n_int`` integer arguments and three constexprs (about the argument list of the
    backward kernels): plain, and through ``triton.autotune`` over two configs (after
    tuning). CUDA only: the floor a launch costs whatever its body."""
    import triton

    names = [f"p{i}" for i in range(n_ptr)] + [f"n{i}" for i in range(n_int)]
    src = (f"def _empty_kernel({', '.join(names)}, A: tl.constexpr, B: tl.constexpr, "
           f"BV: tl.constexpr):\n    pass\n")
    with tempfile.TemporaryDirectory() as tmp:  # triton.jit needs the source in a file
        path = os.path.join(tmp, "atlas_empty_kernel.py")
        with open(path, "w") as fh:
            fh.write("import triton.language as tl\n" + src)
        spec = importlib.util.spec_from_file_location("atlas_empty_kernel", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)  # type: ignore[union-attr]
        plain = triton.jit(mod._empty_kernel)
        tuned = triton.autotune([triton.Config({"BV": 16}, num_warps=8),
                                 triton.Config({"BV": 32}, num_warps=8)],
                                key=["n0", "n1"])(triton.jit(mod._empty_kernel))
        ptrs = [torch.empty(16, device=device) for _ in range(n_ptr)]
        ints = list(range(1, n_int + 1))
        out = {}
        for name, launch in (
                ("plain", lambda: plain[(64, 2)](*ptrs, *ints, A=1, B=2, BV=16, num_warps=8)),
                ("autotuned", lambda: tuned[(64, 2)](*ptrs, *ints, A=1, B=2))):
            for _ in range(3):
                launch()
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(launches):
                launch()
            out[name + "_us"] = (time.perf_counter() - t0) / launches * 1e6
            _sync(device)
    return out


def format_text(result: dict) -> str:
    s = result["settings"]
    lines = [f"host time of omega_linear(backend={s['backend']!r}) on {s['device']}: D = "
             f"{s['head_dim']}, T = {s['T']}, {s['tokens']} tokens, {s['dtype']}, median "
             f"of {s['calls']} calls"]
    if result.get("floor"):
        fl = result["floor"]
        lines.append(f"empty-kernel launch floor: {fl['plain_us']:.1f} us plain, "
                     f"{fl['autotuned_us']:.1f} us through triton.autotune")
    for cell in result["cells"]:
        f, fb = cell["fwd"], cell["fwd_bwd"]
        lines.append(f"c = {cell['window']} (B = {cell['B']}, H = {cell['H']}): fwd wall "
                     f"{f['wall_ms']:.3f} ms, host {f['host_ms']:.3f} ms; fwd+bwd wall "
                     f"{fb['wall_ms']:.3f} ms, host {fb['host_ms']:.3f} ms; wrapped self time "
                     f"{cell['wrapped_self_us']:.0f} us per fwd+bwd")
        if cell.get("profile"):
            lines += ks.profile_lines({"profile": [cell["profile"]]})
        lines.append(f"  {'function (fwd+bwd, instrumented)':<44} {'calls':>6} "
                     f"{'incl us':>9} {'self us':>9}")
        for r in cell["functions"]:
            lines.append(f"  {r['name']:<44} {r['calls_per_op']:>6.1f} {r['incl_us']:>9.1f} "
                         f"{r['self_us']:>9.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m atlas_search.bench.host_time",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=("cpu", "cuda"),
                    default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--backend", default=None, choices=("triton", "torch"),
                    help="default: triton on CUDA or under TRITON_INTERPRET=1, else torch")
    ap.add_argument("--head-dim", type=positive_int, default=64)
    ap.add_argument("--T", type=positive_int, default=4096)
    ap.add_argument("--tokens", type=positive_int, default=32768)
    ap.add_argument("--width", type=positive_int, default=2048)
    ap.add_argument("--window", type=positive_int_list, default=(1, 16),
                    help="comma list of windows c >= 1 (default 1,16)")
    ap.add_argument("--dtype", default="bfloat16", choices=DTYPES)
    ap.add_argument("--calls", type=positive_int, default=30)
    ap.add_argument("--top", type=positive_int, default=25)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        ap.error("argument --device: cuda is not available (torch.cuda.is_available() is "
                 "False); use --device cpu")
    interpret = os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes",
                                                                             "on")
    if a.backend is None:
        a.backend = "triton" if a.device == "cuda" or interpret else "torch"
    elif a.backend == "triton" and a.device == "cpu" and not interpret:
        ap.error("argument --backend: triton needs --device cuda or TRITON_INTERPRET=1 on "
                 "cpu; use --backend torch")
    check_out(ap, "--json", a.json)
    res = measure(a.device, a.head_dim, a.T, a.tokens, a.width, a.window, a.calls, a.backend,
                  getattr(torch, a.dtype), a.top)
    if a.device == "cuda":
        res["floor"] = launch_floor()
    print(format_text(res))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(res, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
