"""One way to open an engine for a model folder: its family's engine class, from the folder's manifest, checked
for the task the caller needs. The CLI, the server, the search index and the Ray workers all open folders here."""

from __future__ import annotations

import os
from typing import Any, Sequence

from ..defaults import MAX_BATCH, MAX_IMAGE_PIXELS
from ..errors import WrongModelError
from ..families import TOWERS, family_of_task, load_engine_class, title as family_title
from ..manifest import Manifest
from .base import tower_refusal, wanted_export

__all__ = ["open_engine"]


def open_engine(folder: str | os.PathLike, tasks: str | Sequence[str] = (), *, provider: str = "auto",
                threads: int | None = None, max_batch: int = MAX_BATCH,
                max_image_pixels: int | None = MAX_IMAGE_PIXELS, needed_by: str | None = None, **engine: Any):
    """The engine of whatever family ``folder`` holds. With ``tasks`` (one, or several of which any will do), the
    folder must do one of them before anything loads: else a WrongModelError names what it holds, what
    ``needed_by`` (e.g. "`clipblip caption`"; default: the task) needs, and the export that makes such a folder.
    ``engine`` passes on to the family's ``from_dir`` (``verify``, ``io_binding``)."""
    tasks = (tasks,) if isinstance(tasks, str) else tuple(tasks)
    manifest = Manifest.load(folder)
    if tasks and not set(tasks) & set(manifest.tasks):
        task = tasks[0]
        if manifest.one_tower is not None and family_of_task(task, prefer=manifest.family) == manifest.family:
            raise WrongModelError(tower_refusal(str(folder), manifest.towers, TOWERS, needed_by or task))
        held = f"{family_title(manifest.family)} model ({', '.join(manifest.tasks)})"
        raise WrongModelError(f"{folder}: holds a {held}; {needed_by or task} needs a folder that does "
                              f"{' or '.join(tasks)}: {wanted_export(family_of_task(task, prefer=manifest.family), task)}")
    return load_engine_class(manifest.family).from_dir(folder, provider=provider, threads=threads, max_batch=max_batch,
                                                       max_image_pixels=max_image_pixels, **engine)
