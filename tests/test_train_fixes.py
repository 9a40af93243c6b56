"""Trainer fixes: no decay on norm gains, non-finite gradients and evaluations end a run as
diverged with valid JSON, every S-NIAH length scored at the end, --force starts clean, and
one autocast rule for training and ``eval``."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from atlas_search.spec import loads
from atlas_search.train import load_checkpoint, loop, train
from atlas_search.train.schedule import param_groups

TINY = """
name: tiny
task: {name: mqar, vocab_size: 64, seq_len: 32, num_kv_pairs: 2, num_train: 64, num_test: 16}
train: {steps: 3, batch_size: 4, lr: 3.0e-3, warmup: 1, eval_every: 2, seed: 3, device: cpu}
model: {preset: deltanet, d_model: 16, n_layers: 1, n_heads: 2}
"""


def _strict_json(text: str):
    """Parse ``text`` as standard JSON: NaN/Infinity tokens are an error."""
    def refuse(token: str):
        raise ValueError(f"invalid JSON token {token}")

    return json.loads(text, parse_constant=refuse)


# ---------------------------------------------------------------- 1: weight decay


def test_norm_gains_are_never_decayed_but_memory_weights_are():
    from atlas_search.models import build_model

    cfg = loads(TINY.replace("preset: deltanet", "preset: atlas"))
    model = build_model(cfg, vocab_size=64)
    decay, no_decay = param_groups(model, 0.1)
    dec = {id(p) for p in decay["params"]}
    names = dict(model.named_parameters())
    gains = [p for n, p in names.items() if "out_norm" in n]
    assert gains and all(p.ndim == 2 for p in gains)  # [n_heads, head_dim]
    assert not any(id(p) in dec for p in gains)
    assert all(any(p is q for q in no_decay["params"]) for p in gains)
    for kept in ("mixer.conv.weight", "memory_weights.0", "mixer.qkv.weight", "mixer.o_proj"):
        hits = [p for n, p in names.items() if kept in n]
        assert hits and all(id(p) in dec for p in hits), kept


def test_any_norm_module_is_excluded_whatever_its_ndim():
    class HeadNorm(nn.Module):  # a project-style norm: matched by its class name
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(2, 4))

    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm((2, 4)), nn.GroupNorm(2, 4),
                          HeadNorm(), nn.Linear(4, 4, bias=False))
    decay, no_decay = param_groups(model, 0.1)
    assert [tuple(p.shape) for p in decay["params"]] == [(4, 4), (4, 4)]
    assert len(no_decay["params"]) == 1 + 2 + 2 + 1  # bias, LN w+b, GN w+b, HeadNorm


# ---------------------------------------------------------------- 2: non-finite values


@pytest.mark.parametrize("clip", ["1.0", "null"])
def test_nan_gradient_with_finite_loss_ends_diverged_without_stepping(tmp_path, monkeypatch,
                                                                      clip):
    from atlas_search.models import build_model

    cfg = loads(TINY.replace("seed: 3", f"seed: 3, grad_clip: {clip}"))
    assert cfg.train.grad_clip == (None if clip == "null" else 1.0)
    original = loop.scored_loss
    calls = {"n": 0}

    def nan_grad(model, x, y):
        loss, correct = original(model, x, y)
        calls["n"] += 1
        if calls["n"] == 3:  # the last training step: finite loss, NaN gradient
            p = next(model.parameters())
            loss = loss + (p.sum() * 0).sqrt()
        return loss, correct

    monkeypatch.setattr(loop, "scored_loss", nan_grad)
    model = build_model(cfg, vocab_size=64)
    run = tmp_path / "run"
    result = train(cfg, threads=1, model=model, run_dir=run)
    assert result.status == "diverged" and result.step == 3
    assert result.reason == "gradient norm became nan at step 3"
    assert all(torch.isfinite(p).all() for p in model.parameters())
    final = _strict_json((run / "final.json").read_text())
    assert final["status"] == "diverged" and final["step"] == 3
    assert final["metrics"]["grad_norm"] is None and final["metrics"]["step"] == 2
    saved = load_checkpoint(run / "checkpoint.pt")
    assert saved["step"] == 2 and all(torch.isfinite(v).all() for v in saved["model"].values())


def test_nan_evaluation_loss_ends_diverged_with_null_in_the_json(tmp_path):
    from atlas_search.models import build_model

    cfg = loads(TINY)
    model = build_model(cfg, vocab_size=64)

    def poison_eval(module, args, output):
        return output if module.training else output * float("nan")

    model.blocks[0].register_forward_hook(poison_eval)
    reports = []
    run = tmp_path / "run"
    result = train(cfg, threads=1, model=model, run_dir=run,
                   report=lambda s, m: reports.append(s))
    assert result.status == "diverged" and result.step == 2
    assert result.reason == "evaluation loss became nan at step 2"
    assert reports == [] and not (run / "checkpoint.pt").exists()
    lines = [_strict_json(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [2] and lines[0]["loss"] is None
    assert math.isfinite(lines[0]["train_loss"])
    final = _strict_json((run / "final.json").read_text())
    assert final["status"] == "diverged" and final["metrics"]["loss"] is None


def test_json_safe_replaces_every_non_finite_float():
    data = {"a": float("nan"), "b": [1.0, float("inf"), {"c": -float("inf")}], "d": 2}
    assert loop.json_safe(data) == {"a": None, "b": [1.0, None, {"c": None}], "d": 2}


# ---------------------------------------------------------------- 3: every S-NIAH length

NIAH = """
name: niah
task: {name: s_niah, vocab_size: 64, seq_len: 32, test_lengths: [32, 48, 64], num_train: 32,
       num_test: 8}
train: {steps: 2, batch_size: 4, lr: 3.0e-3, warmup: 1, eval_every: 1, device: cpu}
model: {preset: deltanet, d_model: 16, n_layers: 1, n_heads: 2}
"""


def test_final_evaluation_scores_every_niah_length_as_eval_names_them(tmp_path, cli):
    cfg = tmp_path / "niah.yaml"
    cfg.write_text(NIAH)
    run = tmp_path / "run"
    assert cli("train", cfg, "--out", run, "--threads", "1").exit_code == 0
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    extra = {f"test@{t}/{m}" for t in (48, 64) for m in ("loss", "accuracy")}
    assert [x["step"] for x in lines] == [1, 2]
    assert not any("/" in k for k in lines[0])  # intermediate evaluations: main set only
    assert extra <= set(lines[1]) and not any(k.startswith("test@32/") for k in lines[1])
    final = json.loads((run / "final.json").read_text())["metrics"]
    assert extra <= set(final) and {"loss", "accuracy"} <= set(final)
    ev = cli("eval", run, "--json")
    assert ev.exit_code == 0, ev.output
    sets = json.loads(ev.output)["evals"]
    assert list(sets) == ["test@32", "test@48", "test@64"]
    for name in ("test@48", "test@64"):
        for metric, value in sets[name].items():
            assert final[f"{name}/{metric}"] == pytest.approx(value, rel=1e-6)
    assert final["accuracy"] == pytest.approx(sets["test@32"]["accuracy"])


# ---------------------------------------------------------------- 4: starting over


def test_force_removes_the_old_checkpoint_final_and_mad_subfolders(tmp_path, cli,
                                                                   monkeypatch):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    run = tmp_path / "run"
    assert cli("train", cfg, "--out", run, "--threads", "1").exit_code == 0
    assert (run / "checkpoint.pt").exists()
    stale = run / "01-memorization-lr0.001-wd0"
    stale.mkdir()
    (stale / "final.json").write_text("{}")
    (run / "notes.txt").write_text("mine")
    original = loop.scored_loss

    def nan_loss(model, x, y):  # the new run diverges at step 1, before any checkpoint
        loss, correct = original(model, x, y)
        return loss * float("nan"), correct

    monkeypatch.setattr(loop, "scored_loss", nan_loss)
    res = cli("train", cfg, "--out", run, "--force", "--set", "train.lr=1.0e-3")
    assert res.exit_code == 1, res.output
    assert not (run / "checkpoint.pt").exists() and not stale.exists()
    assert (run / "notes.txt").read_text() == "mine"
    final = json.loads((run / "final.json").read_text())
    assert final["status"] == "diverged" and final["step"] == 1
    assert "lr: 0.001" in (run / "config.yaml").read_text()
    assert (run / "metrics.jsonl").read_text() == ""
    assert cli("eval", run).exit_code == 2  # no old weights scored under the new config


def test_a_mad_run_starts_from_a_clean_folder(tmp_path, monkeypatch):
    from atlas_search.train.loop import TrainResult
    from atlas_search.train.mad_protocol import run_mad, subrun_name

    cfg = loads("""
task: {name: mad, tasks: [memorization], lr_grid: [1.0e-3], wd_grid: [0.0], max_train: 50,
       max_test: 16}
train: {steps: 2, batch_size: 4, warmup: 0, eval_every: 2}
model: {preset: deltanet, d_model: 16, n_layers: 1, n_heads: 2}
""")
    run = tmp_path / "mad"
    for name in (subrun_name(7, "in_context_recall", 1e-4, 0.1), "03-memorization-lr1e-05-wd0"):
        (run / name).mkdir(parents=True)
    (run / "final.json").write_text("{}")
    for mine in ("checkpoint.pt", "config.yaml", "metrics.jsonl"):  # not the protocol's
        (run / mine).write_text("mine")
    (run / "keep").mkdir()
    monkeypatch.setattr(loop, "train", lambda config, **kw: TrainResult(
        "completed", 2, {"accuracy": 0.5}))
    run_mad(cfg, run_dir=run)
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoint.pt", "config.yaml", "keep", "metrics.jsonl"]


MAD = """task: {name: mad, tasks: [memorization], lr_grid: [1.0e-3], wd_grid: [0.0],
       max_train: 50, max_test: 16}
train: {steps: 2, batch_size: 4, warmup: 0, eval_every: 2}
model: {preset: deltanet, d_model: 16, n_layers: 1, n_heads: 2}
"""


def test_mad_never_runs_over_a_training_run_or_resumes(tmp_path, cli):
    run = tmp_path / "exp"
    run.mkdir()
    (run / "config.yaml").write_text(TINY)
    (run / "checkpoint.pt").write_text("a training run's")
    res = cli("mad", run / "config.yaml", "--out", run, "--max-train", "50")
    assert res.exit_code == 2 and "holds a training run" in res.stderr, res.output
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt", "config.yaml"]
    mad = tmp_path / "mad.yaml"
    mad.write_text(MAD)
    res = cli("train", mad, "--out", run, "--resume")
    assert res.exit_code == 2 and "cannot be resumed" in res.stderr, res.output
    assert (run / "checkpoint.pt").read_text() == "a training run's"


# ---------------------------------------------------------------- 5: autocast


def test_one_autocast_rule_bf16_only_on_cuda_unless_fp32():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert loop.use_autocast(cuda, "auto") and loop.use_autocast(cuda, "bf16")
    assert not loop.use_autocast(cuda, "fp32")
    assert not any(loop.use_autocast(cpu, p) for p in ("auto", "bf16", "fp32"))


def test_train_and_eval_both_evaluate_under_that_rule(tmp_path, cli, monkeypatch):
    import importlib

    ev_mod = importlib.import_module("atlas_search.train.evaluate")  # the package's
    # ``evaluate`` attribute is the function of the same name

    asked: list[tuple[str, str]] = []
    used: list[bool] = []
    original = ev_mod.evaluate

    def rule(device: torch.device, precision: str) -> bool:
        asked.append((device.type, precision))
        return True  # pretend: autocast on (bf16 autocast also runs on CPU)

    def spy(*args, **kw):
        used.append(kw["autocast"])
        return original(*args, **kw)

    monkeypatch.setattr(loop, "use_autocast", rule)
    monkeypatch.setattr(loop, "evaluate", spy)
    monkeypatch.setattr(ev_mod, "evaluate", spy)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY.replace("steps: 3", "steps: 2"))
    run = tmp_path / "run"
    assert cli("train", cfg, "--out", run, "--threads", "1").exit_code == 0
    assert asked == [("cpu", "auto")] and used == [True]
    res = cli("eval", run, "--json")
    assert res.exit_code == 0, res.output
    assert asked == [("cpu", "auto")] * 2 and used == [True, True]


def test_eval_json_writes_null_for_a_nan_loss(tmp_path, cli, monkeypatch):
    import importlib

    ev_mod = importlib.import_module("atlas_search.train.evaluate")
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY.replace("steps: 3", "steps: 2"))
    run = tmp_path / "run"
    assert cli("train", cfg, "--out", run, "--threads", "1").exit_code == 0
    monkeypatch.setattr(ev_mod, "evaluate", lambda *a, **k: {"loss": float("nan"),
                                                             "accuracy": 0.0})
    res = cli("eval", run, "--json")
    assert res.exit_code == 0, res.output
    assert _strict_json(res.stdout)["evals"]["test"] == {"loss": None, "accuracy": 0.0}
