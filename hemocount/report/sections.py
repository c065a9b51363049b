"""The report's sections: header, run, overview, and per slide its counts, differential, flags and fields."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hemocount import CELL_CLASSES
from hemocount.flags import Flag
from hemocount.report.chart import diff_chart
from hemocount.report.markup import (
    ABBREV,
    LEVELS,
    MAX_SKIPPED_LISTED,
    SUMMARY_NAME,
    all_badge,
    all_flags,
    direction,
    esc,
    fmt_num,
    fmt_pct,
    href_of,
    level_badges,
    level_counts,
    oor_mark,
    range_text,
)
from hemocount.report.thumbnails import Thumbnails
from hemocount.summary import Differential, Estimate, FieldSummary, SlideSummary


def header_html(research: str, run: dict[str, Any]) -> str:
    return ('<header class="top"><div class="brand">hemocount <span class="small">report · '
            f'v{esc(run.get("hemocount_version", "?"))}</span></div>'
            f'<div class="ruo" role="note">⚠ {esc(research)}</div>'
            '<nav><a href="#run">Run</a> <a href="#overview">Overview</a> <a href="#slides">Slides</a></nav></header>')


def toggle_buttons() -> str:
    # Hidden unless the optional script runs; without JS each <details> still opens by click.
    return ('<p class="toggles" hidden><button type="button" data-toggle="open">Expand all</button> '
            '<button type="button" data-toggle="close">Collapse all</button></p>')


def run_section(run: dict[str, Any], slides: list[SlideSummary], out_dir: Path) -> str:
    det = run.get("detector") or {}
    det_text = " · ".join(esc(f"{k} {v}") for k, v in det.items()) if isinstance(det, dict) else esc(det)
    clf = run.get("classifiers") or {}
    clf_text = (", ".join(f"{esc(k)}: <code>{esc(v)}</code>" for k, v in clf.items()) if clf
                else '<span class="muted">none (classification off)</span>')
    sources = run.get("sources") or []
    src_text = "<br>".join(f"<code>{esc(s)}</code>" for s in sources) or "—"
    skipped = run.get("skipped") or []
    refs = run.get("reference_ranges") or {}
    rows = [
        ("hemocount version", esc(run.get("hemocount_version", "—"))),
        ("created", esc(run.get("created", "—"))),
        ("sources", src_text),
        ("detector", det_text or "—"),
        ("classifiers", clf_text),
        ("images", (f"{fmt_num(run.get('n_done'))} of {fmt_num(run.get('n_images'))} counted, "
                    f"{len(skipped)} skipped · {len(slides)} slide{'s' * (len(slides) != 1)}")),
        ("edge rule", esc(run.get("edge_rule", "—"))),
        ("tiling", esc(run.get("tiling", "—"))),
        ("ALL flag rule", esc(run.get("all_flag_rule", "—"))),
        ("reference ranges", esc(refs.get("source", "—")) + ranges_table(refs.get("ranges") or {})),
    ]
    files = [n for n in ("counts.csv", "cells.csv", "predictions.coco.json", "run.json", SUMMARY_NAME)
             if (out_dir / n).is_file()]
    if files:
        rows.append(("files", " · ".join(f'<a href="{href_of(n)}">{esc(n)}</a>' for n in files)))
    dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows)
    return (f'<section id="run"><h2>Run</h2>{totals_html(slides)}<dl class="run">{dl}</dl>'
            f"{skipped_html(skipped)}</section>")


def totals_html(slides: list[SlideSummary]) -> str:
    """One line of run-wide tallies, so a 500-slide run shows what needs attention first."""
    n_all = sum(1 for s in slides if s.all_flagged)
    n_insuff = sum(1 for s in slides if s.differential.status == "insufficient cells")
    n_oor = sum(1 for s in slides if any(r.out_of_range for r in s.differential.rows)
                or any(e.out_of_range for e in s.estimates))
    levels = level_counts([f for s in slides for f in all_flags(s)])
    items = [f"<strong>{len(slides)}</strong> slides",
             f'<strong class="{"alert" if n_all else ""}">{n_all}</strong> with the ALL flag raised',
             f"<strong>{n_oor}</strong> with a value outside its reference range",
             f"<strong>{n_insuff}</strong> with too few WBCs for a differential"]
    badges = level_badges(levels) or '<span class="muted">no flags</span>'
    return f'<p class="totals">{" · ".join(items)} · flags: {badges}</p>'


def ranges_table(ranges: dict[str, Any]) -> str:
    if not ranges:
        return ""
    cells = "".join(f"<tr><td>{esc(k)}</td><td>{range_text(*(list(v) + [None, None])[:2])}</td></tr>"
                    if isinstance(v, (list, tuple)) else f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>"
                    for k, v in ranges.items())
    return (f'<details class="inline"><summary>{len(ranges)} ranges</summary>'
            f'<table class="compact"><tr><th>quantity</th><th>range</th></tr>{cells}</table></details>')


def skipped_html(skipped: list[dict[str, Any]]) -> str:
    if not skipped:
        return ""
    rows = "".join(f"<tr><td><code>{esc(s.get('image'))}</code></td><td>{esc(s.get('error'))}</td></tr>"
                   for s in skipped[:MAX_SKIPPED_LISTED])
    more = (f'<p class="small">… {len(skipped) - MAX_SKIPPED_LISTED} more in run.json</p>'
            if len(skipped) > MAX_SKIPPED_LISTED else "")
    open_ = " open" if len(skipped) <= 10 else ""
    return (f'<details class="skipped"{open_}><summary><strong>{len(skipped)} skipped image'
            f'{"s" * (len(skipped) != 1)}</strong> (not counted)</summary>'
            f'<table class="compact"><tr><th>image</th><th>reason</th></tr>{rows}</table>{more}</details>')


def overview_html(slides: list[SlideSummary]) -> str:
    head = ("<tr><th>slide</th><th>fields</th>" + "".join(f"<th>{c}</th>" for c in CELL_CLASSES)
            + '<th>WBC differential, % <span class="small">(' + " ".join(f"{a} {s}" for s, a in ABBREV.items())
            + ")</span></th><th>ALL flag</th><th>flags</th></tr>")
    body = []
    for i, s in enumerate(slides):
        cls = ' class="row-all"' if s.all_flagged else ""
        body.append(f'<tr{cls}><td class="name"><a href="#s{i}">{esc(s.slide)}</a></td>'
                    f'<td class="n">{fmt_num(s.n_fields)}</td>'
                    + "".join(f'<td class="n">{fmt_num(s.counts.get(c))}</td>' for c in CELL_CLASSES)
                    + f"<td>{diff_compact(s.differential)}</td>"
                    f'<td class="all">{all_badge(s.all_flag)}</td>'
                    f"<td>{level_badges(level_counts(all_flags(s))) or '<span class=muted>none</span>'}</td>"
                    "</tr>")
    return (f'<section id="overview"><h2>Overview</h2><div class="scroll"><table class="overview">'
            f'<thead>{head}</thead><tbody>{"".join(body)}</tbody></table></div></section>')


def diff_compact(diff: Differential) -> str:
    status = diff.status
    if status != "ok":
        detail = ""
        if status == "insufficient cells":
            detail = f" ({fmt_num(diff.n_classified)} &lt; {fmt_num(diff.min_cells)})"
        return f'<span class="insufficient">{esc(status)}{detail}</span>'
    parts = []
    for r in diff.rows:
        sub = str(r.subtype)
        mark = direction(r)[0] if r.out_of_range else ""
        text = f"{esc(ABBREV.get(sub, sub[:3]))} {fmt_pct(r.pct)}{mark}"
        parts.append(f'<span class="oor-cell" title="{esc(sub)}: outside the reference range">{text}</span>'
                     if mark else f'<span title="{esc(sub)}">{text}</span>')
    n = fmt_num(diff.n_classified)
    return f'<span class="diff">{" ".join(parts)}</span> <span class="small">n={n}</span>'


def slide_section(slide: SlideSummary, i: int, thumbs: Thumbnails, per_slide: int, *, open_: bool) -> str:
    flags = all_flags(slide)
    all_flag = slide.all_flag
    chips = " · ".join(f"{c} {fmt_num(slide.counts.get(c))}" for c in CELL_CLASSES)
    summary = (f'<summary><span class="sname">{esc(slide.slide)}</span> <span class="chips">{chips}</span> '
               + ('<span class="badge all-flag">⚑ ALL</span> ' if slide.all_flagged else "")
               + (f'<span class="badge insufficient">{esc(slide.differential.status)}</span> '
                  if slide.differential.status != "ok" else "")
               + level_badges(level_counts(flags)) + "</summary>")
    parts = [
        f'<div class="slide-body" id="s{i}">',
        counts_table(slide),
        differential_html(slide.differential),
        f'<div class="block"><h4>ALL flag</h4><p>{all_badge(all_flag)}</p></div>',
        flags_html(flags),
        estimates_html(slide.estimates),
        fields_html(slide.fields, thumbs, per_slide),
        "</div>",
    ]
    return f'<details class="slide"{" open" if open_ else ""}>{summary}{"".join(parts)}</details>'


def counts_table(slide: SlideSummary) -> str:
    diff = slide.differential
    head = ["fields", *CELL_CLASSES]
    vals: list[Any] = [slide.n_fields, *[slide.counts.get(c) for c in CELL_CLASSES]]
    ums = [f.um_per_px for f in slide.fields if f.um_per_px is not None]
    if ums:  # magnification differs between microscopes: show the range the red-cell ruler measured
        lo, hi = min(ums), max(ums)
        head.append("µm/px")
        vals.append(f"{lo:.3f}" if round(lo, 3) == round(hi, 3) else f"{lo:.3f}–{hi:.3f}")
    if diff.status != "not classified":
        head += ["WBCs classified", "uncertain"]
        vals += [diff.n_classified, diff.n_uncertain]
    return ('<div class="block"><h4>Counts</h4><table class="compact"><tr>'
            + "".join(f"<th>{h}</th>" for h in head) + "</tr><tr>"
            + "".join(f'<td class="n">{fmt_num(v)}</td>' for v in vals) + "</tr></table></div>")


def differential_html(diff: Differential) -> str:
    status, rows = diff.status, diff.rows
    if status == "not classified":
        return ('<div class="block"><h4>WBC differential</h4><p class="insufficient">Not classified '
                "(the WBC classifiers were off).</p></div>")
    if status != "ok":
        note = (f'<p class="insufficient" role="note"><strong>{esc(status.capitalize())}</strong>: '
                f"{fmt_num(diff.n_classified)} WBCs classified, at least {fmt_num(diff.min_cells)} are needed "
                "for a differential. Percentages are not reported; the counts are shown for reference.</p>")
        body = "".join(f"<tr><td>{esc(r.subtype)}</td><td class='n'>{fmt_num(r.count)}</td></tr>"
                       for r in rows)
        table = f'<table class="compact"><tr><th>subtype</th><th>count</th></tr>{body}</table>' if rows else ""
        return f'<div class="block"><h4>WBC differential</h4>{note}{table}</div>'
    body = []
    for r in rows:
        cls = ' class="oor-row"' if r.out_of_range else ""
        body.append(f"<tr{cls}><td>{esc(r.subtype)}</td><td class='n'>{fmt_num(r.count)}</td>"
                    f"<td class='n'>{fmt_pct(r.pct)}</td>"
                    f"<td class='n'>{fmt_pct(r.ci_low)}–{fmt_pct(r.ci_high)}</td>"
                    f"<td class='n'>{range_text(r.ref_low, r.ref_high)}</td>"
                    f"<td>{oor_mark(r) or '<span class=muted>in range</span>'}</td></tr>")
    table = ('<table class="compact diff-table"><tr><th>subtype</th><th>count</th><th>%</th><th>95 % CI</th>'
             f'<th>reference %</th><th></th></tr>{"".join(body)}</table>')
    note = (f'<p class="small">{fmt_num(diff.n_classified)} WBCs with a confident subtype '
            f'(minimum {fmt_num(diff.min_cells)}); {fmt_num(diff.n_uncertain)} uncertain, not included. '
            "CI: 95 % binomial interval.</p>")
    return (f'<div class="block wide"><h4>WBC differential</h4><div class="diff-wrap"><div>{table}{note}</div>'
            f"{diff_chart(rows)}</div></div>")


def flags_html(flags: list[tuple[str, Flag]]) -> str:
    if not flags:
        return '<div class="block"><h4>Flags</h4><p class="muted">none</p></div>'
    order = {lvl: n for n, lvl in enumerate(LEVELS)}
    items = sorted(flags, key=lambda wf: order[wf[1].level])
    lis = "".join(f'<li><span class="badge lvl-{esc(f.level)}">'
                  f'{esc(f.level)}</span> <code>{esc(f.code)}</code> {esc(f.message)}'
                  + (f' <span class="small">(field <code>{esc(where)}</code>)</span>' if where else "") + "</li>"
                  for where, f in items)
    return f'<div class="block"><h4>Flags</h4><ul class="flags">{lis}</ul></div>'


def estimates_html(estimates: list[Estimate]) -> str:
    if not estimates:
        return ""
    rows = []
    for est in estimates:
        inputs = est.inputs or {}
        inp = ", ".join(f"{esc(k)} = {fmt_num(v)}" for k, v in inputs.items()) if isinstance(inputs, dict) else esc(inputs)
        cls = ' class="oor-row"' if est.out_of_range else ""
        rows.append(f"<tr{cls}><td>{esc(est.quantity)}</td><td class='n'>{fmt_num(est.value)}</td>"
                    f"<td>{esc(est.unit)}</td>"
                    f"<td class='n'>{range_text(est.ref_low, est.ref_high)}</td>"
                    f"<td>{oor_mark(est) or '<span class=muted>in range</span>'}</td>"
                    f"<td><code>{esc(est.formula)}</code></td><td class='small'>{inp}</td></tr>")
    return ('<div class="block wide"><h4>Calibrated estimates</h4><table class="compact"><tr><th>quantity</th>'
            '<th>value</th><th>unit</th><th>reference</th><th></th><th>formula</th><th>inputs</th></tr>'
            f'{"".join(rows)}</table><p class="small">From the calibration given to <code>hemocount count</code>; '
            "an estimate is only as good as that calibration.</p></div>")


def fields_html(fields: list[FieldSummary], thumbs: Thumbnails, per_slide: int) -> str:
    if not fields:
        return ""
    figs = [field_figure(f, thumbs) for f in fields[:per_slide]]
    rest = fields[per_slide:]
    more = ""
    if rest:
        links = ", ".join(f'<a href="{href_of(f.annotated)}">{esc(f.image)}</a>' if f.annotated
                          else esc(f.image) for f in rest)
        more = f'<p class="more small"><strong>+{len(rest)} more:</strong> {links}</p>'
    return (f'<div class="block wide"><h4>Fields ({len(fields)})</h4><div class="thumbs">{"".join(figs)}</div>'
            f"{more}</div>")


def magnification_note(fld: FieldSummary) -> str:
    """The field's µm/px from the red-cell ruler, and the resampling it got (empty for old summaries)."""
    um = fld.um_per_px
    if um is None:
        return '<br><span class="small">scale unknown</span>' if fld.scale == "unknown" else ""
    factor = float(fld.scale_factor or 1.0)
    resampled = f", resampled x{factor:.2g}" if factor != 1.0 else ""
    return f'<br><span class="small">{um:.3f} µm/px{resampled}</span>'


def field_figure(fld: FieldSummary, thumbs: Thumbnails) -> str:
    counts = fld.counts or {}
    caption = (f'<code>{esc(fld.image)}</code><br>'
               + " ".join(f"{c[0] if c != 'Platelets' else 'PLT'} {fmt_num(counts.get(c))}" for c in CELL_CLASSES))
    caption += magnification_note(fld)
    levels = level_counts([("", f) for f in fld.flags])
    if any(levels.values()):
        worst = next(lvl for lvl in LEVELS if levels[lvl])
        n = sum(levels.values())
        caption += f' <span class="badge lvl-{worst}">{n} flag{"s" * (n != 1)}</span>'
    rel = fld.annotated
    img = thumbs.get(rel) if rel else None
    if img is not None:
        uri, w, h = img
        pic = (f'<a href="{href_of(rel)}"><img src="{uri}" width="{w}" height="{h}" loading="lazy" '
               f'alt="annotated {esc(fld.image)}"></a>')
    else:
        why = "no annotated image" if not rel else "annotated image missing"
        pic = f'<div class="placeholder">{why}</div>'
    return f"<figure>{pic}<figcaption>{caption}</figcaption></figure>"
