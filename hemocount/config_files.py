"""Small user-supplied JSON/TOML files: reference ranges, calibration, QC thresholds."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from hemocount.errors import HemocountError


def load_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """Read a JSON (``.json``) or TOML (``.toml``) file holding a table.

    Raises:
        HemocountError: Missing, unreadable or malformed file (one line naming it).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise HemocountError(f"{path}: cannot read {what} file ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise HemocountError(f"{path}: {what} file is not UTF-8 text") from None
    try:
        data = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise HemocountError(f"{path}: malformed {what} file ({exc})") from None
    if not isinstance(data, dict):
        raise HemocountError(f"{path}: {what} file must hold a table/object at the top level")
    return data
