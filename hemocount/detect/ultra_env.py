"""Import ultralytics with every network path switched off (the torch engine, training and export only).

Ultralytics, left alone, downloads a font for plots, checks for updates,
syncs settings/events and pip-installs missing packages (e.g. onnx on export).
hemocount must run offline, so before the first import we point
``YOLO_CONFIG_DIR`` at a folder that already holds a local font, set
``YOLO_OFFLINE=1`` and ``YOLO_AUTOINSTALL=False``, and switch settings sync off.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import ModuleType

from hemocount.runtime import core_count, use_all_cores  # noqa: F401 - moved to hemocount.runtime; kept for old callers

_READY = False


def config_dir() -> Path:
    """The ultralytics config dir hemocount uses (``$YOLO_CONFIG_DIR`` if the user set one)."""
    if os.environ.get("YOLO_CONFIG_DIR"):
        return Path(os.environ["YOLO_CONFIG_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hemocount" / "ultralytics"


def _install_font(folder: Path) -> None:
    import matplotlib

    font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    folder.mkdir(parents=True, exist_ok=True)
    # Ultralytics looks for these names and downloads them when absent.
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        target = folder / name
        if not target.exists():
            shutil.copyfile(font, target)


def ultralytics(verbose: bool = False) -> ModuleType:
    """Import and return ``ultralytics`` configured for offline use.

    Args:
        verbose: Let ultralytics log (training progress); only the first call decides.
    """
    global _READY
    if not _READY:
        cfg = config_dir()
        os.environ["YOLO_CONFIG_DIR"] = str(cfg)
        os.environ["YOLO_OFFLINE"] = "1"
        os.environ["YOLO_AUTOINSTALL"] = "False"
        os.environ.setdefault("YOLO_VERBOSE", str(verbose))
        _install_font(cfg / "Ultralytics")
        import ultralytics as ul
        from ultralytics.utils import SETTINGS

        SETTINGS.update(sync=False)
        # The env var is read at import; if someone imported ultralytics before us, switch it off here too.
        from ultralytics.utils import checks

        checks.AUTOINSTALL = False
        # ultralytics' NMS runs torchvision's kernel only if torchvision is already imported, else a
        # Python loop (it took a third of the ONNX network's time per field when the ONNX path used it).
        import torchvision  # noqa: F401

        from hemocount.runtime import apply_torch

        apply_torch()  # a thread count asked for before ultralytics was imported
        _READY = True
    import ultralytics as ul

    return ul
