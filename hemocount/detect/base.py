"""The detector interface every backend implements."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from hemocount import CELL_CLASSES

if TYPE_CHECKING:
    import numpy as np
    import supervision as sv

    from hemocount.weights import WeightsEntry


class Detector(Protocol):
    """A cell detector.

    ``predict`` takes BGR uint8 images and returns one ``supervision.Detections``
    per image with boxes in the image's own pixel coordinates, ``class_id``
    indexing :attr:`classes` and ``data["class_name"]`` set.
    """

    name: str
    engine: str
    precision: str
    classes: tuple[str, ...]
    weights: WeightsEntry

    def predict(
        self, images: list[np.ndarray], *, conf: dict[str, float], iou: float, max_det: int
    ) -> list[sv.Detections]:
        """Detect cells in a batch of images, keeping boxes above each class's confidence."""
        ...


class DetectorBase:
    """What every backend shares: class mapping onto :data:`CELL_CLASSES`, per-class thresholds, the
    raw count behind the detection cap, engine, precision and compile time.

    A backend sets :attr:`name` (and :attr:`engine` / :attr:`batch` where they differ), calls
    :meth:`map_classes` with its model's class names, and returns ``self.finish(dets, conf)`` for each
    image's raw detections from ``predict``.
    """

    name = "base"
    engine = "torch"
    #: Images per call in ``hemocount count``.
    batch = 4
    classes = CELL_CLASSES
    weights: WeightsEntry
    _map: dict[int, int] | None = None

    @property
    def precision(self) -> str:
        """``fp32`` unless the backend's engine computes otherwise."""
        return "fp32"

    @property
    def compile_seconds(self) -> float:
        """Seconds spent compiling input shapes (0 for engines that do not compile)."""
        return 0.0

    def map_classes(self, names: dict[int, str]) -> None:
        """Map the model's class ids (``names``: id -> name) onto :data:`CELL_CLASSES`, checked against the
        manifest; fills the manifest's classes for a user checkpoint that has none.

        Raises:
            WeightsError: A class that is not RBC/WBC/Platelets, or classes unlike the manifest's.
        """
        from hemocount.datasets.records import canonical_class
        from hemocount.errors import WeightsError

        self._map = {}
        for idx, raw in names.items():
            cls = canonical_class(str(raw))
            if cls is None:
                raise WeightsError(f"{self.weights.path}: model class {raw!r} is not one of {', '.join(CELL_CLASSES)}")
            self._map[int(idx)] = CELL_CLASSES.index(cls)
        model_classes = [canonical_class(str(names[i])) for i in sorted(names)]
        if self.weights.classes and model_classes != list(self.weights.classes):
            raise WeightsError(f"{self.weights.path}: model classes {model_classes} do not match the manifest's "
                               f"{self.weights.classes}")
        if not self.weights.classes:
            self.weights.classes = [c for c in model_classes if c]

    def finish(self, dets: sv.Detections, conf: dict[str, float]) -> sv.Detections:
        """Raw detections of one image -> hemocount's classes, ``class_name`` set, each class at its own
        threshold; ``metadata["raw_count"]`` keeps the count before that filter (the cap applies to it)."""
        import numpy as np

        raw_ids = dets.class_id if dets.class_id is not None else np.zeros(len(dets), int)
        ids = np.array([self._map[int(i)] for i in raw_ids] if self._map is not None else raw_ids, dtype=int)
        dets.class_id = ids
        dets.data["class_name"] = np.array([CELL_CLASSES[i] for i in ids], dtype=object).astype(str) \
            if len(ids) else np.array([], dtype=str)
        raw = len(dets)
        kept = filter_by_class_conf(dets, conf)
        kept.metadata["raw_count"] = raw
        return kept


def filter_by_class_conf(dets: sv.Detections, conf: dict[str, float]) -> sv.Detections:
    """Keep detections whose confidence reaches their own class's threshold."""
    import numpy as np

    if len(dets) == 0:
        return dets
    thr = np.array([conf.get(str(n), 0.0) for n in dets.data["class_name"]])
    return dets[dets.confidence >= thr]


def same_shape_groups(images: list[np.ndarray]) -> list[list[int]]:
    """Indices of ``images`` grouped by shape, in first-seen order.

    Backends run one forward pass per group: a batch padded to its largest (or a square) input would
    make an image's detections depend on the images it happens to be batched with.
    """
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, im in enumerate(images):
        groups.setdefault(im.shape, []).append(i)
    return list(groups.values())
