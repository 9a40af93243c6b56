"""Forward+backward speed of the preset memory layers: torch (chunk-parallel) vs reference.

For each preset (default ``atlas``, ``titans``, ``deltanet``) the LM is built on CPU in fp32
and its first :class:`~atlas_search.models.memory_mixer.MemoryMixer` is timed alone on
``x [B, T, d_model]`` (the whole layer: projections, conv, gates, features, op, norms),
``loss = mean(layer(x)^2)``, forward + backward, with the op backend switched between
``torch`` and ``reference`` (same weights, chunk size 16 unless ``--chunk``). One warm-up run
per cell (on its first 256 tokens), then the median of ``--repeats`` (a single run when the
first takes longer than ``--long-s``).
A cell is skipped, and printed as such, when ``T > --max-ref-T`` (reference) or when its
estimated time (the previous T's time scaled linearly) exceeds ``--max-cell-s``.

Printed: tokens/s per backend, speed-up torch/reference, and per backend the time ratio
``T=4096 / T=1024`` (about 4 for linear scaling). Ratios are measured side by side in one run;
the machine's load still moves them.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..models import build_model
from ..models.memory_mixer import MemoryMixer
from ..spec import load
from ..spec.presets import preset_names, presets_dir
from .cli_args import check_out, dedupe, nonneg_float, nonneg_int, positive_float, positive_int

BACKENDS = ("torch", "reference")
WARMUP_T = 256
"""Warm-up length: a first call's one-time costs do not depend on T."""


@dataclass
class Cell:
    preset: str
    backend: str
    t: int
    batch: int
    seconds: float | None  # median fwd+bwd time; None when skipped
    note: str = ""

    @property
    def tokens_per_s(self) -> float | None:
        return None if self.seconds is None else self.t * self.batch / self.seconds


def memory_layer(preset: str, chunk: int) -> MemoryMixer:
    """The first memory mixer of the preset's model (CPU, fp32), with ``chunk_size=chunk``."""
    config = load(presets_dir() / f"{preset}.yaml")
    model = build_model(config)
    layer = next((m for m in model.modules() if isinstance(m, MemoryMixer)), None)
    if layer is None:
        raise ValueError(f"preset {preset!r} has no memory mixer layer")
    layer.mem = layer.mem.model_copy(update={"chunk_size": chunk})
    return layer


def set_backend(layer: MemoryMixer, backend: str) -> None:
    layer.mem = layer.mem.model_copy(update={"backend": backend})


def fwd_bwd(layer: nn.Module, x: torch.Tensor) -> float:
    """Seconds of one forward + backward of ``mean(layer(x)^2)``."""
    layer.zero_grad(set_to_none=True)
    xx = x.detach().requires_grad_(True)
    t0 = time.perf_counter()
    layer(xx).square().mean().backward()
    return time.perf_counter() - t0


def time_cell(
    layer: nn.Module, x: torch.Tensor, repeats: int, long_s: float, warmup_t: int
) -> float:
    """One warm-up on the first ``warmup_t`` tokens, then the median of ``repeats`` timed runs
    (a single run when the first takes longer than ``long_s``)."""
    fwd_bwd(layer, x[:, :warmup_t])
    first = fwd_bwd(layer, x)
    if first > long_s or repeats <= 1:
        return first
    return statistics.median([first] + [fwd_bwd(layer, x) for _ in range(repeats - 1)])


def bench_preset(
    preset: str,
    ts: Sequence[int],
    *,
    batch: int,
    chunk: int,
    repeats: int,
    max_ref_t: int,
    max_cell_s: float,
    long_s: float,
    seed: int = 0,
) -> list[Cell]:
    """All cells of one preset, both backends, increasing T."""
    torch.manual_seed(seed)
    layer = memory_layer(preset, chunk)
    cells: list[Cell] = []
    for backend in BACKENDS:
        set_backend(layer, backend)
        prev: tuple[int, float] | None = None
        for t in sorted(ts):
            if backend == "reference" and t > max_ref_t:
                cells.append(
                    Cell(preset, backend, t, batch, None, f"skipped (T > --max-ref-T {max_ref_t})")
                )
                continue
            if prev is not None:
                est = prev[1] * t / prev[0]  # one timed run, linear scaling
                if est > max_cell_s:
                    cells.append(Cell(preset, backend, t, batch, None,
                                      f"skipped (est. {est:.0f}s > --max-cell-s {max_cell_s:g})"))
                    continue
            x = torch.randn(batch, t, layer.d_model)
            sec = time_cell(layer, x, repeats, long_s, min(t, WARMUP_T))
            prev = (t, sec)
            cells.append(Cell(preset, backend, t, batch, sec))
            print(f"  {preset:9s} {backend:9s} T={t:5d}  {sec:8.3f}s  "
                  f"{t * batch / sec:10.0f} tok/s", flush=True)
    return cells


def _f(x: float | None, spec: str) -> str:
    return "skipped" if x is None else format(x, spec)


def format_table(cells: list[Cell], ts: Sequence[int], header: str) -> str:
    """One row per (preset, T), then per preset the T=max/T=prev time ratio per backend."""
    by = {(c.preset, c.backend, c.t): c for c in cells}
    presets = list(dict.fromkeys(c.preset for c in cells))
    ts = sorted(ts)
    lines = [header, "",
             f"{'preset':9s} {'T':>5s} {'tok/s torch':>12s} {'tok/s ref':>12s} "
             f"{'torch/ref':>10s}   {'s torch':>8s} {'s ref':>8s}"]
    for p in presets:
        for t in ts:
            ct, cr = by[(p, "torch", t)], by[(p, "reference", t)]
            sp = (cr.seconds / ct.seconds) if ct.seconds and cr.seconds else None
            lines.append(
                f"{p:9s} {t:5d} {_f(ct.tokens_per_s, '.0f'):>12s} "
                f"{_f(cr.tokens_per_s, '.0f'):>12s} {_f(sp, '.2f'):>10s}   "
                f"{_f(ct.seconds, '.3f'):>8s} {_f(cr.seconds, '.3f'):>8s}"
            )
    if len(ts) >= 2:
        hi, lo = ts[-1], ts[-2]
        lines += ["", f"time ratio T={hi} / T={lo} (linear scaling: {hi / lo:g})"]
        for p in presets:
            parts = []
            for b in BACKENDS:
                a, c = by[(p, b, hi)].seconds, by[(p, b, lo)].seconds
                r = a / c if a and c else None
                parts.append(f"{b} {_f(r, '.2f')}")
            lines.append(f"  {p:9s} " + ", ".join(parts))
    notes = [f"  {c.preset} {c.backend} T={c.t}: {c.note}" for c in cells if c.note]
    if notes:
        lines += ["", "skipped cells:", *notes]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> str:
    ap = argparse.ArgumentParser(prog="python -m atlas_search.bench.ops_speed",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", nargs="+", default=["atlas", "titans", "deltanet"],
                    help="presets with a memory layer (spaces/presets/NAME.yaml)")
    ap.add_argument("--T", dest="ts", type=positive_int, nargs="+", default=[256, 1024, 4096])
    ap.add_argument("--batch", type=positive_int, default=1)
    ap.add_argument("--chunk", type=positive_int, default=16)
    ap.add_argument("--repeats", type=positive_int, default=3)
    ap.add_argument("--threads", type=positive_int, default=1)
    ap.add_argument("--max-ref-T", dest="max_ref_t", type=nonneg_int, default=4096)
    ap.add_argument("--max-cell-s", type=positive_float, default=300.0,
                    help="skip a cell whose estimated time exceeds this")
    ap.add_argument("--long-s", type=nonneg_float, default=10.0,
                    help="one timed run instead of --repeats when the warm-up takes longer")
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench/ops_speed.txt"))
    args = ap.parse_args(argv)
    args.presets, args.ts = dedupe(args.presets), dedupe(args.ts)
    known = preset_names()
    bad = [p for p in args.presets if p not in known]
    if bad:
        ap.error(f"argument --presets: unknown preset(s) {', '.join(bad)} "
                 f"(available: {', '.join(known)})")
    check_out(ap, "--out", args.out)
    layers = {}
    for p in args.presets:  # build every layer first: a preset without one fails here
        try:
            layers[p] = memory_layer(p, args.chunk)
        except ValueError as exc:
            ap.error(f"argument --presets: {exc}")
    torch.set_num_threads(args.threads)
    header = (
        f"ops_speed: CPU fp32, torch {torch.__version__}, torch.set_num_threads("
        f"{torch.get_num_threads()}), B={args.batch}, chunk={args.chunk}, fwd+bwd of one "
        f"memory layer, median of {args.repeats} after a warm-up (1 run when > {args.long_s:g}s)"
    )
    print(header, flush=True)
    t0 = time.perf_counter()
    cells: list[Cell] = []
    for p, layer in layers.items():
        print(f"{p}: {layer.describe()}, d_model={layer.d_model}, H={layer.n_heads}, "
              f"head_dim={layer.head_dim}, feature dim={layer.fdim}", flush=True)
        cells += bench_preset(
            p, args.ts, batch=args.batch, chunk=args.chunk, repeats=args.repeats,
            max_ref_t=args.max_ref_t, max_cell_s=args.max_cell_s, long_s=args.long_s,
        )
    table = format_table(cells, args.ts, header)
    table += f"\n\ntotal wall time {time.perf_counter() - t0:.0f}s"
    print()
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table + "\n")
    print(f"wrote {args.out}")
    return table


if __name__ == "__main__":
    main()
