"""Do a slide's WBCs look like the subtype classifier's training labs? (QC flag ``unfamiliar_lab``)

Each WBC's pooled ResNet feature (2048 numbers, the input of the last layer) is projected on the training
crops' first 64 principal axes; its score is the Mahalanobis distance to the nearest class mean there
(one covariance shared by the classes, shrunk 10 % towards its mean variance: Lee et al. 2018). A slide's
score is the mean over its WBCs, compared with a threshold for its number of WBCs: the highest of the
training labs' 95th percentiles of simulated healthy slides of that size drawn from their *validation*
cells (at most 5 % false alarms on each; fewer WBCs than the smallest size: not judged).

Why this score: on the leave-one-lab-out folds it told the held-out lab's slides from the training labs'
where the classifier's own confidence could not (``benchmarks/classif_domain_shift.py``: slides of 50
WBCs of the held-out lab flagged 100 % vs 21 % with 1 - max softmax, fold BCCD, val).

What it cannot tell: whether the differential is wrong, only that the cells are unlike every training
lab's; a lab that looks like one of them passes. The reference belongs to one set of weights (its sha256
is in the manifest): an adapted or retrained checkpoint has none, and the check is then off.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hemocount.errors import WeightsError
from hemocount.summary import WbcFamiliarity

#: Simulated slide sizes (WBCs) that get a threshold; smaller slides are not judged.
SLIDE_SIZES = (20, 50, 100, 200)
#: Share of the training labs' simulated validation slides flagged (per slide size).
FALSE_ALARM = 0.05


@dataclass(frozen=True)
class FeatureReference:
    """The training crops' feature statistics and the per-slide-size thresholds."""

    mu: np.ndarray
    basis: np.ndarray
    means: np.ndarray
    precision: np.ndarray
    thresholds: dict[int, float] = field(default_factory=dict)

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
        cov = (1 - shrink) * cov + shrink * np.trace(cov) / dims * np.eye(dims)
        return cls(mu, basis, means, np.linalg.inv(cov))

    def score(self, feats: np.ndarray) -> np.ndarray:
        """Per-cell distance to the nearest class mean (float32, ``(N,)``)."""
        if len(feats) == 0:
            return np.zeros(0, np.float32)
        z = (np.asarray(feats, np.float64) - self.mu) @ self.basis
        d = z[:, None, :] - self.means[None]
        return np.sqrt(np.einsum("nkd,de,nke->nk", d, self.precision, d).min(1)).astype(np.float32)

    def threshold_for(self, n_wbc: int) -> float | None:
        """The threshold of the largest simulated size <= ``n_wbc`` (None: too few WBCs to judge)."""
        sizes = [s for s in sorted(self.thresholds) if s <= n_wbc]
        return self.thresholds[sizes[-1]] if sizes else None

    def evaluate(self, scores: np.ndarray) -> WbcFamiliarity:
        """The slide's verdict from its WBCs' scores (NaN: not scored, left out)."""
        s = np.asarray(scores, np.float64)
        s = s[~np.isnan(s)]
        t = self.threshold_for(len(s))
        mean = float(s.mean()) if len(s) else None
        return WbcFamiliarity(mean, len(s), t, bool(t is not None and mean is not None and mean > t))

    def with_thresholds(self, thresholds: dict[int, float]) -> FeatureReference:
        """A copy with per-size thresholds."""
        return FeatureReference(self.mu, self.basis, self.means, self.precision, dict(thresholds))

    def save(self, path: Path) -> None:
        """Write the statistics (float32 ``.npz``; the thresholds live in the manifest)."""
        np.savez(path, mu=self.mu.astype(np.float32), basis=self.basis.astype(np.float32),
                 means=self.means.astype(np.float32), precision=self.precision.astype(np.float32))

    @classmethod
    def load(cls, path: Path, thresholds: dict[str, float]) -> FeatureReference:
        """Read statistics written by :meth:`save` with the manifest's thresholds (keys: slide sizes).

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
        return cls(mu, basis, means, prec, {int(k): float(v) for k, v in thresholds.items()})


def slide_thresholds(scores: dict[str, tuple[np.ndarray, np.ndarray]], sizes: tuple[int, ...] = SLIDE_SIZES,
                     n_slides: int = 1000, false_alarm: float = FALSE_ALARM, seed: int = 0) -> dict[int, float]:
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
    """Mean score of simulated healthy slides of one lab (normal adult differential, cells with replacement)."""
    from hemocount.classify.allflag import ScoredPool, draw_slides

    pool = ScoredPool(np.asarray(truth), np.asarray(truth), np.zeros(len(truth)))
    draws = draw_slides(pool, 1, n_wbc, n_slides, seed, blast_fractions=())
    return np.asarray(score)[draws.healthy].mean(1)


__all__ = ["FALSE_ALARM", "SLIDE_SIZES", "FeatureReference", "WbcFamiliarity", "simulated_slide_means",
           "slide_thresholds"]
