"""RBC-scaled WBC crops (issue 14, lever "crop scale"): the crop keeps a cell's size relative to the red
cells, the lab table refuses an unmeasured lab, and counting refuses such a model until it is wired in.
Plus the grey-crop augmentation. Synthetic images only."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from hemocount.classify import lab_scale
from hemocount.classify.crops import crop_cell, rbc_side, square_box
from hemocount.classify.data import CellSample
from hemocount.errors import DatasetError


def _disc(r: int, size: int = 400) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    img = np.full((size, size, 3), 240, np.uint8)
    cv2.circle(img, (size // 2, size // 2), r, (140, 40, 120), -1)
    c = size / 2
    return img, (c - r, c - r, c + r, c + r)


def _dark_width(crop: np.ndarray) -> int:
    row = crop[crop.shape[0] // 2].astype(int).sum(axis=1)
    return int((row < 500).sum())


def test_box_crops_hide_size_rbc_crops_keep_it() -> None:
    small, big = _disc(24), _disc(40)  # a "lymphocyte" and a "monocyte" at one magnification
    box_w = [_dark_width(crop_cell(img, box, 64)) for img, box in (small, big)]
    assert abs(box_w[0] - box_w[1]) <= 2  # the box-scaled crop shows both at one size
    side = rbc_side(40.0, 3.0)  # red cells 40 px across, crops 3 diameters wide
    rbc_w = [_dark_width(crop_cell(img, box, 64, side=side)) for img, box in (small, big)]
    assert rbc_w[1] / rbc_w[0] == pytest.approx(40 / 24, rel=0.1)


def test_rbc_side_ignores_the_box_and_pad() -> None:
    sq = square_box((100, 100, 120, 140), pad=0.5, side=90.0)
    assert sq[2] - sq[0] == 90 and sq[3] - sq[1] == 90
    assert (sq[0] + sq[2]) / 2 == 110 and (sq[1] + sq[3]) / 2 == 120


def test_lab_scale_refuses_an_unmeasured_lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "lab_scale.json"
    f.write_text(json.dumps({"labs": {"bccd": {"rbc_px": 100.0}}}))
    monkeypatch.setattr(lab_scale, "SCALE_FILE", f)
    lab_scale.lab_rbc_px.cache_clear()
    try:
        assert lab_scale.rbc_px_of("bccd") == 100.0
        with pytest.raises(DatasetError, match="no red-cell scale for source 'mylab'"):
            lab_scale.rbc_px_of("mylab")
    finally:
        lab_scale.lab_rbc_px.cache_clear()


def test_load_crops_scales_by_the_labs_red_cells(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hemocount.classify.train import load_crops

    f = tmp_path / "lab_scale.json"
    f.write_text(json.dumps({"labs": {"a": {"rbc_px": 40.0}, "b": {"rbc_px": 80.0}}}))
    monkeypatch.setattr(lab_scale, "SCALE_FILE", f)
    lab_scale.lab_rbc_px.cache_clear()
    try:
        img, box = _disc(30)
        cv2.imwrite(str(tmp_path / "x.png"), img)
        cells = [CellSample("a:x", "a", "lymphocyte", tmp_path / "x.png", box),
                 CellSample("b:x", "b", "lymphocyte", tmp_path / "x.png", box)]
        crops = load_crops(cells, 64, 0.15, rbc_k=3.0)
        # same cell, lab b's red cells twice as large: the cell is half as wide in lab b's crop
        assert _dark_width(crops[0]) / _dark_width(crops[1]) == pytest.approx(2.0, rel=0.1)
    finally:
        lab_scale.lab_rbc_px.cache_clear()


def test_grey_augmentation_makes_channels_equal_and_is_seeded() -> None:
    torch = pytest.importorskip("torch")
    from hemocount.classify.train import ClassifyRecipe, augment

    x = torch.rand(6, 3, 32, 32)
    grey = augment(x, ClassifyRecipe(grayscale=1.0), torch.Generator().manual_seed(0))
    assert torch.allclose(grey[:, 0], grey[:, 1]) and torch.allclose(grey[:, 1], grey[:, 2])
    colour = augment(x, ClassifyRecipe(grayscale=0.0), torch.Generator().manual_seed(0))
    assert not torch.allclose(colour[:, 0], colour[:, 1])
    again = augment(x, ClassifyRecipe(grayscale=0.5), torch.Generator().manual_seed(3))
    assert torch.equal(again, augment(x, ClassifyRecipe(grayscale=0.5), torch.Generator().manual_seed(3)))


def test_count_crops_rbc_scaled_classifiers_by_the_fields_red_cells() -> None:
    import supervision as sv

    from hemocount.classify.pipeline import classify_wbcs

    class Fake:
        size, pad, classes = 64, 0.15, ("neutrophil", "eosinophil", "lymphocyte", "monocyte", "basophil")

        def __init__(self, rbc_k: float) -> None:
            self.rbc_k, self.seen = rbc_k, []

        def predict_crops(self, crops: np.ndarray) -> np.ndarray:
            self.seen.append(crops)
            return np.tile([0.1, 0.1, 0.6, 0.1, 0.1], (len(crops), 1))

    img, box = _disc(24)
    dets = [sv.Detections(xyxy=np.array([box], np.float32), confidence=np.array([0.9]), class_id=np.array([1]),
                          data={"class_name": np.array(["WBC"])}) for _ in range(2)]
    clf = Fake(3.0)
    classify_wbcs([img, img], dets, clf, None, 0.5, rbc_px=[40.0, None])
    scaled, unscaled = clf.seen[0][0], clf.seen[0][1]
    # the field with red cells measured: the 48 px cell fills 48 / 120 of the crop; without: the box crop
    assert _dark_width(scaled) == pytest.approx(64 * 48 / 120, abs=2)
    assert _dark_width(unscaled) == pytest.approx(64 / 1.3, abs=2)


def test_an_unscaled_field_is_flagged_for_rbc_scaled_classifiers_only() -> None:
    from hemocount.qc import crop_scale_flags, untrusted
    from hemocount.scale import ScaleInfo

    unknown = ScaleInfo("unknown", None, 1)
    flags = crop_scale_flags({"subtype": 3.0, "ALL": 0.0}, unknown, n_wbc=2)
    assert [f.code for f in flags] == ["wbc_crops_unscaled"] and "2 WBCs" in flags[0].message
    assert "subtype classifier was trained: subtypes less" in flags[0].message
    assert untrusted(flags) == flags
    both = crop_scale_flags({"subtype": 3.0, "ALL": 3.0}, unknown, n_wbc=1)[0].message
    assert "subtype and ALL classifiers were trained: subtypes and ALL probabilities less reliable" in both
    assert crop_scale_flags({"subtype": 0.0, "ALL": 0.0}, unknown, 2) == []  # box-scaled: nothing to say
    assert crop_scale_flags({"subtype": 3.0}, ScaleInfo("as_is", 40.0, 12), 2) == []
    assert crop_scale_flags({"subtype": 3.0}, unknown, 0) == []


def test_exported_rbc_crops_round_trip_through_adaptation(tmp_path: Path) -> None:
    """count --export-crops cuts an RBC-scaled classifier's crops as it sees them; adapt reads them back at the
    same scale and leaves out the crops of fields without a red-cell size."""
    from hemocount.classify.adapt import UNSCALED_MARK, folder_cells, write_crop
    from hemocount.classify.train import load_crops

    img, box = _disc(24)
    side = rbc_side(40.0, 3.0)
    write_crop(img, np.array(box), tmp_path, "lymphocyte", "f__cell0", side=side)
    write_crop(img, np.array(box), tmp_path, "lymphocyte", f"f__cell1{UNSCALED_MARK}")
    cells = folder_cells(tmp_path, rbc_k=3.0)
    assert [c.path.name for c in cells] == ["f__cell0.png"] and cells[0].rbc_px == pytest.approx(40.0)
    seen_by_count = crop_cell(img, box, 64, side=side)
    seen_in_adaptation = load_crops(cells, 64, 0.15, rbc_k=3.0)[0][:, :, ::-1]
    assert np.abs(seen_by_count.astype(int) - seen_in_adaptation.astype(int)).mean() < 3
    assert len(folder_cells(tmp_path)) == 2  # a box-scaled classifier takes both
