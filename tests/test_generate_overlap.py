"""`synfer generate`'s background stage (`generate/background.py`): the CPU work after each pipeline call overlaps
with the next batch's denoising, and the set stays what a synchronous run writes.

- overlapped (`queue_depth` 1, 2) and synchronous (0) runs write byte-identical shards, with voters in the stage;
- image voters read the pipeline's tensors, not re-encoded PIL images;
- the next pipeline call is planned before the stage gets the last batch;
- `queue_depth` bounds the batches generated and not yet written; by default the stage runs on an accelerator only;
- an error in the stage is raised in the main thread with its message, nothing half written, `--resume` completes;
- a kill -9 inside a shard write of the stage, then `--resume`, gives the reference set.
"""

import errno
import functools
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler
from transformers import ResNetConfig, ResNetForImageClassification, ViTImageProcessor

import synfer_diffusers.generate.run as run_module
from synfer_diffusers import EXPRESSIONS, FERAnnoHead, SynFERPipeline
from synfer_diffusers.generate import (
    DEFAULT_QUEUE_DEPTH,
    BackgroundStage,
    SyntheticSetConfig,
    default_queue_depth,
    generate_synthetic_dataset,
)
from synfer_diffusers.generate.background import ShardAssembler
from synfer_diffusers.pipelines.synfer.semantic_guidance import GuidePreprocessing
from synfer_diffusers.tiny import make_tiny_components
from synthetic_sets import SMALL, _assert_same_dataset, _load, cli_command, run_cli

HOOK = Path(__file__).parent / "durable_write_hook.py"


def _voting_pipeline() -> SynFERPipeline:
    """Tiny components with a FERAnno head and a guide classifier: FERAnno, the guide and the target vote."""
    components = make_tiny_components(seed=0, sample_size=8)
    components["scheduler"] = EulerDiscreteScheduler.from_config(components["scheduler"].config)
    torch.manual_seed(0)
    guide = ResNetForImageClassification(ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
        id2label=dict(enumerate(EXPRESSIONS)), label2id={name: i for i, name in enumerate(EXPRESSIONS)},
    )).eval()  # fmt: skip
    processor = ViTImageProcessor(size={"height": 24, "width": 24}, image_mean=[0.5] * 3, image_std=[0.25] * 3)
    pipe = SynFERPipeline(**components, feranno_head=FERAnnoHead.from_unet(components["unet"]),
                          guidance_classifier=guide, guidance_image_processor=processor)  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _generate(folder, pipe, queue_depth, num_samples=5, **kwargs):
    config = SyntheticSetConfig(num_samples=num_samples, shard_size=2, **SMALL)
    return generate_synthetic_dataset(config, folder, pipeline=pipe, batch_size=1, show_progress=False,
                                      process_index=0, num_processes=1, queue_depth=queue_depth, **kwargs)  # fmt: skip


@pytest.fixture(scope="module")
def synchronous(tmp_path_factory):
    """5 voted samples, shards of 2 (the last one partial), one image per call, all on the calling thread."""
    folder = tmp_path_factory.mktemp("synchronous") / "set"
    assert _generate(folder, _voting_pipeline(), queue_depth=0).complete
    return folder


@pytest.mark.parametrize("queue_depth", [1, 2])
def test_overlapped_and_synchronous_runs_write_the_same_bytes(synchronous, tmp_path, queue_depth):
    folder = tmp_path / "set"
    assert _generate(folder, _voting_pipeline(), queue_depth=queue_depth).complete
    _assert_same_dataset(folder, synchronous)
    assert (folder / "README.md").read_text() == (synchronous / "README.md").read_text()


def test_image_voters_read_the_pipelines_tensors(tmp_path, monkeypatch):
    """The guide votes in the stage on the pipeline's tensors: its image processor (the PIL path) is never called,
    and what the guide reads is the torch preprocessing of the stored image (within its 8-bit rounding)."""
    pipe = _voting_pipeline()
    read = []
    pipe.guidance_classifier.register_forward_pre_hook(
        lambda module, args, kwargs: read.append((threading.current_thread().name, kwargs["pixel_values"])),
        with_kwargs=True,
    )
    monkeypatch.setattr(ViTImageProcessor, "__call__", lambda *args, **kwargs: pytest.fail("PIL preprocessing"))
    assert _generate(tmp_path / "set", pipe, queue_depth=2, num_samples=1).complete
    ((thread, pixel_values),) = read
    assert thread == "synfer-generate-writer"
    stored = np.asarray(_load(tmp_path / "set")["image"][0], dtype=np.float32) / 255  # (H, W, 3)
    expected = GuidePreprocessing.from_processor(pipe.guidance_image_processor)(
        torch.from_numpy(stored).permute(2, 0, 1)[None]
    )
    assert pixel_values.shape == expected.shape == (1, 3, 24, 24)
    assert (pixel_values - expected).abs().max() <= 0.5 / 255 / 0.25 + 1e-6  # std 0.25


def test_queue_depth_bounds_the_batches_in_flight(tmp_path, monkeypatch):
    """With a slow stage, the main thread runs ahead by exactly `queue_depth` batches, never more: when a pipeline
    call starts, at most `queue_depth` generated batches wait for (or are in) the stage."""
    for queue_depth in (1, 3):
        handed, written, in_flight = [0], [0], []
        original_call, original_assemble = SynFERPipeline.__call__, ShardAssembler.__call__

        @functools.wraps(original_call)  # keeps the call's signature, which `check_call` binds
        def call(self, *args, **kwargs):
            in_flight.append(handed[0] - written[0])
            output = original_call(self, *args, **kwargs)
            handed[0] += 1
            return output

        def assemble(self, batch, depth=queue_depth, in_flight=in_flight, written=written):
            # The first batch waits until the main thread has run `depth` batches ahead, then a while longer, so
            # running further ahead would be seen; a correct bound holds the main thread there (no race).
            if written[0] == 0:
                deadline = time.monotonic() + 60
                while depth not in in_flight and time.monotonic() < deadline:
                    time.sleep(0.01)
                time.sleep(0.5)
            original_assemble(self, batch)
            written[0] += 1

        monkeypatch.setattr(SynFERPipeline, "__call__", call)
        monkeypatch.setattr(ShardAssembler, "__call__", assemble)
        assert _generate(tmp_path / f"set{queue_depth}", _voting_pipeline(), queue_depth, num_samples=6).complete
        monkeypatch.undo()
        assert max(in_flight) == queue_depth, (queue_depth, in_flight)


@pytest.mark.parametrize("given, expected", [(None, 0), (2, 2), (0, 0)])
def test_the_stage_is_off_by_default_on_the_cpu_and_as_given_otherwise(tmp_path, monkeypatch, given, expected):
    """`queue_depth=None` runs synchronously on the CPU (the stage's thread would compete with torch's for the cores)
    and with the default depth on an accelerator; an explicit depth is used as given."""
    depths = []
    monkeypatch.setattr(run_module, "BackgroundStage", lambda process, depth: depths.append(depth) or
                        BackgroundStage(process, depth))  # fmt: skip
    assert _generate(tmp_path / "set", _voting_pipeline(), given, num_samples=2).complete
    assert depths == [expected]
    assert default_queue_depth(torch.device("cpu")) == 0
    assert default_queue_depth(torch.device("cuda", 0)) == default_queue_depth(torch.device("mps")) == DEFAULT_QUEUE_DEPTH > 0


def test_the_next_call_is_planned_before_the_stage_gets_a_batch(tmp_path, monkeypatch):
    """Between two pipeline calls the main thread plans the next one before it hands the last batch to the stage, so
    that its Python work does not wait behind the stage's for the GIL: plans lead submissions by one batch."""
    events = []
    planned, submit = run_module._Run.planned, BackgroundStage.submit
    monkeypatch.setattr(run_module._Run, "planned",
                        lambda self, ids, kwargs: (events.append(("plan", ids[0])), planned(self, ids, kwargs))[1])
    monkeypatch.setattr(BackgroundStage, "submit", lambda self, batch: (
        events.append(("submit", batch.samples[0].sample_id)), submit(self, batch))[1])  # fmt: skip
    assert _generate(tmp_path / "set", _voting_pipeline(), queue_depth=2, num_samples=5).complete
    plans = [("plan", i) for i in range(5)]
    submits = [("submit", i) for i in range(5)]
    assert events == [plans[0], plans[1], submits[0], plans[2], submits[1], plans[3], submits[2], plans[4], submits[3],
                      submits[4]]  # fmt: skip


def test_a_background_stage_processes_in_order_and_blocks_at_its_depth():
    release, done, submitted = threading.Event(), [], []
    stage = BackgroundStage(lambda item: (release.wait(), done.append(item)), queue_depth=2)

    def feed():
        for item in range(5):
            stage.submit(item)
            submitted.append(item)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    feeder.join(timeout=1.0)
    assert feeder.is_alive() and submitted == [0, 1]  # item 0 in the worker, 1 queued: the third submit waits
    release.set()
    feeder.join(timeout=30)
    stage.close()
    assert done == [0, 1, 2, 3, 4]


def test_an_error_in_the_stage_is_raised_in_the_main_thread_and_leaves_nothing_half_written(
    synchronous, tmp_path, monkeypatch
):
    """A full disk while the stage writes the second shard: the run raises the writer's own error (its message) in
    the calling thread, no file stands under that shard's name, no temporary file is left; `--resume` completes the
    set as the synchronous run made it."""
    folder = tmp_path / "set"
    fsync = os.fsync
    failed = []

    def full_disk(fd):
        path = os.readlink(f"/proc/self/fd/{fd}")
        if "train-00001" in path and not failed:
            failed.append(threading.current_thread().name)
            raise OSError(errno.ENOSPC, "No space left on device")
        fsync(fd)

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="Could not write data/train-00001-of-00003.parquet .*No space left"):
        _generate(folder, _voting_pipeline(), queue_depth=2)
    assert failed == ["synfer-generate-writer"]
    assert not (folder / "data" / "train-00001-of-00003.parquet").exists()
    assert not list((folder / ".synfer" / "tmp").iterdir())
    monkeypatch.undo()
    assert _generate(folder, _voting_pipeline(), queue_depth=2, resume=True).complete
    _assert_same_dataset(folder, synchronous)


def test_an_error_of_the_labeller_in_the_stage_keeps_its_type_and_message(tmp_path):
    class Broken:
        name, description, config, needs_whole_set = "broken", "", {"name": "broken"}, False

        def __call__(self, output, target_labels):
            raise RuntimeError("the labeller broke")

    with pytest.raises(RuntimeError, match="the labeller broke"):
        _generate(tmp_path / "set", _voting_pipeline(), queue_depth=2, labeler=Broken())
    assert not list((tmp_path / "set" / "data").iterdir())


@pytest.mark.slow  # two `synfer` processes (forks of a `fork_server`)
@pytest.mark.usefixtures("tiny_stand_in_as_default")
def test_kill_9_inside_a_background_write_then_resume_equals_the_reference(reference, tmp_path):
    """Killed (`durable_write_hook.py`) at the fsync of the second shard's temporary file, which the stage's thread
    makes while the main thread generates on (`--queue-depth 2`: on the CPU the stage is off by default): `--resume`
    gives the reference set."""
    folder, log = tmp_path / "set", tmp_path / "kills.log"
    command = [sys.executable, str(HOOK), "kill", "fsync:/.synfer/tmp/train-00001", str(log), "--",
               *cli_command(folder)[3:], "--queue-depth", "2"]  # fmt: skip
    result = run_cli(command, timeout=300)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert log.read_text().split()[-1] == "synfer-generate-writer"  # the kill came inside the stage
    assert not (folder / "data" / "train-00001-of-00003.parquet").exists()
    resumed = run_cli([*cli_command(folder), "--resume"], timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _assert_same_dataset(folder, reference)
