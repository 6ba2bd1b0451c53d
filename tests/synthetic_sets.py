"""Shared by the `synfer generate` tests: a tiny, fast set and byte-for-byte comparison of two set folders.

Runs use the no-`--model` path pointed (`$SYNFER_DEFAULT_MODEL`) at an empty folder, i.e. the tiny random stand-in,
at 16x16 pixels and 2 steps, so CLI subprocesses and in-process calls share one plan and can be compared byte for
byte whatever checkpoint the package embeds.


Its fixtures are registered for every test module by `conftest.py` (imported there); a module whose runs must use
the stand-in marks itself `pytestmark = pytest.mark.usefixtures("tiny_stand_in_as_default")`.
"""

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

import fork_server
from synfer_diffusers.generate import SyntheticSetConfig, generate_synthetic_dataset

SMALL = {"num_inference_steps": 2, "height": 16, "width": 16}
CLI_ARGS = ["--num-inference-steps", "2", "--height", "16", "--width", "16", "--no-progress"]


def _generate(output_dir, num_samples=6, shard_size=2, batch_size=2, config_kwargs=None, **kwargs):
    config = SyntheticSetConfig(num_samples=num_samples, shard_size=shard_size, **SMALL, **(config_kwargs or {}))
    return generate_synthetic_dataset(config, output_dir, batch_size=batch_size, show_progress=False, **kwargs)


def _shard_digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((Path(folder) / "data").iterdir())}


def _assert_same_dataset(folder, reference):
    """Same plan, same rows (pixels included), and byte-identical shards."""
    assert (Path(folder) / "plan.json").read_text() == (Path(reference) / "plan.json").read_text()
    ours, theirs = _load(folder), _load(reference)
    for column in ours.column_names:
        if column != "image":
            assert ours[column] == theirs[column], column
    for a, b in zip(ours["image"], theirs["image"]):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert _shard_digests(folder) == _shard_digests(reference)


def _load(folder):
    return datasets.load_dataset(str(folder), split="train", cache_dir=str(Path(folder).parent / "hf_cache"))


@pytest.fixture(scope="module")
def tiny_stand_in_as_default(tmp_path_factory):
    """No-`--model` runs in this module (and their CLI subprocesses) use the tiny random stand-in."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SYNFER_DEFAULT_MODEL", str(tmp_path_factory.mktemp("no_default_model")))
        yield


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    """An uninterrupted one-process run of the tiny stand-in: 6 samples in 3 shards, made once per session (every
    module that uses it only reads or copies it). The stand-in's name, not its folder, is what the set records."""
    folder = tmp_path_factory.mktemp("reference") / "set"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SYNFER_DEFAULT_MODEL", str(tmp_path_factory.mktemp("no_default_model")))
        result = _generate(folder, process_index=0, num_processes=1)
    assert result.complete and result.shards_written == 3
    return folder



REFERENCE_ARGS = ["--num-samples", "6", "--shard-size", "2", "--batch-size", "2", *CLI_ARGS]
"""The CLI flags of the `reference` set."""


def cli_command(folder, *extra: str) -> list[str]:
    """`python -m synfer_diffusers.cli generate` of the `reference` plan into `folder`."""
    return [sys.executable, "-m", "synfer_diffusers.cli", "generate", "--output-dir", str(folder), *REFERENCE_ARGS,
            *extra]  # fmt: skip


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of a CLI subprocess: this process's thread count (oneDNN may sum in another order with
    another count, and pixels then differ) and the tiny stand-in as the default model."""
    return {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), **extra}


def assert_refused_in_one_line(main: Callable[[list[str]], object], argv: list[str], message: str, capsys) -> None:
    """`main(argv)` (a command line's `main`) exits with status 2 and one error line holding `message`, without a
    traceback."""
    with pytest.raises(SystemExit) as error:
        main(argv)
    err = capsys.readouterr().err
    error_lines = [line for line in err.splitlines() if "error:" in line]
    assert error.value.code == 2, err[-2000:]
    assert len(error_lines) == 1 and message in error_lines[0], err[-2000:]
    assert "Traceback" not in err


def with_unreadable_images(rows: datasets.Dataset) -> datasets.Dataset:
    """`rows` whose `image` column holds bytes that are not an image."""
    images = [{"bytes": b"not an image", "path": None}] * len(rows)
    return rows.remove_columns("image").add_column("image", images).cast_column("image", datasets.Image())


def with_action_units_as_text(rows: datasets.Dataset) -> datasets.Dataset:
    """`rows` whose `action_units` column holds each row's list written as one string."""
    return rows.remove_columns("action_units").add_column("action_units", [str(v) for v in rows["action_units"]])


def with_action_units_as_lists_of_strings(rows: datasets.Dataset) -> datasets.Dataset:
    """`rows` whose `action_units` lists hold strings."""
    return rows.cast_column("action_units", datasets.List(datasets.Value("string")))


def folder_snapshot(folder) -> dict[str, str] | None:
    """Every file under `folder` (relative path -> sha256), `None` when it does not exist: 'unchanged' is equality."""
    folder = Path(folder)
    if not folder.exists():
        return None
    if folder.is_file():
        return {".": hashlib.sha256(folder.read_bytes()).hexdigest()}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}  # fmt: skip


def run_cli(args, env: dict[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess:
    """`args` run with `env` (default [`subprocess_env`]), output captured as text; by a pre-imported `fork_server`
    (a process of its own without an interpreter start-up) when `args[0]` is `sys.executable`."""
    return fork_server.run(args, env=env or subprocess_env(), capture_output=True, text=True, **kwargs)
