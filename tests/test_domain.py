"""The unfamiliar_lab flag: stain features, the reference, field and slide flags."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hemocount.domain import FEATURES, StainReference, field_vector, stain_features
from hemocount.qc import QCConfig, field_flags, image_quality, slide_flags

SAMPLES = sorted((Path(__file__).resolve().parent.parent / "samples").glob("*.jpg"))


def _hue_turned(img: np.ndarray) -> np.ndarray:
    import cv2

    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
    hsv[..., 0] = (hsv[..., 0].astype(int) + 45) % 180
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def test_stain_features_of_a_grey_image_have_no_colour() -> None:
    img = np.full((60, 80, 3), 200, np.uint8)
    img[20:40, 20:40] = 90
    f = stain_features(img)
    assert list(f) == list(FEATURES)
    assert all(f[k] == 128 for k in FEATURES if k.endswith(("_a", "_b")))  # Lab a, b of grey
    assert f["bg_L"] > f["cell_L"]


def test_reference_fit_distance_and_json_round_trip() -> None:
    rng = np.random.default_rng(0)
    labs = {"x": rng.normal(0, 1, (200, 9)), "y": rng.normal(10, 1, (200, 9))}
    ref = StainReference.fit(labs)
    ref.threshold = 5.0
    assert ref.distance(np.zeros(9)) < 1 and ref.distance(np.full(9, 10.0)) < 1
    assert ref.evaluate(np.full(9, 5.0))["flagged"] and not ref.evaluate(labs["x"][:10])["flagged"]
    back = StainReference.from_json(ref.to_json())
    assert back.threshold == 5.0 and back.distance(np.full(9, 5.0)) == pytest.approx(ref.distance(np.full(9, 5.0)),
                                                                                      rel=1e-3)


def test_shipped_reference_accepts_the_samples_and_flags_a_foreign_stain() -> None:
    from hemocount.io import read_image

    ref = StainReference.load()
    assert ref is not None and ref.threshold > 0
    cfg = QCConfig()
    for path in SAMPLES:
        img = read_image(path)
        q = image_quality(img)
        assert field_vector(q) is not None and ref.distance(field_vector(q)) < ref.threshold
        codes = {f.code for f in field_flags(counts={"RBC": 20, "WBC": 1, "Platelets": 1},
                                                confidences=np.full(22, 0.9), quality=q, cap_reached=False,
                                                max_det=1000, cfg=cfg, stain_ref=ref)}
        assert "unfamiliar_lab" not in codes
        foreign = image_quality(_hue_turned(img))
        assert ref.distance(field_vector(foreign)) > ref.threshold


def test_slide_flag_rests_on_the_slide_mean() -> None:
    counts = {"RBC": 200, "WBC": 10, "Platelets": 20}
    kw = {"counts": counts, "n_fields": 10, "n_skipped": 0, "n_classified": None, "field_flags_": [],
          "cfg": QCConfig()}
    assert "unfamiliar_lab" not in {f.code for f in slide_flags(**kw, stain={"flagged": False, "distance": 2.0,
                                                                                  "threshold": 7.0})}
    flags = slide_flags(**kw, stain={"flagged": True, "distance": 20.0, "threshold": 7.0})
    (flag,) = [f for f in flags if f.code == "unfamiliar_lab"]
    assert flag.level == "warning" and "validate" in flag.message


def test_summarize_slides_flags_on_the_mean_of_the_fields() -> None:
    """Nine familiar fields and one odd one: the mean stays familiar; ten odd ones are flagged."""
    from hemocount.reference import ReferenceRanges
    from hemocount.results import FieldResult
    from hemocount.slides import SlideSettings, summarize_slides

    ref = StainReference.fit({"lab": np.random.default_rng(0).normal(100, 1, (200, 9))})
    ref.threshold = 4.0

    def field(i: int, slide: str, value: float) -> FieldResult:
        q = {"brightness": 190.0, "blur_index": 0.5, "chroma": 20.0, "coverage": 0.9,
             **dict.fromkeys(FEATURES, value)}
        return FieldResult(i, Path(f"{slide}/{i}.png"), f"{slide}/{i}.png", width=10, height=10, slide=slide,
                           quality=q)

    fields = [field(i, "mixed", 100.0 if i else 103.0) for i in range(10)]
    fields += [field(10 + i, "odd", 110.0) for i in range(10)]
    settings = SlideSettings(qc=QCConfig(), ranges=ReferenceRanges.load(None), classified=False, stain_ref=ref)
    slides = {s.slide: s for s in summarize_slides(fields, settings, {})}
    assert not slides["mixed"].stain["flagged"] and slides["odd"].stain["flagged"]
    assert "unfamiliar_lab" in {f.code for f in slides["odd"].flags}
    assert "unfamiliar_lab" not in {f.code for f in slides["mixed"].flags}
