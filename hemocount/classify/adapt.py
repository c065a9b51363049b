"""Adapt the WBC-subtype classifier to a lab from a few of its cells, labelled by moving files.

``hemocount count ... --export-crops`` writes every WBC it classified as ``OUT/crops/<subtype>/<name>.png``
(the square, padded crop the classifier saw, at the image's own resolution). A user moves the wrongly
called ones into the right folder (``uncertain/`` is ignored unless its cells are moved out) and runs
``hemocount adapt classify --data OUT/crops --out DIR``: the shipped model (or ``--weights``) is
fine-tuned on those cells and ``DIR/best.pt`` is a checkpoint that ``--subtype-weights`` accepts.

With a handful of cells per class there is nothing to spare for validation: every labelled cell trains,
and the epoch kept is the one that fits them best (it is scored on the same cells, which says nothing
about other cells of the lab: measure that with your own held-out cells, as the README's adaptation
curve does with held-out labs).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from hemocount import WBC_SUBTYPES
from hemocount.classify.crops import DEFAULT_PAD
from hemocount.classify.data import CellSample
from hemocount.errors import HemocountError
from hemocount.io import IMAGE_SUFFIXES


def crop_box(width: int, height: int, pad: float = DEFAULT_PAD) -> tuple[float, float, float, float]:
    """The cell box inside an exported crop: the crop is that box squared and padded by ``pad`` a side
    (a non-square crop from elsewhere: the centred square of its shorter side)."""
    inner = min(width, height) / (1 + 2 * pad)
    x0, y0 = (width - inner) / 2, (height - inner) / 2
    return (x0, y0, x0 + inner, y0 + inner)


#: In an exported crop's name: cut by its box because its field's red cells could not be measured, though the
#: classifier wants RBC-scaled crops; adapting such a classifier leaves these out.
UNSCALED_MARK = "__boxcrop"


def folder_cells(folder: Path, pad: float = DEFAULT_PAD, rbc_k: float = 0.0) -> list[CellSample]:
    """Labelled cells from class subfolders named by subtype (other folders, e.g. ``uncertain``, skipped).

    ``rbc_k > 0`` (an RBC-scaled classifier): each crop is ``rbc_k`` red-cell diameters wide, as exported;
    crops marked :data:`UNSCALED_MARK` are left out (logged).
    """
    from PIL import Image

    if not folder.is_dir():
        raise HemocountError(f"{folder}: no such folder (class subfolders expected: {', '.join(WBC_SUBTYPES)})")
    known = {*WBC_SUBTYPES, "uncertain", "unclassified"}
    stray = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name not in known)
    if stray:
        # a misspelt class folder would silently drop the user's labelling work
        raise HemocountError(f"{folder}: unknown class folder(s) {', '.join(stray)}; "
                             f"use {', '.join(WBC_SUBTYPES)} (uncertain/ is ignored)")
    cells: list[CellSample] = []
    unscaled: list[str] = []
    for label in WBC_SUBTYPES:
        for path in sorted((folder / label).glob("*")) if (folder / label).is_dir() else []:
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(path) as im:
                    w, h = im.size
            except OSError as exc:
                raise HemocountError(f"{path}: not a readable image ({exc})") from None
            if rbc_k > 0 and UNSCALED_MARK in path.stem:
                unscaled.append(path.name)
                continue
            box = crop_box(w, h, pad if rbc_k <= 0 else 0.0)
            cells.append(CellSample(f"adapt:{label}/{path.name}", "adapt", label, path, box, "train",
                                    rbc_px=min(w, h) / rbc_k if rbc_k > 0 else 0.0))
    if unscaled:
        import logging

        logging.getLogger("hemocount").warning(
            "left out %d crop(s) cut by their box (their fields had no red-cell size), e.g. %s: this classifier "
            "learns from RBC-scaled crops", len(unscaled), unscaled[0])
    if not cells:
        raise HemocountError(f"{folder}: no labelled crops in {', '.join(WBC_SUBTYPES)} subfolders")
    return cells


def adapt_subtype(*, data: Path, out: Path, weights: str | None = None, epochs: int = 8, lr: float = 1e-4,
                  samples_per_epoch: int = 320, seed: int = 0) -> Path:
    """Fine-tune the subtype model on the labelled crops in ``data``; returns ``out/best.pt``.

    The default budget (8 epochs x 320 class-balanced draws, 64 px) runs in a few minutes on 2 CPU cores.
    """
    from hemocount.classify.infer import DEFAULT_CLASSIFIERS
    from hemocount.classify.train import ClassifyRecipe, train_classifier
    from hemocount.weights import load_checkpoint, resolve

    if epochs < 1 or samples_per_epoch < 1 or not lr > 0:
        raise HemocountError("adapt: --epochs and --samples-per-epoch must be at least 1 and --lr positive")
    if (out / "best.pt").exists() or (out / "last.pt").exists():
        raise HemocountError(f"{out}: holds an earlier adaptation; choose another --out")
    entry = resolve(weights or DEFAULT_CLASSIFIERS["wbc_subtype"], task="wbc_subtype", backend="resnet")
    size = int(entry.imgsz or 64)
    start = load_checkpoint(entry.path, "classifier")
    start_meta = start.get("meta", {}) if isinstance(start, dict) else {}
    rbc_k = float(start_meta.get("rbc_k", 0.0))
    cells = folder_cells(data, rbc_k=rbc_k)
    counts = {c: sum(x.label == c for x in cells) for c in WBC_SUBTYPES}
    missing = [c for c, n in counts.items() if n == 0]
    if missing:
        # the classes stay in the model; only their examples are missing, which class-balanced sampling skips
        import logging

        logging.getLogger("hemocount").warning("no cells for %s: those classes are not adapted", ", ".join(missing))
    val = [replace(c, split="val") for c in cells]  # no cells to spare: see the module docstring
    import logging

    logging.getLogger("hemocount").warning(
        "adapt: every labelled cell trains; the 'val' scores printed below are on those same cells, not on "
        "held-out ones (check the adapted model on cells you kept aside). Classes without cells still shift.")
    recipe = ClassifyRecipe(task="wbc_subtype", size=size, epochs=epochs, lr=lr, seed=seed,
                            samples_per_epoch=samples_per_epoch, batch=32,
                            input_norm=start_meta.get("input_norm", "imagenet"),  # the start model's layers
                            rbc_k=rbc_k)  # and its crops
    return train_classifier(cells=cells + val, out=out, recipe=recipe, weights=str(entry.path))


def write_crop(image: np.ndarray, box: np.ndarray, folder: Path, label: str, name: str,
               pad: float = DEFAULT_PAD, side: float | None = None) -> Path:
    """One WBC's square crop at the image's resolution (padded box, or ``side`` pixels: RBC-scaled), as
    ``folder/label/name.png`` (atomically)."""
    import cv2

    from hemocount.classify.crops import crop_cell, square_box
    from hemocount.io import atomic_write_bytes

    x1, _, x2, _ = square_box(box, pad, side)
    crop = crop_cell(image, box, max(8, x2 - x1), pad, side)  # the square at the image's own resolution
    ok, buf = cv2.imencode(".png", crop)
    if not ok:
        raise OSError(f"{folder / label / name}: PNG encoding failed")
    path = folder / label / f"{name}.png"
    atomic_write_bytes(path, buf.tobytes())
    return path
