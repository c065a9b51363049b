"""What the accuracy benchmarks share: the command line of a run on one split (val decides, test reports)."""

from __future__ import annotations

import argparse
from pathlib import Path


def split_parser(doc: str | None) -> argparse.ArgumentParser:
    """``--split val|test``, ``--data-root`` and ``--json OUT``, with the module docstring as help."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", default="val", choices=["val", "test"])
    ap.add_argument("--data-root")
    ap.add_argument("--json", type=Path)
    return ap
