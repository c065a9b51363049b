"""The HTML report: content, escaping, self-containment, size at 500 slides, CLI, and a headless-Chromium render."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hemocount.cli import main
from hemocount.report import THUMBS_PER_SLIDE, render_html, write_report

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
RUO = "Research use only. Not for diagnosis."
EVIL = "<script>alert(1)</script>"
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class _StrictParser(HTMLParser):
    """Collects tags, attributes and text, and fails on mis-nested or unclosed elements."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))  # self-closing SVG elements

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
        else:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(page: str) -> _StrictParser:
    p = _StrictParser()
    p.feed(page)
    p.close()
    assert not p.errors, p.errors[:5]
    assert not p.stack, f"unclosed: {p.stack}"
    return p


def _jpeg(path: Path, seed: int, size: tuple[int, int] = (48, 64)) -> None:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    img = np.full((*size, 3), (215, 200, 235), np.uint8)
    for _ in range(6):
        cx, cy = (int(v) for v in rng.integers(5, min(size) - 5, 2))
        cv2.circle(img, (cx, cy), 6, (120, 110, 210), -1)
    cv2.imwrite(str(path), img)


def _rows(pcts: dict[str, tuple[int, float, float, float, float, float]]) -> list[dict[str, Any]]:
    out = []
    for sub, (count, pct, lo, hi, rlo, rhi) in pcts.items():
        out.append({"subtype": sub, "count": count, "pct": pct, "ci_low": lo, "ci_high": hi, "ref_low": rlo,
                    "ref_high": rhi, "out_of_range": not rlo <= pct <= rhi})
    return out


def _field(slide: str, k: int, annotated: str | None, counts: tuple[int, int, int] = (500, 4, 27),
           flags: list[dict[str, str]] | None = None, **scale: Any) -> dict[str, Any]:
    return {"image": f"{slide}/f{k}.jpg", "annotated": annotated,
            "counts": dict(zip(("RBC", "WBC", "Platelets"), counts)), "flags": flags or [], **scale}


def _summary(out: Path) -> dict[str, Any]:
    """Three slides: an ok differential with 15 fields, one with too few cells, one ALL-flagged with estimates."""
    fields1 = []
    for k in range(15):
        rel = f"annotated/patient_01/f{k}.jpg.jpg"
        _jpeg(out / rel, k)
        fields1.append(_field("patient_01", k, rel))
    _jpeg(out / "annotated/patient_02/f0.jpg.jpg", 99)
    _jpeg(out / "annotated/patient_03/f0.jpg.jpg", 98)
    ok_rows = _rows({"neutrophil": (70, 53.8, 44.9, 62.6, 40, 75), "eosinophil": (5, 3.8, 1.3, 8.8, 1, 6),
                     "lymphocyte": (40, 30.8, 23.0, 39.4, 20, 45), "monocyte": (12, 9.2, 4.8, 15.6, 2, 10),
                     "basophil": (3, 2.3, 0.5, 6.6, 0, 3)})
    all_rows = _rows({"neutrophil": (20, 15.4, 9.7, 22.8, 40, 75), "eosinophil": (1, 0.8, 0.0, 4.2, 1, 6),
                      "lymphocyte": (105, 80.8, 72.9, 87.2, 20, 45), "monocyte": (4, 3.1, 0.8, 7.7, 2, 10),
                      "basophil": (0, 0.0, 0.0, 2.8, 0, 2)})
    return {
        "research_use": RUO,
        "run": {
            "hemocount_version": "0.2.0", "created": "2026-11-22T04:00:00Z", "sources": ["/data/SLIDES"],
            "detector": {"backend": "yolo", "weights": "yolo11n-cells", "version": "1"},
            "classifiers": {"wbc_subtype": "resnet50-wbc-subtype", "all": "resnet50-all"},
            "n_images": 19, "n_done": 18, "skipped": [{"image": "patient_02/bad.jpg", "error": "truncated JPEG"}],
            "edge_rule": "cells touching the image border are counted",
            "tiling": "auto (tile 640 px, overlap 0.2) for images larger than 2.5x the model input",
            "all_flag_rule": "at least 3 WBCs with ALL probability >= 0.9",
            "reference_ranges": {"source": "built-in adult defaults",
                                 "ranges": {"WBC_per_uL": [4000, 11000], "lymphocyte_pct": [20, 45]}},
        },
        "slides": [
            {"slide": "patient_01", "n_fields": 15, "counts": {"RBC": 7531, "WBC": 134, "Platelets": 402},
             "differential": {"status": "ok", "min_cells": 100, "n_classified": 130, "n_uncertain": 4,
                              "rows": ok_rows},
             "all_flag": {"flagged": False, "n_wbc": 134, "n_above": 1, "prob": 0.9, "min_cells": 3},
             "flags": [], "estimates": [], "fields": fields1},
            {"slide": "patient_02", "n_fields": 3, "counts": {"RBC": 1500, "WBC": 12, "Platelets": 80},
             "differential": {"status": "insufficient cells", "min_cells": 100, "n_classified": 11, "n_uncertain": 1,
                              "rows": _rows({"neutrophil": (6, 54.5, 28.0, 78.7, 40, 75),
                                             "eosinophil": (0, 0.0, 0.0, 25.9, 1, 6),
                                             "lymphocyte": (4, 36.4, 15.2, 64.6, 20, 45),
                                             "monocyte": (1, 9.1, 1.6, 37.7, 2, 10),
                                             "basophil": (0, 0.0, 0.0, 25.9, 0, 2)})},
             "all_flag": {"flagged": False, "n_wbc": 12, "n_above": 0, "prob": 0.9, "min_cells": 3},
             "flags": [{"code": "few_wbc", "level": "warning", "message": "only 12 WBCs (< 100) on this slide"}],
             "estimates": [],
             "fields": [_field("patient_02", 0, "annotated/patient_02/f0.jpg.jpg", um_per_px=0.1412,
                               scale="normalised", scale_factor=0.5),
                        _field("patient_02", 1, None, um_per_px=0.07, scale="as_is"),
                        _field("patient_02", 2, "annotated/patient_02/gone.jpg.jpg",
                               flags=[{"code": "blurred", "level": "warning", "message": "field looks blurred"}])]},
            {"slide": "patient_03", "n_fields": 1, "counts": {"RBC": 2113, "WBC": 130, "Platelets": 9},
             "differential": {"status": "ok", "min_cells": 100, "n_classified": 130, "n_uncertain": 0,
                              "rows": all_rows},
             "all_flag": {"flagged": True, "n_wbc": 130, "n_above": 57, "prob": 0.9, "min_cells": 3},
             "flags": [{"code": "all_suspected", "level": "error", "message": "57 WBCs look like ALL blasts"},
                       {"code": "low_platelets", "level": "info", "message": "few platelets seen"}],
             "estimates": [{"quantity": "WBC", "value": 26000.0, "unit": "cells/uL",
                            "formula": "mean WBC per HPF x 2000", "inputs": {"wbc_per_hpf": 13.0, "factor": 2000},
                            "ref_low": 4000, "ref_high": 11000, "out_of_range": True}],
             "fields": [_field("patient_03", 0, "annotated/patient_03/f0.jpg.jpg", counts=(2113, 130, 9),
                               scale="unknown")]},
        ],
    }


@pytest.fixture
def out(tmp_path: Path) -> Path:
    folder = tmp_path / "OUT"
    folder.mkdir()
    summary = _summary(folder)
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def _section(page: str, slide_index: int) -> str:
    """The HTML of one slide's <details> section."""
    parts = page.split('<details class="slide"')
    return parts[slide_index + 1].split("</details>")[0]


def test_report_contents(out: Path) -> None:
    summary = json.loads((out / "summary.json").read_text())
    path = write_report(summary, out)
    assert path == out / "report.html"
    page = path.read_text(encoding="utf-8")
    p = _parse(page)
    text = " ".join(p.text)
    assert page.count(RUO) >= 2 and RUO in text
    # run summary
    for value in ("0.2.0", "yolo11n-cells", "resnet50-wbc-subtype", "/data/SLIDES", "18 of 19 counted",
                  "patient_02/bad.jpg", "truncated JPEG", "cells touching the image border are counted",
                  "tile 640 px", "at least 3 WBCs with ALL probability", "built-in adult defaults"):
        assert value in text, value
    # overview: one row per slide, linking to its section
    overview = page.split('id="overview"')[1].split("</section>")[0]
    assert overview.count("<tr") == 4
    for i in range(3):
        assert f'href="#s{i}"' in overview and f'id="s{i}"' in page
    assert "7531" in overview and "N 53.8" in overview and "insufficient cells (11 &lt; 100)" in overview
    assert "ALL flag raised" in overview and "L 80.8▲" in overview
    # slide 1: ok differential with CIs, all in range, 12 thumbnails + 3 more as links
    s1 = _section(page, 0)
    assert "53.8" in s1 and "44.9–62.6" in s1 and "40–75" in s1 and "130 WBCs with a confident subtype" in s1
    assert "<svg" in s1 and 'class="whisker"' in s1
    assert "outside the reference range" not in s1 and "oor-row" not in s1 and "oor-t" not in s1
    assert s1.count('src="data:image/jpeg;base64,') == THUMBS_PER_SLIDE
    assert "+3 more" in s1 and 'href="annotated/patient_01/f14.jpg.jpg"' in s1
    assert 'href="annotated/patient_01/f0.jpg.jpg"' in s1
    # slide 2: insufficient cells, no percentages or chart, placeholders for the missing annotated images
    s2 = _section(page, 1)
    assert "Insufficient cells" in s2 and "11 WBCs classified, at least 100" in s2
    assert "54.5" not in s2 and "<svg" not in s2
    assert "no annotated image" in s2 and "annotated image missing" in s2
    assert s2.count('src="data:image/jpeg;base64,') == 1
    assert "only 12 WBCs (&lt; 100) on this slide" in s2 and "field looks blurred" in s2
    # magnification per field (red-cell ruler) and its range on the slide; none known on slide 1
    assert "0.141 µm/px, resampled x0.5" in s2 and "0.070 µm/px<" in s2 and "0.070–0.141" in s2
    assert "µm/px" not in s1 and "scale unknown" in _section(page, 2)
    # slide 3: ALL flag, flags by level, out-of-range marked with words and arrows, estimates with formula
    s3 = _section(page, 2)
    assert "ALL flag raised" in s3 and "57 of 130 WBCs" in s3
    assert "57 WBCs look like ALL blasts" in s3 and "lvl-error" in s3 and "lvl-info" in s3
    assert "▲ high" in s3 and "▼ low" in s3 and s3.count('class="oor-row"') == 4  # L, N, E high/low + WBC
    assert "26000" in s3 and "cells/uL" in s3 and "mean WBC per HPF x 2000" in s3
    assert "wbc_per_hpf = 13" in s3 and "factor = 2000" in s3 and "4000–11000" in s3


def test_self_contained(out: Path) -> None:
    page = write_report(json.loads((out / "summary.json").read_text()), out).read_text()
    assert not re.search(r"https?://", page)
    p = _parse(page)
    for tag, attrs in p.tags:
        assert tag not in ("link", "iframe", "object", "embed"), tag
        for key in ("src", "href", "action", "srcset"):
            value = attrs.get(key)
            if value is None:
                continue
            external = re.match(r"[a-z][a-z0-9+.-]*:|//", value) and not value.startswith("data:image/jpeg;base64,")
            assert not external, (tag, key, value)
    assert "@import" not in page and "url(" not in page
    assert "default-src 'none'" in page  # the CSP forbids any fetch even if something slipped in


def test_escapes_hostile_names(out: Path) -> None:
    summary = json.loads((out / "summary.json").read_text())
    s = summary["slides"][0]
    s["slide"] = EVIL
    s["fields"][0]["image"] = f'{EVIL}/"onload="x.jpg'
    s["fields"][1]["annotated"] = 'javascript:alert(1)"'
    summary["slides"][2]["flags"][0]["message"] = "<img src=x onerror=alert(1)>"
    summary["run"]["sources"] = [EVIL]
    page = write_report(summary, out).read_text()
    _parse(page)
    assert EVIL not in page and "<img src=x" not in page and 'href="javascript:' not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count("<script") == 1  # the report's own optional script only


def test_500_slides_fast_and_small(out: Path) -> None:
    base = json.loads((out / "summary.json").read_text())
    samples = sorted(SAMPLES.glob("*.jpg"))
    for k, f in enumerate(sorted(out.glob("annotated/*/*.jpg"))):  # real 640x480 fields, for realistic sizes
        shutil.copy(samples[k % len(samples)], f)
    slides = []
    for i in range(500):
        s = copy.deepcopy(base["slides"][i % 3])
        s["slide"] = f"slide_{i:03d}"
        slides.append(s)
    summary = {**base, "slides": slides}
    t0 = time.perf_counter()
    path = write_report(summary, out)
    elapsed = time.perf_counter() - t0
    size = path.stat().st_size
    page = path.read_text()
    _parse(page)
    assert page.count('<details class="slide"') == 500 and "slide_499" in page
    assert page.count("<details class=\"slide\" open") == 0  # large runs start collapsed
    # the page-wide thumbnail budget (one per slide here, the rest as links) keeps the page small
    assert page.count('src="data:image/jpeg;base64,') == 500
    assert elapsed < 10, f"500 slides took {elapsed:.1f} s"
    assert size < 6_000_000, f"500-slide report is {size / 1e6:.1f} MB"


def test_cli_report(out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-q", "report", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out / "report.html")
    assert "patient_03" in (out / "report.html").read_text()


@pytest.mark.parametrize("content, message", [
    (None, "summary.json: no such file"),
    ("{not json", "summary.json: not valid JSON (line 1"),
    ('{"run": {}, "slides": [{"n_fields": 1}]}', "summary.json: not a hemocount summary"),
    ('[1, 2]', "summary.json: not a hemocount summary"),
    ('{"run": {}, "slides": [{"slide": "a", "counts": 5}]}', "slide 'a' has an unexpected value"),
    ('{"run": {"skipped": 3}, "slides": []}', "summary.json: unexpected value in 'run'"),
])
def test_cli_report_bad_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None,
                                message: str) -> None:
    if content is not None:
        (tmp_path / "summary.json").write_text(content)
    assert main(["-q", "report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "report.html").exists()


def test_unreadable_or_outside_thumbnails(out: Path) -> None:
    summary = json.loads((out / "summary.json").read_text())
    fields = summary["slides"][0]["fields"]
    (out / "annotated/patient_01/f0.jpg.jpg").write_bytes(b"not a jpeg")
    _jpeg(out.parent / "outside.jpg", 7)
    fields[1]["annotated"] = "../outside.jpg"
    page = render_html(summary, out)
    s1 = _section(page, 0)
    assert s1.count("annotated image missing") == 2
    assert s1.count('src="data:image/jpeg;base64,') == THUMBS_PER_SLIDE - 2


def test_single_slide_open_and_big_image_thumbnail(tmp_path: Path) -> None:
    out = tmp_path / "OUT"
    summary = _summary(out)
    summary["slides"] = summary["slides"][2:]
    _jpeg(out / "annotated/patient_03/f0.jpg.jpg", 1, size=(1200, 1600))  # decoded at reduced scale
    page = render_html(summary, out)
    _parse(page)
    assert '<details class="slide" open>' in page
    m = re.search(r'<img src="data:image/jpeg;base64,[^"]+" width="(\d+)" height="(\d+)"', page)
    assert m and (int(m[1]), int(m[2])) == (200, 150)


# ------------------------------------------------------------------------------------------- Chromium

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _no_network_prefix() -> list[str]:
    """``unshare -rn`` (a private network namespace with no interfaces) where the kernel allows it."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return []
    ok = subprocess.run([unshare, "-rn", "true"], capture_output=True, timeout=10, check=False).returncode == 0
    return [unshare, "-rn"] if ok else []


def _chromium(page: Path, profile: Path, *action: str) -> subprocess.CompletedProcess[str]:
    # A throw-away profile and HOME, background services off, every host name resolving to "not found"
    # (Chromium still schedules sign-in and component-update requests in headless mode), and where possible
    # no network interface at all.
    assert CHROMIUM is not None
    args = [*_no_network_prefix(), CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
            f"--user-data-dir={profile}", "--no-first-run", "--no-default-browser-check",
            "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-extensions",
            "--disable-default-apps", "--disable-domain-reliability", "--disable-breakpad",
            "--disable-client-side-phishing-detection", "--metrics-recording-only", "--no-pings",
            "--disable-dev-shm-usage",
            "--disable-features=Translate,MediaRouter,OptimizationHints,AutofillServerCommunication,"
            "NetworkTimeServiceQuerying",
            "--host-resolver-rules=MAP * ~NOTFOUND", "--window-size=1280,2000", "--hide-scrollbars", *action,
            page.as_uri()]
    env = {**os.environ, "HOME": str(profile)}
    return subprocess.run(args, capture_output=True, text=True, timeout=60, env=env, check=False)


@pytest.mark.skipif(CHROMIUM is None and os.environ.get("HEMOCOUNT_REQUIRE_CHROMIUM") != "1",
                    reason="chromium not installed (apt-get install chromium); "
                    "HEMOCOUNT_REQUIRE_CHROMIUM=1 makes this a failure")
def test_chromium_renders_report(out: Path, tmp_path: Path) -> None:
    import cv2

    assert CHROMIUM is not None, "HEMOCOUNT_REQUIRE_CHROMIUM=1 but no chromium on PATH"
    page = write_report(json.loads((out / "summary.json").read_text()), out)
    shot = tmp_path / "shot.png"
    t0 = time.perf_counter()
    res = _chromium(page, tmp_path / "profile", f"--screenshot={shot}")
    assert shot.is_file(), res.stderr[-2000:]
    dom = _chromium(page, tmp_path / "profile", "--dump-dom")
    elapsed = time.perf_counter() - t0
    assert dom.returncode == 0, dom.stderr[-2000:]
    img = cv2.imread(str(shot))
    assert img is not None and img.shape[:2] == (2000, 1280)
    non_white = np.mean(np.any(img < 235, axis=2))
    assert img.std() > 20 and non_white > 0.05, (img.std(), non_white)
    # the research-use banner is red on pink: present in the rendered pixels, not only in the source
    b, g, r = (img[..., k].astype(int) for k in range(3))
    assert np.sum((r > 140) & (g < 60) & (b < 60)) > 200
    for value in (RUO, "7531", "44.9–62.6", "Insufficient cells", "ALL flag raised", "57 WBCs look like ALL blasts",
                  "26000", "mean WBC per HPF x 2000", "▲ high"):
        assert value in dom.stdout, value
    # the thumbnails decoded: Chromium keeps data URIs in the DOM, and the images count matches
    assert dom.stdout.count('src="data:image/jpeg;base64,') == THUMBS_PER_SLIDE + 1 + 1
    assert elapsed < 45, f"two headless renders took {elapsed:.1f} s"


def test_summary_json_is_read_into_typed_slides(out: Path) -> None:
    """The report reads summary.json through the typed Summary: what a hand-made or older summary leaves
    out gets a default, the typed form round-trips, and a wrongly typed value names its slide."""
    from hemocount.summary import Summary

    obj = json.loads((out / "summary.json").read_text())
    s = Summary.from_json(obj)
    assert Summary.from_json(s.to_json()) == s
    assert s.slides[0].n_skipped == 0 and s.slides[0].fields[0].status == "ok"  # absent in the fixture
    assert s.slides[1].fields[0].scale_factor == 0.5 and s.slides[2].all_flag is not None
    assert s.slides[2].differential.rows[2].direction == "high"  # lymphocyte 80.8 % above 20-45
    for where, key, bad in ((("differential",), "rows", "many"), (("differential", "rows", 0), "out_of_range", "false"),
                            (("all_flag",), "flagged", "false"), (("all_flag",), "n_above", float("inf")),
                            (("fields", 0), "um_per_px", True), ((), "flags", "few_wbc"),
                            (("flags", 0), "level", "fatal"), (("fields", 2, "flags", 0), "code", "")):
        broken = copy.deepcopy(obj)
        holder = broken["slides"][1]
        for step in where:
            holder = holder[step]
        holder[key] = bad
        with pytest.raises(ValueError, match=f"slide 'patient_02' has an unexpected value .*{key}"):
            Summary.from_json(broken)
