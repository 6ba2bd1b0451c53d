"""The README's stock-diffusers and AU-adapter examples run as written.

Each Python block preceded by `<!-- readme-test: NAME -->` in README.md is run verbatim in a fresh interpreter, in one
working folder (the blocks share the files they write). `stock-load` runs with `synfer_diffusers` made unimportable
(a `sys.meta_path` finder installed before the block), as for a user who only has diffusers.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import PIL.Image
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"

BLOCK_PACKAGE = '''
import importlib.abc, sys

class _BlockPackage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "synfer_diffusers" or name.startswith("synfer_diffusers."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)

sys.meta_path.insert(0, _BlockPackage())
try:
    import synfer_diffusers  # noqa: F401
except ModuleNotFoundError:
    pass
else:
    raise AssertionError("synfer_diffusers must not be importable here")
'''


def readme_blocks() -> dict[str, str]:
    """`{name: code}` of the README's marked Python blocks."""
    pattern = re.compile(r"<!-- readme-test: ([\w-]+) -->\n```python\n(.*?)```", re.S)
    return dict(pattern.findall(README.read_text(encoding="utf-8")))


def _run(code: str, cwd: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_MODULES_CACHE": str(cwd / "modules")}
    result = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]


def test_readme_marks_the_examples():
    assert {"stock-save", "stock-load", "adapter", "edit"} <= set(readme_blocks())


@pytest.mark.slow  # three interpreters, each importing the HF stack and running the embedded default
def test_stock_diffusers_and_adapter_routes_run_as_written(tmp_path):
    blocks = readme_blocks()
    _run(blocks["stock-save"], tmp_path)
    assert (tmp_path / "synfer-faceworld" / "pipeline_synfer.py").is_file()
    _run(BLOCK_PACKAGE + blocks["stock-load"], tmp_path)
    assert (tmp_path / "happy.png").is_file()
    _run(blocks["adapter"], tmp_path)
    assert (tmp_path / "faceworld-au-adapter" / "au_adapter.safetensors").is_file()


@pytest.mark.slow  # one interpreter importing the HF stack, 28 edits by the embedded default
def test_edit_example_runs_as_written(tmp_path):
    _run(readme_blocks()["edit"], tmp_path)
    assert PIL.Image.open(tmp_path / "edit_grid.png").size == (512, 256)
