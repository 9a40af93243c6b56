"""Search overhead: N trials through the search driver with 1 and with 2 Ray workers (a
fresh study each time), then the same N configs (the 1-worker study's, read back from its
trials) trained directly in a loop. Prints wall times, the driver's overhead per trial and
the parallel speed-up, measured side by side in one run.

    python -m atlas_search.bench.search_overhead [--trials 6] [--steps 60]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from .cli_args import int_in, positive_int

SPACE = """
study:
  name: overhead-{tag}
  n_trials: {n}
  parallel: {parallel}
  sampler: {{name: grid, seed: 0}}
  resources: {{cpu: 1}}
task: {{name: mqar, vocab_size: 128, seq_len: 64, num_kv_pairs: 4, num_train: 2000,
        num_test: 200}}
train: {{steps: {steps}, batch_size: 32, lr: {{choice: {lrs}}}, warmup: {warmup},
         eval_every: {eval_every}}}
model:
  d_model: 32
  n_layers: 2
  n_heads: 2
  memory: {{kind: {{choice: [linear, mlp]}}, optimizer: {{choice: [gd, momentum]}}}}
"""


MAX_TRIALS = 16
"""Points of :data:`SPACE`'s grid at most (4 lrs x 2 kinds x 2 optimizers): more trials
would repeat grid points."""


def _space(tag: str, n: int, parallel: int, steps: int):  # noqa: ANN202
    from ..spec import loads

    lrs = [1e-3, 2e-3, 3e-3, 4e-3][: max(1, (n + 3) // 4)]
    text = SPACE.format(tag=tag, n=n, parallel=parallel, steps=steps, lrs=lrs,
                        warmup=min(5, steps - 1),
                        eval_every=max(1, steps // 3))
    return loads(text, f"{tag}.yaml")


def run(n: int, steps: int) -> dict[str, float]:
    import ray

    from ..search.driver import Driver, SearchOptions
    from ..spec.config import Config
    from ..train import train

    out = {"trials": float(n)}
    configs: list[Config] = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 configure_logging=False, object_store_memory=128 * 1024 * 1024)
        out["ray_start_s"] = time.perf_counter() - t0
        try:
            for parallel in (1, 2):
                space = _space(f"p{parallel}", n, parallel, steps)
                t0 = time.perf_counter()
                driver = Driver(space, SearchOptions(runs=Path(tmp)), listener=lambda p: None)
                progress = driver.run()
                out[f"search{parallel}_s"] = time.perf_counter() - t0
                out[f"search{parallel}_complete"] = float(progress.complete)
                if parallel == 1:
                    configs = [Config.model_validate(t.user_attrs["config"])
                               for t in driver.study.get_trials(deepcopy=False)
                               if "config" in t.user_attrs]
        finally:
            ray.shutdown()
    t0 = time.perf_counter()
    for config in configs:
        train(config, threads=1)
    out["direct_s"] = direct = time.perf_counter() - t0
    out["overhead_per_trial_s"] = (out["search1_s"] - direct) / n
    out["speedup_2_vs_1"] = out["search1_s"] / out["search2_s"]
    return out


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m atlas_search.bench.search_overhead",
                                 description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--trials", type=int_in(1, MAX_TRIALS), default=6,
                    help=f"trials per mode, 1..{MAX_TRIALS} (the points of the grid)")
    ap.add_argument("--steps", type=positive_int, default=60,
                    help="training steps per trial (>= 1)")
    args = ap.parse_args(argv)
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
