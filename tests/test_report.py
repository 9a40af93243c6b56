"""The study report (atlas_search.search.report): plots, summary.md and a self-contained
report.html, built from small studies made with ask-and-tell and no training."""

from __future__ import annotations

import base64
import html
import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import optuna
import pytest
from optuna.trial import TrialState

from atlas_search.search import report
from atlas_search.search.factory import open_storage

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MIN_PNG_BYTES = 5_000
KINDS = ["linear", "atlas", "dln"]
FAIL_REASON = "diverged: loss is nan at step 200"
LONG_FAIL = ("RuntimeError: CUDA out of memory while allocating the memory state "
             "for a very long sequence length\nTraceback (most recent call last): ...")
PRUNE_REASON = "pruned at step 300"

optuna.logging.set_verbosity(optuna.logging.WARNING)


@dataclass
class Built:
    """A study, its report directory and the parsed outputs."""

    study: optuna.Study
    out: Path
    html_path: Path
    md: str
    html: str


def _suggest(trial: optuna.Trial) -> dict:
    """Suggest params named by dotted config paths and set the driver's config attr."""
    kind = trial.suggest_categorical("model.memory.kind", KINDS)
    lr = trial.suggest_float("train.lr", 1e-4, 1e-2, log=True)
    d = trial.suggest_int("model.d_model", 32, 128, step=32)
    trial.set_user_attr("config", {"model": {"memory": {"kind": kind}, "d_model": d},
                                   "train": {"lr": lr}})
    return {"kind": kind, "lr": lr, "d": d}


def _build(study: optuna.Study, out: Path, **kw) -> Built:
    path = report.write_report(study, out, **kw)
    return Built(study, out, path, (out / report.SUMMARY).read_text(), path.read_text())


def _single_study(storage: optuna.storages.BaseStorage | None = None) -> optuna.Study:
    """Maximise accuracy; 9 trials: 6 COMPLETE (one a baseline), 1 PRUNED, 2 FAIL."""
    study = optuna.create_study(study_name="single", direction="maximize", storage=storage,
                                sampler=optuna.samplers.RandomSampler(seed=0))
    study.set_user_attr("driver:abc123", 1.7e9)
    rng = random.Random(0)
    for i in range(9):
        trial = study.ask()
        p = _suggest(trial)
        trial.set_user_attr("duration", 5.0 + 20 * i)
        trial.set_user_attr("step", 400)
        if i == 0:
            trial.set_user_attr("enqueued", "atlas-small")
        acc = 0.0
        for step in (100, 200, 300, 400):
            acc = min(0.99, step / 400 * (0.3 + 0.4 * rng.random() + 0.2 * (p["kind"] == "atlas")))
            trial.report(acc, step)
        if i == 3:
            trial.set_user_attr("fail_reason", FAIL_REASON)
            study.tell(trial, state=TrialState.FAIL)
        elif i == 7:
            trial.set_user_attr("fail_reason", LONG_FAIL)
            study.tell(trial, state=TrialState.FAIL)
        elif i == 5:
            trial.set_user_attr("prune_reason", PRUNE_REASON)
            study.tell(trial, state=TrialState.PRUNED)
        else:
            trial.set_user_attr("metrics", {"accuracy": acc, "loss": 1 - acc,
                                            "params": 120_000 + i, "state_size": 4096})
            study.tell(trial, acc)
    return study


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """The single-objective study, stored in a journal file and loaded back as the CLI
    would, then reported."""
    tmp = tmp_path_factory.mktemp("single")
    journal = tmp / "runs" / "single" / "journal.log"
    _single_study(open_storage(str(journal)))
    study = report.load_study(str(journal))
    return _build(study, tmp / "report")


@pytest.fixture(scope="module")
def multi(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """Accuracy (max) and params (min), 7 COMPLETE trials and one FAIL."""
    study = optuna.create_study(study_name="multi", directions=["maximize", "minimize"],
                                sampler=optuna.samplers.RandomSampler(seed=1))
    points = [(0.9, 50_000), (0.8, 20_000), (0.7, 10_000), (0.6, 30_000), (0.85, 60_000),
              (0.5, 5_000), (0.75, 25_000)]
    for acc, params in points:
        trial = study.ask()
        _suggest(trial)
        trial.set_user_attr("metrics", {"accuracy": acc, "params": params})
        study.tell(trial, [acc, params])
    trial = study.ask()
    _suggest(trial)
    trial.set_user_attr("fail_reason", "infeasible: params 900,000 > 500,000")
    study.tell(trial, state=TrialState.FAIL)
    return _build(study, tmp_path_factory.mktemp("multi"), objective_names=["accuracy", "params"])


@pytest.fixture(scope="module")
def one(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """A study with a single COMPLETE trial and no intermediate values."""
    study = optuna.create_study(study_name="one", direction="minimize")
    trial = study.ask()
    _suggest(trial)
    study.tell(trial, 1.25)
    return _build(study, tmp_path_factory.mktemp("one"))


# ---------------------------------------------------------------------- helpers
def md_trial_rows(md: str) -> list[list[str]]:
    """Rows (cells) of the markdown trials table."""
    section = md.split("## Trials (best first)", 1)[1].split("\n## ", 1)[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    assert lines[0].startswith("| trial | state |")
    return [[c.strip() for c in ln.strip("|").split(" | ")] for ln in lines[2:]]


def html_trial_numbers(text: str) -> list[int]:
    """Trial numbers of the HTML trials table, in row order."""
    table = text.split("<h2>Trials (best first)</h2>", 1)[1]
    return [int(n) for n in re.findall(r'<tr[^>]*><td class="num">(\d+)</td><td class="'
                                       r'(?:COMPLETE|PRUNED|FAIL|RUNNING|WAITING)">', table)]


def skipped_plots(md: str) -> dict[str, str]:
    """``{title: reason}`` from the markdown's skipped plots list."""
    if "Skipped plots:" not in md:
        return {}
    block = md.split("Skipped plots:", 1)[1].split("\n## ", 1)[0]
    items = [ln[2:] for ln in block.splitlines() if ln.startswith("- ")]
    return dict(item.split(": ", 1) for item in items)


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert len(data) > MIN_PNG_BYTES, (path, len(data))


def assert_embeds_pngs(built: Built, names: list[str]) -> None:
    """Every named PNG exists, is valid, and is embedded byte for byte in the HTML."""
    uris = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', built.html)
    assert len(uris) == len(names)
    embedded = {base64.b64decode(u) for u in uris}
    for name in names:
        path = built.out / f"{name}.png"
        assert_png(path)
        assert path.read_bytes() in embedded


def assert_self_contained(text: str) -> None:
    assert text.startswith("<!DOCTYPE html>")
    assert "<style>" in text
    for banned in ("<script", "<link", "http://", "https://", "src=\"/", "src=\"file"):
        assert banned not in text, banned


# ---------------------------------------------------------------------- single objective
def test_single_objective_files_and_plots(single: Built) -> None:
    assert single.html_path == single.out / "report.html"
    assert (single.out / "summary.md").is_file()
    drawn = ["optimization_history", "param_importances", "parallel_coordinate",
             "intermediate_values"]
    assert_embeds_pngs(single, drawn)
    assert not (single.out / "pareto_front.png").exists()
    assert skipped_plots(single.md) == {"Pareto front": "single-objective study"}
    assert "<b>Pareto front</b>: single-objective study" in single.html
    assert_self_contained(single.html)
    assert matplotlib.get_backend().lower() == "agg"


def test_single_objective_markdown_order(single: Built) -> None:
    study = single.study
    rows = md_trial_rows(single.md)
    assert len(rows) == len(study.trials) == 9
    assert rows[0][0] == str(study.best_trial.number)
    states = [r[1] for r in rows]
    assert states == ["COMPLETE"] * 6 + ["PRUNED"] + ["FAIL"] * 2
    values = [float(r[2]) for r in rows[:6]]
    assert values == sorted(values, reverse=True)
    assert rows[6][-1] == PRUNE_REASON
    assert {rows[7][-1], rows[8][-1]} == {FAIL_REASON, report.short_reason(LONG_FAIL)}
    baseline = next(r for r in rows if r[0] == "0")
    assert baseline[-2] == "atlas-small"
    assert baseline[-3] == "5.0 s"


def test_single_objective_markdown_sections(single: Built) -> None:
    md = single.md
    best = single.study.best_trial
    assert f"Trial **{best.number}**" in md
    assert "| COMPLETE | 6 |" in md and "| PRUNED | 1 |" in md and "| FAIL | 2 |" in md
    imp = md.split("## Parameter importances", 1)[1].split("\n## ", 1)[0]
    for name in ("model.memory.kind", "train.lr", "model.d_model"):
        assert f"| {name} | " in imp
    assert "driver:" not in md
    table = md.split("## Trials (best first)", 1)[1]
    assert ("| trial | state | value (max) | model.d_model | model.memory.kind | train.lr | "
            "duration | baseline | reason |") in table


def test_single_objective_html(single: Built) -> None:
    text = single.html
    numbers = html_trial_numbers(text)
    assert sorted(numbers) == [t.number for t in single.study.trials]
    assert numbers[0] == single.study.best_trial.number
    assert html.escape(FAIL_REASON) in text
    assert html.escape(LONG_FAIL) in text  # the full reason, in a <details> block
    assert html.escape(PRUNE_REASON) in text
    assert '<tr class="best">' in text
    assert "Parameter importances" in text and "train.lr" in text


# ---------------------------------------------------------------------- multi objective
def test_multi_objective(multi: Built) -> None:
    assert_embeds_pngs(multi, ["optimization_history", "param_importances", "pareto_front",
                               "parallel_coordinate"])
    assert_self_contained(multi.html)
    skipped = skipped_plots(multi.md)
    assert list(skipped) == ["Learning curves (intermediate values)"]
    assert "no trial reported intermediate values" in skipped[
        "Learning curves (intermediate values)"]
    pareto = {t.number for t in multi.study.best_trials}
    assert pareto == {0, 1, 2, 5}  # (0.9,50k) (0.8,20k) (0.7,10k) (0.5,5k)
    rows = md_trial_rows(multi.md)
    assert {int(r[0]) for r in rows[:4]} == pareto
    assert rows[0][0] == "0"  # Pareto front first, then by accuracy
    assert [r[1] for r in rows][-1] == "FAIL"
    assert "## Pareto set" in multi.md and "Pareto set (4 trials)" in multi.md
    assert "accuracy (max)" in multi.md and "params (min)" in multi.md
    imp = multi.md.split("## Parameter importances", 1)[1].split("\n## ", 1)[0]
    assert "| parameter | accuracy | params |" in imp
    assert sorted(html_trial_numbers(multi.html)) == list(range(8))
    assert html.escape("infeasible: params 900,000 > 500,000") in multi.html
    assert multi.study.metric_names is None  # the report never writes to the study


# ---------------------------------------------------------------------- one trial
def test_single_trial(one: Built) -> None:
    assert_embeds_pngs(one, ["optimization_history"])
    skipped = skipped_plots(one.md)
    assert skipped == {
        "Parameter importances (PED-ANOVA)": "needs at least 2 complete trials, have 1",
        "Pareto front": "single-objective study",
        "Parallel coordinates": "needs at least 2 complete trials, have 1",
        "Learning curves (intermediate values)": "no trial reported intermediate values",
    }
    assert "Skipped: needs at least 2 complete trials, have 1" in one.md
    assert "Skipped: needs at least 2 complete trials, have 1" in one.html
    rows = md_trial_rows(one.md)
    assert [r[:3] for r in rows] == [["0", "COMPLETE", "1.25"]]
    assert html_trial_numbers(one.html) == [0]


def test_no_complete_trial(tmp_path: Path) -> None:
    study = optuna.create_study(direction="maximize")
    for reason in ("worker died: ActorDiedError", "invalid config: | pipe"):
        trial = study.ask()
        _suggest(trial)
        trial.set_user_attr("fail_reason", reason)
        study.tell(trial, state=TrialState.FAIL)
    built = _build(study, tmp_path)
    assert not list(tmp_path.glob("*.png"))
    assert "data:image/png" not in built.html
    assert len(skipped_plots(built.md)) == 5
    assert "No complete trial yet." in built.md and "No complete trial yet." in built.html
    assert "invalid config: \\| pipe" in built.md  # a pipe cannot break the table
    assert [r[0] for r in md_trial_rows(built.md)] == ["0", "1"]


# ---------------------------------------------------------------------- failing plots
def test_plot_that_raises_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from optuna.visualization import matplotlib as vm

    def boom(*args, **kwargs):
        raise RuntimeError("cannot draw this")

    monkeypatch.setattr(vm, "plot_parallel_coordinate", boom)
    built = _build(_single_study(), tmp_path)
    assert skipped_plots(built.md)["Parallel coordinates"] == "RuntimeError: cannot draw this"
    assert not (tmp_path / "parallel_coordinate.png").exists()
    assert_png(tmp_path / "optimization_history.png")


def test_empty_plot_is_skipped_with_optuna_note(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from optuna.visualization import matplotlib as vm

    def empty(*args, **kwargs):
        logging.getLogger("optuna.visualization").warning("There are no trials to plot.")
        return report.pyplot().subplots()[1]

    monkeypatch.setattr(vm, "plot_optimization_history", empty)
    built = _build(_single_study(), tmp_path)
    assert skipped_plots(built.md)["Optimisation history"] == "There are no trials to plot."
    assert not (tmp_path / "optimization_history.png").exists()


def test_importance_evaluator_failure_is_noted(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args, **kwargs):
        raise ValueError("evaluator broke")

    monkeypatch.setattr(optuna.importance, "get_param_importances", broken)
    built = _build(_single_study(), tmp_path)
    note = "importance evaluator failed: ValueError: evaluator broke"
    assert f"Skipped: {note}" in built.md
    assert skipped_plots(built.md)["Parameter importances (PED-ANOVA)"] == note


# ---------------------------------------------------------------------- helpers
def test_sort_trials_minimize_and_reasons() -> None:
    study = optuna.create_study(direction="minimize")
    for value in (3.0, 1.0, 2.0):
        trial = study.ask()
        trial.suggest_float("train.lr", 1e-4, 1e-2, log=True)
        study.tell(trial, value)
    pruned = study.ask()
    study.tell(pruned, state=TrialState.PRUNED)
    assert [t.number for t in report.sort_trials(study)] == [1, 2, 0, 3]
    assert report.short_reason("a" * 200) == "a" * 79 + "…"
    assert report.short_reason("first\nsecond") == "first"
    assert report.short_reason("") == ""


def test_load_study_needs_a_name_when_several(tmp_path: Path) -> None:
    journal = str(tmp_path / "journal.log")
    storage = open_storage(journal)
    optuna.create_study(study_name="a", storage=storage)
    optuna.create_study(study_name="b", storage=storage)
    with pytest.raises(ValueError, match="holds 2 studies"):
        report.load_study(journal)
    assert report.load_study(journal, "b").study_name == "b"


def test_pareto_ranks_peel_fronts() -> None:
    study = optuna.create_study(directions=["maximize", "minimize"])
    for values in ([0.9, 10], [0.9, 10], [0.8, 20], [0.95, 30], [0.5, 40], [0.7, 5]):
        study.tell(study.ask(), values)
    ranks = report.pareto_ranks(study.trials, [-1.0, 1.0])
    assert ranks == {0: 0, 1: 0, 2: 1, 3: 0, 4: 2, 5: 0}
    assert {n for n, r in ranks.items() if r == 0} == {t.number for t in study.best_trials}
