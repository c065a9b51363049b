"""Scale normalisation by the red-cell ruler, the library API's inputs, and the trust flags."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import supervision as sv

from hemocount.errors import HemocountError
from hemocount.qc import QCConfig, chroma, field_flags, stain_coverage
from hemocount.scale import ScaleConfig, ScaleInfo, rbc_diameter, shrink_and_pad, window_for, zoom_of

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def _dets(boxes: list[list[float]], names: list[str], conf: float = 0.9) -> sv.Detections:
    ids = {"RBC": 0, "WBC": 1, "Platelets": 2}
    return sv.Detections(xyxy=np.array(boxes, np.float32).reshape(-1, 4), confidence=np.full(len(boxes), conf),
                         class_id=np.array([ids[n] for n in names]), data={"class_name": np.array(names)})


def test_rbc_diameter_is_the_median_of_whole_red_cells() -> None:
    boxes = [[10, 10, 50, 48], [100, 100, 142, 140], [200, 50, 240, 90], [0, 0, 200, 30], [300, 300, 400, 400]]
    names = ["RBC", "RBC", "RBC", "RBC", "WBC"]
    # The border-cut box (0, 0, 200, 30) is left out while three whole cells remain; the WBC never counts.
    assert rbc_diameter(_dets(boxes, names), 640, 480, 3) == (40.0, 3)
    assert rbc_diameter(_dets(boxes, names), 640, 480, 5) == (None, 4)
    assert rbc_diameter(_dets(boxes, names, conf=0.3), 640, 480, 1, min_conf=0.5) == (None, 0)


def test_window_and_zoom_follow_the_trained_relative_size() -> None:
    assert zoom_of(0.195 * 640, 640) == pytest.approx(1.0)
    assert window_for(0.195 * 640 * 2, 3.5, 640) == 1280  # cells twice too large: twice the window
    assert window_for(0.195 * 640 / 2, 3.5, 640) == 320
    assert window_for(0.195 * 640 * 10, 3.5, 640) == round(640 * 3.5)  # clamped
    # the window depends on the red cells, not on the image: 50 px cells want 256 px tiles anywhere
    assert window_for(50, 3.5, 640) == window_for(50, 3.5, 1280) == window_for(50, 3.5, 4000) == 256
    assert window_for(3, 3.5, 640) == 64  # never below MIN_WINDOW


def test_shrink_and_pad_keeps_size_and_fills_with_background() -> None:
    img = np.full((100, 200, 3), 230, np.uint8)
    img[40:60, 90:110] = (120, 60, 160)
    out = shrink_and_pad(img, 0.5)
    assert out.shape == img.shape and (out[80:, 150:] == 230).all()
    assert (out[20:30, 45:55] == (120, 60, 160)).all()


def test_scale_option_parsing() -> None:
    assert ScaleConfig.parse("auto").mode == "auto" and ScaleConfig.parse("none").mode == "none"
    assert ScaleConfig.parse("0.5") == ScaleConfig(mode="fixed", factor=0.5)
    for bad in ("fast", "0", "-1", "nan", "50"):
        with pytest.raises(HemocountError, match="--scale"):
            ScaleConfig.parse(bad)
    info = ScaleInfo("normalised", 50.0, 12, 0.4, 2.5, 256)
    assert ScaleInfo.from_json(info.to_json()) == info and info.to_json()["um_per_px"] == 0.15


def test_trust_flags_no_colour_missed_cells_and_scale() -> None:
    rng = np.random.default_rng(0)
    field = np.full((120, 160, 3), (200, 190, 230), np.uint8)
    field[30:60, 20:50] = (90, 60, 170)
    field[70:100, 100:130] = (90, 60, 170)
    gray = np.repeat(field.mean(axis=2, keepdims=True).astype(np.uint8), 3, axis=2)
    assert chroma(gray) == 0.0 and chroma(field) > QCConfig().min_chroma
    assert stain_coverage(field, np.array([[20, 30, 50, 60], [100, 70, 130, 100]])) == 1.0
    assert stain_coverage(field, np.array([[20, 30, 50, 60]])) == pytest.approx(0.5, abs=0.1)
    assert stain_coverage(rng.integers(250, 256, (50, 50, 3), dtype=np.uint8), np.zeros((0, 4))) <= 1.0

    def codes(quality: dict, scale: ScaleInfo | None) -> set[str]:
        return {f.code for f in field_flags(counts={"RBC": 20, "WBC": 1, "Platelets": 2},
                                               confidences=np.full(23, 0.9), quality=quality, cap_reached=False,
                                               max_det=1000, cfg=QCConfig(), scale=scale, scale_cfg=ScaleConfig())}

    ok = {"brightness": 190.0, "blur_index": 0.5, "chroma": 20.0, "coverage": 0.9}
    assert codes(ok, ScaleInfo("as_is", 100.0, 12, 1.0)) == set()
    assert codes({**ok, "chroma": 1.0}, None) == {"no_colour"}
    assert codes({**ok, "coverage": 0.2}, None) == {"missed_cells"}
    assert codes(ok, ScaleInfo("unknown", None, 1)) == {"scale_unknown"}
    assert codes(ok, ScaleInfo("normalised", None, 1, 3.0, 0.33, 1920)) == {"scale_unknown"}  # no ruler
    assert codes(ok, ScaleInfo("normalised", 400.0, 5, 5.0, 0.29, 2240)) == {"scale_out_of_range"}
    assert codes(ok, ScaleInfo("normalised", 8.0, 50, 0.06, 10.0, 64)) == {"scale_out_of_range"}  # tiny cells
    assert codes(ok, ScaleInfo("normalised", 50.0, 50, 0.2, 5.0, 256)) == set()  # low magnification, tiled


# ---------------------------------------------------------------- with the shipped detector

@pytest.fixture(scope="module")
def pipe():  # type: ignore[no-untyped-def]
    from hemocount.pipeline import Pipeline

    return Pipeline.from_pretrained("yolo", classify=False, engine="onnx")


@pytest.fixture(scope="module")
def samples() -> list[np.ndarray]:
    from hemocount.io import read_image

    return [read_image(p) for p in sorted(SAMPLES.glob("*.jpg"))]


def _count(dets: sv.Detections, cls: str) -> int:
    return int(np.sum(dets.data["class_name"] == cls))


def test_low_magnification_mosaic_counts_like_its_four_fields(pipe, samples: list[np.ndarray]) -> None:  # type: ignore[no-untyped-def]
    """The four samples shrunk to half and tiled 2x2 (a 0.5x field of the same size) hold the same cells."""
    import cv2

    h, w = samples[0].shape[:2]
    mosaic = np.zeros((h, w, 3), np.uint8)
    for q, img in enumerate(samples):
        y, x = (q // 2) * h // 2, (q % 2) * w // 2
        mosaic[y:y + h // 2, x:x + w // 2] = cv2.resize(img, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    ref, _ = pipe.detect(samples)
    (auto,), (scale,) = pipe.detect([mosaic])
    assert scale.status == "normalised" and 0.35 < scale.zoom < 0.65
    assert abs(scale.um_per_px / np.mean([s.um_per_px for s in pipe.detect(samples)[1]]) - 2) < 0.3
    true = {c: sum(_count(d, c) for d in ref) for c in ("RBC", "WBC")}
    # +-1: the mosaic's quadrant borders cut cells the 1x fields show whole or not at all
    assert abs(_count(auto, "WBC") - true["WBC"]) <= 1
    assert abs(_count(auto, "RBC") - true["RBC"]) <= 0.1 * true["RBC"]
    own = pipe.scale
    pipe.scale = ScaleConfig(mode="none")
    try:
        (plain,), (off,) = pipe.detect([mosaic])
    finally:
        pipe.scale = own
    assert off.status == "off" and _count(plain, "RBC") < _count(auto, "RBC")  # what normalisation is for


def test_high_magnification_field_is_detected_at_the_trained_scale(pipe, samples: list[np.ndarray]) -> None:  # type: ignore[no-untyped-def]
    """The centre half of a field enlarged 2x: the WBC is found once, whole, as at 1x."""
    import cv2

    img = samples[0]
    h, w = img.shape[:2]
    crop = img[h // 4:h // 4 + h // 2, w // 4:w // 4 + w // 2]
    big = cv2.resize(crop, (w, h), interpolation=cv2.INTER_CUBIC)
    # yolo11n-cells v2 is trained with zoom-in to 3x: its manifest band (0.14-0.39, chosen on the val zoom
    # benchmark, where it beat the search on most measures) takes a 2x field as it is, in one pass. On this
    # field that misses the WBC the search below finds (README, Magnification): a known cost, not asserted away.
    assert pipe.scale.band == (0.14, 0.39)
    (d,), (scale,) = pipe.detect([big])
    assert scale.status == "as_is" and _count(d, "RBC") >= 3
    # with the trained-size band of a detector that never saw large cells, the window search shrinks it
    own, pipe.scale = pipe.scale, ScaleConfig()
    try:
        (d,), (scale,) = pipe.detect([big])
    finally:
        pipe.scale = own
    assert scale.status == "normalised" and scale.factor < 0.8
    assert _count(d, "WBC") == 1


def test_in_domain_fields_take_one_pass(pipe, samples: list[np.ndarray]) -> None:  # type: ignore[no-untyped-def]
    calls: list[int] = []
    real = pipe.detector.predict

    def counting(images: list, **kw: object) -> list:
        calls.append(len(images))
        return real(images, **kw)

    pipe.detector.predict = counting
    try:
        _, scales = pipe.detect(samples)
    finally:
        del pipe.detector.predict
    assert calls == [len(samples)] and {s.status for s in scales} == {"as_is"}


def test_api_inputs_give_identical_counts(pipe, samples: list[np.ndarray]) -> None:  # type: ignore[no-untyped-def]
    from PIL import Image

    path = sorted(SAMPLES.glob("*.jpg"))[0]
    bgr = samples[0]
    rgb = np.ascontiguousarray(bgr[..., ::-1])
    results = [pipe(path), pipe(str(path)), pipe(Image.fromarray(rgb)), pipe(rgb, color="rgb"),
               pipe(bgr, color="bgr")]
    assert len({tuple(r.counts().items()) for r in results}) == 1
    assert results[0].counts()["RBC"] > 5 and results[0].annotate().shape == bgr.shape
    with pytest.raises(HemocountError, match="colour order"):
        pipe(rgb)


def test_grayscale_field_is_flagged(pipe, samples: list[np.ndarray]) -> None:  # type: ignore[no-untyped-def]
    gray = np.repeat(samples[0].mean(axis=2, keepdims=True).astype(np.uint8), 3, axis=2)
    r = pipe(gray, color="bgr")
    assert "no_colour" in {f.code for f in r.flags}


def test_normalised_window_does_not_depend_on_the_image_size(pipe, samples: list[np.ndarray]) -> None:  # type: ignore[no-untyped-def]
    """The same 0.5x cells in a 640x480 and in a 1280x960 image get the same window (and no flag)."""
    import cv2

    h, w = samples[0].shape[:2]
    small = [cv2.resize(s, (w // 2, h // 2), interpolation=cv2.INTER_AREA) for s in samples]
    one = np.vstack([np.hstack(small[:2]), np.hstack(small[2:])])  # 640x480 of four half fields
    big = np.vstack([np.hstack([one, one]), np.hstack([one, one])])  # 1280x960, the same magnification
    _, (s1, s2) = pipe.detect([one, big])
    assert s1.status == s2.status == "normalised"
    assert abs(s1.window - s2.window) <= 0.2 * s1.window  # a search probe within 15 % of the measured window stands
    r = pipe(big, color="bgr")
    assert not {"scale_out_of_range", "scale_unknown"} & {f.code for f in r.flags}


def test_coverage_ignores_edge_exclusion_and_cap_ignores_low_boxes(pipe, samples: list[np.ndarray]) -> None:  # type: ignore[no-untyped-def]
    plain = pipe(samples[0], color="bgr")
    pipe.exclude_edges = True
    try:
        edged = pipe(samples[0], color="bgr")
    finally:
        pipe.exclude_edges = False
    assert edged.counts()["RBC"] < plain.counts()["RBC"]
    assert edged.quality["coverage"] == plain.quality["coverage"]
    n = sum(plain.counts().values())
    pipe.max_det = n + 2  # room for every counted cell, not for the low-confidence ones of the pass
    try:
        capped = pipe(samples[0], color="bgr")
    finally:
        pipe.max_det = 1000
    assert not capped.cap_reached


def test_pil_16_bit_and_float_images_are_scaled_not_clipped(pipe, samples: list[np.ndarray]) -> None:  # type: ignore[no-untyped-def]
    from PIL import Image

    from hemocount.pipeline import as_bgr

    gray8 = samples[0].mean(axis=2).astype(np.uint8)
    im16 = Image.fromarray(gray8.astype(np.uint16) * 257)
    assert im16.mode == "I;16"
    out = as_bgr(im16, None)
    assert np.abs(out[..., 0].astype(int) - gray8).max() <= 1
    out_f = as_bgr(Image.fromarray(gray8.astype(np.float32)), None)
    assert out_f.mean() < 250  # not clipped white


def test_api_accepts_one_path_grayscale_arrays_and_any_case(pipe, samples: list[np.ndarray], tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert [r.name for r in pipe.stream(str(SAMPLES))] == [str(p) for p in sorted(SAMPLES.glob("*.jpg"))]
    assert len(list(pipe.stream(SAMPLES))) == 4
    gray = samples[0].mean(axis=2).astype(np.uint8)
    assert pipe(gray).counts() == pipe(np.repeat(gray[..., None], 3, axis=2), color="bgr").counts()
    assert pipe(samples[0], color="BGR").counts() == pipe(samples[0], color="bgr").counts()
