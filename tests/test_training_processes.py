"""Training in real subprocesses: resident memory against dataset size, and two `torchrun` processes.

Both run `examples/train_text_to_image.py` fine-tuning a tiny Stable Diffusion (random weights) on parquet
folders written by `benchmarks/bench_training.py`.
"""

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

import fork_server

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "train_text_to_image.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_training", ROOT / "benchmarks" / "bench_training.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return _bench()


@pytest.fixture(scope="module")
def tiny_sd(bench, tmp_path_factory):
    return bench.save_tiny_stable_diffusion(tmp_path_factory.mktemp("tiny_sd"))


MEASURED = """
import resource, runpy, sys
import psutil
start_mb = psutil.Process().memory_info().rss / 2**20
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
print("GROWTH_MB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - start_mb)
"""
"""Runs `SCRIPT ARGS...` as `python SCRIPT ARGS...` does; prints how far its peak resident set size rose above the
size it started with (in a fork of the pre-imported server: the server's imported modules, not the script's work)."""


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.mark.slow  # two training runs: forks of a `fork_server`
def test_peak_memory_does_not_grow_with_the_dataset(bench, tiny_sd, tmp_path):
    # 160 px: 10N = 5,000 images decode to 384 MB, which a loader holding every image (the examples before
    # they streamed: 724 -> 937 MB from 400 to 4,000 images at 128 px) would add to a growth of ~0.4 GB
    # (measured: 409 MB at N, 403 MB at 10N).
    resolution, num_images = 160, 500
    growths = {}
    for count in (num_images, 10 * num_images):
        data = bench.write_image_dataset(tmp_path / f"data-{count}", count, resolution)
        argv = bench.fine_tune_argv(data, tiny_sd, tmp_path / f"out-{count}", resolution, 2, 2, 0)
        result = fork_server.run([sys.executable, "-c", MEASURED, str(EXAMPLE), *argv], cwd=ROOT, env=_env(),
                                 capture_output=True, text=True)  # fmt: skip
        assert result.returncode == 0, result.stderr[-4000:]
        growths[count] = float(result.stdout.split("GROWTH_MB")[-1])
    ratio = growths[10 * num_images] / growths[num_images]
    assert ratio < 1.3, f"peak RSS growth {growths} MB: ratio {ratio:.2f}"


DRIVER = """
import importlib.util, json, os, sys
spec = importlib.util.spec_from_file_location("train_text_to_image", sys.argv[1])
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
spec.loader.exec_module(module)
summary = module.main(sys.argv[3:])
from accelerate import PartialState
state = PartialState()
with open(os.path.join(sys.argv[2], f"rank-{state.process_index}.json"), "w") as f:
    json.dump({"process_index": state.process_index, "num_processes": state.num_processes,
               "distributed_type": str(state.distributed_type), "losses": summary.losses}, f)
"""


def _train(launcher, log_dir, data, model, output_dir, batch_size):
    log_dir.mkdir()
    argv = [
        "--pretrained_model_name_or_path", str(model), "--dataset_name", str(data), "--output_dir", str(output_dir),
        "--resolution", "16", "--train_batch_size", str(batch_size), "--max_train_steps", "3",
        "--checkpointing_steps", "100", "--validation_steps", "100", "--num_validation_identities", "1",
        "--validation_expressions", "happy", "--validation_inference_steps", "1", "--learning_rate", "1e-2",
    ]  # fmt: skip
    env = _env()
    command = [*launcher, "-c", DRIVER] if launcher == [sys.executable] else [*launcher, fork_server.__file__,
                                                                               "--exec", "driver.py"]  # fmt: skip
    if launcher != [sys.executable]:
        (log_dir / "driver.py").write_text(DRIVER)
    result = fork_server.run([*command, str(EXAMPLE), str(log_dir), *argv], cwd=log_dir,
                             env=fork_server.launcher_env(env), capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    return [json.loads(path.read_text()) for path in sorted(log_dir.glob("rank-*.json"))]


@pytest.mark.slow  # torchrun's interpreter; its two workers and the one-process run: forks of a `fork_server`
@pytest.mark.skipif(shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(),
                    reason="torchrun not installed")  # fmt: skip
def test_two_torchrun_processes_train_like_one_at_the_same_global_batch(bench, tiny_sd, tmp_path):
    data = bench.write_image_dataset(tmp_path / "data", 24, 16)
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    # --standalone: the rendezvous picks a free port, so parallel runs (and a busy 29500) do not collide
    ranks = _train(
        [torchrun, "--standalone", "--nproc_per_node", "2"], tmp_path / "two", data, tiny_sd, tmp_path / "out2",
        batch_size=2,
    )  # fmt: skip
    (single,) = _train([sys.executable], tmp_path / "one", data, tiny_sd, tmp_path / "out1", batch_size=4)
    assert [(r["process_index"], r["num_processes"]) for r in ranks] == [(0, 2), (1, 2)]
    assert {r["distributed_type"] for r in ranks} == {"DistributedType.MULTI_CPU"}
    assert ranks[0]["losses"] == ranks[1]["losses"]  # gathered: every process logs the global mean
    assert (single["num_processes"], len(single["losses"])) == (1, 3)
    # same rows, same noise, synchronised gradients: steps 2 and 3 see the same weights as the one-process run
    assert ranks[0]["losses"] == pytest.approx(single["losses"], rel=1e-4)
    assert (tmp_path / "out2" / "model_index.json").exists()


@pytest.mark.slow  # one interpreter importing the HF stack
def test_push_to_hub_uploads_the_model_and_its_card_without_checkpoints(hub, tmp_path):
    from hub_server import client_env
    from synfer_diffusers.data.faceworld import write_faceworld_splits

    write_faceworld_splits(tmp_path / "faceworld", num_train=8, num_test=4, seed=0, show_progress=False)
    argv = [
        "--dataset_name", str(tmp_path / "faceworld"), "--output_dir", str(tmp_path / "vae"), "--resolution", "16",
        "--block_out_channels", "32", "32", "--train_batch_size", "4", "--max_train_steps", "2",
        "--num_scaling_images", "4", "--num_test_images", "4", "--push_to_hub", "--hub_model_id", "tester/tiny-vae",
    ]  # fmt: skip
    env = {**client_env(hub), "OMP_NUM_THREADS": "1"}
    result = fork_server.run([sys.executable, str(ROOT / "examples" / "train_autoencoder.py"), *argv], env=env,
                             capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    files = hub.files("model", "tester/tiny-vae")
    assert {"README.md", "config.json", "diffusion_pytorch_model.safetensors"} <= set(files)
    assert not [name for name in files if name.startswith(("checkpoint-", "logs/"))]
    card = files["README.md"].decode()
    assert "examples/train_autoencoder.py" in card and "--max_train_steps 2" in card  # the command
