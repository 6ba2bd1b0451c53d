"""diffusers' training flags in the training scripts, each with diffusers' meaning: data (`--train_data_dir`,
`--center_crop`, `--random_flip`), the loss (`--noise_offset`, `--prediction_type`), loading (`--revision`,
`--variant`), speed (`--allow_tf32`, `--use_8bit_adam`, `--enable_xformers_memory_efficient_attention`), diffusers'
names (`--caption_column`, `--rank`) and the command line's errors (one line, exit status 2)."""

import json
import sys
import types

import datasets
import numpy as np
import PIL.Image
import pytest
import torch

from synfer_diffusers.training import (
    DiffusionTrainingConfig,
    ExampleTransform,
    StepRandom,
    TrainingConfig,
    add_training_noise,
    load_config_split,
    make_optimizer,
    parse_config,
    prepare_run,
    training_batches,
)
from synfer_diffusers.training import config as config_module

# the chain (faceworld_dir, stage_a_dir, ...): session fixtures, conftest.py
from training_chain import load_example, pretrained_settings, run


def parse(config_class, tmp_path, *options: str):
    return parse_config(config_class, ["--output_dir", str(tmp_path / "out"), *options])


# ----------------------------------------------------------------------------------------------------------
# The command line
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("script", ["train_text_to_image", "train_au_adapter", "train_fer_classifier"])
def test_an_unknown_flag_ends_with_one_line_and_exit_status_2(script, tmp_path, capsys):
    required = {"train_au_adapter": ["--pretrained_model_name_or_path", str(tmp_path)]}.get(script, [])
    with pytest.raises(SystemExit) as exit_info:
        load_example(script).main(
            ["--output_dir", str(tmp_path / "out"), "--dataset_name", str(tmp_path), *required, "--random_flipp"]
        )
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "unrecognized arguments: --random_flipp" in line
    if script != "train_fer_classifier":
        assert "did you mean --random_flip?" in line
    assert not (tmp_path / "out").exists()


def test_a_missing_flag_ends_with_one_line_and_exit_status_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_example("train_au_adapter").main(["--output_dir", str(tmp_path), "--dataset_name", str(tmp_path)])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "required: --pretrained_model_name_or_path" in line


def test_a_bad_value_on_the_command_line_ends_with_one_line_naming_the_flag(tmp_path, monkeypatch, capsys):
    script = load_example("train_au_adapter")
    argv = ["train_au_adapter.py", "--output_dir", str(tmp_path / "out"), "--dataset_name", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", [*argv, "--pretrained_model_name_or_path", str(tmp_path), "--noise_offset", "-1"])
    with pytest.raises(SystemExit) as exit_info:
        script.main()
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("train_au_adapter.py: error: `noise_offset` must be a number >= 0")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "script, required",
    [("train_text_to_image", ["--pretrained_model_name_or_path"]),
     ("train_au_adapter", ["--pretrained_model_name_or_path"]), ("train_feranno", ["--pretrained_model"]),
     ("train_autoencoder", []), ("train_ssl", []), ("train_fer_classifier", [])],
)  # fmt: skip
def test_a_dataset_without_data_ends_each_script_with_one_line_and_exit_status_2(
    script, required, tmp_path, monkeypatch, capsys
):
    """Run as commands (`__main__`), every training script turns the package's bad-input error raised after the
    options parsed (here: a dataset folder with no data files) into one line and exit status 2, writing nothing."""
    import runpy

    from training_chain import EXAMPLES

    empty = tmp_path / "empty"
    empty.mkdir()
    path = EXAMPLES / f"{script}.py"
    argv = [str(path), "--output_dir", str(tmp_path / "out"), "--dataset_name", str(empty)]
    monkeypatch.setattr(sys, "argv", [*argv, *(arg for flag in required for arg in (flag, str(tmp_path)))])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(path), run_name="__main__")
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"{script}.py: error: ") and "dataset_name" in line
    assert not (tmp_path / "out").exists()


def test_text_column_and_lora_rank_still_work_as_deprecated_names_of_caption_column_and_rank(tmp_path):
    script = load_example("train_text_to_image")
    options = ["--dataset_name", str(tmp_path), "--pretrained_model_name_or_path", str(tmp_path)]
    with pytest.warns(FutureWarning) as warned:
        config = parse(script.TextToImageTrainingConfig, tmp_path, *options, "--text_column=caption", "--lora_rank", "8")
    assert (config.caption_column, config.rank) == ("caption", 8)
    assert [str(w.message) for w in warned] == [
        "`--text_column` is deprecated; use `--caption_column` (diffusers' name).",
        "`--lora_rank` is deprecated; use `--rank` (diffusers' name).",
    ]


# ----------------------------------------------------------------------------------------------------------
# Data: --train_data_dir, --center_crop, --random_flip
# ----------------------------------------------------------------------------------------------------------


def striped_rows(n: int) -> datasets.Dataset:
    """`n` copies of a 8 x 16 image whose pixel value is 10 x its column: a crop's first value is its left edge."""
    columns = np.tile(np.arange(16, dtype=np.uint8) * 10, (8, 1))
    image = PIL.Image.fromarray(np.stack([columns] * 3, axis=-1))
    return datasets.Dataset.from_dict({"image": [image] * n}, features=datasets.Features({"image": datasets.Image()}))


def crops_and_flips(tmp_path, *options: str) -> tuple[list[int], list[bool]]:
    """Left edges and flips of the 32 crops (8 px) of 4 micro-batches of 8, through the training DataLoader."""
    dataset = striped_rows(8)
    config = parse(
        TrainingConfig, tmp_path, "--dataset_name", str(tmp_path), "--resolution", "8", "--train_batch_size", "8",
        "--max_train_steps", "4", *options,
    )  # fmt: skip
    batches = training_batches(dataset, ExampleTransform.from_config(config), config, 0, 1)
    rows = torch.cat([batch["pixel_values"][:, 0, 0] for batch in batches(0)])  # (32, 8) the first pixel row
    flips = [bool(row[0] > row[-1]) for row in rows]
    lefts = [int(min(row[0], row[-1])) // 10 for row in rows]
    assert all(torch.equal(row.sort().values, torch.arange(left, left + 8) * 10) for row, left in zip(rows, lefts))
    return lefts, flips


def test_center_crop_takes_the_centre_and_otherwise_crops_are_random(tmp_path):
    centre, _ = crops_and_flips(tmp_path, "--center_crop")
    assert set(centre) == {4}  # (16 - 8) // 2
    random_lefts, flips = crops_and_flips(tmp_path)
    assert len(set(random_lefts)) >= 5 and set(random_lefts) <= set(range(9)) and not any(flips)
    assert crops_and_flips(tmp_path)[0] == random_lefts  # a function of the seed and the step (resumable)


def test_random_flip_flips_about_half_of_the_images(tmp_path):
    lefts, flips = crops_and_flips(tmp_path, "--random_flip", "--center_crop")
    assert set(lefts) == {4} and 8 <= sum(flips) <= 24
    assert not any(crops_and_flips(tmp_path, "--center_crop")[1])


def test_train_data_dir_reads_an_imagefolder_with_metadata(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rows = []
    for i in range(3):
        PIL.Image.new("RGB", (8, 8), (i, 0, 0)).save(folder / f"{i}.png")
        rows.append(json.dumps({"file_name": f"{i}.png", "caption": f"face {i}"}))
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    config = parse(TrainingConfig, tmp_path, "--train_data_dir", str(folder))
    dataset = load_config_split(config, "train")
    assert sorted(dataset["caption"]) == ["face 0", "face 1", "face 2"]
    assert isinstance(dataset.features["image"], datasets.Image)
    with pytest.raises(ValueError, match="exactly one of `dataset_name` and `train_data_dir`"):
        parse(TrainingConfig, tmp_path, "--train_data_dir", str(folder), "--dataset_name", str(folder))


# ----------------------------------------------------------------------------------------------------------
# The loss: --noise_offset, --prediction_type
# ----------------------------------------------------------------------------------------------------------


def test_noise_offset_adds_a_per_channel_constant_to_the_noise():
    from diffusers import DDPMScheduler

    latents, scheduler = torch.zeros(4, 3, 5, 5), DDPMScheduler()
    _, plain, timesteps = add_training_noise(latents, scheduler, StepRandom(0, 0))
    _, offset, offset_timesteps = add_training_noise(latents, scheduler, StepRandom(0, 0), noise_offset=0.5)
    shift = offset - plain  # (B, C, h, w), constant over h, w
    assert torch.equal(timesteps, offset_timesteps)
    assert torch.allclose(shift, shift[:, :, :1, :1].expand_as(shift)) and shift.abs().mean() > 0.1


@pytest.mark.parametrize("script", ["train_text_to_image", "train_au_adapter"])
def test_v_prediction_trains_against_the_velocity_and_saves_a_v_prediction_scheduler(
    script, faceworld_dir, stage_a_dir, tmp_path, monkeypatch
):
    from synfer_diffusers import SynFERPipeline

    module = load_example(script)
    loss = module.diffusion_loss
    seen = []

    def recording_loss(model_pred, latents, noise, timesteps, scheduler, snr_gamma=None):
        velocity = scheduler.get_velocity(latents, noise, timesteps)
        seen.append(torch.allclose(loss(velocity, latents, noise, timesteps, scheduler), torch.zeros(())))
        return loss(model_pred, latents, noise, timesteps, scheduler, snr_gamma)

    monkeypatch.setattr(module, "diffusion_loss", recording_loss)
    run(script, tmp_path, **pretrained_settings(
        faceworld_dir, stage_a_dir, prediction_type="v_prediction", noise_offset=0.1, max_train_steps=1,
    ))  # fmt: skip
    assert seen == [True]  # the loss is zero exactly when the UNet predicts the velocity
    assert SynFERPipeline.from_pretrained(tmp_path).scheduler.config.prediction_type == "v_prediction"


# ----------------------------------------------------------------------------------------------------------
# Loading and speed: --revision / --variant, --allow_tf32, --use_8bit_adam, xformers
# ----------------------------------------------------------------------------------------------------------


def test_revision_and_variant_reach_from_pretrained(tmp_path, monkeypatch):
    module = load_example("train_text_to_image")
    seen = {}

    def from_pretrained(name, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop")

    monkeypatch.setattr(module.SynFERPipeline, "from_pretrained", from_pretrained)
    options = ["--dataset_name", str(tmp_path), "--pretrained_model_name_or_path", str(tmp_path)]
    config = parse(module.TextToImageTrainingConfig, tmp_path, *options, "--revision", "v2", "--variant", "fp16")
    with pytest.raises(ValueError, match="`pretrained_model_name_or_path` .* could not be loaded: stop"):
        module.load_components(config, dataset=None)
    assert seen == {"revision": "v2", "variant": "fp16"}


def test_allow_tf32_enables_tf32_matmuls(tmp_path):
    before = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        prepare_run(parse(TrainingConfig, tmp_path, "--dataset_name", str(tmp_path)))
        assert torch.backends.cuda.matmul.allow_tf32 is False
        prepare_run(parse(TrainingConfig, tmp_path, "--dataset_name", str(tmp_path), "--allow_tf32"))
        assert torch.backends.cuda.matmul.allow_tf32 is True
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def test_use_8bit_adam_uses_bitsandbytes_and_names_it_when_missing(tmp_path, monkeypatch):
    options = ["--dataset_name", str(tmp_path), "--use_8bit_adam"]
    monkeypatch.setattr(config_module, "is_bitsandbytes_available", lambda: False)
    with pytest.raises(ValueError, match=r"`use_8bit_adam` needs bitsandbytes: `pip install bitsandbytes`"):
        parse(TrainingConfig, tmp_path, *options)

    class AdamW8bit(torch.optim.AdamW):
        pass

    fake = types.ModuleType("bitsandbytes")
    fake.optim = types.SimpleNamespace(AdamW8bit=AdamW8bit)
    monkeypatch.setitem(sys.modules, "bitsandbytes", fake)
    monkeypatch.setattr(config_module, "is_bitsandbytes_available", lambda: True)
    optimizer, _ = make_optimizer(parse(TrainingConfig, tmp_path, *options), [torch.nn.Parameter(torch.ones(2))])
    assert type(optimizer) is AdamW8bit


def test_xformers_is_refused_with_its_reason(tmp_path, monkeypatch):
    options = ["--dataset_name", str(tmp_path), "--enable_xformers_memory_efficient_attention"]
    monkeypatch.setattr(config_module, "is_xformers_available", lambda: False)
    with pytest.raises(ValueError, match="needs xformers: `pip install xformers`"):
        parse(DiffusionTrainingConfig, tmp_path, *options)
    monkeypatch.setattr(config_module, "is_xformers_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        parse(DiffusionTrainingConfig, tmp_path, *options)


def test_cache_latents_refuses_random_flip(tmp_path):
    with pytest.raises(ValueError, match="`cache_latents` stores one encoding per image: drop `random_flip`"):
        parse(DiffusionTrainingConfig, tmp_path, "--dataset_name", str(tmp_path), "--cache_latents", "--random_flip")


def test_flags_appear_in_each_scripts_help(capsys):
    flags = ["--noise_offset", "--center_crop", "--random_flip", "--allow_tf32", "--use_8bit_adam",
             "--prediction_type", "--train_data_dir", "--revision", "--variant",
             "--enable_xformers_memory_efficient_attention", "--caption_column", "--rank"]  # fmt: skip
    for script in ("train_text_to_image", "train_au_adapter"):
        with pytest.raises(SystemExit):
            load_example(script).main(["--help"])
        help_text = capsys.readouterr().out
        assert all(flag in help_text for flag in flags), [flag for flag in flags if flag not in help_text]
