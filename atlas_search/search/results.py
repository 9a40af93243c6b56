"""Reading a finished or running study back: open it from a run folder or a URL, rank
trials, and export the best configs as YAML the builder loads unchanged."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from .. import __version__
from ..spec.yamlio import dump_yaml
from .factory import JOURNAL, open_storage, shown_url


def open_study(run_dir: Path, storage: str | None = None,
               note: Callable[[str], None] | None = None) -> optuna.Study:
    """The study of ``run_dir`` (its journal file, or ``storage``). A storage holding one
    study opens it whatever its name (``note`` is told when that is not the folder's name:
    a renamed or copied run folder); with several, the folder's name picks one. Reading
    never creates anything: a journal file that does not exist is a FileNotFoundError."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = storage or str(run_dir / JOURNAL)
    if storage is None and not (run_dir / JOURNAL).exists():
        raise FileNotFoundError(f"{run_dir}: no {JOURNAL} here (pass --storage URL for a "
                                "database study)")
    if storage is not None and ("://" not in storage or storage.startswith("journal://")):
        path = Path(storage.removeprefix("journal://"))
        if not path.is_file():
            raise FileNotFoundError(f"no journal at {path}")
    st = open_storage(url)
    names = [s.study_name for s in optuna.get_all_study_summaries(st)]
    if not names:
        raise FileNotFoundError(f"{shown_url(url)}: holds no study")
    name = names[0] if len(names) == 1 else run_dir.name
    if name not in names:
        raise FileNotFoundError(f"{shown_url(url)}: no study named {name!r} (found "
                                f"{', '.join(names)}); name the folder after one of them")
    if name != run_dir.name and note is not None:
        note(f"{shown_url(url)} holds one study, {name!r}: showing it")
    return optuna.load_study(study_name=name, storage=st)


def ranked(study: optuna.Study) -> list[FrozenTrial]:
    """Complete trials best first (single objective), or the Pareto set (several)."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(study.directions) > 1:
        return sorted(study.best_trials, key=lambda t: t.number)
    sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
    return sorted(done, key=lambda t: (sign * t.value, t.number))


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """Every trial as a plain dict (state, values, params, duration, reasons)."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        ua = t.user_attrs
        rows.append({
            "number": t.number, "state": t.state.name, "values": t.values,
            "params": t.params, "duration": ua.get("duration"),
            "baseline": ua.get("enqueued"),
            "reason": ua.get("fail_reason") or ua.get("prune_reason"),
            "metrics": ua.get("metrics", {}), "step": ua.get("step"),
            "requeued": (t.state == TrialState.FAIL and not ua.get("final", True)
                         and not ua.get("infeasible")),
        })
    return rows


def git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def export_best(study: optuna.Study, out_dir: Path, top: int = 3) -> list[Path]:
    """Write the ``top`` best configs (all of the Pareto set for several objectives) as
    concrete YAML with provenance comments, each with a ``.json`` sidecar; nothing (not
    even ``out_dir``) when none of them has a config. OSError when ``out_dir`` cannot
    be created or written."""
    best = ranked(study)
    if len(study.directions) == 1:
        best = best[:top]
    if not any(t.user_attrs.get("config") is not None for t in best):
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    rev = git_revision()
    names = [f"{d.name.lower()} {m}" for d, m in zip(
        study.directions, study.user_attrs.get("objectives", []) or ["value"] * 9,
        strict=False)]
    written = []
    for rank, t in enumerate(best, 1):
        config = t.user_attrs.get("config")
        if config is None:
            continue
        provenance = {
            "study": study.study_name, "trial": t.number, "rank": rank, "values": t.values,
            "objectives": names, "params": t.params, "metrics": t.user_attrs.get("metrics", {}),
            "seed": config.get("train", {}).get("seed"), "atlas_search": __version__,
            "git_revision": rev, "baseline": t.user_attrs.get("enqueued"),
        }
        header = "".join(f"# {line}\n" for line in [
            f"exported by atlas-search {__version__} from study {study.study_name!r}, "
            f"trial {t.number} (rank {rank})",
            f"values: {t.values}  objectives: {', '.join(names)}",
            "metrics: " + ", ".join(f"{k}={v:.4g}" for k, v in provenance["metrics"].items()
                                    if isinstance(v, (int, float))),
            f"seed: {provenance['seed']}  git revision: {rev or 'unknown'}",
        ])
        stem = f"{study.study_name}-trial{t.number}"
        path = out_dir / f"{stem}.yaml"
        path.write_text(dump_yaml({**config, "name": stem}, header))
        (out_dir / f"{stem}.json").write_text(json.dumps(provenance, indent=2) + "\n")
        written.append(path)
    return written
