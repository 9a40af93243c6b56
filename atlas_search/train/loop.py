"""The training loop: AdamW, warmup + decay, clipping, periodic evaluation, a reporting
hook (the search prunes through it), NaN/inf detection (loss, gradient norm, evaluation
loss), checkpoints and exact resume."""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..spec.config import Config
from ..spec.yamlio import dump_yaml, json_safe
from ..tasks import Task, make_task
from ..tasks.base import generator
from .checkpoint import (
    CheckpointError,
    check_resumable,
    load_checkpoint,
    load_model_state,
    load_optimizer_state,
    save_checkpoint,
)
from .evaluate import eval_key, evaluate, evaluate_sets, scored_loss
from .schedule import lr_factor, param_groups

Report = Callable[[int, dict[str, float]], None]
Progress = Callable[[int, dict[str, float]], None]
CHECKPOINT = "checkpoint.pt"
RUN_FILES = (CHECKPOINT, "final.json", "metrics.jsonl", "config.yaml")
"""What a run writes at the top of its folder (:func:`clear_run` removes them)."""


@dataclass
class TrainResult:
    """The outcome of :func:`train`. ``status`` is ``completed``, ``diverged`` (the
    training loss, the gradient norm or the main evaluation loss became NaN/inf at
    ``step``; ``reason`` says which and its value) or ``interrupted`` (``stop`` asked for
    it; the checkpoint holds ``step``); ``metrics`` holds the last evaluation plus
    ``params``, ``state_size`` and ``tokens_per_s``."""

    status: Literal["completed", "diverged", "interrupted"]
    step: int
    metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    reason: str | None = None
    run_dir: Path | None = None


def set_threads(n: int | None) -> None:
    """Use ``n`` CPU threads for PyTorch and OpenMP (the CPUs this process was given;
    oversubscribed runs were measured ~17x slower per step on 2 cores)."""
    if n is None:
        return
    if int(n) < 1:
        raise ValueError(f"threads must be >= 1 (got {n})")
    n = int(n)
    os.environ["OMP_NUM_THREADS"] = str(n)
    os.environ["MKL_NUM_THREADS"] = str(n)
    torch.set_num_threads(n)


RESUMABLE = ("name", "train.steps", "train.eval_every", "train.device")
"""Config fields a resumed run may change: the run's name, its length (``train.steps``, to
extend a run; the lr schedule then follows the new length from the checkpoint's step on,
so the numbers differ from an uninterrupted run of the new length), how often it
evaluates, and the device. Anything else (model, task, lr, seed, batch size, ...) would
make the resumed run a different experiment, so resuming refuses it."""


def _leaves(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict) and data:
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_leaves(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: data}


def check_resume(state: dict[str, Any], config: Config, path: Path | str = CHECKPOINT) -> None:
    """Refuse to resume ``state`` (read from ``path``) under ``config`` when it lacks what
    resuming needs (:func:`checkpoint.check_resumable`), when they differ outside
    :data:`RESUMABLE`, or when ``train.steps`` is below the checkpoint's step
    (CheckpointError naming the fields)."""
    check_resumable(state, path)
    saved = state.get("config")
    if isinstance(saved, dict):
        old, new = _leaves(saved), _leaves(config.model_dump(mode="json"))
        changed = sorted(k for k in old.keys() | new.keys()
                         if old.get(k) != new.get(k) and k not in RESUMABLE)
        if changed:
            raise CheckpointError(
                f"cannot resume: the config differs from the checkpoint's in "
                f"{', '.join(changed)}; a resumed run may change only {', '.join(RESUMABLE)} "
                "(start over with --force, or train into another --out folder)")
    if config.train.steps < state["step"]:
        raise CheckpointError(f"cannot resume: the checkpoint is at step {state['step']}, "
                              f"beyond train.steps {config.train.steps}")


def use_autocast(device: torch.device, precision: str) -> bool:
    """Whether training and evaluation (``train`` and ``atlas-search eval``) run under bf16
    autocast: on CUDA with ``train.precision`` ``auto`` or ``bf16``; never on CPU or fp32."""
    return device.type == "cuda" and precision in ("auto", "bf16")


def clear_run(run_dir: Path, names: tuple[str, ...] = RUN_FILES) -> None:
    """Remove what an earlier run left in ``run_dir`` before a run starts over there (not
    on resume): the files ``names`` (default :data:`RUN_FILES`) and the MAD protocol's
    per-training subfolders, so that no old checkpoint or final.json outlives a new config.
    Other files stay."""
    from .mad_protocol import SUBRUN

    if not run_dir.is_dir():
        return
    for name in names:
        (run_dir / name).unlink(missing_ok=True)
    for sub in run_dir.iterdir():
        if sub.is_dir() and not sub.is_symlink() and SUBRUN.fullmatch(sub.name):
            shutil.rmtree(sub)


def _dumps(data: Any, indent: int | None = None) -> str:
    return json.dumps(json_safe(data), indent=indent, allow_nan=False)


def grad_norm(model: nn.Module, clip: float | None) -> float:
    """The total L2 norm of the gradients before clipping; clips them to ``clip`` unless
    ``clip`` is None (then the gradients are left as they are)."""
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return 0.0
    return float(torch.nn.utils.clip_grad_norm_(params, math.inf if clip is None else clip))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is available")
    return torch.device(name)


def train(
    config: Config,
    *,
    run_dir: Path | None = None,
    threads: int | None = None,
    report: Report | None = None,
    progress: Progress | None = None,
    resume: bool = False,
    model: nn.Module | None = None,
    task: Task | None = None,
    checkpoint: bool = True,
    stop: Callable[[], str | None] | None = None,
) -> TrainResult:
    """Train ``config`` and evaluate every ``train.eval_every`` steps and at the end.

    ``report(step, metrics)`` is called after each evaluation (it may raise, e.g.
    ``optuna.TrialPruned``; the exception propagates). With ``run_dir`` the resolved config,
    ``metrics.jsonl``, ``final.json`` and an atomic ``checkpoint.pt`` (at each evaluation)
    are written there; ``resume=True`` continues from that checkpoint and reaches the same
    numbers as an uninterrupted run (batches are a function of (seed, step)); it raises
    CheckpointError for an unreadable checkpoint or a config that differs from the
    checkpoint's outside :data:`RESUMABLE`. A run that starts over (no ``resume``, or no
    checkpoint to resume) first removes the folder's old run (:func:`clear_run`).
    ``checkpoint=False`` writes everything but the checkpoint (search trials). A task
    setting its generator cannot produce raises ``tasks.base.TaskError``.

    ``stop()`` is asked after every optimizer step; a reason it returns (e.g. ``SIGTERM``)
    ends the run there as ``interrupted``, after a checkpoint of that step (with the
    running training-loss window, so a resumed run still reaches the same numbers, its
    ``train_loss`` included); no ``final.json`` is written.

    Evaluations score the task's main eval set (its metric keys unprefixed: ``loss``,
    ``accuracy``, ...); the final one (step ``train.steps``) also scores every other eval
    set (S-NIAH's ``test@<T>`` per test length), under keys ``<set>/<metric>``
    (:func:`evaluate.eval_key`). A NaN/inf training loss, gradient norm (checked before the
    optimizer step, which is then not taken) or main evaluation loss ends the run as
    ``diverged``; non-finite floats are written to the JSON files as ``null``.
    """
    from ..models import build_model, summarize
    from ..models.builder import allocation_failed, too_large

    if config.task.name == "mad":  # the MAD protocol: many runs, one score
        from .mad_protocol import report_steps, run_mad

        metrics = run_mad(config, threads=threads, report=report, run_dir=run_dir)
        result = TrainResult("completed", report_steps(config), metrics, [], None, run_dir)
        _write_final(run_dir, result)
        return result
    set_threads(threads)
    spec = config.train
    device = resolve_device(spec.device)
    autocast = use_autocast(device, spec.precision)
    torch.manual_seed(spec.seed)
    task = task or make_task(config.task)
    if model is None:
        if config.vocab_size() < task.vocab_size:  # validated for loaded configs
            raise ValueError(f"model.vocab_size {config.vocab_size()} is below the task's "
                             f"vocabulary of {task.vocab_size} tokens")
        model = build_model(config)  # model.vocab_size when given, else the task's
    try:
        model.to(device)
    except RuntimeError as exc:
        if not allocation_failed(exc):
            raise
        raise too_large(config.model, config.vocab_size(), f"on {device}") from None
    summary = summarize(model, task.train.seq_len)
    opt = torch.optim.AdamW(param_groups(model, spec.weight_decay), lr=spec.lr,
                            betas=(0.9, 0.95))
    start, history = 0, []
    running: list[float] = []  # training losses since the last evaluation
    ckpt_path = run_dir / CHECKPOINT if run_dir is not None else None
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        if resume and ckpt_path.exists():
            state = load_checkpoint(ckpt_path, device)
            check_resume(state, config, ckpt_path)
            load_model_state(model, state, "this config")
            load_optimizer_state(opt, state, ckpt_path)
            start, history = state["step"], state["history"]
            running = [float(v) for v in state.get("running", [])]
        else:
            clear_run(run_dir)
            (run_dir / "metrics.jsonl").write_text("")
        header = f"# resolved config of run {config.name or run_dir.name}\n"
        (run_dir / "config.yaml").write_text(dump_yaml(config.model_dump(mode="json"), header))

    static = {"params": float(summary["params"]), "state_size": float(summary["state_size"])}
    n_train = len(task.train)
    tokens = 0
    train_time = 0.0
    metrics: dict[str, float] = dict(history[-1]) if history else {}

    def save(step: int) -> None:
        if run_dir is not None and checkpoint:
            save_checkpoint(ckpt_path, {"model": model.state_dict(),
                                        "optimizer": opt.state_dict(), "step": step,
                                        "history": history, "running": running,
                                        "config": config.model_dump(mode="json")})

    model.train()
    for step in range(start, spec.steps):
        t0 = time.perf_counter()
        idx = torch.randint(n_train, (spec.batch_size,), generator=generator(spec.seed, "batch",
                                                                              step))
        x, y = (t.to(device) for t in task.train.batch(idx))
        for g in opt.param_groups:
            g["lr"] = spec.lr * lr_factor(step, spec)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss, _ = scored_loss(model, x, y)
        value = float(loss.detach())
        if not math.isfinite(value):
            return _diverged(run_dir, step + 1, {**metrics, **static, "loss": value}, history,
                             f"training loss became {value} at step {step + 1}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = grad_norm(model, spec.grad_clip)
        if not math.isfinite(norm):  # no step: the weights stay finite
            return _diverged(run_dir, step + 1, {**metrics, **static, "grad_norm": norm},
                             history, f"gradient norm became {norm} at step {step + 1}")
        opt.step()
        train_time += time.perf_counter() - t0
        tokens += x.numel()
        running.append(value)
        done = step + 1
        if progress is not None:
            progress(done, {"loss": value, "tokens_per_s": tokens / max(train_time, 1e-9)})
        if done % spec.eval_every == 0 or done == spec.steps:
            ev = evaluate(model, task.evals[task.main_eval], task, batch_size=spec.batch_size,
                          device=device, autocast=autocast)
            others = [n for n in task.evals if n != task.main_eval]
            if done == spec.steps and others and math.isfinite(ev["loss"]):
                sets = evaluate_sets(model, task, others, batch_size=spec.batch_size,
                                     device=device, autocast=autocast)
                ev.update({eval_key(n, k): v for n, m in sets.items() for k, v in m.items()})
            metrics = {"step": done, **ev, "train_loss": sum(running) / len(running),
                       "tokens_per_s": tokens / max(train_time, 1e-9),
                       "lr": spec.lr * lr_factor(step, spec)}
            running = []
            history.append(metrics)
            if run_dir is not None:
                with open(run_dir / "metrics.jsonl", "a") as fh:
                    fh.write(_dumps(metrics) + "\n")
            if not math.isfinite(ev["loss"]):  # no checkpoint, no report
                return _diverged(run_dir, done, {**metrics, **static}, history,
                                 f"evaluation loss became {ev['loss']} at step {done}")
            save(done)
            if report is not None:
                report(done, metrics)
        if stop is not None and done < spec.steps and (why := stop()):
            if done % spec.eval_every:  # else saved just now
                save(done)
            return TrainResult("interrupted", done, {**metrics, **static}, history,
                               f"interrupted by {why} at step {done}", run_dir)
    final = {**metrics, **static}
    result = TrainResult("completed", spec.steps, final, history, None, run_dir)
    _write_final(run_dir, result)
    return result


def _diverged(run_dir: Path | None, step: int, metrics: dict[str, float],
              history: list[dict[str, float]], reason: str) -> TrainResult:
    """End the run as diverged at ``step``: write final.json and return the result."""
    result = TrainResult("diverged", step, metrics, history, reason, run_dir)
    _write_final(run_dir, result)
    return result


def _write_final(run_dir: Path | None, result: TrainResult) -> None:
    """``final.json``: status, step, metrics (non-finite values as ``null``) and reason."""
    if run_dir is None:
        return
    payload: dict[str, Any] = {"status": result.status, "step": result.step,
                               "metrics": result.metrics, "reason": result.reason}
    (run_dir / "final.json").write_text(_dumps(payload, indent=2) + "\n")
