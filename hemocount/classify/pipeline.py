"""Attach WBC subtype and ALL probability to the WBC detections of a batch of images."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import supervision as sv

from hemocount.classify.crops import crop_cells, crop_side
from hemocount.classify.familiarity import crop_stain_vectors
from hemocount.domain import FEATURES
from hemocount.summary import AllFlag

UNCERTAIN = "uncertain"
#: Columns of ``data["wbc_stain"]`` (:func:`hemocount.classify.familiarity.crop_stain_vectors`).
STAIN_DIMS = len(FEATURES)


@dataclass
class AllFlagRule:
    """Slide-level ALL flag: at least ``min_cells`` WBCs with ALL probability >= ``prob``. The defaults are
    ``resnet50-all`` v4's rule (chosen on its leave-one-lab-out val folds), used for a checkpoint that
    carries none."""

    prob: float = 0.9
    min_cells: int = 5

    def evaluate(self, all_probs: np.ndarray) -> AllFlag:
        """The flag with its inputs (never a diagnosis)."""
        above = int(np.sum(np.asarray(all_probs) >= self.prob))
        return AllFlag(flagged=above >= self.min_cells, n_above=above, n_wbc=int(len(all_probs)), prob=self.prob,
                       min_cells=self.min_cells)


def empty_fields(dets: sv.Detections) -> None:
    """Set the classifier columns on detections that were not classified."""
    n = len(dets)
    dets.data["subtype"] = np.array([""] * n, dtype=object).astype(str) if n else np.array([], dtype=str)
    dets.data["subtype_prob"] = np.full(n, np.nan, np.float32)
    dets.data["all_prob"] = np.full(n, np.nan, np.float32)
    dets.data["unfamiliarity"] = np.full(n, np.nan, np.float32)
    dets.data["wbc_stain"] = np.full((n, STAIN_DIMS), np.nan, np.float32)


def classify_wbcs(images: list[np.ndarray], dets: list[sv.Detections], subtype: Any | None, all_model: Any | None,
                  min_subtype_prob: float, rbc_px: list[float | None] | None = None) -> None:
    """Classify every WBC of every image in one batched call per classifier (mutates ``dets``).

    ``rbc_px``: each image's red-cell diameter in pixels (``ScaleInfo.rbc_px``), for RBC-scaled classifiers.
    """
    for d in dets:
        empty_fields(d)
    sizes = rbc_px if rbc_px is not None else [None] * len(images)
    for clf, key in ((subtype, "subtype"), (all_model, "all")):
        if clf is None:
            continue
        crops, owners = [], []
        for k, (img, d) in enumerate(zip(images, dets)):
            idx = np.flatnonzero(d.data["class_name"] == "WBC")
            if len(idx):
                side = crop_side(float(getattr(clf, "rbc_k", 0.0)), sizes[k])
                crops.append(crop_cells(img, d.xyxy[idx], clf.size, clf.pad, side)[..., ::-1])
                owners.append((k, idx))
        if not crops:
            continue
        ref = getattr(clf, "reference", None) if key == "subtype" else None
        if ref is not None:
            probs, feats = clf.predict_with_features(np.concatenate(crops))
            far = ref.score(feats)
            colour = crop_stain_vectors(np.concatenate(crops)) if ref.stain is not None else None
        else:
            probs = clf.predict_crops(np.concatenate(crops))
        pos = 0
        for k, idx in owners:
            p = probs[pos:pos + len(idx)]
            d = dets[k]
            if ref is not None:
                d.data["unfamiliarity"][idx] = far[pos:pos + len(idx)]
                if colour is not None:
                    d.data["wbc_stain"][idx] = colour[pos:pos + len(idx)]
            pos += len(idx)
            if key == "subtype":
                names = d.data["subtype"].astype(object)
                best = p.argmax(axis=1)
                conf = p.max(axis=1)
                names[idx] = [clf.classes[b] if c >= min_subtype_prob else UNCERTAIN for b, c in zip(best, conf)]
                d.data["subtype"] = names.astype(str)
                d.data["subtype_prob"][idx] = conf
            else:
                d.data["all_prob"][idx] = p[:, clf.classes.index("ALL")]
