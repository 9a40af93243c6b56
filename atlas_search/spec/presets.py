"""Named presets: concrete ``model:`` blocks kept as YAML in ``spaces/presets/NAME.yaml``.

``model: {preset: atlas, d_model: 64}`` starts from the preset's model block and
overrides fields (nested blocks such as ``memory`` merge key by key).
"""

from __future__ import annotations

import copy
import os
from functools import cache
from pathlib import Path
from typing import Any

SIZE_FIELDS = ("d_model", "n_layers", "n_heads", "head_dim", "vocab_size")
"""Model fields a baseline takes from the space it is enqueued in, not from its preset."""


def presets_dir() -> Path:
    """Where preset YAML lives: ``$ATLAS_SEARCH_PRESETS``; else ``atlas_search/_presets``
    (a wheel carries ``spaces/presets`` there); else the repository's ``spaces/presets``
    (an editable install)."""
    env = os.environ.get("ATLAS_SEARCH_PRESETS")
    if env:
        return Path(env)
    packaged = Path(__file__).resolve().parents[1] / "_presets"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "spaces" / "presets"


def preset_names() -> list[str]:
    d = presets_dir()
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


@cache
def _preset_model(name: str) -> dict[str, Any]:
    from .yamlio import read_document

    doc = read_document(presets_dir() / f"{name}.yaml")
    data = doc.data
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise ValueError(f"preset file {name}.yaml has no model: mapping")
    if set(data) - {"model", "name"}:
        raise ValueError(f"preset file {name}.yaml may only hold model: (and name:)")
    return data["model"]


def preset_model(name: str) -> dict[str, Any]:
    """The raw model block of preset ``name`` (a fresh copy)."""
    return copy.deepcopy(_preset_model(name))


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``; mappings merge recursively, everything else replaces."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and not _is_dist(v):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _is_dist(v: dict[str, Any]) -> bool:
    return any(k in v for k in ("choice", "int", "float", "value"))
