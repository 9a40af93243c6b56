"""The study report: plots drawn with ``optuna.visualization.matplotlib`` (Agg backend, PNG
files), ``summary.md`` (trials best first, best trial or Pareto set, counts per state,
parameter importances) and a self-contained ``report.html`` (inline CSS, PNGs embedded as
base64 data URIs, no JavaScript). A plot that cannot be drawn is listed as skipped with its
reason; it never stops the report."""

from __future__ import annotations

import base64
import html
import logging
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

SUMMARY = "summary.md"
HTML = "report.html"
REASON_CHARS = 80
LEGEND_MAX = 20
"""Learning curves drop the per-trial legend beyond this many trials."""
PRUNED_NOTE = "A PRUNED trial's value is the last value it reported before it stopped."
STATE_ORDER = {TrialState.COMPLETE: 0, TrialState.PRUNED: 1, TrialState.FAIL: 2,
               TrialState.RUNNING: 3, TrialState.WAITING: 4}


# ---------------------------------------------------------------------- data
@dataclass
class Plot:
    """One plot of the report: its PNG when drawn, else why it was skipped."""

    name: str
    title: str
    path: Path | None = None
    skipped: str | None = None


@dataclass
class Importances:
    """Parameter importances per objective (``{objective: {param: importance}}``), or why
    they could not be computed."""

    by_objective: dict[str, dict[str, float]] = field(default_factory=dict)
    skipped: str | None = None


@dataclass
class ReportData:
    """Everything the markdown and HTML renderers need, computed once."""

    study_name: str
    objectives: list[str]
    directions: list[str]
    trials: list[FrozenTrial]
    param_names: list[str]
    best: list[FrozenTrial]
    counts: dict[str, int]
    importances: Importances
    plots: list[Plot]


class PlotSkipped(Exception):
    """A plot's precondition failed; the message is the reason shown in the report."""


# ---------------------------------------------------------------------- public API
def write_report(study: optuna.Study, out_dir: Path,
                 objective_names: Sequence[str] | None = None) -> Path:
    """Write the plots, ``summary.md`` and ``report.html`` for ``study`` into ``out_dir``;
    return the path of the HTML file. ``objective_names`` label the objectives (default:
    the study's metric names, else ``value``/``value 0``, ``value 1``...)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    objectives = objective_labels(study, objective_names)
    importances = compute_importances(study, objectives)
    plots = draw_plots(study, objectives, importances, out_dir)
    data = collect_data(study, objectives, importances, plots)
    (out_dir / SUMMARY).write_text(render_markdown(data))
    html_path = out_dir / HTML
    html_path.write_text(render_html(data))
    return html_path


def load_study(url: str, study_name: str | None = None) -> optuna.Study:
    """Load a study from a journal path or RDB URL (as the driver opens it); without a
    name, the storage must hold exactly one study."""
    from .factory import open_storage

    storage = open_storage(url)
    if study_name is None:
        names = optuna.get_all_study_names(storage)
        if len(names) != 1:
            raise ValueError(f"{url} holds {len(names)} studies {names}; name one")
        study_name = names[0]
    return optuna.load_study(study_name=study_name, storage=storage)


# ---------------------------------------------------------------------- trials
def objective_labels(study: optuna.Study, names: Sequence[str] | None = None) -> list[str]:
    """A label per objective: the given names, the study's metric names, or generic ones."""
    n = len(study.directions)
    if names is not None and len(names) == n:
        return list(names)
    if study.metric_names is not None and len(study.metric_names) == n:
        return list(study.metric_names)
    return ["value"] if n == 1 else [f"value {i}" for i in range(n)]


def direction_word(direction: StudyDirection) -> str:
    """``max`` or ``min``."""
    return "max" if direction == StudyDirection.MAXIMIZE else "min"


def complete_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The study's COMPLETE trials."""
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def pareto_ranks(trials: Sequence[FrozenTrial], signs: Sequence[float]) -> dict[int, int]:
    """Non-domination rank (0 = Pareto front) of each trial, by trial number (Deb's fast
    non-dominated sort; ``signs``: +1 to minimise, -1 to maximise)."""
    import numpy as np

    if not trials:
        return {}
    v = np.asarray([t.values for t in trials], dtype=float) * np.asarray(signs, dtype=float)
    dominated_by: list[np.ndarray] = []
    count = np.zeros(len(trials), dtype=int)
    for i in range(len(trials)):
        beats = np.all(v[i] <= v, axis=1) & np.any(v[i] < v, axis=1)
        dominated_by.append(np.flatnonzero(beats))
        count[beats] += 1
    ranks: dict[int, int] = {}
    front = np.flatnonzero(count == 0)
    rank = 0
    while front.size:
        for i in front:
            ranks[trials[i].number] = rank
        count[front] = -1
        np.subtract.at(count, np.concatenate([dominated_by[i] for i in front]), 1)
        front, rank = np.flatnonzero(count == 0), rank + 1
    return ranks


def sort_trials(study: optuna.Study) -> list[FrozenTrial]:
    """All trials best first: COMPLETE by objective (Pareto rank, then the first objective
    for multi-objective studies), then PRUNED, FAIL and the rest, each by number."""
    signs = [-1.0 if d == StudyDirection.MAXIMIZE else 1.0 for d in study.directions]
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.values is not None]
    ranks = pareto_ranks(done, signs) if len(signs) > 1 else {}

    def key(t: FrozenTrial) -> tuple[Any, ...]:
        if t.state == TrialState.COMPLETE and t.values is not None:
            return (0, ranks.get(t.number, 0), signs[0] * t.values[0], t.number)
        return (1 + STATE_ORDER.get(t.state, len(STATE_ORDER)), 0, 0.0, t.number)

    return sorted(trials, key=key)


def best_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The best trial (single objective) or the Pareto set; empty without COMPLETE trials."""
    if not complete_trials(study):
        return []
    if len(study.directions) == 1:
        return [study.best_trial]
    return sorted(study.best_trials, key=lambda t: t.number)


def param_names(trials: Sequence[FrozenTrial]) -> list[str]:
    """Every parameter name used by any trial, sorted."""
    return sorted({name for t in trials for name in t.params})


def state_counts(trials: Sequence[FrozenTrial]) -> dict[str, int]:
    """Number of trials per state, in the order of ``TrialState``."""
    counts = {s.name: 0 for s in TrialState}
    for t in trials:
        counts[t.state.name] += 1
    return {k: v for k, v in counts.items() if v or k in ("COMPLETE", "PRUNED", "FAIL")}


def collect_data(study: optuna.Study, objectives: list[str], importances: Importances,
                 plots: list[Plot]) -> ReportData:
    """Gather the tables' contents."""
    trials = sort_trials(study)
    return ReportData(
        study_name=study.study_name, objectives=objectives,
        directions=[direction_word(d) for d in study.directions], trials=trials,
        param_names=param_names(trials), best=best_trials(study),
        counts=state_counts(trials), importances=importances, plots=plots)


# ---------------------------------------------------------------------- formatting
def fmt_value(value: Any) -> str:
    """A compact text for a parameter, objective or metric value."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    return str(value)


def fmt_duration(trial: FrozenTrial) -> str:
    """The trial's ``duration`` user attr (else its Optuna duration) as text."""
    seconds = trial.user_attrs.get("duration")
    if seconds is None and trial.duration is not None:
        seconds = trial.duration.total_seconds()
    if seconds is None:
        return ""
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def full_reason(trial: FrozenTrial) -> str:
    """The fail or prune reason recorded on the trial, or ''."""
    key = "fail_reason" if trial.state == TrialState.FAIL else "prune_reason"
    return str(trial.user_attrs.get(key) or trial.user_attrs.get("fail_reason") or "")


def short_reason(reason: str, limit: int = REASON_CHARS) -> str:
    """The first line of a reason, cut to ``limit`` characters."""
    line = reason.strip().splitlines()[0] if reason.strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def objective_values(trial: FrozenTrial, n: int) -> list[str]:
    """The trial's objective values as text (blank when it has none)."""
    if trial.values is None:
        return [""] * n
    return [fmt_value(v) for v in trial.values]


def trial_row(trial: FrozenTrial, data: ReportData) -> list[str]:
    """One row of the trials table, as plain text cells."""
    return [str(trial.number), trial.state.name,
            *objective_values(trial, len(data.objectives)),
            *(fmt_value(trial.params.get(p)) for p in data.param_names),
            fmt_duration(trial), str(trial.user_attrs.get("enqueued") or ""),
            short_reason(full_reason(trial))]


def trial_header(data: ReportData) -> list[str]:
    """Column names of the trials table."""
    objs = [f"{o} ({d})" for o, d in zip(data.objectives, data.directions, strict=True)]
    return ["trial", "state", *objs, *data.param_names, "duration", "baseline", "reason"]


def importance_rows(imp: Importances) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the importances table: a parameter per row, an objective per
    column, most important (for the first objective) first."""
    objs = list(imp.by_objective)
    first = imp.by_objective[objs[0]]
    names = sorted({p for d in imp.by_objective.values() for p in d},
                   key=lambda p: -first.get(p, 0.0))
    rows = [[p, *(f"{imp.by_objective[o].get(p, 0.0):.3f}" for o in objs)] for p in names]
    return ["parameter", *objs], rows


# ---------------------------------------------------------------------- markdown
def md_cell(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(md_cell(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def md_best(data: ReportData) -> str:
    """The best trial (or Pareto set) section."""
    if not data.best:
        return "No complete trial yet."
    if len(data.objectives) == 1:
        t = data.best[0]
        lines = [f"Trial **{t.number}**: {data.objectives[0]} = {fmt_value(t.value)}", ""]
        lines += [f"- `{k}` = {fmt_value(v)}" for k, v in sorted(t.params.items())]
        metrics = t.user_attrs.get("metrics") or {}
        if metrics:
            lines += ["", "Metrics: " + ", ".join(f"{k} = {fmt_value(v)}"
                                                  for k, v in sorted(metrics.items()))]
        return "\n".join(lines)
    header = ["trial", *data.objectives, *data.param_names]
    rows = [[str(t.number), *objective_values(t, len(data.objectives)),
             *(fmt_value(t.params.get(p)) for p in data.param_names)] for t in data.best]
    return f"Pareto set ({len(data.best)} trials):\n\n" + md_table(header, rows)


def md_importances(imp: Importances) -> str:
    """The parameter importances section."""
    if imp.skipped:
        return f"Skipped: {imp.skipped}"
    header, rows = importance_rows(imp)
    return md_table(header, rows)


def md_plots(plots: Sequence[Plot]) -> str:
    """Links to the drawn plots and the list of skipped ones with their reasons."""
    lines = [f"![{p.title}]({p.path.name})" for p in plots if p.path is not None]
    skipped = [p for p in plots if p.skipped]
    if skipped:
        lines += ["", "Skipped plots:", ""]
        lines += [f"- {p.title}: {p.skipped}" for p in skipped]
    return "\n".join(lines)


def render_markdown(data: ReportData) -> str:
    """``summary.md``."""
    counts = ", ".join(f"{k} {v}" for k, v in data.counts.items())
    objs = ", ".join(f"{o} ({d})" for o, d in zip(data.objectives, data.directions, strict=True))
    parts = [
        f"# Study `{data.study_name}`", "",
        f"Objectives: {objs}. Trials: {len(data.trials)} ({counts}).", "",
        "## Best trial" if len(data.objectives) == 1 else "## Pareto set", "",
        md_best(data), "",
        "## Trials per state", "",
        md_table(["state", "trials"], [[k, str(v)] for k, v in data.counts.items()]), "",
        "## Parameter importances", "", md_importances(data.importances), "",
        "## Trials (best first)", "",
        md_table(trial_header(data), [trial_row(t, data) for t in data.trials]), "",
        PRUNED_NOTE, "",
        "## Plots", "", md_plots(data.plots), "",
    ]
    return "\n".join(parts)


# ---------------------------------------------------------------------- HTML
CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em;
       color: #222; background: #fff; max-width: 1400px; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.6em;
     border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; font-size: .85em; margin: .5em 0; }
th, td { border: 1px solid #ccc; padding: .25em .55em; text-align: left;
         vertical-align: top; }
th { background: #f0f2f5; position: sticky; top: 0; }
tr:nth-child(even) td { background: #fafafa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.scroll { overflow-x: auto; }
.COMPLETE { color: #1a7f37; font-weight: 600; } .PRUNED { color: #9a6700; }
.FAIL { color: #cf222e; font-weight: 600; } .RUNNING, .WAITING { color: #0969da; }
tr.best td { background: #e6f4ea; }
figure { display: inline-block; margin: .5em 1em 1em 0; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: .9em; color: #555; }
details summary { cursor: pointer; color: #555; }
pre { white-space: pre-wrap; font-size: .85em; background: #f6f8fa; padding: .5em; }
.skipped { color: #666; }
"""


def esc(text: Any) -> str:
    """HTML-escaped text."""
    return html.escape(str(text), quote=True)


def html_table(header: Sequence[str], rows: Sequence[Sequence[str]],
               row_classes: Sequence[str] | None = None) -> str:
    """An HTML table; cells are escaped, numeric-looking cells right-aligned."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        cells = "".join(html_cell(c) for c in row)
        body.append(f"<tr{cls}>{cells}</tr>")
    return (f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def html_cell(text: str) -> str:
    """One escaped ``<td>``; state names get their colour class, numbers align right."""
    if text in TrialState.__members__:
        return f'<td class="{text}">{esc(text)}</td>'
    numeric = text.replace(",", "").replace(".", "").replace("-", "").replace("e", "")
    cls = ' class="num"' if numeric.replace("+", "").isdigit() else ""
    return f"<td{cls}>{esc(text)}</td>"


def html_trials(data: ReportData) -> str:
    """The trials table, best first, with full reasons as expandable details."""
    best = {t.number for t in data.best}
    table = html_table(trial_header(data), [trial_row(t, data) for t in data.trials],
                       ["best" if t.number in best else "" for t in data.trials])
    long = [t for t in data.trials if full_reason(t).strip()
            and full_reason(t).strip() != short_reason(full_reason(t))]
    if not long:
        return table
    details = "".join(f"<details><summary>trial {t.number}: {esc(short_reason(full_reason(t)))}"
                      f"</summary><pre>{esc(full_reason(t))}</pre></details>" for t in long)
    return table + "<h3>Full reasons</h3>" + details


def html_best(data: ReportData) -> str:
    """The best trial (or Pareto set) section."""
    if not data.best:
        return "<p>No complete trial yet.</p>"
    if len(data.objectives) == 1:
        t = data.best[0]
        rows = [[k, fmt_value(v)] for k, v in sorted(t.params.items())]
        metrics = t.user_attrs.get("metrics") or {}
        rows += [[f"metric: {k}", fmt_value(v)] for k, v in sorted(metrics.items())]
        return (f"<p>Trial <b>{t.number}</b>: {esc(data.objectives[0])} = "
                f"<b>{esc(fmt_value(t.value))}</b></p>" + html_table(["", "value"], rows))
    header = ["trial", *data.objectives, *data.param_names]
    rows = [[str(t.number), *objective_values(t, len(data.objectives)),
             *(fmt_value(t.params.get(p)) for p in data.param_names)] for t in data.best]
    return f"<p>Pareto set of {len(data.best)} trials.</p>" + html_table(header, rows)


def html_importances(imp: Importances) -> str:
    """The parameter importances section."""
    if imp.skipped:
        return f'<p class="skipped">Skipped: {esc(imp.skipped)}</p>'
    header, rows = importance_rows(imp)
    return html_table(header, rows)


def data_uri(path: Path) -> str:
    """A PNG file as a ``data:image/png;base64,...`` URI."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def html_plots(plots: Sequence[Plot]) -> str:
    """The drawn plots embedded inline, then the skipped ones with reasons."""
    figs = "".join(f'<figure><img src="{data_uri(p.path)}" alt="{esc(p.title)}">'
                   f"<figcaption>{esc(p.title)}</figcaption></figure>"
                   for p in plots if p.path is not None)
    skipped = [p for p in plots if p.skipped]
    if skipped:
        items = "".join(f"<li><b>{esc(p.title)}</b>: {esc(p.skipped)}</li>" for p in skipped)
        figs += f'<h3>Skipped plots</h3><ul class="skipped">{items}</ul>'
    return figs


def render_html(data: ReportData) -> str:
    """``report.html``: one self-contained page."""
    objs = ", ".join(f"{o} ({d})" for o, d in zip(data.objectives, data.directions, strict=True))
    counts = html_table(["state", "trials"], [[k, str(v)] for k, v in data.counts.items()])
    best_title = "Best trial" if len(data.objectives) == 1 else "Pareto set"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Study {esc(data.study_name)}</title><style>{CSS}</style></head>
<body>
<h1>Study <code>{esc(data.study_name)}</code></h1>
<p>Objectives: {esc(objs)}. Trials: {len(data.trials)}.</p>
<h2>{best_title}</h2>{html_best(data)}
<h2>Trials per state</h2>{counts}
<h2>Parameter importances</h2>{html_importances(data.importances)}
<h2>Plots</h2>{html_plots(data.plots)}
<h2>Trials (best first)</h2>{html_trials(data)}<p>{esc(PRUNED_NOTE)}</p>
</body></html>
"""


# ---------------------------------------------------------------------- importances
def objective_targets(
        objectives: list[str]) -> list[tuple[str, Callable[[FrozenTrial], float]]]:
    """``(name, target)`` per objective, for Optuna functions that need one target (the
    objective's value as stored, for plots of values)."""
    return [(name, (lambda t, i=i: t.values[i])) for i, name in enumerate(objectives)]


def importance_targets(
        study: optuna.Study,
        objectives: list[str]) -> list[tuple[str, Callable[[FrozenTrial], float]]]:
    """``(name, target)`` per objective for PED-ANOVA, which takes lower targets as better
    when given a target: a maximised objective's value is negated."""
    signs = [-1.0 if d == StudyDirection.MAXIMIZE else 1.0 for d in study.directions]
    return [(name, (lambda t, i=i, s=signs[i]: s * t.values[i]))
            for i, name in enumerate(objectives)]


def compute_importances(study: optuna.Study, objectives: list[str]) -> Importances:
    """PED-ANOVA importances (Optuna's default evaluator) of reaching the best values of
    each objective (in its direction), or the reason they are skipped: fewer than 2
    complete trials, no parameter, or the evaluator raised."""
    done = complete_trials(study)
    if len(done) < 2:
        return Importances(skipped=f"needs at least 2 complete trials, have {len(done)}")
    if not param_names(done):
        return Importances(skipped="the complete trials have no parameters")
    result: dict[str, dict[str, float]] = {}
    try:
        with quiet_optuna():
            for name, target in importance_targets(study, objectives):
                imp = optuna.importance.get_param_importances(study, target=target)
                result[name] = {k: float(v) for k, v in imp.items()}
    except Exception as exc:  # noqa: BLE001  (the report never fails on importances)
        return Importances(skipped=f"importance evaluator failed: {type(exc).__name__}: {exc}")
    if not any(result.values()):
        return Importances(skipped="no parameter varies across the complete trials")
    return Importances(by_objective=result)


# ---------------------------------------------------------------------- plots
class _Collect(logging.Handler):
    """Keeps the messages Optuna logs while a plot is drawn (its "cannot plot" notes)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


class quiet_optuna:  # noqa: N801  (used like a function: ``with quiet_optuna() as log``)
    """Silence Optuna's experimental warnings and collect its log warnings."""

    def __enter__(self) -> _Collect:
        self._warn = warnings.catch_warnings()
        self._warn.__enter__()
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", UserWarning)
        self._logger = logging.getLogger("optuna")
        self._handler = _Collect()
        self._logger.addHandler(self._handler)
        self._propagate = self._logger.propagate
        self._logger.propagate = False
        optuna.logging.disable_default_handler()
        return self._handler

    def __exit__(self, *exc: object) -> None:
        optuna.logging.enable_default_handler()
        self._logger.propagate = self._propagate
        self._logger.removeHandler(self._handler)
        self._warn.__exit__(*exc)


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (never opens a window)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def axes_list(axes: Any) -> list[Any]:
    """The Axes an Optuna plot function returned (one, or an array of them)."""
    if hasattr(axes, "ravel"):
        return list(axes.ravel())
    return list(axes) if isinstance(axes, list | tuple) else [axes]


def has_content(axes: list[Any]) -> bool:
    """True when some Axes shows data (lines, markers, bars or images)."""
    return any(ax.lines or ax.collections or ax.patches or ax.images for ax in axes)


def save_axes(axes: Any, path: Path, width: float, height: float) -> None:
    """Save the figure holding ``axes`` as a PNG and close it."""
    plt = pyplot()
    fig = axes_list(axes)[0].figure
    fig.set_size_inches(width, height)
    fig.savefig(path, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)


def draw(plot: Plot, make: Callable[[], Any], out_dir: Path,
         size: tuple[float, float] = (8.0, 5.0)) -> Plot:
    """Run one Optuna plot function and save its PNG; a precondition failure, an exception
    or an empty figure marks the plot skipped with the reason."""
    plt = pyplot()
    try:
        with quiet_optuna() as log:
            axes = make()
        if not has_content(axes_list(axes)):
            plt.close(axes_list(axes)[0].figure)
            note = "; ".join(dict.fromkeys(log.messages)) or "nothing to draw"
            plot.skipped = note
            return plot
        path = out_dir / f"{plot.name}.png"
        save_axes(axes, path, *size)
        plot.path = path
    except PlotSkipped as exc:
        plot.skipped = str(exc)
    except Exception as exc:  # noqa: BLE001  (a plot never stops the report)
        plot.skipped = f"{type(exc).__name__}: {short_reason(str(exc), 200)}"
        plt.close("all")
    return plot


def require(condition: bool, reason: str) -> None:
    """Raise :class:`PlotSkipped` with ``reason`` unless ``condition``."""
    if not condition:
        raise PlotSkipped(reason)


def plot_history(study: optuna.Study, objectives: list[str]) -> Any:
    """Optimisation history of the first objective."""
    from optuna.visualization import matplotlib as vm

    require(bool(complete_trials(study)), "no complete trial")
    name, target = objective_targets(objectives)[0]
    if len(objectives) == 1:
        return vm.plot_optimization_history(study, target_name=name)
    return vm.plot_optimization_history(study, target=target, target_name=name)


def plot_importances(study: optuna.Study, objectives: list[str],
                     importances: Importances) -> Any:
    """Parameter importances (PED-ANOVA): horizontal bars, one colour per objective, drawn
    from the same numbers as the summary table (most important for the first objective on
    top)."""
    require(importances.skipped is None, importances.skipped or "")
    plt = pyplot()
    header, rows = importance_rows(importances)
    names = [row[0] for row in rows][::-1]
    objs = header[1:]
    _, ax = plt.subplots()
    height = 0.8 / len(objs)
    for j, obj in enumerate(objs):
        values = [importances.by_objective[obj].get(p, 0.0) for p in names]
        ys = [i + (len(objs) - 1 - 2 * j) * height / 2 for i in range(len(names))]
        bars = ax.barh(ys, values, height=height, label=obj)
        ax.bar_label(bars, labels=[f"{v:.2f}" if v >= 0.01 else "<0.01" for v in values],
                     padding=2, fontsize=8)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("importance of reaching the best values")
    ax.set_title("Parameter importances (PED-ANOVA)")
    ax.margins(x=0.15)
    if len(objs) > 1:
        ax.legend(loc="lower right")
    return ax


def plot_pareto(study: optuna.Study, objectives: list[str]) -> Any:
    """The Pareto front (2 or 3 objectives)."""
    from optuna.visualization import matplotlib as vm

    require(len(objectives) > 1, "single-objective study")
    require(len(objectives) <= 3, f"{len(objectives)} objectives; Optuna draws 2 or 3")
    require(bool(complete_trials(study)), "no complete trial")
    return vm.plot_pareto_front(study, target_names=objectives)


def plot_parallel(study: optuna.Study, objectives: list[str]) -> Any:
    """Parallel coordinates of the parameters against the first objective."""
    from optuna.visualization import matplotlib as vm

    done = complete_trials(study)
    require(len(done) >= 2, f"needs at least 2 complete trials, have {len(done)}")
    require(bool(param_names(done)), "the complete trials have no parameters")
    name, target = objective_targets(objectives)[0]
    if len(objectives) == 1:
        return vm.plot_parallel_coordinate(study, target_name=name)
    return vm.plot_parallel_coordinate(study, target=target, target_name=name)


def plot_learning_curves(study: optuna.Study) -> Any:
    """Intermediate values (the first objective at each evaluation) of every trial."""
    from optuna.visualization import matplotlib as vm

    reported = [t for t in study.get_trials(deepcopy=False) if t.intermediate_values]
    require(bool(reported), "no trial reported intermediate values"
            + (" (multi-objective trials do not report them)"
               if len(study.directions) > 1 else ""))
    axes = vm.plot_intermediate_values(study)
    legend = axes.get_legend()
    if legend is not None and len(reported) > LEGEND_MAX:
        legend.remove()
    return axes


def draw_plots(study: optuna.Study, objectives: list[str], importances: Importances,
               out_dir: Path) -> list[Plot]:
    """Every plot of the report, drawn or skipped."""
    n_params = len(param_names(complete_trials(study)))
    wide = (max(8.0, 1.6 * (n_params + 1)), 5.0)
    tall = (8.0, max(3.0, 0.45 * n_params + 1.5))
    return [
        draw(Plot("optimization_history", "Optimisation history"),
             lambda: plot_history(study, objectives), out_dir),
        draw(Plot("param_importances", "Parameter importances (PED-ANOVA)"),
             lambda: plot_importances(study, objectives, importances), out_dir, tall),
        draw(Plot("pareto_front", "Pareto front"),
             lambda: plot_pareto(study, objectives), out_dir, (7.0, 6.0)),
        draw(Plot("parallel_coordinate", "Parallel coordinates"),
             lambda: plot_parallel(study, objectives), out_dir, wide),
        draw(Plot("intermediate_values", "Learning curves (intermediate values)"),
             lambda: plot_learning_curves(study), out_dir),
    ]


__all__ = ["write_report", "load_study", "sort_trials", "best_trials"]
