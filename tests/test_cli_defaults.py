"""`hemocount count` without SRC: the checkout's samples, said on stderr; elsewhere a one-line error."""

from __future__ import annotations

from pathlib import Path

import pytest

from hemocount.cli import main

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def test_count_without_src_says_what_it_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from hemocount import cli

    monkeypatch.setattr(cli, "SAMPLES", tmp_path / "no-samples-here")
    assert main(["-q", "count", "-o", str(tmp_path / "o")]) == 2
    assert "no SRC given" in capsys.readouterr().err
    monkeypatch.setattr(cli, "SAMPLES", SAMPLES)
    assert cli._default_sources() == str(SAMPLES) and "counting the sample fields" in capsys.readouterr().err
