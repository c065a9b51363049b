"""Test-wide fixtures, and a guard that fails the run on any network attempt.

hemocount must work offline: every socket connection to a non-loopback address
made during the test session is recorded and refused, and the session fails if
any was attempted.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import tempfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SAMPLES = ROOT / "samples"

# Before anything imports ultralytics: a fresh config dir proves hemocount installs the font itself.
_CFG = tempfile.mkdtemp(prefix="hemocount-yolo-cfg-")
os.environ["YOLO_CONFIG_DIR"] = _CFG
os.environ.pop("HEMOCOUNT_DATA", None)
# ONNX exports (engine onnx/auto) go to a session-wide temporary cache, never the user's.
os.environ["HEMOCOUNT_CACHE"] = tempfile.mkdtemp(prefix="hemocount-cache-")
# Each session's exports weigh ~1.9 GB (OpenVINO IR of every test model): never leave them behind.
for _tmp in (_CFG, os.environ["HEMOCOUNT_CACHE"]):
    atexit.register(shutil.rmtree, _tmp, ignore_errors=True)

NETWORK_ATTEMPTS: list[str] = []
_LOCAL = ("127.", "::1", "localhost", "0.0.0.0")


def _is_local(address: object) -> bool:
    if isinstance(address, tuple) and address:
        address = address[0]
    if isinstance(address, (str, bytes)):
        host = address.decode() if isinstance(address, bytes) else address
        return host.startswith(_LOCAL) or host.startswith("/")  # unix sockets are local
    return True


class NetworkBlocked(OSError):
    """Raised instead of opening a network connection during tests."""


_orig_connect = socket.socket.connect
_orig_connect_ex = socket.socket.connect_ex
_orig_getaddrinfo = socket.getaddrinfo


def _guard_connect(self: socket.socket, address: object) -> None:
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_local(address):
        NETWORK_ATTEMPTS.append(f"connect {address!r}")
        raise NetworkBlocked(f"network access attempted during tests: {address!r}")
    return _orig_connect(self, address)


def _guard_connect_ex(self: socket.socket, address: object) -> int:
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_local(address):
        NETWORK_ATTEMPTS.append(f"connect_ex {address!r}")
        raise NetworkBlocked(f"network access attempted during tests: {address!r}")
    return _orig_connect_ex(self, address)


def _guard_getaddrinfo(host: object, *args: object, **kwargs: object) -> list:
    if host is not None and not _is_local(host):
        NETWORK_ATTEMPTS.append(f"getaddrinfo {host!r}")
        raise NetworkBlocked(f"DNS lookup attempted during tests: {host!r}")
    return _orig_getaddrinfo(host, *args, **kwargs)


socket.socket.connect = _guard_connect  # type: ignore[method-assign]
socket.socket.connect_ex = _guard_connect_ex  # type: ignore[method-assign]
socket.getaddrinfo = _guard_getaddrinfo  # type: ignore[assignment]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if NETWORK_ATTEMPTS:
        print("\nNETWORK ATTEMPTS DURING TESTS (hemocount must run offline):")
        for a in NETWORK_ATTEMPTS:
            print("  " + a)
        session.exitstatus = 1


@pytest.fixture(scope="session")
def toy_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A YOLO11n-shaped detector with random weights and hemocount's classes (built from YAML, no download)."""
    import torch

    from hemocount.detect.ultra_env import ultralytics

    ultralytics()
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel("yolo11n.yaml", nc=3, verbose=False)
    model.names = {0: "RBC", 1: "WBC", 2: "Platelets"}
    model.args = {"imgsz": 128}
    # Bias the class branch of each head scale towards one class (P3 platelets, P4 RBC, P5 WBC),
    # so the random model emits boxes of every class.
    for branch, cls in zip(model.model[-1].cv3, (2, 0, 1)):
        branch[-1].bias.data[:] = -4.0
        branch[-1].bias.data[cls] = 3.0
    path = tmp_path_factory.mktemp("toy") / "toy-yolo.pt"
    torch.save({"model": model.half(), "train_args": {"imgsz": 128}, "date": None, "version": "toy"}, path)
    return path


@pytest.fixture
def field() -> np.ndarray:
    """A synthetic 160x200 BGR smear-like field: pink background with red discs and one violet blob."""
    import cv2

    img = np.full((160, 200, 3), (210, 200, 235), np.uint8)
    for cx, cy in [(30, 30), (80, 40), (150, 120), (40, 120)]:
        cv2.circle(img, (cx, cy), 14, (120, 110, 210), -1)
    cv2.circle(img, (120, 60), 22, (160, 60, 110), -1)
    return img


@pytest.fixture
def fixture_data() -> Path:
    """A tiny copy of the staged data layout (3 BCCD fields, TXL labels for one, 4 PBC fields)."""
    return FIXTURES / "data"


@pytest.fixture(scope="session")
def toy_classifiers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Random-weight ResNet-18 classifiers for both tasks, saved like shipped ones (fp16 + meta)."""
    import torch

    from hemocount.classify.data import TASKS
    from hemocount.classify.model import build_resnet
    from hemocount.classify.train import ClassifyRecipe, save_classifier

    folder = tmp_path_factory.mktemp("toy_clf")
    out = {}
    for task, classes in TASKS.items():
        torch.manual_seed(0)
        recipe = ClassifyRecipe(task=task, arch="resnet18", size=32)
        path = folder / f"toy-{task}.pt"
        save_classifier(build_resnet(len(classes), arch="resnet18"), path, recipe, classes, {})
        out[task] = path
    return out
