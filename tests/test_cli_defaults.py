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


def test_count_without_src_ignores_a_samples_folder_outside_a_checkout(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """An installed package's parent is site-packages: a samples/ folder another distribution put there is not
    the checkout's and must not be counted."""
    from hemocount import cli

    site = tmp_path / "site-packages"
    (site / "samples").mkdir(parents=True)
    (site / "samples" / "field.jpg").write_bytes(next(SAMPLES.glob("*.jpg")).read_bytes())
    monkeypatch.setattr(cli, "SAMPLES", site / "samples")
    assert main(["-q", "count", "-o", str(tmp_path / "o")]) == 2
    assert "no SRC given" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_resume_refuses_a_journal_of_another_pipeline_version(tmp_path: Path, toy_weights: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from hemocount.count import JOURNAL

    out = tmp_path / "out"
    (out / JOURNAL).mkdir(parents=True)
    old = {"detector": "yolo", "pipeline_schema": 1}  # what a journal of an older hemocount holds
    (out / JOURNAL / "settings.json").write_text(json.dumps(old))
    code = main(["-q", "count", str(SAMPLES), "-o", str(out), "--weights", str(toy_weights), "--no-classify",
                 "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot resume" in err and "pipeline_schema" in err and len(err.strip().splitlines()) == 1
