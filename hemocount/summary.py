"""Typed per-slide summaries: what ``slides`` computes and ``sinks``, the CLI and ``summary.json`` share.

Each class turns into the documented JSON shape with ``to_json`` (``summary.json``, which the report is
rendered from) and back with ``from_json``; inside a run and in the report they are read by attribute, never
by key. ``from_json`` is lenient about what an older or hand-made summary leaves out (defaults) and strict
about what it holds (a wrong type raises ``TypeError``), so ``hemocount report`` can name the bad slide.
"""

from __future__ import annotations

import types
import typing
from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypeVar

from hemocount import RESEARCH_USE
from hemocount.flags import Flag, flags_from_json, flags_to_json

_T = TypeVar("_T")


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a field's type hint (an int fits a float; a bool fits neither)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in typing.get_args(hint))
    if hint is type(None):
        return value is None
    kind = origin or hint
    if kind is Any:
        return True
    if kind in (int, float) and isinstance(value, bool):
        return False
    if kind is float:
        return isinstance(value, int | float)
    return isinstance(value, kind)


def _known(cls: type[_T], obj: Any) -> _T:
    """``cls(**obj)`` with the keys ``cls`` does not know dropped (newer or older summaries) and each value
    checked against its field's type."""
    if not isinstance(obj, dict):
        raise TypeError(f"{cls.__name__} must be an object, not {type(obj).__name__}")
    hints = typing.get_type_hints(cls)
    kept = {f.name: obj[f.name] for f in fields(cls) if f.name in obj}  # type: ignore[arg-type]
    for key, value in kept.items():
        if not _fits(value, hints[key]):
            raise TypeError(f"{key!r} is {type(value).__name__}")
    return cls(**kept)


def _get(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any) -> Any:
    """``obj[key]`` if present and not null, checked to be ``kind``; else ``default``."""
    value = obj.get(key)
    if value is None:
        return default
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
        raise TypeError(f"{key!r} is {type(value).__name__}")
    return value


def _req(obj: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    """``obj[key]``, which must be present and of ``kind``."""
    if obj.get(key) is None:
        raise KeyError(key)
    return _get(obj, key, kind, None)


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


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
    def from_json(cls, obj: dict[str, Any] | None) -> Differential:
        """Inverse of :meth:`to_json` (absent: not classified)."""
        if obj is None:
            return cls("not classified", 0, 0, 0, [])
        if not isinstance(obj, dict):
            raise TypeError(f"'differential' is {type(obj).__name__}")
        return cls(str(_get(obj, "status", str, "not classified")), _get(obj, "min_cells", int, 0),
                   _get(obj, "n_classified", int, 0), _get(obj, "n_uncertain", int, 0),
                   [_known(DiffRow, r) for r in _get(obj, "rows", list, [])])


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
        if not isinstance(obj, dict):
            raise TypeError(f"'all_flag' is {type(obj).__name__}")
        return cls(_req(obj, "flagged", bool), _req(obj, "n_above", int), _req(obj, "n_wbc", int),
                   float(_req(obj, "prob", (int, float))), _req(obj, "min_cells", int))


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
    flags: list[Flag]
    #: Magnification from the red-cell ruler (None: not estimated) and what scale handling did
    #: (:class:`hemocount.scale.ScaleInfo` status and factor), so a user sees which fields were resampled.
    um_per_px: float | None = None
    scale: str = "off"
    scale_factor: float = 1.0

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> FieldSummary:
        """Inverse of ``asdict`` (a field an older summary leaves out gets its default)."""
        if not isinstance(obj, dict):
            raise TypeError(f"a field is {type(obj).__name__}")
        return cls(str(_get(obj, "image", str, "")), _get(obj, "annotated", str, None),
                   _get(obj, "status", str, "ok"), _get(obj, "error", str, ""),
                   _get(obj, "counts", dict, None), flags_from_json(obj.get("flags")),
                   _get(obj, "um_per_px", (int, float), None), _get(obj, "scale", str, "off"),
                   float(_get(obj, "scale_factor", (int, float), 1.0)))


def _r3(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


@dataclass(frozen=True)
class WbcFamiliarity:
    """A slide's verdict on its WBCs: the mean feature distance, the mean classifier uncertainty (1 - top
    subtype probability) and the distance of the WBC crops' mean colour to the nearest training lab, each
    with the threshold for the slide's size (None: too few WBCs, or that test not in the reference); flagged
    if any exceeds its threshold."""

    score: float | None
    n_wbc: int
    threshold: float | None
    uncertainty: float | None = None
    uncertainty_threshold: float | None = None
    stain_distance: float | None = None
    stain_threshold: float | None = None

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
    def judged(self) -> bool:
        """At least one test had a threshold for this many WBCs (else: too few WBCs to judge)."""
        return any(t is not None for t in (self.threshold, self.uncertainty_threshold, self.stain_threshold))

    @property
    def stain_flagged(self) -> bool:
        """The WBC crops' mean colour is farther from every training lab than its threshold."""
        return (self.stain_distance is not None and self.stain_threshold is not None
                and self.stain_distance > self.stain_threshold)

    @property
    def flagged(self) -> bool:
        """Any test fires."""
        return self.distance_flagged or self.uncertainty_flagged or self.stain_flagged

    def to_json(self) -> dict[str, Any]:
        """JSON form (``summary.json``'s ``wbc_familiarity``)."""
        return {"score": _r3(self.score), "n_wbc": self.n_wbc, "threshold": _r3(self.threshold),
                "flagged": self.flagged, "uncertainty": _r3(self.uncertainty),
                "uncertainty_threshold": _r3(self.uncertainty_threshold),
                "stain_distance": _r3(self.stain_distance), "stain_threshold": _r3(self.stain_threshold)}

    @classmethod
    def from_json(cls, obj: dict[str, Any] | None) -> WbcFamiliarity | None:
        """Inverse of :meth:`to_json`."""
        if obj is None:
            return None
        if not isinstance(obj, dict):
            raise TypeError(f"'wbc_familiarity' is {type(obj).__name__}")
        num = (int, float)
        return cls(_get(obj, "score", num, None), _req(obj, "n_wbc", int), _get(obj, "threshold", num, None),
                   _get(obj, "uncertainty", num, None), _get(obj, "uncertainty_threshold", num, None),
                   _get(obj, "stain_distance", num, None), _get(obj, "stain_threshold", num, None))


@dataclass
class SlideSummary:
    """Everything reported for one slide."""

    slide: str
    n_fields: int
    n_skipped: int
    counts: dict[str, int]
    differential: Differential
    all_flag: AllFlag | None
    flags: list[Flag]
    stain: dict[str, Any] | None
    estimates: list[Estimate]
    fields: list[FieldSummary]
    #: How unlike the subtype classifier's training labs the WBCs look (None: not scored).
    wbc_familiarity: WbcFamiliarity | None = None

    @property
    def all_flagged(self) -> bool:
        """The slide's ALL flag is raised (False when the WBCs were not classified)."""
        return self.all_flag is not None and self.all_flag.flagged

    def to_json(self) -> dict[str, Any]:
        """One element of summary.json's ``slides``."""
        return {"slide": self.slide, "n_fields": self.n_fields, "n_skipped": self.n_skipped, "counts": self.counts,
                "differential": self.differential.to_json(),
                "all_flag": self.all_flag.to_json() if self.all_flag else None, "flags": flags_to_json(self.flags),
                "stain": self.stain, "estimates": [asdict(e) for e in self.estimates],
                "fields": [asdict(f) for f in self.fields],
                "wbc_familiarity": self.wbc_familiarity.to_json() if self.wbc_familiarity else None}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> SlideSummary:
        """Inverse of :meth:`to_json`.

        Raises:
            TypeError, ValueError, KeyError: a value of the wrong type (the caller names the slide).
        """
        fields_ = [FieldSummary.from_json(f) for f in _get(obj, "fields", list, [])]
        return cls(str(obj["slide"]), _get(obj, "n_fields", int, len(fields_)), _get(obj, "n_skipped", int, 0),
                   _get(obj, "counts", dict, {}), Differential.from_json(obj.get("differential")),
                   AllFlag.from_json(obj.get("all_flag")), flags_from_json(obj.get("flags")), _get(obj, "stain", dict, None),
                   [_known(Estimate, e) for e in _get(obj, "estimates", list, [])], fields_,
                   WbcFamiliarity.from_json(obj.get("wbc_familiarity")))


@dataclass
class Summary:
    """``summary.json``: the run's record (the documented subset of run.json the report shows) and its slides."""

    run: dict[str, Any]
    slides: list[SlideSummary]
    research_use: str = RESEARCH_USE

    def to_json(self) -> dict[str, Any]:
        """The ``summary.json`` object."""
        return {"research_use": self.research_use, "run": self.run, "slides": [s.to_json() for s in self.slides]}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Summary:
        """Inverse of :meth:`to_json`.

        Raises:
            TypeError: the shape is not a summary's.
            ValueError: a slide holds a value of the wrong type (named).
        """
        if not isinstance(obj, dict) or not isinstance(obj.get("run"), dict):
            raise TypeError("not a hemocount summary ('run' missing or not an object)")
        raw = obj.get("slides")
        if not isinstance(raw, list) or not all(isinstance(s, dict) and "slide" in s for s in raw):
            raise TypeError("not a hemocount summary ('slides' must be a list of slide objects)")
        slides = []
        for s in raw:
            try:
                slides.append(SlideSummary.from_json(s))
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"slide {s.get('slide')!r} has an unexpected value "
                                 f"({type(exc).__name__}: {exc})") from None
        return cls(obj["run"], slides, str(obj.get("research_use") or RESEARCH_USE))
