"""The model folder contract between export and engine (stdlib only).

A model folder holds ``manifest.json``, one ``.onnx`` file per graph and ``tokenizer.json``.
The manifest carries every fact the engine needs, so the engine never guesses.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import re
import tempfile
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelLoadError

__all__ = ["FORMAT_VERSION", "MANIFEST_NAME", "TensorInfo", "GraphInfo", "Manifest", "sha256_of", "has_sha256",
           "cache_root", "read_user_record", "write_user_record", "external_data_paths", "folder_files"]

FORMAT_VERSION = 2  # 2: every graph carries its check (inputs, fp32 references, gate), run where the folder runs
MANIFEST_NAME = "manifest.json"


@dataclass
class TensorInfo:
    """A graph input or output: name, element type and shape (ints or symbolic axis names)."""

    name: str
    dtype: str
    shape: list[int | str]


@dataclass
class GraphInfo:
    """One exported graph: where it is, what it takes and gives, and the parity it reached.

    ``parity`` compares the fp32 graph with PyTorch; ``optimization`` records the fused operators;
    ``accuracy`` the lower-precision gate (cosine to fp32 per output) when ``precision`` is not fp32;
    ``backends`` copies of the graph for another runtime than ONNX Runtime, each with its own gate;
    ``check`` the graph's stored check (:mod:`clipblip.engine.checks`): ``file`` and ``sha256`` of the
    inputs and fp32 references, the gate (``cosine`` per output for lossy graphs, ``max_abs_diff`` for fp32,
    ``teacher`` for a decoder step), and ``cases`` (the sizes of the stored inputs).
    """

    file: str
    sha256: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    precision: str = "fp32"
    parity: dict[str, Any] = field(default_factory=dict)
    optimization: dict[str, Any] = field(default_factory=dict)
    accuracy: dict[str, Any] = field(default_factory=dict)
    # the same graph for another runtime: {"openvino": {"file", "files": {name: sha256}, "weights", "accuracy"}}
    backends: dict[str, Any] = field(default_factory=dict)
    data: dict[str, str] = field(default_factory=dict)  # the graph's external weight files: name → sha256
    check: dict[str, Any] = field(default_factory=dict)

    @property
    def attention_outputs(self) -> list[str]:
        """Outputs added by ``export --attentions`` (attention weights, for visualisation)."""
        return [t.name for t in self.outputs if re.fullmatch(r"(self_|cross_)?attentions_\d+", t.name)]

    @property
    def result_outputs(self) -> list[str]:
        """The outputs inference needs (everything but attention weights)."""
        return [t.name for t in self.outputs if t.name not in self.attention_outputs]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GraphInfo:
        return cls(
            file=d["file"],
            sha256=d["sha256"],
            inputs=[TensorInfo(**t) for t in d["inputs"]],
            outputs=[TensorInfo(**t) for t in d["outputs"]],
            precision=d.get("precision", "fp32"),
            parity=d.get("parity", {}),
            optimization=d.get("optimization", {}),
            accuracy=d.get("accuracy", {}),
            backends=d.get("backends", {}),
            data=d.get("data", {}),
            check=d.get("check", {}),
        )


@dataclass
class Manifest:
    """Everything in ``manifest.json``.

    ``image`` holds preprocessing (resize, crop, resample, rescale, mean, std); ``tokenizer`` the
    tokenizer file, max length and special-token ids; ``model`` family-specific facts (CLIP's
    ``logit_scale``, BLIP's generation ids). ``export`` what the export cost: seconds, CPU seconds and peak
    resident memory, in all and per step (informative: nothing reads it back; folders without it load).
    """

    family: str
    tasks: list[str]
    source: dict[str, Any]
    graphs: dict[str, GraphInfo]
    image: dict[str, Any]
    tokenizer: dict[str, Any]
    model: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    export: dict[str, Any] = field(default_factory=dict)

    @property
    def random_weights(self) -> bool:
        return bool(self.source.get("random_weights"))

    @property
    def towers(self) -> list[str] | None:
        """The towers a dual-encoder folder holds (``model.towers``: ``["image"]``, ``["text"]`` or both, as
        ``export --towers`` chose); None where the manifest does not say (BLIP, or a folder exported before it
        was recorded): every graph its tasks need."""
        towers = self.model.get("towers")
        return None if towers is None else [str(tower) for tower in towers]

    @property
    def one_tower(self) -> str | None:
        """The tower of a folder that holds one alone (``export --towers image|text``), else None."""
        towers = self.towers
        return towers[0] if towers is not None and len(towers) == 1 else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, folder: str | os.PathLike) -> Path:
        path = Path(folder) / MANIFEST_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return path

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        return cls(
            family=d["family"],
            tasks=list(d["tasks"]),
            source=dict(d["source"]),
            graphs={name: GraphInfo.from_dict(g) for name, g in d["graphs"].items()},
            image=dict(d["image"]),
            tokenizer=dict(d["tokenizer"]),
            model=dict(d.get("model", {})),
            format_version=d["format_version"],
            export=dict(d.get("export") or {}),
        )

    @classmethod
    def load(cls, folder: str | os.PathLike, any_version: bool = False) -> Manifest:
        """Read and check ``folder/manifest.json``; raise ModelLoadError naming what is wrong. ``any_version``
        also reads an older format (to list the files an earlier clipblip wrote, never to run them)."""
        path = Path(folder) / MANIFEST_NAME
        if Path(folder).exists() and not Path(folder).is_dir():
            raise ModelLoadError(f"{folder}: is a file, not a model folder (the folder `clipblip export` wrote)")
        if not Path(folder).is_dir():
            raise ModelLoadError(f"{folder}: not a model folder (no such folder)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ModelLoadError(f"{path}: missing; export the model with `clipblip export`") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ModelLoadError(f"{path}: unreadable manifest ({e})") from None
        version = data.get("format_version") if isinstance(data, dict) else None
        older = any_version and isinstance(version, int) and 1 <= version <= FORMAT_VERSION
        if version != FORMAT_VERSION and not older:
            raise ModelLoadError(
                f"{path}: manifest format version {version!r} is not supported "
                f"(this clipblip reads version {FORMAT_VERSION}); re-export the model"
            )
        try:
            return cls.from_dict(data)
        except (KeyError, TypeError, AttributeError) as e:
            raise ModelLoadError(f"{path}: malformed manifest (bad or missing field {e})") from None

    def graph(self, folder: str | os.PathLike, name: str) -> GraphInfo:
        """The entry of graph ``name``; ModelLoadError if the folder's manifest lacks it."""
        if name not in self.graphs:
            raise ModelLoadError(f"{folder}: the model folder has no '{name}' graph (has: {', '.join(self.graphs)})")
        return self.graphs[name]


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def cache_root() -> Path:
    """clipblip's folder in the user's cache: ``$CLIPBLIP_CACHE``, else ``$XDG_CACHE_HOME/clipblip``, else
    ``~/.cache/clipblip``."""
    if os.environ.get("CLIPBLIP_CACHE"):
        return Path(os.environ["CLIPBLIP_CACHE"])
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "clipblip"


VERIFIED_NAME = "verified.json"
VERIFIED_LIMIT = 1000  # files remembered


def _identity(path: Path) -> list:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev]


RECORD_LOCK = threading.RLock()  # one read-modify-write of a user record at a time in this process


def has_sha256(path: str | os.PathLike, sha256: str) -> bool:
    """Whether the file's sha256 is ``sha256``, hashing it only when it changed since it last matched.

    As git's index does, a file whose size, modification time, inode and device equal those recorded
    when its hash last matched is not read again (``$XDG_CACHE_HOME/clipblip/verified.json``): a cold
    start then skips hashing hundreds of MB, while a damaged, replaced or rewritten file is hashed.
    """
    path = Path(path).resolve()
    known = read_user_record(VERIFIED_NAME)
    if known.get(str(path)) == [*_identity(path), sha256]:
        return True
    if sha256_of(path) != sha256:
        return False
    with RECORD_LOCK:  # graphs open side by side: read again, so that no thread's record is lost
        known = read_user_record(VERIFIED_NAME)
        known.pop(str(path), None)
        known[str(path)] = [*_identity(path), sha256]
        write_user_record(VERIFIED_NAME, known, VERIFIED_LIMIT)  # without a writable cache, every load hashes
    return True


def read_user_record(name: str) -> dict[str, Any]:
    """A JSON object clipblip keeps in the user's cache (:func:`cache_root`), or {} when absent or unreadable."""
    try:
        known = json.loads((cache_root() / name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


def write_user_record(name: str, entries: dict[str, Any], limit: int) -> None:
    """Replace that object atomically with the last ``limit`` of ``entries``; best effort (a cache that cannot be
    written costs time, never answers)."""
    path = cache_root() / name
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, encoding="utf-8") as f:
            temporary = f.name
            json.dump(dict(list(entries.items())[-limit:]), f)
        os.replace(temporary, path)
    except OSError:
        if temporary:
            Path(temporary).unlink(missing_ok=True)


LOCATION_ENTRY = b"\n\x08location\x12"  # StringStringEntryProto(key="location", value=...) as protobuf bytes


def external_data_paths(path: Path) -> list[str]:
    """Every external-data location a graph file names, each once (read from its bytes, without ONNX Runtime)."""
    found = []
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return found
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            at = data.find(LOCATION_ENTRY)
            while at != -1:
                at += len(LOCATION_ENTRY)
                length, shift = 0, 0
                while at < len(data):  # varint length of the value
                    byte = data[at]
                    at += 1
                    length |= (byte & 0x7F) << shift
                    shift += 7
                    if byte < 0x80:
                        break
                found.append(data[at : at + length].decode("utf-8", "replace"))
                at = data.find(LOCATION_ENTRY, at + length)
    return list(dict.fromkeys(found))  # every tensor names its file: a graph of 300 weights, 300 times


def folder_files(folder: str | os.PathLike, manifest: Manifest) -> set[str]:
    """The names of the files an export writes into ``folder``: the manifest, the tokenizer, each
    graph and the external data each graph names."""
    folder = Path(folder)
    names = {MANIFEST_NAME, str(manifest.tokenizer.get("file", ""))}
    for graph in manifest.graphs.values():
        names.add(graph.file)
        if graph.check.get("file"):
            names.add(graph.check["file"])
        for backend in graph.backends.values():
            names.update(backend.get("files", {}))
        if (folder / graph.file).is_file():
            names.update(external_data_paths(folder / graph.file))
    return names
