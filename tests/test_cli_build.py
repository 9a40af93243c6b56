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
