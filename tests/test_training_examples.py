"""The training examples in their tiny configurations: a few steps each on a tiny FaceWorld folder, in-process.

Chain: `train_autoencoder.py` -> VAE -> `train_text_to_image.py` (from scratch) -> stage-A pipeline ->
`train_au_adapter.py` -> AU pipeline. Each output must load with `from_pretrained` and generate; each script must
resume from its checkpoint; bad options must raise before any training step.
"""

import json
from pathlib import Path

import datasets
import pytest
import torch

from synfer_diffusers.training import list_checkpoints

# the chain (faceworld_dir, gate_models, vae_run, vae_dir, stage_a_run, stage_a_dir): session fixtures, conftest.py
from training_chain import (
    RESOLUTION,
    autoencoder_settings,
    load_example,
    pretrained_settings,
    run,
    save_tiny_stable_diffusion,
    scratch_settings,
)


@pytest.fixture(scope="module")
def stage_b_run(faceworld_dir, stage_a_dir, tmp_path_factory):
    """Stage B (frozen base), 2 steps: `(output_dir, summary)`."""
    output_dir = tmp_path_factory.mktemp("stage_b")
    return output_dir, run("train_au_adapter", output_dir, **pretrained_settings(faceworld_dir, stage_a_dir))


@pytest.fixture(scope="module")
def stage_b_dir(stage_b_run):
    return stage_b_run[0]


def generate(pipe, **kwargs):
    return pipe(
        prompt="a photo of a face", num_inference_steps=2, generator=torch.Generator().manual_seed(0), **kwargs
    ).images[0]


# ----------------------------------------------------------------------------------------------------------
# The three scripts
# ----------------------------------------------------------------------------------------------------------


def test_autoencoder_saves_a_loadable_model_with_measured_scaling(vae_dir, faceworld_dir):
    from diffusers import AutoencoderKL

    from synfer_diffusers.training.data import normalize_images, pixel_tensor

    vae = AutoencoderKL.from_pretrained(vae_dir)
    assert vae.config.down_block_types == ["DownEncoderBlock2D"] * 2
    # measured on the data: 1 / std of the saved model's posterior samples of the first num_scaling_images (8)
    # training images, in batches of train_batch_size (4), noise seeded 0 (diffusers' default would be 0.18215)
    train = datasets.load_dataset("parquet", data_files=sorted(map(str, (faceworld_dir / "data").glob("train-*"))),
                                  split="train", cache_dir=str(faceworld_dir.parent / "hf_cache_scaling"))  # fmt: skip
    images = torch.stack([pixel_tensor(train[i]["image"], RESOLUTION) for i in range(8)])
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        latents = torch.cat([vae.encode(normalize_images(chunk)).latent_dist.sample(generator=generator)
                             for chunk in images.split(4)])  # fmt: skip
    assert vae.config.scaling_factor == pytest.approx(1.0 / latents.std().item(), rel=1e-4)
    assert (vae_dir / "diffusion_pytorch_model.safetensors").exists()
    assert (vae_dir / "checkpoint-2" / "trainable_model_0.safetensors").exists()  # accelerator.save_state
    assert list((vae_dir / "validation").glob("reconstructions-*.png"))
    latents = vae.encode(torch.zeros(1, 3, RESOLUTION, RESOLUTION)).latent_dist.mode()
    assert latents.shape == (1, 4, RESOLUTION // 2, RESOLUTION // 2)
    gate = json.loads((vae_dir / "gate.json").read_text())
    assert {"psnr", "judge_ratio", "au_mae_ratio", "passed", "num_images"} <= set(gate)
    assert gate["num_images"] == 4


def test_autoencoder_resume_repeats_the_uninterrupted_run(faceworld_dir, vae_run, tmp_path):
    run("train_autoencoder", tmp_path, **autoencoder_settings(faceworld_dir, max_train_steps=1))
    resumed = run(
        "train_autoencoder", tmp_path, "--resume_from_checkpoint", "latest", **autoencoder_settings(faceworld_dir)
    )
    assert (resumed.start_step, resumed.final_step) == (1, 2)
    assert resumed.losses == vae_run[1].losses[1:]  # bit-identical on the CPU


def test_text_to_image_from_scratch_gives_a_text_only_pipeline(stage_a_dir):
    from diffusers import DDIMScheduler, UNet2DConditionModel

    from synfer_diffusers import AUConditionedUNet2DConditionModel, SynFERPipeline

    pipe = SynFERPipeline.from_pretrained(stage_a_dir)
    assert isinstance(pipe.unet, UNet2DConditionModel)
    assert not isinstance(pipe.unet, AUConditionedUNet2DConditionModel)
    assert isinstance(pipe.scheduler, DDIMScheduler) and pipe.scheduler.config.clip_sample is False
    assert pipe.tokenizer.model_max_length == 32
    assert generate(pipe, expression="happy").size == (RESOLUTION, RESOLUTION)
    assert (stage_a_dir / "README.md").exists()
    assert (stage_a_dir / "validation" / "grid-000002.png").exists()
    checkpoint = stage_a_dir / "checkpoint-2"
    # accelerator.save_state: the UNet and the text encoder, the EMAModel and the LR scheduler, all safetensors + JSON
    assert {p.name for p in checkpoint.iterdir()} >= {
        "trainable_model_0.safetensors", "trainable_model_1.safetensors", "ema_unet.safetensors", "ema_unet.json",
        "lr_scheduler.safetensors", "lr_scheduler.json",
    }  # fmt: skip
    assert not list(checkpoint.glob("custom_checkpoint_*"))


def test_text_to_image_resume_with_ema_repeats_the_uninterrupted_run(faceworld_dir, vae_dir, stage_a_run, tmp_path):
    from safetensors.torch import load_file

    output_dir, resumed = stage_a_run
    assert (resumed.start_step, resumed.final_step) == (1, 2)
    assert sorted(p.name for p in output_dir.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    whole = run("train_text_to_image", tmp_path, "--train_text_encoder", "--use_ema",
                **scratch_settings(faceworld_dir, vae_dir))  # fmt: skip
    assert resumed.losses == whole.losses[1:]
    weights = "unet/diffusion_pytorch_model.safetensors"  # the saved EMA weights
    expected, got = load_file(tmp_path / weights), load_file(output_dir / weights)
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)


def test_text_to_image_lora_loads_with_load_lora_weights(faceworld_dir, stage_a_dir, tmp_path):
    from synfer_diffusers import SynFERPipeline

    run("train_text_to_image", tmp_path, **pretrained_settings(
        faceworld_dir, stage_a_dir, rank=4, learning_rate=1e-2, max_train_steps=1
    ))  # fmt: skip
    assert (tmp_path / "pytorch_lora_weights.safetensors").exists()
    pipe = SynFERPipeline.from_pretrained(stage_a_dir)
    base_image = generate(pipe)
    pipe.load_lora_weights(tmp_path)
    assert any("lora_A" in name for name, _ in pipe.unet.named_parameters())
    assert generate(pipe).tobytes() != base_image.tobytes()


def test_lora_checkpoints_hold_only_the_lora_and_resume_without_unrestricted_unpickling(
    faceworld_dir, stage_a_dir, tmp_path, monkeypatch
):
    from safetensors.torch import load_file

    settings = pretrained_settings(faceworld_dir, stage_a_dir, rank=4, learning_rate=1e-2, max_train_steps=3)
    whole = run("train_text_to_image", tmp_path / "whole", **settings)
    run("train_text_to_image", tmp_path / "cut", **{**settings, "max_train_steps": 1})
    checkpoint = load_file(tmp_path / "cut" / "checkpoint-1" / "trainable_model_0.safetensors")
    assert checkpoint and all("lora_" in name for name in checkpoint)  # not the frozen base UNet
    weights_only = []
    torch_load = torch.load

    def recording_load(*args, **kwargs):
        weights_only.append(kwargs.get("weights_only"))
        return torch_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    resumed = run("train_text_to_image", tmp_path / "cut", "--resume_from_checkpoint", "latest", **settings)
    assert weights_only and all(weights_only)  # the optimizer and RNG states; nothing else is a pickle
    assert resumed.losses == whole.losses[1:]
    expected = load_file(tmp_path / "whole" / "pytorch_lora_weights.safetensors")
    got = load_file(tmp_path / "cut" / "pytorch_lora_weights.safetensors")
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)


def test_text_to_image_fine_tunes_a_stable_diffusion_folder(faceworld_dir, tmp_path):
    from diffusers import DDIMScheduler

    from synfer_diffusers import SynFERPipeline

    save_tiny_stable_diffusion(tmp_path / "sd")
    settings = pretrained_settings(faceworld_dir, tmp_path / "sd", max_train_steps=1, snr_gamma=5.0)
    run("train_text_to_image", tmp_path / "tuned", **settings)
    pipe = SynFERPipeline.from_pretrained(tmp_path / "tuned")
    assert isinstance(pipe.scheduler, DDIMScheduler) and pipe.scheduler.config.steps_offset == 1
    assert generate(pipe).size == (RESOLUTION, RESOLUTION)


def test_au_adapter_trains_only_the_adapter_and_generates(stage_a_dir, stage_b_dir):
    from synfer_diffusers import AUConditionedUNet2DConditionModel, SynFERPipeline

    base = SynFERPipeline.from_pretrained(stage_a_dir).unet
    pipe = SynFERPipeline.from_pretrained(stage_b_dir)
    assert isinstance(pipe.unet, AUConditionedUNet2DConditionModel)
    assert pipe.unet.config.num_au_tokens == 4
    assert torch.equal(pipe.unet.conv_in.weight, base.conv_in.weight)  # frozen base (the paper's setting)
    attn2 = pipe.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn2
    assert not torch.equal(attn2.to_k_au.weight, attn2.to_k.weight)  # initialised as a copy, then trained
    assert generate(pipe, expression="happy", action_units={"AU12": 4.0}).size == (RESOLUTION, RESOLUTION)
    assert (stage_b_dir / "validation" / "grid-000002.png").exists()


def test_au_adapter_resume_repeats_the_uninterrupted_run(faceworld_dir, stage_a_dir, stage_b_run, tmp_path):
    run("train_au_adapter", tmp_path, **pretrained_settings(faceworld_dir, stage_a_dir, max_train_steps=1))
    resumed = run(
        "train_au_adapter",
        tmp_path,
        "--resume_from_checkpoint",
        "latest",
        **pretrained_settings(faceworld_dir, stage_a_dir),
    )
    assert (resumed.start_step, resumed.final_step) == (1, 2)
    assert resumed.losses == stage_b_run[1].losses[1:]


@pytest.mark.parametrize("unet_training", ["lora", "full"])
def test_au_adapter_lora_and_full_save_plain_au_unets(faceworld_dir, stage_a_dir, tmp_path, unet_training):
    from synfer_diffusers import SynFERPipeline

    run("train_au_adapter", tmp_path, **pretrained_settings(
        faceworld_dir, stage_a_dir, unet_training=unet_training, max_train_steps=1, learning_rate=1e-2
    ))  # fmt: skip
    base = SynFERPipeline.from_pretrained(stage_a_dir).unet
    pipe = SynFERPipeline.from_pretrained(tmp_path)
    assert not any("lora" in name for name in pipe.unet.state_dict())  # LoRA merged into the weights
    attention = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_q.weight"
    assert not torch.equal(pipe.unet.state_dict()[attention], base.state_dict()[attention])
    assert generate(pipe, expression="sad").size == (RESOLUTION, RESOLUTION)


# ----------------------------------------------------------------------------------------------------------
# Bad configurations fail before training
# ----------------------------------------------------------------------------------------------------------

BAD_AUTOENCODER = [
    ({"image_column": "picture"}, "picture"),
    ({"block_out_channels": [30, 60]}, "norm_num_groups"),
    ({"judge_path": "/no/such/judge"}, "judge_path"),
    ({"label_column": "mood", "judge_path": "GATE"}, "mood"),
    ({"dataset_split": "validation"}, "dataset_split"),
    ({"learning_rate": -1}, "learning_rate"),
]
BAD_TEXT_TO_IMAGE = [
    ({"vae_path": None}, "exactly one"),
    ({"dataset_name": "/no/such/dataset"}, "dataset_name"),
    ({"caption_column": "caption"}, "caption"),
    ({"rank": 4}, "rank"),
    ({"unet_down_block_types": ["DownBlock2D", "DownBlock2D"]}, "CrossAttnDownBlock2D"),
    ({"validation_expressions": ["happy", "joyful"]}, "validation_expressions"),
]
BAD_AU_ADAPTER = [
    ({"au_space": "opengraphau41"}, "41"),
    ({"au_column": "aus"}, "aus"),
    ({"text_dropout_prob": 0.6, "au_dropout_prob": 0.6}, "<= 1"),
    ({"pretrained_model_name_or_path": "/no/such/model"}, "pretrained_model_name_or_path"),
    ({"resolution": 32}, "resolution"),
    ({"train_batch_size": 64}, "train_batch_size"),
]


def assert_fails_before_training(script, output_dir, settings, match):
    argv_settings = {k: v for k, v in settings.items() if v is not None}
    with pytest.raises(ValueError, match=match):
        run(script, output_dir, **argv_settings)
    assert not any(Path(output_dir).iterdir())  # nothing written


@pytest.mark.parametrize("overrides, match", BAD_AUTOENCODER)
def test_autoencoder_rejects_bad_configs(faceworld_dir, gate_models, tmp_path, overrides, match):
    overrides = {k: gate_models[0] if v == "GATE" else v for k, v in overrides.items()}
    assert_fails_before_training(
        "train_autoencoder", tmp_path, autoencoder_settings(faceworld_dir, **overrides), match
    )


@pytest.mark.parametrize("overrides, match", BAD_TEXT_TO_IMAGE)
def test_text_to_image_rejects_bad_configs(faceworld_dir, vae_dir, tmp_path, overrides, match):
    settings = {**scratch_settings(faceworld_dir, vae_dir), **overrides}
    assert_fails_before_training("train_text_to_image", tmp_path, settings, match)


@pytest.mark.parametrize("overrides, match", BAD_AU_ADAPTER)
def test_au_adapter_rejects_bad_configs(faceworld_dir, stage_a_dir, tmp_path, overrides, match):
    settings = {**pretrained_settings(faceworld_dir, stage_a_dir), **overrides}
    assert_fails_before_training("train_au_adapter", tmp_path, settings, match)


def test_au_adapter_rejects_a_model_that_already_has_one(faceworld_dir, stage_b_dir, tmp_path):
    settings = pretrained_settings(faceworld_dir, stage_b_dir)
    assert_fails_before_training("train_au_adapter", tmp_path, settings, "already has an AU adapter")


BAD_RUN_OPTIONS = [
    ({"streaming": True, "max_train_steps": None}, "max_train_steps"),  # a fresh parquet stream has no length
    ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps"),
    ({"checkpoints_total_limit": 0}, "checkpoints_total_limit"),
    ({"dataloader_num_workers": -1}, "dataloader_num_workers"),
    ({"resume_from_checkpoint": "checkpoint-9"}, "resume_from_checkpoint"),
]


@pytest.mark.parametrize("overrides, match", BAD_RUN_OPTIONS)
def test_run_options_are_checked_before_any_model_loads(faceworld_dir, tmp_path, monkeypatch, overrides, match):
    def no_model(*args, **kwargs):
        raise AssertionError("a model was built before the configuration error")

    import datasets

    monkeypatch.setattr(load_example("train_autoencoder"), "build_autoencoder", no_model)
    parquet_dir = tmp_path / "parquet"  # never loaded before: no cached metadata that would give a row count
    datasets.load_dataset(str(faceworld_dir), split="train").to_parquet(parquet_dir / "data" / "train.parquet")
    options = [f"--{k}" for k, v in overrides.items() if v is True]
    settings = autoencoder_settings(parquet_dir, test_split="", **overrides)
    settings = {k: v for k, v in settings.items() if v not in (None, True)}
    with pytest.raises(ValueError, match=match):
        run("train_autoencoder", tmp_path / "out", *options, **settings)
    assert not (tmp_path / "out").exists()  # nothing written


# ----------------------------------------------------------------------------------------------------------
# diffusers' training conventions (on the autoencoder: the fastest script)
# ----------------------------------------------------------------------------------------------------------


def test_total_limit_keeps_k_checkpoints_and_resume_repeats_the_losses(faceworld_dir, tmp_path):
    settings = autoencoder_settings(faceworld_dir, max_train_steps=4, checkpointing_steps=1, test_split="")
    whole = run("train_autoencoder", tmp_path / "whole", checkpoints_total_limit=2, **settings)
    assert [Path(p).name for p in list_checkpoints(tmp_path / "whole")] == ["checkpoint-3", "checkpoint-4"]
    run("train_autoencoder", tmp_path / "cut", **{**settings, "max_train_steps": 2})  # stopped after 2 steps
    resumed = run("train_autoencoder", tmp_path / "cut", "--resume_from_checkpoint", "latest", **settings)
    assert (resumed.start_step, resumed.final_step) == (2, 4)
    assert resumed.losses == whole.losses[2:]  # the same trajectory, bit for bit on the CPU


def test_gradient_accumulation_equals_the_larger_batch(faceworld_dir, tmp_path):
    settings = autoencoder_settings(faceworld_dir, max_train_steps=3, test_split="")
    large = run("train_autoencoder", tmp_path / "large", **{**settings, "train_batch_size": 4})
    accumulated = run(
        "train_autoencoder", tmp_path / "acc", **{**settings, "train_batch_size": 2, "gradient_accumulation_steps": 2}
    )
    assert len(accumulated.losses) == 3
    assert accumulated.losses == pytest.approx(large.losses, rel=1e-4)  # same rows, same noise, same updates


def test_dataloader_workers_do_not_change_the_run(faceworld_dir, tmp_path):
    settings = autoencoder_settings(faceworld_dir, max_train_steps=2, test_split="")
    in_process = run("train_autoencoder", tmp_path / "w0", **settings)
    workers = run("train_autoencoder", tmp_path / "w2", **{**settings, "dataloader_num_workers": 2})
    assert workers.losses == in_process.losses


def test_a_streamed_run_trains_and_resumes_on_the_same_trajectory(faceworld_dir, tmp_path, monkeypatch):
    import datasets

    # `IterableDataset.repeat` sleeps 5 s when a stream is closed (a pyarrow thread-shutdown workaround)
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)
    settings = autoencoder_settings(faceworld_dir, max_train_steps=3, test_split="", shuffle_buffer_size=8)
    whole = run("train_autoencoder", tmp_path / "whole", "--streaming", **settings)
    run("train_autoencoder", tmp_path / "cut", "--streaming", **{**settings, "max_train_steps": 1})
    resumed = run(
        "train_autoencoder", tmp_path / "cut", "--streaming", "--resume_from_checkpoint", "latest", **settings
    )
    assert len(whole.losses) == 3 and resumed.losses == whole.losses[1:]


def test_report_to_tensorboard_logs_the_losses(faceworld_dir, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    summary = run(
        "train_autoencoder", tmp_path, report_to="tensorboard",
        **autoencoder_settings(faceworld_dir, max_train_steps=2, test_split=""),
    )  # fmt: skip
    runs = [EventAccumulator(str(events)).Reload() for events in (tmp_path / "logs").rglob("events.out.tfevents.*")]
    (scalars,) = [run for run in runs if "loss" in run.Tags()["scalars"]]
    assert [(event.step, event.value) for event in scalars.Scalars("loss")] == [
        (step, pytest.approx(loss)) for step, loss in enumerate(summary.losses, start=1)
    ]


def test_lora_under_mixed_precision_trains_float32_weights_over_a_bf16_base(
    faceworld_dir, stage_a_dir, tmp_path, monkeypatch
):
    script = load_example("train_text_to_image")
    seen = {}

    def recording_cast(model, dtype):
        script_cast(model, dtype=dtype)
        for name, param in model.named_parameters():
            seen.setdefault(param.requires_grad, set()).add(param.dtype)

    from accelerate.state import AcceleratorState

    script_cast = script.cast_training_params
    monkeypatch.setattr(script, "cast_training_params", recording_cast)
    AcceleratorState._reset_state(reset_partial_state=True)  # accelerate keeps one state per process
    try:
        summary = run("train_text_to_image", tmp_path, **pretrained_settings(
            faceworld_dir, stage_a_dir, rank=4, mixed_precision="bf16", max_train_steps=1
        ))  # fmt: skip
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert seen == {True: {torch.float32}, False: {torch.bfloat16}}  # LoRA in float32, the frozen base in bf16
    assert all(torch.isfinite(torch.tensor(summary.losses)))
    from safetensors.torch import load_file

    lora = load_file(tmp_path / "pytorch_lora_weights.safetensors")
    assert lora and {t.dtype for t in lora.values()} == {torch.float32}


def test_cache_latents_repeats_on_the_fly_encoding_and_resumes_a_killed_cache(
    faceworld_dir, stage_a_dir, stage_b_run, tmp_path, monkeypatch
):
    from synfer_diffusers.training import latent_cache

    monkeypatch.setattr(latent_cache, "SHARD_ROWS", 8)  # 24 rows: 3 shards
    encode = latent_cache._encode_shard
    calls = []

    def killed_at_the_second_shard(*args, **kwargs):
        calls.append(len(calls))
        if len(calls) == 2:
            raise KeyboardInterrupt  # the run dies while caching
        return encode(*args, **kwargs)

    settings = pretrained_settings(faceworld_dir, stage_a_dir, latent_cache_dir=tmp_path / "cache")
    monkeypatch.setattr(latent_cache, "_encode_shard", killed_at_the_second_shard)
    with pytest.raises(KeyboardInterrupt):
        run("train_au_adapter", tmp_path / "killed", "--cache_latents", **settings)
    (folder,) = (tmp_path / "cache").iterdir()
    assert len(list(folder.glob("*.parquet"))) == 1  # the finished shard; nothing half-written
    cached = run("train_au_adapter", tmp_path / "cached", "--cache_latents", **settings)
    assert len(calls) == 4 and len(list(folder.glob("*.parquet"))) == 3  # only the two missing shards encoded
    assert cached.losses == pytest.approx(stage_b_run[1].losses, rel=1e-4)  # = on-the-fly encoding
    run("train_au_adapter", tmp_path / "again", "--cache_latents", **settings)
    assert len(calls) == 4  # reused: no VAE pass
    other = pretrained_settings(faceworld_dir, stage_a_dir, latent_cache_dir=tmp_path / "cache", max_train_samples=16)
    run("train_au_adapter", tmp_path / "fewer", "--cache_latents", **other)
    assert len(list((tmp_path / "cache").iterdir())) == 2  # another dataset: another cache
