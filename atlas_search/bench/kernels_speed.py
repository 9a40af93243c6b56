"""Kernel speed of the linear Omega rule against flash-linear-attention and SDPA (DESIGN.md §9).

What is timed, per head dim ``D`` and sequence length ``T`` (batch ``B = tokens // T``, so
``B * T`` is constant; ``H = width // D`` heads unless ``heads`` is fixed):

* ``omega_linear`` with ``optimizer="gd"``, ``objective="l2"`` (gated DeltaNet with an Omega
  window), window ``c`` in ``windows`` (default 1 and 16), chunk ``chunk``, for the backends
  ``triton`` and ``torch`` (GPU) or ``torch`` and ``reference`` (CPU; the reference token
  loop only at ``c = 1`` and ``T <= max_ref_t``);
* ``fla``: flash-linear-attention's ``chunk_gated_delta_rule`` (GPU only, when importable)
  with ``g = log(alpha)`` (fp32), ``beta = eta``, ``scale = 1``, the same l2-normalised
  ``q, k``: the exact ``b = 1`` online gated delta rule (WY form) with the decay applied
  before the update, ``M_t = a_t M_{t-1} - b_t k_t^T (k_t a_t M_{t-1} - v_t)``, while ours
  takes the gradient at the chunk anchor, ``M_t = a_t M_{t-1} - eta_t k_t^T (k_t M_{t'} -
  v_t)``: the closest setting, not an identical one;
* ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention``, causal, flash backend only
  (GPU only), same ``B, T, H, D``.

Inputs: ``q, k`` l2-normalised Gaussian, ``v`` Gaussian, ``alpha = sigmoid(4 + N(0, 1/4))``
(decay near 1, about 0.98), ``eta = 0.1 sigmoid(N(0, 1))``, ``gamma = 1`` (constant);
``dtype`` bf16 on GPU, fp32 on CPU. ``fwd``: one forward under ``torch.no_grad``;
``fwd+bwd``: a forward with autograd and the backward of a fixed random output gradient
(gradients of ``q, k, v`` and of the gates ``alpha, eta`` / ``g, beta``). Timing: CUDA
events on GPU, ``perf_counter`` on CPU; ``warmup`` untimed runs of each, then the median of
``repeats`` (one run when the first takes longer than ``long_s``). Every cell is wrapped:
an error (OOM, unsupported shape, a Triton fallback to torch) is printed in its cell and the
run goes on. ``budget_s`` skips the remaining cells once spent (essential cells run first,
``torch c=16`` last on GPU).

A triton cell counts only when the Triton kernels ran: ``omega_triton.stats`` must grow in
the forward and in the backward (the op falls back to torch, with a warning once per
process, when Triton cannot run); otherwise the cell is an error.

Imports only torch and :mod:`atlas_search.ops` (the GPU check runs without pydantic); triton
is never imported on CPU (it would fix the Triton interpreter mode for the process).
"""

from __future__ import annotations

import contextlib
import importlib
import math
import platform
import statistics
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "float64": torch.float64}
GPU_IMPLS = ("triton", "fla", "sdpa")


@dataclass(frozen=True)
class Impl:
    """One implementation timed in every (head dim, T) group."""

    name: str  # triton | torch | reference | fla | sdpa
    window: int | None = None  # Omega window c (our backends only)
    late: bool = False  # run after every essential cell (dropped first when the budget ends)

    @property
    def label(self) -> str:
        return self.name if self.window is None else f"{self.name} c={self.window}"


@dataclass
class Settings:
    """Sizes and timing of one benchmark run (see :func:`default_settings`)."""

    device: str = "cpu"
    ts: tuple[int, ...] = (512, 1024, 2048, 4096)
    head_dims: tuple[int, ...] = (64, 128)
    tokens: int = 8192
    width: int = 128
    heads: int | None = None
    chunk: int = 64
    windows: tuple[int, ...] = (1, 16)
    dtype: str = "float32"
    repeats: int = 3
    warmup: int = 1
    max_ref_t: int = 512
    budget_s: float | None = None
    long_s: float = 10.0
    seed: int = 0
    impls: tuple[str, ...] | None = None  # restrict to these names (default: all that apply)
    profile_t: int | None = None  # profile one fwd+bwd per head dim at this T (None: off)

    def batch(self, t: int) -> int:
        return max(1, self.tokens // t)

    def n_heads(self, d: int) -> int:
        return self.heads if self.heads else max(1, self.width // d)


def default_settings(device: str, quick: bool = False, **overrides: Any) -> Settings:
    """Defaults per device; ``overrides`` with value ``None`` are ignored.

    GPU: ``T`` in 2k/4k/8k/16k, ``B * T = 32k`` tokens, ``H * D = 2048`` (32 heads of 64,
    16 of 128), chunk 64, bf16, 2 warm-ups, median of 5, a kernel profile at ``T = 4096``
    (:func:`profile_cell`). CPU (2 cores): ``T`` in
    512..4096, ``B * T = 8192``, ``H * D = 128``, chunk 64, fp32, median of 3, reference
    up to ``T = 512``. ``quick``: a smaller grid for smoke tests.
    """
    if device == "cuda":
        s = Settings(device="cuda", ts=(2048, 4096, 8192, 16384), head_dims=(64, 128),
                     tokens=32768, width=2048, chunk=64, dtype="bfloat16", repeats=5,
                     warmup=2, max_ref_t=0, long_s=5.0, profile_t=4096)
        if quick:
            s = replace(s, ts=(2048, 8192), head_dims=(64, 128), repeats=3, profile_t=2048)
    else:
        s = Settings(device="cpu")
        if quick:
            s = replace(s, ts=(128, 256), head_dims=(16, 32), tokens=512, width=32, chunk=32,
                        repeats=1, warmup=1, max_ref_t=128)
    return replace(s, **{k: v for k, v in overrides.items() if v is not None})


def plan(settings: Settings) -> tuple[list[Impl], list[str]]:
    """The implementations to time on this device, and one line per group skipped."""
    cuda = settings.device == "cuda"
    impls: list[Impl] = []
    if cuda:
        impls += [Impl("triton", c) for c in settings.windows]
    impls += [Impl("torch", c, late=cuda and c != 1) for c in settings.windows]
    if not cuda and settings.max_ref_t > 0:
        impls.append(Impl("reference", 1))
    if cuda:
        impls += [Impl("fla"), Impl("sdpa")]
    skipped = []
    if not cuda:
        why = ("no CUDA device" if not torch.cuda.is_available()
               else f"--device {settings.device}")
        skipped.append(f"GPU rows skipped: {why} (triton backend, fla chunk_gated_delta_rule, "
                       "SDPA flash attention)")
    if settings.impls:
        impls = [i for i in impls if i.name in settings.impls]
    return impls, skipped


# ---------------------------------------------------------------- implementations


def load_fla() -> tuple[Callable | None, str | None, str]:
    """``(chunk_gated_delta_rule, version, message)``; the function is None when fla cannot
    be imported (the message says why).

    Triton releases that reject autotune keys naming no kernel argument (fla 0.5.2 has such
    keys; older Triton dropped them silently) get one retry with :func:`_autotune_key_shim`,
    which restores the old behaviour during the import; the message says so.
    """
    shim = ""
    try:
        fn, version, origin = _import_fla()
    except ValueError as exc:
        if "not kernel arguments" not in str(exc):
            return None, None, f"fla not importable (ValueError: {_first_line(exc)})"
        _forget_fla()
        try:
            with _autotune_key_shim():
                fn, version, origin = _import_fla()
        except Exception as exc2:  # noqa: BLE001
            return None, None, f"fla not importable ({type(exc2).__name__}: {_first_line(exc2)})"
        shim = (" (with a Triton compatibility shim: autotune key names that are not kernel "
                "arguments dropped, as older Triton did)")
    except Exception as exc:  # noqa: BLE001 - any import failure means "no fla rows"
        return None, None, f"fla not importable ({type(exc).__name__}: {_first_line(exc)})"
    return fn, version, f"fla {version} from {origin}{shim}{_lift_hopper_guard()}"


def _lift_hopper_guard() -> str:
    """fla 0.5.2 refuses the gated ``chunk_bwd_dqkwg`` (the backward of
    ``chunk_gated_delta_rule``) on Hopper with Triton 3.4 to 3.7.0, whose compile of it gives
    wrong dq/dk values (fla issue #640). The benchmark times the same kernels anyway (the
    work and the memory traffic do not depend on the values) and says so; nothing in this
    package uses fla's gradients. Returns the note, or '' when fla's guard does not apply."""
    try:
        from fla.ops.common import chunk_o
    except Exception:  # noqa: BLE001 - another layout: nothing to lift
        return ""
    if not getattr(chunk_o, "IS_NVIDIA_HOPPER", False) or \
            not getattr(chunk_o, "TRITON_ABOVE_3_4_0", False) or \
            getattr(chunk_o, "TRITON_ABOVE_3_7_1", True):
        return ""
    chunk_o.TRITON_ABOVE_3_7_1 = True
    return (" (its Hopper guard for Triton < 3.7.1 lifted to time the backward: fla #640, "
            "its dq/dk values are wrong under this Triton, its timings are of the same "
            "kernels)")


def _import_fla() -> tuple[Callable, str | None, str]:
    import fla
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule

    return chunk_gated_delta_rule, getattr(fla, "__version__", None), _origin(fla)


def _forget_fla() -> None:
    import sys

    for name in [m for m in sys.modules if m == "fla" or m.startswith("fla.")]:
        del sys.modules[name]


@contextlib.contextmanager
def _autotune_key_shim() -> Iterator[None]:
    """While active, ``triton.autotune`` drops ``key`` / ``reset_to_zero`` /
    ``restore_value`` names that are not arguments of the kernel instead of raising."""
    from triton.runtime import autotuner

    original = autotuner.Autotuner.__init__

    def init(self, fn, arg_names, configs, key, reset_to_zero, restore_value, *args, **kw):
        def keep(names):
            return None if names is None else [n for n in names if n in arg_names]

        original(self, fn, arg_names, configs, keep(key), keep(reset_to_zero),
                 keep(restore_value), *args, **kw)

    autotuner.Autotuner.__init__ = init
    try:
        yield
    finally:
        autotuner.Autotuner.__init__ = original


def _origin(mod: Any) -> str:
    paths = list(getattr(mod, "__path__", []) or [getattr(mod, "__file__", "?")])
    return str(paths[0]) if paths else "?"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else ""


@dataclass
class _Inputs:
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    alpha: torch.Tensor
    eta: torch.Tensor
    gamma: torch.Tensor
    do: torch.Tensor
    g_log: torch.Tensor  # fla: log decay, fp32
    beta: torch.Tensor  # fla: eta

    def leaves(self) -> list[torch.Tensor]:
        return [self.q, self.k, self.v, self.alpha, self.eta, self.g_log, self.beta]


def make_inputs(b: int, t: int, h: int, d: int, dtype: torch.dtype, device: str,
                seed: int = 0) -> _Inputs:
    """The inputs of one cell, drawn on ``device`` (a generator there: drawing the 67M
    numbers of a GPU cell on the host took seconds per cell, out of the time budget)."""
    gen = torch.Generator(device=device).manual_seed(seed)

    def rn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, device=device)

    q = F.normalize(rn(b, t, h, d), dim=-1)
    k = F.normalize(rn(b, t, h, d), dim=-1)
    v = rn(b, t, h, d)
    alpha = torch.sigmoid(4.0 + 0.5 * rn(b, t, h))
    eta = 0.1 * torch.sigmoid(rn(b, t, h))
    do = rn(b, t, h, d)

    def leaf(x: torch.Tensor, dt: torch.dtype = dtype) -> torch.Tensor:
        return x.detach().to(dtype=dt, copy=True).requires_grad_(True)

    return _Inputs(leaf(q), leaf(k), leaf(v), leaf(alpha), leaf(eta),
                   torch.ones(b, t, h, device=device, dtype=dtype), do.to(dtype),
                   leaf(alpha.log(), torch.float32), leaf(eta))


def _call(impl: Impl, x: _Inputs, settings: Settings, fla_fn: Callable | None
          ) -> Callable[[], torch.Tensor]:
    """A zero-argument forward returning the output ``[B, T, H, D]`` (or a view of it).
    Ours look ``omega_linear`` up in its module at every call (so an instrumented one,
    :mod:`.host_time`, is the one timed)."""
    if impl.name in ("triton", "torch", "reference"):
        ops = importlib.import_module("atlas_search.ops.omega_linear")

        def run() -> torch.Tensor:
            return ops.omega_linear(x.q, x.k, x.v, alpha=x.alpha, eta=x.eta,
                                    gamma=x.gamma, theta=None, window=impl.window,
                                    chunk_size=settings.chunk, optimizer="gd",
                                    objective="l2", backend=impl.name)[0]
        return run
    if impl.name == "fla":
        if fla_fn is None:
            raise RuntimeError("fla not available")

        def run_fla() -> torch.Tensor:
            return fla_fn(x.q, x.k, x.v, x.g_log, x.beta, scale=1.0, output_final_state=False,
                          use_qk_l2norm_in_kernel=False)[0]
        return run_fla
    if impl.name == "sdpa":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def run_sdpa() -> torch.Tensor:
            qt, kt, vt = (y.transpose(1, 2) for y in (x.q, x.k, x.v))  # [B, H, T, D] views
            with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                return F.scaled_dot_product_attention(qt, kt, vt, is_causal=True).transpose(1, 2)
        return run_sdpa
    raise ValueError(f"unknown implementation {impl.name!r}")


# ---------------------------------------------------------------- timing


def _timer(device: str) -> Callable[[Callable[[], Any]], float]:
    if device == "cuda":
        def cuda_time(fn: Callable[[], Any]) -> float:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        return cuda_time

    def cpu_time(fn: Callable[[], Any]) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    return cpu_time


def _median_time(fn: Callable[[], Any], timer: Callable, settings: Settings) -> float:
    for _ in range(settings.warmup):
        fn()
    first = timer(fn)
    if settings.repeats <= 1 or first > settings.long_s:
        return first
    return statistics.median([first] + [timer(fn) for _ in range(settings.repeats - 1)])


def _refused(impl: Impl, d: int, device: str) -> str:
    """Why ``backend='triton'`` refuses this cell on CUDA (``omega_triton.gpu_hazard``; it
    would fall back to torch, which this benchmark counts as an error), or ''."""
    if impl.name != "triton" or device != "cuda":
        return ""
    import triton

    from ..ops import omega_triton

    hz = omega_triton.gpu_hazard(d, d, impl.window or 1, torch.cuda.get_device_capability(),
                                 str(triton.__version__))
    return hz[1] if hz and hz[2] else ""


def _triton_stats() -> dict[str, int] | None:
    try:
        from ..ops import omega_triton
    except ImportError:
        return None
    return dict(omega_triton.stats)


class _Fallback(RuntimeError):
    pass


def _checked(impl: Impl, fn: Callable[[], Any], kind: str) -> Callable[[], Any]:
    """For triton: run ``fn`` once with warnings recorded and require a kernel pass."""
    if impl.name != "triton":
        return fn
    before = _triton_stats()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    after = _triton_stats()
    key = "forward" if kind == "fwd" else "backward"
    msgs = [str(w.message) for w in caught]
    if before is None or after is None or after[key] <= before[key]:
        why = msgs[0] if msgs else "omega_triton.stats did not grow"
        raise _Fallback(f"{kind}: triton kernels did not run: {why}")
    return fn


def _fwd_bwd(call: Callable[[], torch.Tensor], x: _Inputs) -> None:
    """A forward with autograd and the backward of the fixed output gradient (fresh grads)."""
    for leaf in x.leaves():
        leaf.grad = None
    call().backward(x.do)


def time_cell(impl: Impl, x: _Inputs, settings: Settings, fla_fn: Callable | None
              ) -> tuple[float | None, float | None, str]:
    """``(fwd seconds, fwd+bwd seconds, note)``; a failing half is None with its error in
    the note, and the other half still runs."""
    timer = _timer(settings.device)
    try:
        fwd_call = _call(impl, x, settings, fla_fn)
    except Exception as exc:  # noqa: BLE001
        return None, None, f"{type(exc).__name__}: {_first_line(exc)}"
    notes = []

    def fwd() -> None:
        with torch.no_grad():
            fwd_call()

    def fwd_bwd() -> None:
        _fwd_bwd(fwd_call, x)

    results: list[float | None] = []
    for kind, fn in (("fwd", fwd), ("fwd+bwd", fwd_bwd)):
        try:
            _checked(impl, fn, kind)
            results.append(_median_time(fn, timer, settings))
        except Exception as exc:  # noqa: BLE001 - a cell's error is printed in the cell
            results.append(None)
            msg = str(exc) if isinstance(exc, _Fallback) else \
                f"{type(exc).__name__}: {_first_line(exc)}"
            notes.append(f"{kind}: {msg}" if kind not in msg else msg)
        if results[-1] is None and settings.device == "cuda":
            for leaf in x.leaves():  # (after the except: its traceback held the tensors)
                leaf.grad = None
            torch.cuda.empty_cache()
    return results[0], results[1], "; ".join(notes)


PROFILED = {"cuda": ("triton c=1", "triton c=16", "fla"), "cpu": ("torch c=1", "torch c=16")}
"""The cells :func:`run_bench` profiles (at ``Settings.profile_t``, when they timed ok)."""


def profile_cell(impl: Impl, x: _Inputs, settings: Settings, fla_fn: Callable | None,
                 top: int = 8) -> dict:
    """One fwd+bwd under ``torch.profiler``: where the time goes. GPU: every kernel's device
    time, grouped by kernel name (Triton kernels are named by their function, e.g.
    ``_omega_bwd_dqk``; ATen/cuBLAS kernels are C++ names, ``void ...``); CPU: the self
    time of every ``aten::`` op. Returns the total, the Triton share (GPU), the ``top``
    names and the rest."""
    from torch.profiler import ProfilerActivity, profile

    cuda = settings.device == "cuda"
    call = _call(impl, x, settings, fla_fn)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        _fwd_bwd(call, x)
        if cuda:
            torch.cuda.synchronize()
    return {"label": impl.label, **summarize_events(prof.events(), settings.device, top)}


def summarize_events(events: Iterable[Any], device: str, top: int = 8) -> dict:
    """Group profiler events by name: on ``cuda`` the device time of every kernel event
    (``device_type`` CUDA), on ``cpu`` the self time of every ``aten::`` op; total, Triton
    share (cuda: kernels named by a plain identifier, not ``void ...``/``Memcpy``), the
    ``top`` names and the rest."""
    from torch.autograd import DeviceType

    cuda = device == "cuda"
    agg: dict[str, list[float]] = {}
    for e in events:
        if cuda:
            if e.device_type != DeviceType.CUDA:
                continue
            us = float(e.time_range.elapsed_us())
        else:
            if e.device_type != DeviceType.CPU or not e.name.startswith("aten::"):
                continue
            us = float(e.self_cpu_time_total)
        slot = agg.setdefault(e.name, [0.0, 0])
        slot[0] += us
        slot[1] += 1
    names = sorted(agg, key=lambda n: -agg[n][0])
    total = sum(v[0] for v in agg.values()) / 1e3

    def is_triton(name: str) -> bool:
        return not name.startswith(("void ", "Memcpy", "Memset", "aten::")) and " " not in name

    return {
        "device": device, "total_ms": total, "launches": sum(int(v[1]) for v in agg.values()),
        "triton_ms": sum(v[0] for n, v in agg.items() if is_triton(n)) / 1e3 if cuda else None,
        "top": [{"name": n, "ms": agg[n][0] / 1e3, "calls": int(agg[n][1])} for n in names[:top]],
        "rest_ms": sum(agg[n][0] for n in names[top:]) / 1e3, "rest_names": len(names[top:]),
    }


def profile_lines(result: dict) -> list[str]:
    """The profiles as text: per cell the total, the Triton share and the top names."""
    lines = []
    for p in result.get("profile", []):
        if p.get("error"):
            lines.append(f"  D={p['head_dim']} T={p['T']} {p['label']}: {p['error']}")
            continue
        what = "device time" if p["device"] == "cuda" else "aten self CPU time"
        head = (f"  D={p['head_dim']} T={p['T']} {p['label']}: {p['total_ms']:.2f} ms {what} "
                f"in {p['launches']} calls")
        if p["triton_ms"] is not None and p["total_ms"]:
            head += (f"; Triton kernels {p['triton_ms']:.2f} ms "
                     f"({100 * p['triton_ms'] / p['total_ms']:.0f}%)")
        lines.append(head)
        for k in p["top"]:
            share = 100 * k["ms"] / p["total_ms"] if p["total_ms"] else 0.0
            name = k["name"] if len(k["name"]) <= 70 else k["name"][:67] + "..."
            lines.append(f"      {k['ms']:8.3f} ms {share:3.0f}%  x{k['calls']:<4d} {name}")
        if p["rest_names"]:
            lines.append(f"      {p['rest_ms']:8.3f} ms       {p['rest_names']} more names")
    return lines


# ---------------------------------------------------------------- the run


def _row(impl: Impl, d: int, t: int, b: int, h: int, settings: Settings, fwd: float | None,
         fwd_bwd: float | None, status: str, note: str = "") -> dict:
    tokens = b * t
    return {
        "impl": impl.name, "window": impl.window, "label": impl.label, "head_dim": d, "T": t,
        "B": b, "H": h, "chunk": settings.chunk if impl.window is not None else None,
        "dtype": settings.dtype,
        "fwd_ms": None if fwd is None else fwd * 1e3,
        "fwd_bwd_ms": None if fwd_bwd is None else fwd_bwd * 1e3,
        "fwd_tokens_per_s": None if not fwd else tokens / fwd,
        "fwd_bwd_tokens_per_s": None if not fwd_bwd else tokens / fwd_bwd,
        "status": status, "note": note,
    }


RATIOS = (
    # (name, numerator label, denominator label): time ratio, < 1 = numerator faster
    ("triton/fla", "triton c=1", "fla"),
    ("triton c16/c1", "triton c=16", "triton c=1"),
    ("torch/triton", "torch c=1", "triton c=1"),
    ("torch/triton c16", "torch c=16", "triton c=16"),
    ("reference/torch", "reference c=1", "torch c=1"),
    ("torch c16/c1", "torch c=16", "torch c=1"),
)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def compute_ratios(rows: list[dict]) -> list[dict]:
    """Per (head dim, T): each row's time over fla's (in the row, ``vs_fla_*``) and the named
    ratios of :data:`RATIOS` whose two rows were planned."""
    by = {(r["head_dim"], r["T"], r["label"]): r for r in rows}
    out = []
    for d, t in dict.fromkeys((r["head_dim"], r["T"]) for r in rows):
        fla = by.get((d, t, "fla"))
        for r in rows:
            if (r["head_dim"], r["T"]) == (d, t):
                for m in ("fwd", "fwd_bwd"):
                    r[f"vs_fla_{m}"] = _ratio(r[f"{m}_ms"], fla[f"{m}_ms"]) if fla else None
        for name, num, den in RATIOS:
            a, b = by.get((d, t, num)), by.get((d, t, den))
            if a is None or b is None:
                continue
            out.append({"head_dim": d, "T": t, "ratio": name, "num": num, "den": den,
                        "fwd": _ratio(a["fwd_ms"], b["fwd_ms"]),
                        "fwd_bwd": _ratio(a["fwd_bwd_ms"], b["fwd_bwd_ms"])})
    return out


ACCEPTANCE = (
    # (key, ratio name, test, rule)
    ("triton_faster_than_torch", ("torch/triton", "torch/triton c16"),
     lambda x: x > 1.0, "torch time / triton time > 1 at every T >= 2048"),
    ("triton_within_1.5x_fla", ("triton/fla",),
     lambda x: x <= 1.5, "triton c=1 time / fla time <= 1.5"),
    ("triton_c16_under_2x_c1", ("triton c16/c1",),
     lambda x: x < 2.0, "triton c=16 time / triton c=1 time < 2"),
)


def acceptance(ratios: list[dict], min_t: int = 2048) -> dict:
    """The GPU acceptance verdicts, fwd and fwd+bwd, from :func:`compute_ratios`' output.

    ``ok``: True when every value passes, False when one fails or is missing (a cell that
    errored or was skipped), None when nothing was measured (e.g. no fla).
    """
    verdicts = {}
    for key, names, test, rule in ACCEPTANCE:
        checks = []
        for r in ratios:
            if r["ratio"] in names and r["T"] >= min_t:
                for m in ("fwd", "fwd_bwd"):
                    val = r[m]
                    checks.append({"head_dim": r["head_dim"], "T": r["T"], "ratio": r["ratio"],
                                   "metric": m, "value": val,
                                   "ok": None if val is None else bool(test(val))})
        values = [c["ok"] for c in checks]
        if not checks or all(v is None for v in values):
            ok, note = None, "not measured"
        else:
            ok = all(v is True for v in values)
            bad = [c for c in checks if c["ok"] is not True]
            note = "" if ok else "; ".join(
                f"D={c['head_dim']} T={c['T']} {c['ratio']} {c['metric']}="
                f"{'missing' if c['value'] is None else format(c['value'], '.2f')}"
                for c in bad[:8])
        verdicts[key] = {"ok": ok, "rule": rule, "note": note, "checks": checks}
    return verdicts


def environment(device: str, fla_version: str | None = None) -> dict:
    """Device name and versions; never imports triton (it would fix the interpreter mode)."""
    from importlib import metadata

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    if device == "cuda":
        name = torch.cuda.get_device_name()
        try:
            import triton

            triton_version = getattr(triton, "__version__", None)
        except ImportError:
            triton_version = None
    else:
        name = f"CPU ({platform.processor() or platform.machine()}, torch threads " \
               f"{torch.get_num_threads()})"
        triton_version = version("triton")
    return {"device": device, "device_name": name, "torch": torch.__version__,
            "cuda": torch.version.cuda, "triton": triton_version, "fla": fla_version,
            "threads": torch.get_num_threads(), "python": platform.python_version()}


FOOTNOTES = (  # (impl the note is about, or "" for every run, note)
    ("fla", "fla = flash-linear-attention chunk_gated_delta_rule (g = log alpha in fp32, "
     "beta = eta, scale 1, pre-normalised q, k): the exact b=1 online gated delta rule (WY "
     "form) with the decay applied before the update; ours (gd, l2) freezes the gradients "
     "at the chunk anchor (chunk b) - the closest setting, not an identical one."),
    ("triton", "triton = omega_linear(backend='triton'); a cell counts only if the Triton "
     "kernels ran in the forward and the backward (a fallback to torch is an error)."),
    ("sdpa", "sdpa = torch scaled_dot_product_attention, causal, flash backend only, same B, T, "
     "H, D."),
    ("reference", "reference = the per-token loop (the oracle), window c=1 only."),
    ("", "fwd: forward under no_grad; fwd+bwd: forward + backward of a fixed output gradient "
     "(grads of q, k, v and the gates); tok/s = B*T / fwd+bwd time."),
    ("", "ratios are time ratios a/b (< 1: a is faster), measured side by side in this run."),
)


def run_bench(settings: Settings, *, fla: tuple[Callable | None, str | None, str] | None = None,
              progress: Callable[[str], None] | None = print) -> dict:
    """Time every planned cell; returns the JSON-ready result (see the README's layout)."""
    say = progress or (lambda _msg: None)
    t_start = time.monotonic()
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("no CUDA device (torch.cuda.is_available() is False)")
    dtype = DTYPES[settings.dtype]
    impls, skipped = plan(settings)
    fla_fn, fla_version = None, None
    if any(i.name == "fla" for i in impls):
        fla_fn, fla_version, fla_msg = fla if fla is not None else load_fla()
        if fla_fn is None:
            skipped.append(f"fla rows skipped: {fla_msg}")
            impls = [i for i in impls if i.name != "fla"]
        else:
            say(fla_msg)
    cells = sorted(
        ((i.late, hi, ti, n, i) for hi, d in enumerate(settings.head_dims)
         for ti, t in enumerate(settings.ts) for n, i in enumerate(impls)),
        key=lambda c: c[:4])
    deadline = None if settings.budget_s is None else t_start + settings.budget_s
    rows: dict[tuple, dict] = {}
    cache: tuple[tuple, _Inputs] | None = None

    def inputs(shape: tuple[int, int, int, int]) -> _Inputs:
        """The inputs of ``(B, T, H, D)``, made once per shape (the previous ones freed)."""
        nonlocal cache
        if cache is None or cache[0] != shape:
            cache = None
            if settings.device == "cuda":
                torch.cuda.empty_cache()
            cache = (shape, make_inputs(*shape, dtype, settings.device, settings.seed))
        return cache[1]
    for _late, hi, ti, _n, impl in cells:
        d, t = settings.head_dims[hi], settings.ts[ti]
        b, h = settings.batch(t), settings.n_heads(d)
        key = (d, t, impl.label)
        if impl.name == "reference" and t > settings.max_ref_t:
            rows[key] = _row(impl, d, t, b, h, settings, None, None, "skipped",
                             f"T > max_ref_T {settings.max_ref_t}")
            continue
        if deadline is not None and time.monotonic() > deadline:
            rows[key] = _row(impl, d, t, b, h, settings, None, None, "skipped",
                             f"time budget {settings.budget_s:g}s spent")
            continue
        refused = _refused(impl, d, settings.device)
        if refused:
            rows[key] = _row(impl, d, t, b, h, settings, None, None, "skipped",
                             f"refused by omega_triton.gpu_hazard: {refused}")
            continue
        try:
            fwd, fwd_bwd, note = time_cell(impl, inputs((b, t, h, d)), settings, fla_fn)
        except Exception as exc:  # noqa: BLE001 - e.g. OOM while making the inputs
            fwd, fwd_bwd, note = None, None, f"{type(exc).__name__}: {_first_line(exc)}"
        status = "ok" if fwd is not None and fwd_bwd is not None else "error"
        rows[key] = row = _row(impl, d, t, b, h, settings, fwd, fwd_bwd, status, note)
        say(f"  D={d:<4d} T={t:<6d} B={b:<3d} H={h:<3d} {impl.label:13s} "
            f"fwd {_fmt(row['fwd_ms'], '.2f'):>9s} ms  fwd+bwd {_fmt(row['fwd_bwd_ms'], '.2f'):>9s}"
            f" ms  {_fmt(row['fwd_bwd_tokens_per_s'], ',.0f'):>12s} tok/s"
            + (f"  [{note}]" if note else ""))
    profiles = []
    pt = settings.profile_t
    for d in settings.head_dims if pt else ():
        for impl in impls:
            row = rows.get((d, pt, impl.label))
            if impl.label not in PROFILED[settings.device] or not row or row["status"] != "ok":
                continue
            if deadline is not None and time.monotonic() > deadline:
                break
            b, h = settings.batch(pt), settings.n_heads(d)
            try:
                prof = profile_cell(impl, inputs((b, pt, h, d)), settings, fla_fn)
            except Exception as exc:  # noqa: BLE001 - a profile is extra information
                prof = {"label": impl.label, "error": f"{type(exc).__name__}: "
                        f"{_first_line(exc)}"}
            profiles.append({**prof, "head_dim": d, "T": pt})
            say(f"  profiled D={d} T={pt} {impl.label}")
    order = {(d, t, i.label): n for n, (d, t, i) in enumerate(
        (d, t, i) for d in settings.head_dims for t in settings.ts for i in impls)}
    row_list = sorted(rows.values(), key=lambda r: order[(r["head_dim"], r["T"], r["label"])])
    ratios = compute_ratios(row_list)
    return {
        "benchmark": "atlas-search kernels_speed",
        "environment": environment(settings.device, fla_version),
        "settings": asdict(settings),
        "impls": [i.label for i in impls],
        "rows": row_list,
        "ratios": ratios,
        "acceptance": acceptance(ratios) if settings.device == "cuda" else None,
        "skipped": skipped,
        "profile": profiles,
        "autotune": _autotune_picks(settings, impls),
        "footnotes": [n for key, n in FOOTNOTES if key in ("", *(i.name for i in impls))],
        "elapsed_s": time.monotonic() - t_start,
    }


def _autotune_picks(settings: Settings, impls: list[Impl]) -> list[dict]:
    """The configs autotuning chose for our kernels in this run (CUDA triton rows only)."""
    if settings.device != "cuda" or not any(i.name == "triton" for i in impls):
        return []
    from ..ops import omega_triton as ot

    return ot.autotune_picks()


# ---------------------------------------------------------------- formatting


def _fmt(x: float | None, spec: str, missing: str = "-") -> str:
    return missing if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _cell(r: dict, key: str, spec: str) -> str:
    if r[key] is not None:
        return format(r[key], spec)
    return "skipped" if r["status"] == "skipped" else "error" if r["status"] == "error" else "-"


Columns = list[tuple[str, bool]]  # (name, left-aligned)


def main_table(result: dict) -> tuple[Columns, list[list[str]]]:
    """The main table as strings, one row per implementation and shape; the ``x fla``
    columns only when fla was planned."""
    with_fla = "fla" in result["impls"]
    cols: Columns = [("D", False), ("T", False), ("B", False), ("H", False), ("impl", True),
                     ("fwd ms", False), ("fwd+bwd ms", False), ("tok/s fwd+bwd", False)]
    if with_fla:
        cols += [("fwd x fla", False), ("fwd+bwd x fla", False)]
    cols.append(("note", True))
    rows = []
    for r in result["rows"]:
        row = [str(r["head_dim"]), str(r["T"]), str(r["B"]), str(r["H"]), r["label"],
               _cell(r, "fwd_ms", ".2f"), _cell(r, "fwd_bwd_ms", ".2f"),
               _cell(r, "fwd_bwd_tokens_per_s", ",.0f")]
        if with_fla:
            row += [_fmt(r.get("vs_fla_fwd"), ".2f"), _fmt(r.get("vs_fla_fwd_bwd"), ".2f")]
        rows.append(row + [r["note"]])
    return cols, rows


def ratio_table(result: dict) -> tuple[Columns, list[list[str]]]:
    """The named ratios with at least one measured value."""
    cols: Columns = [("D", False), ("T", False), ("ratio", True), ("fwd", False),
                     ("fwd+bwd", False)]
    rows = [[str(r["head_dim"]), str(r["T"]), r["ratio"], _fmt(r["fwd"], ".2f"),
             _fmt(r["fwd_bwd"], ".2f")]
            for r in result["ratios"] if r["fwd"] is not None or r["fwd_bwd"] is not None]
    return cols, rows


def header(result: dict) -> str:
    """The table's first line: device, dtype and the sizes; ``B = max(1, tokens // T)`` and
    ``H = max(1, width // D)`` (the rows show both), so B*T and H*D are given as asked
    and with the values the rows ran when those differ."""
    env, s = result["environment"], result["settings"]

    def asked(name: str, want: int, got: set[int]) -> str:
        return f"{name} = {want}" + ("" if got <= {want} else
                                     f" asked ({', '.join(map(str, sorted(got)))} run)")

    rows = result.get("rows", [])
    bt = asked("B*T", s["tokens"], {r["B"] * r["T"] for r in rows}) + " tokens"
    hd = f"H = {s['heads']}" if s["heads"] else asked(
        "H*D", s["width"], {r["H"] * r["head_dim"] for r in rows})
    return (f"kernels_speed on {env['device_name']}: torch {env['torch']}, dtype {s['dtype']}, "
            f"{bt}, {hd}, chunk {s['chunk']}, gd + l2, median of {s['repeats']} after "
            f"{s['warmup']} warm-up")


def verdict_lines(result: dict) -> list[str]:
    acc = result.get("acceptance")
    if not acc:
        return []
    word = {True: "PASS", False: "FAIL", None: "not measured"}
    return [f"{word[v['ok']]:12s} {k}: {v['rule']}" + (f" ({v['note']})" if v["note"] and
                                                        v["ok"] is not None else "")
            for k, v in acc.items()]


def _plain(cols: Columns, rows: list[list[str]]) -> list[str]:
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, (c, _) in enumerate(cols)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) if left else v.rjust(w)
                         for v, w, (_, left) in zip(values, widths, cols, strict=True)).rstrip()

    head = line([c for c, _ in cols])
    return [head, "-" * len(head), *(line(r) for r in rows)]


def format_text(result: dict) -> str:
    """The plain-text report: header, main table, ratios, verdicts, skipped, footnotes."""
    lines = [header(result), ""]
    lines += _plain(*main_table(result))
    ratio_cols, ratio_rows = ratio_table(result)
    if ratio_rows:
        lines += ["", "time ratios (< 1: the first is faster)"]
        lines += _plain(ratio_cols, ratio_rows)
    lines += tail_lines(result)
    return "\n".join(lines)


def tail_lines(result: dict) -> list[str]:
    lines = []
    if result.get("acceptance"):
        lines += ["", "acceptance (GPU):", *("  " + v for v in verdict_lines(result))]
    if result.get("profile"):
        lines += ["", "where the time goes (one fwd+bwd under torch.profiler):",
                  *profile_lines(result)]
    if result.get("autotune"):
        lines += ["", "autotune picked (kernel key: kernel:BV:warps:VLOOP:BK, of n configs):",
                  *(f"  {p['kernel']:9s} "
                    f"{' '.join(f'{k}={v}' for k, v in p['key'].items())}: "
                    f"{p['config']} of {p['of']}" for p in result["autotune"])]
    if result["skipped"]:
        lines += ["", *result["skipped"]]
    lines += ["", "notes:", *(f"  {n}" for n in result["footnotes"])]
    lines += [f"  elapsed {result['elapsed_s']:.1f}s"]
    return lines


def format_markdown(result: dict) -> str:
    def md(cols: Columns, rows: list[list[str]]) -> list[str]:
        return ["| " + " | ".join(c for c, _ in cols) + " |",
                "|" + "".join(":---|" if left else "---:|" for _, left in cols),
                *("| " + " | ".join(v.replace("|", "/") for v in r) + " |" for r in rows)]

    lines = [header(result), ""]
    lines += md(*main_table(result))
    ratio_cols, ratio_rows = ratio_table(result)
    if ratio_rows:
        lines += ["", "Time ratios (< 1: the first is faster):", ""]
        lines += md(ratio_cols, ratio_rows)
    tail = tail_lines(result)
    lines += [ln if not ln.startswith("  ") else "- " + ln.strip() for ln in tail]
    return "\n".join(lines) + "\n"


def jsonable(obj: Any) -> Any:
    """Make ``obj`` strict-JSON: non-finite floats become strings, dtypes and paths too."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else str(obj)
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    return str(obj)
