"""Store an ONNX model's weights in float16 while it still computes in float32.

Each large float32 initializer is replaced by its float16 copy followed by a ``Cast`` to float32, so the
file is about half the size and every engine runs the same fp32 graph as before: ONNX Runtime folds the
casts into fp32 constants when it builds its session, OpenVINO reads them as its own compressed-weights
pattern (f16 constant -> Convert) and decompresses them when it compiles. Nothing here needs an fp16
kernel, which ONNX Runtime's CPU provider lacks for most operators.

The shipped ``.pt`` weights are float16 already, so this storage loses nothing for weights taken over
unchanged (the classifiers); weights that the export computes (YOLO's Conv+BatchNorm fusion) are rounded
once more. The measured effect on counts and probabilities is in the README (ONNX section).

Writing needs the ``onnx`` package (``hemocount[train]``); running the result does not.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: Initializers smaller than this stay float32: biases, norm scales, anchors and other constants, whose
#: bytes do not matter (under 1 % of a ResNet-50's) but whose precision can.
MIN_ELEMENTS = 1024
_SUFFIX = "__fp16"


def store_weights_fp16(src: Path, dest: Path, min_elements: int = MIN_ELEMENTS) -> int:
    """Write ``src`` to ``dest`` with float32 initializers of ``min_elements`` or more stored as float16.

    An initializer whose values do not fit float16 (overflow to infinity) is left in float32.

    Returns:
        How many initializers were stored in float16.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    kept, casts = [], []
    for init in graph.initializer:
        arr = numpy_helper.to_array(init) if init.data_type == TensorProto.FLOAT else None
        half = arr.astype(np.float16) if arr is not None and arr.size >= min_elements else None
        if half is None or not np.array_equal(np.isfinite(half), np.isfinite(arr)):
            kept.append(init)
            continue
        kept.append(numpy_helper.from_array(half, init.name + _SUFFIX))
        casts.append(helper.make_node("Cast", [init.name + _SUFFIX], [init.name], to=TensorProto.FLOAT,
                                      name=init.name + _SUFFIX + "_cast"))
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = casts + list(graph.node)  # casts first: the graph stays topologically sorted
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(dest))
    return len(casts)


__all__ = ["MIN_ELEMENTS", "store_weights_fp16"]
