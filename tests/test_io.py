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


_PARALLEL_READERS = """
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from hemocount.errors import BadImageError
from hemocount.io import LockedStderr, read_image

good, bad = Path(sys.argv[1]), Path(sys.argv[2])
errors = []

def read(p):
    try:
        read_image(p)
    except BadImageError as exc:
        errors.append(str(exc))

out, written = LockedStderr(), 0
with ThreadPoolExecutor(2) as pool:
    futures = [pool.submit(read, p) for p in [good, bad] * 30]
    while not all(f.done() for f in futures):  # keep writing while the readers decode
        out.write(f"MAIN-LINE {written}\\n")
        out.flush()
        written += 1
print(written)
print("\\n".join(errors))
"""


def test_parallel_decoding_keeps_stderr_apart(tmp_path: Path) -> None:
    """Readers decode on threads while fd 2 is briefly captured; hemocount's own lines must never be swallowed."""
    import subprocess
    import sys

    good = tmp_path / "good.png"
    cv2.imwrite(str(good), np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8))
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 0xFF  # corrupt image data: libpng complains on fd 2
    bad = tmp_path / "bad.png"
    bad.write_bytes(bytes(data))
    res = subprocess.run([sys.executable, "-c", _PARALLEL_READERS, str(good), str(bad)], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    written, *errors = res.stdout.splitlines()
    assert len(errors) == 30 and all("CRC" in e for e in errors)
    assert not any("MAIN-LINE" in e for e in errors)
    assert int(written) > 10
    assert res.stderr.splitlines() == [f"MAIN-LINE {k}" for k in range(int(written))]
