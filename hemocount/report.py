"""Self-contained HTML report of a count run, rendered from ``OUT/summary.json``.

The page has inline CSS, inline SVG charts and thumbnails embedded as data URIs: it opens offline, from
any folder, and a Content-Security-Policy forbids it to load anything. Every string from the summary
(slide names come from folder names) is HTML-escaped.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

from hemocount import CELL_CLASSES, RESEARCH_USE
from hemocount.errors import HemocountError
from hemocount.io import atomic_write_text

REPORT_NAME = "report.html"
SUMMARY_NAME = "summary.json"
#: Thumbnails per slide, and for the whole page: a 500-slide run gets one per slide, not 6000.
THUMBS_PER_SLIDE = 12
THUMBS_TOTAL = 400
THUMB_WIDTH = 200
#: Slides rendered open (``<details open>``) when the run has at most this many.
OPEN_SLIDES = 5
MAX_SKIPPED_LISTED = 200
LEVELS = ("error", "warning", "info")
_ABBREV = {"neutrophil": "N", "eosinophil": "E", "lymphocyte": "L", "monocyte": "M", "basophil": "B"}


def load_summary(out_dir: Path) -> dict[str, Any]:
    """Read and sanity-check ``out_dir/summary.json``.

    Raises:
        HemocountError: The file is missing, not JSON, or not a hemocount summary.
    """
    path = Path(out_dir) / SUMMARY_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise HemocountError(f"{path}: no such file (write it with `hemocount count ... -o {out_dir}`)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise HemocountError(f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        summary = json.loads(text)
    except json.JSONDecodeError as exc:
        raise HemocountError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    _check_summary(summary, path)
    return summary


def _check_summary(summary: Any, where: object) -> None:
    if not isinstance(summary, dict):
        raise HemocountError(f"{where}: not a hemocount summary (expected a JSON object)")
    if not isinstance(summary.get("run"), dict):
        raise HemocountError(f"{where}: not a hemocount summary ('run' missing or not an object)")
    slides = summary.get("slides")
    if not isinstance(slides, list) or not all(isinstance(s, dict) and "slide" in s for s in slides):
        raise HemocountError(f"{where}: not a hemocount summary ('slides' must be a list of slide objects)")


def write_report(summary: dict[str, Any], out_dir: Path) -> Path:
    """Render ``summary`` (the ``summary.json`` dict) as ``out_dir/report.html``, written atomically.

    Annotated images referenced by the summary (paths relative to ``out_dir``) become thumbnails
    linking to the full images; a missing or unreadable one becomes a placeholder.

    Returns:
        The path of the written report.

    Raises:
        HemocountError: ``summary`` does not have the structure of a hemocount summary.
    """
    path = Path(out_dir) / REPORT_NAME
    atomic_write_text(path, render_html(summary, Path(out_dir)))
    return path


def render_html(summary: dict[str, Any], out_dir: Path) -> str:
    """The report page as one HTML string (see :func:`write_report`)."""
    where = Path(out_dir) / SUMMARY_NAME
    _check_summary(summary, where)
    run = summary["run"]
    research = str(summary.get("research_use") or RESEARCH_USE)
    try:
        body = _body(summary, research, Path(out_dir))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise HemocountError(f"{where}: unexpected value in 'run' ({type(exc).__name__}: {exc})") from None
    script_hash = base64.b64encode(hashlib.sha256(_SCRIPT.encode()).digest()).decode()
    # CSP: nothing may be fetched (images are data URIs); only this page's own optional script runs.
    csp = (f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{script_hash}'; "
           "base-uri 'none'; form-action 'none'")
    n = len(summary["slides"])
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta http-equiv="Content-Security-Policy" content="{csp}">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f'<meta name="generator" content="hemocount {_e(run.get("hemocount_version", ""))}">\n'
            f"<title>hemocount report: {n} slide{'s' * (n != 1)}</title>\n<style>{_CSS}</style>\n</head>\n"
            f"<body>\n{body}\n<script>{_SCRIPT}</script>\n</body>\n</html>\n")


def _body(summary: dict[str, Any], research: str, out_dir: Path) -> str:
    run, slides = summary["run"], summary["slides"]
    per_slide = max(1, min(THUMBS_PER_SLIDE, THUMBS_TOTAL // max(1, len(slides))))
    thumbs = _Thumbnails(out_dir)
    try:
        thumbs.prefetch([f["annotated"] for slide in slides for f in (slide.get("fields") or [])[:per_slide]
                         if isinstance(f, dict) and isinstance(f.get("annotated"), str)])
    except (AttributeError, TypeError):
        pass  # a malformed summary gets its one-line error from _slide_section below
    sections = []
    for i, slide in enumerate(slides):
        try:
            sections.append(_slide_section(slide, i, thumbs, per_slide, open_=len(slides) <= OPEN_SLIDES))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise HemocountError(f"{out_dir / SUMMARY_NAME}: slide {slide.get('slide')!r} has an "
                                 f"unexpected value ({type(exc).__name__}: {exc})") from None
    created = f" on {_e(run['created'])}" if run.get("created") else ""
    return "\n".join([
        _header(research, run),
        "<main>",
        f'<p class="ruo-banner" role="note"><strong>{_e(research)}</strong> Counts, differentials and flags '
        "are produced by machine-learning models and have not been validated for clinical use.</p>",
        _run_section(run, slides, out_dir),
        _overview(slides),
        '<section id="slides"><h2>Slides</h2>' + _toggle_buttons() + "\n".join(sections) + "</section>",
        f'<footer><p>{_e(research)} Generated by hemocount {_e(run.get("hemocount_version", ""))}{created}.</p>'
        "</footer>",
        "</main>",
    ])


# ---------------------------------------------------------------------------------------------- helpers


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _num(value: object) -> str:
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
    return _e(value)


def _pct(value: object) -> str:
    return "—" if value is None else f"{float(value):.1f}"  # type: ignore[arg-type]


def _href(rel: str) -> str:
    """A relative link into OUT, percent-encoded (so no scheme like ``javascript:`` survives) and escaped."""
    return _e(quote(rel.replace("\\", "/"), safe="/"))


def _range_text(low: object, high: object) -> str:
    if low is None and high is None:
        return "—"
    return f"{_num(low)}–{_num(high)}"


def _direction(row: dict[str, Any], value_key: str) -> tuple[str, str]:
    """("▲", "high"), ("▼", "low") or ("◆", "out of range") for a row the producer marked out of range."""
    value, low, high = row.get(value_key), row.get("ref_low"), row.get("ref_high")
    if isinstance(value, (int, float)):
        if isinstance(high, (int, float)) and value > high:
            return "▲", "high"
        if isinstance(low, (int, float)) and value < low:
            return "▼", "low"
    return "◆", "out of range"


def _oor_mark(row: dict[str, Any], value_key: str) -> str:
    """An out-of-range marker that reads without colour: an arrow and the words high / low."""
    if not row.get("out_of_range"):
        return ""
    arrow, word = _direction(row, value_key)
    return f'<span class="oor" title="outside the reference range">{arrow} {word}</span>'


def _all_flags(slide: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Slide-level flags, then each field's flags, as (where, flag) pairs."""
    out = [("", f) for f in slide.get("flags") or []]
    for fld in slide.get("fields") or []:
        out += [(str(fld.get("image", "")), f) for f in fld.get("flags") or []]
    return out


def _level_counts(flags: list[tuple[str, dict[str, Any]]]) -> dict[str, int]:
    counts = {lvl: 0 for lvl in LEVELS}
    for _, f in flags:
        lvl = f.get("level") if f.get("level") in counts else "info"
        counts[lvl] += 1
    return counts


def _level_badges(counts: dict[str, int]) -> str:
    return " ".join(f'<span class="badge lvl-{lvl}">{n} {lvl}{"s" * (n != 1)}</span>'
                    for lvl, n in counts.items() if n)


def _all_badge(flag: dict[str, Any] | None) -> str:
    if not flag:
        return '<span class="muted">not classified</span>'
    detail = f"{_num(flag.get('n_above'))} of {_num(flag.get('n_wbc'))} WBCs"
    if flag.get("flagged"):
        return f'<span class="badge all-flag">⚑ ALL flag raised</span> <span class="small">{detail}</span>'
    return f'<span class="ok-text">not raised</span> <span class="small">{detail}</span>'


# ----------------------------------------------------------------------------------------- page parts


def _header(research: str, run: dict[str, Any]) -> str:
    return ('<header class="top"><div class="brand">hemocount <span class="small">report · '
            f'v{_e(run.get("hemocount_version", "?"))}</span></div>'
            f'<div class="ruo" role="note">⚠ {_e(research)}</div>'
            '<nav><a href="#run">Run</a> <a href="#overview">Overview</a> <a href="#slides">Slides</a></nav></header>')


def _toggle_buttons() -> str:
    # Hidden unless the optional script runs; without JS each <details> still opens by click.
    return ('<p class="toggles" hidden><button type="button" data-toggle="open">Expand all</button> '
            '<button type="button" data-toggle="close">Collapse all</button></p>')


def _run_section(run: dict[str, Any], slides: list[dict[str, Any]], out_dir: Path) -> str:
    det = run.get("detector") or {}
    det_text = " · ".join(_e(f"{k} {v}") for k, v in det.items()) if isinstance(det, dict) else _e(det)
    clf = run.get("classifiers") or {}
    clf_text = (", ".join(f"{_e(k)}: <code>{_e(v)}</code>" for k, v in clf.items()) if clf
                else '<span class="muted">none (classification off)</span>')
    sources = run.get("sources") or []
    src_text = "<br>".join(f"<code>{_e(s)}</code>" for s in sources) or "—"
    skipped = run.get("skipped") or []
    refs = run.get("reference_ranges") or {}
    rows = [
        ("hemocount version", _e(run.get("hemocount_version", "—"))),
        ("created", _e(run.get("created", "—"))),
        ("sources", src_text),
        ("detector", det_text or "—"),
        ("classifiers", clf_text),
        ("images", f"{_num(run.get('n_done'))} of {_num(run.get('n_images'))} counted, "
                   f"{len(skipped)} skipped · {len(slides)} slide{'s' * (len(slides) != 1)}"),
        ("edge rule", _e(run.get("edge_rule", "—"))),
        ("tiling", _e(run.get("tiling", "—"))),
        ("ALL flag rule", _e(run.get("all_flag_rule", "—"))),
        ("reference ranges", _e(refs.get("source", "—")) + _ranges_table(refs.get("ranges") or {})),
    ]
    files = [n for n in ("counts.csv", "cells.csv", "predictions.coco.json", "run.json", SUMMARY_NAME)
             if (out_dir / n).is_file()]
    if files:
        rows.append(("files", " · ".join(f'<a href="{_href(n)}">{_e(n)}</a>' for n in files)))
    dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows)
    return (f'<section id="run"><h2>Run</h2>{_totals(slides)}<dl class="run">{dl}</dl>'
            f"{_skipped(skipped)}</section>")


def _totals(slides: list[dict[str, Any]]) -> str:
    """One line of run-wide tallies, so a 500-slide run shows what needs attention first."""
    n_all = sum(1 for s in slides if (s.get("all_flag") or {}).get("flagged"))
    n_insuff = sum(1 for s in slides if (s.get("differential") or {}).get("status") == "insufficient cells")
    n_oor = sum(1 for s in slides if any(r.get("out_of_range") for r in _diff_rows(s))
                or any(e.get("out_of_range") for e in s.get("estimates") or []))
    levels = _level_counts([f for s in slides for f in _all_flags(s)])
    items = [f"<strong>{len(slides)}</strong> slides",
             f'<strong class="{"alert" if n_all else ""}">{n_all}</strong> with the ALL flag raised',
             f"<strong>{n_oor}</strong> with a value outside its reference range",
             f"<strong>{n_insuff}</strong> with too few WBCs for a differential"]
    badges = _level_badges(levels) or '<span class="muted">no flags</span>'
    return f'<p class="totals">{" · ".join(items)} · flags: {badges}</p>'


def _ranges_table(ranges: dict[str, Any]) -> str:
    if not ranges:
        return ""
    cells = "".join(f"<tr><td>{_e(k)}</td><td>{_range_text(*(list(v) + [None, None])[:2])}</td></tr>"
                    if isinstance(v, (list, tuple)) else f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>"
                    for k, v in ranges.items())
    return (f'<details class="inline"><summary>{len(ranges)} ranges</summary>'
            f'<table class="compact"><tr><th>quantity</th><th>range</th></tr>{cells}</table></details>')


def _skipped(skipped: list[dict[str, Any]]) -> str:
    if not skipped:
        return ""
    rows = "".join(f"<tr><td><code>{_e(s.get('image'))}</code></td><td>{_e(s.get('error'))}</td></tr>"
                   for s in skipped[:MAX_SKIPPED_LISTED])
    more = (f'<p class="small">… {len(skipped) - MAX_SKIPPED_LISTED} more in run.json</p>'
            if len(skipped) > MAX_SKIPPED_LISTED else "")
    open_ = " open" if len(skipped) <= 10 else ""
    return (f'<details class="skipped"{open_}><summary><strong>{len(skipped)} skipped image'
            f'{"s" * (len(skipped) != 1)}</strong> (not counted)</summary>'
            f'<table class="compact"><tr><th>image</th><th>reason</th></tr>{rows}</table>{more}</details>')


def _diff_rows(slide: dict[str, Any]) -> list[dict[str, Any]]:
    return list((slide.get("differential") or {}).get("rows") or [])


def _overview(slides: list[dict[str, Any]]) -> str:
    head = ("<tr><th>slide</th><th>fields</th>" + "".join(f"<th>{c}</th>" for c in CELL_CLASSES)
            + '<th>WBC differential, % <span class="small">(' + " ".join(f"{a} {s}" for s, a in _ABBREV.items())
            + ")</span></th><th>ALL flag</th><th>flags</th></tr>")
    body = []
    for i, s in enumerate(slides):
        counts = s.get("counts") or {}
        all_flag = s.get("all_flag")
        cls = ' class="row-all"' if (all_flag or {}).get("flagged") else ""
        body.append(f'<tr{cls}><td class="name"><a href="#s{i}">{_e(s.get("slide"))}</a></td>'
                    f'<td class="n">{_num(s.get("n_fields"))}</td>'
                    + "".join(f'<td class="n">{_num(counts.get(c))}</td>' for c in CELL_CLASSES)
                    + f"<td>{_diff_compact(s.get('differential') or {})}</td>"
                    f'<td class="all">{_all_badge(all_flag)}</td>'
                    f"<td>{_level_badges(_level_counts(_all_flags(s))) or '<span class=muted>none</span>'}</td>"
                    "</tr>")
    return (f'<section id="overview"><h2>Overview</h2><div class="scroll"><table class="overview">'
            f'<thead>{head}</thead><tbody>{"".join(body)}</tbody></table></div></section>')


def _diff_compact(diff: dict[str, Any]) -> str:
    status = diff.get("status", "not classified")
    if status != "ok":
        detail = ""
        if status == "insufficient cells":
            detail = f" ({_num(diff.get('n_classified'))} &lt; {_num(diff.get('min_cells'))})"
        return f'<span class="insufficient">{_e(status)}{detail}</span>'
    parts = []
    for r in diff.get("rows") or []:
        sub = str(r.get("subtype", ""))
        mark = _direction(r, "pct")[0] if r.get("out_of_range") else ""
        text = f"{_e(_ABBREV.get(sub, sub[:3]))} {_pct(r.get('pct'))}{mark}"
        parts.append(f'<span class="oor-cell" title="{_e(sub)}: outside the reference range">{text}</span>'
                     if mark else f'<span title="{_e(sub)}">{text}</span>')
    n = _num(diff.get("n_classified"))
    return f'<span class="diff">{" ".join(parts)}</span> <span class="small">n={n}</span>'


def _slide_section(slide: dict[str, Any], i: int, thumbs: _Thumbnails, per_slide: int, *, open_: bool) -> str:
    counts = slide.get("counts") or {}
    flags = _all_flags(slide)
    all_flag = slide.get("all_flag")
    chips = " · ".join(f"{c} {_num(counts.get(c))}" for c in CELL_CLASSES)
    summary = (f'<summary><span class="sname">{_e(slide.get("slide"))}</span> <span class="chips">{chips}</span> '
               + ('<span class="badge all-flag">⚑ ALL</span> ' if (all_flag or {}).get("flagged") else "")
               + (f'<span class="badge insufficient">{_e((slide.get("differential") or {}).get("status"))}</span> '
                  if (slide.get("differential") or {}).get("status", "ok") != "ok" else "")
               + _level_badges(_level_counts(flags)) + "</summary>")
    parts = [
        f'<div class="slide-body" id="s{i}">',
        _counts_table(slide),
        _differential(slide.get("differential") or {}),
        f'<div class="block"><h4>ALL flag</h4><p>{_all_badge(all_flag)}</p></div>',
        _flags(flags),
        _estimates(slide.get("estimates") or []),
        _fields(slide.get("fields") or [], thumbs, per_slide),
        "</div>",
    ]
    return f'<details class="slide"{" open" if open_ else ""}>{summary}{"".join(parts)}</details>'


def _counts_table(slide: dict[str, Any]) -> str:
    counts = slide.get("counts") or {}
    diff = slide.get("differential") or {}
    head = ["fields", *CELL_CLASSES]
    vals = [slide.get("n_fields"), *[counts.get(c) for c in CELL_CLASSES]]
    if diff.get("status", "not classified") != "not classified":
        head += ["WBCs classified", "uncertain"]
        vals += [diff.get("n_classified"), diff.get("n_uncertain")]
    return ('<div class="block"><h4>Counts</h4><table class="compact"><tr>'
            + "".join(f"<th>{h}</th>" for h in head) + "</tr><tr>"
            + "".join(f'<td class="n">{_num(v)}</td>' for v in vals) + "</tr></table></div>")


def _differential(diff: dict[str, Any]) -> str:
    status = diff.get("status", "not classified")
    rows = diff.get("rows") or []
    if status == "not classified":
        return ('<div class="block"><h4>WBC differential</h4><p class="insufficient">Not classified '
                "(the WBC classifiers were off).</p></div>")
    if status != "ok":
        note = (f'<p class="insufficient" role="note"><strong>{_e(status.capitalize())}</strong>: '
                f"{_num(diff.get('n_classified'))} WBCs classified, at least {_num(diff.get('min_cells'))} are needed "
                "for a differential. Percentages are not reported; the counts are shown for reference.</p>")
        body = "".join(f"<tr><td>{_e(r.get('subtype'))}</td><td class='n'>{_num(r.get('count'))}</td></tr>"
                       for r in rows)
        table = f'<table class="compact"><tr><th>subtype</th><th>count</th></tr>{body}</table>' if rows else ""
        return f'<div class="block"><h4>WBC differential</h4>{note}{table}</div>'
    body = []
    for r in rows:
        cls = ' class="oor-row"' if r.get("out_of_range") else ""
        body.append(f"<tr{cls}><td>{_e(r.get('subtype'))}</td><td class='n'>{_num(r.get('count'))}</td>"
                    f"<td class='n'>{_pct(r.get('pct'))}</td>"
                    f"<td class='n'>{_pct(r.get('ci_low'))}–{_pct(r.get('ci_high'))}</td>"
                    f"<td class='n'>{_range_text(r.get('ref_low'), r.get('ref_high'))}</td>"
                    f"<td>{_oor_mark(r, 'pct') or '<span class=muted>in range</span>'}</td></tr>")
    table = ('<table class="compact diff-table"><tr><th>subtype</th><th>count</th><th>%</th><th>95 % CI</th>'
             f'<th>reference %</th><th></th></tr>{"".join(body)}</table>')
    note = (f'<p class="small">{_num(diff.get("n_classified"))} WBCs with a confident subtype '
            f'(minimum {_num(diff.get("min_cells"))}); {_num(diff.get("n_uncertain"))} uncertain, not included. '
            "CI: 95 % binomial interval.</p>")
    return (f'<div class="block wide"><h4>WBC differential</h4><div class="diff-wrap"><div>{table}{note}</div>'
            f"{_diff_chart(rows)}</div></div>")


def _diff_chart(rows: list[dict[str, Any]]) -> str:
    """Horizontal bars (percent) with 95 % CI whiskers over the reference band; out-of-range rows get a marker."""
    left, width, row_h, top = 92, 300, 24, 6
    height = top + row_h * len(rows) + 30

    def x(v: float) -> float:
        return left + width * max(0.0, min(100.0, float(v))) / 100

    out = [f'<svg class="chart" viewBox="0 0 {left + width + 14} {height}" width="{left + width + 14}" '
           f'height="{height}" role="img" aria-label="WBC differential with 95 % confidence intervals">']
    for t in (0, 25, 50, 75, 100):
        out.append(f'<line x1="{x(t):.1f}" y1="{top}" x2="{x(t):.1f}" y2="{height - 24}" class="grid"/>'
                   f'<text x="{x(t):.1f}" y="{height - 10}" class="tick">{t}%</text>')
    for k, r in enumerate(rows):
        y = top + k * row_h
        cy = y + row_h / 2
        lo, hi = r.get("ref_low"), r.get("ref_high")
        if isinstance(lo, (int, float)) and isinstance(hi, (int, float)):
            out.append(f'<rect x="{x(lo):.1f}" y="{y + 2}" width="{x(hi) - x(lo):.1f}" height="{row_h - 4}" '
                       'class="ref"/>')
        oor = bool(r.get("out_of_range"))
        mark = " " + _direction(r, "pct")[0] if oor else ""
        out.append(f'<text x="{left - 6}" y="{cy + 4:.1f}" class="lab{" oor-t" if oor else ""}">'
                   f"{_e(r.get('subtype'))}{mark}</text>")
        pct = r.get("pct")
        if isinstance(pct, (int, float)):
            out.append(f'<rect x="{left}" y="{y + 7}" width="{x(pct) - left:.1f}" height="{row_h - 14}" '
                       f'class="bar{" bar-oor" if oor else ""}"><title>{_e(r.get("subtype"))}: {_pct(pct)} % '
                       f'(95 % CI {_pct(r.get("ci_low"))}–{_pct(r.get("ci_high"))})</title></rect>')
        cl, ch = r.get("ci_low"), r.get("ci_high")
        if isinstance(cl, (int, float)) and isinstance(ch, (int, float)):
            x1, x2 = x(cl), x(ch)
            out.append(f'<path d="M{x1:.1f} {cy:.1f}H{x2:.1f}M{x1:.1f} {cy - 5:.1f}V{cy + 5:.1f}'
                       f'M{x2:.1f} {cy - 5:.1f}V{cy + 5:.1f}" class="whisker"/>')
    out.append("</svg>")
    legend = ('<p class="legend small"><span class="key bar-key"></span> % of classified WBCs '
              '<span class="key whisker-key"></span> 95 % CI <span class="key ref-key"></span> reference range '
              "· ▲/▼ outside it</p>")
    return f'<figure class="chart-fig">{"".join(out)}{legend}</figure>'


def _flags(flags: list[tuple[str, dict[str, Any]]]) -> str:
    if not flags:
        return '<div class="block"><h4>Flags</h4><p class="muted">none</p></div>'
    order = {lvl: n for n, lvl in enumerate(LEVELS)}
    items = sorted(flags, key=lambda wf: order.get(wf[1].get("level"), len(LEVELS)))
    lis = "".join(f'<li><span class="badge lvl-{_e(f.get("level") if f.get("level") in order else "info")}">'
                  f'{_e(f.get("level", "info"))}</span> <code>{_e(f.get("code"))}</code> {_e(f.get("message"))}'
                  + (f' <span class="small">(field <code>{_e(where)}</code>)</span>' if where else "") + "</li>"
                  for where, f in items)
    return f'<div class="block"><h4>Flags</h4><ul class="flags">{lis}</ul></div>'


def _estimates(estimates: list[dict[str, Any]]) -> str:
    if not estimates:
        return ""
    rows = []
    for est in estimates:
        inputs = est.get("inputs") or {}
        inp = ", ".join(f"{_e(k)} = {_num(v)}" for k, v in inputs.items()) if isinstance(inputs, dict) else _e(inputs)
        cls = ' class="oor-row"' if est.get("out_of_range") else ""
        rows.append(f"<tr{cls}><td>{_e(est.get('quantity'))}</td><td class='n'>{_num(est.get('value'))}</td>"
                    f"<td>{_e(est.get('unit'))}</td>"
                    f"<td class='n'>{_range_text(est.get('ref_low'), est.get('ref_high'))}</td>"
                    f"<td>{_oor_mark(est, 'value') or '<span class=muted>in range</span>'}</td>"
                    f"<td><code>{_e(est.get('formula'))}</code></td><td class='small'>{inp}</td></tr>")
    return ('<div class="block wide"><h4>Calibrated estimates</h4><table class="compact"><tr><th>quantity</th>'
            '<th>value</th><th>unit</th><th>reference</th><th></th><th>formula</th><th>inputs</th></tr>'
            f'{"".join(rows)}</table><p class="small">From the calibration given to <code>hemocount count</code>; '
            "an estimate is only as good as that calibration.</p></div>")


def _fields(fields: list[dict[str, Any]], thumbs: _Thumbnails, per_slide: int) -> str:
    if not fields:
        return ""
    figs = [_field_figure(f, thumbs) for f in fields[:per_slide]]
    rest = fields[per_slide:]
    more = ""
    if rest:
        links = ", ".join(f'<a href="{_href(f["annotated"])}">{_e(f.get("image"))}</a>' if f.get("annotated")
                          else _e(f.get("image")) for f in rest)
        more = f'<p class="more small"><strong>+{len(rest)} more:</strong> {links}</p>'
    return (f'<div class="block wide"><h4>Fields ({len(fields)})</h4><div class="thumbs">{"".join(figs)}</div>'
            f"{more}</div>")


def _field_figure(fld: dict[str, Any], thumbs: _Thumbnails) -> str:
    counts = fld.get("counts") or {}
    caption = (f'<code>{_e(fld.get("image"))}</code><br>'
               + " ".join(f"{c[0] if c != 'Platelets' else 'PLT'} {_num(counts.get(c))}" for c in CELL_CLASSES))
    levels = _level_counts([("", f) for f in fld.get("flags") or []])
    if any(levels.values()):
        worst = next(lvl for lvl in LEVELS if levels[lvl])
        n = sum(levels.values())
        caption += f' <span class="badge lvl-{worst}">{n} flag{"s" * (n != 1)}</span>'
    rel = fld.get("annotated")
    img = thumbs.get(rel) if rel else None
    if img is not None:
        uri, w, h = img
        pic = (f'<a href="{_href(rel)}"><img src="{uri}" width="{w}" height="{h}" loading="lazy" '
               f'alt="annotated {_e(fld.get("image"))}"></a>')
    else:
        why = "no annotated image" if not rel else "annotated image missing"
        pic = f'<div class="placeholder">{why}</div>'
    return f"<figure>{pic}<figcaption>{caption}</figcaption></figure>"


class _Thumbnails:
    """Small JPEG data URIs of annotated images under ``out_dir`` (None when missing or unreadable)."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir.resolve()
        self.cache: dict[str, tuple[str, int, int] | None] = {}

    def prefetch(self, rels: list[str]) -> None:
        """Make the thumbnails of ``rels`` on all cores (OpenCV decodes and encodes without the GIL)."""
        from concurrent.futures import ThreadPoolExecutor

        from hemocount.runtime import core_count

        todo = [r for r in dict.fromkeys(rels) if r not in self.cache]
        if len(todo) < 2:
            return
        with ThreadPoolExecutor(max_workers=core_count(), thread_name_prefix="hemocount-thumb") as pool:
            for rel, made in zip(todo, pool.map(self._make, todo)):
                self.cache[rel] = made

    def get(self, rel: str) -> tuple[str, int, int] | None:
        if rel not in self.cache:
            self.cache[rel] = self._make(rel)
        return self.cache[rel]

    def _make(self, rel: str) -> tuple[str, int, int] | None:
        import cv2
        import numpy as np

        path = (self.out_dir / rel).resolve()
        if not path.is_relative_to(self.out_dir) or not path.is_file():
            return None  # links in the report point into OUT only
        try:
            data = np.fromfile(path, dtype=np.uint8)
            img = cv2.imdecode(data, _reduced_flag(path))
        except (OSError, cv2.error):
            return None
        if img is None or img.ndim != 3 or min(img.shape[:2]) < 1:
            return None
        h, w = img.shape[:2]
        tw = min(THUMB_WIDTH, w)
        th = max(1, round(h * tw / w))
        small = cv2.resize(img, (tw, th), interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 70])
        if not ok:
            return None
        return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode("ascii"), tw, th


def _reduced_flag(path: Path) -> int:
    """Decode big JPEGs at 1/2, 1/4 or 1/8 scale (libjpeg does it while decoding, much faster)."""
    import cv2
    from PIL import Image

    try:
        with Image.open(path) as im:
            width = im.size[0]
    except Exception:  # noqa: BLE001 - PIL raises many types for unreadable headers; OpenCV then decides
        return cv2.IMREAD_COLOR
    for factor, flag in ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4),
                         (2, cv2.IMREAD_REDUCED_COLOR_2)):
        if width // factor >= THUMB_WIDTH:
            return flag
    return cv2.IMREAD_COLOR


_SCRIPT = """(function(){
function all(sel,open){document.querySelectorAll(sel).forEach(function(d){d.open=open;});}
var t=document.querySelector('.toggles');
if(t){t.hidden=false;t.addEventListener('click',function(e){var b=e.target.closest('button');
if(b)all('details.slide',b.getAttribute('data-toggle')==='open');});}
window.addEventListener('beforeprint',function(){all('details',true);});
})();"""

_CSS = """
:root{--fg:#1d2330;--muted:#5f6b7a;--line:#d9dee5;--bg:#fff;--soft:#f5f7fa;--accent:#3b4a9e;
--warn:#8a5a00;--warnbg:#fff4d6;--err:#a4161a;--errbg:#fde2e2;--info:#1f5f8b;--infobg:#e3f0fa;--ok:#1e6b3a}
*{box-sizing:border-box}
html{scroll-padding-top:5rem}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
color:var(--fg);background:var(--bg)}
header.top{position:sticky;top:0;z-index:10;display:flex;flex-wrap:wrap;gap:.4rem 1.2rem;align-items:center;
padding:.5rem 1.2rem;background:#fff;border-bottom:1px solid var(--line);box-shadow:0 1px 4px rgba(0,0,0,.06)}
.brand{font-weight:700;font-size:1.1rem}
.ruo{font-weight:700;color:var(--err);background:var(--errbg);border:1px solid #f1b5b5;border-radius:4px;
padding:.15rem .6rem}
nav{margin-left:auto}nav a{margin-left:.8rem}
a{color:var(--accent)}
main{max-width:1280px;margin:0 auto;padding:0 1.2rem 2rem}
h2{margin:1.6rem 0 .6rem;font-size:1.25rem;border-bottom:2px solid var(--line);padding-bottom:.2rem}
h4{margin:.2rem 0 .4rem;font-size:.95rem}
.ruo-banner{margin:1rem 0;padding:.6rem .9rem;border-left:5px solid var(--err);background:var(--errbg)}
.ruo-banner strong{font-size:1.05rem}
.small{font-size:.85em;color:var(--muted)}.muted{color:var(--muted)}
code{font:12px/1.3 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;word-break:break-all}
dl.run{display:grid;grid-template-columns:max-content 1fr;gap:.25rem 1rem;margin:.5rem 0}
dl.run dt{font-weight:600;color:var(--muted)}dl.run dd{margin:0}
.totals{background:var(--soft);padding:.5rem .8rem;border-radius:4px}
.totals .alert{color:var(--err)}
table{border-collapse:collapse}
th,td{padding:.25rem .55rem;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
th{background:var(--soft);font-weight:600}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.scroll{max-height:75vh;overflow:auto;border:1px solid var(--line);border-radius:4px}
table.overview{width:100%}
table.overview thead th{position:sticky;top:0;z-index:1;box-shadow:0 1px 0 var(--line)}
table.overview tbody tr:nth-child(even){background:#fafbfc}
table.overview tr.row-all td.name{border-left:4px solid var(--err)}
td.name{font-weight:600;min-width:9rem;overflow-wrap:anywhere}
td.all{white-space:nowrap}
.diff{font-variant-numeric:tabular-nums;white-space:nowrap}
.oor-cell{font-weight:700;color:var(--err);text-decoration:underline dotted}
.badge{display:inline-block;padding:0 .45rem;border-radius:9px;font-size:.8rem;font-weight:600;white-space:nowrap;
border:1px solid transparent}
.lvl-error{color:var(--err);background:var(--errbg);border-color:#f1b5b5}
.lvl-warning{color:var(--warn);background:var(--warnbg);border-color:#f0d58a}
.lvl-info{color:var(--info);background:var(--infobg);border-color:#b4d3ea}
.all-flag{color:#fff;background:var(--err)}
.ok-text{color:var(--ok)}
.insufficient{color:var(--warn);font-weight:600}
.badge.insufficient{background:var(--warnbg);border-color:#f0d58a}
p.insufficient{background:var(--warnbg);border-left:5px solid #e0a800;padding:.45rem .7rem;font-weight:400}
.toggles button{font:inherit;padding:.2rem .7rem;margin-right:.3rem}
details.slide{border:1px solid var(--line);border-radius:6px;margin:.5rem 0;background:#fff}
details.slide>summary{cursor:pointer;padding:.5rem .8rem;background:var(--soft);border-radius:6px;
list-style-position:inside}
details.slide[open]>summary{border-bottom:1px solid var(--line);border-radius:6px 6px 0 0}
.sname{font-weight:700;overflow-wrap:anywhere}.chips{color:var(--muted);margin:0 .4rem}
.slide-body{display:flex;flex-wrap:wrap;gap:.8rem 2rem;padding:.8rem;scroll-margin-top:7rem}
.block{min-width:12rem}.block.wide{flex-basis:100%}
.diff-wrap{display:flex;flex-wrap:wrap;gap:1rem 2rem;align-items:flex-start}
table.compact{font-size:.92em}
tr.oor-row td{background:var(--errbg)}
.oor{font-weight:700;color:var(--err);white-space:nowrap}
ul.flags{margin:0;padding-left:1.1rem}ul.flags li{margin:.15rem 0}
figure{margin:0}
.chart-fig .legend{margin:.2rem 0 0}
svg.chart{max-width:100%;height:auto;font:11px system-ui,sans-serif}
svg .grid{stroke:#e3e7ec}svg .tick{fill:var(--muted);text-anchor:middle}
svg .lab{text-anchor:end;fill:var(--fg)}svg .oor-t{fill:var(--err);font-weight:700}
svg .ref{fill:#d8efdc}svg .bar{fill:#6274c9}svg .bar-oor{fill:#d1495b}
svg .whisker{stroke:#1d2330;stroke-width:1.4;fill:none}
.key{display:inline-block;width:14px;height:9px;margin:0 .25rem 0 .6rem;vertical-align:middle}
.bar-key{background:#6274c9}.ref-key{background:#d8efdc}.whisker-key{height:2px;background:#1d2330}
.thumbs{display:grid;grid-template-columns:repeat(auto-fill,minmax(200px,1fr));gap:.7rem}
.thumbs figure{border:1px solid var(--line);border-radius:4px;padding:.3rem;background:var(--soft)}
.thumbs img{display:block;width:100%;max-width:200px;height:auto;margin:0 auto}
.thumbs figcaption{font-size:.8rem;margin-top:.25rem}
.placeholder{height:120px;display:flex;align-items:center;justify-content:center;color:var(--muted);
border:1px dashed #b8c0cc;background:repeating-linear-gradient(45deg,#f7f8fa,#f7f8fa 8px,#eef0f3 8px,#eef0f3 16px)}
details.inline{display:inline-block;margin-left:.5rem}details.inline summary{cursor:pointer;color:var(--accent)}
footer{margin-top:2rem;color:var(--muted);font-size:.85rem;border-top:1px solid var(--line)}
@media print{
header.top{position:static;box-shadow:none}nav,.toggles{display:none}
.scroll{max-height:none;overflow:visible;border:0}
details.slide{break-inside:avoid-page}
details:not([open])::details-content{content-visibility:visible;display:contents}
a{color:inherit;text-decoration:none}
body{font-size:11px}
}
"""
