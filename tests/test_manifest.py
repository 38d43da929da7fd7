import json

import pytest

from clipblip.errors import ModelLoadError
from clipblip.manifest import Manifest


def test_round_trip(tiny_clip, tmp_path):
    manifest = Manifest.load(tiny_clip.exported)
    manifest.write(tmp_path)
    assert Manifest.load(tmp_path) == manifest


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(format_version=99), "format version 99"),
    (lambda d: d.pop("graphs"), "graphs"),
])
def test_bad_manifests_are_named(tiny_clip, tmp_path, edit, message):
    data = json.loads((tiny_clip.exported / "manifest.json").read_text())
    edit(data)
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match=message):
        Manifest.load(tmp_path)


def test_missing_manifest(tmp_path):
    with pytest.raises(ModelLoadError, match="manifest.json: missing"):
        Manifest.load(tmp_path)
