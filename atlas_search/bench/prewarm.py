"""Compile the benchmark's Triton kernels in parallel processes before timing them.

A first launch of an autotuned Triton kernel compiles every config of its list, one after
the other, in the launching process: about a second each on an H100 host, so the
benchmark's cells (our six kernels x 2-3 configs x 4 shape variants, and fla's
``chunk_gated_delta_rule`` with a dozen or more configs per kernel) would spend minutes of
the GPU check compiling on one core. :func:`prewarm` instead runs one fwd+bwd per
``(implementation, head dim)`` in ``shards`` child processes at once, child ``i`` keeping
configs ``i, i + shards, ...`` of every autotune list (:func:`shard_autotune`), so the
compiles spread over the host's cores. They land in Triton's on-disk cache; the timed
process then autotunes over the full lists as before, and each compile is a cache hit.
Timings are unaffected: the benchmark still times only after its own warm-ups.

Imports only the standard library, torch and :mod:`.kernels_speed` (which imports triton
and fla lazily).
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from .children import child_env, run_child


@contextlib.contextmanager
def shard_autotune(index: int, count: int) -> Iterator[None]:
    """While active, every ``triton.autotune`` made keeps configs ``index::count`` of its
    list (``[configs[index % len]]`` when that slice is empty), so ``count`` processes with
    ``index = 0 .. count-1`` compile every config between them."""
    from triton.runtime import autotuner

    original = autotuner.Autotuner.__init__

    def init(self, *args, **kw):
        original(self, *args, **kw)
        configs = list(self.configs)
        if configs and count > 1:
            self.configs = configs[index::count] or [configs[index % len(configs)]]

    autotuner.Autotuner.__init__ = init
    try:
        yield
    finally:
        autotuner.Autotuner.__init__ = original


@dataclass(frozen=True)
class Job:
    """One child: a fwd+bwd of ``impl`` (``triton``/``torch``/``fla``) at ``[B, T, H, D]``,
    compiling autotune shard ``index`` of ``count``."""

    impl: str
    window: int | None
    b: int
    t: int
    h: int
    d: int
    chunk: int
    dtype: str
    device: str
    index: int
    count: int


def jobs_for(settings, impls: Sequence[str] = ("triton", "fla"), shards: int = 4
             ) -> list[Job]:
    """The jobs covering every ``(impl, window, head dim)`` cell of ``settings`` (a
    :class:`~.kernels_speed.Settings`) at its second-smallest ``T`` (same integer
    specializations as the larger ones: ``T/chunk`` a multiple of 16)."""
    t = sorted(settings.ts)[min(1, len(settings.ts) - 1)]
    out = []
    for d in settings.head_dims:
        for impl in impls:
            windows = settings.windows if impl in ("triton", "torch") else (None,)
            for w in windows:
                for i in range(shards):
                    out.append(Job(impl, w, settings.batch(t), t, settings.n_heads(d), d,
                                   settings.chunk, settings.dtype, settings.device, i, shards))
    return out


def run_job(job: Job) -> None:
    """Child body: load what ``job.impl`` needs under :func:`shard_autotune`, run one
    fwd+bwd and synchronize (raises on failure)."""
    import torch

    from . import kernels_speed as ks

    with shard_autotune(job.index, job.count):
        fla_fn = None
        if job.impl == "fla":
            fla_fn, _, msg = ks.load_fla()
            if fla_fn is None:
                raise RuntimeError(msg)
        settings = ks.Settings(device=job.device, chunk=job.chunk, dtype=job.dtype)
        x = ks.make_inputs(job.b, job.t, job.h, job.d, ks.DTYPES[job.dtype], job.device)
        call = ks._call(ks.Impl(job.impl, job.window), x, settings, fla_fn)
        ks._fwd_bwd(call, x)
        with torch.no_grad():
            call()
        if job.device == "cuda":
            torch.cuda.synchronize()


def _launch(job: Job, timeout: float, extra_path: Sequence[str]) -> dict:
    code = ("import json, sys; from atlas_search.bench.prewarm import Job, run_job; "
            "run_job(Job(**json.loads(sys.argv[1])))")
    t0 = time.monotonic()
    rc, output = run_child([sys.executable, "-c", code, json.dumps(asdict(job))], timeout,
                           child_env(extra_path))
    ok = rc == 0
    tail = [f"timed out after {timeout:.0f}s"] if rc is None else output.strip().splitlines()[-3:]
    label = job.impl if job.window is None else f"{job.impl} c={job.window}"
    return {"label": label, "head_dim": job.d, "shard": f"{job.index + 1}/{job.count}",
            "ok": ok, "seconds": round(time.monotonic() - t0, 2),
            "error": None if ok else " | ".join(tail)}


def prewarm(jobs: Sequence[Job], procs: int, timeout: float,
            extra_path: Sequence[str] = ()) -> dict:
    """Run ``jobs`` in at most ``procs`` child processes at once, each with ``timeout``
    seconds; ``extra_path`` goes first on the children's ``PYTHONPATH`` (e.g. the folder
    fla's wheels were unzipped into). Returns ``{"jobs", "failed", "seconds", "rows"}``; a
    failed job costs only time (the timed process compiles what is missing itself)."""
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=max(1, procs)) as pool:
        rows = list(pool.map(lambda j: _launch(j, timeout, extra_path), jobs))
    return {"jobs": len(rows), "failed": sum(not r["ok"] for r in rows),
            "seconds": round(time.monotonic() - t0, 2), "rows": rows}
