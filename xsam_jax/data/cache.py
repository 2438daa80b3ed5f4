"""The on-disk cache shared by the loaders: where it is and how files get into it."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np

CACHE_ENV = "XSAM_JAX_CACHE"
DEFAULT_CACHE = Path("~/.cache/xsam_jax")


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """Where generated or decoded datasets are cached.

    Args:
        path: an explicit directory; takes precedence.

    Returns:
        `path`, else `$XSAM_JAX_CACHE`, else `~/.cache/xsam_jax` (user-expanded).
    """
    if path is None:
        path = os.environ.get(CACHE_ENV) or DEFAULT_CACHE
    return Path(path).expanduser()


def write_npz_atomically(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Saves `arrays` as an uncompressed .npz at `path`, which appears only when complete.

    Write-then-rename, so that a concurrent reader (another test worker, run or process)
    never sees a partial file. A plain open() rather than tempfile keeps the umask's
    permissions (tempfile creates 0600 files, unreadable in a shared cache).

    Args:
        path: the final file name; its directory is created if needed.
        arrays: the arrays, saved under their keys.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "xb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]  # numpy's stub: kwargs as bool
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
