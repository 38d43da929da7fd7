import subprocess
import sys


def test_engine_imports_no_torch_or_transformers():
    code = (
        "import sys, clipblip.engine, clipblip.manifest, clipblip.errors\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'onnx'))\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", f"clipblip.engine imported: {result.stdout.strip()}"


def test_the_check_would_see_torch():
    code = "import sys, torch; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "True"
