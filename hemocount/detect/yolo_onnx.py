"""A YOLO ONNX export run with ONNX Runtime or OpenVINO, with ultralytics' own pre- and post-processing.

Letterbox, NMS and box rescaling are ultralytics' functions with the arguments its
``DetectionPredictor`` passes for a torch model, so both engines see the same input
tensor and apply the same thresholds; only the network runs elsewhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


class OnnxYolo:
    """Duck-types the part of ``ultralytics.YOLO`` that :class:`~hemocount.detect.yolo.YoloDetector` uses."""

    def __init__(self, path: Path, info: dict[str, Any], engine: str = "onnx", precision: str = "auto") -> None:
        from hemocount.detect.ultra_env import ultralytics
        from hemocount.engine import open_runner

        ultralytics()  # configures ultralytics (offline) before predict imports its ops
        # No GroupNorm here, so OpenVINO's snippets buy no speed and double the compile time.
        self.runner = open_runner(path, engine, precision, snippets=False)
        self.names: dict[int, str] = {int(k): v for k, v in info["names"].items()}
        self.stride = int(info["stride"])
        self.overrides = {"imgsz": int(info["input_size"])}

    def predict(self, images: list[np.ndarray], *, imgsz: int, conf: float, iou: float, max_det: int,
                **_: Any) -> list[Any]:
        """``ultralytics.engine.results.Results`` per BGR image, boxes in the image's pixels."""
        import torch
        from ultralytics.data.augment import LetterBox
        from ultralytics.engine.results import Results
        from ultralytics.utils import nms, ops

        # As ultralytics' predictor: minimal (stride-multiple) padding when all images share a shape.
        same = len({im.shape for im in images}) == 1
        letterbox = LetterBox((imgsz, imgsz), auto=same, stride=self.stride)
        x = np.stack([letterbox(image=im) for im in images])[..., ::-1].transpose(0, 3, 1, 2)
        x = np.ascontiguousarray(x).astype(np.float32) / np.float32(255)
        y = torch.from_numpy(self.runner.run(x))
        preds = nms.non_max_suppression(y, conf, iou, None, False, max_det=max_det, nc=0)
        out = []
        for p, im in zip(preds, images):
            p[:, :4] = ops.scale_boxes(x.shape[2:], p[:, :4], im.shape)
            out.append(Results(im, path="", names=self.names, boxes=p[:, :6]))
        return out
