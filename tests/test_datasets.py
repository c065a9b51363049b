"""Dataset readers and writers on the fixture copy of the staged data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hemocount.datasets.formats import read_voc, read_yolo, yolo_lines
from hemocount.datasets.records import sanitize_boxes
from hemocount.datasets.sources import data_root, load_bccd, load_pbc
from hemocount.datasets.writers import stats, to_coco, write_coco, write_yolo
from hemocount.errors import DatasetError


def test_bccd_official_splits_and_best_labels(fixture_data: Path) -> None:
    recs = load_bccd(fixture_data)
    assert [(r.image_id, r.split) for r in recs] == [
        ("BloodImage_00001", "train"), ("BloodImage_00037", "val"), ("BloodImage_00167", "test")]
    by_id = {r.image_id: r for r in recs}
    # 00167 is covered by the TXL re-annotation: its labels replace the XML and are complete.
    assert by_id["BloodImage_00167"].label_source == "txl_pbc" and by_id["BloodImage_00167"].complete
    assert by_id["BloodImage_00001"].label_source == "bccd_xml" and not by_id["BloodImage_00001"].complete
    xml_only = {r.image_id: r for r in load_bccd(fixture_data, labels="xml")}
    assert xml_only["BloodImage_00167"].label_source == "bccd_xml"
    assert xml_only["BloodImage_00167"].counts() != by_id["BloodImage_00167"].counts()
    assert [r.image_id for r in load_bccd(fixture_data, labels="txl")] == ["BloodImage_00167"]


def test_pbc_reader_maps_class_order_by_name(fixture_data: Path) -> None:
    recs = load_pbc(fixture_data)
    assert len(recs) == 4 and {r.split for r in recs} == {"train", "test"}
    lines = (fixture_data / "txl_pbc_pbc/TXL-PBC/labels").rglob("*.txt")
    n_wbc = sum(1 for f in lines for ln in f.read_text().splitlines() if ln.split()[0] == "0")
    assert sum(r.counts()["WBC"] for r in recs) == n_wbc  # TXL id 0 is WBC, not RBC
    assert {r.meta["subtype"] for r in recs} == {"lymphocyte", "eosinophil"}


def test_data_root_required(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("HEMOCOUNT_DATA", raising=False)
    with pytest.raises(DatasetError, match="HEMOCOUNT_DATA"):
        data_root(None)
    with pytest.raises(DatasetError, match="not a folder"):
        data_root(tmp_path / "nope")
    monkeypatch.setenv("HEMOCOUNT_DATA", str(tmp_path))
    assert data_root(None) == tmp_path


def test_sanitize_reports_and_handles_broken_boxes() -> None:
    boxes = [(10, 10, 50, 50), (-20, 5, 30, 40), (5, 5, 5, 30), (0, 0, 10, 10), (600, 400, 700, 500), (1, 1, 9, 9)]
    names = ["RBC", "WBC", "RBC", "Neutrophil", "Platelets", "Platlets"]
    arr, classes, issues = sanitize_boxes(boxes, names, 640, 480, "x.xml")
    assert classes == ["RBC", "WBC", "Platelets", "Platelets"]
    assert arr[1].tolist() == [0, 5, 30, 40] and arr[2].tolist() == [600, 400, 640, 480]
    text = "\n".join(issues)
    assert "unknown class 'Neutrophil'" in text and "zero-size" in text and "clipped" in text


def test_malformed_annotations_give_one_line_errors(tmp_path: Path) -> None:
    bad_xml = tmp_path / "a.xml"
    bad_xml.write_text("<annotation><object><name>RBC</name>")
    with pytest.raises(DatasetError, match="a.xml: cannot read VOC XML"):
        read_voc(bad_xml)
    bad_box = tmp_path / "b.xml"
    bad_box.write_text("<annotation><object><name>RBC</name><bndbox><xmin>a</xmin></bndbox></object></annotation>")
    with pytest.raises(DatasetError, match="non-numeric"):
        read_voc(bad_box)
    bad_txt = tmp_path / "c.txt"
    bad_txt.write_text("0 0.5 0.5 0.1\n")
    with pytest.raises(DatasetError, match=r"c.txt:1: expected"):
        read_yolo(bad_txt, ["WBC"], 100, 100)
    assert read_yolo(tmp_path / "missing.txt", ["WBC"], 10, 10) == ([], [])


def test_yolo_round_trip(fixture_data: Path, tmp_path: Path) -> None:
    recs = load_bccd(fixture_data) + load_pbc(fixture_data)
    data_yaml = write_yolo(recs, tmp_path / "yolo")
    assert "names:" in data_yaml.read_text()
    for r in recs:
        lbl = tmp_path / "yolo" / "labels" / r.split / f"{r.image_id}.txt"
        boxes, names = read_yolo(lbl, ["RBC", "WBC", "Platelets"], r.width, r.height)
        assert names == r.classes
        np.testing.assert_allclose(np.array(boxes).reshape(-1, 4), r.boxes, atol=0.01)
        img = next((tmp_path / "yolo" / "images" / r.split).glob(f"{r.image_id}.*"))
        assert img.suffix == ".jpg"  # TXL's .png files hold JPEG data


def test_yolo_lines_format() -> None:
    assert yolo_lines(np.array([[0, 0, 50, 25]]), [2], 100, 50) == ["2 0.250000 0.250000 0.500000 0.500000"]


def test_coco_export_loads_in_pycocotools(fixture_data: Path, tmp_path: Path) -> None:
    from pycocotools.coco import COCO

    recs = load_bccd(fixture_data)
    path = write_coco(recs, tmp_path / "gt.json")
    coco = COCO(str(path))
    assert len(coco.getImgIds()) == 3
    assert len(coco.getAnnIds()) == sum(len(r.classes) for r in recs)
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["RBC", "WBC", "Platelets"]
    assert to_coco(recs)["images"][0]["hemocount_id"] == "BloodImage_00001"


def test_stats(fixture_data: Path) -> None:
    st = stats(load_bccd(fixture_data))
    assert st["bccd/test"]["complete_labels"] == 1 and st["bccd/train"]["boxes"]["WBC"] == 1
