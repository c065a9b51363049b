"""Colour normalisation of WBC crops: map a crop's colour statistics onto a fixed reference.

The candidates of ``benchmarks/classif_colour_norm.py`` (a diagnostic: the product applies the winner,
per-crop channel standardisation, inside the model, ``train classify --input-norm instance``).

Each normaliser takes RGB uint8 crops ``(N, H, W, 3)`` and returns RGB uint8 crops of the same shape, so it
can sit between :func:`hemocount.classify.crops.crop_cell` and the model in training and inference alike.
The reference (:class:`Reference`) is computed once from training crops (:func:`fit_reference`), weighted as
training draws them, and would be stored with a checkpoint.

Spaces (all float32):

- ``lab``: CIE L*a*b* (OpenCV, D65; L in [0, 100]): Reinhard et al. 2001 colour transfer.
- ``rgb``: RGB in [0, 255]: per-channel standardisation.
- ``hed``: stain densities, optical density ``-log10((I + 1) / 256)`` projected on the Ruifrok-Johnston
  haematoxylin/eosin/DAB vectors of :mod:`hemocount.stain` (Romanowsky stains: methylene blue/azure act like
  haematoxylin, eosin like eosin).

Per-crop statistics include the crop's context (red cells, background), so they also carry class information
(a basophil crop is darker than a neutrophil crop): normalising each crop on its own removes some of it.
:func:`match_to_reference` with ``source`` statistics of a whole lab or slide (see :func:`mean_stats`) moves
every crop of that lab by the same transform and keeps the differences between its cells.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hemocount.stain import HED_FROM_RGB, RGB_FROM_HED

SPACES = ("lab", "rgb", "hed")
_HED_FROM_RGB = HED_FROM_RGB.astype(np.float32)
_RGB_FROM_HED = RGB_FROM_HED.astype(np.float32)
#: Standard deviations below this (in the space's units) are treated as this, so a flat crop is not blown up.
_MIN_STD = 1e-2
#: Optical density (summed over RGB) below which a pixel is background/unstained for Macenko's fit.
_OD_BACKGROUND = 0.15


@dataclass(frozen=True)
class Reference:
    """Target colour statistics in one space: per-channel mean and standard deviation, shape ``(3,)`` each."""

    space: str
    mean: np.ndarray
    std: np.ndarray

    def as_dict(self) -> dict[str, object]:
        """JSON-serialisable form (for a checkpoint's metadata or a results file)."""
        return {"space": self.space, "mean": [round(float(v), 4) for v in self.mean],
                "std": [round(float(v), 4) for v in self.std]}


def to_space(crops_rgb: np.ndarray, space: str) -> np.ndarray:
    """RGB uint8 ``(N, H, W, 3)`` -> float32 ``(N, H, W, 3)`` in ``space`` (one of :data:`SPACES`)."""
    import cv2

    x = np.asarray(crops_rgb)
    if space == "rgb":
        return x.astype(np.float32)
    if space == "lab":
        n, h, w, _ = x.shape
        flat = (x.reshape(n * h, w, 3).astype(np.float32) / np.float32(255))
        return cv2.cvtColor(flat, cv2.COLOR_RGB2LAB).reshape(n, h, w, 3)
    if space == "hed":
        return _od(x) @ _HED_FROM_RGB
    raise ValueError(f"unknown colour space {space!r}; valid: {', '.join(SPACES)}")


def from_space(x: np.ndarray, space: str) -> np.ndarray:
    """Inverse of :func:`to_space`: float32 ``(N, H, W, 3)`` in ``space`` -> RGB uint8 (clipped)."""
    import cv2

    if space == "rgb":
        rgb = x
    elif space == "lab":
        n, h, w, _ = x.shape
        rgb = cv2.cvtColor(np.ascontiguousarray(x, np.float32).reshape(n * h, w, 3), cv2.COLOR_LAB2RGB)
        rgb = rgb.reshape(n, h, w, 3) * np.float32(255)
    elif space == "hed":
        rgb = _rgb_of_od(x @ _RGB_FROM_HED)
    else:
        raise ValueError(f"unknown colour space {space!r}; valid: {', '.join(SPACES)}")
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def crop_stats(crops_rgb: np.ndarray, space: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-crop, per-channel mean and standard deviation in ``space``: two ``(N, 3)`` float64 arrays."""
    x = to_space(crops_rgb, space).astype(np.float64)
    return x.mean(axis=(1, 2)), x.std(axis=(1, 2))


def mean_stats(mean: np.ndarray, std: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Weighted average of per-crop statistics (``(N, 3)`` each): the statistics of a typical crop."""
    w = np.full(len(mean), 1.0 / len(mean)) if weights is None else np.asarray(weights, float) / np.sum(weights)
    return w @ mean, w @ std


def fit_reference(crops_rgb: np.ndarray, space: str, weights: np.ndarray | None = None) -> Reference:
    """The reference statistics of training crops: the ``weights``-weighted mean of their per-crop statistics.

    Args:
        crops_rgb: Training crops, RGB uint8 ``(N, H, W, 3)``.
        space: One of :data:`SPACES`.
        weights: Per-crop weights, e.g. ``train.sampling_weights`` (how often training draws each crop);
            None = every crop equally.
    """
    m, s = mean_stats(*crop_stats(crops_rgb, space), weights)
    return Reference(space, m.astype(np.float32), s.astype(np.float32))


def match_to_reference(crops_rgb: np.ndarray, ref: Reference, source: tuple[np.ndarray, np.ndarray] | None = None,
                       scale_std: bool = True) -> np.ndarray:
    """Shift (and scale) each channel so its statistics become ``ref``'s (Reinhard colour transfer).

    Args:
        crops_rgb: RGB uint8 ``(N, H, W, 3)``.
        ref: Target statistics (its ``space`` is the space the transfer happens in).
        source: ``(mean, std)`` of shape ``(3,)`` to map from, the same for every crop (e.g. a lab's or slide's
            :func:`mean_stats`); None = each crop's own statistics (per-crop normalisation).
        scale_std: False = match the mean only (a shift in ``space``; in ``rgb``, use :func:`grey_world`).
    """
    x = to_space(crops_rgb, ref.space)
    if source is None:
        mu, sd = x.mean(axis=(1, 2), keepdims=True), x.std(axis=(1, 2), keepdims=True)
    else:
        mu = np.asarray(source[0], np.float32).reshape(1, 1, 1, 3)
        sd = np.asarray(source[1], np.float32).reshape(1, 1, 1, 3)
    gain = ref.std.reshape(1, 1, 1, 3) / np.maximum(sd, _MIN_STD) if scale_std else np.float32(1)
    return from_space((x - mu) * gain + ref.mean.reshape(1, 1, 1, 3), ref.space)


def grey_world(crops_rgb: np.ndarray, ref: Reference) -> np.ndarray:
    """Grey-world white balance towards a reference: each RGB channel is multiplied so the crop's channel
    means become ``ref.mean`` (a von Kries diagonal gain; ``ref`` must be in ``rgb``)."""
    if ref.space != "rgb":
        raise ValueError("grey_world needs an rgb reference")
    x = np.asarray(crops_rgb, np.float32)
    gain = ref.mean.reshape(1, 1, 1, 3) / np.maximum(x.mean(axis=(1, 2), keepdims=True), 1.0)
    return np.clip(np.rint(x * gain), 0, 255).astype(np.uint8)


def grayscale3(crops_rgb: np.ndarray) -> np.ndarray:
    """Luma (ITU-R BT.601, as OpenCV's RGB2GRAY) replicated to three channels: drops hue entirely."""
    import cv2

    n, h, w, _ = crops_rgb.shape
    g = cv2.cvtColor(np.ascontiguousarray(crops_rgb).reshape(n * h, w, 3), cv2.COLOR_RGB2GRAY).reshape(n, h, w, 1)
    return np.repeat(g, 3, axis=3)


@dataclass(frozen=True)
class StainBasis:
    """Macenko's stain model: two unit optical-density vectors (rows, ``(2, 3)``: the bluer/violet stain first)
    and the 99th-percentile density of each stain, ``(2,)``."""

    vectors: np.ndarray
    max_conc: np.ndarray


def _od(crops_rgb: np.ndarray) -> np.ndarray:
    """Optical density ``-log10((I + 1) / 256)`` of RGB uint8 pixels, float32."""
    return -np.log10((np.asarray(crops_rgb, np.float32) + 1) / np.float32(256))


def _rgb_of_od(od: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_od` (float32, unclipped)."""
    return np.float32(256) * np.power(np.float32(10), -np.asarray(od, np.float32)) - 1


def fit_stain_vectors(od_pixels: np.ndarray, alpha: float = 1.0) -> np.ndarray | None:
    """Macenko et al. 2009: the two stain vectors spanning stained pixels' optical density ``(P, 3)``.

    The plane of the two largest principal directions holds the pixels; the stains are the directions at the
    ``alpha`` and ``100 - alpha`` percentiles of angle in that plane. Returns ``(2, 3)`` unit rows with the
    vector absorbing more red first (violet nucleus stain; the pink eosin absorbs mostly green), or None if
    fewer than 50 stained pixels.
    """
    od = od_pixels[od_pixels.sum(axis=1) > _OD_BACKGROUND]
    if len(od) < 50:
        return None
    _, vecs = np.linalg.eigh(np.cov(od.T.astype(np.float64)))
    plane = vecs[:, 1:3]  # eigh sorts ascending: the two largest
    plane = plane * np.where(plane.sum(axis=0) < 0, -1.0, 1.0)  # point into positive density
    proj = od @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, [alpha, 100 - alpha])
    v = np.stack([plane @ np.array([np.cos(a), np.sin(a)]) for a in (lo, hi)])
    v = v * np.where(v.sum(axis=1, keepdims=True) < 0, -1.0, 1.0)
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    return v if v[0, 0] >= v[1, 0] else v[::-1]


def stain_concentrations(od_pixels: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Least-squares densities ``(P, 2)`` of the two stains ``vectors`` ``(2, 3)`` for OD pixels ``(P, 3)``."""
    return np.linalg.lstsq(vectors.T, od_pixels.T, rcond=None)[0].T


def fit_stain_basis(crops_rgb: np.ndarray, weights: np.ndarray | None = None, max_pixels: int = 200_000,
                    seed: int = 0) -> StainBasis:
    """Reference stain basis of training crops: vectors fitted on a (weighted) pixel sample of all crops, and
    the weighted mean of each crop's 99th-percentile stain density under them."""
    rng = np.random.default_rng(seed)
    n, h, w, _ = crops_rgb.shape
    p = None if weights is None else np.asarray(weights, float) / np.sum(weights)
    pick = rng.choice(n, size=max(1, max_pixels // (h * w)), replace=True, p=p)
    vectors = fit_stain_vectors(_od(crops_rgb[pick]).reshape(-1, 3))
    if vectors is None:
        raise ValueError("no stained pixels in the reference crops")
    maxc = np.stack([np.percentile(stain_concentrations(_od(c).reshape(-1, 3), vectors), 99, axis=0)
                     for c in crops_rgb])
    wm = np.full(n, 1.0 / n) if p is None else p
    return StainBasis(vectors.astype(np.float32), (wm @ maxc).astype(np.float32))


def macenko(crops_rgb: np.ndarray, ref: StainBasis) -> np.ndarray:
    """Per-crop Macenko stain normalisation: each crop's own two stain vectors and densities are re-expressed
    in the reference's vectors (each paired with the closer reference vector), each stain's 99th-percentile
    density scaled to the reference's. A crop with too few stained pixels for a fit keeps its own colours."""
    out = np.array(crops_rgb, copy=True)
    for i, c in enumerate(crops_rgb):
        od = _od(c).reshape(-1, 3)
        v = fit_stain_vectors(od)
        if v is None:
            continue
        if np.trace(v @ ref.vectors.T) < np.trace(v[::-1] @ ref.vectors.T):
            v = v[::-1]  # pair each of the crop's stains with the reference stain it is closest to
        conc = stain_concentrations(od, v)
        scale = ref.max_conc / np.maximum(np.percentile(conc, 99, axis=0), 1e-3)
        od_new = (conc * scale) @ ref.vectors
        out[i] = np.clip(np.rint(_rgb_of_od(od_new)), 0, 255).astype(np.uint8).reshape(c.shape)
    return out
