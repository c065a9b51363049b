"""Differential CIs, calibration formulas, reference ranges, QC flags and slide grouping."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hemocount import WBC_SUBTYPES
from hemocount.calibration import Calibration
from hemocount.errors import HemocountError
from hemocount.flags import Flag
from hemocount.qc import QCConfig, field_flags, image_quality, slide_flags
from hemocount.reference import ReferenceRanges
from hemocount.slides import assign_slides, differential
from hemocount.stats import binomial_ci

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def test_binomial_ci_known_values() -> None:
    # Closed forms of the exact interval at the ends: upper(0, n) = 1 - (a/2)^(1/n), lower(n, n) = (a/2)^(1/n).
    assert binomial_ci(0, 10) == (0.0, pytest.approx(1 - 0.025 ** (1 / 10)))
    assert binomial_ci(10, 10) == (pytest.approx(0.025 ** (1 / 10)), 1.0)
    # Published Clopper-Pearson values.
    assert binomial_ci(5, 10) == (pytest.approx(0.1871, abs=1e-4), pytest.approx(0.8129, abs=1e-4))
    assert binomial_ci(50, 100) == (pytest.approx(0.3983, abs=1e-4), pytest.approx(0.6017, abs=1e-4))
    assert binomial_ci(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        binomial_ci(3, 2)


def test_binomial_ci_equals_scipy_beta_quantiles() -> None:
    from scipy.stats import beta

    alpha = 1 - 0.95
    for n in (1, 2, 7, 30, 101, 400):
        for k in range(n + 1):
            low, high = binomial_ci(k, n)
            assert low == (0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1)))
            assert high == (1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k)))


def test_differential_ok_and_insufficient() -> None:
    ranges = ReferenceRanges.load()
    counts = {"neutrophil": 60, "eosinophil": 3, "lymphocyte": 30, "monocyte": 5, "basophil": 2, "uncertain": 7}
    d = differential(counts, 100, ranges)
    assert d.status == "ok" and d.n_classified == 100 and d.n_uncertain == 7
    neu = d.rows[0]
    assert neu.subtype == "neutrophil" and neu.pct == 60.0
    lo, hi = binomial_ci(60, 100)
    assert (neu.ci_low, neu.ci_high) == (round(100 * lo, 1), round(100 * hi, 1))
    assert neu.out_of_range is False and neu.ref_low == 40 and neu.direction == ""
    few = differential({**counts, "neutrophil": 10}, 100, ranges)
    assert few.status == "insufficient cells" and all(r.out_of_range is None for r in few.rows)
    off = differential(dict.fromkeys((*WBC_SUBTYPES, "uncertain"), 0), 100, ranges, classified=False)
    assert off.status == "not classified" and off.rows[0].pct is None
    assert type(d).from_json(d.to_json()) == d  # the summary.json round trip


def test_reference_ranges_marking_and_user_file(tmp_path: Path) -> None:
    r = ReferenceRanges.load()
    assert r.mark("differential_pct", "basophil", 3.0)["out_of_range"] is True
    assert r.mark("counts_per_uL", "WBC", 7000)["out_of_range"] is False
    f = tmp_path / "ranges.toml"
    f.write_text('source = "lab X"\n[counts_per_uL]\nWBC = [3500, 10500]\n')
    user = ReferenceRanges.load(f)
    assert user.source == "lab X" and user.mark("counts_per_uL", "WBC", 3600)["out_of_range"] is False
    assert user.mark("differential_pct", "basophil", 50)["out_of_range"] is None  # no range given
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"counts_per_uL": {"WBC": [11000, 4000]}}))
    with pytest.raises(HemocountError, match="low <= high"):
        ReferenceRanges.load(bad)
    bad.write_text(json.dumps({"counts_per_uL": {"Monocytes": [1, 2]}}))
    with pytest.raises(HemocountError, match="unknown name"):
        ReferenceRanges.load(bad)


def test_calibration_formulas(tmp_path: Path) -> None:
    f = tmp_path / "cal.json"
    f.write_text(json.dumps({"wbc_factor": 2000, "platelet_factor": 20000}))
    cal = Calibration.load(f)
    est = {e["quantity"]: e for e in cal.estimates(n_fields=10, counts={"RBC": 500, "WBC": 36, "Platelets": 120},
                                                   area_px=1e6)}
    assert est["WBC"]["value"] == 3.6 * 2000 and est["Platelets"]["value"] == 12 * 20000
    assert "RBC" not in est and "factor" in est["WBC"]["formula"]
    f.write_text(json.dumps({"um_per_px": 0.1, "depth_um": 3}))
    geo = Calibration.load(f).estimates(n_fields=1, counts={"RBC": 100, "WBC": 1, "Platelets": 10}, area_px=1e6)
    # 1e6 px x 0.01 um^2/px x 3 um = 3e4 um^3; 100 cells / 3e4 um^3 x 1e9 um^3/uL.
    assert {e["quantity"]: e["value"] for e in geo}["RBC"] == pytest.approx(100 / 3e4 * 1e9, rel=1e-6)
    for bad, msg in (({"wbc_factor": -1}, "positive"), ({"um_per_px": 0.1}, "both"), ({"wbc": 1}, "unknown"),
                     ({}, "nothing to estimate")):
        f.write_text(json.dumps(bad))
        with pytest.raises(HemocountError, match=msg):
            Calibration.load(f)
    f.write_text("{not json")
    with pytest.raises(HemocountError, match="malformed"):
        Calibration.load(f)


def test_image_quality_and_field_flags(field: np.ndarray) -> None:
    import cv2

    cfg = QCConfig()
    sharp = image_quality(field)
    blurred = image_quality(cv2.GaussianBlur(field, (0, 0), 4))
    assert blurred["blur_index"] > cfg.blur_above > sharp["blur_index"]
    dark = image_quality((field * 0.1).astype(np.uint8))
    counts = {"RBC": 4, "WBC": 1, "Platelets": 0}
    codes = {f.code for f in field_flags(counts=counts, confidences=np.array([0.9, 0.2, 0.3, 0.95, 0.1]),
                                            quality=dark, cap_reached=True, max_det=5, cfg=cfg)}
    assert codes == {"cap_reached", "low_confidence", "too_dark", "no_colour"}  # a dark field loses its colour
    assert field_flags(counts=counts, confidences=np.array([0.9] * 5), quality=sharp, cap_reached=False,
                       max_det=5, cfg=cfg) == []
    assert {f.code for f in field_flags(counts=dict.fromkeys(counts, 0), confidences=np.zeros(0),
                                           quality=blurred, cap_reached=False, max_det=5, cfg=cfg)} == \
        {"no_cells", "blurred"}


def test_heavy_jpeg_is_flagged_compressed_and_untrusted() -> None:
    """A field saved at JPEG quality 5 is flagged (and the count put in doubt); the field as shipped,
    or the heavy JPEG shifted off the 8-px grid and resized (no grid left), is not."""
    import cv2

    from hemocount.io import read_image
    from hemocount.qc import blockiness, untrusted

    cfg = QCConfig()
    field = read_image(next(iter(sorted(SAMPLES.glob("*.jpg")))))
    heavy = cv2.imdecode(cv2.imencode(".jpg", field, [cv2.IMWRITE_JPEG_QUALITY, 5])[1], cv2.IMREAD_COLOR)
    gray = cv2.cvtColor(field, cv2.COLOR_BGR2GRAY)
    assert blockiness(gray) < cfg.blocky_above < image_quality(heavy)["blockiness"]
    resized = cv2.resize(heavy[3:, 5:], None, fx=0.7, fy=0.7, interpolation=cv2.INTER_AREA)
    assert image_quality(resized)["blockiness"] < cfg.blocky_above
    assert blockiness(gray[:40, :40]) == 1.0  # too small to tell
    flags = field_flags(counts={"RBC": 4, "WBC": 1, "Platelets": 1}, confidences=np.array([0.9] * 6),
                        quality=image_quality(heavy), cap_reached=False, max_det=100, cfg=cfg)
    assert [f.code for f in untrusted(flags)] == ["compressed"]


def _quality_float_reference(image_bgr: np.ndarray) -> dict[str, float]:
    """The blur index as first written (float32 Sobel, numpy squares): the thresholds were set on it."""
    import cv2

    gray = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY)
    scale = 640 / max(gray.shape)
    if scale < 1:
        gray = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)

    def energy(g: np.ndarray) -> float:
        gx, gy = cv2.Sobel(g, cv2.CV_32F, 1, 0), cv2.Sobel(g, cv2.CV_32F, 0, 1)
        return float(np.mean(gx.astype(np.float64) ** 2 + gy.astype(np.float64) ** 2))

    total = energy(gray)
    blur = 1.0 if total < 1e-6 else energy(cv2.GaussianBlur(gray, (0, 0), 2)) / total
    return {"brightness": round(float(gray.mean()), 2), "blur_index": round(min(blur, 1.0), 4)}


def test_image_quality_matches_float_reference(field: np.ndarray) -> None:
    import cv2

    rng = np.random.default_rng(0)
    images = [field, cv2.GaussianBlur(field, (0, 0), 3), np.full((40, 50, 3), 128, np.uint8),
              cv2.resize(field, (1500, 1100)), rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)]
    for img in images:
        q = image_quality(img)
        assert {k: q[k] for k in ("brightness", "blur_index")} == _quality_float_reference(img)


def test_slide_flags() -> None:
    cfg = QCConfig(min_wbc=10)
    flags = slide_flags(counts={"RBC": 10, "WBC": 20, "Platelets": 50}, n_fields=3, n_skipped=1, n_classified=5,
                        field_flags_=[[Flag("blurred", "warning", "")], [], []], cfg=cfg)
    codes = {f.code for f in flags}
    assert codes == {"skipped_fields", "insufficient_differential", "rbc_wbc_ratio", "platelet_rbc_ratio",
                     "fields_blurred"}


def test_qc_file(tmp_path: Path) -> None:
    f = tmp_path / "qc.toml"
    f.write_text("min_wbc = 50\nrbc_per_wbc = [1, 100]\n")
    cfg = QCConfig.load(f)
    assert cfg.min_wbc == 50 and cfg.rbc_per_wbc == (1.0, 100.0)
    f.write_text("min_cells = 3\n")
    with pytest.raises(HemocountError, match="unknown QC key"):
        QCConfig.load(f)


def test_assign_slides(tmp_path: Path) -> None:
    src = tmp_path / "SRC"
    for p in ("p1/f1.jpg", "p1/deep/f2.jpg", "p2/f3.jpg", "loose.jpg"):
        (src / p).parent.mkdir(parents=True, exist_ok=True)
        (src / p).write_bytes(b"x")
    single = tmp_path / "single.png"
    single.write_bytes(b"x")
    images = [src / "p1/f1.jpg", src / "p1/deep/f2.jpg", src / "p2/f3.jpg", src / "loose.jpg", single]
    assert assign_slides([src, single], images) == ["p1", "p1", "p2", "loose.jpg", "single.png"]
    other = tmp_path / "OTHER"
    (other / "p1").mkdir(parents=True)
    (other / "p1" / "g.jpg").write_bytes(b"x")
    assert assign_slides([src, other], [src / "p1/f1.jpg", other / "p1/g.jpg"]) == ["SRC/p1", "OTHER/p1"]


def test_qc_file_with_a_wrong_type_is_one_line(tmp_path: Path) -> None:
    f = tmp_path / "qc.json"
    f.write_text('{"min_coverage": "0.35"}')
    with pytest.raises(HemocountError, match="min_coverage must be a number"):
        QCConfig.load(f)
    f.write_text('{"min_coverage": 0.2, "min_wbc": 50}')
    cfg = QCConfig.load(f)
    assert cfg.min_coverage == 0.2 and cfg.min_wbc == 50 and isinstance(cfg.min_wbc, int)


def test_flag_is_typed_and_checked() -> None:
    """A flag is a typed record: a bad level, an empty code or a malformed JSON object is refused where it is
    made or read, so a hand-edited journal or summary cannot carry a flag the sinks would misreport."""
    from hemocount.flags import flags_from_json, flags_to_json

    f = Flag("blurred", "warning", "image looks blurred")
    assert flags_from_json(flags_to_json([f])) == [f] and f.doubts_count
    assert not Flag("unfamiliar_lab", "info", "").doubts_count
    for bad in (lambda: Flag("x", "fatal", "m"), lambda: Flag("", "info", "m"),
                lambda: flags_from_json([{"code": "x", "level": "info"}]), lambda: flags_from_json("x")):
        with pytest.raises((TypeError, ValueError)):
            bad()
