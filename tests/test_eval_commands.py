"""Each shipped model's manifest ``eval_command`` runs and reproduces the test metrics stored beside it.

Needs the data root (``$HEMOCOUNT_DATA``, else ``../shared/data``) and minutes of CPU: marked slow, run with
``python -m pytest -m slow tests/test_eval_commands.py``. Engines differ in the last digits (the shipped
metrics were computed with torch; ``auto`` picks OpenVINO, bf16 where the CPU has it: within 0.003 in the
engine table of the README), hence the tolerance.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any

import pytest

from hemocount.weights import list_weights

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("HEMOCOUNT_DATA") or ROOT.parent / "shared" / "data")
TOLERANCE = 0.005

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (DATA / "INDEX.md").exists(), reason=f"no data root at {DATA}")]


def _shipped() -> list[Any]:
    return [e for e in list_weights() if e.meta.get("eval_command")]


def _expected(entry: Any, argv: list[str]) -> dict[str, float]:
    """The manifest's test numbers the command should reproduce."""
    metrics = entry.meta["metrics"]
    if entry.task == "detect":
        labels = argv[argv.index("--labels") + 1] if "--labels" in argv else "best"
        return {"mAP50": metrics[f"bccd_test_{labels}_labels"]["mAP50"]}
    return {k: metrics["test"][k] for k in ("accuracy", "macro_f1")}


@pytest.mark.parametrize("entry", _shipped(), ids=lambda e: e.id)
def test_eval_command_reproduces_the_manifest(entry: Any, capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from hemocount.cli import main

    monkeypatch.setenv("HEMOCOUNT_DATA", str(DATA))
    argv = shlex.split(entry.meta["eval_command"].format(id=entry.id))
    assert argv[0] == "hemocount"
    assert main(["-q", *argv[1:]]) == 0
    got = json.loads(capsys.readouterr().out)
    for key, want in _expected(entry, argv).items():
        value = got[key] if key in got else got["overall"][key]
        assert value == pytest.approx(want, abs=TOLERANCE), (entry.id, key, value, want)
