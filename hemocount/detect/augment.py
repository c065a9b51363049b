"""Lab-robust augmentation for training the YOLO detector: stain, optics and magnification.

Another lab differs from BCCD and PBC in stain uptake (a per-stain change of optical density, not a hue
shift), focus, camera noise, JPEG compression and magnification. ultralytics' own pipeline covers hue,
saturation, value and a 0.5-1.5x scale; this adds, after it and before its formatting step:

- stain jitter in optical-density space (Ruifrok-Johnston H/E/D vectors; Tellez et al. 2018),
- defocus (Gaussian blur), sensor noise, JPEG re-compression,
- zoom-in up to ``zoom_max`` (a centre-ish window enlarged back to the input size, boxes cut by the window
  kept when at least half visible), the high magnifications a 0.5-1.5x scale never shows.

Each is applied with its own probability; the random draws come from numpy's global generator, which
ultralytics seeds per worker, so a run stays reproducible.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from hemocount.stain import HED_FROM_RGB, RGB_FROM_HED


@dataclass
class RobustAugConfig:
    """Probabilities and strengths of the lab-robust augmentations (recorded in the recipe)."""

    stain_p: float = 0.8
    stain_sigma: float = 0.15
    blur_p: float = 0.25
    blur_sigma_max: float = 2.0
    noise_p: float = 0.25
    noise_sigma_max: float = 8.0
    jpeg_p: float = 0.25
    jpeg_quality: tuple[int, int] = (40, 95)
    zoom_p: float = 0.25
    zoom_max: float = 3.0

    def to_json(self) -> dict[str, Any]:
        """Plain dict for recipe.json."""
        return asdict(self)


def stain_jitter_bgr(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Scale and shift each stain's optical density of a BGR uint8 image by U(1 +- sigma), U(+- sigma)."""
    rgb = img[..., ::-1].astype(np.float32) / 255.0
    od = -np.log(np.clip(rgb, 1e-3, 1.0)).reshape(-1, 3)
    hed = od @ HED_FROM_RGB.astype(np.float32)
    hed = hed * (1 + sigma * rng.uniform(-1, 1, 3)).astype(np.float32) + (sigma * rng.uniform(-1, 1, 3)).astype(np.float32)
    out = np.exp(-(hed @ RGB_FROM_HED.astype(np.float32))).reshape(rgb.shape)
    return np.ascontiguousarray((np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)[..., ::-1])


def zoom_in(img: np.ndarray, boxes: np.ndarray, zoom: float, rng: np.random.Generator
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A random window of 1/``zoom`` of the image enlarged back to its size, with its boxes (xyxy pixels).

    Returns the image, the kept boxes and the indices of the kept input boxes (at least half visible).
    """
    import cv2

    h, w = img.shape[:2]
    cw, ch = w / zoom, h / zoom
    x0, y0 = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
    crop = img[int(y0):int(y0 + ch), int(x0):int(x0 + cw)]
    out = cv2.resize(crop, (w, h), interpolation=cv2.INTER_LINEAR)
    b = (boxes - np.array([x0, y0, x0, y0])) * zoom
    clipped = np.clip(b, 0, [w, h, w, h])
    area = np.maximum((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]), 1e-6)
    visible = (clipped[:, 2] - clipped[:, 0]).clip(0) * (clipped[:, 3] - clipped[:, 1]).clip(0)
    keep = np.flatnonzero(visible >= 0.5 * area)
    return out, clipped[keep], keep


class RobustAug:
    """An ultralytics transform (``labels`` dict in, out) applying :class:`RobustAugConfig`."""

    def __init__(self, cfg: RobustAugConfig) -> None:
        self.cfg = cfg

    def __call__(self, labels: dict[str, Any]) -> dict[str, Any]:
        import cv2

        c, rng = self.cfg, np.random.default_rng(np.random.randint(0, 2**31 - 1))
        img = labels["img"]
        if rng.random() < c.zoom_p:
            labels = self._zoom(labels, float(rng.uniform(1.2, c.zoom_max)), rng)
            img = labels["img"]
        if rng.random() < c.stain_p:
            img = stain_jitter_bgr(img, c.stain_sigma, rng)
        if rng.random() < c.blur_p:
            img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.5, c.blur_sigma_max)))
        if rng.random() < c.noise_p:
            noise = rng.normal(0, rng.uniform(1, c.noise_sigma_max), img.shape)
            img = np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)
        if rng.random() < c.jpeg_p:
            q = int(rng.integers(c.jpeg_quality[0], c.jpeg_quality[1] + 1))
            img = cv2.imdecode(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, q])[1], cv2.IMREAD_COLOR)
        labels["img"] = np.ascontiguousarray(img)
        return labels

    @staticmethod
    def _zoom(labels: dict[str, Any], zoom: float, rng: np.random.Generator) -> dict[str, Any]:
        inst = labels["instances"]
        h, w = labels["img"].shape[:2]
        inst.convert_bbox("xyxy")
        if inst.normalized:
            inst.denormalize(w, h)
        img, boxes, keep = zoom_in(labels["img"], np.asarray(inst.bboxes, dtype=np.float64), zoom, rng)
        new = inst[keep]
        new.bboxes[:] = boxes.astype(new.bboxes.dtype)
        labels.update(img=img, instances=new, cls=labels["cls"][keep])
        return labels


def robust_trainer(cfg: RobustAugConfig) -> type:
    """An ultralytics ``DetectionTrainer`` whose training set appends :class:`RobustAug` before formatting
    (also after ``close_mosaic`` rebuilds the transforms)."""
    from hemocount.detect.ultra_env import ultralytics

    ultralytics()  # offline configuration first
    from ultralytics.models.yolo.detect import DetectionTrainer

    class RobustTrainer(DetectionTrainer):
        def build_dataset(self, img_path: str, mode: str = "train", batch: int | None = None) -> Any:
            ds = super().build_dataset(img_path, mode, batch)
            if mode == "train":
                plain = ds.build_transforms

                def build(hyp: Any = None) -> Any:
                    t = plain(hyp)
                    t.insert(-1, RobustAug(cfg))  # before Format, on the uint8 BGR image and pixel boxes
                    return t

                ds.build_transforms = build  # close_mosaic rebuilds the transforms through it
                ds.transforms.insert(-1, RobustAug(cfg))
            return ds

    return RobustTrainer
