"""The differential bar chart with 95 % CI whiskers, as inline SVG."""

from __future__ import annotations

from hemocount.report.markup import direction, esc, fmt_pct
from hemocount.summary import DiffRow


def diff_chart(rows: list[DiffRow]) -> str:
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
        lo, hi = r.ref_low, r.ref_high
        if isinstance(lo, (int, float)) and isinstance(hi, (int, float)):
            out.append(f'<rect x="{x(lo):.1f}" y="{y + 2}" width="{x(hi) - x(lo):.1f}" height="{row_h - 4}" '
                       'class="ref"/>')
        oor = bool(r.out_of_range)
        mark = " " + direction(r)[0] if oor else ""
        out.append(f'<text x="{left - 6}" y="{cy + 4:.1f}" class="lab{" oor-t" if oor else ""}">'
                   f"{esc(r.subtype)}{mark}</text>")
        pct = r.pct
        if isinstance(pct, (int, float)):
            out.append(f'<rect x="{left}" y="{y + 7}" width="{x(pct) - left:.1f}" height="{row_h - 14}" '
                       f'class="bar{" bar-oor" if oor else ""}"><title>{esc(r.subtype)}: {fmt_pct(pct)} % '
                       f'(95 % CI {fmt_pct(r.ci_low)}–{fmt_pct(r.ci_high)})</title></rect>')
        cl, ch = r.ci_low, r.ci_high
        if isinstance(cl, (int, float)) and isinstance(ch, (int, float)):
            x1, x2 = x(cl), x(ch)
            out.append(f'<path d="M{x1:.1f} {cy:.1f}H{x2:.1f}M{x1:.1f} {cy - 5:.1f}V{cy + 5:.1f}'
                       f'M{x2:.1f} {cy - 5:.1f}V{cy + 5:.1f}" class="whisker"/>')
    out.append("</svg>")
    legend = ('<p class="legend small"><span class="key bar-key"></span> % of classified WBCs '
              '<span class="key whisker-key"></span> 95 % CI <span class="key ref-key"></span> reference range '
              "· ▲/▼ outside it</p>")
    return f'<figure class="chart-fig">{"".join(out)}{legend}</figure>'
