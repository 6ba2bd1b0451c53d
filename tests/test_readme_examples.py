"""The README's Python examples run as written.

Every Python block of README.md is marked: `<!-- readme-test: NAME -->` blocks are run verbatim, and a block that
cannot run offline in a test says why in `<!-- readme-not-run: REASON -->`. Each marked block is run verbatim in a
process of its own (a fork of the pre-imported `fork_server`), in one working folder (the blocks share the files they
write); blocks run one after the other in one process each get fresh globals, as a script (`__name__ ==
"__main__"`), so one block's imports and names never serve another. `stock-load` runs in a fresh interpreter with
`synfer_diffusers` made unimportable (a `sys.meta_path` finder installed before the block), as for a user who only
has diffusers.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import PIL.Image
import pytest

import fork_server

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


SCRIPTS = """
import sys
for code in sys.argv[1:]:
    exec(compile(code, "<README block>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
"""
"""Runs each argument as a script, one after the other, each with fresh globals."""


def _run(cwd: Path, *blocks: str, fresh: bool = False) -> None:
    """Runs `blocks` in order in one process in `cwd`: a fork of the pre-imported server, or with `fresh` a new
    interpreter (8-12 s of imports) that has imported nothing the blocks do not import."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    run = subprocess.run if fresh else fork_server.run
    result = run([sys.executable, "-c", SCRIPTS, *blocks], cwd=cwd, env=env, capture_output=True, text=True,
                 timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]


NOT_RUN = re.compile(r"<!-- readme-not-run: ([^>]+) -->\n```python\n")


def test_every_python_block_is_run_or_says_why_not():
    text = README.read_text(encoding="utf-8")
    blocks = text.count("```python\n")
    assert len(readme_blocks()) + len(NOT_RUN.findall(text)) == blocks
    assert {"python", "default-controls", "stock-save", "stock-load", "adapter", "edit"} <= set(readme_blocks())


@pytest.mark.slow  # one forked process; the embedded default samples 2 images in 25 steps
def test_python_examples_run_as_written(tmp_path):
    blocks = readme_blocks()
    _run(tmp_path, blocks["python"], blocks["default-controls"])
    assert (tmp_path / "ckpt" / "model_index.json").is_file()


@pytest.mark.slow  # running the embedded default three times; one fresh interpreter importing the HF stack
def test_stock_diffusers_and_adapter_routes_run_as_written(tmp_path):
    blocks = readme_blocks()
    _run(tmp_path, blocks["stock-save"], blocks["adapter"])  # the adapter block does not read what stock-load writes
    assert (tmp_path / "synfer-faceworld" / "pipeline_synfer.py").is_file()
    assert (tmp_path / "faceworld-au-adapter" / "au_adapter.safetensors").is_file()
    _run(tmp_path, BLOCK_PACKAGE + blocks["stock-load"], fresh=True)  # synfer_diffusers never imported
    assert (tmp_path / "happy.png").is_file()


@pytest.mark.slow  # 28 edits by the embedded default
def test_edit_example_runs_as_written(tmp_path):
    _run(tmp_path, readme_blocks()["edit"])
    assert PIL.Image.open(tmp_path / "edit_grid.png").size == (512, 256)
