"""``train`` and ``eval``: one concrete config, with a live progress bar."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from ..spec import Config, SpecError, load_config
from .app import app, err, fail, out

SET_HELP = "override a field: dotted.path=value (YAML value), repeatable"
RUNS = Path("runs")


def _config(path: Path, overrides: list[str]) -> Config:
    try:
        return load_config(path, overrides)
    except SpecError as exc:
        raise fail(exc) from None


def _metrics_table(title: str, metrics: dict[str, float]) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics.items():
        table.add_row(k, f"{v:,.0f}" if k in ("params", "state_size", "step") else f"{v:.4g}")
    return table


def _data_missing(exc: Exception) -> typer.Exit:
    err.print(f"error: {exc}", markup=False)
    return typer.Exit(2)


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="a concrete config YAML")],
    set_: Annotated[list[str], typer.Option("--set", help=SET_HELP)] = [],  # noqa: B006
    out_dir: Annotated[Path | None, typer.Option("--out", help="run folder (default runs/NAME)")
                       ] = None,
    resume: Annotated[bool, typer.Option(help="continue from the run folder's checkpoint")
                      ] = False,
    force: Annotated[bool, typer.Option(help="start over even if a checkpoint exists")] = False,
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: all)")] = None,
) -> None:
    """Train one concrete config; write config, metrics.jsonl, final.json, checkpoint."""
    cfg = _config(config, set_)
    run_dir = out_dir or RUNS / (cfg.name or config.stem)
    if (run_dir / "checkpoint.pt").exists() and not (resume or force):
        err.print(f"error: {run_dir} already holds a checkpoint; pass --resume to continue it "
                  "or --force to start over", markup=False)
        raise typer.Exit(2)
    if cfg.task.name == "mad":
        _run_mad(cfg, run_dir, threads)
        return
    from ..tasks import make_task
    from ..train import train as run_training

    try:
        task = make_task(cfg.task)
    except RuntimeError as exc:  # data that must be installed (PTB)
        raise _data_missing(exc) from None
    tr = cfg.train
    metric = "bpc" if task.unit == "char" else "perplexity" if task.kind == "lm" else "accuracy"
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[metric]}"),
               TextColumn("{task.fields[tps]} tok/s"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=out, transient=False) as bar:
        job = bar.add_task(cfg.name or config.stem, total=tr.steps, loss="-", metric="",
                           tps="-")

        def progress(step: int, info: dict[str, float]) -> None:
            bar.update(job, completed=step, loss=f"{info['loss']:.3f}",
                       tps=f"{info['tokens_per_s']:,.0f}")

        def report(step: int, metrics: dict[str, float]) -> None:
            bar.update(job, metric=f"{metric} {metrics[metric]:.4g}")

        result = run_training(cfg, run_dir=run_dir, threads=threads, report=report,
                              progress=progress, resume=resume, task=task)
    out.print(_metrics_table(f"{cfg.name or config.stem}: {result.status} at step "
                             f"{result.step}", result.metrics))
    out.print(f"run folder: {run_dir}", markup=False)
    if result.status != "completed":
        err.print(f"diverged: {result.reason}", markup=False)
        raise typer.Exit(1)


@app.command("eval")
def evaluate_cmd(
    run: Annotated[Path, typer.Argument(help="a run folder (or its checkpoint.pt)")],
    set_: Annotated[list[str], typer.Option("--set", help=SET_HELP + "; e.g. "
                                            "task.test_seq_len=256")] = [],  # noqa: B006
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Evaluate a checkpoint on its task's evaluation sets, or on changed task settings
    (longer sequences, more key-value pairs) with --set."""
    import torch

    from ..models import build_model
    from ..tasks import make_task
    from ..train import evaluate, load_checkpoint
    from ..train.loop import resolve_device

    run_dir = run.parent if run.suffix == ".pt" else run
    ckpt = run if run.suffix == ".pt" else run / "checkpoint.pt"
    if not ckpt.exists():
        err.print(f"error: {ckpt}: no such checkpoint", markup=False)
        raise typer.Exit(2)
    cfg = _config(run_dir / "config.yaml", set_)
    device = resolve_device(cfg.train.device)
    state = load_checkpoint(ckpt, device)
    try:
        task = make_task(cfg.task)
    except RuntimeError as exc:
        raise _data_missing(exc) from None
    model = build_model(cfg, vocab_size=task.vocab_size).to(device)
    model.load_state_dict(state["model"])
    results = {}
    with torch.no_grad():
        for name, data in task.evals.items():
            results[name] = evaluate(model, data, task, batch_size=cfg.train.batch_size,
                                     device=device)
    if as_json:
        out.print_json(json.dumps({"step": state["step"], "evals": results}))
        return
    for name, metrics in results.items():
        out.print(_metrics_table(f"{name} (checkpoint step {state['step']})", metrics))




def _run_mad(cfg: Config, run_dir: Path, threads: int | None) -> None:
    from ..train.mad_protocol import mad_instances, run_mad

    suite = cfg.task
    runs = len(mad_instances(suite)) * len(suite.lr_grid) * len(suite.wd_grid)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[last]}"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=out) as bar:
        job = bar.add_task(f"MAD {cfg.name or ''}", total=runs, last="")

        def on_run(name: str, fields: dict, lr: float, wd: float, metrics: dict) -> None:
            bar.update(job, advance=1, last=f"{name} lr={lr:g} wd={wd:g} "
                       f"acc={metrics.get('accuracy', 0):.3f}")

        from ..train.loop import TrainResult, _write_final

        metrics = run_mad(cfg, threads=threads, run_dir=run_dir, on_run=on_run)
    _write_final(run_dir, TrainResult("completed", runs, metrics, [], None, run_dir))
    out.print(_metrics_table(f"MAD protocol ({suite.settings} settings, {runs} runs)",
                             metrics))
    out.print(f"run folder: {run_dir}", markup=False)


@app.command()
def mad(
    config: Annotated[Path, typer.Argument(help="a concrete config: its model and train blocks")],
    settings: Annotated[str, typer.Option(help="baseline | all (MAD's difficulty grid)")
                        ] = "baseline",
    tasks: Annotated[list[str], typer.Option("--task", help="MAD task (repeatable; default all "
                                             "six)")] = [],  # noqa: B006
    max_train: Annotated[int | None, typer.Option(help="cap training examples")] = None,
    max_test: Annotated[int | None, typer.Option(help="cap test examples")] = None,
    set_: Annotated[list[str], typer.Option("--set", help=SET_HELP)] = [],  # noqa: B006
    out_dir: Annotated[Path | None, typer.Option("--out", help="run folder")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads")] = None,
) -> None:
    """Score a model with the MAD protocol: best of the lr x wd grid per task setting, mean
    over settings per task, mean over tasks."""
    suite = {"name": "mad", "settings": settings}
    if tasks:
        suite["tasks"] = tasks
    if max_train:
        suite["max_train"] = max_train
    if max_test:
        suite["max_test"] = max_test
    overrides = [f"task={json.dumps(suite)}", *set_]  # JSON is YAML
    cfg = _config(config, overrides)
    _run_mad(cfg, out_dir or RUNS / f"{cfg.name or config.stem}-mad", threads)

