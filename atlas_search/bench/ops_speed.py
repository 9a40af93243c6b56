"""Forward+backward speed of the preset memory layers: torch (chunk-parallel) vs reference.

For each preset (default ``atlas``, ``titans``, ``deltanet``) the LM is built on CPU in fp32
and its first :class:`~atlas_search.models.memory_mixer.MemoryMixer` is timed alone on
``x [B, T, d_model]`` (the whole layer: projections, conv, gates, features, op, norms),
``loss = mean(layer(x)^2)``, forward + backward, with the op backend switched between
``torch`` and ``reference`` (same weights, chunk size 16 unless ``--chunk``). One warm-up run
per cell at its full length, then the median of ``--repeats`` (a single run when the
warm-up takes longer than ``--long-s``).
A cell is skipped, and printed as such, when ``T > --max-ref-T`` (reference) or when its
estimated time (the previous T's time scaled linearly) exceeds ``--max-cell-s``.

Printed: tokens/s per backend, speed-up torch/reference, and per backend the time ratio
``T=4096 / T=1024`` (about 4 for linear scaling). With the ``titans`` preset, titans-pytorch's
``NeuralMemory`` is timed on the same shapes too, in two settings (:mod:`.titans_peer`),
with our torch backend's speed-up over each (``--no-peer`` skips it; without the package
the rows are skipped with the reason). Ratios are measured side by side in one run;
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
from . import titans_peer
from .cli_args import check_out, dedupe, nonneg_float, nonneg_int, positive_float, positive_int

BACKENDS = ("torch", "reference")
PEER_PRESET = "titans"
"""The preset timed against titans-pytorch's NeuralMemory (:mod:`.titans_peer`)."""


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


def time_cell(layer: nn.Module, x: torch.Tensor, repeats: int, long_s: float) -> float:
    """One untimed warm-up on the whole ``x``, then the median of ``repeats`` timed runs (a
    single one when the warm-up took longer than ``long_s``). The warm-up is at full length:
    a first call at a new size pays the allocator's fresh pages (glibc maps large blocks
    anew until its threshold adapts): about 2x the steady time for atlas at T = 4096."""
    warm = fwd_bwd(layer, x)
    if warm > long_s or repeats <= 1:
        return fwd_bwd(layer, x)
    return statistics.median(fwd_bwd(layer, x) for _ in range(repeats))


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
    peer: bool = False,
) -> list[Cell]:
    """All cells of one preset, both backends, increasing T; with ``peer`` also
    titans-pytorch's NeuralMemory at the layer's sizes (:mod:`.titans_peer`), both of its
    settings, as backends named by :func:`titans_peer.label`."""
    torch.manual_seed(seed)
    layer = memory_layer(preset, chunk)
    cells: list[Cell] = []
    for backend in BACKENDS:
        set_backend(layer, backend)
        limit = max_ref_t if backend == "reference" else None
        cells += _series(preset, backend, layer, ts, batch=batch, repeats=repeats,
                         max_cell_s=max_cell_s, long_s=long_s, limit=limit)
    if peer:
        sizes = (layer.d_model, layer.n_heads, layer.head_dim, layer.mem.depth,
                 layer.mem.expansion, chunk)
        for setting in titans_peer.SETTINGS:
            torch.manual_seed(seed)
            other = titans_peer.peer_layer(*sizes, setting)
            cells += _series(preset, titans_peer.label(setting, chunk), other, ts,
                             batch=batch, repeats=repeats, max_cell_s=max_cell_s,
                             long_s=long_s)
    return cells


def _series(preset: str, backend: str, layer: nn.Module, ts: Sequence[int], *, batch: int,
            repeats: int, max_cell_s: float, long_s: float, limit: int | None = None
            ) -> list[Cell]:
    """One row of cells over increasing T: skipped beyond ``limit`` (``--max-ref-T``) or
    when the previous T's time, scaled linearly, exceeds ``max_cell_s``."""
    cells: list[Cell] = []
    prev: tuple[int, float] | None = None
    for t in sorted(ts):
        if limit is not None and t > limit:
            cells.append(Cell(preset, backend, t, batch, None,
                              f"skipped (T > --max-ref-T {limit})"))
            continue
        if prev is not None:
            est = prev[1] * t / prev[0]  # one timed run, linear scaling
            if est > max_cell_s:
                cells.append(Cell(preset, backend, t, batch, None,
                                  f"skipped (est. {est:.0f}s > --max-cell-s {max_cell_s:g})"))
                continue
        x = torch.randn(batch, t, layer.d_model)
        sec = time_cell(layer, x, repeats, long_s)
        prev = (t, sec)
        cells.append(Cell(preset, backend, t, batch, sec))
        print(f"  {preset:9s} {backend:22s} T={t:5d}  {sec:8.3f}s  "
              f"{t * batch / sec:10.0f} tok/s", flush=True)
    return cells


def _f(x: float | None, spec: str) -> str:
    return "skipped" if x is None else format(x, spec)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


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
            sp = _ratio(cr.seconds, ct.seconds)
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
                r = _ratio(by[(p, b, hi)].seconds, by[(p, b, lo)].seconds)
                parts.append(f"{b} {_f(r, '.2f')}")
            lines.append(f"  {p:9s} " + ", ".join(parts))
    peers = list(dict.fromkeys(c.backend for c in cells if c.backend not in BACKENDS))
    for p in dict.fromkeys(c.preset for c in cells if c.backend in peers):
        lines += ["", f"peer: titans-pytorch NeuralMemory at the {p} layer's sizes "
                  "(bench/titans_peer.py); speed-up = peer time / our torch time",
                  f"{'T':>5s} {'tok/s torch':>12s} "
                  + " ".join(f"{'tok/s ' + b.removeprefix('titans-pytorch '):>14s}"
                             for b in peers)
                  + " " + " ".join(f"{'x vs ' + b.removeprefix('titans-pytorch '):>12s}"
                                   for b in peers)]
        for t in ts:
            ours = by[(p, "torch", t)]
            row = [f"{t:5d} {_f(ours.tokens_per_s, '.0f'):>12s}"]
            row += [f"{_f(by[(p, b, t)].tokens_per_s, '.0f'):>14s}" for b in peers]
            row += [f"{_f(_ratio(by[(p, b, t)].seconds, ours.seconds), '.2f'):>12s}"
                    for b in peers]
            lines.append(" ".join(row))
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
    ap.add_argument("--no-peer", dest="peer", action="store_false",
                    help="skip titans-pytorch's NeuralMemory (timed with the titans preset)")
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
        f"memory layer, median of {args.repeats} after a full-length warm-up (1 run when it took "
        f"> {args.long_s:g}s)"
    )
    print(header, flush=True)
    peer_note = None
    if args.peer and PEER_PRESET in layers and (why := titans_peer.missing()) is not None:
        peer_note = f"peer rows skipped: {why}"
        print(peer_note, flush=True)
    t0 = time.perf_counter()
    cells: list[Cell] = []
    for p, layer in layers.items():
        print(f"{p}: {layer.describe()}, d_model={layer.d_model}, H={layer.n_heads}, "
              f"head_dim={layer.head_dim}, feature dim={layer.fdim}", flush=True)
        cells += bench_preset(
            p, args.ts, batch=args.batch, chunk=args.chunk, repeats=args.repeats,
            max_ref_t=args.max_ref_t, max_cell_s=args.max_cell_s, long_s=args.long_s,
            peer=args.peer and p == PEER_PRESET and peer_note is None,
        )
    table = format_table(cells, args.ts, header)
    if peer_note:
        table += f"\n\n{peer_note}"
    table += f"\n\ntotal wall time {time.perf_counter() - t0:.0f}s"
    print()
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table + "\n")
    print(f"wrote {args.out}")
    return table


if __name__ == "__main__":
    main()
