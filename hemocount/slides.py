"""Slides: which fields belong together, and the per-slide summary (counts, differential, flags).

A slide is a folder of field images (each subfolder of a source folder is one slide, with everything
below it) or a single image (loose images, and image files given directly, are each their own slide).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hemocount import CELL_CLASSES, WBC_SUBTYPES
from hemocount.calibration import Calibration
from hemocount.domain import field_vector
from hemocount.io import absolute
from hemocount.qc import QCConfig, slide_flags
from hemocount.reference import ReferenceRanges
from hemocount.results import ImageResult
from hemocount.stats import binomial_ci
from hemocount.summary import Differential, DiffRow, Estimate, FieldSummary, SlideSummary


def assign_slides(sources: Sequence[str | os.PathLike[str]], images: list[Path]) -> list[str]:
    """Slide name of every image (in the order of ``images``)."""
    # Paths as given, links not followed: a linked field belongs to the folder it is linked into.
    roots = [absolute(s) for s in sources if Path(s).is_dir()]
    prefix = len(roots) > 1  # several source folders: keep their names apart
    out = []
    for img in images:
        name = img.name
        full = absolute(img)
        for root in roots:
            try:
                rel = full.relative_to(root)
            except ValueError:
                continue
            name = rel.parts[0]
            if prefix:
                name = f"{root.name}/{name}"
            break
        out.append(name)
    return out


@dataclass
class SlideSettings:
    """What turns a slide's fields into its summary."""

    qc: QCConfig
    ranges: ReferenceRanges
    calibration: Calibration | None = None
    classified: bool = True
    all_rule: Any = None  # hemocount.classify.pipeline.AllFlagRule when classified
    stain_ref: Any = None  # hemocount.domain.StainReference, for the unfamiliar_lab flag
    wbc_ref: Any = None  # hemocount.classify.familiarity.FeatureReference: the WBCs' side of unfamiliar_lab


def differential(subtype_counts: dict[str, int], min_cells: int, ranges: ReferenceRanges,
                 classified: bool = True) -> Differential:
    """Counts, percentages and exact 95 % CIs per subtype, marked against the reference ranges."""
    n = sum(subtype_counts[s] for s in WBC_SUBTYPES)
    if not classified:
        status = "not classified"
    else:
        status = "ok" if n >= min_cells and n > 0 else "insufficient cells"
    rows = []
    for s in WBC_SUBTYPES:
        k = subtype_counts[s]
        pct = 100 * k / n if n else None
        lo, hi = binomial_ci(k, n) if n else (None, None)
        # Only a reportable differential is compared with reference ranges.
        mark = ranges.mark("differential_pct", s, pct if status == "ok" else None)
        rows.append(DiffRow(subtype=s, count=k, pct=None if pct is None else round(pct, 1),
                            ci_low=None if lo is None else round(100 * lo, 1),
                            ci_high=None if hi is None else round(100 * hi, 1), **mark))
    return Differential(status, min_cells, n, subtype_counts.get("uncertain", 0), rows)


def summarize_slide(name: str, fields: list[ImageResult], settings: SlideSettings,
                    annotated: dict[str, str | None]) -> SlideSummary:
    """One slide's summary (``to_json`` gives the shape documented for ``summary.json``)."""
    ok = [r for r in fields if r.status == "ok"]
    counts = {c: sum(r.counts()[c] for r in ok) for c in CELL_CLASSES}
    sub = {c: sum(r.subtype_counts()[c] for r in ok) for c in (*WBC_SUBTYPES, "uncertain")}
    diff = differential(sub, settings.qc.min_wbc, settings.ranges, settings.classified)
    all_flag = None
    if settings.classified and settings.all_rule is not None:
        probs = np.concatenate([r.all_probs() for r in ok]) if ok else np.zeros(0)
        all_flag = settings.all_rule.evaluate(probs)
    stain = None
    vectors = [v for r in ok if (v := field_vector(r.quality)) is not None]
    if settings.stain_ref is not None and vectors:
        stain = settings.stain_ref.evaluate(np.array(vectors))
    wbcs = None
    if settings.classified and settings.wbc_ref is not None:
        cut = settings.all_rule.prob if settings.all_rule is not None else None
        # distances, top probabilities and crop colours of every field's WBCs (no field: empty)
        parts = zip(*[r.familiarity_scores(cut) for r in ok]) if ok else ([], [], [])
        dist, top, colour = (np.concatenate(p) if len(p) else None for p in parts)
        wbcs = settings.wbc_ref.evaluate(np.zeros(0) if dist is None else dist, top, colour)
    flags = slide_flags(counts=counts, n_fields=len(ok), n_skipped=len(fields) - len(ok),
                        n_classified=diff.n_classified if settings.classified else None,
                        field_flags_=[r.flags for r in ok], cfg=settings.qc, stain=stain, wbcs=wbcs,
                        all_flagged=bool(all_flag is not None and all_flag.flagged))
    estimates = []
    if settings.calibration is not None:
        area = float(sum(r.width * r.height for r in ok))
        for e in settings.calibration.estimates(n_fields=len(ok), counts=counts, area_px=area):
            estimates.append(Estimate(**e, **settings.ranges.mark("counts_per_uL", e["quantity"], e["value"])))
    listed = [FieldSummary(r.name, annotated.get(r.name), r.status, r.error,
                           r.counts() if r.status == "ok" else None, r.flags, r.scale.um_per_px, r.scale.status,
                           r.scale.factor) for r in fields]
    return SlideSummary(name, len(ok), len(fields) - len(ok), counts, diff, all_flag, flags, stain, estimates, listed,
                        wbcs)


def summarize_slides(results: list[ImageResult], settings: SlideSettings,
                     annotated: dict[str, str | None]) -> list[SlideSummary]:
    """Summaries of all slides, in order of first appearance."""
    groups: dict[str, list[ImageResult]] = {}
    for r in results:
        groups.setdefault(r.slide or r.name, []).append(r)
    return [summarize_slide(name, fields, settings, annotated) for name, fields in groups.items()]
