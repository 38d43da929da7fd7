"""A checkpoint's own decoding settings (generation_config.json) are recorded in the manifest."""

import json
import shutil

from clipblip.export import export_model
from clipblip.manifest import Manifest


def test_the_checkpoints_generation_config_is_recorded(blip_caption, tmp_path):
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(blip_caption.checkpoint, checkpoint)
    settings = {"num_beams": 3, "max_length": 20, "min_length": 5, "repetition_penalty": 1.1}
    config_file = checkpoint / "generation_config.json"
    config = json.loads(config_file.read_text()) if config_file.exists() else {}
    config_file.write_text(json.dumps({**config, **settings, "output_scores": True}))
    export_model(str(checkpoint), tmp_path / "exported")
    recorded = Manifest.load(tmp_path / "exported").model["generation"]["config"]
    assert recorded == settings  # transformers' own defaults and unrelated keys are left out
    assert Manifest.load(blip_caption.exported).model["generation"]["config"] == {}
