"""Output files written atomically: a temporary file beside the target, renamed into place."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import OutputExistsError

__all__ = ["atomic_output"]


@contextmanager
def atomic_output(path: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; it replaces ``path`` only when the block succeeds.

    Refuses an existing ``path`` unless ``force``. The temporary file keeps the suffix, so writers
    that pick a format by extension (numpy, matplotlib) behave as with the real name.
    """
    path = Path(path)
    if path.exists() and not force:
        raise OutputExistsError(f"{path}: already exists; pass --force to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
