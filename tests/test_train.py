"""The trainer: deterministic on CPU, Diverged on NaN, exact resume, thread setting."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from atlas_search.spec import loads
from atlas_search.train import CheckpointError, load_checkpoint, train
from atlas_search.train.schedule import lr_factor

TINY = """
name: tiny
task: {name: mqar, vocab_size: 64, seq_len: 32, num_kv_pairs: 2, num_train: 400, num_test: 64}
train: {steps: 12, batch_size: 8, lr: 3.0e-3, warmup: 2, eval_every: 4, seed: 3}
model: {preset: deltanet, d_model: 16, n_layers: 1, n_heads: 2}
"""


def _cfg(extra: str = ""):
    return loads(TINY + extra)


def test_same_seed_same_numbers_on_cpu():
    a = train(_cfg(), threads=1)
    b = train(_cfg(), threads=1)
    assert a.status == b.status == "completed"
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    assert len(a.history) == 3 and a.metrics["params"] > 0 and a.metrics["state_size"] > 0
    c = train(loads(TINY.replace("seed: 3", "seed: 4")), threads=1)
    assert [h["loss"] for h in c.history] != [h["loss"] for h in a.history]


def test_report_hook_sees_every_evaluation_and_can_stop_training():
    seen = []

    class Stop(Exception):
        pass

    def report(step, metrics):
        seen.append((step, metrics["accuracy"]))
        if step == 8:
            raise Stop

    try:
        train(_cfg(), threads=1, report=report)
    except Stop:
        pass
    assert [s for s, _ in seen] == [4, 8]


def test_nan_loss_ends_with_diverged(tmp_path):
    from atlas_search.models import build_model

    cfg = _cfg()
    model = build_model(cfg)
    calls = {"n": 0}

    def poison(module, args, output):  # training forwards only (a NaN evaluation loss
        if not module.training:        # is tested in test_train_fixes.py)
            return output
        calls["n"] += 1
        return output * float("nan") if calls["n"] >= 5 else output

    model.blocks[0].register_forward_hook(poison)
    result = train(cfg, threads=1, model=model, run_dir=tmp_path / "run")
    assert result.status == "diverged"
    assert result.step == 5 and result.reason == "training loss became nan at step 5"
    assert math.isnan(result.metrics["loss"])
    final = json.loads((tmp_path / "run" / "final.json").read_text())
    assert final["status"] == "diverged" and final["step"] == 5
    assert final["metrics"]["loss"] is None  # JSON has no NaN: written as null


def test_resume_from_checkpoint_reaches_the_same_numbers(tmp_path):
    full = train(_cfg(), threads=1, run_dir=tmp_path / "full")

    class Crash(Exception):
        pass

    def crash(step, metrics):
        if step == 8:
            raise Crash

    part = tmp_path / "part"
    try:
        train(_cfg(), threads=1, run_dir=part, report=crash)
    except Crash:
        pass
    assert load_checkpoint(part / "checkpoint.pt")["step"] == 8  # weights_only loads it
    resumed = train(_cfg(), threads=1, run_dir=part, resume=True)
    assert resumed.metrics["loss"] == full.metrics["loss"]
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    lines = (part / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [4.0, 8.0, 12.0]


def test_a_stop_between_evaluations_checkpoints_that_step_and_resumes_exactly(tmp_path):
    full = train(_cfg(), threads=1, run_dir=tmp_path / "full")
    part = tmp_path / "part"
    steps = []

    def stop() -> str | None:  # asked after every step: stop after the 6th
        steps.append(len(steps) + 1)
        return "SIGTERM" if len(steps) == 6 else None

    cut = train(_cfg(), threads=1, run_dir=part, stop=stop)
    assert (cut.status, cut.step) == ("interrupted", 6) and "SIGTERM" in cut.reason
    state = load_checkpoint(part / "checkpoint.pt")
    assert state["step"] == 6 and len(state["running"]) == 2  # steps 5 and 6
    assert not (part / "final.json").exists()
    resumed = train(_cfg(), threads=1, run_dir=part, resume=True)
    for key in ("loss", "train_loss", "accuracy"):
        assert [h[key] for h in resumed.history] == [h[key] for h in full.history], key


class _Payload:
    """Pickles as a call of ``os.makedirs``: what loading an untrusted pickle would run."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (os.makedirs, (self.target,))


def test_checkpoint_loading_runs_no_pickled_code(tmp_path):
    """Checkpoints are read with ``weights_only=True``: a file whose pickle would call a
    function is refused as a bad checkpoint, and the function never runs."""
    marker = tmp_path / "ran"
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": {}, "step": 1, "extra": _Payload(str(marker))}, path)
    try:
        load_checkpoint(path)
    except CheckpointError as exc:
        assert "cannot read checkpoint" in str(exc) and "could run code" in str(exc)
    else:
        raise AssertionError("a checkpoint with pickled code was loaded")
    assert not marker.exists()


def test_a_corrupt_checkpoint_is_not_called_unsafe(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_text("garbage\n")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert "not a PyTorch checkpoint" in str(info.value)
    assert "could run code" not in str(info.value)


def test_threads_are_set_to_the_given_cpus():
    import os

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        train(_cfg(), threads=2)
        assert torch.get_num_threads() == 2 and os.environ["OMP_NUM_THREADS"] == "2"
    finally:
        torch.set_num_threads(before)


def test_warmup_then_cosine_to_the_floor():
    spec = _cfg().train
    assert lr_factor(0, spec) == 0.5 and lr_factor(1, spec) == 1.0
    assert abs(lr_factor(spec.steps, spec) - spec.min_lr_ratio) < 1e-12
    values = [lr_factor(s, spec) for s in range(2, spec.steps)]
    assert values == sorted(values, reverse=True)


def test_weight_decay_only_on_matrices():
    from atlas_search.models import build_model
    from atlas_search.train.schedule import is_norm, param_groups

    model = build_model(_cfg())
    decay, no_decay = param_groups(model, 0.1)
    norm_ids = {id(p) for m in model.modules() if is_norm(m) for p in m.parameters()}
    assert norm_ids and all(p.ndim >= 2 and id(p) not in norm_ids for p in decay["params"])
    assert all(p.ndim < 2 or p is model.embed.weight or id(p) in norm_ids
               for p in no_decay["params"])
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
