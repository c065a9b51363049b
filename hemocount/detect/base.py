"""The detector interface every backend implements."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

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
