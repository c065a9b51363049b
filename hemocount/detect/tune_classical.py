"""Choose the classical detector's parameters on a training split by random search.

"Training" the baseline means: draw parameter sets around the current defaults, score each by
COCO mAP50 on the training images, keep the best, then choose per-class count thresholds on the
fully labelled training images. Validation and test are never looked at.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from hemocount.datasets.records import AnnotatedImage
from hemocount.detect.classical import DEFAULT_CONF, ClassicalDetector, ClassicalParams
from hemocount.errors import HemocountError
from hemocount.io import atomic_write_json

log = logging.getLogger("hemocount")

#: Searched parameters and their ranges; a step moves a parameter by a fraction of its range.
SEARCH: dict[str, tuple[float, float]] = {
    "stain_threshold": (40.0, 75.0),
    "platelet_stain_threshold": (25.0, 60.0),
    "density_threshold": (28.0, 48.0),
    "nucleus_min_area": (600.0, 2500.0),
    "nucleus_merge": (4, 24),
    "wbc_pad": (0.1, 0.6),
    "wbc_min_side": (80.0, 170.0),
    "platelet_min_area": (15.0, 150.0),
    "platelet_max_area": (500.0, 2500.0),
    "platelet_pad": (0.0, 14.0),
    "pallor_close": (5.0, 35.0),
    "wbc_exclusion": (0.5, 1.1),
    "rbc_area": (4000.0, 11000.0),
    "rbc_area_sigma": (0.25, 0.8),
    "peak_distance": (15.0, 45.0),
    "peak_ratio": (0.3, 0.85),
}


def _draw(rng: random.Random, base: ClassicalParams, spread: float) -> ClassicalParams:
    """A random neighbour of ``base``: one to three parameters move by up to ``spread`` of their range."""
    values: dict[str, Any] = {}
    for name in rng.sample(sorted(SEARCH), rng.randint(1, 3)):
        lo, hi = SEARCH[name]
        cur = getattr(base, name)
        v = min(hi, max(lo, cur + rng.uniform(-spread, spread) * (hi - lo)))
        values[name] = round(v) if isinstance(cur, int) else round(v, 3)
    return replace(base, **values)


def score(params: ClassicalParams, records: list[AnnotatedImage], images: list[Any]) -> tuple[float, list[Any]]:
    """mAP50 of ``params`` on ``records`` (images already decoded), and the predictions."""
    from hemocount import CELL_CLASSES
    from hemocount.detect.evaluate import MAP_CONF, coco_map

    det = ClassicalDetector.from_params(params)
    preds = det.predict(images, conf={c: MAP_CONF for c in CELL_CLASSES}, iou=0.5, max_det=1000)
    return float(coco_map(records, preds)["mAP50"] or 0.0), preds


def tune_classical(*, out: str | Path, records: list[AnnotatedImage], trials: int = 60, seed: int = 0,
                   start: ClassicalParams | None = None) -> Path:
    """Random search on ``records`` (a training split); writes ``out/params.json`` and ``out/search.jsonl``.

    Raises:
        HemocountError: No records, or records that are not a training split.
    """
    from hemocount.detect.evaluate import choose_thresholds
    from hemocount.io import read_image

    if not records:
        raise HemocountError("no training images to tune the classical detector on")
    if any(r.split != "train" for r in records):
        raise HemocountError("the classical detector is tuned on training images only")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    images = [read_image(r.path) for r in records]
    rng = random.Random(seed)
    best = start or ClassicalParams()
    t0 = time.perf_counter()
    best_map, best_preds = score(best, records, images)
    lines = [json.dumps({"trial": 0, "mAP50": best_map, "params": asdict(best)})]
    log.info("classical: start mAP50 %.4f on %d training images", best_map, len(records))
    for t in range(1, trials + 1):
        spread = 0.3 * (1 - t / (trials + 1)) + 0.05  # wide first, then local
        cand = _draw(rng, best, spread)
        m, preds = score(cand, records, images)
        lines.append(json.dumps({"trial": t, "mAP50": m, "params": asdict(cand)}))
        if m > best_map:
            best, best_map, best_preds = cand, m, preds
            log.info("classical: trial %d mAP50 %.4f (best)", t, m)
    (out / "search.jsonl").write_text("\n".join(lines) + "\n")
    complete = [i for i, r in enumerate(records) if r.complete]
    if complete:
        conf, conf_source = choose_thresholds([records[i] for i in complete], [best_preds[i] for i in complete]), \
            "chosen on the fully labelled training images"
    else:
        conf, conf_source = dict(DEFAULT_CONF), "defaults (no fully labelled training image)"
    path = out / "params.json"
    atomic_write_json(path, {"params": asdict(best), "conf": conf, "conf_source": conf_source,
                             "train_mAP50": round(best_map, 4), "images": len(records),
                             "complete_images": len(complete), "trials": trials, "seed": seed,
                             "seconds": round(time.perf_counter() - t0, 1)})
    return path
