"""`count --export-crops` and `adapt classify`: crops sorted by subtype, relabelled by moving, fine-tuned on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hemocount.classify.adapt import crop_box, folder_cells, write_crop
from hemocount.classify.crops import crop_cell
from hemocount.cli import main
from hemocount.errors import HemocountError

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def test_exported_crop_gives_back_the_inference_crop(tmp_path: Path, field: np.ndarray) -> None:
    """Training on an exported crop sees what inference saw on the field (the same square and context)."""
    from hemocount.io import read_image

    box = np.array([98.0, 38.0, 142.0, 82.0])  # the violet blob
    path = write_crop(field, box, tmp_path, "monocyte", "f__cell0")
    (cell,) = folder_cells(tmp_path)
    assert cell.label == "monocyte" and cell.path == path
    again = crop_cell(read_image(path), cell.box, 64)
    seen = crop_cell(field, box, 64)
    assert np.abs(again.astype(int) - seen).mean() < 3  # only resampling differs


def test_folder_cells_needs_subtype_folders(tmp_path: Path) -> None:
    (tmp_path / "uncertain").mkdir()
    (tmp_path / "uncertain" / "a.png").write_bytes(b"")
    with pytest.raises(HemocountError, match="no labelled crops"):
        folder_cells(tmp_path)
    assert crop_box(130, 130) == pytest.approx((15.0, 15.0, 115.0, 115.0))


def test_export_crops_then_adapt_then_count_with_it(tmp_path: Path, toy_weights: Path,
                                                    toy_classifiers: dict[str, Path]) -> None:
    out = tmp_path / "out"
    common = ["-q", "count", str(SAMPLES), "--weights", str(toy_weights), "--conf", "0.001", "--scale", "none",
              "--max-det", "30", "--all-weights", str(toy_classifiers["all"]), "--no-report", "--no-annotate"]
    assert main([*common, "-o", str(out), "--subtype-weights", str(toy_classifiers["wbc_subtype"]),
                 "--export-crops"]) == 0
    crops = sorted((out / "crops").rglob("*.png"))
    import csv

    with (out / "cells.csv").open() as fh:
        wbcs = [r for r in csv.DictReader(fh) if r["class"] == "WBC"]
    assert len(crops) == len(wbcs) > 0
    assert {p.parent.name for p in crops} <= {"neutrophil", "eosinophil", "lymphocyte", "monocyte", "basophil",
                                              "uncertain"}
    # the user relabels by moving files: the first becomes a monocyte, the rest lymphocytes
    for label in ("monocyte", "lymphocyte"):
        (out / "crops" / label).mkdir(exist_ok=True)
    for i, p in enumerate(crops):
        p.rename(out / "crops" / ("monocyte" if i == 0 else "lymphocyte") / p.name)
    run = tmp_path / "adapt"
    assert main(["-q", "adapt", "classify", "--data", str(out / "crops"), "--out", str(run), "--weights",
                 str(toy_classifiers["wbc_subtype"]), "--epochs", "1", "--samples-per-epoch", "8"]) == 0
    assert (run / "best.pt").is_file()
    assert main([*common, "-o", str(tmp_path / "again"), "--subtype-weights", str(run / "best.pt")]) == 0
    assert main([*common, "-o", str(tmp_path / "bad"), "--no-classify", "--export-crops"]) == 2
    # the relabelled crops are the user's work: a new run never writes into (or clears) them
    assert main([*common, "-o", str(out), "--exist-ok", "--export-crops", "--subtype-weights",
                 str(toy_classifiers["wbc_subtype"])]) == 2
    assert len(list((out / "crops").rglob("*.png"))) == len(crops)



def test_adapt_refuses_misnamed_folders_and_reused_out(tmp_path: Path, field: np.ndarray) -> None:
    from hemocount.classify.adapt import adapt_subtype

    write_crop(field, np.array([98.0, 38.0, 142.0, 82.0]), tmp_path / "crops", "Lymphocytes", "a")
    with pytest.raises(HemocountError, match="unknown class folder"):
        folder_cells(tmp_path / "crops")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "best.pt").write_bytes(b"")
    with pytest.raises(HemocountError, match="earlier adaptation"):
        adapt_subtype(data=tmp_path / "crops", out=tmp_path / "run")
    with pytest.raises(HemocountError, match="at least 1"):
        adapt_subtype(data=tmp_path / "crops", out=tmp_path / "new", epochs=0)
    assert crop_box(200, 100) == pytest.approx((61.54, 11.54, 138.46, 88.46), abs=0.01)  # centred
