"""Optuna objects from the spec: storage, sampler and pruner. Workers rebuild the pruner
with the same function (Optuna stores neither samplers nor pruners; a worker that loads
the study without its pruner silently gets a default MedianPruner)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import optuna

from ..spec.space import Space
from ..spec.study import PrunerSpec, StudySpec

T = TypeVar("T")
RUNS = Path("runs")
JOURNAL = "journal.log"


def storage_url(study: StudySpec, override: str | None = None, runs: Path = RUNS) -> str:
    """The storage URL: ``--storage``, else ``study.storage``, else a journal file
    ``runs/<name>/journal.log`` (the embedded default for one machine)."""
    url = override or study.storage
    if url:
        return url
    return str((runs / study.name / JOURNAL).resolve())


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """A journal file (a path, or ``journal:///path``) or an RDB URL (PostgreSQL for
    several machines). SQLite is refused: it breaks with parallel writers."""
    if url.startswith("sqlite"):
        raise ValueError("SQLite storage breaks with parallel writers; use the default "
                         "journal file on one machine or postgresql://... across machines")
    if "://" not in url or url.startswith("journal://"):
        path = Path(url.removeprefix("journal://"))
        path.parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    return retry_race(lambda: optuna.storages.RDBStorage(
        url, engine_kwargs={"pool_pre_ping": True}))


def retry_race(make: Callable[[], T], tries: int = 5) -> T:
    """Call ``make`` again when a concurrent driver won a race to create the same schema
    or study in a shared database (the loser sees 'already exists' errors)."""
    for attempt in range(tries):
        try:
            return make()
        except Exception:  # noqa: BLE001  (sqlalchemy IntegrityError/ProgrammingError)
            if attempt == tries - 1:
                raise
            time.sleep(0.5 + random.random())
    raise AssertionError("unreachable")


def make_pruner(spec: PrunerSpec, max_steps: int | None) -> optuna.pruners.BasePruner:
    """The pruner a study uses, identical on the driver and in every worker."""
    opts: dict[str, Any] = spec.model_dump(exclude={"name"})
    if spec.name == "none":
        return optuna.pruners.NopPruner()
    if spec.name == "median":
        return optuna.pruners.MedianPruner(**opts)
    if spec.name == "hyperband":
        if opts["max_resource"] == "auto" and max_steps is not None:
            opts["max_resource"] = max_steps
        return optuna.pruners.HyperbandPruner(**opts)
    if spec.name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(**opts)
    return optuna.pruners.WilcoxonPruner(**opts)


def make_sampler(study: StudySpec, space: Space) -> optuna.samplers.BaseSampler:
    """The sampler of the spec, seeded with the sampler's seed or the study seed."""
    spec = study.sampler
    opts: dict[str, Any] = spec.model_dump(exclude={"name", "seed"})
    seed = spec.seed if spec.seed is not None else study.seed
    s = optuna.samplers
    if spec.name == "tpe":
        return s.TPESampler(seed=seed, **opts)
    if spec.name == "random":
        return s.RandomSampler(seed=seed)
    if spec.name == "gp":
        return s.GPSampler(seed=seed, **opts)
    if spec.name == "cmaes":
        return s.CmaEsSampler(seed=seed, **opts)
    if spec.name == "nsga2":
        return s.NSGAIISampler(seed=seed, **opts)
    if spec.name == "grid":
        return s.GridSampler(space.grid(), seed=seed)
    return s.BruteForceSampler(seed=seed, **opts)


def max_steps(space: Space) -> int | None:
    """``train.steps`` when the space fixes it (the pruners' maximum resource)."""
    if space.dim(("train", "steps")) is not None:
        return None
    return int(space.fallback(("train", "steps")))
