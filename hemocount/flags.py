"""A QC flag: one typed record through the field, the slide, the journal, ``summary.json`` and the sinks.

Kept apart from :mod:`hemocount.qc` (which decides *when* to flag) so that results, summaries and the report can
hold flags without importing the QC rules.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Severity order, most severe first: ``error`` (count not usable), ``warning`` (count in doubt), ``info`` (a
#: note, e.g. a field's share of a slide-level verdict).
LEVELS = ("error", "warning", "info")


@dataclass(frozen=True)
class Flag:
    """One QC finding: a stable machine-readable ``code``, a ``level`` from :data:`LEVELS` and a sentence for
    the user. Invalid levels or empty codes raise ``ValueError`` (``TypeError`` for a non-string) at construction, so a flag read back from a
    journal or ``summary.json`` is as checked as one made by the QC rules."""

    code: str
    level: str
    message: str

    def __post_init__(self) -> None:
        if not isinstance(self.code, str):
            raise TypeError(f"flag code must be a string, got {type(self.code).__name__}")
        if not self.code:
            raise ValueError("flag code must not be empty")
        if self.level not in LEVELS:
            raise ValueError(f"flag {self.code!r}: level {self.level!r} is not one of {', '.join(LEVELS)}")
        if not isinstance(self.message, str):
            raise TypeError(f"flag {self.code!r}: message must be a string, got {type(self.message).__name__}")

    @property
    def doubts_count(self) -> bool:
        """Whether this flag is more than a note (``warning`` or ``error``)."""
        return self.level != "info"

    def to_json(self) -> dict[str, str]:
        return {"code": self.code, "level": self.level, "message": self.message}

    @classmethod
    def from_json(cls, obj: Any) -> Flag:
        """A flag from its JSON object; ``TypeError``/``ValueError`` naming what is wrong otherwise."""
        if not isinstance(obj, dict):
            raise TypeError(f"a flag must be an object with code, level and message, got {type(obj).__name__}")
        missing = [k for k in ("code", "level", "message") if k not in obj]
        if missing:
            raise ValueError(f"flag {obj.get('code', '?')!r} lacks {', '.join(missing)}")
        return cls(obj["code"], obj["level"], obj["message"])


def flags_to_json(flags: list[Flag]) -> list[dict[str, str]]:
    return [f.to_json() for f in flags]


def flags_from_json(obj: Any) -> list[Flag]:
    """Flags from a JSON list (absent: none); ``TypeError`` on anything else."""
    if obj is None:
        return []
    if not isinstance(obj, list):
        raise TypeError(f"flags must be a list, got {type(obj).__name__}")
    return [Flag.from_json(f) for f in obj]
