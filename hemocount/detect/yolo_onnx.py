"""A YOLO ONNX export run with ONNX Runtime or OpenVINO, pre- and post-processed in numpy and OpenCV.

Letterbox, NMS and box rescaling reproduce what ultralytics' ``DetectionPredictor`` does for a torch
model (``LetterBox``, ``nms.non_max_suppression``, ``ops.scale_boxes`` of ultralytics 8.4, with the
arguments the predictor passes) without importing torch or ultralytics: same input tensor, same
thresholds, boxes equal within float rounding (tests/test_yolo_numpy.py compares them field by field).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import supervision as sv

#: Grey ultralytics pads letterboxed images with.
PAD_VALUE = 114
#: Per-class coordinate offset for class-aware NMS in one call (ultralytics' ``max_wh``).
MAX_WH = 7680
#: Boxes NMS looks at, most confident first (ultralytics' ``max_nms``).
MAX_NMS = 30000


class OnnxYolo:
    """Duck-types the part of ``ultralytics.YOLO`` that :class:`~hemocount.detect.yolo.YoloDetector` uses;
    ``predict`` returns ``sv.Detections`` (model class ids) instead of ultralytics ``Results``."""

    def __init__(self, path: Path, info: dict[str, Any], engine: str = "onnx", precision: str = "auto") -> None:
        from hemocount.engine import open_runner

        # No GroupNorm here, so OpenVINO's snippets buy no speed and double the compile time.
        self.runner = open_runner(path, engine, precision, snippets=False)
        self.names: dict[int, str] = {int(k): v for k, v in info["names"].items()}
        self.stride = int(info["stride"])
        self.overrides = {"imgsz": int(info["input_size"])}

    def predict(self, images: list[np.ndarray], *, imgsz: int, conf: float, iou: float, max_det: int,
                **_: Any) -> list[sv.Detections]:
        """Detections per BGR image, boxes in the image's pixels, ``class_id`` the model's own."""
        x = preprocess(images, imgsz, self.stride)
        preds = non_max_suppression(self.runner.run(x), conf, iou, max_det)
        out = []
        for p, im in zip(preds, images):
            xyxy = scale_boxes(x.shape[2:], p[:, :4], im.shape)
            cls = p[:, 5].astype(int)
            out.append(sv.Detections(xyxy=xyxy, confidence=p[:, 4], class_id=cls,
                                     data={"class_name": np.array([self.names[int(c)] for c in cls], dtype=str)}))
        return out


def letterbox(image: np.ndarray, imgsz: int, *, auto: bool, stride: int) -> np.ndarray:
    """ultralytics' ``LetterBox((imgsz, imgsz), auto=auto, stride=stride)`` on one HxWx3 image: resized to fit
    ``imgsz`` (scaling up too), centred, padded grey to the square (``auto=False``) or only to a multiple of
    ``stride`` (``auto=True``, ultralytics' minimal rectangle for same-shape batches)."""
    h, w = image.shape[:2]
    r = min(imgsz / h, imgsz / w)
    new_w, new_h = max(round(w * r), 1), max(round(h * r), 1)  # Python's round, as ultralytics
    dw, dh = imgsz - new_w, imgsz - new_h
    if auto:
        dw, dh = dw % stride, dh % stride
    dw, dh = dw / 2, dh / 2
    if (w, h) != (new_w, new_h):
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    return cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3)


def preprocess(images: list[np.ndarray], imgsz: int, stride: int) -> np.ndarray:
    """The network input for BGR uint8 images: letterboxed (minimal padding when all images share a shape, as
    ultralytics' predictor does), RGB, NCHW float32 in [0, 1]."""
    same = len({im.shape for im in images}) == 1
    x = np.stack([letterbox(im, imgsz, auto=same, stride=stride) for im in images])[..., ::-1].transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x).astype(np.float32) / np.float32(255)


def non_max_suppression(pred: np.ndarray, conf: float, iou: float, max_det: int) -> list[np.ndarray]:
    """ultralytics' ``non_max_suppression(pred, conf, iou, None, False, max_det=max_det)`` in numpy and OpenCV.

    Args:
        pred: Network output ``(batch, 4 + classes, anchors)``: xywh in input pixels, class scores.

    Returns:
        Per image, ``(n, 6)`` float32 rows ``x1, y1, x2, y2, confidence, class``, most confident first.
    """
    out = []
    for p in np.asarray(pred, dtype=np.float32):
        scores = p[4:]
        cls = scores.argmax(0)  # the first of equal maxima, as torch's max
        best = scores[cls, np.arange(scores.shape[1])]
        keep = best > conf
        xywh, best, cls = p[:4, keep].T, best[keep], cls[keep]
        if len(best) > MAX_NMS:
            top = np.argsort(-best, kind="stable")[:MAX_NMS]
            xywh, best, cls = xywh[top], best[top], cls[top]
        xyxy = np.empty_like(xywh)
        half = xywh[:, 2:] / 2
        xyxy[:, :2], xyxy[:, 2:] = xywh[:, :2] - half, xywh[:, :2] + half
        kept = _nms(xyxy + (cls.astype(np.float32) * np.float32(MAX_WH))[:, None], best, iou)[:max_det]
        out.append(np.concatenate([xyxy[kept], best[kept, None], cls[kept, None].astype(np.float32)], axis=1))
    return out


def _nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Greedy NMS (OpenCV's): indices of kept boxes, most confident first; a box is dropped when its IoU with a
    kept one exceeds ``iou``, as in torchvision's ``nms``."""
    if not len(boxes):
        return np.zeros(0, int)
    rects = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1).astype(np.float64)
    idx = cv2.dnn.NMSBoxes(rects, scores.astype(np.float64), 0.0, float(iou))
    return np.asarray(idx, dtype=int).reshape(-1)


def scale_boxes(input_shape: tuple[int, ...], boxes: np.ndarray, image_shape: tuple[int, ...]) -> np.ndarray:
    """ultralytics' ``ops.scale_boxes``: xyxy boxes from the letterboxed input back to the image's pixels,
    clipped to the image (a float32 copy)."""
    gain = min(input_shape[0] / image_shape[0], input_shape[1] / image_shape[1])
    new_h, new_w = (max(round(s * gain), 1) for s in image_shape[:2])
    gain_y, gain_x = new_h / image_shape[0], new_w / image_shape[1]
    pad_x, pad_y = round((input_shape[1] - new_w) / 2 - 0.1), round((input_shape[0] - new_h) / 2 - 0.1)
    b = np.array(boxes, dtype=np.float32)
    b[:, [0, 2]] -= pad_x
    b[:, [1, 3]] -= pad_y
    b[:, [0, 2]] /= gain_x
    b[:, [1, 3]] /= gain_y
    h, w = image_shape[:2]
    b[:, [0, 2]] = b[:, [0, 2]].clip(0, w)
    b[:, [1, 3]] = b[:, [1, 3]].clip(0, h)
    return b
