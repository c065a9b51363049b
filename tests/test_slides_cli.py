"""`hemocount count` per slide: slides.csv, summary.json, tiling, edge rule, calibration, QC files."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from hemocount.cli import main
from hemocount.tiling import DEFAULT_OVERLAP, DEFAULT_TILE, TilePlan, tile_grid

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def slide_tree(tmp_path: Path) -> Path:
    """SRC/patient_a/{f1,f2}.jpg, SRC/patient_b/sub/f3.jpg and a loose SRC/loose.jpg."""
    files = sorted(SAMPLES.glob("*.jpg"))
    src = tmp_path / "SRC"
    for dst, f in zip(("patient_a/f1.jpg", "patient_a/f2.jpg", "patient_b/sub/f3.jpg", "loose.jpg"), files):
        (src / dst).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, src / dst)
    return src


def _count(src: Path, out: Path, toy_weights: Path, toy_classifiers: dict[str, Path], *extra: str) -> int:
    return main(["-q", "count", str(src), "-o", str(out), "--weights", str(toy_weights), "--conf", "0.001",
                 "--max-det", "40", "--subtype-weights", str(toy_classifiers["wbc_subtype"]),
                 "--all-weights", str(toy_classifiers["all"]), *extra])


def test_slides_csv_and_summary(slide_tree: Path, tmp_path: Path, toy_weights: Path,
                                toy_classifiers: dict[str, Path]) -> None:
    out = tmp_path / "out"
    cal = tmp_path / "cal.toml"
    cal.write_text("wbc_factor = 2000\n")
    assert _count(slide_tree, out, toy_weights, toy_classifiers, "--calibration", str(cal), "--min-wbc", "2") == 0
    slides = _rows(out / "slides.csv")
    assert [s["slide"] for s in slides] == ["loose.jpg", "patient_a", "patient_b"]
    counts = {r["image"]: r for r in _rows(out / "counts.csv")}
    a = next(s for s in slides if s["slide"] == "patient_a")
    assert a["fields"] == "2"
    for cls in ("RBC", "WBC", "Platelets"):
        assert int(a[cls]) == sum(int(counts[f"SRC/patient_a/{f}"][cls]) for f in ("f1.jpg", "f2.jpg"))
    summary = json.loads((out / "summary.json").read_text())
    assert "not for diagnosis" in summary["research_use"]
    sa = next(s for s in summary["slides"] if s["slide"] == "patient_a")
    wbc = sa["counts"]["WBC"]
    est = sa["estimates"][0]
    assert est["quantity"] == "WBC" and est["value"] == pytest.approx(wbc / 2 * 2000, abs=0.1)
    assert float(a["WBC_per_uL"]) == pytest.approx(est["value"])
    d = sa["differential"]
    n = d["n_classified"]
    assert n + d["n_uncertain"] == wbc
    if n:
        assert sum(r["count"] for r in d["rows"]) == n
        assert all(r["ci_low"] <= r["pct"] <= r["ci_high"] for r in d["rows"])
    assert d["status"] == ("ok" if n >= 2 else "insufficient cells")
    assert sa["all_flag"]["n_wbc"] == n + d["n_uncertain"]
    assert [f["image"] for f in sa["fields"]] == ["SRC/patient_a/f1.jpg", "SRC/patient_a/f2.jpg"]
    assert (out / sa["fields"][0]["annotated"]).is_file()
    run = json.loads((out / "run.json").read_text())
    assert run["edge_rule"] == "cells touching the image border are counted" and run["calibration"]["wbc_factor"]


def test_forced_tiling_and_edges(slide_tree: Path, tmp_path: Path, toy_weights: Path,
                                 toy_classifiers: dict[str, Path]) -> None:
    out = tmp_path / "tiled"
    assert _count(slide_tree / "loose.jpg", out, toy_weights, toy_classifiers, "--no-classify", "--tile", "256",
                  "--overlap", "64", "--exclude-edges") == 0
    run = json.loads((out / "run.json").read_text())
    assert "tile 256 px, overlap 64 px" in run["tiling"] and "excluded" in run["edge_rule"]
    for row in _rows(out / "cells.csv"):
        x1, y1, x2, y2 = (float(row[k]) for k in ("x1", "y1", "x2", "y2"))
        assert x1 > 1 and y1 > 1 and x2 < 639 and y2 < 479
    summary = json.loads((out / "summary.json").read_text())
    assert summary["slides"][0]["differential"]["status"] == "not classified"


def test_auto_tiling_of_a_large_scan(tmp_path: Path, toy_weights: Path) -> None:
    import cv2

    field = cv2.imread(str(sorted(SAMPLES.glob("*.jpg"))[0]))
    big = np.tile(field, (3, 3, 1))  # 1920x1440 > 2 tiles of 640: tiled automatically
    src = tmp_path / "scan"
    src.mkdir()
    cv2.imwrite(str(src / "scan.png"), big)
    cv2.imwrite(str(src / "field.png"), field)
    out = tmp_path / "out"
    assert main(["-q", "count", str(src), "-o", str(out), "--weights", str(toy_weights), "--conf", "0.001", "--scale", "none",
                 "--no-classify", "--no-annotate"]) == 0
    images = {i["image"]: i for i in json.loads((out / "run.json").read_text())["images"]}
    expected = len(tile_grid(1920, 1440, TilePlan.from_options(DEFAULT_TILE, DEFAULT_OVERLAP)))
    assert images["scan/scan.png"]["tiles"] == expected > 1 and images["scan/field.png"]["tiles"] == 0


def test_bad_config_file_is_one_line(slide_tree: Path, tmp_path: Path, toy_weights: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "ranges.json"
    bad.write_text("[1, 2]")
    code = main(["-q", "count", str(slide_tree), "-o", str(tmp_path / "o"), "--weights", str(toy_weights),
                 "--reference-ranges", str(bad)])
    err = capsys.readouterr().err
    assert code == 2 and "ranges.json" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
