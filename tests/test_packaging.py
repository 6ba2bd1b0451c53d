"""Packaging: what the README promises is declared, importable and shipped."""

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pyproject():
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


@pytest.fixture(scope="module")
def readme():
    return (ROOT / "README.md").read_text(encoding="utf-8")


def _requirement_names(requirements):
    return {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


def test_dependencies_are_ranges(pyproject):
    deps = pyproject["project"]["dependencies"]
    names = _requirement_names(deps)
    for name in ("torch", "diffusers", "transformers", "huggingface-hub", "datasets", "accelerate", "peft",
                 "evaluate", "safetensors", "pillow", "numpy", "tqdm"):  # fmt: skip
        assert name in names, name
    assert "torchvision" not in names
    assert not [d for d in deps if "==" in d], "pin versions in constraints.txt, not in the package"
    extras = pyproject["project"]["optional-dependencies"]
    assert "pytest" in _requirement_names(extras["test"])
    assert set(extras) >= {"test", "train", "dev"}
    assert any(re.search(r"\[.*test.*\]", d) and re.search(r"\[.*train.*\]", d) for d in extras["dev"])


def test_constraints_pin_cpu_torch():
    lines = [line.strip() for line in (ROOT / "constraints.txt").read_text().splitlines()]
    assert "torch==2.13.0" in lines


def test_console_script_declared(pyproject):
    assert pyproject["project"]["scripts"]["synfer"] == "synfer_diffusers.cli:main"
    try:
        dist = importlib.metadata.distribution("synfer-diffusers")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("synfer-diffusers is not installed (run `make install`)")
    scripts = {e.name: e.value for e in dist.entry_points if e.group == "console_scripts"}
    assert scripts.get("synfer") == "synfer_diffusers.cli:main"


def test_package_imports_and_version(pyproject):
    import synfer_diffusers

    assert re.fullmatch(r"\d+\.\d+\.\d+.*", synfer_diffusers.__version__)
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "synfer_diffusers.__version__"}
    for name in ("AUConditionedUNet2DConditionModel", "AUSpace", "SynFERPipeline"):  # the README's example
        assert hasattr(synfer_diffusers, name), name


def test_readme_leads_with_the_two_commands(readme):
    first_block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert commands == ["make generate", "make test"]


def test_readme_python_example_uses_public_names(readme):
    import synfer_diffusers
    import synfer_diffusers.tiny

    example = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    for module, names in re.findall(r"from (synfer_diffusers[\w.]*) import ([\w, ]+)", example):
        mod = synfer_diffusers if module == "synfer_diffusers" else sys.modules[module]
        for name in (n.strip() for n in names.split(",")):
            assert hasattr(mod, name), f"{module}.{name}"


def test_make_targets_and_ci(readme):
    makefile = (ROOT / "Makefile").read_text()
    for target in ("install", "generate", "test", "bench"):
        assert re.search(rf"^{target}:", makefile, re.M), target
    assert re.search(r"^\$\(VENV\)/\.installed: pyproject\.toml", makefile, re.M)
    assert "-c constraints.txt" in makefile and "synfer generate --output-dir" in makefile
    ci = ROOT / ".ci" / "run"
    assert os.access(ci, os.X_OK)
    text = ci.read_text()
    assert "set -euo pipefail" in text and re.search(r"^make test$", text, re.M)


def test_wheel_ships_package_data(tmp_path, pyproject):
    """Builds a wheel from a copy of the sources (setuptools, no isolation) and checks the data files in it."""
    pytest.importorskip("setuptools")
    for name in ("pyproject.toml", "setup.cfg", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    if (ROOT / "model_cards").is_dir():
        shutil.copytree(ROOT / "model_cards", tmp_path / "model_cards")
    shutil.copytree(ROOT / "src", tmp_path / "src", symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    fake = tmp_path / "src" / "synfer_diffusers" / "default_model" / "test_only"
    fake.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "notes.txt"):
        (fake / name).write_text("{}")

    code = "from setuptools import build_meta as b; print(b.build_wheel('dist'))"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    wheel = tmp_path / "dist" / result.stdout.strip().splitlines()[-1]
    names = set(zipfile.ZipFile(wheel).namelist())

    for suffix in ("config.json", "model.safetensors", "notes.txt"):
        assert f"synfer_diffusers/default_model/test_only/{suffix}" in names
    for card in (ROOT / "model_cards").glob("*.md"):
        assert f"synfer_diffusers/model_cards/{card.name}" in names
    assert "synfer_diffusers/tokenization.py" in names and "synfer_diffusers/tiny.py" in names
    assert not [n for n in names if n.startswith("tests/") or "__pycache__" in n]
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "synfer = synfer_diffusers.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def _package_imports(path: Path) -> set[str]:
    """The `synfer_diffusers` modules a file imports, as absolute names (relative imports resolved)."""
    import ast

    package = ".".join(path.relative_to(ROOT / "src").with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            module = f"{base}.{node.module}" if node.level and node.module else (base if node.level else node.module)
            names |= {module} | {f"{module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
    return {name for name in names if name and name.startswith("synfer_diffusers")}


def test_storage_imports_no_training_models_or_pipelines():
    """`data/` (FaceWorld, FEText, the writer, the Hub publisher) stands on its own: dataset loading lives there and
    `training/` re-imports it, never the other way round."""
    forbidden = ("synfer_diffusers.training", "synfer_diffusers.models", "synfer_diffusers.pipelines")
    for path in sorted((ROOT / "src" / "synfer_diffusers" / "data").rglob("*.py")):
        bad = sorted(name for name in _package_imports(path) if name.startswith(forbidden))
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_no_script_is_imported_by_path():
    """The package, the examples and the benchmarks share code through the package (or the benchmark modules beside
    the suite), never by loading a script from its path."""
    for folder in ("src", "examples", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            assert "spec_from_file_location" not in path.read_text(), path.relative_to(ROOT)
