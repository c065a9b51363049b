"""Bad input matrix: every case ends with its exit code and one stderr line naming the file and the problem.

No case may print a traceback (an uncaught exception fails the test instead of being printed), and work
finished before the problem is kept. Odd but valid images (16-bit, CMYK, grayscale, RGBA) are counted.
Already covered elsewhere and not repeated here: missing path, empty folder, unknown weights id/backend
(test_count_cli.py), decoding details (test_io.py), sha256 and manifest errors (test_weights.py).
"""

from __future__ import annotations

import csv
import errno
import json
import os
import random
import re
import shutil
import struct
import subprocess
import warnings
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from hemocount.cli import main
from hemocount.count import JOURNAL

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _sample(size: tuple[int, int] = (320, 240)) -> np.ndarray:
    img = cv2.imread(str(min(SAMPLES.glob("*.jpg"))))
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` but whose data is a few bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _encoded(ext: str, img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(ext, img)
    assert ok
    return buf.tobytes()


def _bad_crc_png() -> bytes:
    data = bytearray(_encoded(".png", _sample()))
    data[len(data) // 2] ^= 0xFF  # inside the image data: its CRC no longer matches
    return bytes(data)


def _cmyk_jpeg() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(_sample()[..., ::-1]).convert("CMYK").save(buf, "JPEG", quality=90)
    return buf.getvalue()


#: Files that are not usable images: (file name, bytes maker, problem named in the message).
BAD_IMAGES: dict[str, tuple[str, Callable[[], bytes], str]] = {
    "non-image": ("notes.jpg", lambda: b"these are lab notes, not pixels\n", "not a decodable image"),
    "zero-byte": ("zero.jpg", lambda: b"", "empty file (0 bytes)"),
    "truncated-jpeg": ("cut.jpg", lambda: _encoded(".jpg", _sample())[:4000], "truncated JPEG"),
    "truncated-png": ("cut.png", lambda: _encoded(".png", _sample())[:5000], "not a decodable image"),
    "png-bad-crc": ("crc.png", _bad_crc_png, "not a decodable image"),
    "truncated-tiff": ("cut.tif", lambda: _encoded(".tif", _sample())[:3000], "not a decodable image"),
    "one-pixel": ("dot.png", lambda: _encoded(".png", np.zeros((1, 1, 3), np.uint8)), "image too small (1x1"),
    "bomb-header": ("bomb.png", lambda: _png_header_only(100_000, 100_000), "image too large"),
    "big-header-no-data": ("big.png", lambda: _png_header_only(10_000, 10_000), "not a decodable image"),
    "float-tiff": ("float.tif", lambda: _encoded(".tif", _sample().astype(np.float32) / 255),
                   "unsupported pixel type float32"),
}

#: Odd but valid images that must be counted: (file name, bytes maker).
ODD_IMAGES: dict[str, tuple[str, Callable[[], bytes]]] = {
    "16-bit-tiff": ("deep.tif", lambda: _encoded(".tif", _sample().astype(np.uint16) * 257)),
    "16-bit-png": ("deep.png", lambda: _encoded(".png", _sample().astype(np.uint16) * 257)),
    "cmyk-jpeg": ("cmyk.jpg", _cmyk_jpeg),
    "grayscale-jpeg": ("gray.jpg", lambda: _encoded(".jpg", cv2.cvtColor(_sample(), cv2.COLOR_BGR2GRAY))),
    "grayscale-png": ("gray.png", lambda: _encoded(".png", cv2.cvtColor(_sample(), cv2.COLOR_BGR2GRAY))),
    "rgba-png": ("rgba.png", lambda: _encoded(".png", cv2.cvtColor(_sample(), cv2.COLOR_BGR2BGRA))),
}


_DETECTORS: dict[tuple[str, str | None], object] = {}


@pytest.fixture
def run(toy_weights: Path, capfd: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> Callable[..., tuple[int, list[str]]]:
    """``run(*args)`` -> (exit code, stderr lines) of ``hemocount -q count ... --weights TOY``.

    stderr is read at the file-descriptor level, so anything a C library prints directly is seen too,
    and Python warnings (which the CLI would print) fail the test. The toy detector is loaded once and
    reused unless the case passes its own ``--weights`` (weights cases load for real).
    """
    import hemocount.detect

    real_load = hemocount.detect.load_detector

    def cached_load(name: str, weights: str | None = None, **kw: object) -> object:
        if weights != str(toy_weights):
            return real_load(name, weights, **kw)
        if (name, weights) not in _DETECTORS:
            _DETECTORS[(name, weights)] = real_load(name, weights, **kw)
        return _DETECTORS[(name, weights)]

    monkeypatch.setattr(hemocount.detect, "load_detector", cached_load)

    def _run(*args: str) -> tuple[int, list[str]]:
        capfd.readouterr()
        argv = ["-q", "count", *args]
        if "--weights" not in argv:
            argv += ["--weights", str(toy_weights)]
        if "--subtype-weights" not in argv and "--all-weights" not in argv:
            argv.append("--no-classify")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            code = main(argv)
        err = capfd.readouterr().err
        assert "Traceback" not in err
        assert not caught, [str(w.message) for w in caught]
        return code, err.splitlines()

    return _run


def _slides(tmp_path: Path, name: str, data: bytes) -> Path:
    """A folder with one good field (sorted first) and the file under test."""
    folder = tmp_path / "slides"
    folder.mkdir()
    cv2.imwrite(str(folder / "a_good.jpg"), _sample())
    (folder / name).write_bytes(data)
    return folder


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _one_line_about(lines: list[str], name: str, problem: str) -> str:
    about = [ln for ln in lines if name in ln]
    assert len(about) == 1, lines
    assert problem in about[0], about[0]
    return about[0]


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_bad_image_is_skipped_and_the_rest_counted(case: str, tmp_path: Path, run: Callable) -> None:
    name, make, problem = BAD_IMAGES[case]
    slides = _slides(tmp_path, name, make())
    out = tmp_path / "out"
    code, err = run(str(slides), "-o", str(out))
    assert code == 3
    _one_line_about(err, name, problem)
    assert all(name in ln or "image(s) skipped, reasons in" in ln for ln in err), err
    rows = {r["image"]: r for r in _rows(out / "counts.csv")}
    assert rows["slides/a_good.jpg"]["status"] == "ok"
    assert rows[f"slides/{name}"]["status"] == "skipped" and problem in rows[f"slides/{name}"]["error"]
    assert (out / "annotated" / "slides" / "a_good.jpg").is_file() and (out / "run.json").is_file()


@pytest.mark.parametrize("case", ["non-image", "truncated-png", "bomb-header"])
def test_bad_image_with_fail_fast_stops_and_keeps_the_journal(case: str, tmp_path: Path, run: Callable) -> None:
    name, make, problem = BAD_IMAGES[case]
    slides = _slides(tmp_path, name, make())
    out = tmp_path / "out"
    code, err = run(str(slides), "-o", str(out), "--fail-fast", "--batch", "1")
    assert code == 2 and len(err) == 1 and err[0].startswith("hemocount: error:")
    _one_line_about(err, name, problem)
    # The good field finished before the bad one was reached: kept, so --resume picks it up.
    assert [p.name for p in (out / JOURNAL).glob("0*.json")] == ["00000000.json"]
    assert (out / "annotated" / "slides" / "a_good.jpg").is_file()
    code, _ = run(str(slides), "-o", str(out), "--batch", "1", "--resume")  # without --fail-fast: skip it
    assert code == 3
    assert json.loads((out / "run.json").read_text())["summary"]["resumed_from_journal"] == 1


@pytest.mark.parametrize("case", sorted(ODD_IMAGES))
def test_odd_but_valid_image_is_counted(case: str, tmp_path: Path, run: Callable) -> None:
    name, make = ODD_IMAGES[case]
    src = tmp_path / name
    src.write_bytes(make())
    code, err = run(str(src), "-o", str(tmp_path / "out"))
    assert code == 0 and err == []
    (row,) = _rows(tmp_path / "out" / "counts.csv")
    assert row["status"] == "ok" and (row["width"], row["height"]) == ("320", "240")


@pytest.mark.skipif(IS_ROOT, reason="root reads files whatever their mode; see the simulated variant")
def test_unreadable_file_chmod(tmp_path: Path, run: Callable) -> None:
    slides = _slides(tmp_path, "locked.jpg", _encoded(".jpg", _sample()))
    (slides / "locked.jpg").chmod(0)
    try:
        code, err = run(str(slides), "-o", str(tmp_path / "out"))
    finally:
        (slides / "locked.jpg").chmod(0o644)
    assert code == 3
    _one_line_about(err, "locked.jpg", "Permission denied")


def test_unreadable_file_simulated(tmp_path: Path, run: Callable, monkeypatch: pytest.MonkeyPatch) -> None:
    """What reading a mode-000 file does for a non-root user: every open() fails with EACCES."""
    import builtins

    from PIL import Image

    slides = _slides(tmp_path, "locked.jpg", _encoded(".jpg", _sample()))
    locked = slides / "locked.jpg"
    real_open, real_fromfile, real_pil = builtins.open, np.fromfile, Image.open

    def deny(file: object) -> None:
        if isinstance(file, (str, os.PathLike)) and Path(file) == locked:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))

    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: deny(f) or real_open(f, *a, **k))
    monkeypatch.setattr(np, "fromfile", lambda f, *a, **k: deny(f) or real_fromfile(f, *a, **k))
    monkeypatch.setattr(Image, "open", lambda f, *a, **k: deny(f) or real_pil(f, *a, **k))
    code, err = run(str(slides), "-o", str(tmp_path / "out"))
    assert code == 3
    _one_line_about(err, "locked.jpg", "cannot read (Permission denied)")
    assert {r["status"] for r in _rows(tmp_path / "out" / "counts.csv")} == {"ok", "skipped"}


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder nobody (root included) can create files in: chmod 555, or ``chattr +i`` as root."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if IS_ROOT:
        if not shutil.which("chattr") or subprocess.run(["chattr", "+i", str(folder)], check=False,
                                                        capture_output=True).returncode != 0:
            pytest.skip("running as root and this file system cannot mark a folder immutable")
        try:
            yield folder
        finally:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
    else:
        folder.chmod(0o555)
        try:
            yield folder
        finally:
            folder.chmod(0o755)


def test_output_in_read_only_location(tmp_path: Path, read_only_dir: Path, run: Callable) -> None:
    src = tmp_path / "f.jpg"
    cv2.imwrite(str(src), _sample())
    code, err = run(str(src), "-o", str(read_only_dir / "out"))
    assert code == 2 and len(err) == 1
    assert str(read_only_dir / "out") in err[0] and "cannot write output folder" in err[0]


def test_output_path_below_a_file(tmp_path: Path, run: Callable) -> None:
    src = tmp_path / "f.jpg"
    cv2.imwrite(str(src), _sample())
    code, err = run(str(src), "-o", str(src / "out"))
    assert code == 2 and len(err) == 1 and "cannot write output folder (Not a directory)" in err[0]


def test_disk_full_keeps_finished_work(tmp_path: Path, run: Callable, monkeypatch: pytest.MonkeyPatch) -> None:
    slides = tmp_path / "slides"
    slides.mkdir()
    for k in range(3):
        cv2.imwrite(str(slides / f"f{k}.jpg"), _sample()[:, ::1 if k % 2 else -1])
    real_fsync, calls = os.fsync, []

    def full_disk(fd: int) -> None:
        calls.append(fd)
        if len(calls) >= 4:  # settings, field 0 (annotated, journal), then field 1's annotated image
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_disk)
    out = tmp_path / "out"
    args = [str(slides), "-o", str(out), "--batch", "1"]
    code, err = run(*args)
    assert code == 2 and len(err) == 1
    target = out / "annotated" / "slides" / "f1.jpg"
    assert err[0] == f"hemocount: error: {target}: cannot write (No space left on device)"
    assert [p.name for p in (out / JOURNAL).glob("0*.json")] == ["00000000.json"]
    assert json.loads((out / JOURNAL / "00000000.json").read_text())["status"] == "ok"
    assert not list(out.rglob("*.tmp")) and not (out / "annotated" / "slides" / "f1.jpg").exists()

    monkeypatch.setattr(os, "fsync", real_fsync)  # space freed: the run finishes where it stopped
    assert run(*args, "--resume")[0] == 0
    assert json.loads((out / "run.json").read_text())["summary"]["resumed_from_journal"] == 1


def _foreign_yolo(toy_weights: Path, folder: Path) -> Path:
    import torch

    ck = torch.load(toy_weights, map_location="cpu", weights_only=False)
    ck["model"].names = {0: "cat", 1: "dog", 2: "bird"}
    path = folder / "pets.pt"
    torch.save(ck, path)
    return path


#: Weights problems: (option, which file, problem named in the message).
BAD_WEIGHTS = {
    "detector-garbage": ("--weights", "garbage", "cannot load YOLO weights"),
    "detector-zero-byte": ("--weights", "empty", "cannot load YOLO weights"),
    "detector-is-a-classifier": ("--weights", "classifier", "cannot load YOLO weights"),
    "detector-foreign-classes": ("--weights", "pets", "model class 'cat' is not one of RBC, WBC, Platelets"),
    "subtype-garbage": ("--subtype-weights", "garbage", "cannot load classifier"),
    "subtype-is-a-detector": ("--subtype-weights", "detector", "cannot load classifier"),
    "subtype-is-the-all-model": ("--subtype-weights", "all", "classifier is for task 'all', not 'wbc_subtype'"),
    "all-is-the-subtype-model": ("--all-weights", "subtype", "classifier is for task 'wbc_subtype', not 'all'"),
}


@pytest.mark.parametrize("case", sorted(BAD_WEIGHTS))
def test_bad_weights_one_line(case: str, tmp_path: Path, run: Callable, toy_weights: Path,
                              toy_classifiers: dict[str, Path]) -> None:
    option, which, problem = BAD_WEIGHTS[case]
    files = {"garbage": tmp_path / "garbage.pt", "empty": tmp_path / "empty.pt", "detector": toy_weights,
             "classifier": toy_classifiers["all"], "all": toy_classifiers["all"],
             "subtype": toy_classifiers["wbc_subtype"]}
    files["garbage"].write_bytes(random.Random(case).randbytes(2048))  # seeded: a failure reproduces
    files["empty"].write_bytes(b"")
    path = _foreign_yolo(toy_weights, tmp_path) if which == "pets" else files[which]
    weights = {"--weights": str(toy_weights), "--subtype-weights": str(toy_classifiers["wbc_subtype"]),
               "--all-weights": str(toy_classifiers["all"]), option: str(path)}
    src = tmp_path / "f.jpg"
    cv2.imwrite(str(src), _sample())
    code, err = run(str(src), "-o", str(tmp_path / "out"), *[x for kv in weights.items() for x in kv])
    assert code == 2 and len(err) == 1 and err[0].startswith("hemocount: error:"), err
    _one_line_about(err, path.name, problem)


def _corrupt(root: Path, rel: str, data: bytes | Callable[[bytes], bytes]) -> None:
    path = root / rel
    path.write_bytes(data(path.read_bytes()) if callable(data) else data)


PBC = "txl_pbc_pbc/TXL-PBC"
BCCD = "bccd/BCCD"
#: Broken dataset files: (file, new content or a function of the old, problem named in the message).
BAD_DATASETS: dict[str, tuple[str, bytes | Callable[[bytes], bytes], str]] = {
    "voc-not-xml": (f"{BCCD}/Annotations/BloodImage_00001.xml", b"<annotation><object>", "cannot read VOC XML"),
    "voc-binary": (f"{BCCD}/Annotations/BloodImage_00001.xml", bytes(range(256)), "cannot read VOC XML"),
    "voc-size-infinite": (f"{BCCD}/Annotations/BloodImage_00001.xml",
                          lambda b: b.replace(b"<width>640</width>", b"<width>inf</width>"), "<size>"),
    "voc-box-text": (f"{BCCD}/Annotations/BloodImage_00037.xml",
                     lambda b: b.replace(b"<xmin>", b"<xmin>left", 1), "non-numeric <bndbox>"),
    "split-list-missing": (f"{BCCD}/ImageSets/Main/val.txt", None, "split file missing"),  # type: ignore[dict-item]
    "split-lists-unknown-id": (f"{BCCD}/ImageSets/Main/val.txt", b"BloodImage_99999\n",
                               "cannot read VOC XML (No such file or directory)"),
    "yolo-four-fields": (f"{PBC}/labels/test/45bc2bb9c9bd57688c652db42de77007.txt", b"0 0.5 0.5 0.1\n",
                         ":1: expected 'class cx cy w h'"),
    "yolo-not-text": (f"{PBC}/labels/test/45bc2bb9c9bd57688c652db42de77007.txt", b"\xff\xfe\x00\x81 0.5\n",
                      "not UTF-8 text"),
    "pbc-metadata-columns": (f"{PBC}/subset_metadata.csv", b"name,split\nx.png,train\n", "missing column"),
    "pbc-metadata-split": (f"{PBC}/subset_metadata.csv",
                           lambda b: re.sub(rb",test(\r?\n)", rb",holdout\1", b, count=1), "unknown split 'holdout'"),
    "pbc-image-not-an-image": (f"{PBC}/images/test/45bc2bb9c9bd57688c652db42de77007.png", b"oops",
                               "cannot read image header"),
}


@pytest.mark.parametrize("verb", ["stats", "convert"])
@pytest.mark.parametrize("case", sorted(BAD_DATASETS))
def test_bad_dataset_files_one_line(case: str, verb: str, fixture_data: Path, tmp_path: Path,
                                    capfd: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "data"
    shutil.copytree(fixture_data, root)
    rel, data, problem = BAD_DATASETS[case]
    if data is None:
        (root / rel).unlink()
    else:
        _corrupt(root, rel, data)
    tail = ["--json"] if verb == "stats" else ["--to", "coco", "--out", str(tmp_path / "gt.json")]
    code = main(["-q", "datasets", verb, "--dataset", "bccd,pbc", "--data-root", str(root), *tail])
    err = capfd.readouterr().err.splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("hemocount: error:"), err
    named = "BloodImage_99999.xml" if case == "split-lists-unknown-id" else Path(rel).name
    assert f"{named}:" in err[0] and problem in err[0], err[0]
    assert not (tmp_path / "gt.json").exists()


#: Classical parameter files: (file content, problem named in the message).
BAD_CLASSICAL = {
    "not-json": (b"\x89PNG not json", "cannot read classical parameters"),
    "zero-byte": (b"", "cannot read classical parameters"),
    "not-an-object": (b"[1, 2]", "classical parameters must be a JSON object"),
    "unknown-parameter": (b'{"params": {"stain": 3}}', "unknown classical parameter(s) stain"),
    "bad-value": (b'{"params": {"stain_threshold": "high"}}', "bad classical parameter value"),
    "bad-conf": (b'{"conf": [0.5]}', "'conf' must map class names to numbers"),
}


@pytest.mark.parametrize("case", sorted(BAD_CLASSICAL))
def test_bad_classical_parameters_one_line(case: str, tmp_path: Path, run: Callable) -> None:
    data, problem = BAD_CLASSICAL[case]
    params = tmp_path / "params.json"
    params.write_bytes(data)
    src = tmp_path / "f.jpg"
    cv2.imwrite(str(src), _sample())
    code, err = run(str(src), "-o", str(tmp_path / "out"), "--detector", "classical", "--weights", str(params),
                    "--no-classify")
    assert code == 2 and len(err) == 1 and err[0].startswith("hemocount: error:"), err
    _one_line_about(err, params.name, problem)
