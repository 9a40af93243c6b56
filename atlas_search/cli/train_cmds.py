"""``train`` and ``eval``: one concrete config, with a live progress bar."""

from __future__ import annotations

import json
import shlex
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
from ..spec.load import Override
from .app import app, bad, err, exit_code, fail, not_a_file, out, out_folder, stop_signals

SET_HELP = "override a field: dotted.path=value (YAML value), repeatable"
EVAL_SETTABLE = ("task.", "train.batch_size", "train.device")
"""What ``eval --set`` may change: the task's settings (longer test sequences, more pairs,
other needle lengths) and how evaluation runs; the model and its training are the
checkpoint's."""
RUNS = Path("runs")


def _config(path: Path, overrides: list[Override]) -> Config:
    try:
        return load_config(path, overrides)
    except SpecError as exc:
        raise fail(exc) from None


def _metrics_table(title: str, metrics: dict[str, float]) -> Table:
    table = Table(title=title, title_justify="left", min_width=len(title))
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics.items():
        table.add_row(k, f"{v:,.0f}" if k in ("params", "state_size", "step") else f"{v:.4g}")
    return table


def _task_error(source: Path, exc: Exception) -> typer.Exit:
    """A task setting the generator cannot produce (``tasks.base.TaskError``)."""
    return bad(f"{source}: task: {exc}")


def _make_task(cfg: Config, source: Path):  # noqa: ANN202
    """The config's task, with data-missing and task-setting errors as Exit(2)."""
    from ..tasks import make_task
    from ..tasks.base import TaskError

    try:
        return make_task(cfg.task)
    except TaskError as exc:
        raise _task_error(source, exc) from None
    except RuntimeError as exc:  # data that must be installed (PTB)
        raise bad(str(exc)) from None


def _device(cfg: Config, source: Path):  # noqa: ANN202
    """The torch device of ``train.device`` (Exit(2) for cuda without a CUDA device)."""
    from ..train.loop import resolve_device

    try:
        return resolve_device(cfg.train.device)
    except RuntimeError as exc:
        raise bad(f"{source}: {exc}") from None


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="a concrete config YAML")],
    set_: Annotated[list[str], typer.Option("--set", help=SET_HELP)] = [],  # noqa: B006
    out_dir: Annotated[Path | None, typer.Option("--out", help="run folder (default runs/NAME)")
                       ] = None,
    resume: Annotated[bool, typer.Option(help="continue from the run folder's checkpoint")
                      ] = False,
    force: Annotated[bool, typer.Option(help="start over even if a checkpoint exists")] = False,
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: all)", min=1)
                       ] = None,
) -> None:
    """Train one concrete config; write config, metrics.jsonl, final.json, checkpoint.

    --resume continues the run folder's checkpoint and may change only name,
    train.steps (to extend the run), train.eval_every and train.device
    (the trainer's RESUMABLE list); other changes exit 2 naming the fields."""
    from ..models import ModelTooLarge
    from ..train import CheckpointError, load_checkpoint
    from ..train.loop import check_resume

    if resume and force:
        raise bad("--resume and --force contradict each other: --resume continues the "
                  "checkpoint, --force deletes it and starts over; pass one")
    cfg = _config(config, set_)
    run_dir = out_dir or RUNS / (cfg.name or config.stem)
    flag = "--out" if out_dir is not None else "run folder"
    not_a_file(run_dir, f"{flag} {run_dir}")
    _device(cfg, config)
    ckpt = run_dir / "checkpoint.pt"
    if ckpt.exists() and not (resume or force):
        raise bad(f"{run_dir} already holds a checkpoint; pass --resume to continue it or "
                   "--force to start over")
    if cfg.task.name == "mad":
        if resume:
            raise bad(f"{config}: a MAD run cannot be resumed (it trains every setting "
                      "afresh); pass --force to start it over")
        if force:
            from ..train.loop import CHECKPOINT, clear_run

            clear_run(run_dir, names=(CHECKPOINT, "final.json", "metrics.jsonl"))
        _run_mad(cfg, run_dir, threads, config, flag)
        return
    from ..train import train as run_training

    if resume and ckpt.exists():  # refuse before any work: unreadable, or another run
        try:
            check_resume(load_checkpoint(ckpt), cfg, ckpt)
        except CheckpointError as exc:
            raise bad(str(exc)) from None
    elif resume:  # a preemptible job may always pass --resume: start, but say so
        hint = ("" if out_dir is not None else
                "; a renamed run keeps its old folder: give it with --out")
        err.print(f"note: {run_dir} holds no checkpoint to resume; starting a new run{hint}",
                  markup=False)
    task = _make_task(cfg, config)
    out_folder(run_dir, f"{flag} {run_dir}")
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

        try:
            with stop_signals() as stop:
                result = run_training(cfg, run_dir=run_dir, threads=threads, report=report,
                                      progress=progress, resume=resume, task=task, stop=stop)
        except CheckpointError as exc:
            raise bad(str(exc)) from None
        except ModelTooLarge as exc:
            raise bad(f"{config}: {exc}") from None
    out.print(_metrics_table(f"{cfg.name or config.stem}: {result.status} at step "
                             f"{result.step}", result.metrics))
    out.print(f"run folder: {run_dir}", markup=False)
    if result.status == "interrupted":
        again = shlex.join(["atlas-search", "train", str(run_dir / "config.yaml"), "--out",
                            str(run_dir), "--resume"]
                           + (["--threads", str(threads)] if threads is not None else []))
        err.print(f"{result.reason}: {run_dir / 'checkpoint.pt'} holds step {result.step}; "
                  f"continue with: {again}", markup=False)
        raise typer.Exit(exit_code(result.reason))
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
    (longer sequences, more key-value pairs) with --set; under the trainer's autocast rule
    (bf16 on CUDA unless ``train.precision: fp32``)."""
    import torch

    from ..models import ModelTooLarge, build_model
    from ..train import CheckpointError, load_checkpoint, load_model_state
    from ..train.evaluate import evaluate_sets
    from ..train.loop import use_autocast

    run_dir = run.parent if run.suffix == ".pt" else run
    ckpt = run if run.suffix == ".pt" else run / "checkpoint.pt"
    if not ckpt.is_file():
        raise bad(f"{ckpt}: no such checkpoint")
    for item in set_:
        key = item.partition("=")[0].strip()
        if not key.startswith(EVAL_SETTABLE):
            raise bad(f"--set {item}: eval keeps the checkpoint's model and training; only "
                       f"{', '.join(k + '*' if k.endswith('.') else k for k in EVAL_SETTABLE)} "
                       "may change")
    source = run_dir / "config.yaml"
    cfg = _config(source, set_)
    device = _device(cfg, source)
    try:
        state = load_checkpoint(ckpt, device)
    except CheckpointError as exc:
        raise bad(str(exc)) from None
    task = _make_task(cfg, source)
    try:  # model.vocab_size when the config gives it, else the task's (as `train`)
        model = build_model(cfg, device=device)
    except ModelTooLarge as exc:
        raise bad(f"{source}: {exc}") from None
    try:
        load_model_state(model, state, "the config with these --set changes" if set_ else
                         f"{source}")
    except CheckpointError as exc:
        raise bad(str(exc)) from None
    with torch.no_grad():  # autocast as in training (bf16 on CUDA unless precision: fp32)
        results = evaluate_sets(model, task, batch_size=cfg.train.batch_size, device=device,
                                autocast=use_autocast(device, cfg.train.precision))
    if as_json:
        from ..spec.yamlio import json_safe

        out.print_json(json.dumps(json_safe({"step": state["step"], "evals": results}),
                                  allow_nan=False))
        return
    for name, metrics in results.items():
        out.print(_metrics_table(f"{name} (checkpoint step {state['step']})", metrics))


def _run_mad(cfg: Config, run_dir: Path, threads: int | None, source: Path, flag: str) -> None:
    from ..models import ModelTooLarge
    from ..tasks.base import TaskError
    from ..train.mad_protocol import mad_instances, run_mad

    out_folder(run_dir, f"{flag} {run_dir}")
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

        try:
            metrics = run_mad(cfg, threads=threads, run_dir=run_dir, on_run=on_run)
        except TaskError as exc:
            raise _task_error(source, exc) from None
        except ModelTooLarge as exc:
            raise bad(f"{source}: {exc}") from None
    _write_final(run_dir, TrainResult("completed", runs, metrics, [], None, run_dir))
    out.print(_metrics_table(f"MAD protocol ({suite.settings} settings, {runs} "
                             f"run{'s' if runs != 1 else ''})", metrics))
    out.print(f"run folder: {run_dir}", markup=False)


@app.command()
def mad(
    config: Annotated[Path, typer.Argument(help="a concrete config: its model and train blocks")],
    settings: Annotated[str, typer.Option(help="baseline | all (MAD's difficulty grid)")
                        ] = "baseline",
    tasks: Annotated[list[str], typer.Option("--task", help="MAD task (repeatable; default all "
                                             "six)")] = [],  # noqa: B006
    max_train: Annotated[int | None, typer.Option(min=1, help="cap training examples")
                         ] = None,
    max_test: Annotated[int | None, typer.Option(min=1, help="cap test examples")] = None,
    set_: Annotated[list[str], typer.Option("--set", help=SET_HELP)] = [],  # noqa: B006
    out_dir: Annotated[Path | None, typer.Option("--out", help="run folder")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads", min=1)] = None,
) -> None:
    """Score a model with the MAD protocol: best of the lr x wd grid per task setting, mean
    over settings per task, mean over tasks."""
    from ..spec.errors import allowed_hint
    from ..spec.task import MAD_TASK_NAMES

    for flag, value, allowed in [("--settings", settings, ("baseline", "all"))] + [
            ("--task", t, MAD_TASK_NAMES) for t in tasks]:
        if value not in allowed:
            raise bad(f"{flag} {value!r}: not allowed\n    " + allowed_hint(value, allowed))
    suite: dict = {"name": "mad", "settings": settings}
    if tasks:
        suite["tasks"] = tasks
    if max_train is not None:
        suite["max_train"] = max_train
    if max_test is not None:
        suite["max_test"] = max_test
    for item in set_:
        key = item.partition("=")[0].strip()
        if key in ("task", "task.name"):
            raise bad(f"--set {item}: `mad` always scores the MAD suite (task name mad); "
                      "choose its tasks with --task and its settings with --settings, or "
                      "run another task with `atlas-search train`")
    mine = ("task=" + json.dumps(suite),  # JSON is YAML
            f"the mad command's task ({', '.join(f'{k}: {v}' for k, v in suite.items())})")
    cfg = _config(config, [mine, *set_])
    run_dir = out_dir or RUNS / f"{cfg.name or config.stem}-mad"
    if (run_dir / "checkpoint.pt").exists():
        raise bad(f"{run_dir} holds a training run (checkpoint.pt); a MAD run there would "
                  "replace its results: choose another --out")
    _run_mad(cfg, run_dir, threads, config, "--out" if out_dir is not None else "run folder")

