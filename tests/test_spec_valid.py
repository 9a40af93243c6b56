"""Valid inputs: every file in spaces/, the DESIGN.md §10 example, round trips, sampling."""

from __future__ import annotations

import random

import optuna
import pytest
from conftest import ROOT, SPACES

from atlas_search.spec import Config, Space, dump_yaml, load, loads
from atlas_search.spec.presets import preset_names

optuna.logging.set_verbosity(optuna.logging.WARNING)

ALL_FILES = sorted(SPACES.rglob("*.yaml"))

DESIGN_EXAMPLE = """\
study:
  name: atlas-mqar
  objectives: [{metric: accuracy, direction: maximize}]
  n_trials: 24
  parallel: 2
  sampler: {name: tpe, seed: 0}
  pruner: {name: hyperband, min_resource: 100}
  resources: {cpu: 1, gpu: 0}
  constraints: {max_params: 2.0e6}
  enqueue: [deltanet, titans, atlas]      # presets at this space's fixed sizes, run first

task: {name: mqar, seq_len: 128, num_kv_pairs: 16, vocab_size: 8192}

train:
  steps: 1500
  batch_size: 64
  lr: {float: [1.0e-4, 3.0e-3], log: true}
  eval_every: 100

model:
  d_model: 64
  n_layers: 2
  n_heads: 2
  mixing: {choice: [none, mag, mal]}
  swa_window: {choice: [16, 32], when: {mixing: [mag, mal]}}
  memory:
    kind: {choice: [linear, mlp, gated_mlp]}
    depth: {int: [2, 3], when: {kind: [mlp, gated_mlp]}}
    expansion: {choice: [1, 2, 4], when: {kind: [mlp, gated_mlp]}}
    objective: l2
    feature_map: {choice: [identity, poly]}
    poly_degree: {int: [2, 3], when: {feature_map: poly}}
    window: {choice: [1, 2, 4, 8, 16]}
    optimizer: {choice: [gd, momentum, muon]}
    ns_steps: {int: [1, 5], when: {optimizer: muon}}
    chunk_size: 16
"""


def test_design_example_validates_as_written():
    space = loads(DESIGN_EXAMPLE, "design.yaml")
    assert isinstance(space, Space)
    assert space.study.name == "atlas-mqar"
    assert {d.name for d in space.dims} == {
        "train.lr",
        "model.mixing",
        "model.swa_window",
        "model.memory.kind",
        "model.memory.depth",
        "model.memory.expansion",
        "model.memory.feature_map",
        "model.memory.poly_degree",
        "model.memory.window",
        "model.memory.optimizer",
        "model.memory.ns_steps",
    }
    design = ROOT.parent / "shared" / "DESIGN.md"
    if design.exists():  # the copy in spaces/ and the test stay the text of DESIGN.md §10
        assert DESIGN_EXAMPLE in design.read_text()
    kept = (SPACES / "design_example.yaml").read_text()
    assert DESIGN_EXAMPLE in kept


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: str(p.relative_to(SPACES)))
def test_every_space_file_validates_on_the_cli(cli, path):
    res = cli("validate", path)
    assert res.exit_code == 0, res.output
    assert "ok" in res.output


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: str(p.relative_to(SPACES)))
def test_space_files_start_with_the_schema_modeline(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# yaml-language-server: $schema=")
    target = (path.parent / first.split("$schema=")[1]).resolve()
    assert target.exists(), target


def test_every_preset_is_a_file_and_loads():
    names = preset_names()
    assert {
        "transformer",
        "swa",
        "deltanet",
        "titans",
        "atlas",
        "atlas_pp",
        "atlas_mag",
        "atlas_mal",
        "dot",
        "deep_transformer",
        "omeganet",
    } <= set(names)
    for name in names:
        cfg = load(SPACES / "presets" / f"{name}.yaml")
        assert isinstance(cfg, Config) and cfg.model.preset == name


def test_preset_with_overrides_merges_nested_blocks():
    cfg = loads("model: {preset: atlas, d_model: 32, memory: {window: 2}}\n")
    atlas = load(SPACES / "presets" / "atlas.yaml")
    assert cfg.model.d_model == 32 and cfg.model.memory.window == 2
    assert cfg.model.memory.optimizer == atlas.model.memory.optimizer == "muon"
    assert cfg.model.memory.kind == "mlp"


def _roundtrip(cfg: Config) -> Config:
    return loads(dump_yaml(cfg.model_dump(mode="json")), "roundtrip.yaml")


@pytest.mark.parametrize("name", preset_names())
def test_concrete_roundtrip_is_identity_for_presets(name):
    cfg = load(SPACES / "presets" / f"{name}.yaml")
    assert _roundtrip(cfg) == cfg


def test_sampled_configs_roundtrip_and_respect_when():
    space = loads(DESIGN_EXAMPLE, "design.yaml")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen_muon = seen_other = 0
    for _ in range(40):
        trial = study.ask()
        cfg = space.sample(trial)
        p = trial.params
        assert ("model.memory.ns_steps" in p) == (p["model.memory.optimizer"] == "muon")
        assert ("model.swa_window" in p) == (p["model.mixing"] in ("mag", "mal"))
        assert ("model.memory.depth" in p) == (p["model.memory.kind"] != "linear")
        assert ("model.memory.poly_degree" in p) == (p["model.memory.feature_map"] == "poly")
        assert cfg.model.memory.kind == p["model.memory.kind"]
        assert cfg.train.lr == p["train.lr"] and 1e-4 <= cfg.train.lr <= 3e-3
        assert cfg.model.d_model == 64 and cfg.task.seq_len == 128  # fixed fields kept
        if p["model.memory.optimizer"] == "muon":
            seen_muon += 1
            assert cfg.model.memory.ns_steps == p["model.memory.ns_steps"]
        else:
            seen_other += 1
            assert cfg.model.memory.ns_steps == 5  # inactive: the field's default
        assert _roundtrip(cfg) == cfg
        study.tell(trial, 0.0)
    assert seen_muon and seen_other


def test_enqueue_presets_map_into_the_space_at_its_sizes():
    space = loads(DESIGN_EXAMPLE, "design.yaml")
    points = space.enqueue_points()
    assert [a["enqueued"] for _, a in points] == ["deltanet", "titans", "atlas"]
    params, attrs = points[1]
    assert params["model.memory.kind"] == "mlp" and params["model.memory.optimizer"] == "momentum"
    study = optuna.create_study()
    study.enqueue_trial(params, user_attrs=attrs)
    trial = study.ask()
    cfg = space.sample(trial)
    assert cfg.model.preset == "titans"
    assert cfg.model.d_model == 64 and cfg.model.n_layers == 2  # the space's sizes
    assert cfg.model.memory.optimizer == "momentum" and cfg.model.memory.window == 1
    # deltanet: retention none comes from the preset although the space does not search it
    study.enqueue_trial(points[0][0], user_attrs=points[0][1])
    assert space.sample(study.ask()).model.memory.retention == "none"


def test_enqueue_of_a_concrete_point():
    text = DESIGN_EXAMPLE.replace(
        "enqueue: [deltanet, titans, atlas]",
        "enqueue: [{model.memory.kind: linear, model.memory.window: 8}]",
    )
    space = loads(text, "design.yaml")
    ((params, attrs),) = space.enqueue_points()
    assert params == {"model.memory.kind": "linear", "model.memory.window": 8}
    assert attrs == {"enqueued": "point"}


def test_random_probe_warns_about_partly_invalid_spaces():
    text = """
study: {name: s}
model:
  memory:
    kind: {choice: [linear, mlp]}
    feature_map: {choice: [identity, exp]}
"""
    space = loads(text)
    assert any("invalid configs" in w and "feature_map" in w for w in space.warnings)


def test_grid_of_a_discrete_space():
    text = """
study: {name: g, sampler: {name: grid}}
model:
  memory:
    window: {int: [1, 7], step: 3}
    optimizer: {choice: [gd, muon]}
train: {lr: {float: [0.001, 0.003], step: 0.001}}
"""
    space = loads(text)
    grid = space.grid()
    assert grid["model.memory.window"] == [1, 4, 7]
    assert grid["train.lr"] == pytest.approx([0.001, 0.002, 0.003])
    assert space.size() == 3 * 2 * 3
    assert space.count() == (18, True)


def test_count_applies_conditions():
    text = """
study: {name: c}
model:
  memory:
    kind: {choice: [linear, mlp]}
    depth: {int: [2, 4], when: {kind: mlp}}
    optimizer: {choice: [gd, muon]}
    ns_steps: {int: [1, 5], when: {optimizer: muon}}
"""
    space = loads(text)
    # kind: linear (1) + mlp x 3 depths = 4; optimizer: gd (1) + muon x 5 = 6
    assert space.count() == (24, True)
    assert space.size() == 2 * 3 * 2 * 5


def test_sampling_is_deterministic_under_a_seed():
    space = loads(DESIGN_EXAMPLE, "design.yaml")

    def draw(seed):
        st = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
        return [space.sample(st.ask()).model_dump() for _ in range(5)]

    assert draw(3) == draw(3)
    assert draw(3) != draw(4)
    rng = random.Random(0)
    values = space.random_values(rng)
    assert "model.memory.kind" in {".".join(map(str, p)) for p in values}


def test_yaml_1_2_integers_and_strings_round_trip():
    cfg = loads("train: {steps: 010, warmup: 0, eval_every: 09}\nname: '09'\n")
    assert (cfg.train.steps, cfg.train.eval_every) == (10, 9)  # YAML 1.1 read 010 as 8
    again = loads(dump_yaml(cfg.model_dump(mode="json")))
    assert again == cfg and again.name == "09"  # the dumper quotes what reads as a number


SPACE_WITH = """study: {{name: s, objectives: [{{metric: {metric}, direction: maximize}}]}}
task: {task}
model: {{memory: {{window: {{choice: [1, 2]}}}}}}
"""


@pytest.mark.parametrize("task,metric", [
    ("{name: mqar}", "params"), ("{name: mqar}", "tokens_per_s"), ("{name: mqar}", "loss"),
    ("{name: ptb}", "perplexity"), ("{name: ptb, level: {choice: [word, char]}}", "bpc"),
    ("{name: mad, tasks: [compression]}", "mad_score"), ("{name: s_niah}", "state_size"),
])
def test_objectives_the_task_reports_are_accepted(task, metric):
    assert isinstance(loads(SPACE_WITH.format(task=task, metric=metric)), Space)


@pytest.mark.parametrize("task", [
    "{name: mqar, vocab_size: 16, seq_len: 8, num_kv_pairs: 1, num_train: 40, num_test: 16}",
    "{name: mad, tasks: [memorization], lr_grid: [0.001], wd_grid: [0.0], max_train: 16, "
    "max_test: 8}",
])
def test_reported_metrics_are_what_the_trainer_reports(task):
    from atlas_search.spec.study import METRICS
    from atlas_search.spec.task import reported_metrics
    from atlas_search.train import train

    cfg = loads(f"task: {task}\ntrain: {{steps: 1, batch_size: 4, warmup: 0}}\n"
                "model: {preset: deltanet, d_model: 8, n_layers: 1, n_heads: 1}\n")
    result = train(cfg, threads=1)
    assert result.status == "completed"
    assert set(reported_metrics(cfg.task.name)) == set(result.metrics) & set(METRICS)
