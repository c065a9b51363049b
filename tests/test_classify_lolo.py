"""Issue 14 data and leave-one-lab-out parts: stain boxes, PBC/LISC loaders, group split, holdout, metrics.

Images are generated here (synthetic violet "WBCs" among pink or lavender "RBCs"): no LISC or PBC
image is stored in the repository.
"""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from hemocount.classify import sources as S
from hemocount.classify.data import CellSample
from hemocount.classify.lolo import eligible_macro_f1, group_probs, holdout_cells, holdout_report
from hemocount.classify.stain_box import box_iou, central_cell_box
from hemocount.classify.train import PRIOR_FLOOR, sampling_weights, source_log_priors

CLASSES = ("neutrophil", "eosinophil", "lymphocyte", "monocyte", "basophil")
VIOLET, PINK, LAVENDER = (120, 40, 140), (215, 165, 170), (170, 170, 220)


def _smear(centre: tuple[int, int], r: int = 30, rbc: tuple[int, int, int] = PINK, size: int = 160) -> np.ndarray:
    """RGB image: light background, three RBC discs, one violet WBC disc of radius ``r`` at ``centre``."""
    img = np.full((size, size, 3), 240, np.uint8)
    for c in ((20, 20), (140, 30), (30, 140)):
        cv2.circle(img, c, 18, rbc, -1)
    cv2.circle(img, centre, r, VIOLET, -1)
    return img


@pytest.mark.parametrize("rbc", [PINK, LAVENDER])
def test_stain_box_finds_the_central_violet_cell(rbc: tuple[int, int, int]) -> None:
    box, found = central_cell_box(_smear((90, 75), rbc=rbc))
    assert found and box_iou(box, (60, 45, 121, 106)) > 0.85


def test_stain_box_falls_back_to_a_central_square() -> None:
    box, found = central_cell_box(np.full((100, 100, 3), 230, np.uint8))
    assert not found and box == (25.0, 25.0, 75.0, 75.0)


def test_stain_box_ignores_padding() -> None:
    img = _smear((80, 80))
    valid = np.ones(img.shape[:2], bool)
    valid[:, :40] = False
    box, found = central_cell_box(img, valid)
    assert found and box[0] >= 40


def _write_sets(root: Path) -> None:
    """A tiny pbc_wbc (2 per class and split) and lisc_wbc (4 groups of 2 crops per class)."""
    rows = []
    for i, label in enumerate(CLASSES):
        for j, split in enumerate(("train", "train", "val", "test")):
            f = f"images/{label}/X_{i}{j}.jpg"
            (root / "pbc_wbc" / f).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / "pbc_wbc" / f), _smear((80 + j, 80))[:, :, ::-1])
            rows.append([f, label, "X", split])
    _csv(root / "pbc_wbc" / "labels.csv", ["file", "class", "source_prefix", "split"], rows)
    rows = []
    for label in CLASSES:
        for n in range(10):
            f = f"images/{label}/{n}.png"
            (root / "lisc_wbc" / f).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / "lisc_wbc" / f), _smear((70 + n, 80), rbc=LAVENDER)[:, :, ::-1])
            rows.append([f, label, f"{label}_g{n // 2:02d}"])
    _csv(root / "lisc_wbc" / "labels.csv", ["file", "class", "group"], rows)


def _csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def test_loaders_split_and_round_trip(tmp_path: Path) -> None:
    _write_sets(tmp_path)
    pbc = S.pbc_wbc_cells(tmp_path)
    assert len(pbc) == 20 and {c.source for c in pbc} == {"pbc"}
    assert sum(c.split == "train" for c in pbc) == 10 and pbc[0].id.startswith("pbcwbc:")
    assert box_iou(pbc[0].box, (50, 50, 111, 111)) > 0.8
    lisc = S.lisc_cells(tmp_path)
    assert len(lisc) == 50 and {c.source for c in lisc} == {"lisc"} and all(c.group for c in lisc)
    path = tmp_path / "splits.csv"
    S.make_source_splits(str(tmp_path), seed=0, path=path)
    back = S.read_source_rows(str(tmp_path), path)
    assert len(back) == 70 and all(c.path.exists() for c in back)
    first = {c.id: (c.split, c.box) for c in back}
    S.make_source_splits(str(tmp_path), seed=0, path=path)  # deterministic
    assert {c.id: (c.split, c.box) for c in S.read_source_rows(str(tmp_path), path)} == first


def _lisc_like(groups_per_class: int = 10, crops: int = 3) -> list[CellSample]:
    return [CellSample(f"lisc:{lab}/{g}_{k}", "lisc", lab, Path("x.png"), (0, 0, 1, 1), group=f"{lab}_g{g}")
            for lab in CLASSES for g in range(groups_per_class) for k in range(crops)]


def test_group_split_keeps_groups_whole_and_is_stratified() -> None:
    cells = _lisc_like()
    S.split_by_group(cells, seed=0)
    sides: dict[str, set[str]] = {}
    for c in cells:
        sides.setdefault(c.group, set()).add(c.split)
    assert all(len(s) == 1 for s in sides.values())  # no group on two sides
    for lab in CLASSES:
        per = [next(iter(v)) for g, v in sides.items() if g.startswith(lab)]
        assert (per.count("train"), per.count("val"), per.count("test")) == (6, 2, 2)
    again = _lisc_like()
    S.split_by_group(again, seed=0)
    assert [c.split for c in again] == [c.split for c in cells]


def test_holdout_filtering(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = [CellSample(f"{s}:{i}", s, CLASSES[i % 5], Path("x"), (0, 0, 1, 1), ("train", "val", "test")[i % 3])
            for s in S.SUBTYPE_SOURCES for i in range(9)]
    monkeypatch.setattr(S, "load_cells", lambda task, root=None, sources=None: [c for c in fake if c.source in sources])
    for lab in S.SUBTYPE_SOURCES:
        cells = S.classifier_training_cells("wbc_subtype", "/x", holdout=lab)
        assert cells and lab not in {c.source for c in cells} and len({c.source for c in cells}) == 3
    assert {c.split for c in holdout_cells(fake, "lisc", "dev")} == {"train", "val"}
    assert {c.source for c in holdout_cells(fake, "lisc", "test")} == {"lisc"}
    with pytest.raises(Exception, match="unknown holdout"):
        S.training_sources("nowhere")


def test_sampling_weights_balance_labels_and_sources() -> None:
    cells = ([CellSample(f"a{i}", "pbc", "healthy", Path("x"), (0, 0, 1, 1)) for i in range(90)]
             + [CellSample(f"b{i}", "lisc", "healthy", Path("x"), (0, 0, 1, 1)) for i in range(10)]
             + [CellSample(f"c{i}", "allidb2", "ALL", Path("x"), (0, 0, 1, 1)) for i in range(5)])
    w = sampling_weights(cells, "class_source")
    assert w.sum() == pytest.approx(1) and w[-5:].sum() == pytest.approx(0.5)
    assert w[:90].sum() == pytest.approx(0.25) and w[90:100].sum() == pytest.approx(0.25)
    w = sampling_weights(cells, "class")
    assert w[:100].sum() == pytest.approx(0.5) and w[0] == pytest.approx(w[95])
    w = sampling_weights(cells, "class_source_sqrt")  # healthy: pbc sqrt(90) ~ 9.49 vs lisc sqrt(10) ~ 3.16
    assert w[:90].sum() == pytest.approx(0.5 * 0.75) and w[90:100].sum() == pytest.approx(0.5 * 0.25)
    assert w[-5:].sum() == pytest.approx(0.5) and w[0] == pytest.approx(0.5 * 0.75 / 90)
    with pytest.raises(Exception, match="unknown balance"):
        sampling_weights(cells, "lab")


def test_sampling_weights_boost_one_source_within_its_labels() -> None:
    cells = ([CellSample(f"a{i}", "pbc", "healthy", Path("x"), (0, 0, 1, 1)) for i in range(90)]
             + [CellSample(f"b{i}", "allidb2", "healthy", Path("x"), (0, 0, 1, 1)) for i in range(10)]
             + [CellSample(f"c{i}", "allidb2", "ALL", Path("x"), (0, 0, 1, 1)) for i in range(5)])
    w = sampling_weights(cells, "class_source", "allidb2", 3.0)  # healthy: allidb2 3 parts, pbc 1
    assert w[90:100].sum() == pytest.approx(0.5 * 0.75) and w[:90].sum() == pytest.approx(0.5 * 0.25)
    assert w[-5:].sum() == pytest.approx(0.5)  # the labels stay balanced
    with pytest.raises(Exception, match="per-source balance"):
        sampling_weights(cells, "class", "allidb2", 3.0)
    with pytest.raises(Exception, match="no training cell"):
        sampling_weights(cells, "class_source", "tecom", 3.0)


def test_source_log_priors_are_each_labs_label_mix_in_the_draws() -> None:
    def cell(i: int, source: str, label: str) -> CellSample:
        return CellSample(f"{source}{i}", source, label, Path("x"), (0, 0, 1, 1))

    # bccd: 3 neutrophils, 1 eosinophil, no basophil; pbc: 2 of each of the three labels
    cells = ([cell(i, "bccd", "neutrophil") for i in range(3)] + [cell(3, "bccd", "eosinophil")]
             + [cell(i, "pbc", lab) for i, lab in enumerate(["neutrophil", "eosinophil", "basophil"] * 2)])
    w = np.full(len(cells), 1 / len(cells))
    lp = source_log_priors(cells, w, CLASSES)
    assert lp.shape == (10, 5) and lp.dtype == np.float32
    p = np.exp(lp)
    assert np.allclose(p.sum(axis=1), 1, atol=1e-6)
    assert p[0, 0] == pytest.approx(0.75, abs=0.01) and p[0, 1] == pytest.approx(0.25, abs=0.01)
    assert p[0, 4] == pytest.approx(PRIOR_FLOOR, rel=0.05)  # a label the lab never shows: floored, finite
    assert np.allclose(p[4], p[9]) and p[4, 0] == pytest.approx(1 / 3, abs=0.01)  # one row per source
    w2 = w.copy()
    w2[:3] /= 3  # draws, not counts: bccd's neutrophils drawn a third as often -> half of bccd's draws
    assert np.exp(source_log_priors(cells, w2 / w2.sum(), CLASSES))[0, 0] == pytest.approx(0.5, abs=0.01)


def test_group_probs_and_eligible_macro_f1() -> None:
    cells = _lisc_like(groups_per_class=2, crops=2)
    probs = np.eye(5)[[CLASSES.index(c.label) for c in cells]]
    probs[0] = np.eye(5)[1]  # one crop of one neutrophil wrong: per crop an error, per cell a tie -> first max
    reps, cp = group_probs(cells, probs)
    assert len(reps) == 10 and cp.shape == (10, 5) and cp[0, 0] == pytest.approx(0.5)
    rep = holdout_report(cells, probs, CLASSES)
    assert rep["distinct_cells"] == {c: 2 for c in CLASSES}
    assert rep["per_crop"]["n"] == 20 and rep["per_cell"]["n"] == 10
    assert rep["per_crop"]["macro_f1_eligible"] is None  # no class has >= 10 distinct cells
    e = eligible_macro_f1({"per_class": {"a": {"f1": 0.5}, "b": {"f1": 1.0}}}, {"a": 12, "b": 3})
    assert e["macro_f1_eligible"] == 0.5 and e["eligible_classes"] == ["a"]


def test_hed_jitter_is_identity_at_zero_and_seeded() -> None:
    import torch

    from hemocount.classify.stain_aug import hed_jitter

    x = torch.rand(3, 8, 8) * 0.9 + 0.05
    assert torch.allclose(hed_jitter(x, 0.0, torch.Generator().manual_seed(0)), x, atol=1e-5)
    a = hed_jitter(x, 0.05, torch.Generator().manual_seed(1))
    assert torch.equal(a, hed_jitter(x, 0.05, torch.Generator().manual_seed(1))) and not torch.allclose(a, x)


def test_eval_refuses_a_run_that_did_not_hold_the_lab_out(tmp_path: Path) -> None:
    from hemocount.classify.lolo import evaluate_holdout
    from hemocount.classify.model import build_resnet
    from hemocount.classify.train import ClassifyRecipe, save_classifier
    from hemocount.errors import HemocountError

    recipe = ClassifyRecipe(arch="resnet18", size=32, holdout="bccd")
    save_classifier(build_resnet(5, arch="resnet18"), tmp_path / "m.pt", recipe, CLASSES, {"epoch": 1})
    with pytest.raises(HemocountError, match="held out bccd, not lisc"):
        evaluate_holdout(weights=str(tmp_path / "m.pt"), holdout="lisc", split="val", data_root=str(tmp_path))


def test_all_task_holdout_drops_that_labs_negatives(monkeypatch: pytest.MonkeyPatch) -> None:
    blasts = [CellSample("allidb2:1", "allidb2", "ALL", Path("x"), (0, 0, 1, 1), "train")]
    labs = [CellSample(f"{s}:1", s, "neutrophil", Path("x"), (0, 0, 1, 1), "train") for s in S.SUBTYPE_SOURCES]
    monkeypatch.setattr(S, "load_cells", lambda task, root=None, sources=None: blasts)
    monkeypatch.setattr(S, "load_subtype_sources", lambda srcs, root=None: [c for c in labs if c.source in srcs])
    cells = S.classifier_training_cells("all", "/x", holdout="lisc", negatives="all-labs")
    assert {c.source for c in cells} == {"allidb2", "bccd", "tecom", "pbc"}
    assert {c.label for c in cells if c.source != "allidb2"} == {"healthy"}
    with pytest.raises(Exception, match="needs --negatives all-labs"):
        S.classifier_training_cells("all", "/x", holdout="lisc")
