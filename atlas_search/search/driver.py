"""The search driver (DESIGN §7): one Optuna study driven by ask-and-tell on this process;
each trial runs as a Ray task (or inline). The driver samples and checks constraints,
keeps up to ``parallel`` trials in flight, retries trials whose worker died, records every
failure reason on its trial, and re-queues trials left RUNNING by a driver that died.

Sampler seeding: a driver seeds its sampler with the spec seed (``sampler.seed``, else
``study.seed``) when the study holds no trial; otherwise with a seed hashed from (that
seed, the number of trials in the study when the driver starts), so a resumed run draws
new points instead of replaying the first run's stream. When another live driver (a
heartbeat younger than ``STALE_S``) shares the study, the driver's own id is hashed in
too, so concurrent drivers draw different streams (those seeds are not reproducible)."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
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
    derive_seed,
    make_pruner,
    make_sampler,
    max_steps,
    open_storage,
    retry_race,
    spec_seed,
    storage_error,
    storage_errors,
    storage_url,
)
from .worker import TrialJob

HEARTBEAT_S = 10.0
STALE_S = 60.0
FINAL = "final"
BASELINES_QUEUED = "baselines_queued"
"""Study user attr: the spec's baselines have been queued (by the study's creator)."""
BASELINE_WAIT_S = 10.0
"""How long a driver that did not create the study waits for its creator's baselines."""
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
EventSink = Callable[[str], None]


def check_options(opts: SearchOptions) -> None:
    """Refuse counts below 1 and a timeout that is not positive (None keeps the spec's)."""
    for name, value in (("n_trials", opts.n_trials), ("parallel", opts.parallel)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if opts.timeout is not None and not opts.timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds, got {opts.timeout}")


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
                 space_text: str | None = None, on_event: EventSink | None = None) -> None:
        """Open (or create) the study and seed its sampler (see the module docstring).
        ``listener`` gets the counts at each update, ``on_event`` each event line once, as
        it happens. Bad options, an unusable run folder or storage raise ValueError."""
        check_options(opts)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.space = space
        self.spec = space.study
        self.opts = opts
        self.listener = listener
        self.on_event = on_event
        self.run_dir = opts.runs / self.spec.name
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if space_text is not None:
                (self.run_dir / "space.yaml").write_text(space_text)
        except OSError as exc:
            raise ValueError(f"run folder {self.run_dir}: {exc.strerror or exc}") from exc
        self.url = storage_url(self.spec, opts.storage, opts.runs)
        self.storage = open_storage(self.url)
        self.max_steps = max_steps(space)
        self.pruner = make_pruner(self.spec.pruner, self.max_steps)
        directions = [o.direction for o in self.spec.objectives]
        def create_or_load() -> tuple[optuna.Study, bool]:
            # the real sampler is set below, once the trial count is known
            kw = dict(study_name=self.spec.name, storage=self.storage,
                      sampler=optuna.samplers.RandomSampler(), pruner=self.pruner)
            try:
                return optuna.create_study(directions=directions, **kw), True
            except optuna.exceptions.DuplicatedStudyError:
                return optuna.load_study(**kw), False

        try:
            self.study, created = retry_race(create_or_load)
        except storage_errors() as exc:
            raise storage_error(self.url, exc) from exc
        have = [d.name.lower() for d in self.study.directions]
        if have != directions:
            raise ValueError(f"study {self.spec.name!r} in {self.url} has directions {have}, "
                             f"this space asks for {directions}; use another study name")
        self._check_choices()
        self.study.set_user_attr("objectives", [o.metric for o in self.spec.objectives])
        self.driver_id = uuid.uuid4().hex[:12]
        self.host = socket.gethostname()
        self.n_trials = opts.n_trials if opts.n_trials is not None else self.spec.n_trials
        self.parallel = opts.parallel if opts.parallel is not None else self.spec.parallel
        self.progress = Progress(self.n_trials)
        self._last_beat = 0.0
        # beat before looking for other drivers: of two drivers starting together, the
        # later one to look always sees the other's beat
        self._beat(force=True)
        self.sampler_seed = self._sampler_seed()
        self.study.sampler = make_sampler(self.spec, space, self.sampler_seed)
        self._enqueue_baselines(created)

    def _enqueue_baselines(self, created: bool) -> None:
        """Queue the spec's baselines (``enqueue:``) once per study: the driver that created
        it (the storage's unique study name elects it) queues them at once; another driver
        that finds the study empty waits up to ``BASELINE_WAIT_S`` for them and queues them
        itself only if they never come (their creator stopped before queueing)."""
        points = self.space.enqueue_points()
        if not points or self.study.user_attrs.get(BASELINES_QUEUED):
            return
        if not created:
            end = time.time() + BASELINE_WAIT_S
            while not self.study.get_trials(deepcopy=False) and time.time() < end:
                if self.study.user_attrs.get(BASELINES_QUEUED):
                    return
                time.sleep(0.2)
            if self.study.get_trials(deepcopy=False):
                return
        for params, attrs in points:
            self.study.enqueue_trial(params, user_attrs=attrs, skip_if_exists=True)
        self.study.set_user_attr(BASELINES_QUEUED, True)

    def _sampler_seed(self) -> int:
        """The module docstring's rule: the spec seed on an empty study; else hashed with
        the trial count, and with this driver's id while another driver is live."""
        seed = spec_seed(self.spec)
        n = len(self.study.get_trials(deepcopy=False))
        now = time.time()
        others = [d for d, beat in self._beats().items()
                  if d != self.driver_id and now - beat <= STALE_S]
        if not others:
            return derive_seed(seed, n) if n else seed
        return derive_seed(seed, n, self.driver_id)

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
    def _beats(self) -> dict[str, float]:
        """Every driver's last heartbeat (``driver:<id>`` study attrs), by driver id."""
        return {k.split(":", 1)[1]: float(v) for k, v in self.study.user_attrs.items()
                if k.startswith("driver:")}

    def _beat(self, force: bool = False) -> None:
        now = time.time()
        if force or now - self._last_beat > HEARTBEAT_S:
            self.study.set_user_attr(f"driver:{self.driver_id}", now)
            self._last_beat = now

    def _retire(self) -> None:
        """Mark this driver stopped (heartbeat 0), so it no longer counts as live."""
        try:
            self.study.set_user_attr(f"driver:{self.driver_id}", 0.0)
        except Exception:  # noqa: BLE001  (best effort while stopping; the beat goes stale)
            pass

    def requeue_stale(self) -> list[int]:
        """FAIL (not final) and re-queue RUNNING trials whose driver is gone: same host and
        its process is dead, or its heartbeat is older than ``STALE_S``. A RUNNING trial with
        no owner yet (another driver between ``ask`` and tagging it) counts as gone only
        once it started more than ``STALE_S`` ago."""
        beats = self._beats()
        requeued = []
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            owner = t.user_attrs.get("driver")
            if owner == self.driver_id:
                continue
            if owner is None:
                start = t.datetime_start
                dead = start is None or (datetime.now() - start).total_seconds() > STALE_S
            else:
                same_host = t.user_attrs.get("driver_host") == self.host
                pid = t.user_attrs.get("driver_pid")
                dead = (same_host and isinstance(pid, int) and not _alive(pid)) or (
                    time.time() - beats.get(owner, 0.0) > STALE_S)
            if not dead:
                continue
            self.storage.set_trial_user_attr(
                t._trial_id, "fail_reason", "left RUNNING by a driver that stopped; re-queued")
            self.storage.set_trial_user_attr(t._trial_id, FINAL, False)
            self.study.tell(t.number, state=TrialState.FAIL)
            attrs = {k: v for k, v in t.user_attrs.items() if k in ("preset", "enqueued")}
            attrs["requeued_from"] = t.number
            self.study.enqueue_trial(t.params, user_attrs=attrs)
            requeued.append(t.number)
        return requeued

    def _event(self, text: str) -> None:
        self.progress.events = (self.progress.events + [text])[-6:]
        if self.on_event is not None:
            self.on_event(text)

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
        Ctrl-C cancels running trials and re-queues them for the next run. Raises
        ClusterError (before touching the study) when Ray cannot start or join."""
        try:
            executor = (InlineExecutor() if self.opts.executor == "inline"
                        else RayExecutor(self.opts.address, self.opts.object_store_mb))
        except BaseException:
            self._retire()
            raise
        self._beat(force=True)
        requeued = self.requeue_stale()
        if requeued:
            self._event(f"re-queued trials left running: {requeued}")
        res = self.spec.resources
        flight: dict[Any, tuple[optuna.Trial, TrialJob, int]] = {}
        deadline = time.time() + self.opts.timeout if self.opts.timeout is not None else None
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
            self._retire()
        self._update()
        return self.progress

