"""The tiny training chain shared by the training tests, made once per session (registered by `conftest.py`):
a tiny FaceWorld folder -> `train_autoencoder.py` -> VAE -> `train_text_to_image.py` (from scratch, resumed) ->
stage-A pipeline. Tests only read these folders (each trains into its own `tmp_path`), so `test_training_examples.py`
and `test_au_consistency.py` share one chain instead of training it twice."""

import importlib.util
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
RESOLUTION = 16  # FaceWorld's 64 px faces resized: 8x8 latents through a 2-level autoencoder


def load_example(name: str):
    """Imports `examples/{name}.py` by path (the examples are scripts, not a package)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the file executes
        spec.loader.exec_module(module)
    return sys.modules[name]


def run(script: str, output_dir, *options: str, **settings):
    """`main()` of an example with `--output_dir` and `--key value` options; returns its `TrainingSummary`."""
    argv = ["--output_dir", str(output_dir), *options]
    for key, value in settings.items():
        argv += [f"--{key}", *map(str, value if isinstance(value, (list, tuple)) else [value])]
    return load_example(script).main(argv)


@pytest.fixture(scope="session")
def faceworld_dir(tmp_path_factory):
    from synfer_diffusers.data.faceworld import write_faceworld_splits

    directory = tmp_path_factory.mktemp("faceworld")
    write_faceworld_splits(directory, num_train=24, num_test=8, seed=0, show_progress=False)
    return directory


def save_tiny_stable_diffusion(folder) -> None:
    """A tiny `StableDiffusionPipeline` (16 px images, PNDM as SD 1.5 ships) saved to `folder`: what the training
    scripts fine-tune in place of `stable-diffusion-v1-5/stable-diffusion-v1-5`."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    from synfer_diffusers.tiny import make_tiny_base_unet, make_tiny_components

    components = make_tiny_components(seed=0)
    StableDiffusionPipeline(
        vae=components["vae"], text_encoder=components["text_encoder"], tokenizer=components["tokenizer"],
        unet=make_tiny_base_unet(seed=0), scheduler=PNDMScheduler(skip_prk_steps=True), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    ).save_pretrained(folder)  # fmt: skip


def autoencoder_settings(faceworld_dir, **overrides):
    settings = dict(
        dataset_name=faceworld_dir, resolution=RESOLUTION, block_out_channels=[32, 32], train_batch_size=4,
        max_train_steps=2, num_scaling_images=8, num_test_images=4,
    )  # fmt: skip
    return {**settings, **overrides}


def diffusion_settings(faceworld_dir, **overrides):
    settings = dict(
        dataset_name=faceworld_dir, resolution=RESOLUTION, train_batch_size=4, max_train_steps=2,
        validation_expressions=["happy", "sad"], num_validation_identities=2, validation_inference_steps=2,
    )  # fmt: skip
    return {**settings, **overrides}


def scratch_settings(faceworld_dir, vae_dir, **overrides):
    return diffusion_settings(
        faceworld_dir, vae_path=vae_dir, tokenizer_vocab_size=600, max_text_length=32, text_encoder_width=32,
        text_encoder_layers=1, text_encoder_heads=2, unet_block_out_channels=[32, 64],
        unet_down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"], unet_attention_heads=2, **overrides,
    )  # fmt: skip


@pytest.fixture(scope="session")
def gate_models(tmp_path_factory):
    """Untrained judge (7 expressions) and AU regressor (12 outputs): stock transformers ResNets, as
    `examples/train_fer_classifier.py` saves them. Paths `(judge, au_regressor)`."""
    from transformers import ResNetConfig, ResNetForImageClassification

    from synfer_diffusers import EXPRESSIONS, AUSpace

    paths = []
    for name, labels in (("judge", list(EXPRESSIONS)), ("au_regressor", list(AUSpace.disfa12().names))):
        config = ResNetConfig(
            embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=len(labels),
            id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)},
        )  # fmt: skip
        paths.append(tmp_path_factory.mktemp(name))
        ResNetForImageClassification(config).save_pretrained(paths[-1])
    return tuple(paths)


@pytest.fixture(scope="session")
def vae_run(faceworld_dir, gate_models, tmp_path_factory):
    """The autoencoder, 2 steps, with the gate: `(output_dir, summary)`."""
    output_dir = tmp_path_factory.mktemp("vae")
    gate = {"judge_path": gate_models[0], "au_regressor_path": gate_models[1], "label_column": "clean_label"}
    return output_dir, run("train_autoencoder", output_dir, **autoencoder_settings(faceworld_dir, **gate))


@pytest.fixture(scope="session")
def vae_dir(vae_run):
    return vae_run[0]


@pytest.fixture(scope="session")
def stage_a_run(faceworld_dir, vae_dir, tmp_path_factory):
    """Stage A from scratch: 1 step, then `--resume_from_checkpoint latest` to 2 steps: `(output_dir, summary of the resumed run)`."""
    output_dir = tmp_path_factory.mktemp("stage_a")
    options = ("--train_text_encoder", "--use_ema")
    run("train_text_to_image", output_dir, *options, **scratch_settings(faceworld_dir, vae_dir, max_train_steps=1))
    return output_dir, run(
        "train_text_to_image",
        output_dir,
        "--resume_from_checkpoint",
        "latest",
        *options,
        **scratch_settings(faceworld_dir, vae_dir),
    )


@pytest.fixture(scope="session")
def stage_a_dir(stage_a_run):
    return stage_a_run[0]


def pretrained_settings(faceworld_dir, pretrained_dir, **overrides):
    return diffusion_settings(faceworld_dir, pretrained_model_name_or_path=pretrained_dir, **overrides)
