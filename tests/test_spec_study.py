"""The study block's storage URL and seeds are checked at `validate`, as `run` would."""

from __future__ import annotations

import pytest

SPACE = "study: {{name: s, {field}}}\nmodel:\n  memory:\n    window: {{choice: [1, 2]}}\n"


@pytest.mark.parametrize(("field", "needles"), [
    ("storage: 'sqlite:///x.db'", ["study.storage", "SQLite breaks with parallel writers"]),
    ("storage: 'bogus://x'", ["study.storage", "unknown storage scheme 'bogus'"]),
    ("seed: -1", ["study.seed", "greater than or equal to 0"]),
    ("seed: 4294967296", ["study.seed", "less than or equal to 4294967295"]),
    ("sampler: {name: tpe, seed: 4294967296}", ["study.sampler.seed", "4294967295"]),
])
def test_unusable_storage_or_seed_is_refused(tmp_path, cli, field, needles):
    path = tmp_path / "bad.yaml"
    path.write_text(SPACE.format(field=field))
    res = cli("validate", path)
    assert res.exit_code == 2, res.output
    flat = " ".join(res.stderr.split())
    assert "Traceback" not in res.output + res.stderr
    for needle in needles:
        assert needle in flat, f"{needle!r} not in:\n{res.stderr}"
    assert "bad.yaml:1:" in res.stderr


@pytest.mark.parametrize("field", [
    "storage: 'postgresql+psycopg://user@dbhost/atlas'", "storage: 'journal:///tmp/j.log'",
    "storage: runs/x/journal.log", "seed: 4294967295"])
def test_usable_storage_and_seed_pass(tmp_path, cli, field):
    path = tmp_path / "ok.yaml"
    path.write_text(SPACE.format(field=field))
    res = cli("validate", path)
    assert res.exit_code == 0, res.output + res.stderr


def test_a_study_name_leaves_room_for_its_trials_run_names():
    from atlas_search.spec import loads
    from atlas_search.spec.config import Config
    from atlas_search.spec.load import run_name
    from atlas_search.spec.study import study_name_error

    assert study_name_error("s" * 100) is None
    assert "at most 100" in study_name_error("s" * 101)
    Config(name="s" * 100 + "-123456")  # a trial's run name stays valid
    assert run_name("x" * 300) == "x" * 100
    space = loads("study: {n_trials: 2}\nmodel: {memory: {window: {choice: [1, 2]}}}\n",
                  default_name=run_name("y" * 300))
    assert space.study.name == "y" * 100


def test_a_preset_leaves_the_fields_its_model_ignores_to_the_sampler():
    """An attention preset pins no memory field, a model without SWA no SWA width; a field
    the preset's model uses is still checked against the space."""
    from atlas_search.spec import SpecError, loads

    text = """study: {{name: enq, n_trials: 3, enqueue: [{presets}]}}
task: {{name: mqar, vocab_size: 64, seq_len: 32, num_kv_pairs: 2, num_train: 100, num_test: 16}}
model:
  d_model: 16
  n_heads: 2
  swa_window: {{choice: [16, 32]}}
  memory:
    window: {{choice: [{windows}]}}
"""
    space = loads(text.format(presets="transformer, deltanet, swa", windows="1, 4"))
    params = [p for p, _ in space.enqueue_points()]
    assert params[0] == {}  # transformer: neither the memory nor the SWA width
    assert params[1] == {"model.memory.window": 1}  # deltanet: its window, no SWA width
    assert params[2] == {"model.swa_window": 32}  # swa: its width, no memory field
    with pytest.raises(SpecError, match="preset 'deltanet' sets model.memory.window = 1"):
        loads(text.format(presets="deltanet", windows="2, 4"))
