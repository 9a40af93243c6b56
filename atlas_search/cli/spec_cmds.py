"""``validate``, ``schema`` and ``build``: checking and instantiating specs."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..spec import Config, Space, SpecError, load
from ..spec.errors import dotted
from ..spec.space import is_infinite
from ..spec.task import MADSuiteTask
from .app import app, bad, err, fail, out


def _load(path: Path) -> Config | Space:
    try:
        return load(path)
    except SpecError as exc:
        raise fail(exc) from None


def _fmt_dist(d) -> str:  # noqa: ANN001
    dist = d.dist
    if hasattr(dist, "choice"):
        return "choice " + ", ".join(map(str, dist.choice))
    if hasattr(dist, "int_"):
        lo, hi = dist.int_
        return (
            f"int [{lo}, {hi}]"
            + (f" step {dist.step}" if dist.step != 1 else "")
            + (" log" if dist.log else "")
        )
    if hasattr(dist, "float_"):
        lo, hi = dist.float_
        return (
            f"float [{lo:g}, {hi:g}]"
            + (f" step {dist.step:g}" if dist.step else "")
            + (" log" if dist.log else "")
        )
    return f"value {dist.value!r}"


def _print_space(space: Space, path: Path) -> None:
    st = space.study
    out.print(f"[bold green]ok[/] {path}: search space [bold]{st.name}[/]", markup=True)
    table = Table(title="search dimensions", title_justify="left")
    for col in ("parameter", "distribution", "size", "when"):
        table.add_column(col)
    for d in space.dims:
        when = ", ".join(f"{dotted(p)} in {v}" for p, v in d.conditions) or "-"
        size = d.dist.size()
        table.add_row(d.name, _fmt_dist(d), "inf" if is_infinite(size) else str(int(size)), when)
    out.print(table)
    total, exact = space.count()
    objectives = ", ".join(f"{o.direction} {o.metric}" for o in st.objectives)
    points = "continuous" if is_infinite(total) else f"{int(total)}"
    if not exact and not is_infinite(total):
        points += " (upper bound)"
    out.print(
        f"points: {points} | objectives: {objectives} | trials: {st.n_trials}, parallel "
        f"{st.parallel} | sampler: {st.sampler.name} | pruner: {st.pruner.name}",
        markup=False,
    )
    if st.enqueue:
        out.print(
            "baselines first: "
            + ", ".join(e if isinstance(e, str) else json.dumps(e) for e in st.enqueue),
            markup=False,
        )
    for w in space.warnings:
        out.print(f"warning: {w}", style="yellow", markup=False)


def _print_config(cfg: Config, path: Path) -> None:
    m, mem = cfg.model, cfg.model.memory
    out.print(f"[bold green]ok[/] {path}: concrete config [bold]{cfg.name}[/]")
    if m.mixer == "memory":
        phi = mem.feature_map + (
            f"{mem.poly_degree} ({mem.poly_mode})" if mem.feature_map == "poly" else ""
        )
        mixer = (
            f"memory {mem.kind}"
            + (f" depth {mem.depth} x{mem.expansion}" if mem.kind != "linear" else "")
            + f", {mem.objective}, phi={phi}, c={mem.window}, b={mem.chunk_size}, "
            f"{mem.optimizer}"
            + (f"(ns={mem.ns_steps})" if mem.optimizer == "muon" else "")
            + f", retention {mem.retention}"
        )
        if m.mixing != "none":
            mixer += f" + SWA({m.swa_window}) {m.mixing.upper()}"
    else:
        mixer = "softmax attention" + (f", window {m.swa_window}" if m.mixer == "swa" else "")
    out.print(
        f"model: {m.preset or 'custom'} | d_model {m.d_model}, {m.n_layers} layers, "
        f"{m.n_heads} heads x {m.resolved_head_dim}, vocab {cfg.vocab_size()}",
        markup=False,
    )
    out.print(f"mixer: {mixer}", markup=False)
    t = cfg.task
    params = ", ".join(
        f"{k}={v}" for k, v in t.model_dump().items() if k != "name" and v is not None
    )
    out.print(f"task: {t.name} ({params})", markup=False)
    tr = cfg.train
    out.print(
        f"train: {tr.steps} steps x batch {tr.batch_size}, lr {tr.lr:g} ({tr.schedule}, "
        f"warmup {tr.warmup}), wd {tr.weight_decay:g}, seed {tr.seed}",
        markup=False,
    )


@app.command()
def validate(
    files: Annotated[list[Path], typer.Argument(help="YAML files: concrete configs or spaces")],
) -> None:
    """Check configs and search spaces; print a summary of each (exit 2 on any error)."""
    failed = False
    for path in files:
        try:
            spec = load(path)
        except SpecError as exc:
            fail(exc)
            failed = True
            continue
        if isinstance(spec, Space):
            _print_space(spec, path)
        elif (why := _task_problem(spec)) is not None:
            err.print(f"error: {path}: task: {why}", markup=False)
            failed = True
        else:
            _print_config(spec, path)
    if failed:
        raise typer.Exit(2)


GENERATED_TASKS = ("mqar", "s_niah")
"""Tasks ``validate`` generates for a concrete config (well under a second at the default
sizes): the only check of a setting with too few distinct sequences for disjoint train
and test sets, which no rule on the fields can decide. PTB reads a corpus and MAD trains
many settings: ``train`` reports theirs."""


def _task_problem(config: Config) -> str | None:
    """Why the config's task cannot be generated (``tasks.base.TaskError``), if it can't."""
    if config.task.name not in GENERATED_TASKS:
        return None
    from ..tasks import make_task
    from ..tasks.base import TaskError

    try:
        make_task(config.task)
    except TaskError as exc:
        return str(exc)
    return None


@app.command()
def schema(
    layer: Annotated[str, typer.Option(help="both | concrete | space")] = "both",
    output: Annotated[Path | None, typer.Option("--out", help="write to this file")] = None,
) -> None:
    """Print the JSON Schema of configs and search spaces (for yaml-language-server)."""
    from ..spec.schema import schema as make_schema

    if layer not in ("both", "concrete", "space"):
        raise bad(f"--layer must be both, concrete or space (got {layer!r})")
    text = json.dumps(make_schema(layer), indent=2) + "\n"
    if output is None:
        sys.stdout.write(text)
        return
    try:
        output.write_text(text)
    except OSError as exc:
        why = "is a folder" if output.is_dir() else exc.strerror or str(exc)
        raise bad(f"--out {output}: cannot write: {why}") from None
    err.print(f"wrote {output}", markup=False)


def _model_rows(space: Space, sample: int, seed: int) -> list[tuple[str, Config | str]]:
    """(label, config or reason) for a space's baselines and ``sample`` random points."""
    import random

    from pydantic import ValidationError

    from ..spec.space import first_error

    rows: list[tuple[str, Config | str]] = [
        (f"baseline {label}", cfg) for label, cfg in space.baseline_configs()
    ]
    rng = random.Random(seed)
    for i in range(sample):
        try:
            rows.append((f"random {i + 1}", space.concretize(space.random_values(rng))))
        except ValidationError as exc:
            rows.append((f"random {i + 1}", f"invalid: {first_error(exc)}"))
    return rows


def _state_len(task: object) -> tuple[int, str]:
    """The sequence length ``build`` measures recurrent state at, and how to say it: the
    task's ``seq_len``, or for the MAD suite the longest row of the settings it scores."""
    if isinstance(task, MADSuiteTask):
        name, n = task.longest_setting()
        return n, f"{n} tokens, the longest MAD setting: {name}"
    n = task.seq_len  # type: ignore[attr-defined]
    return n, f"{n} tokens"


def _describe(cfg: Config) -> str:
    m, mem = cfg.model, cfg.model.memory
    if m.mixer != "memory":
        return "attention" if m.mixer == "attention" else f"swa({m.swa_window})"
    kind = mem.kind if mem.kind == "linear" else f"{mem.kind}x{mem.depth}e{mem.expansion}"
    phi = mem.feature_map + (str(mem.poly_degree) if mem.feature_map == "poly" else "")
    mix = "" if m.mixing == "none" else f" +{m.mixing}"
    return f"{kind} {mem.objective} {phi} c={mem.window} {mem.optimizer}{mix}"


@app.command()
def build(
    file: Annotated[Path, typer.Argument(help="a concrete config or a search space")],
    sample: Annotated[int, typer.Option(help="random points of a space to build", min=0)] = 2,
    seed: Annotated[int, typer.Option(help="seed of the random points")] = 0,
) -> None:
    """Instantiate models on CPU: parameters, recurrent state, per-layer table."""
    spec = _load(file)
    from ..models import ModelTooLarge, build_model
    from ..models.summary import summarize

    if isinstance(spec, Config):
        try:
            model = build_model(spec)
        except ModelTooLarge as exc:
            raise bad(f"{file}: {exc}") from None
        seq_len, said = _state_len(spec.task)
        info = summarize(model, seq_len)
        _print_config(spec, file)
        title = f"layers (state after {said})"
        table = Table(title=title, title_justify="left", min_width=len(title))
        for col in ("layer", "mixer", "params", "state floats"):
            table.add_column(col, justify="right" if col != "mixer" else "left")
        for row in info["layers"]:
            table.add_row(row["name"], row["mixer"], f"{row['params']:,}",
                          f"{row['state_size']:,}")
        table.add_row("total", "", f"{info['params']:,}", f"{info['state_size']:,}",
                      style="bold")
        out.print(table)
        return
    limits = spec.study.constraints
    rows = _model_rows(spec, sample, seed)
    said = {_state_len(cfg.task)[1] for _, cfg in rows if not isinstance(cfg, str)}
    title = f"models of {spec.study.name}" + (
        f" (state after {said.pop()})" if len(said) == 1 else " (state after each task's seq_len)")
    table = Table(title=title, title_justify="left", min_width=len(title))
    for col in ("point", "memory", "params", "state floats", "feasible"):
        table.add_column(col, justify="right" if col in ("params", "state floats") else "left")
    for label, cfg in rows:
        if isinstance(cfg, str):
            table.add_row(label, cfg, "-", "-", "no")
            continue
        try:
            info = summarize(build_model(cfg), _state_len(cfg.task)[0])
        except ModelTooLarge as exc:
            table.add_row(label, _describe(cfg), "-", "-", f"no: {exc}")
            continue
        broken = []
        if limits.max_params is not None and info["params"] > limits.max_params:
            broken.append(f"params > {limits.max_params:g}")
        if limits.max_state_size is not None and info["state_size"] > limits.max_state_size:
            broken.append(f"state > {limits.max_state_size:g}")
        table.add_row(label, _describe(cfg), f"{info['params']:,}", f"{info['state_size']:,}",
                      "no: " + ", ".join(broken) if broken else "yes")
    out.print(table)
