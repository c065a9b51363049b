"""Image discovery and decoding, and atomic file writes."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from hemocount.errors import BadImageError, HemocountError

log = logging.getLogger("hemocount")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
#: Refuse images above this many pixels (decompression bombs, whole-slide scans).
MAX_PIXELS = 20000 * 20000


#: Held while file descriptor 2 is redirected to capture a C decoder's messages. Python code that writes to
#: stderr while images may be decoding on other threads writes through :class:`LockedStderr`, so its
#: output never lands in (or is mistaken for) a decoder's message.
STDERR_LOCK = threading.RLock()


#: Progress bars on screen (see :func:`progress_bar`): other stderr text is written above them.
_BARS: list[Any] = []


class LockedStderr:
    """A file-like view of the current ``sys.stderr`` that writes under :data:`STDERR_LOCK`.

    While a :func:`progress_bar` is shown, a write first clears the bar's line and then redraws the bar
    below the text, so a log line gets a line of its own instead of being glued to the bar.
    """

    def write(self, text: str) -> int:
        """Write ``text`` to stderr."""
        with STDERR_LOCK:
            # nolock: tqdm's own lock may be held by a thread waiting for STDERR_LOCK to draw the bar.
            bars = [b for b in _BARS if not b.disable]
            for b in bars:
                b.clear(nolock=True)
            n = sys.stderr.write(text)
            for b in bars:
                b.refresh(nolock=True)
            return n

    def flush(self) -> None:
        """Flush stderr."""
        with STDERR_LOCK:
            sys.stderr.flush()

    def isatty(self) -> bool:
        """Whether stderr is a terminal."""
        return sys.stderr.isatty()


class _BarStderr(LockedStderr):
    """What a progress bar draws through: stderr under the lock, without clearing bars."""

    def write(self, text: str) -> int:
        """Write ``text`` to stderr."""
        with STDERR_LOCK:
            return sys.stderr.write(text)


def progress_bar(*, total: int, initial: int = 0, desc: str, unit: str, enabled: bool = True) -> Any:
    """A tqdm bar on stderr, drawn only when ``enabled`` and stderr is a terminal (logs and pipes get no
    bar lines); other stderr text (:class:`LockedStderr`) goes on its own line above it. ``close()`` it."""
    from tqdm import tqdm

    class _Bar(tqdm):
        def close(self) -> None:
            with STDERR_LOCK:
                if self in _BARS:
                    _BARS.remove(self)
            super().close()

    bar = _Bar(total=total, initial=initial, desc=desc, unit=unit, file=_BarStderr(), leave=False,
               disable=not (enabled and sys.stderr.isatty()))
    with STDERR_LOCK:
        _BARS.append(bar)
    return bar


#: Names of atomic_write_bytes' temporary files: ``.<target name>.<mkstemp suffix>.tmp``.
_TEMP_NAME = re.compile(r"\..+\.[A-Za-z0-9_]{8}\.tmp")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and rename, so readers never see half a file.

    Raises:
        HemocountError: The file cannot be written (read-only location, disk full, ...); ``path`` is
            left as it was and no temporary file remains.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise HemocountError(f"{path}: cannot write ({exc.strerror or exc})") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; outputs get ordinary permissions
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):  # ENOSPC and friends carry no file name of their own
            raise HemocountError(f"{path}: cannot write ({exc.strerror or exc})") from None
        raise


def remove_stale_temps(folder: Path) -> int:
    """Delete temporary files that :func:`atomic_write_bytes` left behind when its process was killed.

    Returns:
        How many were removed.
    """
    stale = [f for f in folder.rglob(".*.tmp") if f.is_file() and _TEMP_NAME.fullmatch(f.name)]
    for f in stale:
        f.unlink(missing_ok=True)
    return len(stale)


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


def absolute(path: str | os.PathLike[str]) -> Path:
    """``path`` made absolute and normalised *without* following symbolic links.

    Slides, names in ``counts.csv`` and ``annotated/`` follow the path as given: a linked field belongs to
    the folder it is linked into, not to wherever its target lives.
    """
    return Path(os.path.abspath(path))


#: Files that make a folder an earlier hemocount output (its ``annotated/`` images are not fields).
OUTPUT_MARKERS = ("run.json", "counts.csv")


def is_hemocount_output(folder: Path) -> bool:
    """Whether ``folder`` holds the outputs of a count run (finished, or interrupted with its journal)."""
    if (folder / ".hemocount-journal").is_dir():
        return True
    if not all((folder / m).is_file() for m in OUTPUT_MARKERS):
        return False
    try:
        with (folder / "counts.csv").open(encoding="utf-8", errors="replace") as fh:
            first = fh.readline()
    except OSError:
        return False
    return first.split(",", 1)[0].strip() in ("image", "path")


def _is_within(path: Path, folders: list[Path]) -> bool:
    """Whether ``path`` (as given or with its links followed) lies in one of ``folders``."""
    if not folders:
        return False
    return any(p.is_relative_to(f) for p in (absolute(path), Path(os.path.realpath(path))) for f in folders)


def _walk_images(root: Path, skip: list[Path]) -> list[Path]:
    """Image files below ``root`` (symbolic links included, even broken ones: reading them says why they
    cannot be counted), leaving out hidden entries, ``skip`` and earlier hemocount output folders."""
    hits: list[Path] = []

    def raise_error(exc: OSError) -> None:
        raise exc

    # Linked folders are followed (their fields keep the linked path), unless the link leads back to a
    # folder the walk is already in: the real folders on the way down to each folder, by its path.
    chain: dict[Path, frozenset[str]] = {Path(root): frozenset({os.path.realpath(root)})}
    for dirpath, dirnames, filenames in os.walk(root, onerror=raise_error, followlinks=True):
        here = Path(dirpath)
        kept = []
        for d in sorted(dirnames):
            sub = here / d
            if d.startswith(".") or _is_within(sub, skip):
                continue
            real = os.path.realpath(sub)
            if real in chain[here]:
                log.warning("%s: skipped, symbolic link loop (leads back to a folder above it)", sub)
                continue
            chain[sub] = chain[here] | {real}
            if is_hemocount_output(sub):
                log.warning("%s: skipped, it is the output of an earlier hemocount run (%s)", sub,
                            ", ".join(OUTPUT_MARKERS))
                continue
            kept.append(d)
        dirnames[:] = kept
        for name in filenames:
            f = here / name
            if name.startswith(".") or f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if _is_within(f, skip):
                continue
            hits.append(f)
    return sorted(hits)


def find_images(sources: Iterable[str | os.PathLike[str]], exclude: Path | None = None) -> list[Path]:
    """Expand files and folders (recursively) into a sorted, de-duplicated image list.

    Paths are kept as given (symbolic links are not resolved). Below a folder, hidden entries and the
    folders of earlier hemocount runs (a warning names each) are left out; broken or looping symbolic
    links named like images are listed, so the run reports them as skipped instead of dropping them.

    Args:
        sources: Files and folders.
        exclude: A folder whose contents are never inputs (the run's own output folder).

    Raises:
        HemocountError: A path does not exist, or no image was found at all.
    """
    found: list[Path] = []
    skip = [absolute(exclude), Path(os.path.realpath(exclude))] if exclude is not None else []
    for src in sources:
        p = Path(src)
        try:
            exists = p.exists()
        except OSError as exc:
            raise HemocountError(f"{p}: cannot access ({exc.strerror})") from None
        if not exists:
            if p.is_symlink():
                raise HemocountError(f"{p}: {_broken_link(p, _link_error(p))}")
            raise HemocountError(f"{p}: no such file or folder")
        if p.is_dir():
            try:
                hits = _walk_images(p, skip)
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
        key = absolute(f)
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def _broken_link(path: Path, exc: OSError) -> str:
    """Why the symbolic link ``path`` cannot be opened (``exc``: the error following it gave)."""
    if exc.errno == errno.ELOOP:
        return "symbolic link loop"
    if exc.errno == errno.ENOENT:
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        return f"broken symbolic link (target {target} does not exist)"
    return f"cannot read ({exc.strerror})"


def _link_error(path: Path) -> OSError:
    try:
        os.stat(path)
    except OSError as exc:
        return exc
    return OSError(errno.ENOENT, os.strerror(errno.ENOENT))


def read_image(path: Path) -> np.ndarray:
    """Decode an image as 8-bit BGR (grayscale, RGBA and 16-bit are converted).

    Raises:
        BadImageError: The file is empty, unreadable, truncated, too large or not an image.
    """
    import cv2

    try:
        size = path.stat().st_size
    except OSError as exc:
        if path.is_symlink():
            raise BadImageError(f"{path}: {_broken_link(path, exc)}") from None
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
    native: list[str] = []
    with _native_stderr(native):
        try:
            img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
        except cv2.error:
            img = None
    detail = "; ".join(native)
    if img is None:
        raise BadImageError(f"{path}: not a decodable image" + (f" ({detail})" if detail else ""))
    if detail:
        log.warning("%s: decoded with warnings (%s)", path, detail)
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


#: OpenCV's log prefix, e.g. ``[ WARN:0@8.5] global grfmt_png.cpp:793 readFromStreamOrBuffer ``.
_OPENCV_LOG_PREFIX = re.compile(r"^\[\s*[A-Z]+:[^\]]*\]\s*(global\s+)?\S+:\d+\s+\S+\s+")


@contextlib.contextmanager
def _native_stderr(lines: list[str]) -> Iterator[None]:
    """Collect what C decoders (libpng, libjpeg, libtiff) print on file descriptor 2 into ``lines``.

    They write straight to the process's stderr, which would break the one-line-per-problem rule; the
    text is folded into hemocount's own message instead. The redirection is process-wide, so it happens
    under :data:`STDERR_LOCK`: one decode at a time, and hemocount's own stderr writers wait for it.
    """
    with STDERR_LOCK:
        yield from _capture_fd2(lines)


def _capture_fd2(lines: list[str]) -> Iterator[None]:
    try:
        sys.stderr.flush()
        tmp = tempfile.TemporaryFile()  # noqa: SIM115 - closed by the "with tmp" below
    except (OSError, ValueError):  # no temporary space, or a closed stderr: decode without capturing
        yield
        return
    with tmp:
        try:
            saved = os.dup(2)
        except OSError:  # no fd 2 at all: nothing to capture
            yield
            return
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read(4096).decode("utf-8", "replace")
            for line in text.splitlines():
                line = _OPENCV_LOG_PREFIX.sub("", line).strip()
                if line and line not in lines:
                    lines.append(line[:200])


#: ``warnings.catch_warnings`` swaps process-wide state: two reader threads inside it at once restore
#: each other's filters out of order and let PIL's warnings through, so one thread at a time.
_PIL_WARNINGS_LOCK = threading.Lock()


@contextlib.contextmanager
def _pil_warnings_silenced() -> Iterator[None]:
    with _PIL_WARNINGS_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _pil_truncated(path: Path) -> bool:
    from PIL import Image

    try:
        with _pil_warnings_silenced(), Image.open(path) as im:
            im.load()
    except Exception:  # noqa: BLE001 - PIL raises OSError/ValueError/SyntaxError for broken streams
        return True
    return False


def _check_header(path: Path) -> None:
    from PIL import Image

    try:
        # Size warnings (MAX_PIXELS below decides) and corrupt-EXIF notes would print on stderr.
        with _pil_warnings_silenced(), Image.open(path) as im:
            w, h = im.size
    except Image.DecompressionBombError:
        raise BadImageError(f"{path}: image too large to decode safely "
                            f"(over {2 * (Image.MAX_IMAGE_PIXELS or 0)} pixels)") from None
    except (OSError, ImportError):
        # Formats PIL does not know (or whose optional plugin is missing, as ultralytics' HEIF hook
        # raises): OpenCV decides.
        return
    except ValueError as exc:  # e.g. oversized PNG text chunks
        raise BadImageError(f"{path}: unreadable image header ({exc})") from None
    if w * h > MAX_PIXELS:
        raise BadImageError(f"{path}: image too large ({w}x{h} pixels, limit {MAX_PIXELS})")
