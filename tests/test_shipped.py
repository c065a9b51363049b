"""The shipped weights, end to end on the shipped sample slides."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from hemocount.cli import main

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
#: Complete (TXL-PBC) labels of the four sample fields, all from the BCCD test split (never trained on).
TRUTH = {
    "BloodImage_00167.jpg": {"RBC": 16, "WBC": 1, "Platelets": 2},
    "BloodImage_00205.jpg": {"RBC": 20, "WBC": 1, "Platelets": 0},
    "BloodImage_00290.jpg": {"RBC": 22, "WBC": 1, "Platelets": 0},
    "BloodImage_00360.jpg": {"RBC": 17, "WBC": 1, "Platelets": 1},
}


@pytest.fixture(scope="module")
def shipped_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shipped") / "out"
    assert main(["-q", "count", str(SAMPLES), "-o", str(out)]) == 0
    return out


def test_counts_close_to_truth_on_samples(shipped_run: Path) -> None:
    with (shipped_run / "counts.csv").open(newline="") as fh:
        rows = {Path(r["image"]).name: r for r in csv.DictReader(fh)}
    assert set(rows) == set(TRUTH)
    rbc_true = sum(t["RBC"] for t in TRUTH.values())
    rbc_pred = sum(int(rows[k]["RBC"]) for k in TRUTH)
    assert abs(rbc_pred - rbc_true) / rbc_true < 0.2, (rbc_pred, rbc_true)
    for name, truth in TRUTH.items():
        assert int(rows[name]["WBC"]) == truth["WBC"], name
        # Platelets: never invented (at most one more than labelled), and at most two missed: v2's stricter
        # pooled-val threshold (0.59) misses both of BloodImage_00167's; its measured platelet recall on
        # BCCD test is 0.71 at precision 1.00 (README, shipped detector), which this 4-field check cannot judge.
        assert -2 <= int(rows[name]["Platelets"]) - truth["Platelets"] <= 1, name


def test_run_record_names_verified_weights(shipped_run: Path) -> None:
    from hemocount.weights import resolve

    run = json.loads((shipped_run / "run.json").read_text())
    entry = resolve("yolo11n-cells", task="detect")
    assert run["detector"]["weights_id"] == "yolo11n-cells" and run["detector"]["sha256"] == entry.sha256
    assert run["thresholds"]["conf"] == entry.class_conf()
    assert run["classifiers"]["enabled"]
    assert "research use only" in run["classifiers"]["all"]["notice"].lower()


def test_shipped_classifiers_on_fixture_crops() -> None:
    """Both classifiers load (sha256-checked) and give valid probabilities for WBC crops of the samples."""
    from hemocount.classify.infer import Classifier
    from hemocount.datasets.formats import read_voc
    from hemocount.io import read_image

    fixtures = Path(__file__).resolve().parent / "fixtures" / "data" / "bccd" / "BCCD"
    img = read_image(fixtures / "JPEGImages" / "BloodImage_00167.jpg")
    _, _, boxes, names = read_voc(fixtures / "Annotations" / "BloodImage_00167.xml")
    wbc = np.array([b for b, n in zip(boxes, names) if n == "WBC"])
    for task in ("wbc_subtype", "all"):
        clf = Classifier.from_weights(None, task=task)
        p = clf.predict(img, wbc, rbc_px=108.9)  # BCCD's red cells (classify/splits/lab_scale.json)
        assert p.shape == (len(wbc), len(clf.classes))
        np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-4)


def test_shipped_frcnn_counts_samples(tmp_path: Path) -> None:
    """The shipped Faster R-CNN (sha256-checked, loaded without --weights) counts the sample fields."""
    out = tmp_path / "frcnn"
    assert main(["-q", "count", str(SAMPLES), "-o", str(out), "--detector", "frcnn", "--no-classify"]) == 0
    with (out / "counts.csv").open(newline="") as fh:
        rows = {Path(r["image"]).name: r for r in csv.DictReader(fh)}
    rbc_true = sum(t["RBC"] for t in TRUTH.values())
    rbc_pred = sum(int(rows[k]["RBC"]) for k in TRUTH)
    assert abs(rbc_pred - rbc_true) / rbc_true < 0.2, (rbc_pred, rbc_true)
    for name, truth in TRUTH.items():
        assert int(rows[name]["WBC"]) == truth["WBC"], name
    run = json.loads((out / "run.json").read_text())
    assert run["detector"]["weights_id"] == "frcnn-r50-cells"
