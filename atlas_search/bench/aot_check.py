"""Ahead-of-time compile of the Triton kernels for a GPU, on a machine without one.

Triton's compiler and ``ptxas`` (both in the triton wheel) build every kernel of
:mod:`atlas_search.ops.omega_triton` for a CUDA target (``sm_90`` by default) exactly as a
first launch on that GPU would, for each shape variant and each autotune config of
:func:`omega_triton.configs`, and report what ``ptxas -v`` says: registers per thread,
spill stores (bytes per thread written to local memory: the register file overflowed),
stack frame, and the shared memory of the launch, and how many blocks of it fit on one SM
at once (:func:`blocks_per_sm`). A variant that does not compile, or
needs more shared memory than the target has, is a failure (exit code 1).

What it proves and what it does not: the kernels build in compiled mode (the interpreter
tests cannot see compile-only errors such as a ``tl.dot`` block under 16, a dtype clash
or too much shared memory), and which configs spill. Speed needs a GPU
(:mod:`.kernels_speed`).

Specialization: a launch on a GPU compiles the kernel for its argument values as Triton's
JIT sees them: every tensor pointer (16-byte aligned) and every integer divisible by 16
carries ``tt.divisibility = 16``, and an integer equal to 1 becomes the constant 1. These
hints decide whether loads vectorize and whether the software pipeliner stages them, so
they change registers and shared memory by a factor (the state scan at D = 128, BV = 16:
about 230 registers without them, 80 with). Each variant therefore has the integer
arguments of the benchmark's launch (:func:`launch_ints`: T = 4096, B*T = 32k tokens,
H*D = 2048 by default) and compiles with the hints that launch gets.

Variants: the benchmark's shapes by default (:func:`variants`): bf16 and fp32 inputs,
gd and momentum, the l2 objective, head dims 64 and 128, chunk 64, windows 1 and 16
(``N = b + c - 1`` window rows: 64 and 79). ``quick``: :data:`QUICK`, the first config
of each kernel (the CI test).

Run as ``python -m atlas_search.bench.aot_check`` (``--help``); it must be a process in
which triton was not imported in interpreter mode (``TRITON_INTERPRET`` is dropped at
start). Compiles go to a fresh cache folder, so ``ptxas`` always runs.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace

from .cli_args import check_out, dedupe, int_in, positive_int

KERNELS = ("states", "out", "bwd_local", "bwd_dh", "bwd_dv", "bwd_dqk", "coef_fwd", "coef_bwd")
COEF = ("coef_fwd", "coef_bwd")  # gd only, no autotuning (omega_triton.PLAIN_WARPS)
SMEM_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448}  # bytes per block (opt-in max)
_IN_DTYPE_ARGS = ("q_ptr", "k_ptr", "v_ptr", "hk_ptr", "hv_ptr", "o_ptr", "do_ptr", "dq_ptr",
                  "dk_ptr", "dv_ptr")  # the token-major tensors; else fp32
_GATE_ARGS = ("al_ptr", "et_ptr", "ga_ptr", "hg_ptr", "dal_ptr", "det_ptr")  # coef kernels
_TL = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
SM_LIMITS = {  # per SM: shared memory bytes, resident warps, resident blocks (CUDA guide)
    80: (167936, 64, 32), 86: (102400, 48, 16), 89: (102400, 48, 24), 90: (233472, 64, 32)}
REGS_PER_SM = 65536
SMEM_RESERVED = 1024  # bytes the driver reserves per block (sm_80 and later)


def blocks_per_sm(registers: int, num_warps: int, shared: int, arch: int = 90) -> int:
    """Blocks of a kernel resident at once on one SM, the least of what registers (allocated
    per warp in units of 256), shared memory (plus the per-block reservation), warps and
    blocks allow: how much of a latency-bound kernel's wait the SM can overlap."""
    smem, warps, blocks = SM_LIMITS.get(arch, SM_LIMITS[90])
    warp_regs = -(-registers * 32 // 256) * 256
    by_regs = (REGS_PER_SM // warp_regs) // num_warps if warp_regs else blocks
    by_smem = smem // (shared + SMEM_RESERVED)
    return max(0, min(by_regs, by_smem, warps // num_warps, blocks))


@dataclass(frozen=True)
class Variant:
    """One shape/dtype case of the kernels."""

    dtype: str  # bfloat16 | float16 | float32
    momentum: bool
    l2: bool
    head_dim: int  # Dk = Dv
    chunk: int  # b
    window: int  # c
    seq: int = 4096  # T of the launch whose integer arguments are specialized
    tokens: int = 32768  # B*T
    width: int = 2048  # H*D

    @property
    def rows(self) -> int:
        return self.chunk + self.window - 1  # N


def launch_ints(var: Variant) -> dict[str, int]:
    """The integer kernel arguments of the launch at ``var`` (``DMI``: no cotangent of the
    final states, as in the benchmark and in training)."""
    from ..ops.omega_triton import _grid_rows  # (no triton import: that is _ready_triton's)

    heads = max(1, var.width // var.head_dim)
    batch = max(1, var.tokens // var.seq)
    nt = -(-var.seq // var.chunk)
    return {"NT": nt, "T": var.seq, "H": heads, "L": var.chunk, "N": var.rows,
            "DK": var.head_dim, "DV": var.head_dim, "DMI": 0,
            "NC": batch * heads * nt, "NBH": _grid_rows(batch * heads)}


def specialize(arg_names: list[str], sig: dict[str, str], ints: dict[str, int]
               ) -> tuple[dict[str, int], dict[tuple[int, ...], list]]:
    """What Triton's JIT makes of a launch's arguments: the integers equal to 1 (constants)
    and the ``tt.divisibility = 16`` attributes of the pointers and of the integers divisible
    by 16."""
    ones, attrs = {}, {}
    for i, a in enumerate(arg_names):
        if sig[a] == "constexpr":
            continue
        if a.endswith("_ptr"):
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif ints[a] == 1:
            ones[a] = 1
        elif ints[a] % 16 == 0:
            attrs[(i,)] = [["tt.divisibility", 16]]
    return ones, attrs


@dataclass
class Row:
    """What ptxas reported for one kernel, variant and config."""

    kernel: str
    dtype: str
    optimizer: str
    head_dim: int
    chunk: int
    window: int
    bv: int
    num_warps: int
    loop: bool = False  # VLOOP form (omega_triton.LOOP_KERNELS)
    bk: int = 0  # bwd_dqk's Dk block
    registers: int | None = None
    spill_stores: int | None = None
    stack: int | None = None
    shared: int | None = None
    blocks_per_sm: int | None = None  # resident at once (:func:`blocks_per_sm`)
    seconds: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


QUICK = (
    Variant("bfloat16", False, True, 64, 64, 1),  # the benchmark's gd shape
    Variant("bfloat16", False, True, 64, 64, 16),  # its c = 16 (the coefficient band)
    Variant("bfloat16", True, False, 32, 16, 4),  # momentum, dot objective, halo tile
    Variant("float32", True, True, 32, 16, 4),  # fp32 IEEE dots, momentum, halo tile
)
"""``--quick`` (the CI test): each code path of the kernels compiled once (the coefficient
kernels for the gd variants only)."""


def variants(quick: bool = False, head_dims: Iterable[int] = (64, 128), chunk: int = 64,
             windows: Iterable[int] = (1, 16), dtypes: Iterable[str] = ("bfloat16", "float32"),
             momentum: Iterable[bool] = (False, True)) -> list[Variant]:
    """The variants to compile (module docstring)."""
    if quick:
        return list(QUICK)
    return [Variant(dt, mom, True, d, chunk, c) for dt in dtypes for mom in momentum
            for d in head_dims for c in windows]


def _ready_triton():
    """Import triton in compiled mode (drop ``TRITON_INTERPRET`` first); error if it was
    already imported as an interpreter."""
    if "triton" not in sys.modules:
        os.environ.pop("TRITON_INTERPRET", None)
    from ..ops import omega_triton as ot

    kern = ot._kernels()
    if kern["interpret"]:
        raise RuntimeError("triton was imported in interpreter mode in this process; run the "
                           "AOT check in a fresh process without TRITON_INTERPRET=1")
    return ot, kern


def _parse_ptxas(log: str) -> dict[str, int]:
    def grab(pattern: str) -> int | None:
        m = re.search(pattern, log)
        return int(m.group(1)) if m else None

    return {"registers": grab(r"Used (\d+) registers"),
            "spill_stores": grab(r"(\d+) bytes spill stores"),
            "stack": grab(r"(\d+) bytes stack frame")}


def compile_one(kern: dict, ot, name: str, var: Variant, cfg, arch: int = 90,
                memo: dict | None = None) -> Row:
    """Compile kernel ``name`` for ``sm_<arch>`` at ``var`` with config ``cfg``
    (:class:`omega_triton.Cfg`; for the coefficient kernels only its warps count).
    ``memo``: the rows of earlier compiles by what the compiler sees (constants, hints,
    warps): a variant that compiles to the same kernel (``bwd_dqk``'s Dk block at D = 64
    and 128) reuses its row, as Triton's cache would skip ``ptxas``."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = kern[name]
    if name in COEF:
        consts = ot._coef_consts(var.chunk, var.rows)
    else:
        consts = {**ot._consts(var.chunk, var.rows, var.head_dim, var.momentum, var.l2,
                               var.dtype != "float32"),
                  "BK": ot._np2(var.head_dim), **ot._meta(name, cfg)}
    consts = {k: v for k, v in consts.items() if k in fn.arg_names}
    in_dtype = _IN_DTYPE_ARGS
    if name in COEF:  # the gates and their gradients (gamma's in fp32 when halo rows add in)
        in_dtype = _GATE_ARGS + (("dga_ptr",) if var.window == 1 else ())
    sig = {}
    for a in fn.arg_names:
        if a in consts:
            sig[a] = "constexpr"
        elif a.endswith("_ptr"):
            sig[a] = "*" + (_TL[var.dtype] if a in in_dtype else "fp32")
        else:
            sig[a] = "i32"
    ones, attrs = specialize(fn.arg_names, sig, launch_ints(var))
    consts.update(ones)
    sig.update({a: "constexpr" for a in ones})
    num_warps = cfg.warps
    row = Row(name, var.dtype, "momentum" if var.momentum else "gd", var.head_dim, var.chunk,
              var.window, cfg.bv, num_warps, cfg.loop, cfg.bk)
    key = (name, tuple(sorted(sig.items())), tuple(sorted(consts.items())),
           tuple(sorted(attrs)), num_warps, arch)
    if memo is not None and key in memo:
        same = memo[key]
        return replace(row, registers=same.registers, spill_stores=same.spill_stores,
                       stack=same.stack, shared=same.shared,
                       blocks_per_sm=same.blocks_per_sm, error=same.error)
    src = ASTSource(fn, sig, constexprs={(fn.arg_names.index(k),): v
                                         for k, v in consts.items()}, attrs=attrs)
    log = io.StringIO()
    t0 = time.perf_counter()
    knobs.nvidia.dump_ptxas_log = True
    try:
        with contextlib.redirect_stdout(log):
            ck = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                                options={"num_warps": num_warps})
    except Exception as exc:  # a compile error is the finding
        row.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"
        return row
    finally:
        knobs.nvidia.dump_ptxas_log = False
        row.seconds = round(time.perf_counter() - t0, 2)
    for k, v in _parse_ptxas(log.getvalue()).items():
        setattr(row, k, v)
    row.shared = int(ck.metadata.shared)
    if row.registers is not None:
        row.blocks_per_sm = blocks_per_sm(row.registers, num_warps, row.shared, arch)
    limit = SMEM_LIMIT.get(arch)
    if limit is not None and row.shared > limit:
        row.error = f"shared memory {row.shared} B > {limit} B (sm_{arch})"
    if memo is not None:
        memo[key] = row
    return row


def run_aot_check(vars_: list[Variant], arch: int = 90, all_configs: bool = True,
                  progress: Callable[[str], None] | None = None) -> dict:
    """Compile every kernel for every variant (every autotune config, or only the first)."""
    ot, kern = _ready_triton()
    import triton
    from triton import knobs

    rows: list[Row] = []
    memo: dict = {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as cache:
        old = knobs.cache.dir
        knobs.cache.dir = cache
        try:
            for var in vars_:
                for name in KERNELS:
                    if name in COEF and var.momentum:
                        continue
                    cfgs = (ot.Cfg(0, ot.PLAIN_WARPS),) if name in COEF else ot.configs(
                        name, var.head_dim, var.head_dim)
                    for cfg in cfgs if all_configs else cfgs[:1]:
                        row = compile_one(kern, ot, name, var, cfg, arch, memo)
                        rows.append(row)
                        if progress:
                            progress(_line(row))
        finally:
            knobs.cache.dir = old
    return {"arch": arch, "triton": triton.__version__, "rows": [asdict(r) for r in rows],
            "failed": sum(r.error is not None for r in rows),
            "spilling": sum(bool(r.spill_stores) for r in rows),
            "seconds": round(time.perf_counter() - t0, 1)}


def _line(row: Row) -> str:
    head = (f"{row.kernel:10s} {row.dtype:8s} {row.optimizer:8s} D={row.head_dim:<3d} "
            f"b={row.chunk} c={row.window:<2d} BV={row.bv:<2d} warps={row.num_warps}"
            f"{' loop' if row.loop else ''}{f' BK={row.bk}' if row.bk else ''}")
    if row.error:
        return f"{head}  FAILED {row.error}"
    return (f"{head}  regs {row.registers}  spill {row.spill_stores} B  stack {row.stack} B"
            f"  smem {row.shared} B  {row.blocks_per_sm} blocks/SM  ({row.seconds:.1f} s)")


def summary(result: dict) -> list[str]:
    """Closing lines: the counts, then every first (``AUTOTUNE`` off) config that spills."""
    rows = result["rows"]
    lines = [f"sm_{result['arch']}, triton {result['triton']}: {len(rows)} compiles in "
             f"{result['seconds']} s, {result['failed']} failed, {result['spilling']} spill"]
    seen: set[tuple] = set()
    for r in rows:
        case = (r["kernel"], r["dtype"], r["optimizer"], r["head_dim"], r["chunk"], r["window"])
        if case in seen:
            continue
        seen.add(case)
        if r["spill_stores"]:
            lines.append(f"  first config spills: {r['kernel']} {r['dtype']} {r['optimizer']} "
                         f"D={r['head_dim']} b={r['chunk']} c={r['window']}: "
                         f"{r['spill_stores']} B per thread")
    return lines


def main(argv: list[str] | None = None) -> int:
    from ..ops.omega_triton import MAX_DK, MAX_WINDOW_ROWS  # (no triton import)

    ap = argparse.ArgumentParser(prog="python -m atlas_search.bench.aot_check",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, default=90, choices=sorted(SM_LIMITS),
                    help="compute capability (the targets of SM_LIMITS)")
    ap.add_argument("--quick", action="store_true",
                    help="four variants covering every code path, first configs only")
    ap.add_argument("--first-config", action="store_true",
                    help="only the fixed (AUTOTUNE off) config of each kernel")
    ap.add_argument("--head-dim", type=int_in(1, MAX_DK), nargs="+", default=[64, 128],
                    help=f"Dk = Dv, 1..{MAX_DK} (the kernels' limit)")
    ap.add_argument("--window", type=positive_int, nargs="+", default=[1, 16],
                    help="Omega windows c >= 1")
    ap.add_argument("--chunk", type=positive_int, default=64, help="chunk size b >= 1")
    ap.add_argument("--dtype", nargs="+", default=["bfloat16", "float32"], choices=list(_TL))
    ap.add_argument("--json", help="write the rows as JSON to this file")
    a = ap.parse_args(argv)
    a.head_dim, a.window, a.dtype = dedupe(a.head_dim), dedupe(a.window), dedupe(a.dtype)
    if not a.quick:
        too_big = [c for c in a.window if a.chunk + c - 1 > MAX_WINDOW_ROWS]
        if too_big:
            ap.error(f"argument --window: chunk + window - 1 must be <= {MAX_WINDOW_ROWS} "
                     f"(the kernels' limit), got --chunk {a.chunk} with --window "
                     f"{', '.join(map(str, too_big))}")
    check_out(ap, "--json", a.json)
    vs = variants(a.quick, a.head_dim, a.chunk, a.window, a.dtype)
    try:
        result = run_aot_check(vs, a.arch, all_configs=not (a.quick or a.first_config),
                               progress=print)
    except (ImportError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for line in summary(result):
        print(line)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)
    return 1 if result["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
