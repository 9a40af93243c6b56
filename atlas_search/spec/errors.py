"""Located, human-readable spec errors (no tracebacks) with "did you mean" hints."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

Path = tuple[str | int, ...]


def dotted(path: Path) -> str:
    """``("model", "memory", "kind")`` -> ``model.memory.kind``; list indices as ``[i]``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "<top level>"


def did_you_mean(word: object, options: Iterable[object]) -> str | None:
    """The closest option to ``word`` by spelling, if any is close enough."""
    opts = [str(o) for o in options]
    hit = difflib.get_close_matches(str(word), opts, n=1, cutoff=0.6)
    return hit[0] if hit else None


@dataclass
class Issue:
    """One problem: where (path + file line/column when known, or the command-line
    ``origin`` such as ``--set train.steps=abc`` that set the value) and what."""

    path: Path
    message: str
    line: int | None = None
    column: int | None = None
    hint: str | None = None
    origin: str | None = None

    def render(self, source: str | None) -> str:
        where = source or "<input>"
        if self.origin is not None:
            where = self.origin
        elif self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        text = f"{where}: {dotted(self.path)}: {self.message}"
        if self.hint:
            text += f"\n    {self.hint}"
        return text


@dataclass
class SpecError(Exception):
    """Invalid input: a list of located issues. The CLI prints them and exits with code 2."""

    issues: list[Issue]
    source: str | None = None
    warnings: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return "\n".join(i.render(self.source) for i in self.issues)


def allowed_hint(word: object, options: Sequence[object], label: str = "allowed") -> str:
    """'did you mean X? allowed: a, b, c' (the suggestion only when one is close)."""
    near = did_you_mean(word, options)
    shown = ", ".join(str(o) for o in options)
    return (f"did you mean {near!r}? " if near is not None else "") + f"{label}: {shown}"
