"""Threads for inference: how many, and setting them only when asked.

Loading a model changes no process-wide state. The CLI asks for all cores (:func:`use_all_cores`) before it
loads anything; the library asks only when given ``threads=`` (``Pipeline.from_pretrained(threads=N)``).

- ONNX Runtime sessions and OpenVINO compiled models take :func:`threads` as a per-session setting
  (``intra_op_num_threads``, ``INFERENCE_NUM_THREADS``), which touches nothing else in the process.
- torch's intra-op thread count is process-wide: it is set by :func:`set_threads` (and re-applied by
  :func:`apply_torch` when torch is imported later), never by loading a model on its own. torch is not
  imported here: the ONNX Runtime and OpenVINO paths run without it.
"""

from __future__ import annotations

import os
import sys

#: Overrides the thread count (e.g. to share a machine with another job).
THREADS_ENV = "HEMOCOUNT_THREADS"

_requested: int | None = None


def core_count() -> int:
    """The cores this process may run on, or ``$HEMOCOUNT_THREADS``."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if os.environ.get(THREADS_ENV, "").isdigit():
        n = int(os.environ[THREADS_ENV])
    return max(1, n)


def threads() -> int:
    """Threads a new ONNX Runtime session or OpenVINO model is given: the count set by :func:`set_threads`
    (or :func:`use_all_cores`), else :func:`core_count`."""
    return _requested or core_count()


def set_threads(n: int) -> int:
    """Use ``n`` threads for inference from now on: torch's (process-wide, if torch is or gets imported by
    hemocount) and those of ONNX Runtime sessions and OpenVINO models created afterwards.

    Returns:
        The thread count set.
    """
    global _requested
    _requested = max(1, int(n))
    apply_torch()
    return _requested


def use_all_cores() -> int:
    """:func:`set_threads` to :func:`core_count` (what the CLI does; ultralytics alone pins cores - 1)."""
    return set_threads(core_count())


def apply_torch() -> None:
    """Give torch, and ultralytics' ``select_device`` (which resets torch's threads on every call), the
    count asked for by :func:`set_threads`; nothing if none was asked for or torch is not imported."""
    if _requested is None or sys.modules.get("torch") is None:  # None: an import of torch was blocked
        return
    import torch

    torch.set_num_threads(_requested)
    torch_utils = sys.modules.get("ultralytics.utils.torch_utils")
    if torch_utils is not None:
        torch_utils.NUM_THREADS = _requested


__all__ = ["THREADS_ENV", "apply_torch", "core_count", "set_threads", "threads", "use_all_cores"]
