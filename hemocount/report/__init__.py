"""Self-contained HTML report of a count run, rendered from ``OUT/summary.json``.

The page has inline CSS, inline SVG charts and thumbnails embedded as data URIs: it opens offline, from
any folder, and a Content-Security-Policy forbids it to load anything. Every string from the summary
(slide names come from folder names) is HTML-escaped.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

from hemocount import RESEARCH_USE
from hemocount.errors import HemocountError
from hemocount.io import atomic_write_text
from hemocount.report.markup import OPEN_SLIDES, REPORT_NAME, SUMMARY_NAME, THUMBS_PER_SLIDE, THUMBS_TOTAL, esc
from hemocount.report.sections import header_html, overview_html, run_section, slide_section, toggle_buttons
from hemocount.report.style import CSS, SCRIPT
from hemocount.report.thumbnails import Thumbnails
from hemocount.summary import Summary

__all__ = ["REPORT_NAME", "SUMMARY_NAME", "THUMBS_PER_SLIDE", "load_summary", "render_html", "write_report"]


def load_summary(out_dir: Path) -> Summary:
    """Read and check ``out_dir/summary.json``.

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
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise HemocountError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    return _typed(obj, path)


def _typed(summary: Summary | dict[str, Any], where: object) -> Summary:
    """``summary`` as a :class:`Summary` (a ``summary.json`` object is parsed; its errors name the slide)."""
    if isinstance(summary, Summary):
        return summary
    if not isinstance(summary, dict):
        raise HemocountError(f"{where}: not a hemocount summary (expected a JSON object)")
    try:
        return Summary.from_json(summary)
    except (TypeError, ValueError) as exc:
        raise HemocountError(f"{where}: {exc}") from None


def write_report(summary: Summary | dict[str, Any], out_dir: Path) -> Path:
    """Render ``summary`` (a :class:`Summary`, or the ``summary.json`` object) as ``out_dir/report.html``,
    written atomically.

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


def render_html(summary: Summary | dict[str, Any], out_dir: Path) -> str:
    """The report page as one HTML string (see :func:`write_report`)."""
    where = Path(out_dir) / SUMMARY_NAME
    summary = _typed(summary, where)
    run = summary.run
    research = summary.research_use or RESEARCH_USE
    try:
        body = _body(summary, research, Path(out_dir))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise HemocountError(f"{where}: unexpected value in 'run' ({type(exc).__name__}: {exc})") from None
    script_hash = base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()
    # CSP: nothing may be fetched (images are data URIs); only this page's own optional script runs.
    csp = (f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{script_hash}'; "
           "base-uri 'none'; form-action 'none'")
    n = len(summary.slides)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta http-equiv="Content-Security-Policy" content="{csp}">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f'<meta name="generator" content="hemocount {esc(run.get("hemocount_version", ""))}">\n'
            f"<title>hemocount report: {n} slide{'s' * (n != 1)}</title>\n<style>{CSS}</style>\n</head>\n"
            f"<body>\n{body}\n<script>{SCRIPT}</script>\n</body>\n</html>\n")


def _body(summary: Summary, research: str, out_dir: Path) -> str:
    run, slides = summary.run, summary.slides
    per_slide = max(1, min(THUMBS_PER_SLIDE, THUMBS_TOTAL // max(1, len(slides))))
    thumbs = Thumbnails(out_dir)
    thumbs.prefetch([f.annotated for slide in slides for f in slide.fields[:per_slide] if f.annotated])
    sections = []
    for i, slide in enumerate(slides):
        try:
            sections.append(slide_section(slide, i, thumbs, per_slide, open_=len(slides) <= OPEN_SLIDES))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise HemocountError(f"{out_dir / SUMMARY_NAME}: slide {slide.slide!r} has an "
                                 f"unexpected value ({type(exc).__name__}: {exc})") from None
    created = f" on {esc(run['created'])}" if run.get("created") else ""
    return "\n".join([
        header_html(research, run),
        "<main>",
        f'<p class="ruo-banner" role="note"><strong>{esc(research)}</strong> Counts, differentials and flags '
        "are produced by machine-learning models and have not been validated for clinical use.</p>",
        run_section(run, slides, out_dir),
        overview_html(slides),
        '<section id="slides"><h2>Slides</h2>' + toggle_buttons() + "\n".join(sections) + "</section>",
        f'<footer><p>{esc(research)} Generated by hemocount {esc(run.get("hemocount_version", ""))}{created}.</p>'
        "</footer>",
        "</main>",
    ])
