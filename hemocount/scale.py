"""Scale normalisation with the red cell as a ruler.

A red cell is about 7.5 µm across on every microscope, so the median size of the red cells a first
detection pass finds tells how many pixels a micrometre spans in this image. The detector was trained
with red cells at a certain size *relative to the window it sees* (it letterboxes each window to its
input size): BCCD's median RBC spans 0.168 of its 640 px field, PBC's 0.226 of its 363 px field
(medians over the train+val fields with complete labels; 5th-95th percentile 0.160-0.183 and
0.207-0.253). When an image's red cells are far from that, the window is changed so that they are not:
cells too small (low magnification) -> overlapping tiles smaller than the image; cells too large (high
magnification) -> the image is shrunk and padded with its background back to its own size, so the
detector sees more field around each cell, as at the trained magnification. Then it detects again.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from hemocount.errors import HemocountError

if TYPE_CHECKING:
    import supervision as sv

#: Red-cell diameter assumed for the µm/px estimate (normal adult MCV range gives 6.2-8.2 µm).
RBC_DIAMETER_UM = 7.5
#: Trained relative RBC size: geometric mean of BCCD's 0.168 and PBC's 0.226 (see module docstring).
TARGET_REL_SIZE = 0.195


@dataclass(frozen=True)
class ScaleConfig:
    """How ``count`` handles magnification.

    Attributes:
        mode: ``auto`` (estimate from the red cells, normalise when outside ``band``), ``none`` (detect
            as is; the scale is still estimated and reported) or ``fixed`` (always apply ``factor``).
        factor: With ``fixed``: the resampling factor (0.5 = cells appear twice the trained size, so
            the image is shrunk by half; 2 = cells half the trained size).
        band: Relative RBC sizes (median RBC diameter / detector window) detected as they are.
        min_rbc: Red cells needed for an estimate.
        min_gain: How much more confident another window must be to replace the image's own.
        max_zoom: Largest zoom (relative RBC size / trained relative size) normalised and validated; a
            field whose cells appear larger is flagged ``scale_out_of_range`` (and the window clamps to it).
        min_rbc_px: Red cells smaller than this many pixels across are flagged ``scale_out_of_range``: too
            few pixels to tell cells apart, whatever the window.
    """

    mode: str = "auto"
    factor: float | None = None
    band: tuple[float, float] = (0.14, 0.26)
    min_rbc: int = 3
    max_zoom: float = 3.5
    min_rbc_px: float = 12.0
    min_gain: float = 0.02

    @classmethod
    def parse(cls, value: str | float | None) -> ScaleConfig:
        """``auto``, ``none`` or a number (the fixed resampling factor), as given to ``--scale``."""
        if value is None or value == "auto":
            return cls()
        if value == "none":
            return cls(mode="none")
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise HemocountError(f"--scale must be auto, none or a positive number (got {value!r})") from None
        if not (math.isfinite(f) and 0.1 <= f <= 10):
            raise HemocountError(f"--scale factor must be between 0.1 and 10 (got {value!r})")
        return cls(mode="fixed", factor=f)

    def to_json(self) -> dict[str, Any]:
        """Plain dict for the run record."""
        return {**asdict(self), "target_rel_size": TARGET_REL_SIZE, "rbc_diameter_um": RBC_DIAMETER_UM}


@dataclass
class ScaleInfo:
    """What was learned about one image's magnification and what was done about it.

    Attributes:
        status: ``as_is`` (within the trained band), ``normalised`` (detected again at ``factor``),
            ``fixed`` (the user's factor), ``off`` (``--scale none``), ``unknown`` (too few red cells).
        rbc_px: Median red-cell diameter in image pixels (None when unknown).
        n_rbc: Red cells the estimate rests on.
        zoom: Relative RBC size / trained relative size (1 = as trained; 2 = cells twice as large).
        factor: Resampling factor applied before the final detection (1 = none).
        window: Side in image pixels of the window the detector saw (tile or padded canvas).
        done: The detections at ``factor`` are already made (a search probe's); nothing to redo.
    """

    status: str = "off"
    rbc_px: float | None = None
    n_rbc: int = 0
    zoom: float | None = None
    factor: float = 1.0
    window: int | None = None
    done: bool = False

    @property
    def um_per_px(self) -> float | None:
        """Estimated µm per pixel from the red-cell ruler."""
        return round(RBC_DIAMETER_UM / self.rbc_px, 5) if self.rbc_px else None

    def to_json(self) -> dict[str, Any]:
        """Plain dict (journal, run record)."""
        d = asdict(self)
        d.pop("done")
        return {**d, "um_per_px": self.um_per_px}

    @classmethod
    def from_json(cls, obj: dict[str, Any] | None) -> ScaleInfo:
        """Inverse of :meth:`to_json`."""
        if not obj:
            return cls()
        return cls(**{k: obj[k] for k in ("status", "rbc_px", "n_rbc", "zoom", "factor", "window") if k in obj})


def rbc_diameter(dets: sv.Detections, width: int, height: int, min_rbc: int,
                 min_conf: float = 0.0) -> tuple[float | None, int]:
    """Median red-cell diameter (longer box side) in pixels, and how many cells it rests on.

    Only boxes at or above ``min_conf`` count (the operating threshold: a run at ``--conf 0.001`` must
    not measure its ruler on noise). Cells cut by the image border are left out when enough whole ones
    remain; the median ignores the few boxes that merge a clump or cover half a cell.
    """
    if len(dets) == 0:
        return None, 0
    keep = dets.data["class_name"] == "RBC"
    if dets.confidence is not None:
        keep &= dets.confidence >= min_conf
    b = dets.xyxy[keep]
    if len(b) == 0:
        return None, 0
    inner = (b[:, 0] > 1) & (b[:, 1] > 1) & (b[:, 2] < width - 1) & (b[:, 3] < height - 1)
    if inner.sum() >= min_rbc:
        b = b[inner]
    if len(b) < min_rbc:
        return None, len(b)
    return float(np.median(np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]))), len(b)


def zoom_of(rbc_px: float, window: int) -> float:
    """Relative RBC size in a window of ``window`` pixels, over the trained one."""
    return rbc_px / window / TARGET_REL_SIZE


#: Smallest detector window (image pixels) normalisation asks for: below it a red cell spans under
#: about 12 pixels, where detail is gone anyway (flagged by ``min_rbc_px``).
MIN_WINDOW = 64


def window_for(rbc_px: float, max_zoom: float, native: int) -> int:
    """Window side (image pixels) in which these red cells have the trained relative size.

    Low magnification needs no lower bound but :data:`MIN_WINDOW`: any image can be tiled finely, so
    the window depends on the red cells only, not on the image's size. High magnification is clamped to
    ``max_zoom`` times the first pass's window (``native``): a wild estimate cannot ask for a 50x shrink.
    """
    return int(min(max(MIN_WINDOW, round(rbc_px / TARGET_REL_SIZE)), round(native * max_zoom)))


def background_colour(image: np.ndarray) -> tuple[int, ...]:
    """The image's background colour: per-channel median of its brightest quarter (plasma, not cells)."""
    small = image[:: max(1, image.shape[0] // 64), :: max(1, image.shape[1] // 64)].reshape(-1, image.shape[2])
    lum = small.astype(np.int32).sum(axis=1)
    bright = small[lum >= np.percentile(lum, 75)]
    return tuple(int(v) for v in np.median(bright, axis=0))


def shrink_and_pad(image: np.ndarray, factor: float) -> np.ndarray:
    """``image`` resampled by ``factor`` (< 1) and padded with its background back to its own size.

    The detector then sees the field as a lower magnification would show it; boxes found in the
    result map back by dividing by ``factor`` (the image sits in the top-left corner).
    """
    import cv2

    h, w = image.shape[:2]
    nw, nh = max(1, round(w * factor)), max(1, round(h * factor))
    small = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
    canvas = np.empty_like(image)
    canvas[:] = background_colour(image)
    canvas[:nh, :nw] = small
    return canvas
