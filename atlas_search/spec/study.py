"""The ``study:`` block of a search space: objectives, sampler, pruner, budget, resources."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from .base import Spec, rule_error

SEED_MAX = 2**32 - 1
"""Optuna's samplers seed numpy, which takes seeds in [0, 2**32)."""

METRICS: tuple[str, ...] = (
    "accuracy",
    "loss",
    "perplexity",
    "bpc",
    "params",
    "state_size",
    "tokens_per_s",
    "mad_score",
)
"""Metrics a study may optimise (the trainer reports them; params and state_size are static)."""

STUDY_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")
"""A study name: it names the run folder runs/NAME and the exported files; at most 100
characters, so its trials' run names ``NAME-<number>`` stay within a run name's 128."""


def study_name_error(name: str) -> str | None:
    """Why ``name`` cannot name a study (a path-unsafe name), or None."""
    if STUDY_NAME.fullmatch(name):
        return None
    return ("a study name may use only letters, digits, '-', '_' and '.', must not start "
            "with '.' and has at most 100 characters (it names the run folder runs/NAME and "
            "its trials NAME-<number>)")


class Objective(Spec):
    metric: Literal[METRICS] = Field(description="metric to optimise")  # type: ignore[valid-type]
    direction: Literal["maximize", "minimize"]


class _Sampler(Spec):
    seed: int | None = Field(None, ge=0, le=SEED_MAX, description="default: the study seed")


class TPESampler(_Sampler):
    name: Literal["tpe"]
    n_startup_trials: int = Field(10, ge=0)
    multivariate: bool | None = Field(None, description="None = Optuna 5's automatic choice")
    group: bool = Field(False, description="decompose conditional spaces (needs multivariate)")
    constant_liar: bool = True
    n_ei_candidates: int = Field(24, ge=1)


class RandomSampler(_Sampler):
    name: Literal["random"]


class GPSampler(_Sampler):
    name: Literal["gp"]
    n_startup_trials: int = Field(10, ge=0)
    deterministic_objective: bool = False


class CmaEsSampler(_Sampler):
    name: Literal["cmaes"]
    n_startup_trials: int = Field(1, ge=0)
    sigma0: float | None = Field(None, gt=0)
    restart_strategy: Literal["ipop", "bipop"] | None = None


class NSGA2Sampler(_Sampler):
    name: Literal["nsga2"]
    population_size: int = Field(50, ge=2)
    mutation_prob: float | None = Field(None, ge=0, le=1)
    crossover_prob: float = Field(0.9, ge=0, le=1)
    swapping_prob: float = Field(0.5, ge=0, le=1)


class GridSampler(_Sampler):
    """Every combination of the (discrete) space, in shuffled order."""

    name: Literal["grid"]


class BruteForceSampler(_Sampler):
    """Every point of a discrete, possibly conditional space."""

    name: Literal["brute_force"]
    avoid_premature_stop: bool = False


SamplerSpec = Annotated[
    TPESampler
    | RandomSampler
    | GPSampler
    | CmaEsSampler
    | NSGA2Sampler
    | GridSampler
    | BruteForceSampler,
    Field(discriminator="name"),
]


class NoPruner(Spec):
    name: Literal["none"]


class MedianPruner(Spec):
    name: Literal["median"]
    n_startup_trials: int = Field(5, ge=0)
    n_warmup_steps: int = Field(0, ge=0)
    interval_steps: int = Field(1, ge=1)
    n_min_trials: int = Field(1, ge=1)


class HyperbandPruner(Spec):
    name: Literal["hyperband"]
    min_resource: int = Field(1, ge=1, description="steps before the first rung")
    max_resource: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        "auto", description="'auto' = train.steps")
    reduction_factor: int = Field(3, ge=2)


class SuccessiveHalvingPruner(Spec):
    name: Literal["successive_halving"]
    min_resource: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"
    reduction_factor: int = Field(4, ge=2)
    min_early_stopping_rate: int = Field(0, ge=0)


class WilcoxonPruner(Spec):
    """Prunes on a set of instances (e.g. MAD settings): step = instance id."""

    name: Literal["wilcoxon"]
    p_threshold: float = Field(0.1, gt=0, lt=1)
    n_startup_steps: int = Field(2, ge=0)


PrunerSpec = Annotated[
    NoPruner | MedianPruner | HyperbandPruner | SuccessiveHalvingPruner | WilcoxonPruner,
    Field(discriminator="name"),
]


class Resources(Spec):
    """Ray resources of one trial; PyTorch threads are set to ``cpu``."""

    cpu: float = Field(1, gt=0)
    gpu: float = Field(0, ge=0, description="fraction of a GPU per trial (0 = CPU only)")


def storage_url_error(url: str) -> str | None:
    """Why ``run`` could not use storage ``url`` before connecting (None: it may): SQLite
    breaks with parallel writers, and a URL's scheme must be ``journal://`` or a database
    SQLAlchemy knows (the database itself is checked when ``run`` opens it)."""
    if url.startswith("sqlite"):
        return ("SQLite breaks with parallel writers; use the default journal file on one "
                "machine or postgresql://... across machines")
    if "://" not in url or url.startswith("journal://"):
        return None
    try:
        from sqlalchemy.engine import make_url

        make_url(url).get_dialect()
    except Exception as exc:  # noqa: BLE001  (a URL SQLAlchemy cannot read or has no dialect for)
        scheme = url.split("://", 1)[0]
        return (f"unknown storage scheme {scheme!r} ({type(exc).__name__}); use a journal file "
                "path, journal:///path or postgresql+psycopg://USER@HOST/DB")
    return None


class Constraints(Spec):
    """Infeasible points are rejected before any training (built on the meta device)."""

    max_params: float | None = Field(None, gt=0, description="parameter count limit")
    max_state_size: float | None = Field(
        None, gt=0, description="recurrent state limit, floats per token position, all layers"
    )


class StudySpec(Spec):
    """How to search: Optuna study driven by ask-and-tell, trials as Ray tasks (DESIGN §7)."""

    name: str | None = Field(None, description="study name; default: the file name", min_length=1)
    objectives: list[Objective] = Field(
        default_factory=lambda: [Objective(metric="accuracy", direction="maximize")],
        min_length=1,
    )
    n_trials: int = Field(20, ge=1)
    timeout: float | None = Field(None, gt=0, description="seconds; stop asking after this")
    parallel: int = Field(1, ge=1, description="trials in flight at once")
    sampler: SamplerSpec = Field(default_factory=lambda: TPESampler(name="tpe"))
    pruner: PrunerSpec = Field(default_factory=lambda: NoPruner(name="none"))
    resources: Resources = Field(default_factory=Resources)
    storage: str | None = Field(
        None, description="Optuna storage URL; default a journal file under runs/<name>/"
    )
    seed: int = Field(0, ge=0, le=SEED_MAX, description=(
        "study seed (sampler seed unless the sampler sets one; a resumed study seeds its "
        "sampler from this seed and its trial count)"))
    constraints: Constraints = Field(default_factory=Constraints)
    max_retries: int = Field(2, ge=0, description="retries of a trial whose worker died")
    enqueue: list[str | dict[str, Any]] = Field(
        default_factory=list,
        description="run first: preset names, or mappings of dotted parameter paths to values "
        "(optionally with 'preset')",
    )

    @field_validator("name", "storage")
    @classmethod
    def _usable(cls, value: str | None, info: ValidationInfo) -> str | None:
        """A name that is safe as a folder name, a storage ``run`` can open."""
        check = study_name_error if info.field_name == "name" else storage_url_error
        if value is not None and (problem := check(value)):
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _rules(self) -> StudySpec:
        if len(self.objectives) > 1 and self.pruner.name != "none":
            raise rule_error(
                "pruner",
                f"pruner {self.pruner.name!r} cannot be used with {len(self.objectives)} "
                "objectives: Optuna prunes single-objective studies only; use pruner 'none'",
            )
        metrics = [o.metric for o in self.objectives]
        if len(set(metrics)) != len(metrics):
            raise rule_error("objectives", f"an objective metric is repeated: {metrics}")
        if len(self.objectives) > 1 and self.sampler.name in ("cmaes",):
            raise rule_error(
                "sampler", "sampler 'cmaes' is single-objective; use tpe, nsga2, gp or random"
            )
        return self
