"""The optional training stack (``hemocount[train]``): whether it is installed, and the one line that says
how to get it.

The plain install counts with ONNX Runtime or OpenVINO on the shipped ONNX files; torch, torchvision,
ultralytics and onnx come with the ``train`` extra (training, ``--engine torch``, ``--detector frcnn``,
``export``, exporting a user's checkpoint). Whatever needs them checks first, so a lean install answers
with :data:`TRAIN_EXTRA_HINT` instead of an ImportError's traceback or another model.
"""

from __future__ import annotations

import importlib.util

from hemocount.errors import HemocountError

#: The one line a lean install prints for anything that needs torch, ultralytics or onnx.
TRAIN_EXTRA_HINT = 'pip install "hemocount[train]"'
#: Top-level modules of the training stack (the ``train`` extra).
TRAIN_MODULES: tuple[str, ...] = ("torch", "torchvision", "ultralytics", "onnx")


def missing_train_modules(modules: tuple[str, ...] = TRAIN_MODULES) -> list[str]:
    """The modules of ``modules`` that are not installed."""
    return [m for m in modules if importlib.util.find_spec(m) is None]


def require_train(what: str, modules: tuple[str, ...] = TRAIN_MODULES) -> None:
    """Fail in one line if ``what`` needs modules of the training stack that are not installed.

    Raises:
        HemocountError: ``<what> needs <modules>, which this install lacks: pip install "hemocount[train]"``.
    """
    missing = missing_train_modules(modules)
    if missing:
        raise HemocountError(f"{what} needs {', '.join(missing)}, which this install lacks: {TRAIN_EXTRA_HINT}")


__all__ = ["TRAIN_EXTRA_HINT", "TRAIN_MODULES", "missing_train_modules", "require_train"]
