"""The README's Python examples run as written (with fewer sampling steps: [`STEPS`]).

Every Python block of README.md is marked: `<!-- readme-test: NAME -->` blocks are run verbatim, and a block that
cannot run offline in a test says why in `<!-- readme-not-run: REASON -->`. Each marked block is run verbatim in a
process of its own (a fork of the pre-imported `fork_server`), in one working folder (the blocks share the files they
write); blocks run one after the other in one process each get fresh globals, as a script (`__name__ ==
"__main__"`), so one block's imports and names never serve another. `stock-load` runs in a fresh interpreter with
`synfer_diffusers` made unimportable (a `sys.meta_path` finder installed before the block), as for a user who only
has diffusers.
"""

import json
import os
import re
import shlex
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


STEPS = (re.compile(r"\bnum_inference_steps=\d+"), "num_inference_steps=5")
"""The README's step counts (25) as the tests run them: 5 steps take every path 25 do (semantic guidance's window,
the last 40% of the steps, still holds a step) in a fifth of the time."""


def readme_blocks() -> dict[str, str]:
    """`{name: code}` of the README's marked Python blocks, their step counts as in [`STEPS`]."""
    pattern = re.compile(r"<!-- readme-test: ([\w-]+) -->\n```python\n(.*?)```", re.S)
    return {name: STEPS[0].sub(STEPS[1], code) for name, code in pattern.findall(README.read_text(encoding="utf-8"))}


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


@pytest.mark.slow  # one forked process; the embedded default samples 2 images
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


SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SMALL = {"--resolution": "16", "--mixed_precision": "no", "--train_batch_size": "4", "--num-samples": "14"}
"""The recipe's sizes for SD 1.5 on a GPU -> their test sizes (16 px: a tiny Stable Diffusion's images)."""
TRAINING = ["--max_train_steps", "2", "--validation_expressions", "happy", "--num_validation_identities", "1",
            "--validation_inference_steps", "1"]  # fmt: skip
EXTRA = {
    "build-fetext": ["--no-progress"],
    "train_text_to_image.py": TRAINING,
    "train_au_adapter.py": TRAINING,
    "train_feranno.py": ["--max_train_steps", "2", "--train_batch_size", "4", "--max_eval_samples", "8",
                         "--hidden_dim", "32", "--num_heads", "2"],
    "generate": ["--num-inference-steps", "2", "--batch-size", "7", "--no-progress"],
    "train_fer_classifier.py": ["--hidden_sizes", "8", "16", "--depths", "1", "1", "--max_train_steps", "3",
                                "--train_batch_size", "8", "--num_threads", "1"],
}  # fmt: skip
"""Flags added to each command: few steps, no long validation."""


def readme_recipe() -> list[list[str]]:
    """The commands of the README's "Training on real data" block (continuation lines joined, `pip` left out)."""
    section = README.read_text(encoding="utf-8").split("## Training on real data", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1).replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in block.splitlines() if line and not line.startswith("pip ")]


def at_test_size(command: list[str]) -> list[str]:
    """A recipe command as this test runs it: `accelerate launch SCRIPT` (one process on a CPU: the script itself)
    and `python SCRIPT` as `python SCRIPT`, `synfer` as `python -m synfer_diffusers.cli`; SD 1.5 replaced by the
    tiny one in `sd15`, the sizes of `SMALL`, the flags of `EXTRA` added."""
    if command[:2] == ["accelerate", "launch"] or command[0] == "python":
        command = command[2:] if command[0] == "accelerate" else command[1:]
        name, argv = Path(command[0]).name, [sys.executable, str(README.parent / command[0]), *command[1:]]
    else:
        assert command[0] == "synfer", command
        name, argv = command[1], [sys.executable, "-m", "synfer_diffusers.cli", *command[1:]]
    argv = ["sd15" if token == SD15 else token for token in argv]
    argv = [SMALL.get(argv[i - 1], token) if i else token for i, token in enumerate(argv)]
    return [*argv, *EXTRA[name]]


def write_recipe_inputs(folder: Path) -> None:
    """What the recipe starts from, at toy size: `your_faces` (a folder of face PNGs), `your_au_model` (an AU
    regressor naming its AUs), `your_labelled_faces` (FaceWorld: `image`, `label`, train / test) and `sd15` (a tiny
    Stable Diffusion folder of 16 px images)."""
    from transformers import ResNetConfig, ResNetForImageClassification
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    from synfer_diffusers import AUSpace
    from synfer_diffusers.data.faceworld import build_faceworld_dataset, write_faceworld_splits
    from training_chain import save_tiny_stable_diffusion

    (folder / "your_faces").mkdir()
    for i, image in enumerate(build_faceworld_dataset(16, seed=1)["image"]):
        image.save(folder / "your_faces" / f"face_{i:02d}.png")
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8], depths=[1], num_labels=12, problem_type="regression")
    config.au_names = list(AUSpace.disfa12().names)
    ResNetForImageClassification(config).save_pretrained(folder / "your_au_model")
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(folder / "your_au_model")
    write_faceworld_splits(folder / "your_labelled_faces", num_train=16, num_test=8, seed=0, show_progress=False)
    save_tiny_stable_diffusion(folder / "sd15")


@pytest.mark.slow  # six commands, three of them training runs, on tiny models
def test_training_on_real_data_recipe_runs_as_written(tmp_path):
    """The README's recipe from a folder of face images to a classifier: FEText, stage A, stage B, FERAnno, a
    synthetic set voted by FERAnno, and a classifier trained on it and scored on the real test faces."""
    import datasets

    from synfer_diffusers import AUSpace, SynFERPipeline

    write_recipe_inputs(tmp_path)
    commands = readme_recipe()
    assert [c[2] if c[0] == "accelerate" else c[1] for c in commands] == [
        "build-fetext", "examples/train_text_to_image.py", "examples/train_au_adapter.py", "examples/train_feranno.py",
        "generate", "examples/train_fer_classifier.py",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    for command in commands:
        result = fork_server.run(at_test_size(command), cwd=tmp_path, env=env, capture_output=True, text=True,
                                 timeout=300)  # fmt: skip
        assert result.returncode == 0, f"{shlex.join(command)}\n{result.stderr[-3000:]}"

    fetext = datasets.load_dataset(str(tmp_path / "fetext"), split="train", cache_dir=str(tmp_path / ".cache"))
    assert len(fetext) == 16 and len(fetext[0]["action_units"]) == 12 and fetext[0]["text"]
    assert SynFERPipeline.from_pretrained(tmp_path / "sd15_synfer").au_space == AUSpace.disfa12()
    synthetic = datasets.load_dataset(str(tmp_path / "synthetic"), split="train", cache_dir=str(tmp_path / ".cache"))
    assert len(synthetic) == 14 and {v["voter"] for v in synthetic[0]["votes"]} == {"target", "feranno_pass"}
    metrics = json.loads((tmp_path / "fer_classifier" / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["test"]["original"]["clean_labels"]["num_samples"] == 8
