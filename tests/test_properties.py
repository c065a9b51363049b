"""Property-based tests (hypothesis): box format round trips, box sanitising, crop geometry, reader fuzzing.

Examples come from a fixed seed (derandomize), so a failure reproduces, and are kept few enough that the
whole file runs in seconds.
"""

from __future__ import annotations

from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from hemocount import CELL_CLASSES
from hemocount.classify.crops import crop_cell, square_box
from hemocount.datasets.formats import (
    coco_to_xyxy,
    read_voc,
    read_yolo,
    xyxy_to_coco,
    xyxy_to_yolo,
    yolo_lines,
    yolo_to_xyxy,
)
from hemocount.datasets.records import CLASS_ALIASES, AnnotatedImage, sanitize_boxes
from hemocount.datasets.writers import to_coco
from hemocount.errors import DatasetError

FIXTURE_XML = Path(__file__).resolve().parent / "fixtures/data/bccd/BCCD/Annotations/BloodImage_00001.xml"
FIXTURE_TXT = next((Path(__file__).resolve().parent / "fixtures/data/txl_pbc_pbc/TXL-PBC/labels").rglob("*.txt"))

FAST = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])

sizes = st.integers(min_value=16, max_value=4000)


@st.composite
def image_with_boxes(draw: st.DrawFn) -> tuple[int, int, np.ndarray, list[str]]:
    """An image size and valid boxes inside it (at least 1 px each way), with canonical class names."""
    width, height = draw(sizes), draw(sizes)
    n = draw(st.integers(0, 12))
    boxes = []
    for _ in range(n):
        # 1.01, not 1: (y1 + 1) - y1 can round to just under 1 px, which sanitize_boxes rightly drops.
        x1 = draw(st.floats(0, width - 2))
        y1 = draw(st.floats(0, height - 2))
        x2 = draw(st.floats(x1 + 1.01, width))
        y2 = draw(st.floats(y1 + 1.01, height))
        boxes.append((x1, y1, x2, y2))
    names = draw(st.lists(st.sampled_from(CELL_CLASSES), min_size=n, max_size=n))
    return width, height, np.asarray(boxes, np.float64).reshape(-1, 4), names


def _voc_xml(width: int, height: int, boxes: np.ndarray, names: list[str]) -> str:
    objects = "".join(
        f"<object><name>{escape(n)}</name><bndbox><xmin>{b[0]!r}</xmin><ymin>{b[1]!r}</ymin>"
        f"<xmax>{b[2]!r}</xmax><ymax>{b[3]!r}</ymax></bndbox></object>"
        for b, n in zip(boxes.tolist(), names))
    return (f"<annotation><size><width>{width}</width><height>{height}</height><depth>3</depth></size>"
            f"{objects}</annotation>")


@FAST
@given(image_with_boxes())
def test_voc_to_coco_to_yolo_round_trip(tmp_path: Path, data: tuple[int, int, np.ndarray, list[str]]) -> None:
    width, height, boxes, names = data
    xml = tmp_path / "a.xml"
    xml.write_text(_voc_xml(width, height, boxes, names))
    w, h, voc_boxes, voc_names = read_voc(xml)
    assert (w, h) == (width, height) and voc_names == names
    arr, classes, issues = sanitize_boxes(voc_boxes, voc_names, w, h, str(xml))
    assert issues == [] and classes == names
    np.testing.assert_array_equal(arr, boxes)  # valid boxes pass untouched

    rec = AnnotatedImage("a", Path("a.jpg"), w, h, arr, classes, "test", "train", "voc")
    coco = to_coco([rec])
    back = np.array([coco_to_xyxy(a["bbox"]) for a in coco["annotations"]]).reshape(-1, 4)
    np.testing.assert_allclose(back, boxes, rtol=0, atol=1e-9 * max(width, height))
    assert [CELL_CLASSES[a["category_id"] - 1] for a in coco["annotations"]] == names

    txt = tmp_path / "a.txt"
    txt.write_text("\n".join(yolo_lines(arr, [CELL_CLASSES.index(c) for c in classes], w, h)) + "\n")
    yolo_boxes, yolo_names = read_yolo(txt, list(CELL_CLASSES), w, h)
    assert yolo_names == names
    # Labels keep 6 decimals of the normalised value: at most 1e-6 of the side off per coordinate.
    np.testing.assert_allclose(np.array(yolo_boxes).reshape(-1, 4), boxes, rtol=0, atol=1.01e-6 * max(w, h))


finite = st.floats(-1e6, 1e6, allow_nan=False)


@FAST
@given(finite, finite, st.floats(0, 1e6), st.floats(0, 1e6), sizes, sizes)
def test_box_conversions_invert(x: float, y: float, bw: float, bh: float, width: int, height: int) -> None:
    box = (x, y, x + bw, y + bh)
    np.testing.assert_allclose(coco_to_xyxy(xyxy_to_coco(box)), box, rtol=1e-12, atol=1e-6)
    np.testing.assert_allclose(yolo_to_xyxy(*xyxy_to_yolo(box, width, height), width, height), box,
                               rtol=1e-12, atol=1e-6)


any_float = st.floats(allow_nan=True, allow_infinity=True, width=64)
raw_names = st.one_of(st.sampled_from(sorted(CLASS_ALIASES)), st.sampled_from(CELL_CLASSES), st.text(max_size=12))


@FAST
@given(st.lists(st.tuples(st.tuples(any_float, any_float, any_float, any_float), raw_names), max_size=20),
       st.integers(0, 5000), st.integers(0, 5000))
def test_sanitize_boxes_invariants(items: list, width: int, height: int) -> None:
    boxes = [b for b, _ in items]
    names = [n for _, n in items]
    arr, classes, issues = sanitize_boxes(boxes, names, width, height, "x.xml")
    assert arr.shape == (len(classes), 4) and set(classes) <= set(CELL_CLASSES)
    assert np.isfinite(arr).all()
    assert (arr[:, 0] >= 0).all() and (arr[:, 1] >= 0).all()
    assert (arr[:, 2] <= width).all() and (arr[:, 3] <= height).all()
    assert (arr[:, 2] - arr[:, 0] >= 1).all() and (arr[:, 3] - arr[:, 1] >= 1).all()
    dropped = sum("dropped" in i for i in issues)
    assert len(classes) + dropped == len(items)
    assert all(i.startswith("x.xml: box ") and "\n" not in i for i in issues)


boxes_in = st.tuples(st.floats(-50, 600), st.floats(-50, 500), st.floats(0.5, 300), st.floats(0.5, 300))


@FAST
@given(boxes_in, st.floats(0, 0.5))
def test_square_box_is_square_padded_and_centred(b: tuple[float, float, float, float], pad: float) -> None:
    x, y, w, h = b
    x1, y1, x2, y2 = square_box([x, y, x + w, y + h], pad)
    side = max(w, h, 1.0) * (1 + 2 * pad)
    assert abs((x2 - x1) - side) <= 1 and abs((y2 - y1) - side) <= 1 and abs((x2 - x1) - (y2 - y1)) <= 1
    assert abs((x1 + x2) / 2 - (x + w / 2)) <= 0.5 and abs((y1 + y2) / 2 - (y + h / 2)) <= 0.5


#: An image whose channels hold each pixel's own x and y, so a crop shows where it was taken from.
COORDS = np.dstack([*np.meshgrid(np.arange(640, dtype=np.float32), np.arange(480, dtype=np.float32)),
                    np.zeros((480, 640), np.float32)])


@FAST
@given(boxes_in, st.sampled_from([16, 32, 63, 64, 96]), st.floats(0, 0.3))
def test_crop_cell_size_and_centre(b: tuple[float, float, float, float], size: int, pad: float) -> None:
    x, y, w, h = b
    box = [x, y, x + w, y + h]
    cx, cy = x + w / 2, y + h / 2
    assume(0 <= cx < 640 and 0 <= cy < 480)  # the cell's centre is in the image (the detector's boxes are)
    crop = crop_cell(COORDS, box, size, pad)
    assert crop.shape == (size, size, 3)
    x1, y1, x2, y2 = square_box(box, pad)
    scale = max(x2 - x1, y2 - y1) / size
    # Away from the image border the crop is a plain resize, so its centre shows the box centre. In
    # pixel-index coordinates (pixel j spans [j, j+1)) the box centre is at cx - 0.5.
    assume(min(cx, cy, 640 - cx, 480 - cy) > 2 * scale + 2)
    mid = slice((size - 1) // 2, size // 2 + 1)
    centre = crop[mid, mid, :2].reshape(-1, 2).mean(axis=0)
    assert abs(centre[0] - (cx - 0.5)) <= 1.0 and abs(centre[1] - (cy - 0.5)) <= 1.0, (centre, cx, cy)


def _mutate(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    """Apply (kind, position, byte) edits: 0 replace, 1 insert, 2 delete."""
    buf = bytearray(data)
    for kind, pos, byte in edits:
        if not buf:
            break
        pos %= len(buf)
        if kind == 0:
            buf[pos] = byte
        elif kind == 1:
            buf.insert(pos, byte)
        else:
            del buf[pos]
    return bytes(buf)


edits = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8)


def _check_voc(path: Path) -> None:
    try:
        width, height, boxes, names = read_voc(path)
    except DatasetError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)
        return
    assert width >= 0 and height >= 0 and len(boxes) == len(names)
    arr, classes, _ = sanitize_boxes(boxes, names, width or 640, height or 480, str(path))
    assert np.isfinite(arr).all() and set(classes) <= set(CELL_CLASSES)


def _check_yolo(path: Path, width: int, height: int) -> None:
    try:
        boxes, names = read_yolo(path, ["WBC", "RBC", "Platelets"], width, height)
    except DatasetError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)
        return
    assert len(boxes) == len(names)
    arr, classes, _ = sanitize_boxes(boxes, names, width, height, str(path))
    assert np.isfinite(arr).all() and set(classes) <= set(CELL_CLASSES)
    assert (arr[:, 2] <= width).all() and (arr[:, 3] <= height).all()


@FAST
@given(st.binary(max_size=400))
def test_voc_reader_fuzz_random_bytes(tmp_path: Path, data: bytes) -> None:
    (tmp_path / "f.xml").write_bytes(data)
    _check_voc(tmp_path / "f.xml")


@FAST
@given(edits)
def test_voc_reader_fuzz_mutated_file(tmp_path: Path, changes: list[tuple[int, int, int]]) -> None:
    (tmp_path / "f.xml").write_bytes(_mutate(FIXTURE_XML.read_bytes(), changes))
    _check_voc(tmp_path / "f.xml")


#: Field text XML 1.0 can hold (no control characters, surrogates or non-characters), numbers included.
field_text = st.one_of(st.text(st.characters(exclude_categories=("Cc", "Cs", "Cn")), max_size=10),
                       st.floats().map(repr), st.integers(-10**20, 10**20).map(str))


@FAST
@given(st.lists(field_text, min_size=7, max_size=7))
def test_voc_reader_fuzz_field_values(tmp_path: Path, values: list[str]) -> None:
    """Well-formed XML, anything in the fields (``inf``, ``-3``, ``1_0``, non-ASCII digits, ...)."""
    width, height, name, *coords = (escape(v) for v in values)
    xml = (f"<annotation><size><width>{width}</width><height>{height}</height></size><object><name>{name}</name>"
           "<bndbox>" + "".join(f"<{k}>{v}</{k}>" for k, v in zip(("xmin", "ymin", "xmax", "ymax"), coords))
           + "</bndbox></object></annotation>")
    (tmp_path / "f.xml").write_text(xml, encoding="utf-8")
    _check_voc(tmp_path / "f.xml")


@FAST
@given(st.binary(max_size=300), sizes, sizes)
def test_yolo_reader_fuzz_random_bytes(tmp_path: Path, data: bytes, width: int, height: int) -> None:
    (tmp_path / "f.txt").write_bytes(data)
    _check_yolo(tmp_path / "f.txt", width, height)


@FAST
@given(edits, sizes, sizes)
def test_yolo_reader_fuzz_mutated_file(tmp_path: Path, changes: list[tuple[int, int, int]], width: int,
                                       height: int) -> None:
    (tmp_path / "f.txt").write_bytes(_mutate(FIXTURE_TXT.read_bytes(), changes))
    _check_yolo(tmp_path / "f.txt", width, height)


@FAST
@given(st.lists(st.lists(st.one_of(st.integers(-5, 10).map(str), st.floats().map(repr), st.text(max_size=4)),
                         max_size=6), max_size=6), sizes, sizes)
def test_yolo_reader_fuzz_token_lines(tmp_path: Path, rows: list[list[str]], width: int, height: int) -> None:
    text = "\n".join(" ".join(r) for r in rows)
    try:
        (tmp_path / "f.txt").write_text(text, encoding="utf-8")
    except UnicodeEncodeError:  # lone surrogates
        return
    _check_yolo(tmp_path / "f.txt", width, height)


def test_fixture_files_are_valid_starting_points() -> None:
    """The mutation fuzzers start from files the readers accept (else they would only test errors)."""
    assert len(read_voc(FIXTURE_XML)[2]) > 0
    assert len(read_yolo(FIXTURE_TXT, ["WBC", "RBC", "Platelets"], 640, 480)[0]) > 0


@pytest.mark.parametrize("bad", ["inf", "-5", "nan"])
def test_voc_size_must_be_finite_and_not_negative(tmp_path: Path, bad: str) -> None:
    (tmp_path / "s.xml").write_text(f"<annotation><size><width>{bad}</width><height>4</height></size></annotation>")
    with pytest.raises(DatasetError, match="s.xml: <size>"):
        read_voc(tmp_path / "s.xml")
