"""The search driver (DESIGN §7): one Optuna study driven by ask-and-tell on this process;
each trial runs as a Ray task (or inline). The driver samples and checks constraints,
keeps up to ``parallel`` trials in flight, retries trials whose worker died, records every
failure reason on its trial, and re-queues trials left RUNNING by a driver that died.

Sampler seeding: a driver seeds its sampler with the spec seed (``sampler.seed``, else
``study.seed``) when the study holds no trial; otherwise with a seed hashed from (that
seed, the number of trials in the study when the driver starts), so a resumed run draws
new points instead of replaying the first run's stream. When another live driver (a
heartbeat younger than ``STALE_S``) shares the study, the driver's own id is hashed in
too, so concurrent drivers draw different streams (those seeds are not reproducible).
A driver counts as gone when its heartbeat is older than ``STALE_S``, or at once when it
ran on this host and its process is dead (the same rule re-queues its trials).

Infeasible points (``constraints``) end FAIL and do not count toward ``n_trials``; after
``MAX_INFEASIBLE_IN_A_ROW`` of them in a row the driver stops. A ``grid`` or
``brute_force`` study stops asking once every point has been tried."""

from __future__ import annotations

import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    check_distribution_compatibility,
)
from optuna.trial import TrialState
from pydantic import ValidationError

from ..spec.distributions import Choice, FloatRange, IntRange
from ..spec.space import Dimension, Space, first_error
from ..spec.study import study_name_error
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
"""Seconds between a running driver's heartbeats (a thread beats, also during inline trials)."""
STALE_S = 60.0
FINAL = "final"
"""User attr marking a FAIL that counts toward n_trials (a re-queued or infeasible one does
not)."""
INFEASIBLE = "infeasible"
"""User attr marking a FAIL for a point the constraints reject (not counted)."""
PROC = "driver_proc:"
"""Study user attr prefix: ``[host, pid]`` of each driver (for the liveness rule)."""
BASELINES_QUEUED = "baselines_queued"
"""Study user attr: the spec's baselines have been queued (by the study's creator)."""
BASELINE_WAIT_S = 10.0
"""How long a driver that did not create the study waits for its creator's baselines."""
MAX_INFEASIBLE_IN_A_ROW = 100
"""The driver stops after this many infeasible draws in a row (the constraints reject
nearly every point)."""


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
    infeasible: int = 0
    best: str = "-"
    events: list[str] = field(default_factory=list)
    stopped: str | None = None
    """Why the run stopped asking for trials before ``n_trials`` or the timeout asked it to:
    every grid point tried, or the constraints reject nearly every point."""
    stop_error: bool = False
    """``stopped`` is a problem of the space (the constraints reject nearly every point)."""


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
    """Trials that count toward ``n_trials``: complete, pruned, or finally failed (not a
    re-queued or an infeasible one)."""
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


def driver_gone(beat: float, host: Any, pid: Any, here: str, now: float) -> bool:
    """The liveness rule: a driver is gone when it ran on this host (``here``) and its
    process is dead, or when its last heartbeat is older than ``STALE_S``."""
    if host == here and isinstance(pid, int) and not _alive(pid):
        return True
    return now - beat > STALE_S


def optuna_distribution(dim: Dimension) -> BaseDistribution | None:
    """The Optuna distribution ``Space.sample`` suggests for ``dim`` (None: a fixed value)."""
    dist = dim.dist
    if isinstance(dist, Choice):
        return CategoricalDistribution(dist.choice)
    if isinstance(dist, IntRange):
        return IntDistribution(dist.int_[0], dist.int_[1], step=dist.step, log=dist.log)
    if isinstance(dist, FloatRange):
        return FloatDistribution(dist.float_[0], dist.float_[1], step=dist.step, log=dist.log)
    return None


def describe_distribution(dist: BaseDistribution) -> str:
    """A distribution as a space file would write it (for messages)."""
    if isinstance(dist, CategoricalDistribution):
        return f"choice {list(dist.choices)}"
    kind = "int" if isinstance(dist, IntDistribution) else "float"
    if isinstance(dist, IntDistribution | FloatDistribution):
        extra = " log" if dist.log else (f" step {dist.step}" if dist.step not in (None, 1)
                                          else "")
        return f"{kind} [{dist.low}, {dist.high}]{extra}"
    return type(dist).__name__


def constraint_summary(config: Any) -> dict[str, int]:
    """``{"params", "state_size"}`` of ``config``'s model, built on the meta device (no
    memory, no initialisation); a model that cannot be built there is built on the CPU."""
    import torch

    from ..models import build_model, summarize

    try:
        with torch.device("meta"):
            model = build_model(config, device="meta")
    except (NotImplementedError, RuntimeError):
        model = build_model(config)
    info = summarize(model, config.task.seq_len)
    return {"params": int(info["params"]), "state_size": int(info["state_size"])}


class Driver:
    def __init__(self, space: Space, opts: SearchOptions, listener: Listener | None = None,
                 space_text: str | None = None, on_event: EventSink | None = None) -> None:
        """Open (or create) the study and seed its sampler (see the module docstring).
        ``listener`` gets the counts at each update, ``on_event`` each event line once, as
        it happens. Bad options, an unusable run folder or storage, or a resumed study this
        space cannot continue (other objectives, a parameter of another kind) raise
        ValueError; ``space_text`` is written to RUN_DIR/space.yaml only once those pass."""
        check_options(opts)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.space = space
        self.spec = space.study
        self.opts = opts
        self.listener = listener
        self.on_event = on_event
        problem = study_name_error(self.spec.name)
        if problem:
            raise ValueError(f"study name {self.spec.name!r}: {problem}; set study.name")
        self.run_dir = opts.runs / self.spec.name
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
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
        metrics = [o.metric for o in self.spec.objectives]
        stored = self.study.user_attrs.get("objectives")
        if stored is not None and list(stored) != metrics:
            raise ValueError(f"study {self.spec.name!r} in {self.url} optimises {stored}, "
                             f"this space asks for {metrics}; restore the objectives, or give "
                             "the study a new name")
        self._check_distributions()
        if space_text is not None:
            try:
                (self.run_dir / "space.yaml").write_text(space_text)
            except OSError as exc:
                raise ValueError(f"run folder {self.run_dir}: {exc.strerror or exc}") from exc
        self.study.set_user_attr("objectives", metrics)
        self.driver_id = uuid.uuid4().hex[:12]
        self.host = socket.gethostname()
        self.n_trials = opts.n_trials if opts.n_trials is not None else self.spec.n_trials
        self.parallel = opts.parallel if opts.parallel is not None else self.spec.parallel
        self.progress = Progress(self.n_trials)
        self.exhausted = False
        self._last_beat = 0.0
        self.study.set_user_attr(f"{PROC}{self.driver_id}", [self.host, os.getpid()])
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
        if not self._others_live():
            return derive_seed(seed, n) if n else seed
        return derive_seed(seed, n, self.driver_id)

    def _others_live(self) -> list[str]:
        """Ids of the other drivers that are live by ``driver_gone``'s rule."""
        now = time.time()
        procs = self._procs()
        return [d for d, beat in self._beats().items() if d != self.driver_id
                and not driver_gone(beat, *procs.get(d, (None, None)), self.host, now)]

    def _check_distributions(self) -> None:
        """Optuna cannot change a parameter's kind (choice, int, float), its log scale or a
        choice list inside a study: refuse a resumed space that does, before any trial is
        asked (a trial asked then would fail half-sampled)."""
        new = {d.name: dist for d in self.space.dims
               if (dist := optuna_distribution(d)) is not None}
        seen: set[tuple[str, str]] = set()
        for t in self.study.get_trials(deepcopy=False):
            for name, old in t.distributions.items():
                if name not in new or (name, repr(old)) in seen:
                    continue
                seen.add((name, repr(old)))
                try:
                    check_distribution_compatibility(old, new[name])
                except ValueError:
                    what = ("a choice list" if isinstance(old, CategoricalDistribution)
                            and isinstance(new[name], CategoricalDistribution)
                            else "a parameter's kind or log scale")
                    raise ValueError(
                        f"study {self.spec.name!r} in {self.url} searched {name} over "
                        f"{describe_distribution(old)}; this space has "
                        f"{describe_distribution(new[name])}. Optuna cannot change {what} "
                        "inside a study: restore it, or give the study a new name") from None

    # ------------------------------------------------------------------ bookkeeping
    def _beats(self) -> dict[str, float]:
        """Every driver's last heartbeat (``driver:<id>`` study attrs), by driver id."""
        return {k.split(":", 1)[1]: float(v) for k, v in self.study.user_attrs.items()
                if k.startswith("driver:")}

    def _procs(self) -> dict[str, tuple[Any, Any]]:
        """``(host, pid)`` of every driver: its ``driver_proc:<id>`` study attr, else the
        tags of a trial it asked (drivers of older versions)."""
        procs: dict[str, tuple[Any, Any]] = {}
        for t in self.study.get_trials(deepcopy=False):
            owner = t.user_attrs.get("driver")
            if owner is not None:
                procs[owner] = (t.user_attrs.get("driver_host"), t.user_attrs.get("driver_pid"))
        for k, v in self.study.user_attrs.items():
            if k.startswith(PROC) and isinstance(v, list | tuple) and len(v) == 2:
                procs[k[len(PROC):]] = (v[0], v[1])
        return procs

    def _beat(self, force: bool = False) -> None:
        now = time.time()
        if force or now - self._last_beat > HEARTBEAT_S:
            self.study.set_user_attr(f"driver:{self.driver_id}", now)
            self._last_beat = now

    def _beat_while(self, stop: threading.Event) -> None:
        """Beat every ``HEARTBEAT_S`` until ``stop`` is set (a thread: the driver's loop
        blocks while an inline trial runs). Storage errors skip a beat."""
        while not stop.wait(HEARTBEAT_S):
            try:
                self._beat(force=True)
            except Exception:  # noqa: BLE001  (a missed beat; the next one may pass)
                pass

    def _retire(self) -> None:
        """Mark this driver stopped (heartbeat 0), so it no longer counts as live."""
        try:
            self.study.set_user_attr(f"driver:{self.driver_id}", 0.0)
        except Exception:  # noqa: BLE001  (best effort while stopping; the beat goes stale)
            pass

    def requeue_stale(self) -> list[int]:
        """FAIL (not final) and re-queue RUNNING trials whose driver is gone
        (``driver_gone``: same host and its process is dead, or its heartbeat is older than
        ``STALE_S``). A RUNNING trial with no owner yet counts as gone at once when no other
        driver is live (drivers beat before they ask, so its asker died between ``ask`` and
        tagging it); while another driver is live, that driver may be tagging it, so it
        counts as gone only once it started more than ``STALE_S`` ago."""
        running = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        # liveness after the listing: a listed trial's asker beat before asking it, so a
        # driver that starts in between is seen live, not mistaken for a dead one
        beats = self._beats()
        others_live = bool(self._others_live())
        requeued = []
        for t in running:
            owner = t.user_attrs.get("driver")
            if owner == self.driver_id:
                continue
            if owner is None:
                start = t.datetime_start
                dead = (not others_live or start is None
                        or (datetime.now() - start).total_seconds() > STALE_S)
            else:
                dead = driver_gone(beats.get(owner, 0.0), t.user_attrs.get("driver_host"),
                                   t.user_attrs.get("driver_pid"), self.host, time.time())
            if not dead:
                continue
            self.storage.set_trial_user_attr(
                t._trial_id, "fail_reason", "left RUNNING by a driver that stopped; re-queued")
            self.storage.set_trial_user_attr(t._trial_id, FINAL, False)
            self._tell(t.number, state=TrialState.FAIL)
            self._enqueue_again(t)
            requeued.append(t.number)
        return requeued

    def _enqueue_again(self, trial: optuna.Trial | optuna.trial.FrozenTrial) -> None:
        """Queue ``trial``'s parameters anew (it was failed as not final), keeping its
        baseline tags and naming it in ``requeued_from``."""
        attrs = {k: v for k, v in trial.user_attrs.items() if k in ("preset", "enqueued")}
        self.study.enqueue_trial(trial.params,
                                 user_attrs={**attrs, "requeued_from": trial.number})

    def _tell(self, trial: optuna.Trial | int, values: list[float] | None = None,
              state: TrialState | None = None) -> None:
        """``study.tell``; a grid or brute-force sampler that finds every point tried calls
        ``study.stop()``, which raises outside ``optimize`` (after the trial's state is
        stored, in ``tell``'s ``finally``): that marks the space exhausted instead."""
        try:
            self.study.tell(trial, values, state=state)
        except RuntimeError as exc:
            if "Study.stop" not in str(exc):
                raise
            self.exhausted = True

    def sampler_exhausted(self) -> bool:
        """Whether a grid or brute-force sampler has every point of the space tried."""
        sampler = self.study.sampler
        if isinstance(sampler, optuna.samplers.GridSampler):
            return sampler.is_exhausted(self.study)
        if not isinstance(sampler, optuna.samplers.BruteForceSampler):
            return False
        try:  # the test BruteForceSampler.after_trial makes before it calls study.stop()
            from optuna.samplers._brute_force import _TreeNode

            states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING,
                      TrialState.FAIL)
            tree = _TreeNode()
            sampler._populate_tree(tree, self.study.get_trials(deepcopy=False, states=states),
                                   {})
            return not tree.is_any_expandable(exclude_running=True)
        except (ImportError, AttributeError, TypeError, ValueError):
            return False  # another Optuna, or a changed space: the sampler decides

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
        p.infeasible = sum(t.state == TrialState.FAIL and bool(t.user_attrs.get(INFEASIBLE))
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
    def _prepare(self, trial: optuna.Trial) -> TrialJob | Literal["failed", "infeasible"]:
        """Sample the config and check constraints; a job to run, else how the trial ended
        here: ``failed`` (counted) or ``infeasible`` (not counted)."""
        trial.set_user_attr("driver", self.driver_id)
        trial.set_user_attr("driver_host", self.host)
        trial.set_user_attr("driver_pid", os.getpid())
        try:
            config = self.space.sample(trial)
        except ValidationError as exc:
            self._fail(trial, f"invalid config: {first_error(exc)}")
            return "failed"
        config = config.model_copy(update={"name": f"{self.spec.name}-{trial.number}"})
        trial.set_user_attr("config", config.model_dump(mode="json"))
        limits = self.spec.constraints
        if limits.max_params is not None or limits.max_state_size is not None:
            try:
                info = constraint_summary(config)
            except Exception as exc:  # noqa: BLE001  (a model that cannot be built: its trial)
                self._fail(trial, f"model: {type(exc).__name__}: {exc}"[:4000])
                return "failed"
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
                trial.set_user_attr(INFEASIBLE, True)
                self._fail(trial, "infeasible: " + ", ".join(bad), final=False)
                return "infeasible"
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
        self._tell(trial, state=TrialState.FAIL)
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
            names = [o.metric for o in self.spec.objectives]
            bad = [(m, v) for m, v in zip(names, out["values"], strict=False)
                   if not math.isfinite(v)]
            if bad:  # Optuna would make it a FAIL with no reason, not counted
                self._fail(trial, "; ".join(f"objective {m} is {v}" for m, v in bad))
                return
            self._tell(trial, out["values"])
            self._event(f"trial {trial.number} complete: {out['values']}")
        elif out["state"] == "pruned":
            trial.set_user_attr("prune_reason", out.get("reason"))
            self._tell(trial, state=TrialState.PRUNED)
            self._event(f"trial {trial.number} pruned at step {out.get('step')}")
        else:
            self._fail(trial, out.get("reason") or "failed")

    # ------------------------------------------------------------------ loop
    def _may_ask(self, deadline: float | None) -> bool:
        """Whether to ask another trial: not stopped, before the deadline, and points left
        (an exhausted grid still runs queued trials: baselines, re-queued ones)."""
        if self.progress.stopped is not None:
            return False
        if deadline is not None and time.time() >= deadline:
            return False
        if self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            return True
        return not (self.exhausted or self._points_taken())

    def _points_taken(self) -> bool:
        """Whether a grid or brute-force sampler has no point left that is neither finished
        nor running: asking then would run a running point again (Optuna's samplers hand
        out unfinished points once every point has started), so the driver waits for its
        trials in flight instead."""
        sampler = self.study.sampler
        if not isinstance(sampler, optuna.samplers.GridSampler):
            return self.sampler_exhausted()  # brute force counts running points as taken
        try:
            taken = {t.system_attrs["grid_id"] for t in self.study.get_trials(deepcopy=False)
                     if "grid_id" in t.system_attrs
                     and (t.state.is_finished() or t.state == TrialState.RUNNING)
                     and sampler._same_search_space(t.system_attrs["search_space"])}
            return len(taken) >= sampler._n_min_trials
        except (AttributeError, KeyError, TypeError):
            return False  # another Optuna: the sampler decides

    def run(self, stop: Callable[[], str | None] | None = None) -> Progress:
        """Run until ``n_trials`` trials are finished (or the timeout: ``--timeout`` if
        given, else the spec's); returns the counts. A grid or brute-force space whose every
        point was tried ends the run early, as do ``MAX_INFEASIBLE_IN_A_ROW`` infeasible
        draws in a row (``Progress.stopped`` says why). Ctrl-C (KeyboardInterrupt) cancels
        running trials, re-queues them for the next run and re-raises. ``stop()`` (e.g. a
        noted SIGTERM) does the same at the loop's next safe point, within a second (an
        inline trial stops after its current step): never inside a storage write. Raises
        ClusterError (before touching the study) when Ray cannot start or join."""

        def check() -> None:
            if stop is not None and stop():
                raise KeyboardInterrupt

        try:
            executor = (InlineExecutor(stop) if self.opts.executor == "inline"
                        else RayExecutor(self.opts.address, self.opts.object_store_mb))
        except BaseException:
            self._retire()
            raise
        stop_beating = threading.Event()
        beater = threading.Thread(target=self._beat_while, args=(stop_beating,), daemon=True,
                                  name=f"heartbeat-{self.driver_id}")
        flight: dict[Any, tuple[optuna.Trial, TrialJob, int]] = {}
        try:
            self._beat(force=True)
            beater.start()
            requeued = self.requeue_stale()
            if requeued:
                self._event(f"re-queued trials left running: {requeued}")
            res = self.spec.resources
            timeout = self.opts.timeout if self.opts.timeout is not None else self.spec.timeout
            deadline = time.time() + timeout if timeout else None
            self.exhausted = self.exhausted or self.sampler_exhausted()
            self._update()
            in_a_row = 0
            while True:
                check()
                open_slots = self.n_trials - len(finished_trials(self.study)) - len(flight)
                while open_slots > 0 and len(flight) < self.parallel and self._may_ask(deadline):
                    check()
                    trial = self.study.ask()
                    job = self._prepare(trial)
                    if job == "infeasible":
                        in_a_row += 1
                        if in_a_row >= MAX_INFEASIBLE_IN_A_ROW:
                            self._stop_infeasible(in_a_row)
                        continue
                    in_a_row = 0
                    open_slots -= 1
                    if isinstance(job, TrialJob):
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
                self._fail(trial, "interrupted (Ctrl-C or SIGTERM); re-queued", final=False)
                self._enqueue_again(trial)
            raise
        finally:
            stop_beating.set()
            if beater.is_alive():
                beater.join(timeout=30)
            executor.shutdown()
            self._retire()
        what = "grid" if self.spec.sampler.name == "grid" else "brute-force space"
        if self.exhausted and self.progress.stopped is None:
            tried = sum(t.state.is_finished() for t in self.study.get_trials(deepcopy=False))
            self.progress.stopped = (f"{what} exhausted after {tried} trials: every point of "
                                     "the space has been tried")
        elif self.progress.stopped is None and self._points_taken():
            self.progress.stopped = (f"every point of the {what} left is running in another "
                                     "driver")
        self._update()
        return self.progress

    def _stop_infeasible(self, count: int) -> None:
        """Stop asking: the constraints rejected ``count`` draws in a row."""
        limits = self.spec.constraints
        given = ", ".join(f"{k} {v:,.0f}" for k, v in (("max_params", limits.max_params),
                                                       ("max_state_size", limits.max_state_size))
                          if v is not None)
        self.progress.stopped = (
            f"study.constraints ({given}) rejected {count} points in a row: they reject "
            "nearly every point of this space; loosen them or narrow the space")
        self.progress.stop_error = True
        self._event(f"stopped: {count} infeasible points in a row")
