"""``bench``: kernel speed (triton / torch / reference vs fla and SDPA) and the GPU check."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..bench.gpu_check import TOTAL_BUDGET_S
from .app import app, bad, out, out_folder


def _bad(option: str, msg: str) -> typer.Exit:
    return bad(f"{option}: {msg}")


def _ints(option: str, values: list[str], minimum: int = 1) -> tuple[int, ...] | None:
    """``["2k,4k", "8192"]`` -> ``(2048, 4096, 8192)``; None when no value was given."""
    from ..bench.gpu_check import parse_sizes

    found: list[int] = []
    for v in values:
        try:
            found += parse_sizes(v)
        except ValueError as exc:
            raise _bad(option, str(exc)) from None
    if values and not found:
        raise _bad(option, "no value given")
    for n in found:
        if n < minimum:
            raise _bad(option, f"{n} is below {minimum}")
    return tuple(dict.fromkeys(found)) or None


def _out_file(option: str, path: Path | None) -> None:
    """Exit(2) before any timing when ``path`` cannot be written as a file."""
    if path is None:
        return
    if path.is_dir():
        raise _bad(option, f"{path} is a folder; give a file name")
    if path.parent.exists() and not path.parent.is_dir():
        raise _bad(option, f"cannot write {path}: {path.parent} is a file")
    out_folder(path.parent, f"{option} {path}")


def _positive(option: str, value: int | float | None, minimum: float = 1) -> None:
    if value is not None and value < minimum:
        raise _bad(option, f"must be >= {minimum:g}, got {value:g}")


def _rich_tables(result: dict) -> list[Table]:
    from ..bench import kernels_speed as ks

    cols, cells = ks.main_table(result)
    main = Table(title=ks.header(result), title_justify="left")
    for name, left in cols:
        main.add_column(name, justify="left" if left else "right", overflow="fold",
                        max_width=48 if name == "note" else None)
    rows = result["rows"]
    for i, row in enumerate(cells):
        group = (rows[i]["head_dim"], rows[i]["T"])
        last = i + 1 == len(rows) or (rows[i + 1]["head_dim"], rows[i + 1]["T"]) != group
        main.add_row(*row, end_section=last)
    tables = [main]
    cols, cells = ks.ratio_table(result)
    if cells:
        rt = Table(title="time ratios (< 1: the first is faster)", title_justify="left")
        for name, left in cols:
            rt.add_column(name, justify="left" if left else "right")
        for row in cells:
            rt.add_row(*row)
        tables.append(rt)
    return tables


@app.command()
def bench(
    gpu_check: Annotated[bool, typer.Option(
        "--gpu-check", help="the GPU check: kernel checks, GPU tests and the benchmark; "
        "writes gpu_check.json and bench_table.txt/.md to --out (needs CUDA)")] = False,
    out_dir: Annotated[Path | None, typer.Option(
        "--out", help="folder for the tables and JSON (required with --gpu-check)")] = None,
    json_file: Annotated[Path | None, typer.Option(
        "--json", help="write the figures as JSON to this file")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    ts: Annotated[list[str], typer.Option(
        "--T", help="sequence lengths, e.g. --T 2k,4k (repeatable; default GPU 2k-16k, "
        "CPU 512-4096)")] = [],  # noqa: B006
    head_dims: Annotated[list[str], typer.Option(
        "--head-dim", help="head dims, e.g. --head-dim 64,128")] = [],  # noqa: B006
    tokens: Annotated[int | None, typer.Option(
        help="B*T, constant over T (default GPU 32768, CPU 8192)")] = None,
    width: Annotated[int | None, typer.Option(
        help="H*D: heads = width // head dim (default GPU 2048, CPU 128)")] = None,
    heads: Annotated[int | None, typer.Option(help="a fixed number of heads (overrides "
                                              "--width)")] = None,
    chunk: Annotated[int | None, typer.Option(help="chunk size b of our backends (64)")] = None,
    windows: Annotated[list[str], typer.Option(
        "--window", help="Omega windows c of our backends (default 1,16)")] = [],  # noqa: B006
    dtype: Annotated[str, typer.Option(help="auto (bf16 on GPU, fp32 on CPU) | float32 | "
                                       "bfloat16 | float16 | float64")] = "auto",
    repeats: Annotated[int | None, typer.Option(help="timed runs per cell (median)")] = None,
    warmup: Annotated[int | None, typer.Option(help="untimed runs per cell")] = None,
    max_ref_t: Annotated[int | None, typer.Option(
        "--max-ref-T", help="CPU: time the reference loop only up to this T (512)")] = None,
    budget_s: Annotated[float | None, typer.Option(
        help="skip the remaining cells after this many seconds (gpu-check: the whole "
        f"check, default {TOTAL_BUDGET_S:g})")] = None,
    profile_t: Annotated[int | None, typer.Option(
        "--profile-T", help="profile one fwd+bwd per head dim at this T (GPU: triton c=1, "
        "c=16, fla; CPU: torch c=1, c=16; default GPU 4096, CPU off; 0: off)")] = None,
    threads: Annotated[int, typer.Option(help="CPU: torch threads")] = 1,
    quick: Annotated[bool, typer.Option(help="a tiny grid (smoke test)")] = False,
    fla_wheels: Annotated[Path | None, typer.Option(
        help="folder with fla_core-*.whl (default: .whl in the repo, the repo, its parent)")
        ] = None,
    skip_pytest: Annotated[bool, typer.Option(help="gpu-check: do not run the GPU tests")
                           ] = False,
) -> None:
    """Kernel speed of the Omega rule (gd, l2): triton and torch backends, fla's
    chunk_gated_delta_rule and SDPA flash on a GPU; torch and reference on CPU."""
    t = _ints("--T", ts)
    d = _ints("--head-dim", head_dims)
    w = _ints("--window", windows)
    for opt, val in (("--tokens", tokens), ("--width", width), ("--heads", heads),
                     ("--chunk", chunk), ("--repeats", repeats), ("--threads", threads)):
        _positive(opt, val)
    _positive("--warmup", warmup, 0)
    _positive("--max-ref-T", max_ref_t, 0)
    _positive("--budget-s", budget_s, 1)
    _positive("--profile-T", profile_t, 0)
    if device not in ("auto", "cpu", "cuda"):
        raise _bad("--device", f"must be auto, cpu or cuda, got {device!r}")
    import torch

    from ..bench import kernels_speed as ks

    if dtype != "auto" and dtype not in ks.DTYPES:
        raise _bad("--dtype", f"must be auto or one of {', '.join(ks.DTYPES)}, got {dtype!r}")

    if out_dir is not None:
        out_folder(out_dir, f"--out {out_dir}")
    _out_file("--json", json_file)
    if gpu_check:
        from ..bench import gpu_check as gc

        if out_dir is None:
            raise _bad("--gpu-check", "needs --out DIR (where gpu_check.json and the tables go)")
        if json_file is not None:
            raise _bad("--json", "not used by --gpu-check, which writes its figures to "
                       "--out DIR/gpu_check.json")
        overrides = {"ts": t, "head_dims": d, "tokens": tokens, "repeats": repeats,
                     "width": width, "heads": heads, "chunk": chunk, "windows": w,
                     "warmup": warmup, "dtype": None if dtype == "auto" else dtype,
                     "profile_t": profile_t}
        opts = gc.Options(out=out_dir, fla_wheels=fla_wheels,
                          budget_s=budget_s or gc.TOTAL_BUDGET_S, skip_pytest=skip_pytest,
                          quick=quick,
                          bench_overrides={k: v for k, v in overrides.items() if v is not None})
        try:
            code = gc.run_gpu_check(opts)
        except gc.NoCuda as exc:
            raise _bad("--gpu-check", str(exc)) from None
        raise typer.Exit(code)

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise _bad("--device", f"cuda asked for, but no CUDA device is visible (torch "
                   f"{torch.__version__})")
    settings = ks.default_settings(
        device, quick=quick, ts=t, head_dims=d, tokens=tokens, width=width, heads=heads,
        chunk=chunk, windows=w, dtype=None if dtype == "auto" else dtype, repeats=repeats,
        warmup=warmup, max_ref_t=max_ref_t, budget_s=budget_s)
    if profile_t is not None:
        settings = replace(settings, profile_t=profile_t or None)
    if settings.profile_t and settings.profile_t not in settings.ts:
        timed = ", ".join(map(str, settings.ts))
        if profile_t:
            raise _bad("--profile-T", f"{profile_t} is not one of the timed T ({timed}); the "
                       "profile reruns a timed cell")
        out.print(f"no kernel profile: its default T = {settings.profile_t} is not one of the "
                  f"timed T ({timed}); pass --profile-T", markup=False)
        settings = replace(settings, profile_t=None)
    fla = None
    if device == "cuda":
        from ..bench.gpu_check import prepare_fla

        setup = prepare_fla([fla_wheels] if fla_wheels else None)
        fla = setup.as_loaded() if setup.available else (
            None, None, setup.message.removeprefix("fla rows skipped: "))
    else:
        torch.set_num_threads(threads)
    result = ks.run_bench(settings, fla=fla, progress=lambda m: out.print(m, markup=False))
    out.print()
    for table in _rich_tables(result):
        out.print(table)
    for line in ks.tail_lines(result):
        out.print(line, markup=False)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "bench_table.txt").write_text(ks.format_text(result) + "\n")
        (out_dir / "bench_table.md").write_text(ks.format_markdown(result))
        (out_dir / "bench.json").write_text(json.dumps(ks.jsonable(result), indent=1) + "\n")
        out.print(f"wrote {out_dir}/bench_table.txt, bench_table.md, bench.json", markup=False)
    if json_file is not None:
        json_file.parent.mkdir(parents=True, exist_ok=True)
        json_file.write_text(json.dumps(ks.jsonable(result), indent=1) + "\n")
        out.print(f"wrote {json_file}", markup=False)
