"""``run``, ``status`` and ``export``: the distributed search and its results."""

from __future__ import annotations

import json
import math
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from ..spec import Space, SpecError, load
from ..spec.yamlio import json_safe
from .app import app, bad, err, exit_code, fail, out, out_folder, stop_signals

RUNS = Path("runs")


def _space(path: Path) -> Space:
    try:
        spec = load(path)
    except SpecError as exc:
        raise fail(exc) from None
    if not isinstance(spec, Space):
        raise bad(f"{path}: a concrete config; `run` needs a search space (a study: section "
                  "and distributions); use `atlas-search train` for one config")
    return spec


def _positive(value: float | None) -> float | None:
    """typer callback: a timeout must be > 0 seconds."""
    if value is not None and not value > 0:
        raise typer.BadParameter(f"{value:g} is not > 0 (seconds)")
    return value


@app.command()
def run(
    space_file: Annotated[Path, typer.Argument(help="a search-space YAML", metavar="SPACE")],
    address: Annotated[str | None, typer.Option(help="Ray cluster to join ('auto' = the "
                                                "running one); default: a local Ray")] = None,
    storage: Annotated[str | None, typer.Option(help="Optuna storage URL (postgresql://... "
                                                "across machines); default runs/NAME/"
                                                "journal.log")] = None,
    parallel: Annotated[int | None, typer.Option(help="trials in flight", min=1)] = None,
    n_trials: Annotated[int | None, typer.Option(help="finished trials to reach", min=1)
                        ] = None,
    timeout: Annotated[float | None, typer.Option(help="seconds (> 0) before no new trial starts",
                                                  callback=_positive)] = None,
    inline: Annotated[bool, typer.Option(help="run trials in this process, one at a time "
                                         "(debugging; no Ray)")] = False,
    runs: Annotated[Path, typer.Option(help="folder of run folders")] = RUNS,
) -> None:
    """Search a space: Optuna samples, Ray runs the trials; rerun to resume. On a terminal
    a live display; otherwise (a log file, a pipe) one plain line per event."""
    space = _space(space_file)
    from ..search.driver import Driver, SearchOptions
    from ..search.executors import ClusterError
    from ..search.factory import shown_url

    opts = SearchOptions(address=address, storage=storage, parallel=parallel,
                         n_trials=n_trials, timeout=timeout, runs=runs,
                         executor="inline" if inline else "ray")
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TextColumn("ETA {task.fields[eta]}"), console=out)
    total = opts.n_trials if opts.n_trials is not None else space.study.n_trials
    job = bar.add_task(space.study.name, total=total, eta="-")
    started = time.time()
    first: dict[str, int] = {}
    stats = Text()
    events = Text()

    def show(p) -> None:  # noqa: ANN001
        first.setdefault("done", p.finished)
        new = p.finished - first["done"]
        left = p.n_trials - p.finished
        eta = "-"
        if new > 0 and left > 0:
            eta = f"{(time.time() - started) / new * left:,.0f}s"
        bar.update(job, completed=p.finished, total=p.n_trials, eta=eta)
        stats.plain = (f"running {p.running} | complete {p.complete} | pruned {p.pruned} | "
                       f"failed {p.failed}"
                       + (f" | infeasible {p.infeasible}" if p.infeasible else "")
                       + f" | best {p.best}")
        events.plain = "\n".join(p.events[-4:])

    def line(text: str) -> None:
        out.print(text, markup=False, soft_wrap=True)
        out.file.flush()

    live = out.is_terminal
    try:
        driver = Driver(space, opts, listener=show if live else None,
                        space_text=space_file.read_text(), on_event=None if live else line)
    except ValueError as exc:
        raise bad(str(exc)) from None
    out.print(f"study {space.study.name}: storage {shown_url(driver.url)}", markup=False)
    stop: Callable[[], str | None] = lambda: None  # noqa: E731
    try:
        with stop_signals() as stop:  # the first SIGINT/SIGTERM: stop at a safe point
            if live:
                with Live(Group(bar, stats, events), console=out, refresh_per_second=4,
                          transient=False):
                    progress = driver.run(stop)
                out.print()
            else:
                progress = driver.run(stop)
    except ClusterError as exc:
        out.file.flush()  # every stdout line is complete (the live display ends its own)
        raise bad(str(exc)) from None
    except KeyboardInterrupt:
        out.file.flush()
        by = stop() or "SIGINT"
        err.print(f"interrupted ({by}): running trials were re-queued; rerun the same "
                  "command to continue", markup=False)
        raise typer.Exit(exit_code(by)) from None
    if progress.stopped and not progress.stop_error:
        out.print(progress.stopped, markup=False, soft_wrap=True)
    infeasible = (f", infeasible {progress.infeasible} (not counted)"
                  if progress.infeasible else "")
    out.print(f"finished {progress.finished}/{progress.n_trials}: complete {progress.complete}"
              f", pruned {progress.pruned}, failed {progress.failed}{infeasible}; "
              f"best {progress.best}", markup=False, soft_wrap=True)
    run_dir = shlex.quote(str(runs / space.study.name))
    where = ""
    if storage or space.study.storage:
        where = f" --storage {shlex.quote(shown_url(driver.url))}"
    out.print(f"next: atlas-search status {run_dir}{where} | atlas-search export {run_dir}"
              f"{where}", markup=False, soft_wrap=True)
    if progress.stopped and progress.stop_error:
        out.file.flush()
        raise bad(f"{space_file}: {progress.stopped}")


def _open(run_dir: Path, storage: str | None):  # noqa: ANN202
    """The study of a run folder (read only: a missing journal is an error, not created)."""
    from ..search.factory import StorageError
    from ..search.results import open_study

    def note(text: str) -> None:
        err.print(f"note: {text}", markup=False)

    try:
        return open_study(run_dir, storage, note=note)
    except (FileNotFoundError, StorageError) as exc:
        raise bad(str(exc)) from None


def _out_label(out_dir: Path | None, default: Path) -> str:
    """How an output folder is named in errors: ``--out DIR``, or the default path."""
    return f"--out {out_dir}" if out_dir is not None else str(default)


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}" if isinstance(v, float) and math.isfinite(v) else str(v)


@app.command()
def status(
    run_dir: Annotated[Path, typer.Argument(help="runs/NAME")],
    storage: Annotated[str | None, typer.Option(help="storage URL of a database study")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON for scripts")] = False,
) -> None:
    """Trials of a study: state, params, values, duration; best so far; failure reasons."""
    from ..search.results import ranked, trial_rows

    study = _open(run_dir, storage)
    rows = trial_rows(study)
    best = ranked(study)
    if as_json:
        payload = {"study": study.study_name,
                   "directions": [d.name.lower() for d in study.directions],
                   "best": [t.number for t in best[:1 if len(study.directions) == 1 else None]],
                   "trials": rows}
        out.print_json(json.dumps(json_safe(payload), default=str, allow_nan=False))
        return
    table = Table(title=f"study {study.study_name}", title_justify="left")
    names = sorted({k for r in rows for k in r["params"]})
    for col in ("#", "state", "value", *[n.split(".")[-1] for n in names], "time", "note"):
        table.add_column(col, overflow="fold")
    for r in rows:
        vals = ", ".join(_fmt(v) for v in r["values"]) if r["values"] else "-"
        note = r["reason"].splitlines()[0][:60] if r["reason"] else (
            f"baseline {r['baseline']}" if r["baseline"] else "")
        table.add_row(str(r["number"]), r["state"].lower(), vals,
                      *[_fmt(r["params"].get(n)) for n in names],
                      f"{r['duration']:.0f}s" if r["duration"] else "-", note)
    out.print(table)
    if best:
        b = best[0]
        label = "best" if len(study.directions) == 1 else f"Pareto set: {len(best)} trials; first"
        out.print(f"{label}: trial {b.number} values {b.values} params {b.params}", markup=False)


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="runs/NAME")],
    top: Annotated[int, typer.Option(help="how many of the best (single objective)", min=1)
                   ] = 3,
    out_dir: Annotated[Path | None, typer.Option("--out", help="default RUN_DIR/export")] = None,
    storage: Annotated[str | None, typer.Option(help="storage URL of a database study")] = None,
) -> None:
    """The best configs (or the Pareto set) as concrete YAML that build/train load."""
    from ..search.results import export_best, ranked

    study = _open(run_dir, storage)
    if not ranked(study):
        raise bad(f"study {study.study_name!r} in {run_dir}: no complete trial to export yet")
    target = out_folder(out_dir or run_dir / "export", _out_label(out_dir, run_dir / "export"))
    try:
        paths = export_best(study, target, top)
    except OSError as exc:
        raise bad(f"{exc.filename or target}: cannot write ({exc.strerror or exc})") from None
    if not paths:
        raise bad(f"study {study.study_name!r} in {run_dir}: its best trials have no config "
                  "to export (not run by atlas-search)")
    for p in paths:
        out.print(str(p), markup=False)


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="runs/NAME")],
    out_dir: Annotated[Path | None, typer.Option("--out", help="default RUN_DIR/report")] = None,
    storage: Annotated[str | None, typer.Option(help="storage URL of a database study")] = None,
) -> None:
    """A self-contained HTML report with PNG plots and a markdown summary of a study."""
    from ..search.report import write_report

    study = _open(run_dir, storage)
    names = study.user_attrs.get("objectives")
    target = out_folder(out_dir or run_dir / "report", _out_label(out_dir, run_dir / "report"))
    try:
        html = write_report(study, target, objective_names=names)
    except OSError as exc:
        raise bad(f"{exc.filename or target}: cannot write ({exc.strerror or exc})") from None
    out.print(f"{html}\n{html.with_name('summary.md')}", markup=False)
