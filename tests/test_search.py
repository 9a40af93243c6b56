"""The search end to end through a local Ray: pruning across workers, export, driver kill
and resume, worker death and retry."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import optuna
import pytest
from optuna.trial import TrialState

from atlas_search.models import build_model
from atlas_search.search.driver import Driver, SearchOptions
from atlas_search.search.factory import derive_seed
from atlas_search.search.results import export_best, open_study
from atlas_search.spec import load, loads

SPACE = """
study:
  name: {name}
  objectives: [{{metric: loss, direction: minimize}}]
  n_trials: {n}
  parallel: 2
  sampler: {{name: random, seed: 0}}
  pruner: {pruner}
  resources: {{cpu: 1}}
  enqueue: [deltanet]
task: {{name: mqar, vocab_size: 64, seq_len: 32, num_kv_pairs: 2, num_train: 400, num_test: 64}}
train: {{steps: {steps}, batch_size: 8, lr: {{choice: [3.0e-3, 1.0e-6]}}, warmup: 0,
         eval_every: 4, schedule: constant}}
model:
  d_model: 16
  n_layers: 1
  n_heads: 2
  memory:
    kind: {{choice: [linear, mlp]}}
"""
MEDIAN = "{name: median, n_startup_trials: 2, n_warmup_steps: 0}"


def space_text(name: str, n: int = 8, steps: int = 16, pruner: str = MEDIAN) -> str:
    return SPACE.format(name=name, n=n, steps=steps, pruner=pruner)


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(address="local", num_cpus=2, object_store_memory=128 * 1024 * 1024,
             include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def test_tiny_study_prunes_across_workers_and_exports(local_ray, tmp_path):
    space = loads(space_text("tiny"), "tiny.yaml")
    driver = Driver(space, SearchOptions(runs=tmp_path), listener=lambda p: None)
    progress = driver.run()
    study = open_study(tmp_path / "tiny")
    trials = study.get_trials()
    assert progress.finished == 8 == len([t for t in trials if t.state.is_finished()])
    assert trials[0].user_attrs["enqueued"] == "deltanet"
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned, "the median pruner should stop the lr=1e-6 trials"
    for t in pruned:
        assert t.intermediate_values and max(t.intermediate_values) < 16  # stopped early
    assert all(t.user_attrs.get("node") for t in trials if t.state != TrialState.FAIL)
    hosts = {t.user_attrs.get("host") for t in trials}
    assert hosts and None not in hosts
    pids = {int((tmp_path / "tiny" / "trials" / str(t.number) / "worker.pid").read_text())
            for t in trials}
    assert os.getpid() not in pids  # trials ran in Ray workers, not in the driver
    paths = export_best(study, tmp_path / "export", top=2)
    assert len(paths) == 2
    for p in paths:
        cfg = load(p)
        assert build_model(cfg) is not None
        assert "trial" in p.read_text().splitlines()[0]


def _wait(pred, timeout: float, what: str, poll: float = 0.5) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}")


def test_worker_death_is_retried(local_ray, tmp_path):
    space = loads(space_text("dying", n=2, steps=120, pruner="{name: none}"), "dying.yaml")
    pidfile = tmp_path / "dying" / "trials" / "0" / "worker.pid"
    killed = {}

    def killer():
        # kill as soon as the worker has written its pid (the trial has only just started):
        # a later kill could land after a short trial has ended, on the process's next task
        _wait(lambda: pidfile.exists() and pidfile.read_text().strip(), 120,
              "the first worker", poll=0.02)
        pid = int(pidfile.read_text())
        os.kill(pid, signal.SIGKILL)
        killed["pid"] = pid

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    progress = Driver(space, SearchOptions(runs=tmp_path), listener=lambda p: None).run()
    thread.join(5)
    assert killed, "the worker was not killed"
    study = open_study(tmp_path / "dying")
    t0 = study.trials[0]
    assert t0.state == TrialState.COMPLETE
    assert t0.user_attrs["attempts"] == 2
    assert progress.complete == 2
    assert int(pidfile.read_text()) != killed["pid"]  # the retry ran in a new worker


@pytest.mark.timeout(900)  # above the 600 s default: its own subprocess limits
def test_driver_killed_then_rerun_finishes_the_study(tmp_path):
    path = tmp_path / "kill.yaml"
    path.write_text(space_text("kill", n=8, steps=40, pruner="{name: none}"))
    cmd = [sys.executable, "-m", "atlas_search.cli", "run", str(path), "--runs", str(tmp_path)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    journal = tmp_path / "kill" / "journal.log"

    def two_done() -> bool:
        if not journal.exists():
            return False
        try:  # the journal file exists a moment before the driver has created the study
            st = optuna.load_study(study_name="kill", storage=optuna.storages.JournalStorage(
                optuna.storages.journal.JournalFileBackend(str(journal))))
        except KeyError:
            return False
        states = [t.state for t in st.get_trials(deepcopy=False)]
        return states.count(TrialState.COMPLETE) >= 2 and TrialState.RUNNING in states

    try:
        _wait(two_done, 240, "two complete trials", poll=0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started
        proc.wait(30)
    before = open_study(tmp_path / "kill")
    done_before = {t.number: t.values for t in before.trials if t.state == TrialState.COMPLETE}
    running = [t.number for t in before.trials if t.state == TrialState.RUNNING]
    assert running
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    after = open_study(tmp_path / "kill")
    by_number = {t.number: t for t in after.trials}
    for number, values in done_before.items():  # nothing completed was lost or redone
        assert by_number[number].state == TrialState.COMPLETE
        assert by_number[number].values == values
    requeued = {t.user_attrs.get("requeued_from") for t in after.trials} - {None}
    for number in running:
        assert by_number[number].state == TrialState.FAIL
        assert "re-queued" in by_number[number].user_attrs["fail_reason"]
        assert number in requeued
    complete = [t for t in after.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 8
    assert not [t for t in after.trials if t.state == TrialState.RUNNING]


@pytest.mark.parametrize("inline,sig", [(True, signal.SIGTERM), (False, signal.SIGTERM),
                                        (False, signal.SIGINT)],
                         ids=["inline-TERM", "ray-TERM", "ray-INT"])
def test_sigterm_requeues_running_trials_like_ctrl_c(tmp_path, inline, sig):
    """SIGTERM (a scheduler's stop) and Ctrl-C stop the driver at a safe point, with the
    running trials re-queued; also with Ray, whose ``ray.init`` installs its own SIGTERM
    handler (exit at once) unless the driver keeps its own."""
    path = tmp_path / "term.yaml"
    path.write_text(space_text("term", n=2, steps=100000, pruner="{name: none}"))
    cmd = [sys.executable, "-m", "atlas_search.cli", "run", str(path), "--runs",
           str(tmp_path), *(["--inline"] if inline else [])]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    journal = tmp_path / "term" / "journal.log"

    def running() -> bool:
        if not journal.exists():
            return False
        try:
            st = open_study(tmp_path / "term")
        except (FileNotFoundError, ValueError):
            return False
        return any(t.state == TrialState.RUNNING and t.user_attrs.get("driver")
                   for t in st.get_trials(deepcopy=False))

    try:
        _wait(running, 120, "a running trial", poll=0.1)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + sig.value, out + err
    last = err.strip().splitlines()[-1]  # Ray may print notes before it
    assert last.startswith(f"interrupted ({sig.name}): running trials were re-queued"), err
    trials = open_study(tmp_path / "term").trials
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert failed and all("re-queued" in t.user_attrs["fail_reason"] for t in failed)
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    assert {t.user_attrs["requeued_from"] for t in waiting} == {t.number for t in failed}


def test_resuming_with_changed_choices_is_refused(tmp_path):
    first = space_text("changed", n=2, steps=4, pruner="{name: none}")
    Driver(loads(first, "c.yaml"), SearchOptions(runs=tmp_path, executor="inline"),
           listener=lambda p: None).run()
    changed = first.replace("kind: {choice: [linear, mlp]}", "kind: {choice: [linear, mlp, "
                            "gated_mlp]}")
    with pytest.raises(ValueError, match="cannot change a choice list"):
        Driver(loads(changed, "c.yaml"), SearchOptions(runs=tmp_path, executor="inline"))
    # the same space resumes fine and the finished trials count
    again = Driver(loads(first, "c.yaml"), SearchOptions(runs=tmp_path, executor="inline"),
                   listener=lambda p: None).run()
    assert again.finished == 2


def _float_space(name: str, n: int) -> str:
    """A tiny space with a float dimension (no enqueued baseline): repeats are not chance."""
    return (space_text(name, n=n, steps=2, pruner="{name: none}")
            .replace("lr: {choice: [3.0e-3, 1.0e-6]}", "lr: {float: [1.0e-4, 1.0e-2], log: true}")
            .replace("  enqueue: [deltanet]\n", ""))


def test_resumed_run_draws_new_points_and_logs_every_event(cli, tmp_path):
    path = tmp_path / "resume.yaml"
    path.write_text(_float_space("resume", n=2))
    res = cli("run", path, "--inline", "--runs", tmp_path)  # stdout is not a terminal here
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    for event in ("trial 0 started", "trial 1 started"):
        assert lines.count(event) == 1, res.stdout  # each event once, as a plain line
    for n in (0, 1):
        assert sum(line.startswith(f"trial {n} complete: ") for line in lines) == 1
    assert "finished 2/2" in res.stdout

    first = [t.params for t in open_study(tmp_path / "resume").trials]
    space = loads(_float_space("resume", n=2), "resume.yaml")
    driver = Driver(space, SearchOptions(runs=tmp_path, executor="inline", n_trials=4),
                    listener=lambda p: None)
    assert driver.sampler_seed == derive_seed(0, 2)  # (seed, trials at start); none live
    driver.run()
    trials = open_study(tmp_path / "resume").trials
    assert len(trials) == 4 and [t.params for t in trials[:2]] == first
    assert not [t.params for t in trials[2:] if t.params in first]  # the stream moved on


def test_sampler_seed_rule(tmp_path):
    space = loads(_float_space("seeds", n=2), "seeds.yaml")
    opts = SearchOptions(runs=tmp_path, executor="inline")
    alone = Driver(space, opts)
    assert alone.sampler_seed == 0  # an empty study: the spec seed
    alone._retire()  # what run() does at its end: no longer live
    assert Driver(space, opts).sampler_seed == 0  # this one beats and stays live, so
    third = Driver(space, opts)  # the next one mixes its own id in
    assert third.sampler_seed not in (0, derive_seed(0, 0))
    assert third.sampler_seed == derive_seed(0, 0, third.driver_id)


def test_requeue_stale_marks_the_trial_not_final(cli, tmp_path):
    space = loads(_float_space("stale", n=2), "stale.yaml")
    driver = Driver(space, SearchOptions(runs=tmp_path, executor="inline"))
    dead = subprocess.Popen(["true"])
    dead.wait()
    trial = driver.study.ask()
    for key, value in (("driver", "gone"), ("driver_host", driver.host),
                       ("driver_pid", dead.pid)):
        trial.set_user_attr(key, value)
    assert driver.requeue_stale() == [trial.number]
    res = cli("status", tmp_path / "stale", "--json")
    assert res.exit_code == 0, res.output
    rows = {r["number"]: r for r in json.loads(res.stdout)["trials"]}
    assert rows[trial.number]["state"] == "FAIL" and rows[trial.number]["requeued"] is True
    waiting = [t for t in driver.study.trials if t.state == TrialState.WAITING]
    assert [t.user_attrs["requeued_from"] for t in waiting] == [trial.number]
    # a trial another, live driver has just asked for and not yet tagged is not stale
    driver.study.set_user_attr("driver:other", time.time())
    driver.study.set_user_attr("driver_proc:other", [driver.host, os.getpid()])
    fresh = driver.study.ask()
    assert driver.requeue_stale() == []
    assert driver.study.trials[fresh.number].state == TrialState.RUNNING
    # with no other driver live, its asker died before tagging it: re-queued at once
    driver.study.set_user_attr("driver_proc:other", [driver.host, dead.pid])
    assert driver.requeue_stale() == [fresh.number]
    assert driver.study.trials[fresh.number].state == TrialState.FAIL


def test_a_driver_starting_while_another_requeues_keeps_its_trial(tmp_path):
    """Driver B starts, beats and asks just before A lists the RUNNING trials: A must see B
    live (liveness is read after the listing) and leave B's not-yet-tagged trial alone."""
    space = loads(_float_space("race", n=2), "race.yaml")
    a = Driver(space, SearchOptions(runs=tmp_path, executor="inline"))
    list_trials = a.study.get_trials
    started = {}

    def b_starts_then_list(*args, **kwargs):
        if "states" in kwargs and "b" not in started:  # as A lists RUNNING trials, once
            started["b"] = Driver(space, SearchOptions(runs=tmp_path, executor="inline"))
            started["trial"] = started["b"].study.ask()
        return list_trials(*args, **kwargs)

    a.study.get_trials = b_starts_then_list
    assert a.requeue_stale() == []
    b, trial = started["b"], started["trial"]
    assert b.study.trials[trial.number].state == TrialState.RUNNING


@pytest.mark.parametrize("command", ["status", "export", "report"])
def test_sqlite_storage_is_refused_without_a_traceback(cli, tmp_path, command):
    res = cli(command, tmp_path / "x", "--storage", f"sqlite:///{tmp_path}/x.db")
    assert res.exit_code == 2, res.output
    assert res.stderr.startswith("error: storage sqlite:///") and "SQLite" in res.stderr
    assert "Traceback" not in res.output and len(res.stderr.splitlines()) == 1


def test_bad_storage_and_run_folder_exit_2_at_once(cli, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(_float_space("bad", n=2))
    start = time.perf_counter()
    res = cli("run", path, "--storage", "foo://bar", "--runs", tmp_path)
    assert res.exit_code == 2, res.output
    assert res.stderr.startswith("error: storage foo://bar: ") and "Traceback" not in res.output
    assert time.perf_counter() - start < 2.0  # no retries (they sleep >= 2 s in all)
    (tmp_path / "afile").write_text("")
    res = cli("run", path, "--runs", tmp_path / "afile", "--inline")
    assert res.exit_code == 2 and res.stderr.startswith("error: run folder "), res.output


def test_retry_race_retries_only_races():
    from atlas_search.search.factory import retry_race

    calls = []

    def boom() -> None:
        calls.append(1)
        raise RuntimeError("connection refused")

    with pytest.raises(RuntimeError):
        retry_race(boom)
    assert len(calls) == 1


@pytest.mark.parametrize("args", [
    ["run", "SPACE", "--parallel", "0"], ["run", "SPACE", "--n-trials", "0"],
    ["run", "SPACE", "--n-trials", "-1"], ["run", "SPACE", "--timeout", "-5"],
    ["run", "SPACE", "--timeout", "0"], ["export", "RUN", "--top", "0"],
    ["export", "RUN", "--top", "-2"]])
def test_counts_below_one_are_refused(cli, tmp_path, args):
    path = tmp_path / "s.yaml"
    path.write_text(_float_space("s", n=2))
    args = [{"SPACE": path, "RUN": tmp_path / "s"}.get(a, a) for a in args]
    res = cli(*args, "--runs", tmp_path) if args[0] == "run" else cli(*args)
    assert res.exit_code == 2, res.output
    assert args[2] in res.stderr and not (tmp_path / "s").exists()


def test_driver_refuses_counts_below_one(tmp_path):
    space = loads(_float_space("neg", n=2), "neg.yaml")
    for opts in ({"parallel": 0}, {"n_trials": -1}, {"timeout": 0.0}):
        with pytest.raises(ValueError, match="must be"):
            Driver(space, SearchOptions(runs=tmp_path, executor="inline", **opts))


def test_interrupt_message_starts_its_own_line(cli, tmp_path, monkeypatch):
    path = tmp_path / "int.yaml"
    path.write_text(_float_space("int", n=2))

    def interrupted(self: Driver, stop=None) -> None:
        self._event("trial 0 started")
        raise KeyboardInterrupt

    monkeypatch.setattr(Driver, "run", interrupted)
    res = cli("run", path, "--inline", "--runs", tmp_path)
    assert res.exit_code == 130, res.output
    assert "trial 0 started\ninterrupted (SIGINT): " in res.output


def test_baselines_are_queued_once_per_study(tmp_path, monkeypatch):
    """The study's creator queues the baselines; a driver that loads the study does not
    queue them again, and queues them itself only when the creator never did."""
    import atlas_search.search.driver as drv

    space = loads(space_text("once", n=2), "once.yaml")
    opts = SearchOptions(runs=tmp_path, executor="inline")
    first = Driver(space, opts)
    second = Driver(space, opts)
    queued = [t for t in second.study.trials if t.user_attrs.get("enqueued") == "deltanet"]
    assert len(queued) == 1 and first.study.user_attrs[drv.BASELINES_QUEUED] is True

    # a study whose creator stopped before queueing: the next driver waits, then queues
    monkeypatch.setattr(drv, "BASELINE_WAIT_S", 0.3)
    bare = loads(space_text("bare", n=2), "bare.yaml")
    url = str(tmp_path / "bare" / "journal.log")
    optuna.create_study(study_name="bare", storage=drv.open_storage(url), direction="minimize")
    start = time.perf_counter()
    late = Driver(bare, opts)
    assert 0.3 <= time.perf_counter() - start
    assert [t.user_attrs.get("enqueued") for t in late.study.trials] == ["deltanet"]


def test_an_impossible_task_setting_fails_its_trial_without_a_traceback(cli, tmp_path):
    """Compression over 4 symbols at length 4 has too few distinct sequences for a disjoint
    test set: each trial ends FAIL with the task's reason, not a traceback, and the study
    goes on."""
    path = tmp_path / "tiny_task.yaml"
    path.write_text(_float_space("tinytask", n=2).replace(
        "task: {name: mqar, vocab_size: 64, seq_len: 32, num_kv_pairs: 2, num_train: 400, "
        "num_test: 64}",
        "task: {name: compression, vocab_size: 4, seq_len: 4, num_train: 500, num_test: 100}"))
    res = cli("run", path, "--inline", "--runs", tmp_path)
    assert res.exit_code == 0, res.output
    trials = open_study(tmp_path / "tinytask").trials
    assert len(trials) == 2 and all(t.state == TrialState.FAIL for t in trials)
    for t in trials:
        reason = t.user_attrs["fail_reason"]
        assert reason.startswith("task: ") and "Traceback" not in reason, reason


def test_cluster_addresses_ray_would_time_out_on_fail_at_once():
    """``--address`` that is not HOST:PORT, a host that does not resolve, or a port where
    nothing listens is a ClusterError in seconds (``ray.init`` retried for minutes); a
    listening port passes, and a local Ray / ``auto`` are left to Ray."""
    import socket as sk

    from atlas_search.search.executors import ClusterError, check_address

    t0 = time.monotonic()
    for address, said in [("headnode", "expected HOST:PORT"),
                          ("no-such-host.invalid:6379", "does not resolve")]:
        with pytest.raises(ClusterError, match=said):
            check_address(address)
    with sk.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]  # bound, not listening: connections are refused
        with pytest.raises(ClusterError, match="nothing accepts connections"):
            check_address(f"127.0.0.1:{port}")
    assert time.monotonic() - t0 < 30
    with sk.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        check_address(f"127.0.0.1:{server.getsockname()[1]}")
        check_address(f"ray://127.0.0.1:{server.getsockname()[1]}")
    check_address(None)
    check_address("auto")
