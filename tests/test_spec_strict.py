"""Regression tests for a stricter spec language: no coercion across types (a boolean or
text is never a number, a number never a boolean), YAML 1.2 plain scalars (``yes``/``on``
and ``1:30`` are text), integer search ranges within Optuna's exact +-2**53, and an
unambiguous ``oneOf`` over tasks in the concrete JSON Schema."""

from __future__ import annotations

import json
import types
import typing
from pathlib import Path

import jsonschema
import pytest
import yaml
from conftest import SPACES
from pydantic import BaseModel, ValidationError

from atlas_search.spec import Config, IntRange, Space, SpecError, dump_yaml, load, loads
from atlas_search.spec.base import Spec
from atlas_search.spec.introspect import _strip, union_members
from atlas_search.spec.study import StudySpec
from atlas_search.spec.yamlio import parse_text

SPACE = "study: {name: s}\n"


def _issue(text: str):
    """The single issue of loading ``text`` (which must fail)."""
    with pytest.raises(SpecError) as info:
        loads(text)
    assert len(info.value.issues) == 1, str(info.value)
    return info.value.issues[0]


def _col(text: str, needle: str, line: int = 1) -> int:
    """1-based column of ``needle`` on 1-based ``line`` of ``text``."""
    return text.splitlines()[line - 1].index(needle) + 1


# ------------------------------------------------------------- 1: no loose coercion
@pytest.mark.parametrize("text,path,needle,says", [
    ("train: {steps: true}", ("train", "steps"), "true", "expected an integer, got a boolean"),
    ("train: {lr: false}", ("train", "lr"), "false", "expected a number, got a boolean"),
    ("train: {batch_size: '10'}", ("train", "batch_size"), "'10'",
     "expected an integer, got text ('10')"),
    ("train: {weight_decay: '0.1'}", ("train", "weight_decay"), "'0.1'",
     "expected a number, got text"),
    ("model: {memory: {layer_norm: 1}}", ("model", "memory", "layer_norm"), "1",
     "expected a boolean (true or false), got an integer"),
    ("model: {memory: {layer_norm: 'true'}}", ("model", "memory", "layer_norm"), "'true'",
     "expected a boolean (true or false), got text"),
    ("model: {head_dim: true}", ("model", "head_dim"), "true", "got a boolean"),
    ("task: {name: s_niah, test_lengths: [true, 64]}", ("task", "test_lengths", 0), "true",
     "expected an integer, got a boolean"),
    ("task: {name: mad, lr_grid: [0.001, true]}", ("task", "lr_grid", 1), "true",
     "expected a number, got a boolean"),
    ("train: {steps: 10.5}", ("train", "steps"), "10.5", "got a number with a fractional part"),
])
def test_booleans_and_text_are_not_numbers_nor_numbers_booleans(text, path, needle, says):
    issue = _issue(text + "\n")
    assert issue.path == path, issue
    assert (issue.line, issue.column) == (1, _col(text, needle))
    assert says in issue.message, issue.message


@pytest.mark.parametrize("text,path,says", [
    (SPACE + "model: {d_model: {int: [true, 128]}}", ("model", "d_model", "int", 0),
     "expected an integer, got a boolean"),
    (SPACE + "model: {d_model: {int: [64, 128], step: true}}", ("model", "d_model", "step"),
     "expected an integer, got a boolean"),
    (SPACE + "train: {lr: {float: ['1e-4', 0.01]}}", ("train", "lr", "float", 0),
     "expected a number, got text"),
    (SPACE + "model: {d_model: {choice: [64, '128']}}", ("model", "d_model"),
     "expected an integer, got text ('128')"),
    ("study: {name: s, n_trials: true}\nmodel: {d_model: {int: [64, 128]}}",
     ("study", "n_trials"), "expected an integer, got a boolean"),
    ("study: {name: s, constraints: {max_params: true}}\nmodel: {d_model: {int: [64, 128]}}",
     ("study", "constraints", "max_params"), "expected a number, got a boolean"),
    ("study: {name: s, pruner: {name: hyperband, max_resource: true}}\n"
     "model: {d_model: {int: [64, 128]}}", ("study", "pruner", "max_resource"),
     "expected an integer or 'auto', got a boolean (true)"),
])
def test_search_spaces_are_as_strict(text, path, says):
    issue = _issue(text + "\n")
    assert issue.path == path and issue.line is not None, issue
    assert says in issue.message, issue.message


def test_whole_floats_stay_integers_and_integers_numbers():
    """What was accepted and is still meant: ``1e3`` or ``10.0`` where an integer fits
    (JSON Schema's ``integer`` takes them too), an integer where a number fits."""
    cfg = loads("train: {steps: 1e3, eval_every: 10.0, lr: 1}\n"
                "task: {name: s_niah, test_lengths: [128.0, 256]}\n")
    assert (cfg.train.steps, cfg.train.eval_every, cfg.train.lr) == (1000, 10, 1.0)
    assert type(cfg.train.steps) is int and type(cfg.train.lr) is float
    assert cfg.task.test_lengths == [128, 256]
    space = loads(SPACE + "model: {d_model: {int: [64.0, 128]}}\n")
    assert space.dims[0].dist.int_ == (64, 128)


def test_python_callers_may_pass_tuples_for_lists_and_integer_like_numbers():
    np = pytest.importorskip("numpy")
    cfg = Config.model_validate({"task": {"name": "s_niah", "test_lengths": (64, 128)},
                                 "train": {"steps": np.int64(12), "warmup": 0}})
    assert cfg.task.test_lengths == [64, 128] and type(cfg.train.steps) is int
    with pytest.raises(ValidationError):
        Config.model_validate({"train": {"steps": np.bool_(True)}})


@pytest.mark.parametrize("value,message,hint", [
    ("inf", "got text ('inf')", ".inf"),
    ("'1e-3'", "got text ('1e-3')", "write the number without quotes"),
    ("null", "got nothing (null)", None),
])
def test_type_errors_show_the_value_once_with_the_right_hint(value, message, hint):
    issue = _issue(f"train: {{lr: {value}}}\n")
    assert issue.message == f"expected a number, {message}", issue.message
    assert (issue.hint is None) if hint is None else (hint in issue.hint), issue.hint


def test_an_int_range_on_a_float_field_takes_a_preset_baseline():
    space = loads(SPACE.replace("{name: s}", "{name: s, enqueue: [atlas]}")
                  + "model: {rope_theta: {int: [1000, 10000], step: 1000}}\n")
    assert isinstance(space, Space) and space.dims[0].dist.contains(10000.0)


@pytest.mark.parametrize("text,path,message", [
    ("model: {d_model: {value: [64]}}", ("model", "d_model", "value"),
     "expected a boolean, an integer, a number or text, got a list"),
    ("model: {mixer: {when: {x: [[a]]}, value: 1}}", ("model", "mixer", "when", "x", 0),
     "expected a boolean, an integer, a number or text, got a list"),
])
def test_union_members_give_one_error_located_where_the_value_is_wrong(text, path, message):
    issue = _issue(SPACE + text + "\n")
    assert issue.path == path and issue.message == message, issue


def test_an_enqueued_point_of_the_wrong_type_is_one_error():
    issue = _issue("study: {name: s, enqueue: [[1]]}\n")
    assert issue.path == ("study", "enqueue", 0), issue
    assert issue.message == "expected text or a mapping, got a list"


def _spec_classes() -> list[type[Spec]]:
    """Every spec model reachable from a config, a study and the distributions."""
    from atlas_search.spec import distributions, study

    todo: list[type[BaseModel]] = [Config, StudySpec, distributions.Choice, IntRange,
                                   distributions.FloatRange, distributions.Fixed]
    todo += [getattr(study, n) for n in dir(study)
             if isinstance(getattr(study, n), type) and issubclass(getattr(study, n), Spec)]
    seen: list[type[Spec]] = []
    while todo:
        cls = todo.pop()
        if cls in seen or not issubclass(cls, Spec):
            continue
        seen.append(cls)
        for f in cls.model_fields.values():
            todo += union_members(f.annotation)
            for arg in typing.get_args(_strip(f.annotation)):
                todo += union_members(arg)
    return seen


def _numeric(ann: object) -> str | None:
    ann = _strip(ann)
    if typing.get_origin(ann) not in (None, typing.Union, types.UnionType):
        return None  # a list or tuple
    args = [a for a in typing.get_args(ann) if a is not type(None)] or [ann]
    if len(args) == 1 and _strip(args[0]) in (int, float):
        return "int_type" if _strip(args[0]) is int else "float_type"
    return None


def test_every_numeric_field_of_every_spec_model_refuses_a_boolean():
    """Strictness is central (the shared base), not per field."""
    checked = 0
    for cls in _spec_classes():
        tag = cls.model_fields.get("name")
        base = {"name": typing.get_args(_strip(tag.annotation))[0]} if tag and tag.is_required() \
            else {}
        for name, f in cls.model_fields.items():
            kind = _numeric(f.annotation)
            if kind is None:
                continue
            key = f.alias or name
            for bad in (True, "3"):
                with pytest.raises(ValidationError) as info:
                    cls.model_validate({**base, key: bad})
                hits = [e for e in info.value.errors() if e["loc"] == (key,)]
                assert hits and hits[0]["type"] == kind, (cls.__name__, key, bad, hits)
            checked += 1
    assert checked > 60


def test_bool_fields_refuse_numbers_on_the_model_too():
    from atlas_search.spec import MemorySpec

    for bad in (1, 0, "true", "yes"):
        with pytest.raises(ValidationError):
            MemorySpec.model_validate({"layer_norm": bad})
    assert MemorySpec.model_validate({"layer_norm": True}).layer_norm is True


def test_set_values_are_read_as_yaml_and_are_as_strict(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("train: {steps: 20, warmup: 0}\n")
    cfg = load(path, ["train.steps=10", "train.lr=1e-3", "model.memory.layer_norm=true"])
    assert (cfg.train.steps, cfg.train.lr, cfg.model.memory.layer_norm) == (10, 1e-3, True)
    for item, says in [("train.steps=true", "expected an integer, got a boolean"),
                       ("train.steps='10'", "expected an integer, got text"),
                       ("model.memory.layer_norm=yes", "got text ('yes')")]:
        with pytest.raises(SpecError) as info:
            load(path, [item])
        (issue,) = info.value.issues
        assert issue.origin == f"--set {item}" and says in issue.message, issue


def test_the_cli_exits_2_with_a_located_type_error(cli, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ntrain:\n  steps: true\n")
    res = cli("validate", path)
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output + res.stderr
    assert "bad.yaml:3:10: train.steps: expected an integer, got a boolean (true)" in res.stderr


# ----------------------------------------------------------------- 2: YAML 1.2 scalars
@pytest.mark.parametrize("text,value", [
    ("yes", "yes"), ("No", "No"), ("ON", "ON"), ("off", "off"), ("y", "y"), ("Yes", "Yes"),
    ("1:30", "1:30"), ("-1:30", "-1:30"), ("1:30.5", "1:30.5"), ("2024-01-01", "2024-01-01"),
    ("=", "="),
    ("true", True), ("True", True), ("TRUE", True), ("false", False), ("FALSE", False),
    ("tRUE", "tRUE"),
    ("1e-3", 1e-3), ("2.0e6", 2.0e6), ("1.5", 1.5), (".5", 0.5), ("10", 10), ("010", 10),
    ("09", 9), ("0o17", 15), ("0x1F", 31), ("1_000", 1000), ("-3", -3), ("~", None),
    ("null", None),
])
def test_plain_scalars_follow_yaml_1_2(text, value):
    got = parse_text(f"a: {text}\n").data["a"]
    assert got == value and type(got) is type(value), (text, got)


def test_a_text_field_gets_yes_as_text_and_other_fields_name_the_value():
    assert loads("name: yes\n").name == "yes"
    assert loads("name: 'off'\n").name == "off"
    issue = _issue("model:\n  memory: {layer_norm: yes}\n")
    assert issue.path == ("model", "memory", "layer_norm") and issue.line == 2
    assert "got text ('yes')" in issue.message and "true or false" in issue.hint
    issue = _issue("train:\n  steps: 1:30\n")
    assert issue.path == ("train", "steps") and (issue.line, issue.column) == (2, 10)
    assert "got text ('1:30')" in issue.message and "sexagesimal" in issue.hint
    issue = _issue("train: {device: on}\n")
    assert issue.path == ("train", "device") and "'on' is not allowed" in issue.message
    issue = _issue(SPACE + "model: {memory: {layer_norm: {choice: [yes, true]}}}\n")
    assert issue.path == ("model", "memory", "layer_norm") and "'yes'" in issue.message


def test_keys_follow_yaml_1_2_too():
    issue = _issue("model:\n  memory:\n    on: 1\n")
    assert issue.path == ("model", "memory", "on") and issue.message == "unknown field"
    issue = _issue("model:\n  true: 1\n")
    assert issue.line == 2 and "not a string" in issue.message and '"true"' in issue.message


@pytest.mark.parametrize("text", ["yes", "No", "on", "OFF", "1:30", "true", "2024-01-01", "=",
                                  "1e-3", "09", "0o17", "1_000", "y"])
def test_the_writer_quotes_what_any_yaml_reader_would_not_read_as_text(text):
    out = dump_yaml({"name": text})
    assert parse_text(out).data["name"] == text
    assert yaml.safe_load(out)["name"] == text  # a YAML 1.1 reader (PyYAML) agrees


def test_an_exported_config_with_yaml_1_1_words_round_trips():
    cfg = loads("name: 'on'\ntrain: {device: cpu, steps: 100, warmup: 10}\n")
    again = loads(dump_yaml(cfg.model_dump(mode="json")))
    assert again == cfg and again.name == "on"


def test_every_shipped_yaml_file_reads_as_before():
    """Nothing in spaces/ relied on YAML 1.1's booleans, sexagesimals or timestamps."""
    for path in sorted(SPACES.rglob("*.yaml")):
        text = path.read_text()
        assert parse_text(text).data == _yaml11(text), path


def _yaml11(text: str):
    """What PyYAML's YAML 1.1 loader reads, with the loader's documented YAML 1.2 number
    rules (2.0e6, 1e-3) applied: the files must not depend on the other differences."""
    from atlas_search.spec.yamlio import _Dumper

    class Loader(yaml.SafeLoader):
        pass

    Loader.yaml_implicit_resolvers = _Dumper.yaml_implicit_resolvers
    return yaml.load(text, Loader=Loader)  # noqa: S506  (a SafeLoader subclass)


# ------------------------------------------------------- 3: int ranges within +-2**53
@pytest.mark.parametrize("lo,hi,index", [
    (0, 2**53 + 1, 1),
    (-(2**53) - 1, 0, 0),
    (0, 10**21, 1),
])
def test_int_ranges_beyond_2_53_are_refused_at_the_bound(lo, hi, index):
    text = SPACE + f"train:\n  seed: {{int: [{lo}, {hi}]}}\n"
    issue = _issue(text)
    assert issue.path == ("train", "seed", "int", index), issue
    assert (issue.line, issue.column) == (3, _col(text, str((lo, hi)[index]), 3))
    assert "2**53" in issue.message and "Optuna" in issue.message


def test_an_int_range_up_to_2_53_is_sampled_exactly():
    import optuna

    space = loads(SPACE + f"train: {{seed: {{int: [{2**53 - 2}, {2**53}]}}}}\n")
    assert isinstance(space, Space)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seeds = {space.sample(study.ask()).train.seed for _ in range(30)}
    assert seeds == {2**53 - 2, 2**53 - 1, 2**53}
    with pytest.raises(ValidationError, match="2\\*\\*53"):
        IntRange.model_validate({"int": [1, 2**53 + 1]})



def test_a_float_range_on_an_integer_field_is_refused_at_the_range():
    text = SPACE + "train:\n  steps: {float: [1.0, 10.0]}\n"
    issue = _issue(text)
    assert issue.path == ("train", "steps", "float"), issue
    assert issue.line == 3 and "non-integer" in issue.message and "int: [1, 10]" in issue.hint
    stepped = loads(SPACE + "train:\n  steps: {float: [10.0, 20.0], step: 5.0}\n  warmup: 0\n")
    assert isinstance(stepped, Space)  # whole-number draws only: integers, as before
    import optuna

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    assert {stepped.sample(study.ask()).train.steps for _ in range(20)} == {10, 15, 20}


@pytest.mark.parametrize("pruner,field", [
    ("{name: hyperband, max_resource: 0}", "max_resource"),
    ("{name: successive_halving, min_resource: -3}", "min_resource"),
])
def test_pruner_resources_below_one_are_one_located_bound_error(pruner, field):
    issue = _issue(f"study: {{name: s, pruner: {pruner}}}\n")
    assert issue.path == ("study", "pruner", field), issue
    assert "greater than or equal to 1" in issue.message and "'auto'" not in issue.message
    typed = _issue("study: {name: s, pruner: {name: hyperband, max_resource: true}}\n")
    assert typed.message.startswith("expected an integer or 'auto', got a boolean")

# -------------------------------------------- 4: the concrete schema's task oneOf
@pytest.fixture(scope="module")
def concrete():
    from atlas_search.spec.schema import schema

    return jsonschema.Draft202012Validator(schema("concrete"))


@pytest.mark.parametrize("doc", [
    {}, {"task": {}}, {"task": {"seq_len": 64}}, {"task": {"num_kv_pairs": 2}},
    {"task": {"name": "mqar", "seq_len": 64}}, {"task": {"name": "compression", "seq_len": 64}},
    {"task": {"name": "ptb", "level": "char"}}, {"task": {"name": "mad"}},
])
def test_a_task_without_a_name_is_the_default_task_for_the_schema(concrete, doc):
    assert not list(concrete.iter_errors(doc)), list(concrete.iter_errors(doc))[0].message
    loads(json.dumps(doc))  # and the loader agrees


@pytest.mark.parametrize("doc", [{"task": {"seq_len": 2}}, {"task": {"level": "char"}}])
def test_the_schema_refuses_other_tasks_fields_without_their_name(concrete, doc):
    assert list(concrete.iter_errors(doc))
    with pytest.raises(SpecError):
        loads(json.dumps(doc))


def test_every_concrete_example_validates_against_the_concrete_schema(concrete):
    files = [p for p in sorted(SPACES.rglob("*.yaml"))
             if "presets" not in p.parts and isinstance(load(p), Config)]
    assert files
    for path in files:
        errors = list(concrete.iter_errors(parse_text(Path(path).read_text()).data))
        assert not errors, f"{path}: {errors[0].message}"
