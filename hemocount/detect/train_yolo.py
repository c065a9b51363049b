"""Train the YOLO cell detector from scratch on BCCD (+ PBC), reproducibly and resumably."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hemocount.errors import HemocountError
from hemocount.io import atomic_write_json


@dataclass
class DetectRecipe:
    """Everything that determines a detector training run (recorded next to the checkpoints)."""

    sources: list[str] = field(default_factory=lambda: ["bccd", "pbc"])
    model: str = "yolo11n.yaml"
    imgsz: int = 416
    epochs: int = 60
    batch: int = 16
    seed: int = 0
    # Stain/colour and scale augmentation: slides come from labs and scanners we have never seen.
    hsv_h: float = 0.04
    hsv_s: float = 0.7
    hsv_v: float = 0.4
    scale: float = 0.5
    degrees: float = 0.0
    flipud: float = 0.5
    fliplr: float = 0.5
    mosaic: float = 1.0
    close_mosaic: int = 10
    max_det: int = 1000
    patience: int = 0
    #: Lab-robust augmentation (hemocount.detect.augment: OD-space stain jitter, defocus, noise, JPEG,
    #: zoom-in to 3x) on top of ultralytics' own; None = off (the recipe of yolo11n-cells v1).
    robust: dict[str, Any] | None = None


def build_training_data(sources: list[str], data_root: str | None, out: Path) -> Path:
    """Write the YOLO folder for ``sources`` (train/val/test kept as their own splits)."""
    from hemocount.datasets.sources import load_sources
    from hemocount.datasets.writers import write_yolo

    records = load_sources(sources, data_root, ("train", "val", "test"))
    train_val = [r for r in records if r.split in ("train", "val")]
    return write_yolo(train_val, out)


def train_detector(
    *,
    out: Path,
    data_root: str | None = None,
    recipe: DetectRecipe | None = None,
    weights: str | None = None,
    resume: bool = False,
) -> Path:
    """Train YOLO and return the path of the best checkpoint (selected on val).

    Args:
        out: Run folder; holds ``data/``, ``recipe.json`` and ultralytics' ``train/``.
        data_root: Dataset root (else ``$HEMOCOUNT_DATA``).
        recipe: Hyper-parameters; defaults to :class:`DetectRecipe`.
        weights: Optional starting weights (a ``.pt`` file), e.g. pretrained ones.
        resume: Continue the interrupted run in ``out`` from its ``last.pt``.
    """
    from hemocount.detect.ultra_env import ultralytics
    from hemocount.runtime import use_all_cores

    ul = ultralytics(verbose=True)
    use_all_cores()
    last = out / "train" / "weights" / "last.pt"
    if resume:
        if not last.exists():
            raise HemocountError(f"{last}: nothing to resume")
        model = ul.YOLO(str(last))
        model.add_callback("on_pretrain_routine_start", lambda _t: use_all_cores())
        recorded = recipe_from_json(out / "recipe.json") if (out / "recipe.json").exists() else DetectRecipe()
        model.train(resume=True, **_trainer(recorded))
        return out / "train" / "weights" / "best.pt"
    recipe = recipe or DetectRecipe()
    if (out / "train").exists():
        raise HemocountError(f"{out / 'train'}: run exists; use --resume or another --out")
    data_yaml = build_training_data(recipe.sources, data_root, out / "data")
    atomic_write_json(out / "recipe.json", {"recipe": asdict(recipe), "weights": weights,
                                            "argv": sys.argv, "data_root": str(data_root or os.environ.get("HEMOCOUNT_DATA"))})
    model = ul.YOLO(recipe.model)
    if weights:
        model = model.load(weights)
    model.add_callback("on_pretrain_routine_start", lambda _t: use_all_cores())
    hyp = asdict(recipe)
    for k in ("sources", "model", "max_det", "robust"):
        hyp.pop(k)
    model.train(data=str(data_yaml), project=str(out.resolve()), name="train", exist_ok=False, device="cpu",
                pretrained=False, plots=False, deterministic=True, workers=0, amp=False, verbose=True,
                max_det=recipe.max_det, **hyp, **_trainer(recipe))
    return out / "train" / "weights" / "best.pt"


def _trainer(recipe: DetectRecipe) -> dict[str, Any]:
    """``trainer=`` for ultralytics when the recipe asks for the lab-robust augmentation (also on resume)."""
    if recipe.robust is None:
        return {}
    from hemocount.detect.augment import RobustAugConfig, robust_trainer

    return {"trainer": robust_trainer(RobustAugConfig(**recipe.robust))}


def recipe_from_json(path: Path) -> DetectRecipe:
    """Read the recipe recorded by a previous run."""
    return DetectRecipe(**json.loads(path.read_text())["recipe"])
