"""Writing outputs safely: nothing clipblip did not write is ever replaced, and nothing half-written remains.

Files are written to a temporary file beside the target and renamed into place; folders are built in
a staging folder and moved into place. ``--force`` replaces only what clipblip wrote itself: a file
carrying clipblip's mark (PNG/SVG/PDF metadata, a key in an ``.npz``; for an ``.npy``, which has no room
for one, a record in the user's cache of what was written) or a model folder holding just the files its
manifest names. Written files get the permissions the user's umask gives a new file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from . import __version__
from .errors import ClipblipError, OutputError, OutputExistsError

__all__ = ["MARK", "NPZ_MARK", "atomic_output", "staged_folder", "check_output", "written_by_clipblip",
           "remember_written", "figure_metadata", "is_model_folder", "replaced_atomically", "umask"]

MARK = f"clipblip {__version__}"  # written into the metadata of every figure and archive clipblip writes
NPZ_MARK = "clipblip"  # the key of that mark inside an .npz archive
FIGURE_FORMATS = (".png", ".svg", ".pdf")


def umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def figure_metadata(path: str | os.PathLike) -> dict[str, str]:
    """``savefig(metadata=...)`` for ``path``: the mark that lets --force replace the figure later."""
    return {"Software": MARK} if Path(path).suffix.lower() == ".png" else {"Creator": MARK}


WRITTEN_NAME = "written.json"  # in the user's cache: files whose format has no room for a mark (.npy)
WRITTEN_LIMIT = 1000


def remember_written(path: str | os.PathLike) -> None:
    """Record that clipblip wrote the file now at ``path`` (its sha256), for a format that cannot carry a mark;
    best effort: without the record, --force refuses to replace the file, nothing worse."""
    from .manifest import read_user_record, sha256_of, write_user_record

    path = Path(path).absolute()
    known = read_user_record(WRITTEN_NAME)
    known.pop(str(path), None)
    known[str(path)] = sha256_of(path)
    write_user_record(WRITTEN_NAME, known, WRITTEN_LIMIT)


def written_by_clipblip(path: Path) -> bool:
    """Whether the file at ``path`` carries clipblip's mark (for a YAML file: its first line, a comment; for WebVTT
    subtitles: their NOTE; for an .npy array or SRT subtitles: clipblip's record of the file it wrote there, with
    the same sha256)."""
    suffix = path.suffix.lower()
    try:
        if suffix in (".npy", ".srt"):
            from .manifest import read_user_record, sha256_of

            recorded = read_user_record(WRITTEN_NAME).get(str(path.absolute()))
            return recorded is not None and recorded == sha256_of(path)
        if suffix == ".npz":
            with zipfile.ZipFile(path) as archive:
                return f"{NPZ_MARK}.npy" in archive.namelist()
        if suffix == ".png":
            from PIL import Image

            with Image.open(path) as image:
                return str(image.info.get("Software", "")).startswith("clipblip ")
        if suffix in (".svg", ".pdf"):  # matplotlib's Creator field: <dc:title>…</dc:title> or /Creator (…)
            with open(path, "rb") as f:
                head = f.read(1 << 16)
            return b"<dc:title>clipblip " in head or b"/Creator (clipblip " in head
        if suffix in (".yaml", ".yml"):  # a config: its first line says who wrote it
            with open(path, "rb") as f:
                return f.readline(1 << 10).startswith(b"# written by clipblip ")
        if suffix == ".vtt":
            with open(path, "rb") as f:
                return f.read(1 << 10).startswith(b"WEBVTT\n\nNOTE written by clipblip ")
    except (OSError, zipfile.BadZipFile, ValueError, SyntaxError):
        return False
    return False


def is_model_folder(path: Path) -> bool:
    """A folder that ``clipblip export`` wrote: a readable manifest, and no file the manifest does not name."""
    from .manifest import Manifest, folder_files

    try:
        manifest = Manifest.load(path, any_version=True)  # an earlier clipblip's export is clipblip's too
        expected = folder_files(path, manifest)
    except (ClipblipError, OSError):
        return False
    return all(entry.name in expected and entry.is_file() and not entry.is_symlink() for entry in path.iterdir())


def check_parent(path: Path) -> None:
    """OutputError unless the folders above ``path`` exist as folders or can be created."""
    for parent in path.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise OutputError(f"{path}: cannot be written: {parent} is not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise OutputError(f"{path}: cannot be written: no permission to write in {parent}")
            return


def check_output(path: str | os.PathLike, force: bool, folder: bool = False) -> Path:
    """``path`` if it may be written: it does not exist, or ``force`` is given and clipblip wrote it
    (or, for a folder, it is empty).

    Anything else — a user's file or folder, a link, a folder where a file goes — is refused with
    an OutputError naming it, whatever ``force`` says.
    """
    path = Path(path)
    if path.is_symlink():
        raise OutputError(f"{path}: is a symbolic link; clipblip never replaces one, choose another path")
    if not path.exists():
        check_parent(path)
        return path
    if not folder and path.is_dir():  # --force would not help: say so first
        raise OutputError(f"{path}: is a folder; give the name of a file to write (one inside it, for example)")
    if folder and not path.is_dir():
        raise OutputError(f"{path}: is a file, not a model folder; clipblip never replaces it, even with --force")
    if not force:
        raise OutputExistsError(f"{path}: already exists; pass --force to replace it (only what clipblip wrote "
                                f"can be replaced)")
    if folder:
        if not any(path.iterdir()):
            return path  # an empty folder holds nothing to lose
        if not is_model_folder(path):
            raise OutputError(f"{path}: is not a model folder written by clipblip export (or holds other files "
                              f"too); it is never replaced, even with --force")
    else:
        if not written_by_clipblip(path):
            raise OutputError(f"{path}: was not written by clipblip; it is never replaced, even with --force")
    return path


@contextmanager
def replaced_atomically(path: Path, error: type[Exception] = OutputError) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds it gets the umask's permissions and
    takes the place of ``path``; otherwise it is removed. No ownership check: callers decide what ``path``
    may be. ``error(message)`` is raised when the temporary file cannot be made."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix or ".tmp", dir=path.parent)
    except OSError as e:
        raise error(f"{path}: cannot be written ({e.strerror or e})") from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes it private; the result is an ordinary file
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_output(path: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; it replaces ``path`` only when the block succeeds.

    ``path`` must pass :func:`check_output`. The temporary file keeps the suffix, so writers that
    pick a format by extension (numpy, matplotlib) behave as with the real name.
    """
    path = check_output(path, force)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{path}: cannot be written ({e.strerror or e})") from None
    with replaced_atomically(path) as tmp:
        yield tmp


@contextmanager
def staged_folder(out: str | os.PathLike, force: bool) -> Iterator[Path]:
    """Yield an empty staging folder beside ``out``; it takes the place of ``out`` only if the block
    succeeds. ``out`` must pass :func:`check_output` as a model folder."""
    out = check_output(Path(out).absolute(), force, folder=True)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    except OSError as e:
        raise OutputError(f"{out}: cannot be written ({e.strerror or e})") from None
    staging.chmod(0o777 & ~umask())  # mkdtemp makes it private; the result is an ordinary folder
    try:
        yield staging
        if out.exists():
            check_output(out, force, folder=True)  # still clipblip's, now that the export is done
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(staging, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
