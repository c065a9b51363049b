"""sha256 of large model files, remembered per file version so that loading does not re-read them.

Hashing the three shipped ONNX files (100 MB) took 0.25 s of every model load, and the cached exports
(200 MB fp32) about 0.5 s. A file's digest is kept in ``sha256.json`` beside the ONNX cache
(:func:`hemocount.onnx_cache.cache_dir`), keyed by its resolved path and checked against its size,
inode, mtime and ctime: a file that is rewritten, replaced or touched is hashed again (ctime cannot be
set back by a user, unlike mtime). What this does not catch is a change below the file system (bit rot
on disk), which the first hash of each file version still would.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from hemocount.weights import sha256_file

log = logging.getLogger("hemocount")

MEMO_NAME = "sha256.json"


def _memo_path() -> Path:
    from hemocount.onnx_cache import cache_dir

    return cache_dir().parent / MEMO_NAME


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns]


def sha256_memo(path: Path) -> str:
    """Hex sha256 of ``path``, from the memo when the file is unchanged since it was last hashed.

    Raises:
        OSError: The file cannot be read.
    """
    key = str(path.resolve())
    stamp = _stamp(path)
    memo_file = _memo_path()
    try:
        memo = json.loads(memo_file.read_text())
        hit = memo.get(key) if isinstance(memo, dict) else None
    except (OSError, ValueError):
        memo, hit = {}, None
    if isinstance(hit, dict) and hit.get("stamp") == stamp and isinstance(hit.get("sha256"), str):
        return hit["sha256"]
    digest = sha256_file(path)
    if _stamp(path) != stamp:  # changed while being read: do not remember a digest of a moving target
        return digest
    memo = memo if isinstance(memo, dict) else {}
    memo[key] = {"stamp": stamp, "sha256": digest}
    try:
        from hemocount.io import atomic_write_json

        memo_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(memo_file, memo)
    except OSError as exc:  # a read-only cache only costs the time of hashing again
        log.debug("cannot remember sha256 in %s (%s)", memo_file, exc)
    return digest


__all__ = ["MEMO_NAME", "sha256_memo"]
