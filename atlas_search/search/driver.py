"""The search driver (DESIGN §7): one Optuna study driven by ask-and-tell on this process;
each trial runs as a Ray task (or inline). The driver samples and checks constraints,
keeps up to ``parallel`` trials in flight, retries trials whose worker died, records every
failure reason on its trial, and re-queues trials left RUNNING by a driver that died."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState
from pydantic import ValidationError

from ..spec.distributions import Choice
from ..spec.space import Space, first_error
from .executors import InlineExecutor, RayExecutor
from .factory import (
    RUNS,
    make_pruner,
    make_sampler,
    max_steps,
    open_storage,
    retry_race,
    storage_url,
)
from .worker import TrialJob

HEARTBEAT_S = 10.0
STALE_S = 60.0
FINAL = "final"
"""User attr marking a FAIL that counts toward n_trials (a re-queued one does not)."""


@dataclass
class SearchOptions:
    address: str | None = None
    storage: str | None = None
    parallel: int | None = None
    n_trials: int | None = None
    timeout: float | None = None
    runs: Path = RUNS
    executor: str = "ray"
    object_store_mb: int = 256


@dataclass
class Progress:
    """What the live display shows."""

    n_trials: int
    finished: int = 0
    running: int = 0
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    best: str = "-"
    events: list[str] = field(default_factory=list)


Listener = Callable[[Progress], None]


def finished_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Trials that count toward ``n_trials``: complete, pruned, or finally failed."""
    return [t for t in study.get_trials(deepcopy=False)
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
            or (t.state == TrialState.FAIL and t.user_attrs.get(FINAL))]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Driver:
    def __init__(self, space: Space, opts: SearchOptions, listener: Listener | None = None,
                 space_text: str | None = None) -> None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.space = space
        self.spec = space.study
        self.opts = opts
        self.listener = listener
        self.run_dir = opts.runs / self.spec.name
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if space_text is not None:
            (self.run_dir / "space.yaml").write_text(space_text)
        self.url = storage_url(self.spec, opts.storage, opts.runs)
        self.storage = open_storage(self.url)
        self.max_steps = max_steps(space)
        self.pruner = make_pruner(self.spec.pruner, self.max_steps)
        directions = [o.direction for o in self.spec.objectives]
        self.study = retry_race(lambda: optuna.create_study(
            study_name=self.spec.name, storage=self.storage,
            sampler=make_sampler(self.spec, space), pruner=self.pruner,
            directions=directions, load_if_exists=True))
        have = [d.name.lower() for d in self.study.directions]
        if have != directions:
            raise ValueError(f"study {self.spec.name!r} in {self.url} has directions {have}, "
                             f"this space asks for {directions}; use another study name")
        self._check_choices()
        self.study.set_user_attr("objectives", [o.metric for o in self.spec.objectives])
        self.driver_id = uuid.uuid4().hex[:12]
        self.host = socket.gethostname()
        self.n_trials = opts.n_trials or self.spec.n_trials
        self.parallel = opts.parallel or self.spec.parallel
        self.progress = Progress(self.n_trials)
        self._last_beat = 0.0

    def _check_choices(self) -> None:
        """Optuna cannot change a categorical parameter's choices inside a study: refuse a
        resumed space whose choices differ, before any trial is asked."""
        choices = {d.name: tuple(d.dist.choice) for d in self.space.dims
                   if isinstance(d.dist, Choice)}
        for t in self.study.get_trials(deepcopy=False):
            for name, dist in t.distributions.items():
                if name in choices and isinstance(dist, CategoricalDistribution) and tuple(
                        dist.choices) != choices[name]:
                    raise ValueError(
                        f"study {self.spec.name!r} in {self.url} searched {name} over "
                        f"{list(dist.choices)}; this space has {list(choices[name])}. Optuna "
                        "cannot change a choice list inside a study: restore it, or give the "
                        "study a new name")

    # ------------------------------------------------------------------ bookkeeping
    def _beat(self, force: bool = False) -> None:
        now = time.time()
        if force or now - self._last_beat > HEARTBEAT_S:
            self.study.set_user_attr(f"driver:{self.driver_id}", now)
            self._last_beat = now

    def requeue_stale(self) -> list[int]:
        """FAIL (not final) and re-queue RUNNING trials whose driver is gone: same host and
        its process is dead, or its heartbeat is older than ``STALE_S``."""
        beats = {k.split(":", 1)[1]: v for k, v in self.study.user_attrs.items()
                 if k.startswith("driver:")}
        requeued = []
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            owner = t.user_attrs.get("driver")
            if owner == self.driver_id:
                continue
            same_host = t.user_attrs.get("driver_host") == self.host
            pid = t.user_attrs.get("driver_pid")
            dead = (same_host and isinstance(pid, int) and not _alive(pid)) or (
                time.time() - float(beats.get(owner, 0.0)) > STALE_S)
            if not dead:
                continue
            self.storage.set_trial_user_attr(
                t._trial_id, "fail_reason", "left RUNNING by a driver that stopped; re-queued")
            self.study.tell(t.number, state=TrialState.FAIL)
            attrs = {k: v for k, v in t.user_attrs.items() if k in ("preset", "enqueued")}
            attrs["requeued_from"] = t.number
            self.study.enqueue_trial(t.params, user_attrs=attrs)
            requeued.append(t.number)
        return requeued

    def _event(self, text: str) -> None:
        self.progress.events = (self.progress.events + [text])[-6:]

    def _update(self) -> None:
        p = self.progress
        trials = self.study.get_trials(deepcopy=False)
        p.complete = sum(t.state == TrialState.COMPLETE for t in trials)
        p.pruned = sum(t.state == TrialState.PRUNED for t in trials)
        p.failed = sum(t.state == TrialState.FAIL and bool(t.user_attrs.get(FINAL))
                       for t in trials)
        p.finished = p.complete + p.pruned + p.failed
        if p.complete:
            if len(self.study.directions) == 1:
                b = self.study.best_trial
                p.best = f"{b.value:.4g} (trial {b.number})"
            else:
                p.best = f"Pareto front of {len(self.study.best_trials)}"
        if self.listener is not None:
            self.listener(p)

    # ------------------------------------------------------------------ trials
    def _prepare(self, trial: optuna.Trial) -> TrialJob | None:
        """Sample the config and check constraints; None when the trial ended here."""
        trial.set_user_attr("driver", self.driver_id)
        trial.set_user_attr("driver_host", self.host)
        trial.set_user_attr("driver_pid", os.getpid())
        try:
            config = self.space.sample(trial)
        except ValidationError as exc:
            self._fail(trial, f"invalid config: {first_error(exc)}")
            return None
        config = config.model_copy(update={"name": f"{self.spec.name}-{trial.number}"})
        trial.set_user_attr("config", config.model_dump(mode="json"))
        limits = self.spec.constraints
        if limits.max_params is not None or limits.max_state_size is not None:
            from ..models import build_model, summarize

            info = summarize(build_model(config), config.task.seq_len)
            trial.set_user_attr("params", info["params"])
            trial.set_user_attr("state_size", info["state_size"])
            bad = []
            for key, limit, value in (("max_params", limits.max_params, info["params"]),
                                      ("max_state_size", limits.max_state_size,
                                       info["state_size"])):
                if limit is not None:
                    trial.set_constraint(key, float(value - limit))
                    if value > limit:
                        bad.append(f"{key[4:]} {value:,} > {limit:,.0f}")
            if bad:
                self._fail(trial, "infeasible: " + ", ".join(bad))
                return None
        return TrialJob(
            study_name=self.spec.name, storage=self.url, trial_id=trial._trial_id,
            number=trial.number, config=config.model_dump(mode="json"),
            objectives=[o.metric for o in self.spec.objectives],
            pruner=self.spec.pruner.model_dump(), max_steps=self.max_steps,
            threads=max(1, int(self.spec.resources.cpu)),
            run_dir=str(self.run_dir / "trials" / str(trial.number)))

    def _fail(self, trial: optuna.Trial, reason: str, final: bool = True) -> None:
        trial.set_user_attr("fail_reason", reason)
        trial.set_user_attr(FINAL, final)
        self.study.tell(trial, state=TrialState.FAIL)
        self._event(f"trial {trial.number} failed: {reason.splitlines()[0]}")

    def _finish(self, trial: optuna.Trial, out: dict[str, Any]) -> None:
        for key in ("host", "duration", "node"):
            if out.get(key) is not None:
                trial.set_user_attr(key, out[key])
        metrics = {k: v for k, v in out.get("metrics", {}).items() if k != "lr"}
        trial.set_user_attr("metrics", metrics)
        if out.get("step") is not None:
            trial.set_user_attr("step", out["step"])
        if out["state"] == "complete":
            self.study.tell(trial, out["values"])
            self._event(f"trial {trial.number} complete: {out['values']}")
        elif out["state"] == "pruned":
            trial.set_user_attr("prune_reason", out.get("reason"))
            self.study.tell(trial, state=TrialState.PRUNED)
            self._event(f"trial {trial.number} pruned at step {out.get('step')}")
        else:
            self._fail(trial, out.get("reason") or "failed")

    # ------------------------------------------------------------------ loop
    def run(self) -> Progress:
        """Run until ``n_trials`` trials are finished (or the timeout); returns the counts.
        Ctrl-C cancels running trials and re-queues them for the next run."""
        self._beat(force=True)
        requeued = self.requeue_stale()
        if requeued:
            self._event(f"re-queued trials left running: {requeued}")
        if not self.study.get_trials(deepcopy=False):
            for params, attrs in self.space.enqueue_points():
                self.study.enqueue_trial(params, user_attrs=attrs, skip_if_exists=True)
        executor = (InlineExecutor() if self.opts.executor == "inline"
                    else RayExecutor(self.opts.address, self.opts.object_store_mb))
        res = self.spec.resources
        flight: dict[Any, tuple[optuna.Trial, TrialJob, int]] = {}
        deadline = time.time() + self.opts.timeout if self.opts.timeout else None
        if self.spec.timeout and (deadline is None or self.spec.timeout < self.opts.timeout):
            deadline = time.time() + self.spec.timeout
        self._update()
        try:
            while True:
                self._beat()
                open_slots = self.n_trials - len(finished_trials(self.study)) - len(flight)
                asking = deadline is None or time.time() < deadline
                while asking and open_slots > 0 and len(flight) < self.parallel:
                    trial = self.study.ask()
                    job = self._prepare(trial)
                    open_slots -= 1
                    if job is not None:
                        handle = executor.submit(job, res.cpu, res.gpu)
                        flight[handle] = (trial, job, 1)
                        self._event(f"trial {trial.number} started")
                self.progress.running = len(flight)
                self._update()
                if not flight:
                    break
                for handle, out in executor.wait(timeout=1.0):
                    trial, job, attempt = flight.pop(handle)
                    if isinstance(out, BaseException):
                        reason = f"worker died: {type(out).__name__}: {str(out)[:300]}"
                        if attempt <= self.spec.max_retries:
                            trial.set_user_attr("attempts", attempt + 1)
                            self._event(f"trial {trial.number}: {reason.splitlines()[0]}; "
                                        f"retry {attempt}/{self.spec.max_retries}")
                            flight[executor.submit(job, res.cpu, res.gpu)] = (
                                trial, job, attempt + 1)
                        else:
                            self._fail(trial, f"{reason} (after {attempt} attempts)")
                    else:
                        self._finish(trial, out)
                self.progress.running = len(flight)
        except KeyboardInterrupt:
            executor.cancel_all()
            for trial, _, _ in flight.values():
                self._fail(trial, "interrupted (Ctrl-C); re-queued", final=False)
                attrs = {k: v for k, v in trial.user_attrs.items()
                         if k in ("preset", "enqueued")}
                self.study.enqueue_trial(trial.params, user_attrs={**attrs,
                                                                   "requeued_from": trial.number})
            raise
        finally:
            executor.shutdown()
        self._update()
        return self.progress

