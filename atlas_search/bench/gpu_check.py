"""One-command GPU check: Triton kernels against the reference, the GPU tests, the benchmark.

Run from a checkout with no install step (the GPU machine needs torch, triton and, for the
fla rows, einops; no pydantic, optuna or ray)::

    pip download --no-deps fla-core==0.5.2 flash-linear-attention==0.5.2 -d .whl  # once
    PYTHONPATH=. python -m atlas_search.bench.gpu_check --out gpu-out

or ``atlas-search bench --gpu-check --out gpu-out`` where the package is installed. Steps,
each timed (the whole check is sized to finish in under 8 minutes on an H100; ``--budget-s``):

1. flash-linear-attention from wheels: ``fla_core-*.whl`` (and ``flash_linear_attention-*.whl``
   when it carries ``fla/ops``, as releases before the fla-core split did) found in
   ``--fla-wheels DIR``, else ``<repo>/.whl``, the repository, its parent directory; they are
   unzipped into a temporary folder put first on ``sys.path``. Without a wheel an installed
   fla is used; without either, the fla rows are skipped with the reason.
2. At once, sharing the host's cores (nothing in this step is timed), until
   ``BENCH_RESERVE_S`` (260 s) before the end of the budget:

   - :func:`atlas_search.bench.kernel_check.run_kernel_checks` on ``cuda`` in fp32 and bf16
     (a subprocess with a timeout: a kernel fault cannot poison this process's CUDA context);
   - ``pytest -q tests/test_ops_triton.py -k "not interpreter_subprocess"`` (with
     ``-n`` workers when pytest-xdist is installed; the deselected test reruns the CPU params
     in the Triton interpreter, which CPU CI does; ``--pytest-all`` keeps it) when the
     repository's ``tests/`` is present and pytest is installed;
   - :mod:`atlas_search.bench.config_check`: every autotune config of every kernel against
     the first (a config that fails is left out of the benchmark's autotuning), and a
     compute-sanitizer memcheck of the case that faulted (``SANITIZE_SHAPE``;
     ``--skip-config-checks``);
   - :mod:`atlas_search.bench.prewarm`: the benchmark's Triton kernels (ours and fla's)
     compiled into Triton's disk cache by ``--prewarm-procs`` processes, each compiling a
     shard of every autotune list, so the benchmark does not compile on one core.
3. :mod:`atlas_search.bench.kernels_speed` at the GPU sizes with the rest of the budget,
   alone on the GPU, each implementation group in its own process
   (:func:`run_bench_isolated`).
4. ``OUT/gpu_check.json`` (rewritten after every step, so a run cut off by an outer limit
   still leaves what it measured; device, versions, kernel-check rows, pytest outcome, every bench
   row and ratio, the acceptance verdicts), ``OUT/bench_table.txt`` and ``.md``,
   ``OUT/pytest.txt``.

Exit status: 0 when everything that ran passed, 1 when a kernel check, the tests, a
benchmark cell or an acceptance verdict failed (a verdict that could not be measured, e.g.
without fla, is reported and does not fail), 2 without a CUDA device or on bad options.

Imports only the standard library, torch, and :mod:`atlas_search.bench` / ``.ops`` modules.
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .children import PACKAGE_ROOT, child_env, run_child

FLA_PINS = "fla-core==0.5.2 flash-linear-attention==0.5.2"
TOTAL_BUDGET_S = 470.0  # under 8 minutes with start-up and writing (an H100 run: 431 s)
SANITIZE_SHAPE = (2, 2048, 16, 128, 16)
"""B, T, H, D, c of the memcheck: where compute-sanitizer found the D = 128, c = 16 fault
(an out-of-bounds shared-memory read in ``_omega_bwd_local``, fixed since)."""
BENCH_RESERVE_S = 260.0  # left for the benchmark, which runs after the parallel phase
KERNEL_CHECK_TIMEOUT_S = 210.0
CONFIG_CHECK_PROCS = 6  # config-check children at once (one per shape and kernel;
# session 9, one per config: 36 took 155 s at 4 on an H200)
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class NoCuda(RuntimeError):
    """Raised (and reported as exit 2) when no CUDA device is visible."""


# ---------------------------------------------------------------- fla wheels


def default_wheel_dirs(repo: Path = PACKAGE_ROOT) -> list[Path]:
    return [repo / ".whl", repo, repo.parent]


def _version_key(path: Path) -> tuple:
    parts = path.name.split("-")
    ver = parts[1] if len(parts) > 1 else ""
    return tuple(int(n) for n in re.findall(r"\d+", ver))


def find_fla_wheels(dirs: Sequence[Path]) -> list[Path]:
    """The newest ``fla_core`` and ``flash_linear_attention`` wheels of the first folder in
    ``dirs`` that holds either (empty when none does)."""
    for d in dirs:
        if not d.is_dir():
            continue
        found = []
        for stem in ("fla_core", "flash_linear_attention"):
            wheels = sorted(d.glob(f"{stem}-*.whl"), key=_version_key)
            if wheels:
                found.append(wheels[-1])
        if found:
            return found
    return []


def _carries_ops(wheel: Path) -> bool:
    with zipfile.ZipFile(wheel) as z:
        return any(n.startswith("fla/ops/") for n in z.namelist())


def extract_wheels(wheels: Sequence[Path], dest: Path | None = None) -> Path:
    """Unzip ``wheels`` into ``dest`` (a new temporary folder, removed at exit, when None)."""
    if dest is None:
        dest = Path(tempfile.mkdtemp(prefix="atlas-fla-"))
        atexit.register(shutil.rmtree, dest, True)
    for w in wheels:
        with zipfile.ZipFile(w) as z:
            z.extractall(dest)
    return dest


@dataclass
class FlaSetup:
    available: bool
    message: str
    wheels: list[str] = field(default_factory=list)
    path: str | None = None
    version: str | None = None
    fn: Callable | None = None

    def info(self) -> dict:
        return {"available": self.available, "message": self.message, "wheels": self.wheels,
                "path": self.path, "version": self.version}

    def as_loaded(self) -> tuple[Callable | None, str | None, str]:
        return self.fn, self.version, self.message


def prepare_fla(dirs: Sequence[Path] | None = None, allow_installed: bool = True) -> FlaSetup:
    """Make ``fla`` importable from wheels in ``dirs`` (default :func:`default_wheel_dirs`)
    and load ``chunk_gated_delta_rule``; the message says what was used or why the fla rows
    are skipped."""
    from .kernels_speed import load_fla

    dirs = list(dirs) if dirs is not None else default_wheel_dirs()
    wheels = find_fla_wheels(dirs)
    if wheels:
        core = [w for w in wheels if w.name.startswith("fla_core-")]
        use = core + [w for w in wheels if w not in core and (not core or _carries_ops(w))]
        try:
            dest = extract_wheels(use)
        except (OSError, zipfile.BadZipFile) as exc:
            return FlaSetup(False, f"fla rows skipped: cannot unzip {use[0]}: {exc}",
                            [str(w) for w in use])
        sys.path.insert(0, str(dest))
        importlib.invalidate_caches()
        fn, version, msg = load_fla()
        names = ", ".join(w.name for w in use)
        if fn is None:
            return FlaSetup(False, f"fla rows skipped: {msg} (from {names})",
                            [str(w) for w in use], str(dest))
        return FlaSetup(True, f"{msg}; wheels: {names}", [str(w) for w in use], str(dest),
                        version, fn)
    where = ", ".join(str(d) for d in dirs)
    if allow_installed and importlib.util.find_spec("fla") is not None:
        fn, version, msg = load_fla()
        if fn is not None:
            return FlaSetup(True, f"no fla wheel in {where}; using the installed {msg}",
                            version=version, fn=fn)
        return FlaSetup(False, f"fla rows skipped: no fla wheel in {where} and the installed "
                        f"one fails: {msg}")
    return FlaSetup(False, f"fla rows skipped: no fla_core-*.whl / flash_linear_attention-*.whl "
                    f"in {where} (get them with: pip download --no-deps {FLA_PINS} -d .whl)")


# ---------------------------------------------------------------- kernel checks, pytest


def _kernel_check_child(out_file: str, quick: bool) -> None:
    """Subprocess body: run the CUDA kernel checks and write their rows as JSON."""
    import torch

    from .kernel_check import run_kernel_checks
    from .kernels_speed import jsonable

    rows = run_kernel_checks("cuda", [torch.float32, torch.bfloat16], quick=quick)
    Path(out_file).write_text(json.dumps(jsonable(rows)))


def run_kernel_checks_subprocess(quick: bool, timeout: float) -> dict:
    """``{"status": passed|failed|error|timeout, "rows", "summary", "message", "seconds"}``."""
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="atlas-kc-") as tmp:
        out_file = Path(tmp) / "rows.json"
        code = ("import sys; from atlas_search.bench.gpu_check import _kernel_check_child as f; "
                "f(sys.argv[1], sys.argv[2] == '1')")
        cmd = [sys.executable, "-c", code, str(out_file), "1" if quick else "0"]
        rc, output = run_child(cmd, timeout)
        secs = time.monotonic() - t0
        if rc is None:
            return {"status": "timeout", "rows": [], "summary": [], "seconds": secs,
                    "message": f"timed out after {timeout:.0f}s"}
        if rc != 0 or not out_file.exists():
            tail = output.strip().splitlines()[-15:]
            return {"status": "error", "rows": [], "summary": [], "seconds": secs,
                    "message": f"exit {rc}: " + "\n".join(tail)}
        rows = json.loads(out_file.read_text())
    bad = [r for r in rows if not r.get("ok")]
    summary: dict[tuple[str, str], dict] = {}
    for r in rows:
        key = (str(r.get("dtype")), str(r.get("quantity")))
        s = summary.setdefault(key, {"dtype": key[0], "quantity": key[1], "max_error": 0.0,
                                     "budget": r.get("budget"), "rows": 0, "failed": 0})
        err = r.get("error")
        err = float(err) if isinstance(err, (int, float, str)) else float("nan")
        s["max_error"] = max(s["max_error"], err) if err == err else err
        s["rows"] += 1
        s["failed"] += 0 if r.get("ok") else 1
    return {"status": "failed" if bad else "passed", "rows": rows,
            "summary": list(summary.values()), "seconds": secs,
            "message": f"{len(rows) - len(bad)}/{len(rows)} rows within budget"}


def bench_groups(settings) -> list[tuple[str, tuple[int, ...] | None]]:
    """The benchmark's process groups, in run order: ``(impl name, windows)``; the groups
    the acceptance verdicts read first, ``sdpa`` (a reference point only) last."""
    ws = tuple(settings.windows)
    first = tuple(w for w in ws if w == 1) or ws[:1]
    rest = tuple(w for w in ws if w not in first)
    groups = [("triton", first), ("fla", None)] + ([("triton", rest)] if rest else [])
    groups += [("torch", first)] + ([("torch", rest)] if rest else []) + [("sdpa", None)]
    return groups


GROUP_WEIGHTS = {"fla": 6.0}
"""Share of the benchmark budget per group, relative to 1 for the others: fla autotunes
its kernels at every new shape (on an H200 its group took 95 s for the 8 cells, against
9 to 20 s for each group of ours, whose autotune keys do not hold ``T``)."""


def _bench_child(settings_file: str, out_file: str) -> None:
    """Subprocess body: one :func:`kernels_speed.run_bench` group, its result as JSON."""
    from . import kernels_speed as ks

    raw = json.loads(Path(settings_file).read_text())
    settings = ks.Settings(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
    Path(out_file).write_text(json.dumps(ks.jsonable(ks.run_bench(settings))))


def run_bench_isolated(settings, fla, t0: float) -> dict:
    """The benchmark with each implementation group of :func:`bench_groups` in its own
    process, one after the other (never two on the GPU at once), sharing what is left of
    ``settings.budget_s``: a kernel fault (which kills a CUDA context) costs its own group's
    cells only. The rows, ratios and verdicts are merged as one run's."""
    from . import kernels_speed as ks

    start = time.monotonic()
    groups = bench_groups(settings)
    env = child_env([fla.path] if fla.available and fla.path else [])
    rows: list[dict] = []
    merged: dict = {"profile": [], "skipped": [], "footnotes": [], "impls": [],
                    "autotune": []}
    environment = None
    with tempfile.TemporaryDirectory(prefix="atlas-bench-") as tmp:
        for n, (name, windows) in enumerate(groups):
            left = settings.budget_s - (time.monotonic() - start)
            weights = [GROUP_WEIGHTS.get(g, 1.0) for g, _ in groups[n:]]
            share = max(30.0, left * weights[0] / sum(weights))
            sub = replace(settings, impls=(name,), budget_s=share - 10.0,
                          windows=windows or settings.windows)
            label = name if windows is None else f"{name} c={','.join(map(str, windows))}"
            _say(f"benchmark group {label} (budget {share:.0f}s, own process)", t0)
            sfile, ofile = Path(tmp) / f"s{n}.json", Path(tmp) / f"r{n}.json"
            sfile.write_text(json.dumps(ks.jsonable(asdict(sub))))
            code = ("import sys; from atlas_search.bench.gpu_check import _bench_child as f; "
                    "f(sys.argv[1], sys.argv[2])")
            rc, _ = run_child([sys.executable, "-c", code, str(sfile), str(ofile)],
                              share + 60.0, env, capture=False)
            if rc == 0 and ofile.exists():
                res = json.loads(ofile.read_text())
                environment = environment or res.get("environment")
                rows += res["rows"]
                for key in merged:
                    merged[key] += [x for x in res.get(key, []) if x not in merged[key]]
                continue
            why = "timed out" if rc is None else f"exited {rc}"
            merged["skipped"].append(f"group {label}: its process {why}")
            impls = [ks.Impl(name, w) for w in (windows or (None,))]
            for d in settings.head_dims:
                for t in settings.ts:
                    for impl in impls:
                        if not any(r["label"] == impl.label and r["head_dim"] == d and
                                   r["T"] == t for r in rows):
                            rows.append(ks._row(impl, d, t, settings.batch(t),
                                                settings.n_heads(d), settings, None, None,
                                                "error", f"its process {why}"))
    order = {label: i for i, label in enumerate(
        ks.Impl(name, w).label for name, ws in groups for w in (ws or (None,)))}
    rows.sort(key=lambda r: (settings.head_dims.index(r["head_dim"]),
                             settings.ts.index(r["T"]), order.get(r["label"], 99)))
    ratios = ks.compute_ratios(rows)
    return {"benchmark": "atlas-search kernels_speed",
            "environment": environment or ks.environment("cuda", fla.version),
            "settings": asdict(settings), "isolation": "one process per implementation group",
            "impls": merged["impls"], "rows": rows, "ratios": ratios,
            "acceptance": ks.acceptance(ratios), "skipped": merged["skipped"],
            "profile": merged["profile"], "autotune": merged["autotune"],
            "footnotes": merged["footnotes"],
            "elapsed_s": time.monotonic() - start}


PYTEST_DESELECT = "not interpreter_subprocess"
"""``-k`` of the GPU test run: the test that reruns the CPU params in a Triton-interpreter
subprocess is CPU CI's job (minutes); ``--pytest-all`` keeps it."""


def pytest_workers(cap: int = 4) -> int:
    """pytest-xdist workers for the GPU tests (0 without pytest-xdist): each test compiles
    its own kernel variants, so a few processes cut the wall time several fold."""
    if importlib.util.find_spec("xdist") is None:
        return 0
    return max(0, min(cap, (os.cpu_count() or 1) // 4))


def run_pytest(repo: Path, timeout: float, out_file: Path | None, run_all: bool = False,
               workers: int = 0) -> dict:
    """``pytest -q tests/test_ops_triton.py [-k PYTEST_DESELECT] [-n workers]`` in a
    subprocess; ``{"status": passed|failed|timeout|skipped, "returncode", "summary",
    "message", "seconds", "command"}``."""
    test = repo / "tests" / "test_ops_triton.py"
    if not test.exists():
        return {"status": "skipped", "message": f"no {test} (not a checkout)", "seconds": 0.0}
    if importlib.util.find_spec("pytest") is None:
        return {"status": "skipped", "message": "pytest is not installed", "seconds": 0.0}
    t0 = time.monotonic()
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test)]
    if not run_all:
        cmd += ["-k", PYTEST_DESELECT]
    if workers > 0:
        cmd += ["-n", str(workers)]
    rc, output = run_child(cmd, timeout, cwd=repo)
    command = " ".join(cmd[1:])
    secs = time.monotonic() - t0
    if out_file is not None:
        out_file.write_text(output)
    lines = [ln for ln in output.strip().splitlines() if ln.strip()]
    summary = lines[-1] if lines else ""
    if rc is None:
        return {"status": "timeout", "returncode": None, "summary": summary, "seconds": secs,
                "message": f"timed out after {timeout:.0f}s (--pytest-timeout)",
                "command": command}
    status = "passed" if rc == 0 else "failed"
    return {"status": status, "returncode": rc, "summary": summary, "seconds": secs,
            "message": summary, "tail": lines[-30:] if rc else [], "command": command}


# ---------------------------------------------------------------- the check


@dataclass
class Options:
    out: Path
    fla_wheels: Path | None = None
    budget_s: float = TOTAL_BUDGET_S
    pytest_timeout: float | None = None
    skip_pytest: bool = False
    pytest_all: bool = False
    skip_kernel_checks: bool = False
    full_kernel_checks: bool = False
    quick: bool = False
    prewarm_procs: int = 8
    config_checks: bool = True
    bench_reserve_s: float = BENCH_RESERVE_S
    prewarm_shards: int = 4
    bench_overrides: dict = field(default_factory=dict)


def _say(msg: str, t0: float) -> None:
    print(f"[{time.monotonic() - t0:6.1f}s] {msg}", flush=True)


def require_cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise NoCuda(f"no CUDA device visible (torch {torch.__version__}, {build}); the GPU "
                     "check needs one. On CPU run `atlas-search bench` (torch and reference "
                     "backends).")


def _save(out: Path, report: dict) -> None:
    """Write what is known so far: a check cut off by an outer time limit still leaves it."""
    from . import kernels_speed as ks

    (out / "gpu_check.json").write_text(json.dumps(ks.jsonable(report), indent=1) + "\n")


def run_gpu_check(opts: Options) -> int:
    """Run every step, write the files, return the exit status (raises :class:`NoCuda`)."""
    t0 = time.monotonic()
    require_cuda()
    from ..ops import omega_triton as ot
    from . import config_check, prewarm
    from . import kernels_speed as ks

    opts.out.mkdir(parents=True, exist_ok=True)
    deadline = t0 + opts.budget_s
    report: dict = {"check": "atlas-search gpu_check", "budget_s": opts.budget_s}

    dirs = [opts.fla_wheels] if opts.fla_wheels else None
    fla = prepare_fla(dirs)
    report["fla"] = fla.info()
    _say(fla.message, t0)
    report["environment"] = ks.environment("cuda", fla.version)
    env = report["environment"]
    _say(f"{env['device_name']}: torch {env['torch']} (CUDA {env['cuda']}), triton "
         f"{env['triton']}, fla {env['fla']}", t0)

    # phase 1, all at once on the host's cores: the kernel checks, the GPU tests and the
    # compiles of the benchmark's kernels (prewarm); none of them is timed
    phase1_end = deadline - opts.bench_reserve_s
    settings = ks.default_settings("cuda", quick=opts.quick, **opts.bench_overrides)
    with ThreadPoolExecutor(max_workers=4) as pool:
        cc_job = san_job = None
        if opts.config_checks:
            cc_jobs = config_check.jobs()
            _say(f"config checks: every autotune config against the first, "
                 f"{sum(len(j[2]) for j in cc_jobs)} configs in {len(cc_jobs)} children "
                 f"(one per shape and kernel), {CONFIG_CHECK_PROCS} at once", t0)
            cc_job = pool.submit(config_check.run_config_checks, CONFIG_CHECK_PROCS, 180.0,
                                 config_check.SHAPES, phase1_end)
            san_job = pool.submit(config_check.sanitize, SANITIZE_SHAPE,
                                  max(30.0, phase1_end - time.monotonic()))
        kc_job = pt_job = None
        if not opts.skip_kernel_checks:
            timeout = min(KERNEL_CHECK_TIMEOUT_S, max(30.0, phase1_end - time.monotonic()))
            _say(f"kernel checks (triton vs float64 reference, fp32 + bf16, "
                 f"{'full' if opts.full_kernel_checks else 'quick'} grid, timeout "
                 f"{timeout:.0f}s)", t0)
            kc_job = pool.submit(run_kernel_checks_subprocess, not opts.full_kernel_checks,
                                 timeout)
        if not opts.skip_pytest:
            timeout = opts.pytest_timeout or max(30.0, phase1_end - time.monotonic())
            workers = pytest_workers()
            sel = "" if opts.pytest_all else f" -k '{PYTEST_DESELECT}'"
            _say(f"pytest -q tests/test_ops_triton.py{sel}"
                 f"{f' -n {workers}' if workers else ''} (timeout {timeout:.0f}s)", t0)
            pt_job = pool.submit(run_pytest, PACKAGE_ROOT, timeout, opts.out / "pytest.txt",
                                 opts.pytest_all, workers)
        if opts.prewarm_procs > 0:
            impls = ("triton", "fla") if fla.available else ("triton",)
            jobs = prewarm.jobs_for(settings, impls, shards=opts.prewarm_shards)
            timeout = max(30.0, phase1_end - time.monotonic())
            _say(f"compiling the benchmark's kernels: {len(jobs)} jobs, {opts.prewarm_procs} "
                 f"at once (timeout {timeout:.0f}s)", t0)
            pw = prewarm.prewarm(jobs, opts.prewarm_procs, timeout,
                                 [fla.path] if fla.available and fla.path else [])
            bad = [r for r in pw["rows"] if not r["ok"]]
            _say(f"compiled: {pw['jobs'] - pw['failed']}/{pw['jobs']} jobs in "
                 f"{pw['seconds']:.0f}s" + "".join(
                     f"\n    failed {r['label']} D={r['head_dim']} {r['shard']}: {r['error']}"
                     for r in bad[:4]), t0)
        else:
            pw = {"jobs": 0, "failed": 0, "seconds": 0.0, "rows": [], "message": "off"}
        report["prewarm"] = pw
        kc = kc_job.result() if kc_job else {"status": "skipped", "message":
                                              "--skip-kernel-checks", "rows": [],
                                              "seconds": 0.0}
        pt = pt_job.result() if pt_job else {"status": "skipped", "message": "--skip-pytest",
                                             "seconds": 0.0}
        cc = cc_job.result() if cc_job else []
        san = san_job.result() if san_job else {"status": "skipped", "lines": []}
    bad_cfg = [r for r in cc if r["ok"] is False]
    # a config that failed at any shape is left out of the benchmark's autotuning (its
    # processes inherit the variable); the others still run
    skip = sorted({ot.skip_entry(r["kernel"], ot.Cfg(*r["config"])) for r in bad_cfg})
    if skip:
        os.environ[ot.SKIP_ENV] = ",".join(skip)
    report["config_checks"] = {"rows": cc, "failed": len(bad_cfg), "skipped_configs": skip,
                               "ok": sum(r["ok"] is True for r in cc)}
    report["sanitizer"] = {"shape": SANITIZE_SHAPE, **san}
    if cc:
        unrun = sum(r["ok"] is None for r in cc)
        _say(f"config checks: {report['config_checks']['ok']}/{len(cc)} ok, {len(bad_cfg)} "
             "failed" + (f", {unrun} not run (time budget)" if unrun else "")
             + (f" -> the benchmark leaves {len(skip)} out ({ot.SKIP_ENV}="
                f"{os.environ[ot.SKIP_ENV]})" if bad_cfg else ""), t0)
        for r in bad_cfg[:8]:
            print(f"    FAIL {r['shape']} {r['kernel']} #{r['index']} {r.get('config', '')}: "
                  f"{r.get('error') or r.get('errors')}", flush=True)
    _say(f"compute-sanitizer on {SANITIZE_SHAPE} (B, T, H, D, c; the case that faulted, "
         f"ATLAS_TRITON_UNSAFE=1): {san['status']}", t0)
    for line in san.get("lines", [])[:12]:
        print(f"    {line}", flush=True)
    report["kernel_checks"] = kc
    _say(f"kernel checks: {kc['status']}: {kc['message']} ({kc['seconds']:.0f}s)", t0)
    for s in kc.get("summary", []):
        flag = "ok  " if not s["failed"] else "FAIL"
        print(f"    {flag} {s['dtype']:9s} {s['quantity']:12s} max rel err "
              f"{s['max_error']:.2e} (budget {s['budget']:g}), {s['rows']} rows", flush=True)
    bad = [r for r in kc.get("rows", []) if not r.get("ok")]
    for r in bad[:10]:
        print(f"    FAIL {r.get('case')} {r.get('dtype')} {r.get('quantity')}: error "
              f"{r.get('error')} > {r.get('budget')} {r.get('note', '')}", flush=True)
    if len(bad) > 10:
        print(f"    ... {len(bad) - 10} more failing rows in gpu_check.json", flush=True)
    report["pytest"] = pt
    _say(f"pytest: {pt['status']}: {pt['message']} ({pt['seconds']:.0f}s)", t0)
    for line in pt.get("tail", [])[-12:]:
        print(f"    {line}", flush=True)
    _save(opts.out, report)

    # phase 2, alone on the GPU and the host: the benchmark
    bench_budget = max(60.0, deadline - time.monotonic())
    settings = replace(settings, budget_s=bench_budget)
    _say(f"benchmark (budget {bench_budget:.0f}s): T {list(settings.ts)}, head dims "
         f"{list(settings.head_dims)}, {settings.tokens} tokens, {settings.dtype}", t0)
    try:
        bench = run_bench_isolated(settings, fla, t0)
    except Exception as exc:  # noqa: BLE001 - reported in the JSON, the check fails
        bench = {"error": f"{type(exc).__name__}: {exc}"}
    report["bench"] = bench
    if "error" not in bench:
        text = ks.format_text(bench)
        (opts.out / "bench_table.txt").write_text(text + "\n")
        (opts.out / "bench_table.md").write_text(ks.format_markdown(bench))
        print("\n" + text + "\n", flush=True)
    report["acceptance"] = bench.get("acceptance")
    _save(opts.out, report)

    failures = []
    if kc["status"] not in ("passed", "skipped"):
        failures.append(f"kernel checks {kc['status']}: {kc['message']}")
    if pt["status"] not in ("passed", "skipped"):
        failures.append(f"pytest {pt['status']}: {pt['message']}")
    if "error" in bench:
        failures.append(f"benchmark error: {bench['error']}")
    broken = [r for r in bench.get("rows", []) if r.get("status") == "error"]
    if broken:
        failures.append(f"benchmark: {len(broken)} cells failed, e.g. {broken[0]['label']} "
                        f"D={broken[0]['head_dim']} T={broken[0]['T']}: {broken[0]['note']}")
    for key, v in (bench.get("acceptance") or {}).items():
        if v["ok"] is False:
            failures.append(f"acceptance {key} failed: {v['note']}")
    report["failures"] = failures
    report["ok"] = not failures
    report["exit_code"] = EXIT_FAILED if failures else EXIT_OK
    report["elapsed_s"] = time.monotonic() - t0
    _save(opts.out, report)
    _say(f"wrote {opts.out / 'gpu_check.json'}, bench_table.txt, bench_table.md", t0)
    for f in failures:
        print(f"FAILED: {f}", flush=True)
    print("GPU check " + ("passed" if not failures else f"failed ({len(failures)})"), flush=True)
    return report["exit_code"]


def parse_sizes(text: str) -> list[int]:
    """``"2k, 4096"`` -> ``[2048, 4096]`` (a ``k`` suffix multiplies by 1024); raises
    ``ValueError`` naming the part that is not a whole number. Used by this module's options
    and by ``atlas-search bench``."""
    out = []
    for part in text.split(","):
        p = part.strip().lower()
        if not p:
            continue
        try:
            out.append(int(p[:-1]) * 1024 if p.endswith("k") else int(p))
        except ValueError:
            raise ValueError(f"{part.strip()!r} is not a whole number (e.g. 2048 or 2k)") from None
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m atlas_search.bench.gpu_check",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for the JSON and tables")
    ap.add_argument("--fla-wheels", type=Path, default=None,
                    help="folder with fla_core-*.whl (default: <repo>/.whl, <repo>, its parent)")
    ap.add_argument("--budget-s", type=float, default=TOTAL_BUDGET_S,
                    help="seconds for the whole check (default %(default)s)")
    ap.add_argument("--pytest-timeout", type=float, default=None,
                    help="default: what the budget leaves after the benchmark")
    ap.add_argument("--skip-pytest", action="store_true")
    ap.add_argument("--pytest-all", action="store_true",
                    help="also the CPU-interpreter subprocess test (minutes; CPU CI runs it)")
    ap.add_argument("--skip-kernel-checks", action="store_true")
    ap.add_argument("--full-kernel-checks", action="store_true",
                    help="the whole kernel-check grid (default: the quick one)")
    ap.add_argument("--quick", action="store_true", help="a smaller benchmark grid")
    ap.add_argument("--skip-config-checks", action="store_true",
                    help="do not run every autotune config against the first, nor the "
                    "compute-sanitizer probe")
    ap.add_argument("--bench-reserve-s", type=float, default=BENCH_RESERVE_S,
                    help="seconds of the budget kept for the benchmark (default %(default)s)")
    ap.add_argument("--prewarm-procs", type=int, default=8,
                    help="processes compiling the benchmark's kernels before it (0: none)")
    ap.add_argument("--prewarm-shards", type=int, default=4,
                    help="processes sharing one cell's autotune configs (default 4)")
    ap.add_argument("--T", dest="ts", type=parse_sizes, default=None,
                    help="e.g. 2k,4k,8k,16k")
    ap.add_argument("--head-dim", dest="head_dims", type=parse_sizes, default=None,
                    help="e.g. 64,128")
    ap.add_argument("--tokens", type=int, default=None, help="B*T (default 32768)")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--profile-T", dest="profile_t", type=int, default=None,
                    help="T of the kernel profiles (default 4096; 0: none)")
    args = ap.parse_args(argv)
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in
                 {"ts": args.ts, "head_dims": args.head_dims, "tokens": args.tokens,
                  "repeats": args.repeats, "profile_t": args.profile_t}.items()
                 if v is not None}
    opts = Options(out=args.out, fla_wheels=args.fla_wheels, budget_s=args.budget_s,
                   pytest_timeout=args.pytest_timeout, skip_pytest=args.skip_pytest,
                   pytest_all=args.pytest_all,
                   skip_kernel_checks=args.skip_kernel_checks,
                   full_kernel_checks=args.full_kernel_checks, quick=args.quick,
                   prewarm_procs=args.prewarm_procs, bench_reserve_s=args.bench_reserve_s,
                   prewarm_shards=args.prewarm_shards,
                   config_checks=not args.skip_config_checks,
                   bench_overrides=overrides)
    try:
        return run_gpu_check(opts)
    except NoCuda as exc:
        print(f"gpu_check: {exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
