"""Image discovery and decoding: every bad input gives a one-line error naming the file."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from hemocount.errors import BadImageError, HemocountError
from hemocount.io import atomic_write_text, find_images, read_image

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def test_find_images_recursive_sorted_dedup(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    for name in ("a.JPG", "b/c.png", "b/d.tif", "notes.txt", ".hidden/e.jpg"):
        p = tmp_path / name
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"x")
    found = find_images([tmp_path, tmp_path / "a.JPG"])
    assert [f.relative_to(tmp_path).as_posix() for f in found] == ["a.JPG", "b/c.png", "b/d.tif"]


def test_find_images_errors(tmp_path: Path) -> None:
    with pytest.raises(HemocountError, match="no such file"):
        find_images([tmp_path / "missing"])
    with pytest.raises(HemocountError, match="folder has no images"):
        find_images([tmp_path])
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(HemocountError, match="x.txt: not an image"):
        find_images([tmp_path / "x.txt"])


def test_read_image_good_and_converted(tmp_path: Path) -> None:
    img = read_image(next(SAMPLES.glob("*.jpg")))
    assert img.shape == (480, 640, 3) and img.dtype == np.uint8
    gray = np.full((20, 30), 128, np.uint8)
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    rgba = np.zeros((20, 30, 4), np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), rgba)
    deep = np.full((20, 30, 3), 65535, np.uint16)
    cv2.imwrite(str(tmp_path / "d.tif"), deep)
    for name in ("g.png", "a.png", "d.tif"):
        out = read_image(tmp_path / name)
        assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    assert read_image(tmp_path / "d.tif").max() == 255


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("zero.jpg", b"", "empty file"),
        ("text.jpg", b"this is not an image at all", "not a decodable image"),
        ("trunc.jpg", None, "truncated JPEG"),
        ("tiny.png", "tiny", "too small"),
    ],
)
def test_read_image_bad(tmp_path: Path, name: str, content: bytes | str | None, message: str) -> None:
    path = tmp_path / name
    if content is None:
        data = next(SAMPLES.glob("*.jpg")).read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif content == "tiny":
        cv2.imwrite(str(path), np.zeros((1, 1, 3), np.uint8))
    else:
        path.write_bytes(content)  # type: ignore[arg-type]
    with pytest.raises(BadImageError) as exc:
        read_image(path)
    assert message in str(exc.value) and str(path) in str(exc.value) and "\n" not in str(exc.value)


def test_atomic_write_leaves_no_temp(tmp_path: Path) -> None:
    atomic_write_text(tmp_path / "a" / "f.csv", "x\n")
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["f.csv"]
