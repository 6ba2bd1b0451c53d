"""The shared pieces of the training examples (`synfer_diffusers.training`), without any model."""

from types import SimpleNamespace

import datasets
import numpy as np
import PIL.Image
import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import save_file
from torch.utils.data import DataLoader

from synfer_diffusers import AUSpace
from synfer_diffusers.training import (
    CHECKPOINT_FILES,
    AugmentationDraws,
    BatchOrder,
    ExampleTransform,
    ExpressionLabels,
    StepBatchSampler,
    StepRandom,
    StepRows,
    condition_dropout_masks,
    list_checkpoints,
    resolve_checkpoint,
    save_checkpoint,
    smooth_action_units,
)
from synfer_diffusers.training.checkpoints import register_checkpoint_hooks


def test_step_random_draws_the_same_rows_for_any_process_count_or_accumulation():
    whole = StepRandom(seed=3, step=5).randn((8, 2))  # 1 process, batch 8
    for processes, accumulation in ((2, 1), (4, 1), (2, 2), (1, 4)):
        batch = 8 // (processes * accumulation)
        order = torch.arange(8).view(accumulation, batch * processes)  # micro k, then rows p::P
        for k in range(accumulation):
            for p in range(processes):
                part = StepRandom(3, 5, k, accumulation, p, processes).randn((batch, 2))
                assert torch.equal(part, whole[order[k, p::processes]])
    assert not torch.equal(StepRandom(3, 6).randn((8, 2)), whole)  # another step, other numbers


def test_condition_dropout_and_au_smoothing():
    random = StepRandom(seed=0, step=0)
    drop_text, drop_au = condition_dropout_masks(20_000, random, text_prob=0.05, au_prob=0.05, both_prob=0.05)
    assert abs((drop_text & ~drop_au).float().mean() - 0.05) < 0.01
    assert abs((drop_text & drop_au).float().mean() - 0.05) < 0.01
    assert abs((~drop_text & drop_au).float().mean() - 0.05) < 0.01

    space = AUSpace.disfa12()
    aus = torch.tensor([[0.0] * 6 + [5.0] * 6] * 1000)
    smoothed = smooth_action_units(aus, space, random, noise_std=0.2, round_prob=0.1)
    assert smoothed.min() >= 0 and smoothed.max() <= 5 and not torch.equal(smoothed, aus)
    assert 0.05 < (smoothed == aus).all(dim=1).float().mean() < 0.15  # rounded rows are unchanged


def test_batch_order_covers_an_epoch_and_the_sampler_resumes_at_a_micro_step():
    order = BatchOrder(num_samples=10, batch_size=3, seed=0)
    epoch = torch.cat([order.indices(step) for step in range(3)])
    assert len(set(epoch.tolist())) == 9 and torch.equal(order.indices(4), BatchOrder(10, 3, 0).indices(4))
    assert list(StepBatchSampler(order, 2, 5)) == [[(s, i) for i in order.indices(s).tolist()] for s in (2, 3, 4)]
    halves = [BatchOrder(10, 2, 0, process_index=p, num_processes=2).indices(1) for p in (0, 1)]
    assert sorted(torch.cat(halves).tolist()) == sorted(BatchOrder(10, 4, 0).indices(1).tolist())


def _rows(n: int, au_width: int = 12) -> datasets.Dataset:
    rng = np.random.default_rng(0)
    images = [PIL.Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)) for _ in range(n)]
    features = datasets.Features({
        "image": datasets.Image(), "aus": datasets.List(datasets.Value("float32")),
        "label": datasets.ClassLabel(names=["sad", "happy"]),
    })  # fmt: skip
    aus = [[1.0] * au_width for _ in range(n)]
    return datasets.Dataset.from_dict({"image": images, "aus": aus, "label": [i % 2 for i in range(n)]}, features)


def test_example_transform_decodes_rows_in_dataloader_workers():
    dataset = _rows(6)
    transform = ExampleTransform(
        "image", 8, au_column="aus", au_space=AUSpace.disfa12(), labels=ExpressionLabels.from_dataset(dataset, "label")
    )
    order = BatchOrder(6, 3, seed=0)
    draws = AugmentationDraws(SimpleNamespace(seed=0, gradient_accumulation_steps=1), 0, 1)
    loader = DataLoader(
        StepRows(dataset, transform, draws), batch_sampler=StepBatchSampler(order, 0, 2), num_workers=2,
        collate_fn=lambda rows: {k: torch.stack([r[k] for r in rows]) for k in rows[0]},
    )  # fmt: skip
    batches = list(loader)
    assert [b["pixel_values"].shape for b in batches] == [(3, 3, 8, 8)] * 2
    assert batches[0]["pixel_values"].dtype == torch.uint8 and batches[0]["action_units"].shape == (3, 12)
    happy, sad = ExpressionLabels.from_dataset(dataset, "label").class_ids[::-1]
    expected = [happy if i % 2 else sad for i in order.indices(0).tolist()]
    assert batches[0]["labels"].tolist() == expected


def test_example_transform_names_the_column_of_a_bad_au_row():
    transform = ExampleTransform("image", 8, au_column="aus", au_space=AUSpace.disfa12())
    with pytest.raises(ValueError, match=r"'aus' has a row of 11 values; expected 12"):
        transform(_rows(2, au_width=11)[:])
    with pytest.raises(ValueError, match=r"'aus'.*\[0, 5\]"):
        transform({"image": _rows(1)["image"], "aus": [[9.0] * 12]})


def test_resolve_checkpoint(tmp_path):
    assert resolve_checkpoint(tmp_path, None) is None
    assert resolve_checkpoint(tmp_path, "latest") is None  # nothing yet: a fresh start
    for step in (10, 2, 300):
        (tmp_path / f"checkpoint-{step}").mkdir()
        for name in CHECKPOINT_FILES:  # readable files: the folders are complete
            path = tmp_path / f"checkpoint-{step}" / name
            {".json": lambda: path.write_text("{}"), ".safetensors": lambda: save_file({}, path)}.get(
                path.suffix, lambda: torch.save({}, path))()
    (tmp_path / "checkpoint-last").mkdir()
    assert [p.rsplit("-", 1)[1] for p in list_checkpoints(tmp_path)] == ["2", "10", "300"]
    assert resolve_checkpoint(tmp_path, "latest").endswith("checkpoint-300")
    assert resolve_checkpoint(tmp_path, "checkpoint-10").endswith("checkpoint-10")
    assert resolve_checkpoint(tmp_path, str(tmp_path / "checkpoint-2")).endswith("checkpoint-2")
    with pytest.raises(ValueError, match="resume_from_checkpoint"):
        resolve_checkpoint(tmp_path, "checkpoint-7")


def test_a_checkpoint_save_killed_half_way_leaves_latest_whole_and_the_next_save_completes(tmp_path, monkeypatch):
    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(torch.nn.Linear(2, 2))
    scheduler = torch.optim.lr_scheduler.LambdaLR(torch.optim.SGD(model.parameters()), lambda _: 1)
    register_checkpoint_hooks(accelerator, {"lr_scheduler": scheduler})
    for step in (100, 200):
        save_checkpoint(accelerator, str(tmp_path), step, total_limit=2)
    whole = {path: sorted(p.name for p in (tmp_path / path).iterdir()) for path in ("checkpoint-100", "checkpoint-200")}
    save_state = accelerator.save_state

    def killed_half_way(path):
        save_state(path)
        (tmp_path / "checkpoint-300.partial" / "random_states_0.pkl").unlink()  # the kill: one file never written
        raise KeyboardInterrupt

    monkeypatch.setattr(accelerator, "save_state", killed_half_way)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(accelerator, str(tmp_path), 300, total_limit=2)
    assert resolve_checkpoint(tmp_path, "latest").endswith("checkpoint-200")  # not the half-written 300
    assert {path: sorted(p.name for p in (tmp_path / path).iterdir()) for path in whole} == whole

    monkeypatch.setattr(accelerator, "save_state", save_state)
    save_checkpoint(accelerator, str(tmp_path), 300, total_limit=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-200", "checkpoint-300"]
    assert resolve_checkpoint(tmp_path, "latest").endswith("checkpoint-300")  # complete: the damage check passes
