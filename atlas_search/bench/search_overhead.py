"""Search overhead: the same N trials trained directly in a loop, then through the search
driver with 1 and with 2 Ray workers (a fresh study each time). Prints wall times, the
driver's overhead per trial and the parallel speed-up, measured side by side in one run.

    python -m atlas_search.bench.search_overhead [--trials 6] [--steps 60]
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

SPACE = """
study:
  name: overhead-{tag}
  n_trials: {n}
  parallel: {parallel}
  sampler: {{name: grid, seed: 0}}
  resources: {{cpu: 1}}
task: {{name: mqar, vocab_size: 128, seq_len: 64, num_kv_pairs: 4, num_train: 2000,
        num_test: 200}}
train: {{steps: {steps}, batch_size: 32, lr: {{choice: {lrs}}}, warmup: 5,
         eval_every: {eval_every}}}
model:
  d_model: 32
  n_layers: 2
  n_heads: 2
  memory: {{kind: {{choice: [linear, mlp]}}, optimizer: {{choice: [gd, momentum]}}}}
"""


def _space(tag: str, n: int, parallel: int, steps: int):  # noqa: ANN202
    from ..spec import loads

    lrs = [1e-3, 2e-3, 3e-3, 4e-3][: max(1, (n + 3) // 4)]
    text = SPACE.format(tag=tag, n=n, parallel=parallel, steps=steps, lrs=lrs,
                        eval_every=max(1, steps // 3))
    return loads(text, f"{tag}.yaml")


def run(n: int, steps: int) -> dict[str, float]:
    import ray

    from ..search.driver import Driver, SearchOptions
    from ..train import train

    space = _space("direct", n, 1, steps)
    points = [dict(zip(space.grid(), combo, strict=True))
              for combo in itertools.product(*space.grid().values())][:n]
    t0 = time.perf_counter()
    for p in points:
        train(space.concretize({tuple(k.split(".")): v for k, v in p.items()}), threads=1)
    direct = time.perf_counter() - t0
    out = {"trials": float(n), "direct_s": direct}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 configure_logging=False, object_store_memory=128 * 1024 * 1024)
        out["ray_start_s"] = time.perf_counter() - t0
        try:
            for parallel in (1, 2):
                space = _space(f"p{parallel}", n, parallel, steps)
                t0 = time.perf_counter()
                progress = Driver(space, SearchOptions(runs=Path(tmp)),
                                  listener=lambda p: None).run()
                out[f"search{parallel}_s"] = time.perf_counter() - t0
                out[f"search{parallel}_complete"] = float(progress.complete)
        finally:
            ray.shutdown()
    out["overhead_per_trial_s"] = (out["search1_s"] - direct) / n
    out["speedup_2_vs_1"] = out["search1_s"] / out["search2_s"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--steps", type=int, default=60)
    args = ap.parse_args()
    r = run(args.trials, args.steps)
    print(f"{'mode':<28}{'wall s':>10}{'per trial s':>14}")
    d = r["direct_s"]
    print(f"{'direct loop (1 thread)':<28}{d:>10.1f}{d / args.trials:>14.2f}")
    for p in (1, 2):
        w = r[f"search{p}_s"]
        print(f"{f'atlas-search run, {p} worker(s)':<28}{w:>10.1f}{w / args.trials:>14.2f}")
    print(f"ray start: {r['ray_start_s']:.1f} s (not in the rows above)")
    print(f"driver overhead per trial (1 worker vs direct): {r['overhead_per_trial_s']:+.2f} s")
    print(f"parallel speed-up, 2 workers vs 1: {r['speedup_2_vs_1']:.2f}x")


if __name__ == "__main__":
    main()
