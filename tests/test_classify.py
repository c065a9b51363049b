"""Classifier parts: crop geometry, metrics vs hand-computed matrices, a toy training step, integration."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import supervision as sv

from hemocount.classify.crops import crop_cell, crop_cells, square_box
from hemocount.classify.metrics import binary_metrics, classification_report, confusion, roc_auc
from hemocount.errors import HemocountError


def test_square_box_pads_and_centres() -> None:
    assert square_box([10, 20, 30, 60], pad=0.0) == (0, 20, 40, 60)
    x1, y1, x2, y2 = square_box([0, 0, 100, 50], pad=0.1)
    assert (x2 - x1, y2 - y1) == (120, 120) and (x1 + x2) / 2 == 50 and (y1 + y2) / 2 == 25


def test_crop_inside_border_and_tiny() -> None:
    img = np.zeros((100, 200, 3), np.uint8)
    img[40:60, 90:110] = 255  # a white cell in the middle
    c = crop_cell(img, [90, 40, 110, 60], size=32, pad=0.0)
    assert c.shape == (32, 32, 3) and c.mean() > 250  # the box fills the crop exactly
    edge = crop_cell(img, [-10, -10, 30, 30], size=16)
    assert edge.shape == (16, 16, 3)
    tiny = crop_cell(img, [5, 5, 5.5, 5.5], size=8)
    assert tiny.shape == (8, 8, 3)
    with pytest.raises(ValueError, match="outside"):
        crop_cell(img, [500, 500, 600, 600], size=8)
    assert crop_cells(img, np.zeros((0, 4)), 8).shape == (0, 8, 8, 3)


def test_crop_on_border_reflects_instead_of_stretching() -> None:
    img = np.zeros((50, 50, 3), np.uint8)
    img[:, :5] = 200  # a bright band along the left border
    c = crop_cell(img, [-5, 20, 5, 30], size=10, pad=0.0)
    # The square spans x = -5..5: the 5 columns outside are the band reflected, the 5 inside are the band.
    assert c.shape == (10, 10, 3) and c.mean() == pytest.approx(200)
    inner = crop_cell(img, [0, 20, 10, 30], size=10, pad=0.0)
    assert inner[:, :5].mean() == pytest.approx(200) and inner[:, 5:].mean() == 0  # no stretching


def test_binary_metrics_hand_computed() -> None:
    # rows true (healthy, ALL), cols predicted: TN=40, FP=10, FN=5, TP=45
    cm = np.array([[40, 10], [5, 45]])
    m = binary_metrics(cm)
    assert m == {"accuracy": 0.85, "sensitivity": 0.9, "specificity": 0.8, "ppv": round(45 / 55, 4),
                 "npv": round(40 / 45, 4), "f1": round(90 / 105, 4)}


def test_confusion_and_report() -> None:
    y = np.array([0, 0, 1, 1, 2, 2])
    probs = np.eye(3)[[0, 1, 1, 1, 2, 0]]
    assert confusion(y, probs.argmax(1), 3).tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    rep = classification_report(y, probs, ["a", "b", "c"])
    assert rep["accuracy"] == round(4 / 6, 4)
    assert rep["per_class"]["b"] == rep["per_class"]["b"] | {"precision": round(2 / 3, 4), "recall": 1.0, "support": 2}
    # F1 per class: a (P=.5, R=.5) 0.5; b (P=2/3, R=1) 0.8; c (P=1, R=.5) 2/3
    assert rep["macro_f1"] == round(float(np.mean([0.5, 0.8, 2 / 3])), 4)


def test_roc_auc() -> None:
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    assert roc_auc([0.5, 0.5], [0, 1]) == 0.5
    assert roc_auc([0.1, 0.2], [1, 1]) is None


@pytest.fixture(scope="module")
def toy_cells(tmp_path_factory: pytest.TempPathFactory) -> list:
    import cv2

    from hemocount.classify.data import CellSample

    folder = tmp_path_factory.mktemp("cells")
    rng = np.random.default_rng(0)
    cells = []
    for i in range(12):
        label = "ALL" if i % 2 else "healthy"
        img = np.full((40, 40, 3), 200, np.uint8)
        cv2.circle(img, (20, 20), 12 if label == "ALL" else 6, (150, 40, 120), -1)
        img = np.clip(img + rng.integers(0, 20, img.shape), 0, 255).astype(np.uint8)
        p = folder / f"c{i}.png"
        cv2.imwrite(str(p), img)
        cells.append(CellSample(f"toy:{i}", "toy", label, p, (4, 4, 36, 36), "train" if i < 8 else "val"))
    return cells


def test_toy_training_step_and_resume(toy_cells: list, tmp_path: Path) -> None:
    import torch

    from hemocount.classify.train import ClassifyRecipe, train_classifier

    recipe = ClassifyRecipe(task="all", arch="resnet18", size=32, epochs=1, batch=4)
    best = train_classifier(cells=toy_cells, out=tmp_path / "run", recipe=recipe, progress=False)
    ck = torch.load(best, map_location="cpu", weights_only=True)
    assert ck["meta"]["classes"] == ["healthy", "ALL"] and ck["meta"]["size"] == 32
    assert all(v.dtype == torch.float16 for v in ck["model"].values() if v.is_floating_point())
    recipe.epochs = 2
    train_classifier(cells=toy_cells, out=tmp_path / "run", recipe=recipe, resume=True, progress=False)
    last = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=False)
    assert last["epoch"] == 1 and [h["epoch"] for h in last["history"]] == [1, 2]


def test_source_prior_trains_the_subtype_task_and_is_refused_for_all(toy_cells: list, tmp_path: Path) -> None:
    from dataclasses import replace

    from hemocount.classify.train import ClassifyRecipe, train_classifier

    recipe = ClassifyRecipe(task="all", arch="resnet18", size=32, epochs=1, batch=4, source_prior=1.0)
    with pytest.raises(HemocountError, match="subtype task"):
        train_classifier(cells=toy_cells, out=tmp_path / "all", recipe=recipe, progress=False)
    names = ("neutrophil", "eosinophil", "lymphocyte", "monocyte", "basophil")
    # the two labs' label mixes in the 8 training cells differ ("a" has no monocyte, "b" no basophil)
    cells = [replace(c, label=names[i % 5], source="ab"[i % 2]) for i, c in enumerate(toy_cells)]
    recipe = replace(recipe, task="wbc_subtype", source_prior=5.0)
    train_classifier(cells=cells, out=tmp_path / "sub", recipe=recipe, progress=False)
    rec = json.loads((tmp_path / "sub" / "recipe.json").read_text())
    assert rec["recipe"]["source_prior"] == 5.0
    train_classifier(cells=cells, out=tmp_path / "plain", recipe=replace(recipe, source_prior=0.0), progress=False)
    losses = [json.loads((tmp_path / d / "history.json").read_text())[0]["loss"] for d in ("sub", "plain")]
    assert losses[0] != losses[1]  # same seed and draws: only the adjusted loss differs
    # every lab shows every label once: the adjustment would be a constant per row, refused
    even = [replace(c, label=names[i // 2 % 5], source="ab"[i % 2], split="train" if i < 10 else "val")
            for i, c in enumerate(toy_cells)]
    with pytest.raises(HemocountError, match="change nothing"):
        train_classifier(cells=even, out=tmp_path / "even", recipe=recipe, progress=False)
    assert not (tmp_path / "even").exists()  # refused before any crop is loaded or folder made
    with pytest.raises(HemocountError, match="swa-start"):
        train_classifier(cells=cells, out=tmp_path / "swa", recipe=replace(recipe, swa_start=1.5), progress=False)


def test_weight_averaging_is_what_is_saved_and_resumes(toy_cells: list, tmp_path: Path) -> None:
    import torch

    from hemocount.classify.train import ClassifyRecipe, train_classifier

    # 8 training cells in batches of 3: 3 steps an epoch; from step 1 of 3 on, steps 2 and 3 are averaged
    recipe = ClassifyRecipe(task="all", arch="resnet18", size=32, epochs=1, batch=3, swa_start=0.2)
    train_classifier(cells=toy_cells, out=tmp_path / "run", recipe=recipe, progress=False)
    last = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=False)
    assert int(last["average"]["n_averaged"]) == 2
    avg = {k.removeprefix("module."): v for k, v in last["average"].items() if k.startswith("module.")}
    assert not torch.equal(avg["fc.weight"], last["model"]["fc.weight"])
    saved = torch.load(tmp_path / "run" / "best.pt", weights_only=True)["model"]["fc.weight"]
    assert torch.equal(saved, avg["fc.weight"].half())  # best.pt holds the average (fp16), not the network
    assert not torch.equal(saved, last["model"]["fc.weight"].half())
    hist = json.loads((tmp_path / "run" / "history.json").read_text())
    assert hist[0]["averaged"] is True
    recipe.epochs = 2
    train_classifier(cells=toy_cells, out=tmp_path / "run", recipe=recipe, resume=True, progress=False)
    last = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=False)
    assert int(last["average"]["n_averaged"]) == 5  # the average carried over the resume


def test_classify_wbcs_batches_and_marks_uncertain() -> None:
    from hemocount.classify.pipeline import AllFlagRule, classify_wbcs

    class Fake:
        size, pad = 16, 0.1

        def __init__(self, classes: tuple[str, ...], probs: np.ndarray) -> None:
            self.classes, self.probs, self.calls = classes, probs, []

        def predict_crops(self, crops: np.ndarray) -> np.ndarray:
            self.calls.append(len(crops))
            return self.probs[: len(crops)]

    img = np.zeros((64, 64, 3), np.uint8)
    d1 = sv.Detections(xyxy=np.array([[0, 0, 20, 20], [10, 10, 40, 40]], np.float32), confidence=np.array([0.9, 0.8]),
                       class_id=np.array([1, 0]), data={"class_name": np.array(["WBC", "RBC"])})
    d2 = sv.Detections(xyxy=np.array([[5, 5, 30, 30]], np.float32), confidence=np.array([0.7]), class_id=np.array([1]),
                       data={"class_name": np.array(["WBC"])})
    sub = Fake(("neutrophil", "eosinophil", "lymphocyte", "monocyte", "basophil"),
               np.array([[0.9, 0.05, 0.05, 0, 0], [0.3, 0.3, 0.4, 0, 0]]))
    allm = Fake(("healthy", "ALL"), np.array([[0.2, 0.8], [0.05, 0.95]]))
    classify_wbcs([img, img], [d1, d2], sub, allm, min_subtype_prob=0.5)
    assert sub.calls == [2] and allm.calls == [2]  # one batched call across images
    assert list(d1.data["subtype"]) == ["neutrophil", ""] and list(d2.data["subtype"]) == ["uncertain"]
    assert np.isnan(d1.data["all_prob"][1]) and d2.data["all_prob"][0] == pytest.approx(0.95)
    flag = AllFlagRule(prob=0.9, min_cells=1).evaluate(np.array([0.8, 0.95]))
    assert flag.flagged and flag.n_above == 1 and flag.n_wbc == 2


def test_rbc_scaled_training_is_recorded_and_loaded(toy_cells: list, tmp_path: Path) -> None:
    """A run with --rbc-k keeps it in the checkpoint; the loaded classifier crops by red cells and refuses
    to crop without them."""
    from dataclasses import replace

    from hemocount.classify.infer import Classifier
    from hemocount.classify.train import ClassifyRecipe, train_classifier

    cells = [replace(c, rbc_px=12.0) for c in toy_cells]  # per-image red-cell size: no lab table needed
    recipe = ClassifyRecipe(task="all", arch="resnet18", size=32, epochs=1, batch=4, rbc_k=3.0, grayscale=0.5,
                            mixstyle=0.5)
    best = train_classifier(cells=cells, out=tmp_path / "run", recipe=recipe, progress=False)
    assert json.loads((tmp_path / "run" / "recipe.json").read_text())["recipe"]["mixstyle"] == 0.5
    clf = Classifier.from_weights(str(best), task="all", engine="torch")
    assert clf.rbc_k == 3.0
    img = np.full((40, 40, 3), 200, np.uint8)
    assert clf.predict(img, np.array([[14, 14, 26, 26]]), rbc_px=12.0).shape == (1, 2)
    with pytest.raises(HemocountError, match="rbc_px"):
        clf.predict(img, np.array([[14, 14, 26, 26]]))


def test_blur_augmentation_softens_crops_and_keeps_other_draws() -> None:
    """--blur lowers a crop's high-frequency energy; with it off the augmentation draws are unchanged."""
    import torch

    from hemocount.classify.train import ClassifyRecipe, augment

    x = (torch.rand(16, 3, 32, 32) > 0.5).float()  # a sharp checker-like noise pattern
    plain = ClassifyRecipe(hue=0, saturation=0, brightness=0, contrast=0, scale_min=1.0)
    blurred = ClassifyRecipe(hue=0, saturation=0, brightness=0, contrast=0, scale_min=1.0, blur=1.0)

    def energy(t: torch.Tensor) -> torch.Tensor:
        # both directions: the draws after a blur's differ, so a crop's flip/rotation may too
        return ((t[..., 1:, :] - t[..., :-1, :]).abs().mean(dim=(1, 2, 3))
                + (t[..., :, 1:] - t[..., :, :-1]).abs().mean(dim=(1, 2, 3)))

    a = augment(x, plain, torch.Generator().manual_seed(0))
    b = augment(x, blurred, torch.Generator().manual_seed(0))
    e_a, e_b = energy(a), energy(b)
    assert bool((e_b <= e_a + 1e-6).all()) and int((e_b < 0.8 * e_a).sum()) >= 4  # about half are blurred
    assert torch.equal(augment(x, plain, torch.Generator().manual_seed(0)), a)
