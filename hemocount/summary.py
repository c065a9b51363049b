"""Typed per-slide summaries: what ``slides`` computes and ``sinks``, the CLI and ``summary.json`` share.

Each class turns into the documented JSON shape with ``to_json`` (``summary.json``, which the report is
rendered from) and back with ``from_json``; inside a run they are read by attribute, never by key.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class RangeMark:
    """A value's reference range and whether it lies outside it (None: no range, or not compared)."""

    ref_low: float | None = None
    ref_high: float | None = None
    out_of_range: bool | None = None

    @property
    def direction(self) -> str:
        """``high`` / ``low`` for a value marked outside its range, else empty (the report's ▲ / ▼)."""
        if not self.out_of_range:
            return ""
        value, low, high = self._value(), self.ref_low, self.ref_high
        if isinstance(value, int | float) and isinstance(low, int | float) and isinstance(high, int | float):
            return "high" if value > (low + high) / 2 else "low"  # rounding may put a value on the limit itself
        return "out"

    def _value(self) -> float | None:  # the holder's marked value
        return None


@dataclass
class DiffRow(RangeMark):
    """One subtype of a differential: count, % of classified WBCs and its exact 95 % CI."""

    subtype: str = ""
    count: int = 0
    pct: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None

    def _value(self) -> float | None:
        return self.pct


@dataclass
class Differential:
    """A slide's WBC differential: ``ok``, ``insufficient cells`` or ``not classified``."""

    status: str
    min_cells: int
    n_classified: int
    n_uncertain: int
    rows: list[DiffRow]

    def to_json(self) -> dict[str, Any]:
        """The ``differential`` object of summary.json."""
        return {"status": self.status, "min_cells": self.min_cells, "n_classified": self.n_classified,
                "n_uncertain": self.n_uncertain, "rows": [_row_json(r) for r in self.rows]}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Differential:
        """Inverse of :meth:`to_json`."""
        return cls(obj["status"], obj["min_cells"], obj["n_classified"], obj["n_uncertain"],
                   [DiffRow(**r) for r in obj["rows"]])


def _row_json(r: DiffRow) -> dict[str, Any]:
    d = asdict(r)
    return {k: d[k] for k in ("subtype", "count", "pct", "ci_low", "ci_high", "ref_low", "ref_high", "out_of_range")}


@dataclass
class AllFlag:
    """The slide-level ALL flag with its inputs (a screening aid, never a diagnosis)."""

    flagged: bool
    n_above: int
    n_wbc: int
    prob: float
    min_cells: int

    @property
    def rule(self) -> str:
        """The rule in words."""
        return f"at least {self.min_cells} WBCs with ALL probability >= {self.prob:g}"

    def to_json(self) -> dict[str, Any]:
        """Plain dict (summary.json, run.json)."""
        return {**asdict(self), "rule": self.rule}

    @classmethod
    def from_json(cls, obj: dict[str, Any] | None) -> AllFlag | None:
        """Inverse of :meth:`to_json` (None stays None)."""
        if obj is None:
            return None
        return cls(bool(obj["flagged"]), int(obj["n_above"]), int(obj["n_wbc"]), float(obj["prob"]),
                   int(obj["min_cells"]))


@dataclass
class Estimate(RangeMark):
    """A calibrated cells/µL estimate with its formula and inputs."""

    quantity: str = ""
    value: float = 0.0
    unit: str = "cells/uL"
    formula: str = ""
    inputs: dict[str, Any] = field(default_factory=dict)

    def _value(self) -> float | None:
        return self.value


@dataclass
class FieldSummary:
    """One field as a slide lists it."""

    image: str
    annotated: str | None
    status: str
    error: str
    counts: dict[str, int] | None
    flags: list[dict[str, str]]
    #: Magnification from the red-cell ruler (None: not estimated) and what scale handling did
    #: (:class:`hemocount.scale.ScaleInfo` status and factor), so a user sees which fields were resampled.
    um_per_px: float | None = None
    scale: str = "off"
    scale_factor: float = 1.0


def _r3(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


@dataclass(frozen=True)
class WbcFamiliarity:
    """A slide's verdict on its WBCs: the mean feature distance and the mean classifier uncertainty
    (1 - top subtype probability), each with the threshold for the slide's size (None: too few WBCs, or no
    uncertainty test); flagged if either mean exceeds its threshold."""

    score: float | None
    n_wbc: int
    threshold: float | None
    uncertainty: float | None = None
    uncertainty_threshold: float | None = None

    @property
    def distance_flagged(self) -> bool:
        """The mean feature distance exceeds its threshold."""
        return self.score is not None and self.threshold is not None and self.score > self.threshold

    @property
    def uncertainty_flagged(self) -> bool:
        """The mean uncertainty exceeds its threshold."""
        return (self.uncertainty is not None and self.uncertainty_threshold is not None
                and self.uncertainty > self.uncertainty_threshold)

    @property
    def flagged(self) -> bool:
        """Either test fires."""
        return self.distance_flagged or self.uncertainty_flagged

    def to_json(self) -> dict[str, Any]:
        """JSON form (``summary.json``'s ``wbc_familiarity``)."""
        return {"score": _r3(self.score), "n_wbc": self.n_wbc, "threshold": _r3(self.threshold),
                "flagged": self.flagged, "uncertainty": _r3(self.uncertainty),
                "uncertainty_threshold": _r3(self.uncertainty_threshold)}

    @classmethod
    def from_json(cls, obj: dict[str, Any] | None) -> WbcFamiliarity | None:
        """Inverse of :meth:`to_json`."""
        return None if obj is None else cls(obj["score"], obj["n_wbc"], obj["threshold"], obj.get("uncertainty"),
                                            obj.get("uncertainty_threshold"))


@dataclass
class SlideSummary:
    """Everything reported for one slide."""

    slide: str
    n_fields: int
    n_skipped: int
    counts: dict[str, int]
    differential: Differential
    all_flag: AllFlag | None
    flags: list[dict[str, str]]
    stain: dict[str, Any] | None
    estimates: list[Estimate]
    fields: list[FieldSummary]
    #: How unlike the subtype classifier's training labs the WBCs look (None: not scored).
    wbc_familiarity: WbcFamiliarity | None = None

    def to_json(self) -> dict[str, Any]:
        """One element of summary.json's ``slides``."""
        return {"slide": self.slide, "n_fields": self.n_fields, "n_skipped": self.n_skipped, "counts": self.counts,
                "differential": self.differential.to_json(),
                "all_flag": self.all_flag.to_json() if self.all_flag else None, "flags": self.flags,
                "stain": self.stain, "estimates": [asdict(e) for e in self.estimates],
                "fields": [asdict(f) for f in self.fields],
                "wbc_familiarity": self.wbc_familiarity.to_json() if self.wbc_familiarity else None}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> SlideSummary:
        """Inverse of :meth:`to_json`."""
        return cls(obj["slide"], obj["n_fields"], obj["n_skipped"], obj["counts"],
                   Differential.from_json(obj["differential"]), AllFlag.from_json(obj.get("all_flag")),
                   obj["flags"], obj.get("stain"), [Estimate(**e) for e in obj.get("estimates", [])],
                   [FieldSummary(**f) for f in obj.get("fields", [])],
                   WbcFamiliarity.from_json(obj.get("wbc_familiarity")))
