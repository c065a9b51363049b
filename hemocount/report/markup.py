"""HTML building blocks of the report: escaping, numbers, reference-range marks, flag badges."""

from __future__ import annotations

import html
from urllib.parse import quote

from hemocount.flags import LEVELS, Flag
from hemocount.summary import AllFlag, RangeMark, SlideSummary

REPORT_NAME = "report.html"
SUMMARY_NAME = "summary.json"

#: Thumbnails per slide, and for the whole page: a 500-slide run gets one per slide, not 6000.
THUMBS_PER_SLIDE = 12
THUMBS_TOTAL = 400
THUMB_WIDTH = 200
#: Slides rendered open (``<details open>``) when the run has at most this many.
OPEN_SLIDES = 5
MAX_SKIPPED_LISTED = 200
ABBREV = {"neutrophil": "N", "eosinophil": "E", "lymphocyte": "L", "monocyte": "M", "basophil": "B"}


def esc(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def fmt_num(value: object) -> str:
    """Counts as integers, other numbers to 3 significant digits (whole numbers above 100), None as a dash."""
    if value is None or value == "":
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e12:
            return str(int(value))
        return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return esc(value)


def fmt_pct(value: object) -> str:
    return "—" if value is None else f"{float(value):.1f}"  # type: ignore[arg-type]


def href_of(rel: str) -> str:
    """A relative link into OUT, percent-encoded (so no scheme like ``javascript:`` survives) and escaped."""
    return esc(quote(rel.replace("\\", "/"), safe="/"))


def range_text(low: object, high: object) -> str:
    if low is None and high is None:
        return "—"
    return f"{fmt_num(low)}–{fmt_num(high)}"


_ARROWS = {"high": ("▲", "high"), "low": ("▼", "low"), "out": ("◆", "out of range")}


def direction(mark: RangeMark) -> tuple[str, str]:
    """("▲", "high"), ("▼", "low") or ("◆", "out of range") for a value the producer marked out of range
    (the same rule as slides.csv's ``_range`` columns: :attr:`RangeMark.direction`)."""
    return _ARROWS.get(mark.direction, _ARROWS["out"])


def oor_mark(mark: RangeMark) -> str:
    """An out-of-range marker that reads without colour: an arrow and the words high / low."""
    if not mark.out_of_range:
        return ""
    arrow, word = direction(mark)
    return f'<span class="oor" title="outside the reference range">{arrow} {word}</span>'


def all_flags(slide: SlideSummary) -> list[tuple[str, Flag]]:
    """Slide-level flags, then each field's flags, as (where, flag) pairs."""
    out = [("", f) for f in slide.flags]
    for fld in slide.fields:
        out += [(fld.image, f) for f in fld.flags]
    return out


def level_counts(flags: list[tuple[str, Flag]]) -> dict[str, int]:
    counts = {lvl: 0 for lvl in LEVELS}
    for _, f in flags:
        counts[f.level] += 1
    return counts


def level_badges(counts: dict[str, int]) -> str:
    return " ".join(f'<span class="badge lvl-{lvl}">{n} {lvl}{"s" * (n != 1)}</span>'
                    for lvl, n in counts.items() if n)


def all_badge(flag: AllFlag | None) -> str:
    if flag is None:
        return '<span class="muted">not classified</span>'
    detail = f"{fmt_num(flag.n_above)} of {fmt_num(flag.n_wbc)} WBCs"
    if flag.flagged:
        return f'<span class="badge all-flag">⚑ ALL flag raised</span> <span class="small">{detail}</span>'
    return f'<span class="ok-text">not raised</span> <span class="small">{detail}</span>'
