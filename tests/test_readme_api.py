"""The README's Python API example runs as written (from the repository root, offline)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _api_example() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_api_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(ROOT)
    code = _api_example().replace('"out_api/"', repr(str(tmp_path / "out_api"))).replace(
        '"annotated.jpg"', repr(str(tmp_path / "annotated.jpg")))
    exec(compile(code, "README.md:Python API", "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    shown = re.search(r"print\(result\.counts\(\)\)\s+# (\{.*?\})", _api_example()).group(1)
    assert shown in out  # the printed counts the README shows in its comment
    assert (tmp_path / "annotated.jpg").stat().st_size > 0 and (tmp_path / "out_api" / "counts.csv").is_file()


def test_import_hemocount_is_light() -> None:
    """``import hemocount`` loads no heavy package; ``hemocount.Pipeline`` is imported on first use."""
    import subprocess

    probe = ("import sys, hemocount; heavy = ('torch', 'ultralytics', 'cv2', 'supervision'); "
             "print(','.join(m for m in heavy if m in sys.modules))")
    light = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert light.stdout.strip() == ""
