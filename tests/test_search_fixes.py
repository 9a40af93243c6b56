"""Regression tests for the search driver and its commands: exhausted grids, importances of
maximised objectives, refused resumes, output folders, infeasible points, liveness, the
timeout override, non-finite objectives, read-only commands, study names, renamed run
folders, the ``next:`` hint, export errors and the inline heartbeat. Trials run inline; most
replace training by a stub (``fake_trials``) so each test takes a few seconds."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import SPACES
from optuna.trial import TrialState

import atlas_search.search.driver as drv
from atlas_search.models import build_model, summarize
from atlas_search.search import report
from atlas_search.search.driver import Driver, SearchOptions
from atlas_search.search.factory import derive_seed, open_storage
from atlas_search.search.results import open_study
from atlas_search.spec import SpecError, load, loads

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACE = """
study:
  name: {name}
  objectives: [{{metric: {metric}, direction: {direction}}}]
  n_trials: {n}
  sampler: {sampler}
{extra}
task: {{name: mqar, vocab_size: 64, seq_len: 32, num_kv_pairs: 2, num_train: 400, num_test: 64}}
train: {{steps: 2, batch_size: 8, lr: {lr}, warmup: 0, eval_every: 2, schedule: constant}}
model: {{d_model: {d_model}, n_layers: 1, n_heads: 2, memory: {{kind: linear}}}}
"""
LR_CHOICE = "{choice: [3.0e-3, 1.0e-6]}"


def space_text(name: str, n: int = 2, sampler: str = "{name: random, seed: 0}",
               metric: str = "loss", direction: str = "minimize", extra: str = "",
               lr: str = LR_CHOICE, d_model: str = "16") -> str:
    """A tiny space; with the default lr choice a grid has 2 points."""
    return SPACE.format(name=name, n=n, sampler=sampler, metric=metric, direction=direction,
                        extra=extra, lr=lr, d_model=d_model)


def write_space(tmp_path: Path, name: str, **kw: Any) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(space_text(name, **kw))
    return path


def outcome(values: list[float] | None, sleep: float = 0.0,
            metrics: dict[str, float] | None = None) -> dict[str, Any]:
    """What ``run_trial`` returns for a complete trial."""
    return {"state": "complete", "values": values, "metrics": metrics or {"loss": 1.0},
            "step": 2, "reason": None, "host": "test", "pid": os.getpid(), "duration": sleep}


@pytest.fixture
def fake_trials(monkeypatch: pytest.MonkeyPatch) -> Callable[..., list[Any]]:
    """Replace training in inline trials: ``fake_trials(make)`` where ``make(job)`` returns
    the outcome (default: loss = the trial number + 1). Returns the list of jobs run."""
    import atlas_search.search.executors as ex

    def install(make: Callable[[Any], dict[str, Any]] | None = None) -> list[Any]:
        jobs: list[Any] = []

        def run(job: Any, stop: Any = None) -> dict[str, Any]:
            jobs.append(job)
            return make(job) if make else outcome([float(job.number + 1)])

        monkeypatch.setattr(ex, "run_trial", run)
        return jobs

    return install


def inline(tmp_path: Path, **kw: Any) -> SearchOptions:
    return SearchOptions(runs=tmp_path, executor="inline", **kw)


def one_error_line(res: Any) -> str:
    """The command's stderr, checked to be one ``error:`` line and no traceback."""
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


# ---------------------------------------------------------------------- H1 exhausted grids
@pytest.mark.parametrize("sampler", ["grid", "brute_force"])
@pytest.mark.parametrize("n", [2, 5])
def test_an_exhausted_grid_ends_cleanly_and_a_rerun_at_once(cli, tmp_path, fake_trials,
                                                             sampler, n):
    path = write_space(tmp_path, "g", n=n, sampler=f"{{name: {sampler}, seed: 0}}")
    jobs = fake_trials()
    res = cli("run", path, "--inline", "--runs", tmp_path)
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output
    assert "exhausted after 2 trials" in res.stdout
    assert f"finished 2/{n}: complete 2" in res.stdout
    trials = open_study(tmp_path / "g").trials
    # the last trial's tell raised inside the sampler, yet its state was stored
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert sorted(t.params["train.lr"] for t in trials) == [1e-6, 3e-3]  # both points
    assert len(jobs) == 2

    rerun = cli("run", path, "--inline", "--runs", tmp_path)
    assert rerun.exit_code == 0, rerun.output
    assert "exhausted after 2 trials" in rerun.stdout
    assert len(jobs) == 2 and len(open_study(tmp_path / "g").trials) == 2  # nothing asked


@pytest.mark.parametrize("sampler", ["grid", "brute_force"])
def test_a_grid_with_every_point_in_flight_is_not_asked_again(cli, tmp_path, fake_trials,
                                                             sampler):
    """parallel > points left: Optuna's samplers would hand out a running point again."""
    path = write_space(tmp_path, "gp", n=5, sampler=f"{{name: {sampler}, seed: 0}}")
    jobs = fake_trials()
    res = cli("run", path, "--inline", "--runs", tmp_path, "--parallel", "3")
    assert res.exit_code == 0, res.output
    assert "exhausted after 2 trials" in res.stdout
    trials = open_study(tmp_path / "gp").trials
    assert len(trials) == 2 and len(jobs) == 2
    assert sorted(t.params["train.lr"] for t in trials) == [1e-6, 3e-3]


# ---------------------------------------------------------------------- H2 importances
def _decided_study(direction: str) -> optuna.Study:
    """Only ``top`` decides the best values (in ``direction``); only ``bottom`` decides the
    worst ones."""
    study = optuna.create_study(direction=direction,
                                sampler=optuna.samplers.RandomSampler(seed=0))
    rng = random.Random(0)
    sign = 1.0 if direction == "maximize" else -1.0
    for _ in range(120):
        trial = study.ask()
        top = trial.suggest_float("top", 0.0, 1.0)
        bottom = trial.suggest_float("bottom", 0.0, 1.0)
        good = (top > 0.85) - (bottom > 0.85)
        study.tell(trial, sign * (good + 0.01 * rng.random()))
    return study


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_importances_follow_the_objective_direction(direction):
    study = _decided_study(direction)
    imp = report.compute_importances(study, ["score"])
    assert imp.skipped is None
    by = imp.by_objective["score"]
    assert by["top"] > 3 * by["bottom"], by
    # the plot shows the table's numbers, in its order
    ax = report.plot_importances(study, ["score"], imp)
    widths = {tick.get_text(): bar.get_width()
              for tick, bar in zip(ax.get_yticklabels(), ax.patches, strict=True)}
    assert widths == pytest.approx(by)
    assert ax.get_yticklabels()[-1].get_text() == "top"  # most important on top
    report.pyplot().close("all")


def test_importances_of_a_multi_objective_study_are_signed_per_objective():
    study = optuna.create_study(directions=["maximize", "minimize"],
                                sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(120):
        trial = study.ask()
        a = trial.suggest_float("a", 0.0, 1.0)
        b = trial.suggest_float("b", 0.0, 1.0)
        # objective 0 (max) is high only when a > 0.85 and low when b > 0.85;
        # objective 1 (min) is low only when b > 0.85 and high when a > 0.85
        study.tell(trial, [(a > 0.85) - (b > 0.85), (a > 0.85) - (b > 0.85)])
    imp = report.compute_importances(study, ["acc", "params"])
    assert imp.by_objective["acc"]["a"] > imp.by_objective["acc"]["b"]
    assert imp.by_objective["params"]["b"] > imp.by_objective["params"]["a"]
    ax = report.plot_importances(study, ["acc", "params"], imp)
    assert len(ax.patches) == 4
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["acc", "params"]
    report.pyplot().close("all")


# ---------------------------------------------------------------------- M1, L2 resume checks
def test_resuming_with_another_metric_is_refused_and_keeps_space_yaml(cli, tmp_path,
                                                                       fake_trials):
    fake_trials()
    path = write_space(tmp_path, "m", n=1)
    assert cli("run", path, "--inline", "--runs", tmp_path).exit_code == 0
    first = (tmp_path / "m" / "space.yaml").read_text()
    path.write_text(space_text("m", n=1, metric="params"))  # same direction (minimize)
    line = one_error_line(cli("run", path, "--inline", "--runs", tmp_path))
    assert "['loss']" in line and "['params']" in line
    assert (tmp_path / "m" / "space.yaml").read_text() == first
    assert open_study(tmp_path / "m").user_attrs["objectives"] == ["loss"]
    assert len(open_study(tmp_path / "m").trials) == 1


# ---------------------------------------------------------------------- M2 outputs, kinds
@pytest.mark.parametrize("command", ["export", "report"])
def test_an_unusable_out_folder_exits_2(cli, tmp_path, fake_trials, command):
    fake_trials()
    path = write_space(tmp_path, "o", n=1)
    assert cli("run", path, "--inline", "--runs", tmp_path).exit_code == 0
    afile = tmp_path / "afile"
    afile.write_text("keep")
    line = one_error_line(cli(command, tmp_path / "o", "--out", afile))
    assert str(afile) in line and "not a folder" in line
    line = one_error_line(cli(command, tmp_path / "o", "--out", afile / "sub"))
    assert str(afile / "sub") in line and "cannot create" in line
    assert afile.read_text() == "keep"
    assert cli(command, tmp_path / "o", "--out", tmp_path / "fine").exit_code == 0


def test_a_parameter_of_another_kind_is_refused_before_any_trial(cli, tmp_path, fake_trials):
    fake_trials()
    widths = "{choice: [16, 32]}"
    path = write_space(tmp_path, "k", n=1, d_model=widths)
    assert cli("run", path, "--inline", "--runs", tmp_path).exit_code == 0
    path.write_text(space_text("k", n=2, d_model=widths, lr="{float: [1.0e-4, 1.0e-2]}"))
    line = one_error_line(cli("run", path, "--inline", "--runs", tmp_path))
    assert "train.lr" in line and "choice [0.003, 1e-06]" in line and "float [" in line
    path.write_text(space_text("k", n=2, d_model="{int: [16, 32], step: 16}"))
    line = one_error_line(cli("run", path, "--inline", "--runs", tmp_path))
    assert "model.d_model" in line and "int [16, 32] step 16" in line
    trials = open_study(tmp_path / "k").trials
    assert [t.state for t in trials] == [TrialState.COMPLETE]  # none asked, none RUNNING


# ---------------------------------------------------------------------- M3 infeasible points
def _params(d_model: int) -> int:
    space = loads(space_text("p", d_model=str(d_model), lr="3.0e-3"), "p.yaml")
    study = optuna.create_study()
    return summarize(build_model(space.sample(study.ask())), 32)["params"]


def test_infeasible_points_do_not_count_toward_n_trials(tmp_path, fake_trials):
    jobs = fake_trials()
    limit = (_params(16) + _params(32)) // 2
    space = loads(space_text("inf", n=3, d_model="{choice: [16, 32]}",
                             extra=f"  constraints: {{max_params: {limit}}}"), "inf.yaml")
    progress = Driver(space, inline(tmp_path)).run()
    trials = open_study(tmp_path / "inf").trials
    infeasible = [t for t in trials if t.user_attrs.get("infeasible")]
    assert infeasible, "seed 0 draws d_model 32 at least once"
    assert all(t.state == TrialState.FAIL and t.params["model.d_model"] == 32
               and t.user_attrs["fail_reason"].startswith("infeasible: ") for t in infeasible)
    assert progress.complete == progress.finished == 3 == len(jobs)
    assert progress.infeasible == len(infeasible) and progress.stopped is None


def test_constraints_that_reject_every_point_stop_the_run(cli, tmp_path, fake_trials,
                                                          monkeypatch):
    monkeypatch.setattr(drv, "MAX_INFEASIBLE_IN_A_ROW", 5)
    jobs = fake_trials()
    path = write_space(tmp_path, "tight", n=2, extra="  constraints: {max_params: 10}")
    res = cli("run", path, "--inline", "--runs", tmp_path)
    line = one_error_line(res)
    assert "constraints" in line and "5 points in a row" in line and str(path) in line
    assert "infeasible 5 (not counted)" in res.stdout
    assert not jobs
    status = cli("status", tmp_path / "tight", "--json")
    rows = json.loads(status.stdout)["trials"]
    assert len(rows) == 5 and all(r["state"] == "FAIL" and not r["requeued"] for r in rows)


def _configs() -> list[Any]:
    """A few sampled configs of the repository's spaces."""
    out = []
    for path in sorted(SPACES.glob("*.yaml")):
        space = load(path)
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
        for _ in range(2):
            try:
                out.append(space.sample(study.ask()))
            except Exception:  # noqa: BLE001  (an invalid point: the driver fails it)
                continue
    return out


def test_constraint_summary_on_the_meta_device_matches_the_cpu_model():
    configs = _configs()
    assert len(configs) >= 6
    for config in configs:
        cpu = summarize(build_model(config), config.task.seq_len)
        meta = drv.constraint_summary(config)
        assert meta == {"params": cpu["params"], "state_size": cpu["state_size"]}, config.name


# ---------------------------------------------------------------------- L1 liveness
def test_a_dead_driver_on_this_host_does_not_change_the_seed(tmp_path):
    space = loads(space_text("live", n=2), "live.yaml")
    first = Driver(space, inline(tmp_path))
    first.study.ask()  # one trial in the study: seeds derive from (seed, 1)
    first._retire()
    dead = subprocess.Popen(["true"])
    dead.wait()
    first.study.set_user_attr("driver:deadhere", time.time())  # a fresh beat, dead process
    first.study.set_user_attr(f"{drv.PROC}deadhere", [first.host, dead.pid])
    second = Driver(space, inline(tmp_path))
    assert second.sampler_seed == derive_seed(0, 1)
    second._retire()
    # a fresh beat from another host cannot be checked: that driver counts as live
    first.study.set_user_attr("driver:elsewhere", time.time())
    first.study.set_user_attr(f"{drv.PROC}elsewhere", ["another-host", dead.pid])
    third = Driver(space, inline(tmp_path))
    assert third.sampler_seed == derive_seed(0, 1, third.driver_id)


# ---------------------------------------------------------------------- L3 timeout
def test_timeout_option_overrides_the_spec_timeout(tmp_path, fake_trials):
    fake_trials(lambda job: (time.sleep(0.4), outcome([1.0], 0.4))[1])
    space = loads(space_text("to", n=3, extra="  timeout: 0.2"), "to.yaml")
    assert Driver(space, inline(tmp_path, timeout=60)).run().complete == 3  # longer: wins
    space = loads(space_text("to2", n=3, extra="  timeout: 0.2"), "to2.yaml")
    assert Driver(space, inline(tmp_path)).run().complete == 1  # the spec's applies


# ---------------------------------------------------------------------- L4, L5 non-finite
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_a_non_finite_objective_fails_its_trial_with_a_reason(tmp_path, fake_trials, value):
    # finite from the third trial on: a run that does not count them goes on to those
    jobs = fake_trials(lambda job: outcome([value if job.number < 2 else 1.0]))
    space = loads(space_text("nf", n=2), "nf.yaml")
    progress = Driver(space, inline(tmp_path)).run()
    assert progress.failed == progress.finished == 2 == len(jobs)  # counted: the run ends
    for t in open_study(tmp_path / "nf").trials:
        assert t.state == TrialState.FAIL and t.user_attrs["final"] is True
        assert t.user_attrs["fail_reason"] == f"objective loss is {value}"


def test_status_json_is_valid_json_with_nan_metrics(cli, tmp_path, fake_trials):
    fake_trials(lambda job: outcome([1.0], metrics={"loss": math.nan, "accuracy": math.inf}))
    Driver(loads(space_text("js", n=1), "js.yaml"), inline(tmp_path)).run()
    res = cli("status", tmp_path / "js", "--json")
    assert res.exit_code == 0, res.output

    def strict(name: str) -> None:
        raise AssertionError(f"{name} in JSON")

    payload = json.loads(res.stdout, parse_constant=strict)
    assert payload["trials"][0]["metrics"] == {"loss": None, "accuracy": None}


# ---------------------------------------------------------------------- L6 read only
@pytest.mark.parametrize("command", ["status", "export", "report"])
@pytest.mark.parametrize("prefix", ["", "journal://"])
def test_read_commands_refuse_a_missing_journal_and_create_nothing(cli, tmp_path, command,
                                                                    prefix):
    missing = tmp_path / "nowhere" / "journal.log"
    line = one_error_line(cli(command, tmp_path / "x", "--storage", f"{prefix}{missing}"))
    assert f"no journal at {missing}" in line
    assert not (tmp_path / "nowhere").exists() and not (tmp_path / "x").exists()



@pytest.mark.parametrize("command", ["status", "export", "report"])
def test_read_commands_say_a_damaged_journal_is_damaged(cli, tmp_path, command):
    run = tmp_path / "bad"
    run.mkdir()
    (run / "journal.log").write_text('{"op_code": 99}\n')
    line = one_error_line(cli(command, run))
    assert line.startswith(f"error: storage {run / 'journal.log'}: the journal cannot be "
                           "replayed (a damaged file"), line
    assert line.count("storage ") == 1


# ---------------------------------------------------------------------- L7 study names
@pytest.mark.parametrize("name", ["grp/sub", "..", ".hidden", "a b", "x\\\\y"])
def test_path_unsafe_study_names_are_refused_where_written(name):
    text = space_text("PLACEHOLDER").replace("name: PLACEHOLDER", f'name: "{name}"')
    with pytest.raises(SpecError) as info:
        loads(text, "s.yaml")
    (issue,) = info.value.issues
    rendered = issue.render("s.yaml")
    assert "study.name" in rendered and "s.yaml:3:" in rendered, rendered


def test_safe_names_pass_and_a_defaulted_unsafe_name_is_refused_by_the_driver(tmp_path):
    assert loads(space_text("a.b-c_1"), "s.yaml").study.name == "a.b-c_1"
    unnamed = space_text("x").replace("  name: x\n", "")
    space = loads(unnamed, "s.yaml", default_name="my space")
    with pytest.raises(ValueError, match="study name 'my space'"):
        Driver(space, inline(tmp_path))
    assert not (tmp_path / "my space").exists()


# ---------------------------------------------------------------------- L8 renamed folders
def test_a_renamed_run_folder_opens_its_only_study(cli, tmp_path, fake_trials):
    fake_trials()
    Driver(loads(space_text("orig", n=1), "orig.yaml"), inline(tmp_path)).run()
    (tmp_path / "orig").rename(tmp_path / "renamed")
    res = cli("status", tmp_path / "renamed", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["study"] == "orig"
    assert res.stderr.count("\n") == 1 and "holds one study, 'orig'" in res.stderr
    # with two studies in the journal the folder's name must pick one
    optuna.create_study(study_name="other",
                        storage=open_storage(str(tmp_path / "renamed" / "journal.log")))
    line = one_error_line(cli("status", tmp_path / "renamed"))
    assert "no study named 'renamed'" in line and "orig" in line and "other" in line


# ---------------------------------------------------------------------- L9, L10 hints, export
def test_run_with_storage_hints_status_with_that_storage(cli, tmp_path, fake_trials):
    fake_trials()
    journal = tmp_path / "db" / "shared.log"
    path = write_space(tmp_path, "hint", n=1)
    res = cli("run", path, "--inline", "--runs", tmp_path, "--storage", journal)
    assert res.exit_code == 0, res.output
    hint = next(line for line in res.stdout.splitlines() if line.startswith("next: "))
    assert hint == (f"next: atlas-search status {tmp_path / 'hint'} --storage {journal} | "
                    f"atlas-search export {tmp_path / 'hint'} --storage {journal}")
    status = cli("status", tmp_path / "hint", "--storage", journal)  # the hint works
    assert status.exit_code == 0, status.output


def test_export_without_a_complete_trial_exits_2_naming_study_and_folder(cli, tmp_path,
                                                                       fake_trials):
    fake_trials(lambda job: {**outcome(None), "state": "fail", "reason": "boom"})
    Driver(loads(space_text("nothing", n=1), "n.yaml"), inline(tmp_path)).run()
    line = one_error_line(cli("export", tmp_path / "nothing"))
    assert "'nothing'" in line and str(tmp_path / "nothing") in line
    assert "no complete trial" in line
    assert not (tmp_path / "nothing" / "export").exists()


# ---------------------------------------------------------------------- L11 heartbeat
def test_the_heartbeat_goes_on_during_a_long_inline_trial(tmp_path, fake_trials, monkeypatch):
    monkeypatch.setattr(drv, "HEARTBEAT_S", 0.05)
    space = loads(space_text("beat", n=1), "beat.yaml")
    driver = Driver(space, inline(tmp_path))
    url = str(tmp_path / "beat" / "journal.log")
    seen: list[float] = []

    def beat() -> float:  # read as another driver would: a fresh look at the storage
        study = optuna.load_study(study_name="beat", storage=open_storage(url))
        return float(study.user_attrs[f"driver:{driver.driver_id}"])

    def long_trial(job: Any) -> dict[str, Any]:
        seen.append(beat())
        time.sleep(2.0)
        seen.append(beat())
        return outcome([1.0], 2.0)

    fake_trials(long_trial)
    driver.run()
    assert seen[1] - seen[0] >= 0.5, seen  # beats landed while the trial blocked the loop
    assert beat() == 0.0  # retired at the end: the thread stopped before that
