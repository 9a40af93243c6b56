"""Optuna objects from the spec: storage, sampler and pruner. Workers rebuild the pruner
with the same function (Optuna stores neither samplers nor pruners; a worker that loads
the study without its pruner silently gets a default MedianPruner)."""

from __future__ import annotations

import hashlib
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


class StorageError(ValueError):
    """A storage that cannot be opened (see ``storage_error``)."""


def storage_error(url: str, cause: BaseException | str) -> StorageError:
    """A StorageError naming the (password-masked) URL and the first line of the cause."""
    lines = str(cause).strip().splitlines()
    first = lines[0] if lines else type(cause).__name__
    return StorageError(f"storage {shown_url(url)}: {first}")


def shown_url(url: str) -> str:
    """``url`` with any password masked, for messages."""
    if "://" not in url:
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001  (not an RDB URL: shown as given)
        return url


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """A journal file (a path, or ``journal:///path``) or an RDB URL (PostgreSQL for
    several machines). SQLite is refused: it breaks with parallel writers. Any failure
    (bad scheme, missing driver, unreachable server, unwritable path) is a StorageError."""
    if url.startswith("sqlite"):
        raise storage_error(url, "SQLite breaks with parallel writers; use the default "
                            "journal file on one machine or postgresql://... across machines")
    try:
        if "://" not in url or url.startswith("journal://"):
            path = Path(url.removeprefix("journal://"))
            path.parent.mkdir(parents=True, exist_ok=True)
            from optuna.storages.journal import JournalFileBackend

            backend = JournalFileBackend(str(path))
            try:
                return optuna.storages.JournalStorage(backend)
            except OSError:
                raise  # unreadable, not damaged: the OS reason, below
            except Exception as exc:  # noqa: BLE001  (replaying the log failed)
                raise storage_error(url, "the journal cannot be replayed (a damaged file, or "
                                    f"one written by another Optuna version): {exc}") from exc
        return retry_race(lambda: optuna.storages.RDBStorage(
            url, engine_kwargs={"pool_pre_ping": True}))
    except StorageError:
        raise
    except Exception as exc:  # noqa: BLE001  (whatever the backend raised, located)
        raise storage_error(url, exc) from exc


def storage_errors() -> tuple[type[BaseException], ...]:
    """Exceptions a working study's storage may raise (I/O, database errors)."""
    try:
        from sqlalchemy.exc import SQLAlchemyError
    except ImportError:
        return (OSError,)
    return (OSError, SQLAlchemyError)


def _races() -> tuple[type[BaseException], ...]:
    """What a driver sees when a concurrent one created the same database schema first (a
    study created first is the driver's own case: ``DuplicatedStudyError``, then load)."""
    try:
        from sqlalchemy.exc import IntegrityError, InternalError, ProgrammingError
    except ImportError:
        return ()
    return (IntegrityError, ProgrammingError, InternalError)


def retry_race(make: Callable[[], T], tries: int = 5) -> T:
    """Call ``make`` again when a concurrent driver won a race to create the same schema
    or study in a shared database (the loser sees 'already exists' errors); any other
    exception propagates at once."""
    races = _races()
    for attempt in range(tries):
        try:
            return make()
        except races:
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


def spec_seed(study: StudySpec) -> int:
    """The sampler's seed, else the study seed."""
    return study.sampler.seed if study.sampler.seed is not None else study.seed


def derive_seed(seed: int, *parts: object) -> int:
    """``seed`` itself without ``parts``; else a 32-bit seed hashed from (seed, *parts),
    the same in every process and run."""
    if not parts:
        return seed
    digest = hashlib.sha256(repr((seed, *parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little")


def make_sampler(study: StudySpec, space: Space,
                 seed: int | None = None) -> optuna.samplers.BaseSampler:
    """The sampler of the spec, seeded with ``seed`` (default: ``spec_seed``)."""
    spec = study.sampler
    opts: dict[str, Any] = spec.model_dump(exclude={"name", "seed"})
    if seed is None:
        seed = spec_seed(study)
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
