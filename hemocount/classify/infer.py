"""Load a trained WBC classifier and classify crops in batches."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hemocount.classify.crops import crop_cells, normalize_crops
from hemocount.errors import HemocountError, WeightsError
from hemocount.weights import WeightsEntry, load_checkpoint, resolve

if TYPE_CHECKING:
    from hemocount.classify.familiarity import FeatureReference

DEFAULT_CLASSIFIERS = {"wbc_subtype": "resnet50-wbc-subtype", "all": "resnet50-all"}
#: Batch sizes the openvino engine compiles a classifier for: ``count`` gathers WBC crops across images
#: into calls of up to 32 (its last, shorter call pads into the 32 already compiled); a few crops (the
#: samples, library calls per image) take 8 or 1 instead of padding to 32 every time.
CROP_BATCHES = (1, 8, 32)


class Classifier:
    """A ResNet classifier with its crop geometry and class names.

    ``model`` is a torch module (engine ``torch``) or a runner of its ONNX export (engines ``onnx`` and
    ``openvino``, see :mod:`hemocount.engine`).
    """

    def __init__(self, model: Any, meta: dict[str, Any], weights: WeightsEntry, engine: str = "torch") -> None:
        self.model = model.eval() if engine == "torch" else model
        self.engine = engine
        self.meta = meta
        self.weights = weights
        self.task: str = meta["task"]
        self.classes: tuple[str, ...] = tuple(meta["classes"])
        self.size: int = int(meta["size"])
        self.pad: float = float(meta["pad"])
        #: > 0: trained on RBC-scaled crops (``rbc_k`` red-cell diameters a side), see ``crops.rbc_side``.
        self.rbc_k: float = float(meta.get("rbc_k", 0.0))
        #: The training labs' feature statistics (``unfamiliar_lab``), if the shipped weights carry them.
        self.reference: FeatureReference | None = load_reference(weights)

    @classmethod
    def from_weights(cls, spec: str | None, *, task: str, engine: str = "auto", precision: str = "auto") -> Classifier:
        """Load a manifest id or checkpoint path (sha256-checked for shipped weights).

        Args:
            spec: Manifest id or checkpoint path (default: the shipped model for ``task``).
            task: ``wbc_subtype`` or ``all``.
            engine: ``torch``, ``onnx`` (ONNX Runtime on an export cached by the weights' sha256),
                ``openvino`` (OpenVINO on the same export) or ``auto`` (the fastest installed on CPU, see
                ``hemocount.engine.AUTO``).
            precision: ``auto``, ``fp32`` or ``bf16`` (see ``hemocount.engine.PRECISIONS``).
        """
        from hemocount.engine import check_precision, open_runner, resolve_engine

        engine = resolve_engine(engine, "classify")
        check_precision(precision, engine)
        if engine == "torch":
            entry = resolve(spec or DEFAULT_CLASSIFIERS[task], task=task, backend="resnet")
            model, meta = load_torch_classifier(entry, task)
            return cls(model, meta, entry)
        from hemocount.shipped_onnx import onnx_model

        # The shipped ONNX file; torch only to export a user's checkpoint once.
        entry, path, info = onnx_model(spec or DEFAULT_CLASSIFIERS[task], task=task, backend="resnet",
                                       make=export_classifier_onnx)
        if not isinstance(info.get("meta"), dict):
            raise WeightsError(f"{entry.path}: cannot load classifier (no classifier metadata: a detector checkpoint?)")
        _check_meta(entry, info["meta"], task)
        return cls(open_runner(path, engine, precision, CROP_BATCHES), info["meta"], entry, engine=engine)

    @property
    def precision(self) -> str:
        """``fp32`` or ``bf16``: the arithmetic the model runs in."""
        return getattr(self.model, "precision", "fp32")

    @property
    def compile_seconds(self) -> float:
        """Seconds the engine has spent compiling input shapes (openvino; 0 for the others)."""
        return float(getattr(self.model, "compile_seconds", 0.0))

    def predict_crops(self, crops_rgb: np.ndarray, batch: int = 64) -> np.ndarray:
        """Class probabilities ``(N, K)`` for RGB uint8 crops of size :attr:`size`."""
        if self.engine == "torch":
            from hemocount.classify.train import predict_probs

            return predict_probs(self.model, crops_rgb, batch)
        if len(crops_rgb) == 0:
            return np.zeros((0, len(self.classes)), np.float32)
        return softmax(_runner_outputs(self.model, crops_rgb, batch, 1)[0])

    def predict_with_features(self, crops_rgb: np.ndarray, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """Class probabilities ``(N, K)`` and pooled features ``(N, D)`` for RGB uint8 crops.

        Raises:
            WeightsError: An ONNX export without the ``features`` output (made before it existed).
        """
        if self.engine == "torch":
            from hemocount.classify.train import predict_probs_and_features

            return predict_probs_and_features(self.model, crops_rgb, batch)
        if len(crops_rgb) == 0:
            return np.zeros((0, len(self.classes)), np.float32), np.zeros((0, 0), np.float32)
        outs = _runner_outputs(self.model, crops_rgb, batch, 2)
        if len(outs) < 2:
            raise WeightsError(f"{self.weights.path}: its ONNX export has no features output (re-export it)")
        return softmax(outs[0]), outs[1].astype(np.float32)

    def predict(self, image_bgr: np.ndarray, boxes: np.ndarray, rbc_px: float | None = None) -> np.ndarray:
        """Class probabilities for cells at ``boxes`` (xyxy) of a BGR image.

        Raises:
            HemocountError: An RBC-scaled classifier (``rbc_k > 0``) without the image's red-cell diameter
                ``rbc_px`` (``ScaleInfo.rbc_px``): its crops cannot be cut as it was trained.
        """
        from hemocount.classify.crops import crop_side

        if self.rbc_k > 0 and not rbc_px:
            raise HemocountError(f"{self.weights.id}: crops scaled by red cells; pass the image's rbc_px")
        crops = crop_cells(image_bgr, boxes, self.size, self.pad, crop_side(self.rbc_k, rbc_px))[..., ::-1]
        return self.predict_crops(crops)


def load_torch_classifier(entry: WeightsEntry, task: str) -> tuple[Any, dict[str, Any]]:
    """The torch module for ``entry`` (fp32, eval, channels-last) and its checkpoint metadata.

    Raises:
        WeightsError: Unreadable checkpoint, wrong task, or classes/shapes that do not fit.
    """
    import torch

    from hemocount.classify.model import build_resnet
    from hemocount.runtime import apply_torch

    apply_torch()  # torch's threads only if hemocount.runtime was asked to set them
    ck = load_checkpoint(entry.path, "classifier")
    try:
        meta, state = ck["meta"], ck["model"]
    except (TypeError, KeyError, IndexError):
        raise WeightsError(f"{entry.path}: not a hemocount classifier checkpoint (no meta/model)") from None
    _check_meta(entry, meta, task)
    try:
        model = build_resnet(len(meta["classes"]), arch=meta["arch"], norm=meta["norm"],
                             input_norm=meta.get("input_norm", "imagenet"))
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except (KeyError, RuntimeError) as exc:
        raise WeightsError(f"{entry.path}: classifier weights do not fit its metadata ({exc})") from None
    return model.eval().to(memory_format=torch.channels_last), meta


def export_classifier_onnx(entry: WeightsEntry, tmp: Path) -> tuple[Path, dict[str, Any]]:
    """torch's TorchScript-based ONNX exporter with a dynamic batch axis.

    The dynamo exporter (torch's default since 2.9) would add onnxscript as a dependency; the
    TorchScript one needs nothing more and is what ultralytics uses as well.
    """
    import warnings

    import torch

    from hemocount.classify.model import MEAN, STD, logits_and_features
    from hemocount.onnx_cache import OPSET

    model, meta = load_torch_classifier(entry, entry.task)
    model = logits_and_features(model.to(memory_format=torch.contiguous_format))
    size = int(meta["size"])
    made = tmp / "model.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # deprecation and tracer notices; the export is checked after
        torch.onnx.export(model, (torch.zeros(2, 3, size, size),), str(made), dynamo=False, opset_version=OPSET,
                          input_names=["crops"], output_names=["logits", "features"],
                          dynamic_axes={"crops": {0: "batch"}, "logits": {0: "batch"}, "features": {0: "batch"}})
    return made, {
        "classes": list(meta["classes"]), "input_size": size, "meta": meta,
        "input": {"name": "crops", "shape": ["batch", 3, size, size], "dtype": "float32"},
        "normalisation": {"order": "RGB", "scale": 1 / 255, "mean": list(MEAN), "std": list(STD),
                          "crop": (f"square of {meta['rbc_k']} red-cell diameters of the field centred on the WBC"
                                   if meta.get("rbc_k") else
                                   f"square box around the WBC with {meta['pad']} context per side")
                                  + f", resized to {size} px (hemocount.classify.crops)"},
        "output": "logits (batch, classes), softmax gives the probabilities; features (batch, 2048): the pooled "
                  "features before the last layer (hemocount.classify.familiarity)",
    }


def load_reference(entry: WeightsEntry) -> FeatureReference | None:
    """The feature reference named by ``thresholds.domain`` of shipped weights (sha256-checked), else None.

    Raises:
        WeightsError: The file is missing, altered or unreadable.
    """
    from hemocount.classify.familiarity import FeatureReference
    from hemocount.weights import sha256_file

    spec = entry.thresholds.get("domain") if not entry.meta.get("user_checkpoint") else None
    if not spec:
        return None
    if not isinstance(spec, dict) or not all(k in spec for k in ("reference", "sha256", "slide_thresholds")):
        raise WeightsError(f"manifest entry {entry.id}: thresholds.domain needs reference, sha256 and "
                           "slide_thresholds")
    path = entry.path.parent / spec["reference"]
    if not path.is_file():
        raise WeightsError(f"{path}: WBC feature reference missing (manifest id {entry.id})")
    if sha256_file(path) != spec["sha256"]:
        raise WeightsError(f"{path}: sha256 does not match the manifest (file altered or corrupted)")
    return FeatureReference.load(path, spec["slide_thresholds"], spec.get("uncertainty_thresholds"), spec["sha256"],
                                 spec.get("stain"))


def _check_meta(entry: WeightsEntry, meta: dict[str, Any], task: str) -> None:
    if meta.get("task") != task:
        raise WeightsError(f"{entry.path}: classifier is for task {meta.get('task')!r}, not {task!r}")
    if entry.classes and list(entry.classes) != list(meta["classes"]):
        raise WeightsError(f"{entry.path}: classes {meta['classes']} do not match the manifest's {entry.classes}")


def _runner_outputs(runner: Any, crops: np.ndarray, batch: int, n_outputs: int) -> list[np.ndarray]:
    """The first ``n_outputs`` outputs of an ONNX runner (fewer if it has fewer) for at least one RGB uint8
    crop, normalised as the torch path does, in batches of ``batch``."""
    parts = [runner.run_all(normalize_crops(crops[s:s + batch]), n_outputs) for s in range(0, len(crops), batch)]
    return [np.concatenate(o) for o in zip(*parts)]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float32 (max-subtracted, as torch's)."""
    z = logits.astype(np.float32) - logits.max(axis=1, keepdims=True).astype(np.float32)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
