"""Regression tests for the spec and command fixes: huge ranges drawn without listing them,
`--set` on non-mappings and through scalars, one vocabulary rule, `value:` dimensions in
point counts, bounded seeds, MAD grids, resumable checkpoints, models too large to
allocate, baselines with inactive values, unreadable files, run names, `--threads`,
ranges off the step grid, `mad`'s task override, and searched task names and presets."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest
import torch

from atlas_search.spec import IntRange, Space, SpecError, load, loads
from atlas_search.spec.distributions import FloatRange
from atlas_search.spec.space import MAX_GRID, _draw

TASK = "task: {name: mqar, vocab_size: 64, seq_len: 16, num_kv_pairs: 2, num_train: 64, " \
       "num_test: 16}\n"
TINY = ("name: tiny\n" + TASK
        + "train: {steps: 2, batch_size: 4, warmup: 0, eval_every: 2, device: cpu}\n"
        "model: {preset: deltanet, d_model: 16, n_layers: 1, n_heads: 2}\n")
SPACE = "study: {name: s}\n" + TASK + "train: {steps: 2, warmup: 0}\n"


def _error(res) -> str:
    """The error text of a refused command (exit 2, no traceback), on one line."""
    assert res.exit_code == 2, res.output
    assert isinstance(res.exception, SystemExit), res.exception
    return " ".join(res.stderr.split())


def _issue(text: str, **kw):
    """The single issue of loading ``text`` (which must fail)."""
    with pytest.raises(SpecError) as info:
        loads(text, **kw)
    assert len(info.value.issues) == 1, str(info.value)
    return info.value.issues[0]


def _write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ------------------------------------------------------- 1: huge ranges, never listed
def test_a_huge_int_range_is_drawn_and_counted_without_listing_it(monkeypatch):
    def boom(self):  # noqa: ANN001, ANN202
        raise AssertionError("values() listed a huge range")

    monkeypatch.setattr(IntRange, "values", boom)
    t0 = time.perf_counter()
    space = loads(SPACE + "model: {memory: {window: {int: [1, 100000000]}}}\n")
    assert time.perf_counter() - t0 < 10
    assert space.count() == (100_000_000, False)
    draws = [space.random_values(random.Random(i))[("model", "memory", "window")]
             for i in range(20)]
    assert all(1 <= v <= 100_000_000 for v in draws) and len(set(draws)) > 1
    big = loads(SPACE.replace("steps: 2", "steps: {int: [1, 9007199254740992]}"))
    assert big.count() == (2**53, False)


def test_stepped_draws_match_the_old_list_draws_and_log_draws_are_log_uniform():
    for dist in (IntRange.model_validate({"int": [2, 40], "step": 3}),
                 FloatRange.model_validate({"float": [0.0, 1.0], "step": 0.25})):
        a, b = random.Random(5), random.Random(5)
        assert [_draw(dist, a) for _ in range(50)] == [b.choice(dist.values())
                                                      for _ in range(50)]
    log = IntRange.model_validate({"int": [1, 10000], "log": True})
    rng = random.Random(0)
    draws = sorted(_draw(log, rng) for _ in range(2000))
    assert draws[0] >= 1 and draws[-1] <= 10000
    assert 40 < draws[1000] < 250  # median near sqrt(10000) = 100; uniform would be 5000


@pytest.mark.parametrize("sampler,where", [("grid", "study.sampler.name"),
                                           ("brute_force", "model.memory.window")])
def test_samplers_that_list_values_refuse_a_huge_space(sampler, where, monkeypatch):
    monkeypatch.setattr(IntRange, "values", lambda self: pytest.fail("listed"))
    text = SPACE.replace("{name: s}", f"{{name: s, sampler: {{name: {sampler}}}}}")
    issue = _issue(text + "model:\n  memory: {window: {int: [1, 100000000]}}\n")
    assert ".".join(map(str, issue.path)) == where and issue.line is not None
    assert "100,000,000" in issue.message and f"{MAX_GRID:,}" in issue.message


def test_validate_generates_a_concrete_tasks_data_and_refuses_too_few_sequences(cli, tmp_path):
    few = tmp_path / "few.yaml"
    few.write_text("task: {name: mqar, vocab_size: 8, seq_len: 4, num_kv_pairs: 1, "
                   "num_train: 500, num_test: 50}\n")
    fine = tmp_path / "fine.yaml"
    fine.write_text("task: {name: mqar, vocab_size: 8, seq_len: 8, num_kv_pairs: 1, "
                    "num_train: 500, num_test: 50}\n")
    res = cli("validate", few, fine)
    assert res.exit_code == 2, res.output
    assert res.stderr.strip() == (f"error: {few}: task: mqar: every test sequence also occurs "
                                  "in the training set (num_train 500); the setting has too "
                                  "few distinct sequences")
    assert f"ok {fine}:" in res.stdout and f"ok {few}" not in res.stdout


def test_validate_prints_a_huge_space(cli, tmp_path):
    path = _write(tmp_path, SPACE.replace(
        "steps: 2", "steps: {int: [1, 9007199254740992]}"))
    res = cli("validate", path)
    assert res.exit_code == 0, res.output
    assert "points: 9007199254740992 (upper bound)" in " ".join(res.output.split())


# ----------------------------------------------------- 2: --set on a non-mapping file
@pytest.mark.parametrize("text", ["[1, 2]\n", "just a string\n"])
def test_set_on_a_file_that_is_not_a_mapping_is_refused(cli, tmp_path, text):
    path = _write(tmp_path, text)
    with pytest.raises(SpecError) as info:
        load(path, ["train.steps=1"])
    assert "expected a mapping" in str(info.value) and info.value.issues[0].line == 1
    for args in (("train", path, "--set", "train.steps=1", "--out", tmp_path / "r"),
                 ("mad", path, "--task", "compression", "--max-train", "4",
                  "--out", tmp_path / "m")):
        assert "expected a mapping" in _error(cli(*args))
    assert not (tmp_path / "r").exists() and not (tmp_path / "m").exists()


# ------------------------------------------------------------ 3: one vocabulary rule
def test_an_explicit_vocab_size_below_the_tasks_is_located():
    issue = _issue(TINY.replace("n_heads: 2}", "n_heads: 2,\n  vocab_size: 10}"))
    assert issue.path == ("model", "vocab_size") and issue.line == 5
    assert "below the task's vocabulary of 64" in issue.message
    mad = ("task: {name: mad, tasks: [memorization], settings: all}\n"
           "model: {vocab_size: 4096}\n")
    issue = _issue(mad)
    assert issue.path == ("model", "vocab_size") and "8192" in issue.message
    assert loads(mad.replace("4096", "8192")).vocab_size() == 8192


def test_train_and_eval_build_at_an_explicit_vocab_size(cli, tmp_path):
    cfg = _write(tmp_path, TINY.replace("n_heads: 2}", "n_heads: 2, vocab_size: 80}"))
    run = tmp_path / "run"
    assert cli("train", cfg, "--out", run, "--threads", "1").exit_code == 0
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["model"]["embed.weight"].shape[0] == 80
    res = cli("eval", run, "--json")
    assert res.exit_code == 0, res.output
    build = cli("build", cfg)
    assert build.exit_code == 0 and "vocab 80" in build.output


# ----------------------------------------------------- 4: value: dims in point counts
def test_a_condition_on_a_value_dimension_is_counted():
    space = loads(SPACE + "model:\n  d_model: 16\n  mixing: {choice: [none, mag]}\n"
                  "  memory:\n    kind: {value: mlp, when: {model.mixing: mag}}\n"
                  "    depth: {int: [2, 3], when: {kind: mlp}}\n")
    assert space.count() == (3, True)


# --------------------------------------------------------------------- 5: seeds
@pytest.mark.parametrize("where,old,new", [
    ("train", "device: cpu}", "device: cpu, seed: SEED}"),
    ("task", "num_test: 16}", "num_test: 16, seed: SEED}"),
])
def test_seeds_are_bounded_to_64_bit_seeds(where, old, new):
    text = TINY.replace(old, new)
    assert loads(text.replace("SEED", str(2**63 - 1))).name == "tiny"
    for bad in (2**63, -1, 10**23):
        issue = _issue(text.replace("SEED", str(bad)))
        assert issue.path == (where, "seed") and issue.line is not None


def test_a_seed_range_beyond_64_bits_is_refused():
    issue = _issue(SPACE.replace("warmup: 0", "warmup: 0, seed: {int: [0, 100000000000000000000]}"))
    assert issue.path[:2] == ("train", "seed") and "less than or equal" in issue.message


# ----------------------------------------------------------------- 6: MAD grids
@pytest.mark.parametrize("field,value,index,says", [
    ("lr_grid", "[0.001, 2]", 1, "less than or equal to 1"),
    ("lr_grid", "[0]", 0, "greater than 0"),
    ("wd_grid", "[0.1, -1]", 1, "greater than or equal to 0"),
    ("wd_grid", "[.inf]", 0, "finite"),
])
def test_mad_grids_have_the_limits_of_train(field, value, index, says):
    issue = _issue(f"task: {{name: mad, {field}: {value}}}\n")
    assert issue.path == ("task", field, index) and issue.line == 1
    assert says in issue.message


# ------------------------------------------------------- 7: checkpoints that cannot resume
def test_resume_refuses_checkpoints_it_cannot_continue(cli, tmp_path):
    cfg = _write(tmp_path, TINY)
    run = tmp_path / "run"
    assert cli("train", cfg, "--out", run, "--threads", "1").exit_code == 0
    ckpt = run / "checkpoint.pt"
    good = torch.load(ckpt, weights_only=True)
    resume = ("train", cfg, "--out", run, "--resume", "--set", "train.steps=4")

    merged = dict(good["optimizer"])
    groups = merged["param_groups"]
    merged["param_groups"] = [{**groups[0], "params": [p for g in groups for p in g["params"]]}]
    torch.save({**good, "optimizer": merged}, ckpt)
    msg = _error(cli(*resume))
    assert str(ckpt) in msg and "optimizer state does not fit" in msg

    for key in ("optimizer", "history"):
        torch.save({k: v for k, v in good.items() if k != key}, ckpt)
        msg = _error(cli(*resume))
        assert str(ckpt) in msg and f"no {key}" in msg
    torch.save(good, ckpt)
    assert cli(*resume).exit_code == 0


def test_optimizer_state_of_other_shapes_is_refused():
    from atlas_search.train import CheckpointError
    from atlas_search.train.checkpoint import load_optimizer_state

    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(4, 2)
    opt_a = torch.optim.AdamW(a.parameters())
    a(torch.ones(1, 3)).sum().backward()
    opt_a.step()
    opt_b = torch.optim.AdamW(b.parameters())
    with pytest.raises(CheckpointError, match=r"ck\.pt.*exp_avg has shape \(2, 3\)"):
        load_optimizer_state(opt_b, {"optimizer": opt_a.state_dict()}, "ck.pt")


# -------------------------------------------------------- 8: models too large to allocate
def test_a_model_too_large_to_allocate_exits_2_with_its_size(cli, tmp_path, monkeypatch):
    from atlas_search.models import builder

    real = builder.LM

    def starved(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        if torch.get_default_device().type == "meta":
            return real(*args, **kwargs)
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't "
                           "allocate memory: you tried to allocate 51539607552 bytes")

    monkeypatch.setattr(builder, "LM", starved)
    cfg = _write(tmp_path, TINY)
    for args in (("build", cfg), ("train", cfg, "--out", tmp_path / "run")):
        msg = _error(cli(*args))
        assert "d_model 16" in msg and "parameters" in msg and "cannot be allocated" in msg
    space = _write(tmp_path, SPACE + "model: {d_model: 16, memory: {window: {choice: [1, 2]}}}\n",
                   "space.yaml")
    res = cli("build", space, "--sample", "1")
    assert res.exit_code == 0 and "cannot be allocated" in " ".join(res.output.split())


# ------------------------------------------------ 9: baseline values that do not apply
ENQ = (SPACE + "model:\n  d_model: 16\n  memory:\n    kind: {choice: [linear, mlp]}\n"
       "    depth: {int: [2, 3], when: {kind: mlp}}\n")


def test_an_enqueued_value_whose_condition_fails_is_refused_at_its_key():
    text = ENQ.replace("{name: s}", "{name: s, enqueue: [\n  {model.memory.kind: linear, "
                       "model.memory.depth: 3}]}")
    issue = _issue(text)
    assert issue.path == ("study", "enqueue", 0, "model.memory.depth") and issue.line == 2
    assert "does not apply" in issue.message and "model.memory.kind is 'linear'" in issue.message
    alone = _issue(ENQ.replace("{name: s}", "{name: s, enqueue: [{model.memory.depth: 3}]}"))
    assert "the point does not set it" in alone.message
    ok = loads(ENQ.replace("{name: s}", "{name: s, enqueue: [{model.memory.kind: mlp, "
                           "model.memory.depth: 3}]}"))
    assert isinstance(ok, Space)
    assert ok.enqueue_points()[0][0] == {"model.memory.kind": "mlp", "model.memory.depth": 3}


# ---------------------------------------------- 10: --set through a scalar or a list
def test_set_does_not_descend_through_scalars_or_lists(tmp_path):
    path = _write(tmp_path, "task: {name: s_niah, seq_len: 32, test_lengths: [32]}\n"
                  "model: {d_model: 16}\ntrain:\n")
    for item, what in (("task.test_lengths.0=64", "is a list"),
                       ("model.d_model.foo=1", "is an integer")):
        with pytest.raises(SpecError) as info:
            load(path, [item])
        issue = info.value.issues[0]
        assert issue.origin == f"--set {item}" and issue.line is None
        assert what in issue.message and "not a mapping" in issue.message
    with pytest.raises(SpecError) as info:  # a block made by --set is located at it
        load(path, ["model.memory.nope.x=1"])
    assert info.value.issues[0].origin == "--set model.memory.nope.x=1"
    cfg = load(path, ["task.test_lengths=[32, 64]", "train.steps=99"])  # null train: a block
    assert cfg.task.test_lengths == [32, 64] and cfg.train.steps == 99


# --------------------------------------------------------------- 14: unreadable files
def test_an_unreadable_file_exits_2_with_the_reason(cli, tmp_path, monkeypatch):
    path = _write(tmp_path, TINY)
    real = Path.read_bytes

    def denied(self: Path) -> bytes:
        if self.name == "cfg.yaml":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", denied)
    msg = _error(cli("validate", path))
    assert str(path) in msg and "cannot read the file: Permission denied" in msg


# -------------------------------------------------------------------- 16: run names
@pytest.mark.parametrize("name", ["a/b/c", "../x", "/abs", ".hidden", "a b", "x" * 129])
def test_run_names_cannot_leave_the_runs_folder(name):
    issue = _issue(TINY.replace("name: tiny", f"name: '{name}'"))
    assert issue.path == ("name",) and issue.line == 1 and "runs/<name>" in issue.message


def test_default_names_from_odd_file_names_are_made_safe(tmp_path):
    assert loads(TINY.replace("tiny", "ok-1.v2_x")).name == "ok-1.v2_x"
    path = _write(tmp_path, TINY.replace("name: tiny\n", ""), "my run (2).yaml")
    assert load(path).name == "my_run__2_"


# --------------------------------------------------------------- 17: --threads, flags
def test_threads_below_one_and_resume_with_force_are_refused(cli, tmp_path):
    from atlas_search.train import set_threads

    cfg = _write(tmp_path, TINY)
    for n in ("0", "-2"):
        assert cli("train", cfg, "--threads", n, "--out", tmp_path / "r").exit_code == 2
        assert cli("mad", cfg, "--threads", n, "--out", tmp_path / "m").exit_code == 2
    assert not (tmp_path / "r").exists() and not (tmp_path / "m").exists()
    msg = _error(cli("train", cfg, "--resume", "--force", "--out", tmp_path / "r"))
    assert "--resume" in msg and "--force" in msg
    with pytest.raises(ValueError, match="threads"):
        set_threads(0)
    res = cli("build", cfg, "--sample", "-1")
    assert res.exit_code == 2 and "--sample" in res.output, res.output


# --------------------------------------------------------- 18: bounds off the step grid
def test_a_bound_off_the_step_grid_ends_the_range_as_optuna_does():
    from optuna.distributions import FloatDistribution, IntDistribution

    space = loads(SPACE.replace("warmup: 0}", "warmup: 0, lr: {float: [0.2, 1.0], step: 0.3}}")
                  + "model: {memory: {depth: {int: [2, 9], step: 2}}}\n")
    depth = space.dim(("model", "memory", "depth"))
    assert depth.dist.values() == [2, 4, 6, 8]
    with pytest.warns(UserWarning):
        assert depth.dist.int_[1] == IntDistribution(2, 9, step=2).high
    lr = space.dim(("train", "lr"))
    with pytest.warns(UserWarning):
        assert lr.dist.float_[1] == pytest.approx(FloatDistribution(0.2, 1.0, step=0.3).high)
    said = " ".join(space.warnings)
    assert "model.memory.depth: 9 is not on the step grid" in said and "ends at 8" in said
    assert "train.lr: 1.0 is not on the step grid" in said


# ------------------------------------------------------------ 19: mad's task override
def test_mad_refuses_a_task_name_override_in_its_own_words(cli, tmp_path):
    cfg = _write(tmp_path, TINY)
    msg = _error(cli("mad", cfg, "--set", "task.name=mqar", "--out", tmp_path / "m"))
    assert "--set task.name=mqar" in msg and "--task" in msg and "task=" not in msg
    with pytest.raises(SpecError) as info:  # a command's own override is named by its label
        load(cfg, [('task={"name": "mad", "bogus": 1}', "the mad command's task")])
    assert str(info.value).startswith("the mad command's task: task.bogus: unknown field")


# ---------------------------------------------------- 20: searched task names, presets
@pytest.mark.parametrize("text,path,says", [
    ("task: {name: {choice: [mqar, s_niah]}}\n", ("task", "name"), "one file per task"),
    ("model: {preset: {choice: [atlas, deltanet]}}\n", ("model", "preset"), "enqueue"),
])
def test_task_names_and_presets_cannot_be_distributions(text, path, says):
    issue = _issue("study: {name: s}\n" + text)
    assert issue.path == path and issue.line == 2
    assert "cannot be a distribution" in issue.message and says in issue.hint


def test_the_json_schema_knows_the_new_limits():
    from atlas_search.spec.schema import schema

    props = schema("concrete")["$defs"]
    assert props["TrainSpec"]["properties"]["seed"]["maximum"] == 2**63 - 1
    grid = props["MADSuiteTask"]["properties"]["lr_grid"]["items"]
    assert grid["exclusiveMinimum"] == 0 and grid["maximum"] == 1
    assert json.dumps(schema("concrete")["properties"]["name"]).count("pattern") == 1
