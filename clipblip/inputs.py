"""Image arguments: files, folders (searched recursively) and quoted glob patterns, in a stable order; the CLI
and the search index find their files here (stdlib only)."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Sequence

from .errors import UsageError

__all__ = ["IMAGE_SUFFIXES", "VIDEO_SUFFIXES", "is_video_name", "ImageArgs", "distinct_names", "expand_images", "has_manifest"]

# what Pillow decodes and people keep photos in; other files under a folder are skipped and counted
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".dib", ".webp", ".tif",
                            ".tiff", ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico", ".jp2", ".j2k", ".avif",
                            ".heic", ".heif"})
# what `clipblip index` reads as videos beside photos (clipblip.video; stdlib here, the list is kept in step)
VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi"})
GLOB_CHARS = frozenset("*?[")


@dataclass
class ImageArgs:
    """The image files an argument list names, and how many other files its folders and patterns held."""

    paths: list[str] = field(default_factory=list)
    skipped: int = 0


def has_manifest(path: str | os.PathLike) -> bool:
    """Whether ``path`` looks like a folder `clipblip export` wrote (it holds a manifest.json)."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "manifest.json"))


def is_image_name(path: str, videos: bool = False) -> bool:
    """Whether a file name is an image's (or, with ``videos``, a video's) by its extension."""
    suffix = Path(path).suffix.lower()
    return suffix in IMAGE_SUFFIXES or (videos and suffix in VIDEO_SUFFIXES)


def is_video_name(path: str) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def folder_images(folder: str, found: ImageArgs, videos: bool = False) -> list[str]:
    """Image files (and with ``videos``, video files) under ``folder``, recursively, sorted; hidden files and
    folders are left out."""
    images = []
    for root, dirs, files in os.walk(folder, onerror=None):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = os.path.join(root, name)
            if is_image_name(name, videos):
                images.append(path)
            else:
                found.skipped += 1
    return images


def expand_images(args: Sequence[str], option: str = "IMAGE", videos: bool = False) -> ImageArgs:
    """Files as given (a missing or broken one fails as its own item later), folders expanded to their
    image files, glob patterns (quoted, so the shell left them alone; ``**`` recurses) to the image
    files they match. A folder or pattern with no image is a UsageError naming it."""
    found = ImageArgs()
    for arg in args:
        arg = os.fspath(arg)
        if os.path.isdir(arg):
            images = folder_images(arg, found, videos)
            if not images and has_manifest(arg):
                raise UsageError(f"{option} {arg}: is a model folder, not images (the model folder is the first "
                                 f"argument, DIR)")
            if not images:
                raise UsageError(f"{option} {arg}: a folder with no image files in it")
        elif not os.path.lexists(arg) and GLOB_CHARS & set(arg):
            matches = sorted(glob.glob(arg, recursive=True))
            files = [m for m in matches if os.path.isfile(m)]
            images = [m for m in files if is_image_name(m, videos)]
            found.skipped += len(files) - len(images)
            if not images:
                raise UsageError(f"{option} {arg}: the pattern matches no image file")
        else:
            images = [arg]
        found.paths.extend(images)
    return found


def distinct_names(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Each path's shortest tail (file name, then its folders) that no other path of the list shares:
    photos/a/img.jpg and photos/b/img.jpg → a/img.jpg, b/img.jpg. The same path twice keeps one name."""
    parts = [PurePath(p).parts or (str(p),) for p in paths]
    depth = [1] * len(parts)
    while True:
        names = [str(PurePath(*p[-d:])) for p, d in zip(parts, depth)]
        owners: dict[str, set] = {}
        for name, p in zip(names, parts):
            owners.setdefault(name, set()).add(p)
        grow = [i for i, name in enumerate(names) if len(owners[name]) > 1 and depth[i] < len(parts[i])]
        if not grow:
            return names
        for i in grow:
            depth[i] += 1
