"""Do a slide's WBCs look like the subtype classifier's training labs? (QC flag ``unfamiliar_lab``)

Three tests, each on the mean over the slide's WBCs and compared with a threshold for its number of
WBCs; the slide is flagged if any test that has a threshold fires:

- feature distance: the pooled ResNet feature (the input of the last layer) projected on the training
  crops' first 64 principal axes, Mahalanobis distance to the nearest class mean there (one covariance
  shared by the classes, shrunk 10 % towards its mean variance; Lee et al. 2018);
- uncertainty: 1 - the top subtype probability;
- crop colour: the nine stain numbers of the field check (:mod:`hemocount.domain`) measured on each WBC
  crop as the classifier cuts it; the slide's mean vector, Mahalanobis distance to the nearest training
  lab (one Gaussian per lab of its train crops).

Which tests get a threshold is part of the weights' manifest (``thresholds.domain``). Thresholds: the
highest of the training labs' quantiles of simulated healthy slides of 20 WBCs (normal adult
differential) drawn from their *validation* cells, so each lab has at most 5 % of its 20-WBC slides
flagged there, split between the tests (larger slides, whose means vary less, fewer); applied to every
slide of at least 20 WBCs; fewer: not judged.

Why: on the leave-one-lab-out folds of v2's recipe (``benchmarks/classif_domain_shift.py``, val, 20 WBCs)
distance and uncertainty together caught held-out BCCD and Tecom and missed PBC and LISC; v2 shipped
with those two. v3's recipe (per-crop channel normalisation, half the training crops grey) makes the
features ignore stain by design: the two then caught held-out BCCD only, while the crop colour, which needs
no model, flagged every held-out lab on 100 % of its val slides of 20-200 WBCs
(``benchmarks/wbc_stain_shift.py``); v3 ships with the colour test alone. It says "another lab's stain",
not "wrong differential": the message asks to validate.

The reference belongs to one set of weights (its sha256 is in the manifest): an adapted or retrained
checkpoint has none, and the check is then off.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hemocount.domain import FEATURES as STAIN_FEATURES
from hemocount.domain import StainReference, stain_features
from hemocount.errors import WeightsError
from hemocount.summary import WbcFamiliarity

#: Simulated slide sizes (WBCs) that get a threshold; smaller slides are not judged. One size: the 20-WBC
#: threshold holds for every larger slide. Why: per-size thresholds (20, 50, 100, 200), tight for large
#: slides, were fitted on BCCD's 85 val cells (9 lymphocytes, 5 monocytes) and flagged 12-73 % of simulated
#: BCCD *test* slides of 20-200 WBCs (benchmarks/results/classif_domain_shift_shipped_persize_test.json).
SLIDE_SIZES = (20,)
#: Share of each training lab's simulated 20-WBC validation slides the tests with a threshold may flag together.
FALSE_ALARM = 0.05


@dataclass(frozen=True)
class FeatureReference:
    """The training crops' feature statistics and the per-slide-size thresholds."""

    mu: np.ndarray
    basis: np.ndarray
    means: np.ndarray
    precision: np.ndarray
    thresholds: dict[int, float] = field(default_factory=dict)
    #: Per slide size: threshold on the mean of 1 - top subtype probability (None: distance only).
    uncertainty_thresholds: dict[int, float] = field(default_factory=dict)
    #: sha256 of the file it was loaded from (the manifest's), None for a fitted one.
    sha256: str | None = None
    #: The training labs' WBC-crop colours (one Gaussian per lab of :func:`crop_stain_vectors`; None: no
    #: colour test) and its per-size thresholds on the distance of a slide's mean crop colour.
    stain: StainReference | None = None
    stain_thresholds: dict[int, float] = field(default_factory=dict)

    @classmethod
    def fit(cls, feats: np.ndarray, labels: np.ndarray, dims: int = 64, shrink: float = 0.1) -> FeatureReference:
        """Fit on training crops' features ``(N, D)`` and their subtype labels (no thresholds yet)."""
        feats = np.asarray(feats, np.float64)
        mu = feats.mean(0)
        _, _, vt = np.linalg.svd(feats - mu, full_matrices=False)
        basis = vt[:dims].T
        z = (feats - mu) @ basis
        classes = np.unique(labels)
        means = np.stack([z[labels == c].mean(0) for c in classes])
        cov = np.cov(z - means[np.searchsorted(classes, labels)], rowvar=False)
        k = basis.shape[1]  # fewer than ``dims`` when there are fewer samples or features
        cov = (1 - shrink) * cov + shrink * np.trace(cov) / k * np.eye(k)
        return cls(mu, basis, means, np.linalg.inv(cov))

    def score(self, feats: np.ndarray) -> np.ndarray:
        """Per-cell distance to the nearest class mean (float32, ``(N,)``)."""
        if len(feats) == 0:
            return np.zeros(0, np.float32)
        z = (np.asarray(feats, np.float64) - self.mu) @ self.basis
        d = z[:, None, :] - self.means[None]
        return np.sqrt(np.einsum("nkd,de,nke->nk", d, self.precision, d).min(1)).astype(np.float32)

    def threshold_for(self, n_wbc: int, table: dict[int, float] | None = None) -> float | None:
        """The threshold of the largest simulated size <= ``n_wbc`` (None: too few WBCs to judge)."""
        table = self.thresholds if table is None else table
        sizes = [s for s in sorted(table) if s <= n_wbc]
        return table[sizes[-1]] if sizes else None

    def evaluate(self, scores: np.ndarray, top_probs: np.ndarray | None = None,
                 stain_vectors: np.ndarray | None = None) -> WbcFamiliarity:
        """The slide's verdict from its WBCs' distances, top subtype probabilities and crop colours
        (``(N, 9)``; a NaN distance: not scored, its row left out of every test)."""
        s = np.asarray(scores, np.float64)
        keep = ~np.isnan(s)
        s = s[keep]
        unc = tu = None
        if top_probs is not None and self.uncertainty_thresholds:
            u = 1 - np.asarray(top_probs, np.float64)[keep]
            tu = self.threshold_for(len(u), self.uncertainty_thresholds)
            unc = float(u.mean()) if len(u) else None
        sd = st = None
        if stain_vectors is not None and self.stain is not None and self.stain_thresholds:
            v = np.asarray(stain_vectors, np.float64).reshape(-1, len(STAIN_FEATURES))[keep]
            v = v[~np.isnan(v).any(axis=1)]
            st = self.threshold_for(len(v), self.stain_thresholds)
            sd = self.stain.distance(v) if len(v) else None
        return WbcFamiliarity(float(s.mean()) if len(s) else None, len(s), self.threshold_for(len(s)), unc, tu,
                              sd, st)

    def with_thresholds(self, thresholds: dict[int, float],
                        uncertainty_thresholds: dict[int, float] | None = None,
                        stain: StainReference | None = None,
                        stain_thresholds: dict[int, float] | None = None) -> FeatureReference:
        """A copy with per-size thresholds (distance, and optionally uncertainty and crop colour)."""
        return FeatureReference(self.mu, self.basis, self.means, self.precision, dict(thresholds),
                                dict(uncertainty_thresholds or {}), self.sha256, stain, dict(stain_thresholds or {}))

    def save(self, path: Path) -> None:
        """Write the statistics (float32 ``.npz``; the thresholds live in the manifest)."""
        np.savez(path, mu=self.mu.astype(np.float32), basis=self.basis.astype(np.float32),
                 means=self.means.astype(np.float32), precision=self.precision.astype(np.float32))

    @classmethod
    def load(cls, path: Path, thresholds: dict[str, float], uncertainty_thresholds: dict[str, float] | None = None,
             sha256: str | None = None, stain: dict[str, Any] | None = None) -> FeatureReference:
        """Read statistics written by :meth:`save` with the manifest's thresholds (keys: slide sizes) and,
        if given, the manifest's crop-colour reference (``{"labs": ..., "slide_thresholds": ...}``).

        Raises:
            WeightsError: Unreadable file or inconsistent shapes.
        """
        try:
            with np.load(path) as z:
                parts = [np.asarray(z[k], np.float64) for k in ("mu", "basis", "means", "precision")]
        except (OSError, KeyError, ValueError) as exc:
            raise WeightsError(f"{path}: cannot read the WBC feature reference ({exc})") from None
        mu, basis, means, prec = parts
        if basis.shape[0] != mu.shape[0] or means.shape[1] != basis.shape[1] or prec.shape != (basis.shape[1],) * 2:
            raise WeightsError(f"{path}: WBC feature reference has inconsistent shapes")
        colour, colour_th = None, {}
        if stain is not None:
            if list(stain.get("features", STAIN_FEATURES)) != list(STAIN_FEATURES):
                raise WeightsError(f"{path}: the manifest's WBC colour reference measures {stain['features']}, "
                                   f"not this hemocount's {list(STAIN_FEATURES)}")
            try:
                colour = StainReference.from_json({"labs": stain["labs"], "threshold": float("inf")})
                colour_th = {int(k): float(v) for k, v in stain["slide_thresholds"].items()}
            except (KeyError, TypeError, ValueError) as exc:
                raise WeightsError(f"{path}: the manifest's WBC colour reference is malformed ({exc})") from None
        return cls(mu, basis, means, prec, {int(k): float(v) for k, v in thresholds.items()},
                   {int(k): float(v) for k, v in (uncertainty_thresholds or {}).items()}, sha256, colour, colour_th)


def crop_stain_vectors(crops_rgb: np.ndarray) -> np.ndarray:
    """The nine stain numbers (:func:`hemocount.domain.stain_features`: Lab colour of background, stained
    pixels and darkest pixels) of each RGB crop, ``(N, 9)`` float32."""
    if len(crops_rgb) == 0:
        return np.zeros((0, len(STAIN_FEATURES)), np.float32)
    return np.array([[stain_features(np.ascontiguousarray(c[..., ::-1]))[k] for k in STAIN_FEATURES]
                     for c in crops_rgb], np.float32)


def slide_thresholds(scores: dict[str, tuple[np.ndarray, np.ndarray]], sizes: tuple[int, ...] = SLIDE_SIZES,
                     n_slides: int = 1000, false_alarm: float = FALSE_ALARM,
                     seed: int = 0) -> dict[int, float]:
    """Per-size thresholds: the highest of the labs' ``1 - false_alarm`` quantiles of simulated healthy slides,
    so that no training lab has more than ``false_alarm`` of its slides flagged (a pooled quantile let one
    lab's slides be flagged 13-15 % of the time on the LOLO folds).

    Args:
        scores: Per lab, its cells' scores and true subtypes (validation cells of the training labs).
    """
    out = {}
    for n in sizes:
        out[n] = round(max(float(np.quantile(simulated_slide_means(s, t, n, n_slides, seed + 100 * i + n),
                                             1 - false_alarm))
                           for i, (s, t) in enumerate(scores[k] for k in sorted(scores))), 4)
    return out


def simulated_slide_means(score: np.ndarray, truth: np.ndarray, n_wbc: int, n_slides: int, seed: int) -> np.ndarray:
    """Mean score of simulated healthy slides of one lab (normal adult differential, cells with replacement);
    ``score`` may be per-cell vectors ``(N, d)`` (crop colours), then the means are ``(n_slides, d)``."""
    from hemocount.classify.allflag import healthy_slides

    return np.asarray(score)[healthy_slides(np.asarray(truth), n_wbc, n_slides, np.random.default_rng(seed))].mean(1)


def stain_slide_thresholds(ref: StainReference, vectors: dict[str, tuple[np.ndarray, np.ndarray]],
                           sizes: tuple[int, ...] = SLIDE_SIZES, n_slides: int = 1000,
                           false_alarm: float = FALSE_ALARM, seed: int = 0) -> dict[int, float]:
    """Per-size thresholds on the distance of a slide's mean crop colour to the nearest lab of ``ref``: the
    highest of the labs' ``1 - false_alarm`` quantiles (``vectors``: per lab, its val cells' colour vectors
    and true subtypes), as :func:`slide_thresholds` does for the per-cell scores."""
    out = {}
    for n in sizes:
        out[n] = round(max(float(np.quantile([ref.distance(m) for m in simulated_slide_means(
            np.asarray(v, np.float64), t, n, n_slides, seed + 100 * i + n)], 1 - false_alarm))
            for i, (v, t) in enumerate(vectors[k] for k in sorted(vectors))), 4)
    return out


__all__ = [
    "FALSE_ALARM",
    "SLIDE_SIZES",
    "FeatureReference",
    "WbcFamiliarity",
    "crop_stain_vectors",
    "simulated_slide_means",
    "slide_thresholds",
    "stain_slide_thresholds",
]
