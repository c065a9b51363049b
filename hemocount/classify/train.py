"""Train a WBC classifier (ResNet-50 from scratch by default), with checkpoints and resume."""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hemocount.classify.crops import DEFAULT_PAD, crop_cell, rbc_side
from hemocount.classify.data import TASKS, CellSample
from hemocount.errors import HemocountError
from hemocount.io import atomic_write_json

log = logging.getLogger("hemocount")


@dataclass
class ClassifyRecipe:
    """Everything that determines a classifier training run."""

    task: str = "wbc_subtype"
    arch: str = "resnet50"
    norm: str = "gn"
    size: int = 64
    pad: float = DEFAULT_PAD
    epochs: int = 30
    batch: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    seed: int = 0
    # Colour/stain jitter: BCCD, Tecom and PBC differ most in colour.
    hue: float = 0.08
    saturation: float = 0.4
    brightness: float = 0.3
    contrast: float = 0.3
    scale_min: float = 0.7
    #: Draws per epoch (0 = one per training cell): a fixed number gives every leave-one-lab-out fold
    #: and every compared recipe the same compute budget whatever its training-set size.
    samples_per_epoch: int = 0
    #: ``class`` (each label equally often) or ``class_source`` (each label equally often, and within a
    #: label each lab equally often: so one big lab, e.g. PBC's 3,000 healthy cells, does not drown the others)
    #: or ``class_source_sqrt`` (within a label, labs in proportion to the square root of their cell counts).
    balance: str = "class"
    #: Extra stain augmentation in haematoxylin-eosin-DAB optical-density space (0 = off; e.g. 0.05).
    hed: float = 0.0
    #: Probability of showing a crop in grey (luminance in all three channels): makes the model use shape,
    #: size and texture, which labs share, rather than colour, which they do not (0 = off).
    grayscale: float = 0.0
    #: ``instance``: per-crop channel standardisation inside the model (``model.build_resnet``).
    input_norm: str = "imagenet"
    #: > 0: RBC-scaled crops, a square of ``rbc_k`` red-cell diameters around the WBC (the lab's measured
    #: diameter, ``classify/lab_scale.py``) instead of the box-scaled square: keeps a cell's size.
    rbc_k: float = 0.0
    #: > 0: MixStyle with this probability per batch (``classify/mixstyle.py``): crops swap part of their
    #: early-layer feature statistics during training, so a lab's stain statistics are no cue (0 = off).
    mixstyle: float = 0.0
    #: > 0: half the training crops are Gaussian-blurred with a sigma drawn from (0, ``blur``] pixels of the
    #: model's input. Why: the training labs' crops differ tenfold in sharpness (median variance of the
    #: Laplacian of the 64 px val crops: PBC 1,248, LISC 279, Tecom 186, BCCD 108), and PBC, the sharpest,
    #: holds most of the training cells; sigma 1.0 takes PBC's crops to 92, below BCCD's (0 = off).
    blur: float = 0.0
    #: With a ``class_source`` balance: within each label, this source's stratum gets ``boost`` times the
    #: mass of the others ("" = none). Why: the ALL model's only same-lab contrast is ALL-IDB2's healthy
    #: cells against its blasts, and with five healthy labs balanced they get a tenth of the draws.
    boost_source: str = ""
    boost: float = 1.0
    #: > 0: logit adjustment by source (Menon et al., ICLR 2021, with one prior per training lab): the loss
    #: sees ``logits + source_prior * log p(label | lab)``, p being the lab's label mix in the draws, so the
    #: network gains nothing by learning which labels a lab's look predicts; evaluation uses the raw logits.
    #: Why: held-out labs' errors are mostly per-class biases (dev, held-out Tecom: eosinophil recall 1.0,
    #: precision 0.26; held-out BCCD: lymphocyte precision 0.39), while per-class ROC AUCs are 0.84-1.00.
    #: Measured: no effect over two seeds of 4-epoch folds (docs/classifier_robustness.md). Not for the ALL
    #: task: a healthy-only lab's p(blast) is 0, so its cells would teach nothing (0 = off).
    source_prior: float = 0.0
    #: In (0, 1): from this fraction of the training steps on, the uniform average of the weights after every
    #: step is what is validated and saved (stochastic weight averaging; Izmailov et al. 2018, and SWAD, Cha et
    #: al. 2021, for unseen domains: flat minima carry over better). 0 = off.
    swa_start: float = 0.0
    #: Lab left out of training (leave-one-lab-out), "" = none; recorded so evaluation can check it.
    holdout: str = ""


def load_crops(cells: list[CellSample], size: int, pad: float, rbc_k: float = 0.0) -> np.ndarray:
    """RGB uint8 crops ``(N, size, size, 3)`` for the samples (read once, kept in memory).

    ``rbc_k > 0``: RBC-scaled crops of ``rbc_k`` red-cell diameters (the cell's own ``rbc_px``, else its lab's,
    :func:`hemocount.classify.lab_scale.rbc_px_of`); else the box-scaled crop with ``pad``.
    """
    from hemocount.io import read_image

    cache: dict[Path, np.ndarray] = {}
    out = np.zeros((len(cells), size, size, 3), np.uint8)
    for i, c in enumerate(cells):
        if c.path not in cache:
            cache = {c.path: read_image(c.path)}
        out[i] = crop_cell(cache[c.path], c.box, size, pad, cell_side(c, rbc_k))[:, :, ::-1]
    return out


def cell_side(cell: CellSample, rbc_k: float) -> float | None:
    """A labelled cell's RBC-scaled crop side (its own ``rbc_px``, else its lab's measured one), or None for
    box-scaled crops (``rbc_k`` 0): what ``count`` would cut on that cell's field."""
    if rbc_k <= 0:
        return None
    from hemocount.classify.lab_scale import rbc_px_of

    return rbc_side(cell.rbc_px or rbc_px_of(cell.source), rbc_k)


def classifier_crops(clf: Any, cells: list[CellSample]) -> np.ndarray:
    """The crops a loaded classifier (``Classifier`` or anything with ``size``, ``pad``, ``rbc_k``) was trained on."""
    return load_crops(cells, clf.size, clf.pad, getattr(clf, "rbc_k", 0.0))


def augment(batch: Any, recipe: ClassifyRecipe, gen: Any) -> Any:
    """Random flips, 90-degree rotations, scale crops and colour jitter on a float ``(B,3,H,W)`` batch in [0,1]."""
    import torch
    from torchvision.transforms.v2 import functional as F

    out = []
    size = batch.shape[-1]
    for img in batch:
        if torch.rand(1, generator=gen) < 0.5:
            img = img.flip(-1)
        img = torch.rot90(img, int(torch.randint(0, 4, (1,), generator=gen)), dims=(-2, -1))
        s = float(recipe.scale_min + (1 - recipe.scale_min) * torch.rand(1, generator=gen))
        side = max(8, int(size * s))
        top = int(torch.randint(0, size - side + 1, (1,), generator=gen))
        left = int(torch.randint(0, size - side + 1, (1,), generator=gen))
        img = F.resized_crop(img, top, left, side, side, [size, size], antialias=True)

        def u(m: float) -> float:
            return float(1 + m * (2 * torch.rand(1, generator=gen) - 1))

        img = F.adjust_brightness(img, u(recipe.brightness))
        img = F.adjust_contrast(img, u(recipe.contrast))
        img = F.adjust_saturation(img, u(recipe.saturation))
        img = F.adjust_hue(img, float(recipe.hue * (2 * torch.rand(1, generator=gen) - 1)))
        if recipe.hed > 0:
            from hemocount.classify.stain_aug import hed_jitter

            img = hed_jitter(img, recipe.hed, gen)
        if recipe.blur > 0 and torch.rand(1, generator=gen) < 0.5:
            sigma = max(0.05, recipe.blur * float(torch.rand(1, generator=gen)))
            img = F.gaussian_blur(img, [2 * math.ceil(3 * recipe.blur) + 1] * 2, [sigma, sigma])
        if recipe.grayscale > 0 and torch.rand(1, generator=gen) < recipe.grayscale:
            img = F.rgb_to_grayscale(img, num_output_channels=3)
        out.append(img)
    return torch.stack(out)


def to_tensor(crops: np.ndarray) -> Any:
    """uint8 NHWC RGB -> float NCHW in [0, 1]."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float().div_(255)


def normalize(x: Any) -> Any:
    """ImageNet mean/std normalisation (see ``model.MEAN``/``STD``)."""
    import torch

    from hemocount.classify.model import MEAN, STD

    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def predict_probs(model: Any, crops: np.ndarray, batch: int = 64) -> np.ndarray:
    """Softmax probabilities for RGB uint8 crops."""
    return predict_probs_and_features(model, crops, batch)[0]


def predict_probs_and_features(model: Any, crops: np.ndarray, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities and pooled features for RGB uint8 crops (a torchvision ResNet)."""
    import torch

    from hemocount.classify.model import logits_and_features

    net = logits_and_features(model)
    probs, feats = [], []
    with torch.inference_mode():
        for s in range(0, len(crops), batch):
            x = normalize(to_tensor(crops[s:s + batch])).contiguous(memory_format=torch.channels_last)
            logits, f = net(x)
            probs.append(torch.softmax(logits.float(), dim=1).numpy())
            feats.append(f.float().numpy())
    if not probs:
        return np.zeros((0, model.fc.out_features), np.float32), np.zeros((0, model.fc.in_features), np.float32)
    return np.concatenate(probs), np.concatenate(feats)


BALANCES = ("class", "class_source", "class_source_sqrt")


def sampling_weights(cells: list[CellSample], balance: str = "class", boost_source: str = "",
                     boost: float = 1.0) -> np.ndarray:
    """Per-cell sampling weights (float64, summing to 1) for class-balanced draws.

    ``class``: every label is drawn equally often (subtypes are very imbalanced; basophils are rare).
    ``class_source``: likewise, and within a label every source equally often.
    ``class_source_sqrt``: likewise, and within a label each source in proportion to the square root of its
    cell count: a big lab no longer drowns the others, yet a lab with one basophil (BCCD, Tecom) does not
    get that one cell drawn as often as another lab's six hundred.
    ``boost_source``: with a source balance, that source's stratum of every label weighs ``boost`` times as
    much as it would (labels still equally often).
    """
    if balance not in BALANCES:
        raise HemocountError(f"unknown balance {balance!r}; valid: {', '.join(BALANCES)}")
    if boost_source and (balance == "class" or boost <= 0):
        raise HemocountError(f"--boost-source {boost_source}={boost}: needs a positive weight and a per-source balance")
    if boost_source and boost_source not in {c.source for c in cells}:
        raise HemocountError(f"--boost-source {boost_source}: no training cell comes from that source")
    key = [(c.label, "" if balance == "class" else c.source) for c in cells]
    strata: dict[tuple[str, str], int] = {}
    for k in key:
        strata[k] = strata.get(k, 0) + 1
    # the share of its label's draws each stratum gets: equal, or in proportion to sqrt(count)
    mass = {k: (np.sqrt(n) if balance == "class_source_sqrt" else 1.0) * (boost if k[1] == boost_source else 1.0)
            for k, n in strata.items()}
    label_mass: dict[str, float] = {}
    for (lab, _), m in mass.items():
        label_mass[lab] = label_mass.get(lab, 0.0) + m
    w = np.array([mass[k] / (len(label_mass) * label_mass[k[0]] * strata[k]) for k in key])
    return w / w.sum()


#: The smallest label share a source's log prior uses: a label a lab never shows (Tecom's basophils in a fold
#: without its one basophil) would otherwise get minus infinity.
PRIOR_FLOOR = 1e-3


def source_log_priors(cells: list[CellSample], weights: np.ndarray, classes: tuple[str, ...]) -> np.ndarray:
    """Each cell's source's log label distribution in the draws: an (n_cells, n_classes) float32 array.

    ``weights`` are the per-cell draw probabilities (``sampling_weights``), so the prior is what training
    shows of each lab, not its raw counts.
    """
    index = {c: i for i, c in enumerate(classes)}
    sources = sorted({c.source for c in cells})
    mass = np.zeros((len(sources), len(classes)))
    src = np.array([sources.index(c.source) for c in cells])
    np.add.at(mass, (src, [index[c.label] for c in cells]), weights)
    prior = np.maximum(mass / mass.sum(axis=1, keepdims=True), PRIOR_FLOOR)
    return np.log(prior / prior.sum(axis=1, keepdims=True)).astype(np.float32)[src]


def check_recipe(recipe: ClassifyRecipe) -> None:
    """Refuse, in one line and before any crop is loaded, options that would silently do nothing."""
    if not 0 <= recipe.swa_start < 1:
        raise HemocountError(f"--swa-start {recipe.swa_start}: a fraction of the training steps in [0, 1)")
    if recipe.source_prior < 0:
        raise HemocountError(f"--source-prior {recipe.source_prior}: must be >= 0")
    if recipe.source_prior > 0 and recipe.task != "wbc_subtype":
        raise HemocountError("--source-prior is for the subtype task: the ALL model's healthy-only labs "
                             "would teach nothing")


def logit_adjustment(recipe: ClassifyRecipe, cells: list[CellSample], weights: np.ndarray,
                     classes: tuple[str, ...]) -> Any:
    """The per-cell term added to the logits in the loss (a float32 tensor), or None without ``source_prior``."""
    if recipe.source_prior <= 0:
        return None
    import torch

    log_prior = source_log_priors(cells, weights, classes)
    if np.allclose(log_prior, log_prior[:, :1], atol=1e-6):
        # every lab shows every label equally often (e.g. --balance class_source): a constant shift per row
        raise HemocountError(f"--source-prior with --balance {recipe.balance}: every training lab's label mix in "
                             "the draws is even, so it would change nothing")
    return recipe.source_prior * torch.from_numpy(log_prior)


def weight_averager(recipe: ClassifyRecipe, model: Any, total_steps: int) -> tuple[Any, int | None]:
    """The running weight average and the step after which it is updated, or (None, None) without ``swa_start``.

    With ``--norm bn`` the running statistics are averaged too (``use_buffers``), not recomputed.
    """
    if recipe.swa_start <= 0:
        return None, None
    import torch

    return torch.optim.swa_utils.AveragedModel(model, use_buffers=True), round(recipe.swa_start * total_steps)


def train_classifier(
    *,
    cells: list[CellSample],
    out: Path,
    recipe: ClassifyRecipe,
    weights: str | None = None,
    resume: bool = False,
    progress: bool = True,
) -> Path:
    """Train on the ``train`` samples, select the epoch with the best val macro-F1, save ``best.pt``.

    ``out/last.pt`` holds model, optimiser and epoch after every epoch, so ``resume=True``
    continues an interrupted run exactly where it stopped.
    """
    import torch

    from hemocount.classify.metrics import classification_report
    from hemocount.classify.model import build_resnet
    from hemocount.detect.ultra_env import use_all_cores

    check_recipe(recipe)
    use_all_cores()
    classes = TASKS[recipe.task]
    index = {c: i for i, c in enumerate(classes)}
    train = [c for c in cells if c.split == "train"]
    val = [c for c in cells if c.split == "val"]
    if not train or not val:
        raise HemocountError(f"task {recipe.task}: need train and val samples (got {len(train)}, {len(val)})")
    # from the cell lists alone: a refused option costs no crop loading and leaves no run folder
    sample_w = torch.from_numpy(sampling_weights(train, recipe.balance, recipe.boost_source, recipe.boost))
    logit_adj = logit_adjustment(recipe, train, sample_w.numpy(), classes)
    out.mkdir(parents=True, exist_ok=True)
    last = out / "last.pt"
    if resume and not last.exists():
        raise HemocountError(f"{last}: nothing to resume")
    if not resume and last.exists():
        raise HemocountError(f"{out}: run exists; use --resume or another --out")

    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    t0 = time.perf_counter()
    x_train = load_crops(train, recipe.size, recipe.pad, recipe.rbc_k)
    x_val = load_crops(val, recipe.size, recipe.pad, recipe.rbc_k)
    y_train = torch.tensor([index[c.label] for c in train])
    y_val = np.array([index[c.label] for c in val])
    log.info("loaded %d train / %d val crops in %.1fs", len(train), len(val), time.perf_counter() - t0)

    model = build_resnet(len(classes), arch=recipe.arch, norm=recipe.norm, weights=weights,
                         input_norm=recipe.input_norm)
    model = model.to(memory_format=torch.channels_last)
    if recipe.mixstyle > 0:
        from hemocount.classify.mixstyle import add_mixstyle

        add_mixstyle(model, recipe.mixstyle)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    steps_per_epoch = math.ceil((recipe.samples_per_epoch or len(train)) / recipe.batch)
    total = recipe.epochs * steps_per_epoch
    warm = steps_per_epoch

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    draws = recipe.samples_per_epoch or len(train)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    avg, swa_from = weight_averager(recipe, model, total)
    start_epoch, best_score, history = 0, -1.0, []
    if resume:
        ck = torch.load(last, map_location="cpu", weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        gen.set_state(ck["generator"])
        start_epoch, best_score, history = ck["epoch"] + 1, ck["best_score"], ck["history"]
        if avg is not None:
            if "average" not in ck:
                raise HemocountError(f"{last}: was trained without --swa-start; resume it with the same recipe")
            avg.load_state_dict(ck["average"])
    atomic_write_json(out / "recipe.json", {"recipe": asdict(recipe), "weights": weights, "argv": sys.argv,
                                            "train": len(train), "val": len(val)})

    for epoch in range(start_epoch, recipe.epochs):
        model.train()
        t_ep = time.perf_counter()
        idx = torch.multinomial(sample_w, draws, replacement=True, generator=gen)
        losses = []
        for s in range(0, len(idx), recipe.batch):
            b = idx[s:s + recipe.batch]
            if len(b) < 2:
                continue
            x = normalize(augment(to_tensor(x_train[b.numpy()]), recipe, gen))
            x = x.contiguous(memory_format=torch.channels_last)
            logits = model(x)
            loss = loss_fn(logits if logit_adj is None else logits + logit_adj[b], y_train[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if swa_from is not None and sched.last_epoch > swa_from:
                avg.update_parameters(model)
            losses.append(float(loss.detach()))
        # the average once it has started, else the network itself
        scored = avg.module if avg is not None and int(avg.n_averaged) > 0 else model
        rep = classification_report(y_val, predict_probs(scored, x_val), classes)
        score = rep["macro_f1"] or 0.0
        history.append({"epoch": epoch + 1, "loss": round(float(np.mean(losses)), 4), "val_accuracy": rep["accuracy"],
                        "val_macro_f1": score, "seconds": round(time.perf_counter() - t_ep, 1),
                        **({"averaged": scored is not model} if avg is not None else {})})
        if progress:
            print(json.dumps(history[-1]), file=sys.stderr, flush=True)
        if score > best_score:
            best_score = score
            save_classifier(scored, out / "best.pt", recipe, classes, {"epoch": epoch + 1, "val": rep})
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "generator": gen.get_state(), "epoch": epoch, "best_score": best_score, "history": history,
                    **({"average": avg.state_dict()} if avg is not None else {})}, out / "last.pt.tmp")
        (out / "last.pt.tmp").replace(last)
        atomic_write_json(out / "history.json", history)
    return out / "best.pt"


def save_classifier(model: Any, path: Path, recipe: ClassifyRecipe, classes: tuple[str, ...],
                    extra: dict[str, Any]) -> None:
    """Save a compact fp16 state dict with everything inference needs (no optimiser state)."""
    import torch

    from hemocount.io import _json_default

    extra = json.loads(json.dumps(extra, default=_json_default))  # plain types: loadable with weights_only
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    meta = {"task": recipe.task, "arch": recipe.arch, "norm": recipe.norm, "size": recipe.size, "pad": recipe.pad,
            "classes": list(classes), "normalize": "imagenet", **extra}
    if recipe.holdout:  # only LOLO runs carry it, so shipped checkpoints' metadata is unchanged
        meta["holdout"] = recipe.holdout
    if recipe.input_norm != "imagenet":
        meta["input_norm"] = recipe.input_norm
    if recipe.rbc_k > 0:
        meta["rbc_k"] = recipe.rbc_k
    tmp = path.with_suffix(".tmp")
    torch.save({"model": state, "meta": meta}, tmp)
    tmp.replace(path)
