"""The MAD protocol: best over the lr x wd grid per setting, mean per task, mean of tasks."""

from __future__ import annotations

import json

import pytest
from conftest import SPACES

from atlas_search.spec import loads
from atlas_search.train import loop
from atlas_search.train.loop import TrainResult
from atlas_search.train.mad_protocol import mad_instances, report_steps, run_mad

CFG = """
task: {name: mad, tasks: [in_context_recall, memorization], settings: all,
       lr_grid: [1.0e-4, 1.0e-3], wd_grid: [0.0, 0.1], max_train: 50, max_test: 16}
train: {steps: 2, batch_size: 4, warmup: 0, eval_every: 2}
model: {preset: deltanet, d_model: 16, n_layers: 1, n_heads: 2}
"""


def test_aggregation_follows_the_protocol(monkeypatch):
    cfg = loads(CFG)
    seen = []

    def fake_train(config, **kw):
        t, tr = config.task, config.train
        seen.append((t.name, t.vocab_size, tr.lr, tr.weight_decay))
        acc = (0.5 if t.name == "memorization" else 0.2) + tr.lr * 100 + tr.weight_decay
        return TrainResult("completed", 2, {"accuracy": acc, "params": 1.0, "state_size": 2.0})

    monkeypatch.setattr(loop, "train", fake_train)
    reports = []
    metrics = run_mad(cfg, report=lambda i, m: reports.append((i, m["mad_score"])))
    n_recall = 1 + 10  # baseline + MAD's one-factor changes
    n_memo = 1 + 5
    assert len(mad_instances(cfg.task)) == n_recall + n_memo == report_steps(cfg)
    assert len(seen) == (n_recall + n_memo) * 4  # every setting x the 2x2 grid
    best_recall = 0.2 + 0.1 + 0.1  # lr 1e-3, wd 0.1 is best everywhere
    best_memo = 0.5 + 0.1 + 0.1
    assert metrics["score/in_context_recall"] == pytest.approx(best_recall)
    assert metrics["score/memorization"] == pytest.approx(best_memo)
    assert metrics["mad_score"] == pytest.approx((best_recall + best_memo) / 2)
    assert [i for i, _ in reports] == list(range(1, n_recall + n_memo + 1))
    assert {v for t, v, _, _ in seen if t == "memorization"} == {256, 512, 1024, 2048, 4096, 8192}


def test_diverged_runs_score_zero(monkeypatch):
    cfg = loads(CFG.replace("settings: all", "settings: baseline"))

    def fake_train(config, **kw):
        if config.train.lr == 1e-3:
            return TrainResult("diverged", 1, {"accuracy": 0.9}, reason="nan")
        return TrainResult("completed", 2, {"accuracy": 0.3})

    monkeypatch.setattr(loop, "train", fake_train)
    assert run_mad(cfg)["mad_score"] == pytest.approx(0.3)


def test_mad_command_runs_real_training(cli, tmp_path):
    res = cli(
        "mad",
        SPACES / "presets" / "deltanet.yaml",
        "--task",
        "compression",
        "--max-train",
        "40",
        "--max-test",
        "16",
        "--set",
        "train.steps=2",
        "--set",
        "train.eval_every=2",
        "--set",
        "train.warmup=0",
        "--set",
        "model.d_model=16",
        "--threads",
        "1",
        "--out",
        tmp_path / "mad",
    )
    assert res.exit_code == 0, res.output
    final = json.loads((tmp_path / "mad" / "final.json").read_text())
    m = final["metrics"]
    assert 0 <= m["mad_score"] <= 1 and m["mad_score"] == m["score/compression"]
    assert len(list((tmp_path / "mad").glob("01-compression-lr*"))) == 6  # 3 lr x 2 wd
