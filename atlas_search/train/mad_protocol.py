"""The MAD protocol (Poli et al., 2024, mad-lab README): per task and difficulty setting,
the best test accuracy over a learning-rate x weight-decay grid; a task's score is the mean
over its settings; the MAD score is the mean over tasks."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from pydantic import TypeAdapter

from ..spec.config import Config
from ..spec.task import MADSuiteTask, TaskSpec

Report = Callable[[int, dict[str, float]], None]
SUBRUN = re.compile(r"\d{2,}-\w+-lr[^/]+-wd[^/]+")
"""Names of the protocol's per-training subfolders (:func:`subrun_name`)."""


def subrun_name(i: int, task: str, lr: float, wd: float) -> str:
    """The subfolder of instance ``i``'s training at (``lr``, ``wd``), e.g.
    ``01-in_context_recall-lr0.001-wd0``."""
    return f"{i:02d}-{task}-lr{lr:g}-wd{wd:g}"


def mad_instances(suite: MADSuiteTask) -> list[tuple[str, dict]]:
    """``(task name, spec fields)`` for every scored setting, in a fixed order."""
    return suite.instances()


def run_mad(config: Config, *, threads: int | None = None, report: Report | None = None,
            run_dir: Path | None = None,
            on_run: Callable[[str, dict, float, float, dict], None] | None = None,
            ) -> dict[str, float]:
    """Run the protocol for ``config``'s model and training settings. ``report(i, m)`` is
    called after instance ``i`` (1-based) with ``m["mad_score"]`` = that instance's score
    (best accuracy over the grid), the step semantics WilcoxonPruner expects. Returns
    ``mad_score``, ``score/<task>`` per task and the model's size. The protocol always
    starts over: what an earlier MAD run left in ``run_dir`` (its subfolders and
    final.json) is removed first (:func:`loop.clear_run`); other files, a training run's
    checkpoint or a config among them, stay (the CLI refuses such a folder)."""
    from .loop import clear_run, train

    suite = config.task
    assert isinstance(suite, MADSuiteTask)
    adapter = TypeAdapter(TaskSpec)
    per_task: dict[str, list[float]] = {}
    last: dict[str, float] = {}
    if run_dir is not None:
        clear_run(run_dir, names=("final.json",))
    for i, (name, fields) in enumerate(mad_instances(suite), 1):
        task = adapter.validate_python({"name": name, **fields})
        best = 0.0
        for lr in suite.lr_grid:
            for wd in suite.wd_grid:
                cfg = config.model_copy(update={
                    "task": task,
                    "train": config.train.model_copy(update={"lr": lr, "weight_decay": wd}),
                })
                sub = run_dir / subrun_name(i, name, lr, wd) if run_dir else None
                result = train(cfg, threads=threads, run_dir=sub, checkpoint=False)
                acc = result.metrics.get("accuracy", 0.0) if result.status == "completed" else 0.0
                last = {"params": result.metrics.get("params", 0.0),
                        "state_size": result.metrics.get("state_size", 0.0)}
                if on_run is not None:
                    on_run(name, fields, lr, wd, result.metrics)
                best = max(best, acc)
        per_task.setdefault(name, []).append(best)
        if report is not None:
            report(i, {"mad_score": best, "accuracy": best})
    scores = {f"score/{k}": sum(v) / len(v) for k, v in per_task.items()}
    mad = sum(scores.values()) / len(scores)
    return {"mad_score": mad, "accuracy": mad, **scores, **last}


def report_steps(config: Config) -> int:
    """The step of a run's last report: ``train.steps``, or the number of MAD instances."""
    if isinstance(config.task, MADSuiteTask):
        return len(mad_instances(config.task))
    return config.train.steps
