"""Image discovery and decoding, and atomic file writes."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from hemocount.errors import BadImageError, HemocountError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
#: Refuse images above this many pixels (decompression bombs, whole-slide scans).
MAX_PIXELS = 20000 * 20000


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; outputs get ordinary permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    """Atomic UTF-8 text write."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    """Atomic JSON write (indented, keys in insertion order)."""
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def find_images(sources: Iterable[str | os.PathLike[str]], exclude: Path | None = None) -> list[Path]:
    """Expand files and folders (recursively) into a sorted, de-duplicated image list.

    Args:
        sources: Files and folders.
        exclude: A folder whose contents are never inputs (the run's own output folder).

    Raises:
        HemocountError: A path does not exist, or no image was found at all.
    """
    found: list[Path] = []
    skip = exclude.resolve() if exclude is not None else None
    for src in sources:
        p = Path(src)
        try:
            exists = p.exists()
        except OSError as exc:
            raise HemocountError(f"{p}: cannot access ({exc.strerror})") from None
        if not exists:
            raise HemocountError(f"{p}: no such file or folder")
        if p.is_dir():
            try:
                hits = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                              and not any(part.startswith(".") for part in f.relative_to(p).parts)
                              and not (skip is not None and f.resolve().is_relative_to(skip)))
            except OSError as exc:
                raise HemocountError(f"{exc.filename or p}: cannot list folder ({exc.strerror})") from None
            if not hits:
                raise HemocountError(f"{p}: folder has no images ({', '.join(IMAGE_SUFFIXES)})")
            found.extend(hits)
        elif p.suffix.lower() in IMAGE_SUFFIXES:
            found.append(p)
        else:
            raise HemocountError(f"{p}: not an image file (expected {', '.join(IMAGE_SUFFIXES)})")
    seen: set[Path] = set()
    unique = []
    for f in found:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def read_image(path: Path) -> np.ndarray:
    """Decode an image as 8-bit BGR (grayscale, RGBA and 16-bit are converted).

    Raises:
        BadImageError: The file is empty, unreadable, truncated, too large or not an image.
    """
    import cv2

    try:
        size = path.stat().st_size
    except OSError as exc:
        raise BadImageError(f"{path}: cannot read ({exc.strerror})") from None
    if size == 0:
        raise BadImageError(f"{path}: empty file (0 bytes)")
    _check_header(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise BadImageError(f"{path}: cannot read ({exc.strerror})") from None
    is_jpeg = data[:2].tobytes() == b"\xff\xd8"
    # libjpeg may fill a truncated stream with grey and only warn. A missing end marker near the end is
    # the cheap hint; PIL's strict decoder confirms it (files with trailers, e.g. motion photos, pass).
    if is_jpeg and b"\xff\xd9" not in data[-1024:].tobytes() and _pil_truncated(path):
        raise BadImageError(f"{path}: truncated JPEG (no end-of-image marker)")
    try:
        img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error:
        img = None
    if img is None:
        raise BadImageError(f"{path}: not a decodable image")
    if img.dtype == np.uint16:
        img = (img / 257).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise BadImageError(f"{path}: unsupported pixel type {img.dtype}")
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    elif img.shape[2] != 3:
        raise BadImageError(f"{path}: unsupported channel count {img.shape[2]}")
    if min(img.shape[:2]) < 8:
        raise BadImageError(f"{path}: image too small ({img.shape[1]}x{img.shape[0]} pixels)")
    return img


def _pil_truncated(path: Path) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
    except Exception:  # noqa: BLE001 - PIL raises OSError/ValueError/SyntaxError for broken streams
        return True
    return False


def _check_header(path: Path) -> None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
    except Image.DecompressionBombError:
        raise BadImageError(f"{path}: image too large to decode safely") from None
    except (OSError, ImportError):
        # Formats PIL does not know (or whose optional plugin is missing, as ultralytics' HEIF hook
        # raises): OpenCV decides.
        return
    except ValueError as exc:  # e.g. oversized PNG text chunks
        raise BadImageError(f"{path}: unreadable image header ({exc})") from None
    if w * h > MAX_PIXELS:
        raise BadImageError(f"{path}: image too large ({w}x{h} pixels, limit {MAX_PIXELS})")
