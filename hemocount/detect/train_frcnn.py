"""Train the Faster R-CNN ResNet-50 FPN cell detector (from scratch by default), resumably.

``out/last.pt`` holds model, optimiser, scheduler, random-generator states and the
position inside the epoch; it is written every ``checkpoint_every`` iterations and
after each epoch, so ``resume=True`` continues exactly where the run stopped.
``out/best.pt`` is the compact fp16 checkpoint of the epoch with the best val mAP50,
``out/log.jsonl`` one line per epoch (losses, val mAP).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hemocount import CELL_CLASSES
from hemocount.datasets.records import AnnotatedImage
from hemocount.errors import HemocountError
from hemocount.io import atomic_write_json

log = logging.getLogger("hemocount")


@dataclass
class FrcnnRecipe:
    """Everything that determines a Faster R-CNN training run (recorded in ``recipe.json``)."""

    sources: list[str] = field(default_factory=lambda: ["bccd"])
    min_size: int = 384
    max_size: int | None = None  # None: 4/3 of min_size (BCCD's 640x480 aspect)
    norm: str = "gn"
    epochs: int = 20
    batch: int = 2
    optimizer: str = "adamw"
    lr: float = 2e-4
    weight_decay: float = 0.05
    momentum: float = 0.9  # SGD only
    warmup_iters: int = 200
    grad_clip: float = 10.0
    checkpoint_every: int = 25
    seed: int = 0
    # Flips and 90-degree turns: a smear has no up or left. Colour jitter: stains differ between labs.
    hflip: float = 0.5
    vflip: float = 0.5
    rot90: float = 0.5
    brightness: float = 0.25
    contrast: float = 0.25
    saturation: float = 0.4
    hue: float = 0.04
    box_batch_per_image: int = 256
    val_iou: float = 0.5
    val_max_det: int = 300


def recipe_from_json(path: Path) -> FrcnnRecipe:
    """Read the recipe recorded by a previous run."""
    return FrcnnRecipe(**json.loads(path.read_text())["recipe"])


def augment(img: Any, boxes: Any, recipe: FrcnnRecipe, gen: Any) -> tuple[Any, Any]:
    """Random flips, 90-degree turn and colour jitter of a float ``(3, H, W)`` image in [0, 1] and its xyxy boxes."""
    import torch
    from torchvision.transforms.v2 import functional as F

    def coin(p: float) -> bool:
        return bool(torch.rand(1, generator=gen) < p)

    def u(m: float) -> float:
        return float(1 + m * (2 * torch.rand(1, generator=gen) - 1))

    boxes = boxes.clone()
    h, w = img.shape[-2:]
    if coin(recipe.hflip):
        img = img.flip(-1)
        boxes[:, [0, 2]] = w - boxes[:, [2, 0]]
    if coin(recipe.vflip):
        img = img.flip(-2)
        boxes[:, [1, 3]] = h - boxes[:, [3, 1]]
    if coin(recipe.rot90):
        # Counter-clockwise: pixel (x, y) moves to (y, w - x).
        img = torch.rot90(img, 1, dims=(-2, -1))
        boxes = torch.stack([boxes[:, 1], w - boxes[:, 2], boxes[:, 3], w - boxes[:, 0]], dim=1)
    img = F.adjust_brightness(img, u(recipe.brightness))
    img = F.adjust_contrast(img, u(recipe.contrast))
    img = F.adjust_saturation(img, u(recipe.saturation))
    img = F.adjust_hue(img, float(recipe.hue * (2 * torch.rand(1, generator=gen) - 1)))
    return img.clamp_(0, 1), boxes


def _load_images(records: list[AnnotatedImage]) -> list[tuple[Any, Any, Any]]:
    """``(uint8 RGB CHW image, float xyxy boxes, int64 labels)`` per record, read once."""
    import torch

    from hemocount.io import read_image

    out = []
    for r in records:
        img = torch.from_numpy(read_image(r.path)[:, :, ::-1].copy()).permute(2, 0, 1).contiguous()
        labels = torch.tensor([CELL_CLASSES.index(c) + 1 for c in r.classes], dtype=torch.int64)
        out.append((img, torch.as_tensor(r.boxes, dtype=torch.float32).reshape(-1, 4), labels))
    return out


def load_start_weights(model: Any, spec: str, norm: str) -> int:
    """Copy a user's weights into ``model`` where names and shapes fit; returns the tensors copied.

    ``spec`` is a checkpoint path (a hemocount ``.pt`` or any Faster R-CNN state dict) or a
    torchvision weights enum name, e.g. ``FasterRCNN_ResNet50_FPN_Weights.COCO_V1`` or
    ``ResNet50_Weights.IMAGENET1K_V2`` (torchvision downloads these on the user's request only).

    Raises:
        WeightsError: Unknown name, unreadable file, or weights that do not fit the network.
    """
    from hemocount.weights import copy_fitting, read_start_weights

    state = read_start_weights(
        spec, examples="FasterRCNN_ResNet50_FPN_Weights.COCO_V1, ResNet50_Weights.IMAGENET1K_V2",
        enum_error=None if norm == "frozen_bn"
        else "torchvision pretrained weights need --norm frozen_bn (they hold BatchNorm statistics)")
    if spec.startswith("ResNet") and not Path(spec).is_file():
        state = {f"backbone.body.{k}": v for k, v in state.items() if not k.startswith("fc.")}
    return copy_fitting(model, state, required="backbone.body.layer1",
                        misfit=f"{spec}: weights do not fit Faster R-CNN ResNet-50 FPN with {norm} normalisation")


def validate(model: Any, meta: dict[str, Any], records: list[AnnotatedImage], recipe: FrcnnRecipe) -> dict[str, Any]:
    """COCO mAP (pycocotools) of the model in training on ``records``; leaves the model in train mode."""
    from hemocount.detect.evaluate import coco_map, predict_records
    from hemocount.detect.frcnn import FrcnnDetector
    from hemocount.weights import WeightsEntry

    entry = WeightsEntry(id="in-training", task="detect", backend="frcnn", file="", sha256=None,
                         classes=list(meta["classes"]), imgsz=int(meta["min_size"]))
    try:
        det = FrcnnDetector(model, meta, entry)
        return coco_map(records, predict_records(det, records, iou=recipe.val_iou, max_det=recipe.val_max_det))
    finally:
        model.train()


def _lr_lambda(recipe: FrcnnRecipe, total: int) -> Any:
    warm = min(recipe.warmup_iters, max(1, total // 4))

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    return f


def _save_last(path: Path, state: dict[str, Any]) -> None:
    import torch

    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def train_frcnn(
    *,
    out: Path,
    data_root: str | None = None,
    recipe: FrcnnRecipe | None = None,
    weights: str | None = None,
    resume: bool = False,
) -> Path:
    """Train Faster R-CNN on the sources' train split and return ``out/best.pt`` (best val mAP50).

    Args:
        out: Run folder (``recipe.json``, ``last.pt``, ``best.pt``, ``log.jsonl``).
        data_root: Dataset root (else ``$HEMOCOUNT_DATA``).
        recipe: Hyper-parameters; defaults to :class:`FrcnnRecipe`. Ignored on resume (the recorded one is used).
        weights: Optional starting weights (see :func:`load_start_weights`); None trains from scratch.
        resume: Continue the interrupted run in ``out`` from its ``last.pt``.
    """
    import torch

    from hemocount.datasets.sources import load_sources
    from hemocount.detect.frcnn import build_frcnn, model_meta, save_frcnn
    from hemocount.runtime import use_all_cores

    threads = use_all_cores()
    last = out / "last.pt"
    if resume:
        if not last.exists():
            raise HemocountError(f"{last}: nothing to resume")
        recipe = recipe_from_json(out / "recipe.json")
    elif last.exists() or (out / "recipe.json").exists():
        raise HemocountError(f"{out}: run exists; use --resume or another --out")
    recipe = recipe or FrcnnRecipe()
    if recipe.optimizer not in ("adamw", "sgd"):
        raise HemocountError(f"unknown optimizer {recipe.optimizer!r}; valid: adamw, sgd")
    train = [r for r in load_sources(recipe.sources, data_root, ("train",))]
    val = load_sources(recipe.sources, data_root, ("val",))
    if not train or not val:
        raise HemocountError(f"sources {recipe.sources}: need train and val images (got {len(train)}, {len(val)})")
    meta = model_meta(classes=CELL_CLASSES, min_size=recipe.min_size, max_size=recipe.max_size, norm=recipe.norm)
    meta["recipe"] = asdict(recipe)

    torch.manual_seed(recipe.seed)
    model = build_frcnn(meta)
    model.roi_heads.fg_bg_sampler.batch_size_per_image = recipe.box_batch_per_image
    params = [p for p in model.parameters() if p.requires_grad]
    if recipe.optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    steps = math.ceil(len(train) / recipe.batch)
    total = recipe.epochs * steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(recipe, total))
    gen = torch.Generator().manual_seed(recipe.seed)
    state: dict[str, Any] = {"epoch": 0, "step": 0, "global_step": 0, "best": -1.0, "history": [],
                             "sums": {}, "seconds": 0.0}
    if resume:
        ck = torch.load(last, map_location="cpu", weights_only=True)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        gen.set_state(ck["generator"])
        torch.set_rng_state(ck["torch_rng"])
        state = ck["state"]
        log.info("resuming %s at epoch %d, iteration %d", out, state["epoch"] + 1, state["step"])
    else:
        out.mkdir(parents=True, exist_ok=True)
        if weights:
            log.info("starting from %s (%d tensors)", weights, load_start_weights(model, weights, recipe.norm))
        atomic_write_json(out / "recipe.json", {
            "recipe": asdict(recipe), "weights": weights, "argv": sys.argv, "torch_threads": threads,
            "data_root": str(data_root or os.environ.get("HEMOCOUNT_DATA")), "train": len(train), "val": len(val)})

    def checkpoint() -> None:
        _save_last(last, {"model": model.state_dict(), "meta": meta, "optimizer": opt.state_dict(),
                          "scheduler": sched.state_dict(), "generator": gen.get_state(),
                          "torch_rng": torch.get_rng_state(), "state": state})

    t0 = time.perf_counter()
    images = _load_images(train)
    log.info("loaded %d train / %d val images in %.1fs; %d iterations per epoch, %d threads",
             len(train), len(val), time.perf_counter() - t0, steps, threads)
    model.train()
    while state["epoch"] < recipe.epochs:
        epoch = state["epoch"]
        # The order depends only on (seed, epoch), so a resumed epoch sees the same batches.
        perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(recipe.seed * 100_003 + epoch))
        while state["step"] < steps:
            t_it = time.perf_counter()
            idx = perm[state["step"] * recipe.batch:(state["step"] + 1) * recipe.batch].tolist()
            imgs, targets = [], []
            for i in idx:
                img, boxes, labels = images[i]
                x, b = augment(img.float().div(255), boxes, recipe, gen)
                imgs.append(x)
                targets.append({"boxes": b, "labels": labels})
            losses = model(imgs, targets)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise HemocountError(f"{out}: loss became {float(loss)} at epoch {epoch + 1}, iteration "
                                     f"{state['step'] + 1}; lower --lr and start again")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if recipe.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, recipe.grad_clip)
            opt.step()
            sched.step()
            for k, v in {"loss": loss, **losses}.items():
                state["sums"][k] = state["sums"].get(k, 0.0) + float(v.detach())
            state["step"] += 1
            state["global_step"] += 1
            state["seconds"] += time.perf_counter() - t_it
            if state["global_step"] % 10 == 0:
                log.info("epoch %d iter %d/%d loss %.4f lr %.2e %.2fs/iter", epoch + 1, state["step"], steps,
                         float(loss.detach()), sched.get_last_lr()[0], state["seconds"] / state["step"])
            if state["global_step"] % recipe.checkpoint_every == 0:
                checkpoint()
        t_val = time.perf_counter()
        res = validate(model, meta, val, recipe)
        row = {"epoch": epoch + 1, "iterations": state["global_step"],
               **{k: round(v / steps, 4) for k, v in state["sums"].items()},
               "lr": sched.get_last_lr()[0], "s_per_iter": round(state["seconds"] / steps, 2),
               "val_mAP50": res["mAP50"], "val_mAP50_95": res["mAP50_95"],
               "val_AP50": {c: v["AP50"] for c, v in res["per_class"].items()},
               "val_seconds": round(time.perf_counter() - t_val, 1)}
        state["history"].append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        score = res["mAP50"] or 0.0
        if score > state["best"]:
            state["best"] = score
            save_frcnn(model, out / "best.pt", meta, {"epoch": epoch + 1, "val": res})
        state.update(epoch=epoch + 1, step=0, sums={}, seconds=0.0)
        checkpoint()
        # Rewritten from the checkpointed history, so a resumed run never logs an epoch twice.
        tmp = out / "log.jsonl.tmp"
        tmp.write_text("".join(json.dumps(h) + "\n" for h in state["history"]))
        tmp.replace(out / "log.jsonl")
    return out / "best.pt"
