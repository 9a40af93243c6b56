"""`atlas-search train` / `eval` end to end on a tiny config."""

from __future__ import annotations

import json

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
