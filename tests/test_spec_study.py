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
