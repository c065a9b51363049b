"""Reference ranges for counts per microlitre and the WBC differential."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hemocount import CELL_CLASSES, WBC_SUBTYPES
from hemocount.config_files import load_mapping
from hemocount.errors import HemocountError

DEFAULT_FILE = Path(__file__).with_name("reference_ranges.json")


@dataclass
class ReferenceRanges:
    """Inclusive ``[low, high]`` ranges; a missing key means "no range, never marked"."""

    source: str
    counts_per_uL: dict[str, tuple[float, float]] = field(default_factory=dict)
    differential_pct: dict[str, tuple[float, float]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path | None = None) -> ReferenceRanges:
        """The built-in adult defaults, or a user's JSON/TOML file of the same shape.

        Raises:
            HemocountError: Unknown keys, or ranges that are not two numbers ``low <= high``.
        """
        data = json.loads(DEFAULT_FILE.read_text()) if path is None else load_mapping(path, "reference ranges")
        where = path or DEFAULT_FILE
        allowed = {"counts_per_uL": CELL_CLASSES, "differential_pct": WBC_SUBTYPES}
        unknown = set(data) - {"source", *allowed}
        if unknown:
            raise HemocountError(f"{where}: unknown reference range section(s) {sorted(unknown)}; "
                                 f"valid: source, {', '.join(allowed)}")
        parsed: dict[str, dict[str, tuple[float, float]]] = {}
        for section, names in allowed.items():
            parsed[section] = {}
            for name, rng in (data.get(section) or {}).items():
                if name not in names:
                    raise HemocountError(f"{where}: unknown name {name!r} in {section}; valid: {', '.join(names)}")
                if (not isinstance(rng, list | tuple) or len(rng) != 2
                        or not all(isinstance(v, int | float) for v in rng) or rng[0] > rng[1]):
                    raise HemocountError(f"{where}: {section}.{name} must be [low, high] with low <= high")
                parsed[section][name] = (float(rng[0]), float(rng[1]))
        source = str(data.get("source") or (f"user file {path}" if path else "built-in"))
        return cls(source, parsed["counts_per_uL"], parsed["differential_pct"])

    def mark(self, section: str, name: str, value: float | None) -> dict[str, Any]:
        """``ref_low``, ``ref_high`` and ``out_of_range`` (None when unknown) for one value."""
        rng = getattr(self, section).get(name)
        if rng is None or value is None:
            return {"ref_low": rng[0] if rng else None, "ref_high": rng[1] if rng else None, "out_of_range": None}
        return {"ref_low": rng[0], "ref_high": rng[1], "out_of_range": not rng[0] <= value <= rng[1]}

    def to_json(self) -> dict[str, Any]:
        """Plain dict for the run record and report."""
        return {"source": self.source,
                "ranges": {"counts_per_uL": {k: list(v) for k, v in self.counts_per_uL.items()},
                           "differential_pct": {k: list(v) for k, v in self.differential_pct.items()}}}
