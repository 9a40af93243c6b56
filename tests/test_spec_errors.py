"""Malformed input: every case exits 2 with a located message and no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atlas_search.spec import SpecError, loads
from atlas_search.spec.yamlio import MAX_BYTES

GOOD_SPACE_HEAD = "study: {name: s}\n"

# (name, file text, substrings the message must contain, expected line or None)
CASES = [
    (
        "unknown key",
        "model:\n  memory:\n    feture_map: poly\n",
        ["model.memory.feture_map", "unknown field", "did you mean 'feature_map'"],
        3,
    ),
    ("unknown top key", "modle: {}\n", ["unknown top-level key", "did you mean 'model'"], 1),
    (
        "misspelt choice value",
        "model:\n  memory: {kind: mpl}\n",
        ["model.memory.kind", "'mpl' is not allowed", "did you mean 'mlp'", "linear, mlp"],
        2,
    ),
    (
        "misspelt value in a distribution",
        GOOD_SPACE_HEAD + "model:\n  memory:\n    optimizer: {choice: [gd, muonn]}\n",
        ["model.memory.optimizer", "'muonn'", "did you mean 'muon'"],
        4,
    ),
    ("wrong type", "model: {d_model: sixty-four}\n", ["model.d_model", "integer"], 1),
    ("wrong type for a block", "model: {memory: 3}\n", ["model.memory", "expected a mapping"], 1),
    (
        "out of range",
        "model:\n  memory: {window: 0}\n",
        ["model.memory.window", "greater than or equal to 1"],
        2,
    ),
    (
        "window below one in a range",
        GOOD_SPACE_HEAD + "model:\n  memory: {window: {int: [0, 4]}}\n",
        ["model.memory.window", "bound 1", "greater than or equal to 1"],
        3,
    ),
    (
        "invalid combination",
        "model:\n  memory: {kind: mlp, feature_map: exp}\n",
        ["model.memory.feature_map", "needs kind 'linear'", "poly"],
        2,
    ),
    (
        "muon with exp",
        "model:\n  memory: {feature_map: exp, optimizer: muon}\n",
        ["model.memory.optimizer", "Newton-Schulz"],
        2,
    ),
    (
        "heads do not divide",
        "model: {d_model: 10, n_heads: 3}\n",
        ["model.n_heads", "divisible"],
        1,
    ),
    (
        "lo > hi",
        GOOD_SPACE_HEAD + "train:\n  lr: {float: [0.1, 0.01]}\n",
        ["train.lr", "lo > hi"],
        3,
    ),
    (
        "empty choice",
        GOOD_SPACE_HEAD + "model: {mixing: {choice: []}}\n",
        ["model.mixing", "empty choice"],
        2,
    ),
    (
        "log range from zero",
        GOOD_SPACE_HEAD + "train: {lr: {float: [0, 1], log: true}}\n",
        ["train.lr", "log: true needs lo > 0"],
        2,
    ),
    (
        "when names a missing field",
        GOOD_SPACE_HEAD
        + "model:\n  memory:\n    ns_steps: {int: [1, 5], when: {optimiser: muon}}\n",
        ["when", "optimiser", "not a field", "did you mean 'optimizer'"],
        4,
    ),
    (
        "when with an invalid value",
        GOOD_SPACE_HEAD
        + "model:\n  memory:\n    ns_steps: {int: [1, 5], when: {optimizer: muonn}}\n",
        ["when", "'muonn'", "did you mean 'muon'"],
        4,
    ),
    (
        "when cycle",
        GOOD_SPACE_HEAD + "model:\n  memory:\n"
        "    kind: {choice: [linear, mlp], when: {optimizer: gd}}\n"
        "    optimizer: {choice: [gd, muon], when: {kind: mlp}}\n",
        ["cycle"],
        None,
    ),
    (
        "distribution without study",
        "model: {mixing: {choice: [none, mag]}}\n",
        ["no study: section"],
        None,
    ),
    (
        "two distribution keys",
        GOOD_SPACE_HEAD + "model: {n_layers: {int: [1, 2], choice: [1]}}\n",
        ["exactly one of"],
        2,
    ),
    (
        "unknown distribution option",
        GOOD_SPACE_HEAD + "model: {n_layers: {int: [1, 2], stp: 1}}\n",
        ["unknown field", "did you mean 'step'"],
        2,
    ),
    (
        "distribution on a block",
        GOOD_SPACE_HEAD + "model: {memory: {choice: [1, 2]}}\n",
        ["whole block"],
        2,
    ),
    (
        "pruner with two objectives",
        "study:\n  objectives: [{metric: accuracy, direction: maximize},"
        " {metric: params, direction: minimize}]\n  pruner: {name: median}\n",
        ["study.pruner", "single-objective"],
        None,
    ),
    (
        "unknown metric",
        "study: {objectives: [{metric: acuracy, direction: maximize}]}\n",
        ["study.objectives[0].metric", "did you mean 'accuracy'"],
        1,
    ),
    (
        "unknown sampler",
        "study: {sampler: {name: tpee}}\n",
        ["study.sampler.name", "did you mean 'tpe'"],
        1,
    ),
    (
        "unknown sampler option",
        "study: {sampler: {name: tpe, n_startup: 3}}\n",
        ["study.sampler.n_startup", "unknown field", "did you mean 'n_startup_trials'"],
        1,
    ),
    (
        "grid needs discrete",
        "study: {sampler: {name: grid}}\ntrain: {lr: {float: [0.001, 0.01]}}\n",
        ["train.lr", "give this float range a step"],
        2,
    ),
    (
        "unknown preset",
        "model: {preset: atlass}\n",
        ["model.preset", "unknown preset", "did you mean 'atlas'"],
        1,
    ),
    (
        "enqueue of an unknown preset",
        "study: {enqueue: [titan]}\n",
        ["study.enqueue[0]", "did you mean 'titans'"],
        1,
    ),
    (
        "enqueue outside the space",
        "study: {enqueue: [titans]}\nmodel:\n  memory: {optimizer: {choice: [gd, muon]}}\n",
        ["preset 'titans' sets model.memory.optimizer = 'momentum'", "outside"],
        None,
    ),
    (
        "no point is valid",
        GOOD_SPACE_HEAD + "model:\n  memory: {kind: mlp, feature_map: {choice: [exp]}}\n",
        ["no point of this space is a valid config", "linear"],
        None,
    ),
    ("unknown task", "task: {name: mqr}\n", ["task.name", "did you mean 'mqar'"], 1),
    (
        "task rule",
        "task: {name: mqar, seq_len: 16, num_kv_pairs: 8}\n",
        ["task.num_kv_pairs", "seq_len >= 32"],
        1,
    ),
    ("unsafe tag", "model: !!python/object/apply:os.system ['echo hacked']\n", ["not allowed"], 1),
    ("unsafe scalar tag", "name: !!python/name:os.system\n", ["not allowed"], 1),
    ("custom tag", "model: {d_model: !include x.yaml}\n", ["not allowed"], 1),
    ("set tag", "model: !!set {a, b}\n", ["not allowed"], 1),
    ("duplicate key", "model:\n  d_model: 64\n  d_model: 32\n", ["duplicate key 'd_model'"], 3),
    ("non-string key", "model:\n  memory:\n    true: 1\n", ["not a string"], 3),
    ("scalar document", "just text\n", ["expected a mapping"], 1),
    ("list document", "- 1\n- 2\n", ["expected a mapping"], 1),
    ("empty", "", ["empty"], None),
    ("only comments", "# nothing\n", ["empty"], None),
    ("two documents", "model: {}\n---\nmodel: {}\n", ["more than one YAML document"], 3),
    ("syntax error", "model: {d_model: 64\n", ["invalid YAML"], None),
    ("bad indentation", "model:\n  d_model: 64\n n_layers: 2\n", ["invalid YAML"], 3),
    ("tabs", "model:\n\td_model: 64\n", ["invalid YAML"], 2),
    (
        "alias bomb",
        "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
        + "".join(
            f"{n}: &{n} [{', '.join([f'*{p}'] * 10)}]\n"
            for p, n in zip("abcdef", "bcdefg", strict=True)
        ),
        ["alias bomb"],
        None,
    ),
    ("deep nesting", "a: " + "[" * 500 + "]" * 500 + "\n", ["nesting deeper"], None),
    (
        "misspelt int distribution",
        GOOD_SPACE_HEAD + "model:\n  memory: {depth: {itn: [2, 3]}}\n",
        ["model.memory.depth.itn", "not a distribution", "did you mean 'int'"],
        3,
    ),
    (
        "misspelt choice on a literal field",
        GOOD_SPACE_HEAD + "model:\n  memory: {kind: {chioce: [linear, mlp]}}\n",
        ["model.memory.kind.chioce", "did you mean 'choice'"],
        3,
    ),
    (
        "misspelt float beside log",
        GOOD_SPACE_HEAD + "train:\n  lr: {flaot: [1.0e-4, 1.0e-2], log: true}\n",
        ["train.lr.flaot", "did you mean 'float'"],
        3,
    ),
    (
        "misspelt item of a list of names",
        "task: {name: mad, tasks: [memorization, compresion]}\n",
        ["task.tasks[1]", "'compresion' is not allowed", "did you mean 'compression'"],
        1,
    ),
    (
        "objective the task never reports",
        "study:\n  name: s\n  objectives:\n    - {metric: accuracy, direction: maximize}\n"
        "    - {metric: perplexity, direction: minimize}\n"
        "model: {memory: {window: {choice: [1, 2]}}}\n",
        ["study.objectives[1].metric", "task 'mqar' does not report 'perplexity'",
         "it reports: accuracy, loss, tokens_per_s, params, state_size"],
        5,
    ),
    (
        "objective of another ptb level",
        "study: {name: s, objectives: [{metric: perplexity, direction: minimize}]}\n"
        "task: {name: ptb, level: char}\nmodel: {memory: {window: {choice: [1, 2]}}}\n",
        ["task 'ptb' at level 'char' does not report 'perplexity'", "bpc"],
        1,
    ),
    (
        "when names a block",
        GOOD_SPACE_HEAD + "model:\n  swa_window: {choice: [16, 32], when: {model.memory: 3}}\n",
        ["'model.memory', which is a block, not a field", "model.memory.<field>", "kind"],
        3,
    ),
]


@pytest.mark.parametrize("name,text,needles,line", CASES, ids=[c[0] for c in CASES])
def test_malformed_input_is_rejected_with_a_located_message(
    tmp_path, cli, name, text, needles, line
):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    res = cli("validate", path)
    assert res.exit_code == 2, res.output
    msg = res.stderr
    assert "Traceback" not in res.output + msg
    flat = " ".join(msg.split())
    for needle in needles:
        assert needle in flat, f"{needle!r} not in:\n{msg}"
    if line is not None:
        assert f"bad.yaml:{line}:" in msg, msg


def test_binary_garbage(tmp_path, cli):
    path = tmp_path / "bin.yaml"
    path.write_bytes(bytes(range(256)) * 4)
    res = cli("validate", path)
    assert res.exit_code == 2 and "not a" in res.stderr and "Traceback" not in res.output


def test_invalid_utf8(tmp_path, cli):
    path = tmp_path / "latin.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    res = cli("validate", path)
    assert res.exit_code == 2 and "not a UTF-8 text file" in res.stderr


def test_missing_file_and_directory(tmp_path, cli):
    res = cli("validate", tmp_path / "nope.yaml")
    assert res.exit_code == 2 and "no such file" in res.stderr
    res = cli("validate", tmp_path)
    assert res.exit_code == 2 and "not a regular file" in res.stderr


def test_oversized_file(tmp_path, cli):
    path = tmp_path / "big.yaml"
    path.write_text("a: " + "x" * (MAX_BYTES + 10) + "\n")
    res = cli("validate", path)
    assert res.exit_code == 2 and "limit" in res.stderr


def test_all_problems_are_reported_at_once(tmp_path, cli):
    path = tmp_path / "many.yaml"
    path.write_text("model:\n  d_modle: 64\n  memory: {kind: mpl, window: 0}\ntrain: {lr: -1}\n")
    res = cli("validate", path)
    assert res.exit_code == 2
    assert "4 problems" in res.stderr
    for where in ("many.yaml:2:", "many.yaml:3:", "many.yaml:4:"):
        assert where in res.stderr


def test_real_process_exit_code_and_no_traceback(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: {memory: {kind: mpl}}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "atlas_search.cli", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "did you mean 'mlp'" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


_yaml_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True),
    st.text(max_size=12),
)
_keys = st.sampled_from(
    [
        "model",
        "task",
        "train",
        "study",
        "memory",
        "kind",
        "window",
        "choice",
        "int",
        "float",
        "when",
        "name",
        "d_model",
        "preset",
        "lr",
        "value",
        "optimizer",
        "objectives",
        "enqueue",
        "sampler",
    ]
) | st.text(max_size=8)
_trees = st.recursive(
    _yaml_scalars,
    lambda ch: st.lists(ch, max_size=4) | st.dictionaries(_keys, ch, max_size=5),
    max_leaves=25,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300))
def test_fuzz_loader_text(text):
    """Any text: a config, a space, or a SpecError; never another exception."""
    try:
        loads(text, "fuzz.yaml")
    except SpecError as exc:
        assert exc.issues and str(exc)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_keys, _trees, max_size=5))
def test_fuzz_loader_structures(tree):
    """Random YAML structures built from real key names."""
    import yaml

    text = yaml.safe_dump(tree)
    try:
        loads(text, "fuzz.yaml")
    except SpecError as exc:
        assert exc.issues and str(exc)
