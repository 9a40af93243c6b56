"""``atlas-search bench`` and the GPU check, on CPU: tiny sizes, real properties only."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from atlas_search.bench import gpu_check as gc
from atlas_search.bench import kernels_speed as ks

ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.cuda.is_available()
RESULT_KEYS = {"benchmark", "environment", "settings", "impls", "rows", "ratios", "acceptance",
               "skipped", "profile", "footnotes", "elapsed_s"}
ROW_KEYS = {"impl", "window", "label", "head_dim", "T", "B", "H", "chunk", "dtype", "fwd_ms",
            "fwd_bwd_ms", "fwd_tokens_per_s", "fwd_bwd_tokens_per_s", "status", "note"}


def _check_row_numbers(r: dict) -> None:
    assert r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0
    tokens = r["B"] * r["T"]
    assert math.isclose(r["fwd_bwd_tokens_per_s"], tokens / (r["fwd_bwd_ms"] / 1e3), rel_tol=1e-9)
    assert math.isclose(r["fwd_tokens_per_s"], tokens / (r["fwd_ms"] / 1e3), rel_tol=1e-9)


@pytest.mark.skipif(CUDA, reason="checks the CPU run")
def test_cpu_bench_cli_prints_rows_and_writes_json(cli, tmp_path):
    out_json = tmp_path / "bench.json"
    res = cli("bench", "--T", "32,64", "--head-dim", "8", "--head-dim", "16", "--tokens", "128",
              "--width", "32", "--chunk", "16", "--repeats", "2", "--warmup", "0",
              "--max-ref-T", "32", "--json", out_json, "--out", tmp_path / "tables")
    assert res.exit_code == 0, res.output
    assert "GPU rows skipped: no CUDA device" in res.stdout
    for label in ("torch c=1", "torch c=16", "reference c=1"):
        assert label in res.stdout
    assert "Traceback" not in res.output

    data = json.loads(out_json.read_text())
    assert RESULT_KEYS <= set(data)
    assert data["acceptance"] is None  # GPU verdicts only
    assert data["impls"] == ["torch c=1", "torch c=16", "reference c=1"]
    rows = {(r["head_dim"], r["T"], r["label"]): r for r in data["rows"]}
    assert set(rows) == {(d, t, lab) for d in (8, 16) for t in (32, 64)
                         for lab in data["impls"]}
    for (d, t, lab), r in rows.items():
        assert ROW_KEYS <= set(r)
        assert r["B"] * r["T"] == 128 and r["H"] == 32 // d
        if lab == "reference c=1" and t > 32:
            assert r["status"] == "skipped" and "max_ref_T" in r["note"]
            assert r["fwd_ms"] is None
        else:
            assert r["status"] == "ok", r
            _check_row_numbers(r)
    # ratios are the time ratios of the rows they name
    names = {(r["head_dim"], r["T"], r["ratio"]) for r in data["ratios"]}
    assert (8, 32, "reference/torch") in names and (16, 64, "torch c16/c1") in names
    for r in data["ratios"]:
        a, b = rows[(r["head_dim"], r["T"], r["num"])], rows[(r["head_dim"], r["T"], r["den"])]
        for m in ("fwd", "fwd_bwd"):
            if a[f"{m}_ms"] is None:
                assert r[m] is None
            else:
                assert math.isclose(r[m], a[f"{m}_ms"] / b[f"{m}_ms"], rel_tol=1e-9)
    assert not any("triton" in r["label"] or r["impl"] in ("fla", "sdpa") for r in data["rows"])
    for f in ("bench_table.txt", "bench_table.md", "bench.json"):
        assert (tmp_path / "tables" / f).stat().st_size > 0
    assert "| D | T |" in (tmp_path / "tables" / "bench_table.md").read_text()


def test_header_states_the_sizes_the_rows_ran():
    """B = tokens // T and H = width // D need not multiply back to what was asked: the
    header then gives both."""
    env = {"device_name": "CPU", "torch": "x"}
    s = {"dtype": "float32", "tokens": 100, "heads": None, "width": 128, "chunk": 64,
         "repeats": 1, "warmup": 0}
    rows = [{"B": 1, "T": 128, "H": 18, "head_dim": 7}]
    text = ks.header({"environment": env, "settings": s, "rows": rows})
    assert "B*T = 100 asked (128 run) tokens" in text and "H*D = 128 asked (126 run)" in text
    even = [{"B": 1, "T": 100, "H": 16, "head_dim": 8}]
    text = ks.header({"environment": env, "settings": s, "rows": even})
    assert "B*T = 100 tokens" in text and "H*D = 128," in text and "asked" not in text


def test_bench_bad_options_exit_2(cli):
    for args, where in ((["--T", "2x"], "--T"), (["--head-dim", "0"], "--head-dim"),
                        (["--device", "tpu"], "--device"), (["--dtype", "int8"], "--dtype"),
                        (["--repeats", "0"], "--repeats"), (["--gpu-check"], "--gpu-check")):
        res = cli("bench", *args)
        assert res.exit_code == 2, (args, res.output)
        assert f"error: {where}" in res.stderr
        assert "Traceback" not in res.output


def test_bench_bad_outputs_and_profile_exit_2_before_timing(cli, tmp_path, monkeypatch):
    """Checked before any cell is timed (run_bench would fail the test)."""
    from atlas_search.bench import kernels_speed as ks

    def never(*a, **k):
        raise AssertionError("timed although an option was bad")

    monkeypatch.setattr(ks, "run_bench", never)
    afile = tmp_path / "afile"
    afile.write_text("x")
    for args, where, text in (
            (["--json", tmp_path], "--json", "is a folder"),
            (["--json", afile / "x.json"], "--json", "afile is a file"),
            (["--out", afile], "--out", "is a file"),
            (["--profile-T", "999"], "--profile-T", "not one of the timed T"),
            (["--T", ""], "--T", "no value given")):
        res = cli("bench", "--quick", "--device", "cpu", *args)
        assert res.exit_code == 2, (args, res.output)
        assert f"error: {where}" in res.stderr and text in res.stderr, res.stderr
        assert "Traceback" not in res.output
    assert afile.read_text() == "x"


@pytest.mark.skipif(CUDA, reason="checks the no-CUDA path")
def test_gpu_check_without_cuda_exits_2(cli, tmp_path):
    res = cli("bench", "--gpu-check", "--out", tmp_path / "g")
    assert res.exit_code == 2
    assert "no CUDA device" in res.stderr
    assert "Traceback" not in res.output
    res = cli("bench", "--device", "cuda")
    assert res.exit_code == 2 and "no CUDA device" in res.stderr


def test_gpu_check_refuses_json_before_any_work(cli, tmp_path):
    res = cli("bench", "--gpu-check", "--out", tmp_path / "g", "--json", tmp_path / "b.json")
    assert res.exit_code == 2 and "gpu_check.json" in res.stderr, res.output
    assert res.stderr.startswith("error: --json") and not (tmp_path / "b.json").exists()


def test_gpu_check_path_imports_no_pydantic_optuna_ray(tmp_path):
    """``python -m atlas_search.bench.gpu_check`` (run_module as __main__) and a CPU bench run
    from a bare PYTHONPATH pull in neither pydantic, optuna, ray nor spec/models/search."""
    code = f"""
import json, runpy, sys
from atlas_search.bench import gpu_check, kernels_speed as ks
s = ks.default_settings("cpu", ts=(16,), head_dims=(8,), tokens=16, width=8, chunk=8,
                        repeats=1, warmup=0, max_ref_t=16)
r = ks.run_bench(s, progress=None)
code = None
if not {CUDA}:
    sys.argv = ["gpu_check", "--out", {str(tmp_path / "g")!r}]
    try:
        runpy.run_module("atlas_search.bench.gpu_check", run_name="__main__")
    except SystemExit as e:
        code = e.code
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("pydantic", "optuna", "ray")
             or m.startswith(("atlas_search.spec", "atlas_search.models", "atlas_search.search",
                              "atlas_search.cli", "atlas_search.train")))
print(json.dumps({{"bad": bad, "code": code, "rows": len(r["rows"]),
                   "triton": "triton" in sys.modules}}))
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd=str(tmp_path), timeout=120)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["bad"] == []
    assert found["rows"] == 3  # torch c=1, torch c=16, reference c=1
    if not CUDA:
        assert found["code"] == 2
        assert "no CUDA device" in proc.stderr and "Traceback" not in proc.stderr
        assert found["triton"] is False  # never imported on CPU (interpreter mode is global)


def _wheel(path: Path, files: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return path


@pytest.fixture
def clean_fla():
    """Forget any ``fla`` imported or put on ``sys.path`` by a test."""
    path = list(sys.path)
    yield
    sys.path[:] = path
    for name in [m for m in sys.modules if m == "fla" or m.startswith("fla.")]:
        del sys.modules[name]


def test_fla_wheel_discovery_and_extraction(tmp_path, clean_fla):
    empty, whl = tmp_path / "empty", tmp_path / "wheels"
    empty.mkdir()
    whl.mkdir()
    _wheel(whl / "fla_core-0.0.9-py3-none-any.whl", {"fla/__init__.py": "__version__ = '0.0.9'"})
    _wheel(whl / "fla_core-0.0.10-py3-none-any.whl", {"fla/__init__.py": "__version__ = '0.0.10'"})
    _wheel(whl / "flash_linear_attention-0.0.10-py3-none-any.whl",
           {"fla/layers/__init__.py": "", "fla/models/__init__.py": ""})

    found = gc.find_fla_wheels([tmp_path / "missing", empty, whl])
    assert [w.name for w in found] == ["fla_core-0.0.10-py3-none-any.whl",
                                      "flash_linear_attention-0.0.10-py3-none-any.whl"]
    dest = gc.extract_wheels(found[:1], tmp_path / "x")
    assert (dest / "fla" / "__init__.py").exists()
    proc = subprocess.run([sys.executable, "-c", "import fla; print(fla.__version__)"],
                          capture_output=True, text=True, env={**os.environ,
                                                               "PYTHONPATH": str(dest)})
    assert proc.stdout.strip() == "0.0.10"

    # the fake has no fla.ops: extracted and importable, but the fla rows are skipped
    setup = gc.prepare_fla([empty, whl], allow_installed=False)
    assert not setup.available and setup.fn is None
    assert setup.message.startswith("fla rows skipped:") and "not importable" in setup.message
    assert setup.path and (Path(setup.path) / "fla" / "__init__.py").exists()
    # the layers/models wheel carries no fla/ops, so only fla_core is unpacked
    assert not (Path(setup.path) / "fla" / "layers").exists()
    assert setup.path in sys.path


def test_fla_absent_gives_skip_message(tmp_path):
    setup = gc.prepare_fla([tmp_path], allow_installed=False)
    assert not setup.available
    assert "fla rows skipped" in setup.message and str(tmp_path) in setup.message
    assert "pip download --no-deps fla-core==0.5.2" in setup.message
    assert gc.default_wheel_dirs(ROOT) == [ROOT / ".whl", ROOT, ROOT.parent]


def _rows(times: dict[tuple[int, str], tuple[float | None, float | None]]) -> list[dict]:
    s = ks.Settings(device="cuda", tokens=8192)
    out = []
    for (t, label), (f, fb) in times.items():
        name, _, c = label.partition(" c=")
        impl = ks.Impl(name, int(c) if c else None)
        out.append(ks._row(impl, 64, t, s.batch(t), 32, s, f and f / 1e3, fb and fb / 1e3,
                           "ok" if f and fb else "error"))
    return out


def test_ratios_and_acceptance_verdicts():
    times = {
        (1024, "triton c=1"): (10.0, 30.0), (1024, "torch c=1"): (5.0, 10.0),  # T < 2k: ignored
        (1024, "triton c=16"): (50.0, 90.0), (1024, "fla"): (1.0, 1.0),
        (2048, "triton c=1"): (10.0, 30.0), (2048, "triton c=16"): (15.0, 50.0),
        (2048, "torch c=1"): (40.0, 90.0), (2048, "fla"): (8.0, 25.0),
    }
    rows = _rows(times)
    ratios = ks.compute_ratios(rows)
    by = {(r["T"], r["ratio"]): r for r in ratios}
    assert by[(2048, "triton/fla")]["fwd"] == pytest.approx(10 / 8)
    assert by[(2048, "triton c16/c1")]["fwd_bwd"] == pytest.approx(50 / 30)
    assert by[(2048, "torch/triton")]["fwd"] == pytest.approx(4.0)
    assert (2048, "torch/triton c16") not in by  # torch c=16 was not planned here
    tri = next(r for r in rows if r["T"] == 2048 and r["label"] == "triton c=1")
    assert tri["vs_fla_fwd_bwd"] == pytest.approx(30 / 25)

    acc = ks.acceptance(ratios)
    assert {k: v["ok"] for k, v in acc.items()} == {
        "triton_faster_than_torch": True, "triton_within_1.5x_fla": True,
        "triton_c16_under_2x_c1": True}
    assert all(c["T"] >= 2048 for v in acc.values() for c in v["checks"])

    times[(2048, "triton c=16")] = (25.0, 50.0)  # fwd 2.5x c=1
    times[(2048, "fla")] = (8.0, None)  # fla backward errored
    acc = ks.acceptance(ks.compute_ratios(_rows(times)))
    assert acc["triton_c16_under_2x_c1"]["ok"] is False
    assert "fwd=2.50" in acc["triton_c16_under_2x_c1"]["note"]
    assert acc["triton_within_1.5x_fla"]["ok"] is False  # a missing value fails
    assert "missing" in acc["triton_within_1.5x_fla"]["note"]

    del times[(1024, "fla")], times[(2048, "fla")]
    acc = ks.acceptance(ks.compute_ratios(_rows(times)))
    assert acc["triton_within_1.5x_fla"]["ok"] is None  # no fla: not measured, not failed
    assert "not measured" in ks.verdict_lines({"acceptance": acc})[1]


def test_gpu_path_with_fake_fla_and_sdpa(monkeypatch):
    """The GPU code path (fla and SDPA rows, ratios to fla, acceptance keys) run on CPU with
    a stand-in for fla's op; triton cells are left out (they need a GPU or the interpreter)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    cpu_timer, make = ks._timer, ks.make_inputs
    monkeypatch.setattr(ks, "_timer", lambda device: cpu_timer("cpu"))
    monkeypatch.setattr(ks, "make_inputs", lambda *a, **k: make(*a[:5], "cpu", **k))
    monkeypatch.setattr(ks, "environment", lambda device, fla=None: {
        "device": device, "device_name": "stand-in", "torch": torch.__version__, "fla": fla})
    calls = []

    def fake_fla(q, k, v, g, beta, scale=None, output_final_state=False,
                 use_qk_l2norm_in_kernel=False):
        calls.append((q.shape, g.dtype, scale, use_qk_l2norm_in_kernel))
        from atlas_search.ops import omega_linear

        o, _ = omega_linear(q, k, v, alpha=g.exp(), eta=beta, gamma=torch.ones_like(beta),
                            theta=None, window=1, chunk_size=1, optimizer="gd", objective="l2",
                            backend="torch")
        return o, None

    s = ks.default_settings("cuda", ts=(16, 32), head_dims=(8,), tokens=32, width=16, chunk=8,
                            dtype="float32", repeats=1, warmup=0,
                            impls=("torch", "fla", "sdpa"))
    res = ks.run_bench(s, fla=(fake_fla, "stand-in", "fake"), progress=None)
    assert res["impls"] == ["torch c=1", "torch c=16", "fla", "sdpa"]
    assert calls and calls[0][1:] == (torch.float32, 1.0, False)
    for r in res["rows"]:
        assert r["status"] == "ok", r
        _check_row_numbers(r)
        fla = next(x for x in res["rows"] if x["T"] == r["T"] and x["impl"] == "fla")
        assert r["vs_fla_fwd"] == pytest.approx(r["fwd_ms"] / fla["fwd_ms"])
    assert set(res["acceptance"]) == {"triton_faster_than_torch", "triton_within_1.5x_fla",
                                      "triton_c16_under_2x_c1"}
    assert all(v["ok"] is None for v in res["acceptance"].values())  # T < 2k, no triton
    text = ks.format_text(res)
    assert "fwd x fla" in text and "WY form" in text and "sdpa" in text
    json.dumps(ks.jsonable(res), allow_nan=False)


def test_run_pytest_outcomes_and_timeout(tmp_path, monkeypatch):
    """The GPU check's test step on a stand-in repository: the interpreter-subprocess test is
    deselected unless asked for, failures and timeouts are reported, output is kept."""
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "test_ops_triton.py").write_text(
        "import os, time\n"
        "def test_ok():\n    pass\n"
        "def test_cpu_params_in_interpreter_subprocess():\n    assert False\n"
        "def test_slow():\n    if os.environ.get('SLOW'):\n        time.sleep(60)\n")
    res = gc.run_pytest(tmp_path, 60, tmp_path / "out.txt")
    assert res["status"] == "passed", res
    assert "2 passed" in res["summary"] and "1 deselected" in res["summary"]
    assert (tmp_path / "out.txt").read_text().strip()
    res = gc.run_pytest(tmp_path, 60, None, run_all=True)
    assert res["status"] == "failed" and res["returncode"] == 1 and res["tail"]
    monkeypatch.setenv("SLOW", "1")
    res = gc.run_pytest(tmp_path, 3, None)
    assert res["status"] == "timeout" and res["seconds"] < 30
    assert gc.run_pytest(tmp_path / "nowhere", 5, None)["status"] == "skipped"


def test_gpu_check_order_files_and_exit_codes(tmp_path, monkeypatch, capsys):
    """The check's steps with stand-ins for the CUDA parts: the kernel checks, the tests and
    the compiles at once, then the benchmark alone with the rest of the budget;
    gpu_check.json holds the first phase before the benchmark starts (a run cut off there
    keeps it); a failing step gives exit 1; a config that fails its config check is left
    out of the benchmark's autotuning, the others still run."""
    from atlas_search.bench import prewarm
    from atlas_search.ops import omega_triton as ot

    calls: list[str] = []
    monkeypatch.setattr(gc, "require_cuda", lambda: None)
    monkeypatch.setattr(gc, "prepare_fla", lambda dirs=None: FakeFla())
    monkeypatch.setattr(ks, "environment", lambda device, fla=None: {
        "device_name": "stand-in", "torch": torch.__version__, "cuda": None, "triton": None,
        "fla": None})

    def kernel_checks(quick, timeout):
        calls.append("kernel_checks")
        return {"status": "passed", "message": "1/1 rows within budget", "rows": [],
                "summary": [], "seconds": 0.0}

    def compile_jobs(jobs, procs, timeout, extra_path=()):
        calls.append("prewarm")
        assert {j.impl for j in jobs} == {"triton"} and procs == 8 and timeout >= 30
        return {"jobs": len(jobs), "failed": 0, "seconds": 0.0, "rows": []}

    def bench(settings, fla, t0):
        calls.append("bench")
        saved = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
        assert {"kernel_checks", "pytest", "prewarm"} <= set(saved)
        assert settings.budget_s >= gc.BENCH_RESERVE_S - 5
        return {"rows": [], "acceptance": {"triton_faster_than_torch": {
            "ok": verdict["ok"], "note": "stand-in", "rule": "", "checks": []}}}

    def pytest_step(repo, timeout, out_file, run_all=False, workers=0):
        calls.append("pytest")
        assert timeout >= 30
        return {"status": "passed", "message": "3 passed", "seconds": 0.0}

    cfg_rows = [{"shape": [1, 2, 3, 64, 1], "kernel": "out", "index": 1, "ok": True,
                 "config": [16, 8, False, 0]},
                {"shape": [1, 2, 3, 64, 1], "kernel": "out", "index": 2, "ok": None,
                 "config": [16, 8, True, 0]}]

    def config_checks(procs, timeout, shapes, deadline):
        calls.append("config_checks")
        return cfg_rows

    from atlas_search.bench import config_check

    verdict = {"ok": True}
    monkeypatch.setattr(config_check, "run_config_checks", config_checks)
    monkeypatch.setattr(config_check, "sanitize", lambda shape, timeout: {
        "status": "clean", "lines": []})
    monkeypatch.setenv("ATLAS_TRITON_AUTOTUNE", "1")
    monkeypatch.setenv(ot.SKIP_ENV, "")  # restored after the test
    monkeypatch.setattr(gc, "run_kernel_checks_subprocess", kernel_checks)
    monkeypatch.setattr(prewarm, "prewarm", compile_jobs)
    monkeypatch.setattr(gc, "run_bench_isolated", bench)
    monkeypatch.setattr(ks, "format_text", lambda result: "table")
    monkeypatch.setattr(ks, "format_markdown", lambda result: "| table |\n")
    monkeypatch.setattr(gc, "run_pytest", pytest_step)
    assert gc.run_gpu_check(gc.Options(out=tmp_path / "out")) == 0
    assert sorted(calls[:4]) == ["config_checks", "kernel_checks", "prewarm", "pytest"]
    assert calls[4:] == ["bench"] and os.environ["ATLAS_TRITON_AUTOTUNE"] == "1"
    assert "config checks: 1/2 ok, 0 failed, 1 not run (time budget)" in capsys.readouterr().out
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert report["ok"] is True and report["pytest"]["status"] == "passed"
    assert (tmp_path / "out" / "bench_table.txt").read_text().strip() == "table"
    verdict["ok"] = False
    assert os.environ[ot.SKIP_ENV] == ""
    cfg_rows[0]["ok"] = False  # a config that fails its check: the bench leaves it out
    assert gc.run_gpu_check(gc.Options(out=tmp_path / "out")) == 1
    assert os.environ["ATLAS_TRITON_AUTOTUNE"] == "1"
    assert os.environ[ot.SKIP_ENV] == "out:16:8:0:0"
    assert "the benchmark leaves 1 out" in capsys.readouterr().out
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert report["config_checks"]["skipped_configs"] == ["out:16:8:0:0"]
    assert report["ok"] is False and any("acceptance" in f for f in report["failures"])


class FakeFla:
    """What :func:`gpu_check.prepare_fla` returns when no fla is found."""

    available = False
    version = None
    message = "fla rows skipped: stand-in"

    def info(self) -> dict:
        return {"message": self.message}


# ------------------------------------------------------------------ ahead-of-time compile


def _no_interpret_env() -> dict:
    return {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


@pytest.mark.timeout(1200)  # above the 600 s default: its own subprocess limits
def test_kernels_compile_for_sm90_without_a_gpu(tmp_path):
    """Compiled mode, which the interpreter tests cannot see (a ``tl.dot`` block under 16, a
    dtype clash, too much shared memory): Triton's compiler and the wheel's ``ptxas`` build
    every kernel for sm_90 at the ``--quick`` variants (bf16 and fp32, gd and momentum, l2
    and dot, with and without the halo tile), and ptxas reports its registers and
    spills."""
    from atlas_search.bench.aot_check import COEF, KERNELS, QUICK, SMEM_LIMIT

    out = tmp_path / "aot.json"
    r = subprocess.run([sys.executable, "-m", "atlas_search.bench.aot_check", "--quick",
                        "--json", str(out)], env=_no_interpret_env(), capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads(out.read_text())
    rows = res["rows"]
    assert res["arch"] == 90 and res["failed"] == 0
    assert len(rows) == sum(len(KERNELS) - len(COEF) * v.momentum for v in QUICK)
    assert {row["kernel"] for row in rows} == set(KERNELS)
    assert {(row["dtype"], row["window"]) for row in rows} == {(v.dtype, v.window)
                                                                for v in QUICK}
    for row in rows:
        assert row["error"] is None, row
        assert 0 < row["registers"] <= 255, row
        assert 0 <= row["shared"] <= SMEM_LIMIT[90], row  # bwd_dh for dot: no tl.dot
        assert row["spill_stores"] is not None and row["stack"] is not None, row
        assert row["blocks_per_sm"] >= 1, row
    assert f"{len(rows)} compiles" in r.stdout and "blocks/SM" in r.stdout


def test_blocks_per_sm_takes_the_tightest_limit():
    """Registers are allocated per warp in units of 256, shared memory per block plus 1 KB;
    the least of the register, shared-memory, warp and block limits wins (sm_90: 64K
    registers, 228 KB, 64 warps, 32 blocks)."""
    from atlas_search.bench.aot_check import blocks_per_sm

    assert blocks_per_sm(97, 8, 61952) == 2  # 13 x 256 per warp: 19 warps -> 2 blocks
    assert blocks_per_sm(128, 4, 61952) == 3  # registers allow 4, shared memory 3
    assert blocks_per_sm(255, 8, 20000) == 1
    assert blocks_per_sm(32, 8, 0) == 8  # the 64-warp limit
    assert blocks_per_sm(16, 1, 0) == 32  # the block limit
    assert blocks_per_sm(64, 4, 240000) == 0  # more shared memory than an SM has
    assert blocks_per_sm(97, 8, 61952, arch=86) < blocks_per_sm(97, 8, 61952)


def test_aot_check_specializes_as_a_launch_does():
    """A launch compiles for its argument values: pointers and integers divisible by 16
    carry ``tt.divisibility = 16``, integers equal to 1 become constants. The benchmark's
    c = 16 has ``N = 79`` window rows (no hint); ``DMI = 0`` is divisible by 16."""
    from atlas_search.bench.aot_check import Variant, launch_ints, specialize

    var = Variant("bfloat16", False, True, 128, 64, 16)
    ints = launch_ints(var)
    assert ints == {"NT": 64, "T": 4096, "H": 16, "L": 64, "N": 79, "DK": 128, "DV": 128,
                    "DMI": 0, "NC": 8 * 16 * 64, "NBH": 128}
    names = ["k_ptr", "NT", "N", "DK", "DMI", "BV"]
    sig = {"k_ptr": "*bf16", "NT": "i32", "N": "i32", "DK": "i32", "DMI": "i32",
           "BV": "constexpr"}
    ones, attrs = specialize(names, sig, ints)
    assert ones == {} and sorted(attrs) == [(0,), (1,), (3,), (4,)]
    assert all(v == [["tt.divisibility", 16]] for v in attrs.values())
    ones, attrs = specialize(names, sig, dict(ints, NT=1, N=64))
    assert ones == {"NT": 1} and sorted(attrs) == [(0,), (2,), (3,), (4,)]


def test_compiled_autotuners_time_with_tune_ms():
    """In compiled mode (no GPU needed to build them) each kernel's autotuner keeps its
    configs and times them with ``_tune_bench`` (``TUNE_MS``, not Triton's 25 / 100 ms),
    and is registered for ``autotune_picks``."""
    code = ("from atlas_search.bench.aot_check import _ready_triton\n"
            "ot, kern = _ready_triton()\n"
            "for name in ('states', 'bwd_dqk'):\n"
            "    cfgs = ot.configs(name, 128, 128)\n"
            "    fn = kern['tuned'](name, cfgs)\n"
            "    assert fn.do_bench is ot._tune_bench, fn.do_bench\n"
            "    assert len(fn.configs) == len(cfgs) and ot._TUNERS[name, cfgs] is fn\n"
            "    assert list(fn.keys) == ot._KEYS[name]\n"
            "print('ok', ot.TUNE_MS)\n")
    r = subprocess.run([sys.executable, "-c", code], env=_no_interpret_env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "ok (5, 25)" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]


def test_aot_check_refuses_an_interpreter_process():
    code = ("import triton\nfrom atlas_search.bench.aot_check import main\n"
            "raise SystemExit(main(['--quick']))")
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, "TRITON_INTERPRET": "1"},
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert "interpreter mode" in r.stderr and "Traceback" not in r.stderr


def test_cpu_profile_cli_and_json(cli, tmp_path):
    """``--profile-T``: one fwd+bwd per head dim under torch.profiler; the aten self times
    of the top names and the rest add up to the total, in the JSON and the printout."""
    out_json = tmp_path / "bench.json"
    res = cli("bench", "--T", "32,64", "--head-dim", "8,16", "--tokens", "128", "--width",
              "32", "--chunk", "16", "--repeats", "1", "--warmup", "0", "--max-ref-T", "0",
              "--profile-T", "64", "--json", out_json)
    assert res.exit_code == 0, res.output
    assert "where the time goes" in res.stdout and "aten::" in res.stdout
    profs = json.loads(out_json.read_text())["profile"]
    assert {(p["head_dim"], p["T"], p["label"]) for p in profs} == {
        (d, 64, lab) for d in (8, 16) for lab in ("torch c=1", "torch c=16")}
    for p in profs:
        assert p["total_ms"] > 0 and p["launches"] > 0 and p["triton_ms"] is None
        assert all(k["name"].startswith("aten::") and k["calls"] > 0 for k in p["top"])
        parts = sum(k["ms"] for k in p["top"]) + p["rest_ms"]
        assert parts == pytest.approx(p["total_ms"], rel=1e-9)
        assert [k["ms"] for k in p["top"]] == sorted((k["ms"] for k in p["top"]), reverse=True)


def test_profile_summary_of_gpu_kernel_events():
    """The CUDA branch of the summary on stand-in events: only CUDA-device events count,
    grouped by name; Triton kernels (plain names) are told apart from ATen's ``void ...``
    kernels and memcpys."""
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    def ev(name, us, dev=DeviceType.CUDA):
        return SimpleNamespace(name=name, device_type=dev, self_cpu_time_total=99.0,
                               time_range=SimpleNamespace(elapsed_us=lambda: us))

    events = [ev("_omega_states", 300), ev("_omega_states", 100), ev("_omega_bwd_dqk", 500),
              ev("void at::native::vectorized_elementwise_kernel<4>(...)", 250),
              ev("Memcpy DtoD (Device -> Device)", 50), ev("aten::mul", 1e6, DeviceType.CPU),
              ev("cudaLaunchKernel", 1e6, DeviceType.CPU)]
    s = ks.summarize_events(events, "cuda", top=2)
    assert s["total_ms"] == pytest.approx(1.2) and s["launches"] == 5
    assert s["triton_ms"] == pytest.approx(0.9)
    assert [(k["name"], k["calls"]) for k in s["top"]] == [("_omega_bwd_dqk", 1),
                                                           ("_omega_states", 2)]
    assert s["rest_ms"] == pytest.approx(0.3) and s["rest_names"] == 2


def test_shard_autotune_splits_every_config_list_between_shards():
    import triton

    from atlas_search.bench.prewarm import shard_autotune

    def kernel(x_ptr, n, BV: triton.language.constexpr):  # never launched
        pass

    cfgs = [triton.Config({"BV": bv}, num_warps=w) for bv in (16, 32) for w in (4, 8, 2)]
    kept = []
    for i in range(4):
        with shard_autotune(i, 4):
            tuner = triton.autotune(configs=cfgs, key=["n"])(triton.jit(kernel))
        kept.append([(c.kwargs["BV"], c.num_warps) for c in tuner.configs])
    assert sum(kept, []) == [(c.kwargs["BV"], c.num_warps) for c in cfgs[0::4] + cfgs[1::4]
                             + cfgs[2::4] + cfgs[3::4]]
    assert len(triton.autotune(configs=cfgs, key=["n"])(triton.jit(kernel)).configs) == 6


def test_prewarm_runs_every_job_in_child_processes():
    from atlas_search.bench import kernels_speed as ks
    from atlas_search.bench.prewarm import jobs_for, prewarm

    settings = ks.default_settings("cpu", quick=True, head_dims=(16,), windows=(1, 4))
    jobs = jobs_for(settings, impls=("torch",), shards=1)
    assert [(j.impl, j.window, j.d, j.t) for j in jobs] == [("torch", 1, 16, 256),
                                                              ("torch", 4, 16, 256)]
    res = prewarm(jobs, procs=2, timeout=120)
    assert (res["jobs"], res["failed"]) == (2, 0), res["rows"]
    bad = prewarm([replace(jobs[0], impl="nope")], procs=1, timeout=120)
    assert bad["failed"] == 1 and "nope" in bad["rows"][0]["error"]


def test_bench_groups_run_in_own_processes_and_a_lost_group_is_error_rows(monkeypatch):
    """Each implementation group runs in a child process; rows come back merged in table
    order with their ratios; a group whose process dies (stand-in: a timeout) leaves error
    rows for its cells, and the other groups' rows stand."""
    settings = ks.default_settings("cpu", quick=True, head_dims=(16,), ts=(64,),
                                   windows=(1, 4), budget_s=200.0)
    assert gc.bench_groups(settings) == [("triton", (1,)), ("fla", None), ("triton", (4,)),
                                         ("torch", (1,)), ("torch", (4,)), ("sdpa", None)]
    real = gc.run_child

    def run(cmd, timeout, env=None, capture=True, cwd=gc.PACKAGE_ROOT):
        spec = json.loads(Path(cmd[-2]).read_text())
        if spec["impls"] == ["torch"] and spec["windows"] == [4]:
            return None, ""
        return real(cmd, timeout, env, capture, cwd)

    monkeypatch.setattr(gc, "run_child", run)
    res = gc.run_bench_isolated(settings, FakeFla(), time.monotonic())
    got = {r["label"]: (r["status"], r["note"]) for r in res["rows"]}
    assert list(got) == ["torch c=1", "torch c=4"]
    assert got["torch c=1"][0] == "ok" and got["torch c=4"] == ("error", "its process timed out")
    assert any("torch c=4" in s for s in res["skipped"])
    assert res["rows"][0]["fwd_bwd_ms"] > 0


def test_config_check_needs_cuda_and_skips_refused_shapes():
    from atlas_search.bench import config_check
    from atlas_search.ops import omega_triton

    assert config_check.main([]) == 2
    shapes = {tuple(j[0]) for j in config_check.jobs()}
    assert shapes and all(omega_triton.gpu_hazard(s[3], s[3], s[4], (9, 0), "3.9.0") is None
                          for s in shapes)
    assert {(1, 512, 2, 128, 16), (8, 4096, 16, 128, 16), (8, 4096, 16, 128, 1)} <= shapes
    jobs = config_check.jobs()
    assert all(k in config_check.KERNELS and ix == list(range(1, len(omega_triton.configs(
        k, s[3], s[3])))) for s, k, ix in jobs)
    assert len({(tuple(s), k) for s, k, _ in jobs}) == len(jobs)  # one child each


def test_config_check_child_death_fails_its_unfinished_configs(monkeypatch):
    """A child that prints its first config's row and then dies (a kernel fault): that
    config keeps its row, the rest fail with the exit; past the deadline nothing runs."""
    from atlas_search.bench import config_check

    shape = [8, 4096, 16, 128, 1]
    out = ('@@{"index": 1, "ran_triton": true, "errors": {"o": 0.001}, "ok": true}\n'
           "an illegal memory access was encountered\n")
    monkeypatch.setattr(config_check, "run_child", lambda cmd, timeout: (1, out))
    rows = config_check._launch((shape, "states", [1, 2, 3]), 60.0)
    assert [r["index"] for r in rows] == [1, 2, 3]
    assert rows[0]["ok"] is True and "error" not in rows[0]
    assert all(r["ok"] is False and "illegal memory" in r["error"] for r in rows[1:])
    assert all(len(r["config"]) == 4 for r in rows)
    late = config_check._launch((shape, "states", [1, 2]), 60.0, deadline=0.0)
    assert all(r["ok"] is None for r in late)


@pytest.mark.skipif(torch.cuda.is_available(), reason="counts the CPU op graph (interpreter)")
@pytest.mark.parametrize("window", [1, 4])
def test_torch_bytes_gd_coefficients_stay_out_of_torch(window):
    """The Triton path's torch side (kernels stubbed): the gd dual-form coefficients are
    built and differentiated by the coefficient kernels from the gates as given (no torch
    op pads, windows, builds or differentiates them), and q, k, v and the initial state are
    read in place: what torch still reads is, for c > 1, the halo rows' gradients added
    into their tokens: under one pass over q, k, v."""
    from atlas_search.bench.torch_bytes import measure

    res = measure(head_dim=16, window=window, t=256, tokens=256, width=64, chunk=16)
    for phase in ("fwd", "fwd_bwd"):
        ops = set(res[phase]["by_op"])
        assert not ops & {"aten::cumprod", "aten::cumprod_backward", "aten::masked_fill",
                          "aten::gather", "aten::gather_backward", "aten::bmm",
                          "aten::constant_pad_nd", "aten::cat", "aten::unfold_backward"}, ops
    qkv = 3 * 256 * 64 * 2 / 1e9  # q, k, v in fp16, GB
    assert res["fwd"]["gb"] < 0.1 * qkv and res["fwd_bwd"]["gb"] < qkv, res
    # host work: the two autograd functions and the used leaves' accumulations (q, k, v,
    # alpha, eta) are the only backward nodes (no head-major views turned back)
    assert res["fwd_bwd"]["autograd_nodes"] <= 7, res["fwd_bwd"]
    assert res["fwd_bwd"]["calls"] <= (20 if window == 1 else 30), res["fwd_bwd"]


def test_host_time_attributes_the_calls_host_time(tmp_path):
    """``host_time`` on CPU (torch backend, tiny shapes): one ``omega_linear`` per op, self
    time never above inclusive time, the wrappers removed afterwards, JSON written."""
    import importlib

    from atlas_search.bench import host_time as ht
    from atlas_search.ops import omega_linear as ol_fn
    ol_mod = importlib.import_module("atlas_search.ops.omega_linear")
    before = ol_mod._omega_torch
    res = ht.measure("cpu", head_dim=16, t=64, tokens=64, width=32, windows=(1, 4), calls=2,
                     backend="torch", dtype=torch.float32, top=50)
    assert ol_mod._omega_torch is before and ol_fn is ol_mod.omega_linear  # restored
    assert [c["window"] for c in res["cells"]] == [1, 4]
    for cell in res["cells"]:
        assert cell["fwd"]["host_ms"] > 0 and cell["fwd_bwd"]["wall_ms"] > 0
        rows = {r["name"]: r for r in cell["functions"]}
        assert rows["omega_linear.omega_linear"]["calls_per_op"] == 1
        assert rows["omega_linear._omega_torch"]["calls_per_op"] == 1
        for r in cell["functions"]:
            assert 0 <= r["self_us"] <= r["incl_us"] + 1e-6
        top = rows["omega_linear.omega_linear"]
        assert top["incl_us"] >= rows["omega_linear._omega_torch"]["incl_us"]
    text = ht.format_text(res)
    assert "c = 4" in text and "omega_linear._omega_torch" in text
    assert ht.main(["--device", "cpu", "--backend", "torch", "--head-dim", "16", "--T", "64",
                    "--tokens", "64", "--width", "32", "--window", "1", "--calls", "1",
                    "--dtype", "float32", "--json", str(tmp_path / "h.json")]) == 0
    assert json.loads((tmp_path / "h.json").read_text())["cells"][0]["window"] == 1


def test_bench_group_budgets_weight_fla(monkeypatch):
    """Each group gets its share of what is left of the budget, fla ``GROUP_WEIGHTS``
    shares (it autotunes per shape), and a group's unspent time goes to the later ones."""
    settings = ks.default_settings("cpu", quick=True, head_dims=(16,), ts=(64,),
                                   windows=(1, 4), budget_s=650.0)
    budgets: dict[str, float] = {}

    def run(cmd, timeout, env=None, capture=True, cwd=gc.PACKAGE_ROOT):
        spec = json.loads(Path(cmd[-2]).read_text())
        budgets[f"{spec['impls'][0]} {spec['windows']}"] = spec["budget_s"] + 10.0
        return 1, ""  # a lost group: its cells become error rows, no time spent

    monkeypatch.setattr(gc, "run_child", run)
    monkeypatch.setattr(ks, "environment", lambda device, fla=None: {"device": device})
    res = gc.run_bench_isolated(settings, FakeFla(), time.monotonic())
    assert list(budgets) == ["triton [1]", "fla [1, 4]", "triton [4]", "torch [1]",
                             "torch [4]", "sdpa [1, 4]"]
    w = gc.GROUP_WEIGHTS["fla"]
    assert budgets["triton [1]"] == pytest.approx(650.0 / (5 + w), rel=1e-3)
    assert budgets["fla [1, 4]"] == pytest.approx(w * 650.0 / (4 + w), rel=1e-3)
    assert budgets["sdpa [1, 4]"] == pytest.approx(650.0, rel=1e-3)  # nothing was spent
    assert all(r["status"] == "error" for r in res["rows"])
