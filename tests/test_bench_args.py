"""Bad arguments of the ``python -m atlas_search.bench.*`` tools: exit 2 with one ``error:``
line naming the option, no traceback, before any real work (each case takes milliseconds)."""

from __future__ import annotations

import pytest

from atlas_search.bench import aot_check, capacity, host_time, ops_speed, search_overhead
from atlas_search.bench.cli_args import out_problem


@pytest.fixture
def afile(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    return f


def _exit2(capsys, main, argv, option):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert "error:" in last and option in last, err
    return last


@pytest.mark.parametrize("argv", [
    ["--dk", "0"], ["--dk", "-2"], ["--trials", "-1"], ["--trials", "0"],
    ["--threads", "0"], ["--threads", "-1"], ["--threshold", "-1"], ["--threshold", "nan"],
    ["--threshold", "0"], ["--threshold", "1.5"], ["--seed", "-1"],
])
def test_bench_args_capacity(capsys, argv):
    _exit2(capsys, capacity.main, [*argv, "--quick"], argv[0])


def test_bench_args_capacity_out(capsys, afile):
    for out in (afile, afile / "x"):
        _exit2(capsys, capacity.main, ["--quick", "--out", str(out)], "--out")


@pytest.mark.parametrize("argv", [
    ["--T", "0"], ["--T", "-5"], ["--chunk", "0"], ["--threads", "0"], ["--batch", "0"],
    ["--repeats", "0"], ["--max-cell-s", "0"], ["--long-s", "inf"],
])
def test_bench_args_ops_speed(capsys, argv):
    _exit2(capsys, ops_speed.main, argv, argv[0])


def test_bench_args_ops_speed_presets_and_out(capsys, afile):
    last = _exit2(capsys, ops_speed.main, ["--presets", "bogus"], "--presets")
    assert "bogus" in last and "atlas" in last and "titans" in last  # the available ones
    _exit2(capsys, ops_speed.main, ["--presets", "transformer"], "--presets")  # no memory
    _exit2(capsys, ops_speed.main, ["--out", str(afile / "x.txt")], "--out")
    _exit2(capsys, ops_speed.main, ["--out", str(afile.parent)], "--out")  # a directory


def test_bench_args_ops_speed_dedupe(monkeypatch, tmp_path):
    seen = {}

    def fake(preset, ts, **kw):
        seen[preset] = list(ts)
        return [ops_speed.Cell(preset, b, t, 1, 1.0) for b in ops_speed.BACKENDS for t in ts]

    monkeypatch.setattr(ops_speed, "bench_preset", fake)
    table = ops_speed.main(["--presets", "atlas", "atlas", "--T", "64", "32", "64",
                            "--out", str(tmp_path / "o.txt")])
    assert seen == {"atlas": [64, 32]}
    assert sum(line.startswith("atlas ") for line in table.splitlines()) == 2


@pytest.mark.parametrize("argv", [
    ["--dtype", "bogus"], ["--window", "1,x"], ["--window", "0"], ["--window", "1,"],
    ["--T", "0"], ["--head-dim", "0"], ["--calls", "0"], ["--device", "tpu"],
])
def test_bench_args_host_time(capsys, argv):
    _exit2(capsys, host_time.main, argv, argv[0])


def test_bench_args_host_time_device_backend_json(capsys, monkeypatch, afile):
    def boom(*a, **k):
        raise AssertionError("measure ran")

    monkeypatch.setattr(host_time, "measure", boom)
    monkeypatch.setattr(host_time.torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    _exit2(capsys, host_time.main, ["--device", "cuda"], "--device")
    _exit2(capsys, host_time.main, ["--device", "cpu", "--backend", "triton"], "--backend")
    _exit2(capsys, host_time.main, ["--device", "cpu", "--backend", "torch", "--json",
                                    str(afile / "x.json")], "--json")


def test_bench_args_host_time_cpu_default_backend(monkeypatch):
    got = {}

    def fake(device, head_dim, t, tokens, width, windows, calls, backend, dtype, top):
        got.update(device=device, backend=backend, windows=windows)
        return {"settings": {}, "cells": []}

    monkeypatch.setattr(host_time, "measure", fake)
    monkeypatch.setattr(host_time, "format_text", lambda r: "")
    monkeypatch.setattr(host_time.torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert host_time.main(["--device", "cpu", "--window", "1,16,1"]) == 0
    assert got == {"device": "cpu", "backend": "torch", "windows": (1, 16)}
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert host_time.main(["--device", "cpu"]) == 0
    assert got["backend"] == "triton"


@pytest.mark.parametrize("argv", [
    ["--arch", "0"], ["--arch", "75"], ["--chunk", "0"], ["--window", "0"],
    ["--head-dim", "0"], ["--head-dim", "512"], ["--chunk", "250", "--window", "16"],
    ["--head-dim"],
])
def test_bench_args_aot_check(capsys, argv):
    _exit2(capsys, aot_check.main, argv, argv[0] if argv[0] != "--chunk" or len(argv) == 2
           else "--window")


def test_bench_args_aot_check_json(capsys, afile):
    _exit2(capsys, aot_check.main, ["--json", str(afile / "x.json")], "--json")


@pytest.mark.parametrize("argv", [["--trials", "0"], ["--steps", "0"], ["--trials", "17"],
                                  ["--steps", "x"]])
def test_bench_args_search_overhead(capsys, argv):
    _exit2(capsys, search_overhead.main, argv, argv[0])


@pytest.mark.parametrize("mod", [capacity, ops_speed, host_time, aot_check, search_overhead])
def test_bench_args_prog(capsys, mod):
    with pytest.raises(SystemExit) as exc:
        mod.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m {mod.__name__} ")
    assert ".py" not in out.splitlines()[0]


def test_bench_args_out_problem(tmp_path, afile):
    assert out_problem(tmp_path / "new" / "deeper" / "x.txt") is None
    assert out_problem(tmp_path / "new", is_dir=True) is None
    assert out_problem(afile) is None  # an existing file is overwritten
    assert out_problem(afile, is_dir=True)
    assert out_problem(tmp_path)  # a directory is not a file
    assert out_problem(afile / "x" / "y.txt")
