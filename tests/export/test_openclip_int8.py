"""int8 OpenCLIP folders of every tiny architecture: exported here through the CLI, each graph int8 (or fp32 where its
gate refused int8, said in the manifest), and `clipblip verify` passes natively and on AVX2 kernels (qemu's Haswell,
tools/on-avx2). Slow: qemu starts Python in seconds and verifies each folder emulated."""

import json
import os
import subprocess
import sys

import pytest

from clipblip.manifest import Manifest
from tests.engine.test_cross_cpu import ON_AVX2, ROOT, needs_qemu
from tests.helpers import run_cli

pytest.importorskip("open_clip", reason="open_clip and timm (the `open_clip` extra) are not installed")

from tests.openclip_helpers import architectures  # noqa: E402

ARCHS = list(architectures())
VERIFY = """
import json, sys
from clipblip.engine.checks import verify_folder
from clipblip.engine.machine import this_machine
print(json.dumps({"machine": this_machine().to_dict(),
                  "verify": {name: verify_folder(folder) for name, folder in json.loads(sys.argv[1]).items()}}))
"""


@pytest.fixture(scope="module")
def int8_openclip(openclip, tmp_path_factory):
    from clipblip.cli import main

    root = tmp_path_factory.mktemp("openclip-int8")
    for arch in ARCHS:
        assert main(["export", str(openclip(arch).checkpoint), "--out", str(root / arch), "--precision", "int8"]) == 0
    return {arch: root / arch for arch in ARCHS}


@pytest.mark.slow
def test_int8_folders_verify_here(int8_openclip, capsys):
    for arch, folder in int8_openclip.items():
        graphs = Manifest.load(folder).graphs
        assert any(g.precision == "int8" for g in graphs.values()), arch
        for name, graph in graphs.items():
            assert graph.precision == "int8" or graph.accuracy.get("passed") is False, (arch, name, graph.accuracy)
        code, out, err = run_cli(capsys, "verify", folder)
        assert code == 0, (arch, out, err)


@pytest.mark.slow
@needs_qemu
def test_int8_folders_verify_on_avx2_kernels(int8_openclip):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    folders = json.dumps({arch: str(folder) for arch, folder in int8_openclip.items()})
    done = subprocess.run([str(ON_AVX2), sys.executable, "-c", VERIFY, folders], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["machine"]["int8_kernels"] == "avx2"
    for arch in ARCHS:
        for graph in result["verify"][arch]:
            assert graph["passed"], (arch, graph)
