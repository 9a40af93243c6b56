"""One trial, as run inside a Ray task (or inline): rebuild the Optuna trial against the
shared storage with the study's pruner, train, report, and return an outcome for the
driver to ``tell``. Exceptions never escape: they become a ``fail`` outcome."""

from __future__ import annotations

import os
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..spec.config import Config
from ..spec.study import PrunerSpec
from ..spec.task import TASK_CLASSES  # noqa: F401  (keeps the union importable in workers)


@dataclass
class TrialJob:
    """What a worker needs; plain data so it pickles cheaply to any Ray node."""

    study_name: str
    storage: str
    trial_id: int
    number: int
    config: dict[str, Any]
    objectives: list[str]
    pruner: dict[str, Any]
    max_steps: int | None
    threads: int
    run_dir: str | None = None


@dataclass
class TrialOutcome:
    state: str  # complete | pruned | fail
    values: list[float] | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    step: int | None = None
    reason: str | None = None
    host: str = ""
    pid: int = 0
    duration: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pruner(spec: dict[str, Any], max_steps: int | None):  # noqa: ANN202
    from pydantic import TypeAdapter

    from .factory import make_pruner

    return make_pruner(TypeAdapter(PrunerSpec).validate_python(spec), max_steps)


def run_trial(job: TrialJob, stop: Callable[[], str | None] | None = None) -> dict[str, Any]:
    """Train the job's config, reporting the first objective to Optuna at each
    evaluation (single-objective studies) and stopping when the pruner says so. ``stop``
    (inline trials: the driver's) ends training after the current step and raises
    KeyboardInterrupt, for the driver to re-queue the trial."""
    import optuna

    from ..tasks.base import TaskError
    from ..train import train
    from ..train.mad_protocol import report_steps
    from .factory import open_storage

    start = time.perf_counter()
    out = TrialOutcome(state="fail", host=socket.gethostname(), pid=os.getpid())
    try:
        if job.run_dir:  # lets an operator (or a test) find and signal this worker
            Path(job.run_dir).mkdir(parents=True, exist_ok=True)
            (Path(job.run_dir) / "worker.pid").write_text(str(os.getpid()))
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = open_storage(job.storage)
        study = optuna.load_study(study_name=job.study_name, storage=storage,
                                  pruner=_pruner(job.pruner, job.max_steps))
        trial = optuna.trial.Trial(study, job.trial_id)
        config = Config.model_validate(job.config)
        primary = job.objectives[0]
        last_step = report_steps(config)
        single = len(job.objectives) == 1
        last: dict[str, Any] = {"step": None}

        def report(step: int, metrics: dict[str, float]) -> None:
            last["step"] = step
            if single and primary in metrics:
                trial.report(float(metrics[primary]), step)
                # the last evaluation ends the trial anyway: complete, never pruned there
                if step < last_step and trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at step {step}")

        result = None
        try:
            result = train(config, threads=job.threads, report=report,
                           run_dir=Path(job.run_dir) if job.run_dir else None,
                           checkpoint=False, stop=stop)
        except optuna.TrialPruned as exc:
            out.state, out.step, out.reason = "pruned", last["step"], str(exc)
        if result is not None and result.status == "interrupted":
            raise KeyboardInterrupt(result.reason)
        if result is not None:
            out.metrics, out.step = result.metrics, result.step
            if result.status == "diverged":
                out.state, out.reason = "fail", f"diverged: {result.reason}"
            else:
                missing = [m for m in job.objectives if m not in result.metrics]
                if missing:
                    out.reason = f"objective metric(s) {missing} not reported by the task"
                else:
                    out.state = "complete"
                    out.values = [float(result.metrics[m]) for m in job.objectives]
    except TaskError as exc:  # a task setting its generator cannot produce: bad input
        out.state, out.reason = "fail", f"task: {exc}"
    except Exception as exc:  # noqa: BLE001  (one failing trial never stops the study)
        out.state = "fail"
        tb = traceback.format_exc(limit=4)
        out.reason = f"{type(exc).__name__}: {exc}\n{tb}"[:4000]
    out.duration = time.perf_counter() - start
    return out.to_dict()
