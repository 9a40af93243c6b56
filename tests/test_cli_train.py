"""`atlas-search train` / `eval` end to end on a tiny config."""

from __future__ import annotations

import json
from pathlib import Path

TINY = """name: tiny
task: {name: mqar, vocab_size: 64, seq_len: 32, num_kv_pairs: 2, num_train: 300, num_test: 64}
train: {steps: 8, batch_size: 8, lr: 3.0e-3, warmup: 2, eval_every: 4}
model: {preset: gated_deltanet, d_model: 16, n_layers: 1, n_heads: 2}
"""


def test_train_writes_the_run_folder_and_eval_reads_it(cli, tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    run = tmp_path / "run"
    res = cli("train", cfg, "--out", run, "--threads", "1", "--set", "train.steps=8")
    assert res.exit_code == 0, res.output
    assert "completed at step 8" in res.output
    for name in ("config.yaml", "metrics.jsonl", "final.json", "checkpoint.pt"):
        assert (run / name).exists(), name
    final = json.loads((run / "final.json").read_text())
    assert final["status"] == "completed" and 0 <= final["metrics"]["accuracy"] <= 1
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2

    again = cli("train", cfg, "--out", run)
    assert again.exit_code == 2 and "--resume" in again.stderr  # nothing overwritten

    ev = cli("eval", run, "--json", "--set", "task.test_seq_len=64",
             "--set", "task.test_num_kv_pairs=8")
    assert ev.exit_code == 0, ev.output
    payload = json.loads(ev.output)
    assert payload["step"] == 8 and set(payload["evals"]["test"]) >= {"loss", "accuracy"}


def test_train_rejects_a_space_and_bad_overrides(cli, tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    res = cli("train", cfg, "--set", "model.memory.kind=mpl")
    assert res.exit_code == 2 and "did you mean 'mlp'" in res.stderr
    space = tmp_path / "space.yaml"
    space.write_text(TINY + "study: {name: s}\n")
    res = cli("train", space)
    assert res.exit_code == 2 and "search space" in res.stderr


def _error(res) -> str:
    """The one-line error of a refused command (exit 2, no traceback)."""
    assert res.exit_code == 2, res.output
    assert isinstance(res.exception, SystemExit), res.exception
    return " ".join(res.stderr.split())


def test_changed_configs_and_broken_checkpoints_exit_2(cli, tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    run = tmp_path / "run"
    assert cli("train", cfg, "--out", run, "--set", "train.steps=4").exit_code == 0
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [4] and isinstance(steps[0], int)

    msg = _error(cli("eval", run, "--set", "model.d_model=32"))
    assert "--set model.d_model=32" in msg and "only task.*" in msg
    msg = _error(cli("eval", run, "--set", "task.vocab_size=128"))
    assert "does not match the config with these --set changes" in msg and "(64, 16)" in msg

    msg = _error(cli("train", cfg, "--out", run, "--resume", "--set", "train.lr=0.01",
                     "--set", "train.seed=3", "--set", "model.d_model=32"))
    assert "cannot resume" in msg and "model.d_model, train.lr, train.seed;" in msg
    assert "# resolved config" in (run / "config.yaml").read_text()
    assert "lr: 0.003" in (run / "config.yaml").read_text()  # kept as it was
    assert "beyond train.steps 3" in _error(
        cli("train", cfg, "--out", run, "--resume", "--set", "train.steps=3"))
    res = cli("train", cfg, "--out", run, "--resume", "--set", "train.steps=8")  # extend
    assert res.exit_code == 0 and "completed at step 8" in res.output, res.output

    data = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    for args in (("eval", run), ("train", cfg, "--out", run, "--resume")):
        assert "cannot read checkpoint" in _error(cli(*args))

    msg = _error(cli("train", cfg, "--out", cfg))
    assert "a file is in the way" in msg

    fresh = cli("train", cfg, "--out", tmp_path / "fresh", "--resume", "--set", "train.steps=3")
    assert fresh.exit_code == 0, fresh.output  # --resume on an empty folder starts, saying so
    assert "holds no checkpoint to resume; starting a new run" in fresh.stderr


def test_task_settings_the_generator_cannot_produce_exit_2(cli, tmp_path):
    cfg = tmp_path / "comp.yaml"
    cfg.write_text("task: {name: compression, vocab_size: 4, seq_len: 4, num_train: 500, "
                   "num_test: 100}\ntrain: {steps: 2, batch_size: 4, warmup: 0}\n"
                   "model: {preset: deltanet, d_model: 16, n_layers: 1, n_heads: 2}\n")
    msg = _error(cli("train", cfg, "--out", tmp_path / "run"))
    assert f"{cfg}: task: compression: every test sequence" in msg and "only 27 distinct" in msg


def test_command_line_errors_name_the_flag(cli, tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    msg = _error(cli("train", cfg, "--set", "train.steps=abc"))
    assert "--set train.steps=abc: train.steps:" in msg and "tiny.yaml:3" not in msg
    msg = _error(cli("mad", cfg, "--task", "memorization", "--task", "compresion"))
    assert "--task 'compresion'" in msg and "did you mean 'compression'" in msg
    for bad in ("0", "-5"):
        assert cli("mad", cfg, "--max-train", bad).exit_code == 2


def test_sigterm_checkpoints_the_step_and_the_printed_command_resumes_it(tmp_path):
    """A scheduler's SIGTERM (SLURM preemption) ends `train` after the current step with a
    checkpoint of it, exit 143 and the command that continues; continuing reaches the
    numbers of an uninterrupted run (constant lr: the extended length changes nothing)."""
    import os
    import shlex
    import signal
    import subprocess
    import sys
    import time

    from atlas_search.train import load_checkpoint

    cfg = tmp_path / "long.yaml"
    cfg.write_text(TINY.replace("warmup: 2, eval_every: 4",
                                "warmup: 0, eval_every: 100000, schedule: constant"))
    run = tmp_path / "run"
    def cmd(out: Path, steps: int) -> list[str]:
        return [sys.executable, "-m", "atlas_search.cli", "train", str(cfg), "--out", str(out),
                "--threads", "1", "--set", f"train.steps={steps}"]

    proc = subprocess.Popen(cmd(run, 1000000), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        end = time.time() + 120
        while not (run / "config.yaml").exists() and time.time() < end:
            time.sleep(0.05)
        time.sleep(0.5)  # some steps
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, out + err
    step = load_checkpoint(run / "checkpoint.pt")["step"]
    assert step >= 1 and not (run / "final.json").exists()
    assert f"interrupted by SIGTERM at step {step}:" in err and "Traceback" not in err
    again = shlex.split(err.split("continue with: ", 1)[1].strip())
    assert again[:2] == ["atlas-search", "train"] and again[-3:] == ["--resume", "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "atlas_search.cli", *again[1:], "--set",
                           f"train.steps={step + 3}"], capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    whole = subprocess.run(cmd(tmp_path / "whole", step + 3), capture_output=True, text=True,
                           timeout=300, env=env)
    assert whole.returncode == 0, whole.stdout + whole.stderr
    a = json.loads((run / "final.json").read_text())["metrics"]
    b = json.loads((tmp_path / "whole" / "final.json").read_text())["metrics"]
    assert (a["loss"], a["train_loss"]) == (b["loss"], b["train_loss"])
