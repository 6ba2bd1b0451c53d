"""Checkpoints that stock diffusers loads without this package: the code files that `save_pretrained` writes
(`synfer_diffusers.pipelines.remote_code`), loaded with `DiffusionPipeline.from_pretrained(...,
trust_remote_code=True)` from a folder and from the Hub server of `hub_server.py`, in a process where
`synfer_diffusers` cannot be imported.

As in test_hub_roundtrip.py the server runs in this process and the clients in subprocesses (the HF libraries read
`HF_ENDPOINT` at import time). This file doubles as both clients, `python tests/test_remote_code.py MODE <workdir>`:
`publish` (with the package) pushes the checkpoints saved by the tests and loads them back by repo id; `stock`
(the package blocked by a `sys.meta_path` finder installed before anything imports diffusers) loads them by repo id
and from their folders, runs them, saves one again and reloads that. Outputs go to `.npy` files in `workdir`,
observations to the last stdout line (JSON). The package is imported lazily here, so that `stock` never sees it.
"""

import ast
import importlib
import importlib.abc
import importlib.util
import json
import logging
import math
import os
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SYNFER_REPO = "tester/tiny-synfer-remote-code"
FERANNO_REPO = "tester/tiny-feranno-remote-code"
SYNFER_CALL = {"prompt": "a photo of a face", "expression": "happy", "num_inference_steps": 3, "output_type": "np"}
HEAD_OPTIONS = {"hidden_dim": 32, "num_heads": 4, "tokens_per_side": 4}


class _BlockPackage(importlib.abc.MetaPathFinder):
    """Makes `synfer_diffusers` unimportable, as for a user who only has diffusers."""

    def find_spec(self, name, path=None, target=None):
        if name == "synfer_diffusers" or name.startswith("synfer_diffusers."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None


if __name__ == "__main__" and sys.argv[1] == "stock":
    sys.meta_path.insert(0, _BlockPackage())

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import fork_server  # noqa: E402
from hub_server import client_env  # noqa: E402


def _faces() -> torch.Tensor:  # (2, 3, 16, 16) in [0, 1], the same in every process
    return torch.from_numpy(np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32))


def _generate(pipe) -> tuple[np.ndarray, np.ndarray]:
    """Images `(1, 16, 16, 3)` and in-loop FERAnno probabilities `(1, 7)`."""
    pipe.set_progress_bar_config(disable=True)
    out = pipe(generator=torch.Generator().manual_seed(0), **SYNFER_CALL)
    return out.images, out.feranno_probabilities.numpy()


def _label(pipe) -> np.ndarray:  # (2, 7)
    pipe.set_progress_bar_config(disable=True)
    return pipe(_faces(), generator=torch.Generator().manual_seed(0)).probabilities.numpy()


# ---------------------------------------------------------------------------------------------------------------------
# In this process (the package imported, offline)
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipelines():
    """A tiny `SynFERPipeline` with a FERAnno head and the `FERAnnoPipeline` of the same UNet and head."""
    from synfer_diffusers import FERAnnoHead, FERAnnoPipeline, SynFERPipeline
    from synfer_diffusers.tiny import make_tiny_components

    components = make_tiny_components(seed=0)
    torch.manual_seed(0)
    head = FERAnnoHead.from_unet(components["unet"], **HEAD_OPTIONS)
    return SynFERPipeline(**components, feranno_head=head), FERAnnoPipeline(**components, head=head)


@pytest.fixture(scope="module")
def workdir(pipelines, tmp_path_factory):
    """`synfer/` and `feranno/`: the pipelines as `save_pretrained` writes them."""
    workdir = tmp_path_factory.mktemp("remote_code")
    synfer, feranno = pipelines
    synfer.save_pretrained(workdir / "synfer")
    feranno.save_pretrained(workdir / "feranno")
    return workdir


def _load_bundle(source: str, path: Path, module_name: str):
    """Imports a bundle from a file as diffusers does (a module in `sys.modules` while it runs)."""
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[module_name]
    return module


@pytest.mark.parametrize(
    ("entry", "class_name"),
    [("synfer_diffusers.pipelines.synfer.pipeline_synfer", "SynFERPipeline"),
     ("synfer_diffusers.pipelines.synfer.pipeline_feranno", "FERAnnoPipeline"),
     ("synfer_diffusers.models.unet_au", "AUConditionedUNet2DConditionModel"),
     ("synfer_diffusers.models.feranno", "FERAnnoHead")],
)  # fmt: skip
def test_bundles_import_stand_alone(entry, class_name, tmp_path):
    """Each code file imports nothing of the package (no relative import, no `synfer_diffusers` import) and defines
    its own copy of the class."""
    import synfer_diffusers
    from synfer_diffusers.pipelines.remote_code import REMOTE_CODE_FILES, bundle_module

    source = bundle_module(entry)
    imports = [n for n in ast.walk(ast.parse(source)) if isinstance(n, (ast.Import, ast.ImportFrom))]
    imported = [n.module or "" for n in imports if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in imports if isinstance(n, ast.Import) for a in n.names]
    assert not [n for n in imports if isinstance(n, ast.ImportFrom) and n.level]
    assert not [name for name in imported if name.split(".")[0] == "synfer_diffusers"]
    assert [n.lineno for n in imports if isinstance(n, ast.ImportFrom) and n.module == "__future__"] == [
        source.splitlines().index("from __future__ import annotations") + 1]  # fmt: skip
    assert f"synfer_diffusers {synfer_diffusers.__version__}" in source and entry in source
    module = _load_bundle(source, tmp_path / f"{REMOTE_CODE_FILES[entry]}.py", f"bundle_{REMOTE_CODE_FILES[entry]}")
    package_class = getattr(importlib.import_module(entry), class_name)
    bundled_class = getattr(module, class_name)
    assert bundled_class is not package_class and bundled_class.__module__ == module.__name__
    library_bases = [[c for c in cls.__mro__ if c.__module__.startswith(("diffusers.", "torch."))]
                     for cls in (bundled_class, package_class)]  # fmt: skip
    assert library_bases[0] == library_bases[1]


@pytest.fixture()
def fake_package(tmp_path, monkeypatch):
    """`write(modules)` writes the modules of a throwaway package, which the bundler then treats as this package;
    returns the package's name."""
    from synfer_diffusers.pipelines import remote_code

    name = f"rc_fake_{tmp_path.name.replace('-', '_')}"
    (tmp_path / name).mkdir()
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(remote_code, "PACKAGE", name)

    def write(modules: dict[str, str]) -> str:
        for module, source in {"__init__": "__version__ = '9.9'\n", **modules}.items():
            (tmp_path / name / f"{module}.py").write_text(source.format(package=name))
        importlib.invalidate_caches()
        return name

    yield write
    for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[module]


FAKE_BASE = "import math\nSCALE = 2.0\n\ndef double(x):\n    return SCALE * x\n"


def test_bundle_orders_modules_and_resolves_aliases(fake_package, tmp_path):
    from synfer_diffusers.pipelines.remote_code import bundle_module

    main = "import math\nfrom .base import double as twice\n\ndef quadruple(x):\n    from .base import double\n"
    package = fake_package({"base": FAKE_BASE, "main": main + "    return twice(double(x))\n"})
    source = bundle_module(f"{package}.main")
    assert source.index(f"# {package}.base") < source.index(f"# {package}.main") and "twice = double" in source
    module = _load_bundle(source, tmp_path / "main_bundle.py", "main_bundle")
    assert module.quadruple(1.5) == 6.0 and module.math is math


@pytest.mark.parametrize(
    ("main", "match"),
    [("from .base import double\nSCALE = 3.0\n", r"`SCALE` in \S+\.base, \S+\.main"),
     ("from .base import SCALE\n\ndef double(x):\n    return x\n", r"`double` in \S+\.base, \S+\.main"),
     ("from .base import SCALE\nfrom torch import nn as math\n", r"`math` in \S+\.base, \S+\.main"),
     ("from . import base\n", r"imports the package module `\S+\.base` as an object"),
     ("import {package}.base as base\n", "imports a package module as an object"),
     ('from .base import SCALE\n\n"""Use it as\n    from .base import double\n"""\n', "reads as a relative import")],
)  # fmt: skip
def test_bundle_refuses_collisions_module_objects_and_relative_import_lines(fake_package, main, match):
    from synfer_diffusers.pipelines.remote_code import bundle_module

    package = fake_package({"base": FAKE_BASE, "main": main})
    with pytest.raises(ValueError, match=match):
        bundle_module(f"{package}.main")


def test_code_files_only_for_registered_package_modules():
    from synfer_diffusers.pipelines.remote_code import code_file

    assert code_file("diffusers") is None and code_file("transformers") is None
    assert code_file("synfer_diffusers.models.unet_au")[0] == "unet_au"
    with pytest.raises(ValueError, match="REMOTE_CODE_FILES"):
        code_file("synfer_diffusers.labels.voting")


def test_package_loads_the_new_layout_with_its_own_classes(pipelines, workdir):
    """`SynFERPipeline.from_pretrained(folder)` reads the custom-code `model_index.json` without
    `trust_remote_code` and runs no code of the checkpoint: the package's classes, the same outputs."""
    from synfer_diffusers import AUConditionedUNet2DConditionModel, FERAnnoHead, FERAnnoPipeline, SynFERPipeline

    index = json.loads((workdir / "synfer" / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_synfer", "SynFERPipeline"]
    assert index["unet"] == ["unet_au", "AUConditionedUNet2DConditionModel"]
    assert index["feranno_head"] == ["feranno", "FERAnnoHead"] and index["vae"] == ["diffusers", "AutoencoderKL"]
    for path in ("pipeline_synfer.py", "unet/unet_au.py", "feranno_head/feranno.py", "README.md"):
        assert (workdir / "synfer" / path).is_file(), path
    feranno_index = json.loads((workdir / "feranno" / "model_index.json").read_text())
    assert feranno_index["_class_name"] == ["pipeline_feranno", "FERAnnoPipeline"]
    assert feranno_index["head"] == ["feranno", "FERAnnoHead"]

    loaded = SynFERPipeline.from_pretrained(workdir / "synfer")
    labeller = FERAnnoPipeline.from_pretrained(workdir / "feranno")
    assert type(loaded) is SynFERPipeline and type(labeller) is FERAnnoPipeline
    assert type(loaded.unet) is AUConditionedUNet2DConditionModel and type(loaded.feranno_head) is FERAnnoHead
    assert not [m for m in sys.modules if m.startswith("diffusers_modules")]
    for a, b in zip(_generate(loaded), _generate(pipelines[0])):
        np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(_label(labeller), _label(pipelines[1]), atol=1e-6)


def test_folders_saved_before_the_code_files_still_load(workdir, tmp_path):
    from synfer_diffusers import SynFERPipeline
    from synfer_diffusers.pipelines.remote_code import package_config

    old = tmp_path / "old"
    shutil.copytree(workdir / "synfer", old)
    for code_file in old.rglob("*.py"):
        code_file.unlink()
    index = package_config(json.loads((old / "model_index.json").read_text()))
    assert index["unet"] == ["synfer_diffusers.models.unet_au", "AUConditionedUNet2DConditionModel"]
    (old / "model_index.json").write_text(json.dumps(index))
    loaded = SynFERPipeline.from_pretrained(old)
    expected = SynFERPipeline.from_pretrained(workdir / "synfer")
    assert np.array_equal(_generate(loaded)[0], _generate(expected)[0])


# ---------------------------------------------------------------------------------------------------------------------
# Through the Hub server, with and without the package (subprocesses)
# ---------------------------------------------------------------------------------------------------------------------



@pytest.fixture(scope="module")
def clients(hub, workdir):
    """Runs the `publish` then the `stock` client; returns their observations."""
    observations = {}
    for mode in ("publish", "stock"):
        # separate caches (`stock` downloads for itself); this process's thread count, so that kernels sum alike
        env = client_env(hub, str(workdir / f"hf_home_{mode}"), threads=torch.get_num_threads())
        result = fork_server.run([sys.executable, __file__, mode, str(workdir)], env=env, capture_output=True,
                                 text=True, timeout=600, preload=fork_server.BASE)  # fmt: skip
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-8000:]
        observations[mode] = {**json.loads(result.stdout.strip().splitlines()[-1]), "stderr": result.stderr}
    return observations


@pytest.fixture(scope="module")
def expected(workdir):
    """What the package's own classes give for the saved checkpoints."""
    from synfer_diffusers import FERAnnoPipeline, SynFERPipeline

    images, probabilities = _generate(SynFERPipeline.from_pretrained(workdir / "synfer"))
    return {"images": images, "feranno_probabilities": probabilities,
            "labels": _label(FERAnnoPipeline.from_pretrained(workdir / "feranno"))}  # fmt: skip


@pytest.mark.slow  # the two client subprocesses, each importing the HF stack
def test_push_to_hub_publishes_the_code_files(hub, clients):
    files = hub.files("model", SYNFER_REPO)
    assert {"pipeline_synfer.py", "unet/unet_au.py", "feranno_head/feranno.py", "README.md"} <= set(files)
    assert json.loads(files["model_index.json"])["_class_name"] == ["pipeline_synfer", "SynFERPipeline"]
    assert {"pipeline_feranno.py", "unet/unet_au.py", "head/feranno.py"} <= set(hub.files("model", FERANNO_REPO))


@pytest.mark.slow  # the two client subprocesses, each importing the HF stack
def test_package_loads_a_hub_repo_without_remote_code(clients, expected, workdir):
    assert clients["publish"]["classes"] == ["SynFERPipeline", "synfer_diffusers.models.unet_au", "FERAnnoPipeline"]
    assert clients["publish"]["dynamic_modules"] == []
    for name in ("images", "feranno_probabilities", "labels"):
        np.testing.assert_allclose(np.load(workdir / f"publish_hub_{name}.npy"), expected[name], atol=1e-6)


@pytest.mark.slow  # the two client subprocesses, each importing the HF stack
def test_stock_diffusers_loads_from_the_hub_and_from_a_folder(clients, expected, workdir):
    """Without the package, `DiffusionPipeline.from_pretrained(..., trust_remote_code=True)` gives the classes of
    the code files and the package's outputs."""
    stock = clients["stock"]
    assert stock["package_import_error"].startswith("ModuleNotFoundError")
    assert stock["synfer_module"].startswith("diffusers_modules.") and stock["unet_module"].endswith(".unet_au")
    assert stock["feranno_module"].startswith("diffusers_modules.")
    for source in ("hub", "folder"):
        for name in ("images", "feranno_probabilities", "labels"):
            np.testing.assert_allclose(np.load(workdir / f"stock_{source}_{name}.npy"), expected[name], atol=1e-6)


@pytest.mark.slow  # the two client subprocesses, each importing the HF stack
def test_stock_loads_print_no_type_or_torchvision_warning(clients):
    """A stock load warns about nothing a user can act on: no `Expected types for feranno_head` (the head's class
    is defined in its component file and again in the pipeline file) and no torchvision fallback."""
    stderr = clients["stock"]["stderr"]
    assert "Expected types" not in stderr and "torchvision" not in stderr, stderr[-3000:]


@pytest.mark.slow  # the two client subprocesses, each importing the HF stack
def test_stock_save_keeps_the_code_files_and_skips_the_card(clients, workdir):
    """Saved by the checkpoint's own code, a pipeline keeps the custom-code layout (its files copied) and, with no
    package templates at hand, no model card, with a warning; the saved folder loads again."""
    resaved, saved = workdir / "stock_resaved", workdir / "synfer"
    index = json.loads((resaved / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_synfer", "SynFERPipeline"]
    assert index["unet"] == ["unet_au", "AUConditionedUNet2DConditionModel"]
    for path in ("pipeline_synfer.py", "unet/unet_au.py", "feranno_head/feranno.py"):
        assert (resaved / path).read_text() == (saved / path).read_text(), path
    assert not (resaved / "README.md").exists()
    assert any("without a model card" in message for message in clients["stock"]["warnings"])
    reloaded, loaded = (np.load(workdir / f"stock_{name}_images.npy") for name in ("resaved", "folder"))
    np.testing.assert_array_equal(reloaded, loaded)


# ---------------------------------------------------------------------------------------------------------------------
# The client processes
# ---------------------------------------------------------------------------------------------------------------------


class _WarningRecorder(logging.Handler):
    def __init__(self, level: int):
        super().__init__(level)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _publish(workdir: Path) -> dict:
    from synfer_diffusers import FERAnnoPipeline, SynFERPipeline

    SynFERPipeline.from_pretrained(workdir / "synfer").push_to_hub(SYNFER_REPO)
    FERAnnoPipeline.from_pretrained(workdir / "feranno").push_to_hub(FERANNO_REPO)
    synfer = SynFERPipeline.from_pretrained(SYNFER_REPO)
    feranno = FERAnnoPipeline.from_pretrained(FERANNO_REPO)
    images, probabilities = _generate(synfer)
    np.save(workdir / "publish_hub_images.npy", images)
    np.save(workdir / "publish_hub_feranno_probabilities.npy", probabilities)
    np.save(workdir / "publish_hub_labels.npy", _label(feranno))
    return {
        "classes": [type(synfer).__name__, type(synfer.unet).__module__, type(feranno).__name__],
        "dynamic_modules": [m for m in sys.modules if m.startswith("diffusers_modules")],
    }


def _stock(workdir: Path) -> dict:
    observations = {}
    try:
        import synfer_diffusers  # noqa: F401
    except ImportError as error:
        observations["package_import_error"] = f"{type(error).__name__}: {error}"
    from diffusers import DiffusionPipeline

    recorder = _WarningRecorder(logging.WARNING)
    logging.getLogger().addHandler(recorder)
    for source, synfer_path, feranno_path in (
        ("hub", SYNFER_REPO, FERANNO_REPO), ("folder", workdir / "synfer", workdir / "feranno")
    ):  # fmt: skip
        synfer = DiffusionPipeline.from_pretrained(synfer_path, trust_remote_code=True)
        feranno = DiffusionPipeline.from_pretrained(feranno_path, trust_remote_code=True)
        images, probabilities = _generate(synfer)
        np.save(workdir / f"stock_{source}_images.npy", images)
        np.save(workdir / f"stock_{source}_feranno_probabilities.npy", probabilities)
        np.save(workdir / f"stock_{source}_labels.npy", _label(feranno))
    observations.update(synfer_module=type(synfer).__module__, unet_module=type(synfer.unet).__module__,
                        feranno_module=type(feranno).__module__)  # fmt: skip
    synfer.save_pretrained(workdir / "stock_resaved")
    resaved = DiffusionPipeline.from_pretrained(workdir / "stock_resaved", trust_remote_code=True)
    np.save(workdir / "stock_resaved_images.npy", _generate(resaved)[0])
    observations["warnings"] = recorder.messages
    return observations


if __name__ == "__main__":
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    client = {"publish": _publish, "stock": _stock}[sys.argv[1]]
    print(json.dumps(client(Path(sys.argv[2]))))
