"""Shared test setup: offline Hugging Face libraries, 2 CPU threads, tiny components built in code."""

import atexit
import logging
import os
import shutil
import tempfile
from collections import Counter

# Read by huggingface_hub / datasets / diffusers at import time: set before anything imports them. Remote-code
# modules go to a folder of this session (not ~/.cache), shared with the CLI subprocesses, which then share one
# `fork_server` environment.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_MODULES_CACHE"] = tempfile.mkdtemp(prefix="hf_modules_")
atexit.register(shutil.rmtree, os.environ["HF_MODULES_CACHE"], ignore_errors=True)

import pytest  # noqa: E402
import torch  # noqa: E402

import stock_peer  # noqa: E402
from synthetic_sets import reference, tiny_stand_in_as_default  # noqa: E402, F401  (fixtures of the generate tests)
from training_chain import (  # noqa: E402, F401  (the tiny training chain, once per session)
    faceworld_dir,
    gate_models,
    stage_a_dir,
    stage_a_run,
    vae_dir,
    vae_run,
)

# OMP_NUM_THREADS, when set, wins: two torch processes with 2 threads each on 2 cores slow each other tenfold. Under
# pytest-xdist (`-n 2`) each worker, and every subprocess it starts (they inherit this environment), runs 1 thread.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """In-process scripts set torch's thread count (`train_fer_classifier.py --num_threads 1`): restored after each
    test, so a session fixture and a later test that compare float results run with the same number of threads."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _restore_library_log_levels():
    """diffusers' harness (test_pipeline_conformance) sets levels on child loggers such as
    `diffusers.pipelines.pipeline_utils` and leaves them: restored after each test, so a later test that checks what
    a load prints sees the levels a user has."""
    levels = {name: log.level for name, log in _library_loggers()}
    yield
    for name, log in _library_loggers():
        log.setLevel(levels.get(name, logging.NOTSET))


def _library_loggers() -> list[tuple[str, logging.Logger]]:
    return [(name, log) for name, log in list(logging.root.manager.loggerDict.items())
            if isinstance(log, logging.Logger) and name.split(".")[0] in ("diffusers", "transformers")]  # fmt: skip


def pytest_configure(config):
    # Also declared in setup.cfg; registered here so the markers exist whatever the rootdir.
    config.addinivalue_line("markers", 'slow: takes more than a few seconds on a 2-core CPU (-m "not slow")')
    config.addinivalue_line("markers", "stock_peer: diffusers' harness on the stock pipeline (see stock_peer.py)")


def pytest_collection_modifyitems(config, items):
    """Deselects the stock peer of diffusers' harness while its last passing run is recorded for these versions and
    parts (`stock_peer.py`), and puts the files with `slow` tests first ([`_slow_files_first`])."""
    peer = [item for item in items if item.get_closest_marker("stock_peer")]
    if peer and stock_peer.peer_may_be_skipped():
        config.hook.pytest_deselected(items=peer)
        items[:] = [item for item in items if not item.get_closest_marker("stock_peer")]
    _slow_files_first(items)


def _slow_files_first(items: list[pytest.Item]) -> None:
    """Orders the files by their number of `slow` tests, most first, keeping the order within each file and among
    files with as many: `make test` (`--dist loadfile --no-loadscope-reorder`) hands the files to its workers in
    this order, so the long ones start early and the many short ones fill in at the end, where otherwise a worker
    could finish on a long file while the other idles."""
    slow = Counter(item.path for item in items if item.get_closest_marker("slow"))
    position = {path: index for index, path in enumerate(dict.fromkeys(item.path for item in items))}
    items.sort(key=lambda item: (-slow[item.path], position[item.path]))


@pytest.fixture
def tiny_components():
    """Fresh tiny SynFER components (seed 0) for each test: `vae`, `text_encoder`, `tokenizer`, `unet`,
    `scheduler`."""
    from synfer_diffusers.tiny import make_tiny_components

    return make_tiny_components(seed=0)


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory):
    """A folder holding the tiny CLIP tokenizer (`vocab.json`, `merges.txt`, transformers files)."""
    from synfer_diffusers.tokenization import tiny_clip_tokenizer

    directory = tmp_path_factory.mktemp("tiny_tokenizer")
    tiny_clip_tokenizer(save_directory=directory)
    return directory


@pytest.fixture(scope="session")
def _hub_server(tmp_path_factory):
    """One Hub-compatible server (`tests/hub_server.py`) on 127.0.0.1 per test process, with one `HF_HOME` for its
    clients: their environment ([`hub_server.client_env`]) is then the same in every module, so they share one
    pre-imported `fork_server` instead of importing the HF stack once per module."""
    from hub_server import HubServer

    server = HubServer(hf_home=str(tmp_path_factory.mktemp("hub_clients") / "hf_home")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def hub(_hub_server):
    """The Hub server for the tests of one module, as if new: no repo, call, fault or client cache of another
    module ([`HubServer.reset`])."""
    _hub_server.reset()
    yield _hub_server
    _hub_server.release()
