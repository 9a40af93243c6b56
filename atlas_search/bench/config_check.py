"""Every autotune config of every Triton kernel against the first, in child processes.

The kernel checks and the GPU tests run the first config of :func:`omega_triton.configs`
(autotuning off); autotuning on CUDA launches the others. This check runs, for each shape
and each ``(kernel, config)`` beyond the first, one fwd+bwd of ``omega_linear(backend=
"triton")`` with that config for that kernel alone (the first config for the rest) and
compares the output and every input gradient with the all-first-config run of the same
process: relative RMS error at most ``TOL`` (bf16 accumulation order) and no NaN. Each
(shape, kernel) is one child process that runs its configs in turn (one process start,
CUDA context and baseline for all of them), so a kernel fault (an illegal address) loses
that child only: its unfinished configs are failing rows.

Shapes that :func:`omega_triton.gpu_hazard` refuses for every backend are left out (none
at present).

``python -m atlas_search.bench.config_check [--json F] [--procs N] [--shape B,T,H,D,c]``
(CUDA only). Imports
only the standard library, torch and :mod:`atlas_search.bench` / ``.ops``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .children import child_env, run_child

KERNELS = ("states", "out", "bwd_local", "bwd_dh", "bwd_dv", "bwd_dqk")
TOL = 2e-2
SHAPES = (  # (B, T, H, D, c): small, then the benchmark's T = 4096 cells
    (1, 512, 2, 64, 16), (1, 512, 2, 128, 16),
    (8, 4096, 32, 64, 1), (8, 4096, 32, 64, 16), (8, 4096, 16, 128, 1),
    (8, 4096, 16, 128, 16),
)


def _fwd_bwd(b: int, t: int, h: int, d: int, c: int) -> list:
    import torch

    from . import kernels_speed as ks

    x = ks.make_inputs(b, t, h, d, torch.bfloat16, "cuda")
    settings = ks.Settings(device="cuda", dtype="bfloat16")
    o = ks._call(ks.Impl("triton", c), x, settings, None)()
    o.backward(x.do)
    torch.cuda.synchronize()
    return [o.detach().float().cpu()] + [y.grad.float().cpu() for y in x.leaves()[:5]]


def run_job(shape: list, kernel: str, indices: list[int]) -> None:
    """Child body: the first-config run, then ``kernel`` at each config of ``indices`` in
    turn, printing one ``@@`` JSON line per config as it completes (a fault that kills the
    process leaves the rest without a line)."""
    from ..ops import omega_triton as ot
    from .kernel_check import rel_err

    def triton_ran(run):  # (outputs, whether the run was one Triton forward and backward)
        before = ot.stats["forward"], ot.stats["backward"]
        out = run()
        return out, (ot.stats["forward"] - before[0], ot.stats["backward"] - before[1]) == (1, 1)

    ot.AUTOTUNE = False
    base, base_ran = triton_ran(lambda: _fwd_bwd(*shape))
    original = ot.configs
    names = ["o", "d_q", "d_k", "d_v", "d_alpha", "d_eta"]
    try:
        for index in indices:
            def configs(name: str, dk: int, dv: int, index=index):
                cfgs = original(name, dk, dv)
                return (cfgs[index],) if name == kernel else cfgs

            ot.configs = configs
            got, ran = triton_ran(lambda: _fwd_bwd(*shape))
            ran = ran and base_ran  # both sides of the comparison ran the kernels
            errs = {n: rel_err(a, g) for n, a, g in zip(names, base, got, strict=True)}
            row = {"index": index, "ran_triton": ran, "errors": errs,
                   "ok": ran and all(e == e and e <= TOL for e in errs.values())}
            print("@@" + json.dumps(row), flush=True)
    finally:
        ot.configs = original


def jobs(shapes=SHAPES) -> list[tuple[list, str, list[int]]]:
    """One job per shape and kernel with more than one config: ``(shape, kernel, the
    indices of its configs beyond the first)``."""
    from ..ops import omega_triton as ot

    out = []
    for shape in shapes:
        d = shape[3]
        hz = ot.gpu_hazard(d, d, shape[4], (0, 0), "0")
        if hz and hz[2]:
            continue  # refused on CUDA
        for k in KERNELS:
            n = len(ot.configs(k, d, d))
            if n > 1:
                out.append((list(shape), k, list(range(1, n))))
    return out


def _launch(job: tuple[list, str, list[int]], timeout: float, deadline: float | None = None
            ) -> list[dict]:
    """One row per config of the job (``ok`` None: not run before ``deadline``; a child
    that dies fails the configs it had not finished)."""
    from ..ops import omega_triton as ot

    shape, kernel, indices = job
    cfgs = ot.configs(kernel, shape[3], shape[3])
    rows = {i: {"shape": shape, "kernel": kernel, "index": i, "config": list(cfgs[i])}
            for i in indices}
    if deadline is not None and time.monotonic() > deadline - 5.0:
        for row in rows.values():
            row.update(ok=None, error="not run: time budget spent", seconds=0.0)
        return list(rows.values())
    code = ("import json, sys; from atlas_search.bench.config_check import run_job; "
            "run_job(*json.loads(sys.argv[1]))")
    t0 = time.monotonic()
    rc, output = run_child([sys.executable, "-c", code, json.dumps(list(job))], timeout)
    for ln in output.splitlines():
        if ln.startswith("@@"):
            res = json.loads(ln[2:])
            rows[res["index"]].update(res)
    if rc is None:
        why = f"timed out after {timeout:.0f}s"
    else:
        tail = [ln for ln in output.splitlines() if ln.strip() and not ln.startswith("@@")]
        why = f"exit {rc}: " + " | ".join(tail[-2:])[-300:]
    seconds = round(time.monotonic() - t0, 1)
    for row in rows.values():
        if "ok" not in row:
            row.update(ok=False, error=why)
        row["seconds"] = seconds
    return list(rows.values())


def run_config_checks(procs: int = 8, timeout: float = 180.0, shapes=SHAPES,
                      deadline: float | None = None) -> list[dict]:
    """One row per (shape, kernel, config) (``ok`` None: not run before ``deadline``, a
    ``time.monotonic()``); each (shape, kernel) is one child process."""
    with ThreadPoolExecutor(max_workers=procs) as pool:
        done = pool.map(lambda j: _launch(j, timeout, deadline), jobs(shapes))
        return [row for rows in done for row in rows]


def sanitize(shape: tuple[int, int, int, int, int], timeout: float) -> dict:
    """One fwd+bwd of ``shape`` (``B, T, H, D, c``) under ``compute-sanitizer --tool
    memcheck`` with ``ATLAS_TRITON_UNSAFE=1`` (so a case :func:`omega_triton.gpu_hazard`
    refuses runs too): ``{"status": clean|errors|timeout|unavailable, "lines"}``, the lines
    naming the kernel and the access of each error."""
    import shutil

    tool = shutil.which("compute-sanitizer")
    if tool is None:
        return {"status": "unavailable", "lines": ["compute-sanitizer is not on PATH"]}
    env = child_env(ATLAS_TRITON_UNSAFE="1", ATLAS_TRITON_AUTOTUNE="0")
    code = ("import sys; from atlas_search.bench.config_check import _fwd_bwd; "
            "_fwd_bwd(*map(int, sys.argv[1:]))")
    cmd = [tool, "--tool", "memcheck", "--print-limit", "6", "--error-exitcode", "9",
           sys.executable, "-c", code, *map(str, shape)]
    rc, output = run_child(cmd, timeout, env)
    if rc is None:
        return {"status": "timeout", "lines": [f"timed out after {timeout:.0f}s"]}
    lines = [ln for ln in output.splitlines() if ln.strip()]
    keep = [ln for ln in lines if ln.startswith("=========") or "Error" in ln][:40]
    return {"status": "clean" if rc == 0 else "errors", "lines": keep or lines[-20:]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m atlas_search.bench.config_check",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--procs", type=int, default=8)
    ap.add_argument("--timeout", type=float, default=180.0, help="per child (shape, kernel)")
    ap.add_argument("--shape", action="append", default=None, metavar="B,T,H,D,c",
                    help="only this shape (repeatable; default: SHAPES)")
    args = ap.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("config_check: needs a CUDA device", file=sys.stderr)
        return 2
    shapes = [tuple(int(v) for v in s.split(",")) for s in args.shape] if args.shape \
        else SHAPES
    rows = run_config_checks(args.procs, args.timeout, shapes)
    for r in rows:
        b, t, h, d, c = r["shape"]
        what = (r.get("error") or " ".join(f"{k} {v:.1e}" for k, v in r["errors"].items()))
        flag = {True: "ok  ", False: "FAIL", None: "skip"}[r["ok"]]
        print(f"{flag} B={b} T={t} H={h} D={d} c={c} "
              f"{r['kernel']:9s} #{r['index']} {r.get('config', '')}  {what}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    bad = [r for r in rows if r["ok"] is False]
    print(f"config check: {sum(r['ok'] is True for r in rows)}/{len(rows)} ok, {len(bad)} "
          "failed", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
