"""`atlas-search build`: the numbers it prints are the built model's."""

from __future__ import annotations

import re

from conftest import SPACES

from atlas_search.models import build_model, summarize
from atlas_search.spec import load


def _numbers(line: str) -> list[int]:
    return [int(x.replace(",", "")) for x in re.findall(r"\d[\d,]*", line)]


def test_build_concrete_prints_the_models_totals(cli):
    path = SPACES / "presets" / "deltanet.yaml"
    res = cli("build", path)
    assert res.exit_code == 0, res.output
    cfg = load(path)
    info = summarize(build_model(cfg), cfg.task.seq_len)
    total = next(line for line in res.output.splitlines() if "total" in line)
    assert _numbers(total) == [info["params"], info["state_size"]]
    assert res.output.count("blocks.") == cfg.model.n_layers


def test_build_space_lists_baselines_and_flags_constraints(cli, tmp_path):
    text = (SPACES / "quickstart.yaml").read_text().replace(
        "constraints: {max_params: 1.0e6}", "constraints: {max_params: 1.8e5}"
    )
    path = tmp_path / "q.yaml"
    path.write_text(text)
    res = cli("build", path, "--sample", "1")
    assert res.exit_code == 0, res.output
    rows = [line for line in res.output.splitlines() if "baseline" in line or "random" in line]
    assert len(rows) == 3
    deltanet = next(r for r in rows if "deltanet" in r)
    titans = next(r for r in rows if "titans" in r)
    assert "yes" in deltanet  # ~158k params
    assert "no: params > 180000" in titans  # ~191k params (MLP memory, x4)


def test_build_bad_file_exits_2(cli, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: {memory: {kind: mlp, feature_map: exp}}\n")
    res = cli("build", path)
    assert res.exit_code == 2 and "needs kind 'linear'" in res.stderr


def test_build_mad_suite_measures_state_at_its_longest_setting(cli, tmp_path):
    res = cli("build", SPACES / "mad.yaml", "--sample", "0")
    assert res.exit_code == 0, res.output
    assert "256 tokens, the longest MAD setting: selective_copying" in res.output
    path = tmp_path / "mad.yaml"
    path.write_text("task: {name: mad, tasks: [compression, memorization]}\n"
                    "model: {preset: transformer, d_model: 16, n_layers: 1, n_heads: 2}\n")
    res = cli("build", path)
    assert res.exit_code == 0, res.output
    # compression rows: 31 data tokens, then 31 markers
    assert "62 tokens, the longest MAD setting: compression" in res.output
    cfg = load(path)
    info = summarize(build_model(cfg), 62)  # attention: the KV cache grows with length
    assert info["state_size"] != summarize(build_model(cfg), 32)["state_size"]
    total = next(line for line in res.output.splitlines() if "total" in line)
    assert _numbers(total) == [info["params"], info["state_size"]]


def test_schema_out_that_cannot_be_written_exits_2(cli, tmp_path):
    for target, why in ((tmp_path / "no" / "s.json", "No such file"), (tmp_path, "a folder")):
        res = cli("schema", "--out", target)
        assert res.exit_code == 2 and "cannot write" in res.stderr and why in res.stderr
        assert isinstance(res.exception, SystemExit)  # no traceback
