import contextlib
import math

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFilter
import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler
from transformers import (
    ConvNextImageProcessorPil,
    ResNetConfig,
    ResNetForImageClassification,
    ViTImageProcessorPil,
)

from synfer_diffusers import SynFERPipeline
from synfer_diffusers.pipelines.synfer import semantic_guidance
from synfer_diffusers.pipelines.synfer.prediction import PREDICTION_TYPES
from synfer_diffusers.pipelines.synfer.semantic_guidance import (
    guidance_decode_size,
    semantic_guidance_gradient_steps,
    semantic_guidance_steps,
)

GUIDE_LABELS = ["Anger", "Neutral", "Happiness", "Sad", "Surprise", "Fear", "Disgust"]


def make_guide(labels=GUIDE_LABELS, seed=0, size=24):
    torch.manual_seed(seed)
    config = ResNetConfig(
        num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
        id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)},
    )  # fmt: skip
    processor = ViTImageProcessorPil(size={"height": size, "width": size}, image_mean=[0.5] * 3, image_std=[0.25] * 3)
    return ResNetForImageClassification(config).eval(), processor


@pytest.fixture()
def guided_pipe(tiny_components):
    guide, processor = make_guide()
    pipe = SynFERPipeline(**tiny_components, guidance_classifier=guide, guidance_image_processor=processor)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run(pipe, seed=0, **kwargs):
    kwargs.setdefault("prompt", "a photo of a young woman")
    kwargs.setdefault("num_inference_steps", 4)
    kwargs.setdefault("output_type", "np")
    kwargs.setdefault("guidance_label_mapping", {"happiness": "happy", "anger": "anger"})
    return pipe(generator=[torch.Generator().manual_seed(seed + i) for i in range(kwargs.pop("n", 1))], **kwargs)


def test_window_selects_the_last_steps():
    assert semantic_guidance_steps(50, (0.6, 1.0)) == set(range(30, 50))
    assert semantic_guidance_steps(4, (0.0, 0.5)) == {0, 1}
    assert semantic_guidance_gradient_steps(50, (0.6, 1.0)) == set(range(29, 49))
    assert semantic_guidance_gradient_steps(4, (0.0, 0.5)) == {0}
    assert semantic_guidance_gradient_steps(50, (0.6, 1.0), interval=2) == set(range(29, 49, 2))
    assert semantic_guidance_gradient_steps(10, (0.6, 1.0), interval=3) == {5, 8}


def test_decode_size_covers_the_guide_input():
    assert guidance_decode_size((224, 224), (64, 64), 8, "guide_size") == (28, 28)
    assert guidance_decode_size((100, 50), (64, 64), 8, "guide_size") == (13, 7)
    assert guidance_decode_size((224, 224), (64, 64), 8, "full") is None
    assert guidance_decode_size((64, 64), (32, 32), 2, "guide_size") is None  # guide reads full-size images
    assert guidance_decode_size(None, (32, 32), 2, "guide_size") is None


@pytest.mark.parametrize("decode, latent_side", [("guide_size", 4), ("full", 8)])
def test_small_guide_decodes_at_its_own_size(tiny_components, decode, latent_side):
    guide, processor = make_guide(size=8)  # 8 px guide, 16 px images, VAE factor 2
    pipe = SynFERPipeline(**tiny_components, guidance_classifier=guide, guidance_image_processor=processor)
    pipe.set_progress_bar_config(disable=True)
    decoded_sizes = []
    hook = pipe.vae.decoder.register_forward_pre_hook(lambda module, args: decoded_sizes.append(args[0].shape[-1]))
    try:
        _run(pipe, expression="happy", semantic_guidance_scale=1.0, semantic_guidance_decode=decode)
    finally:
        hook.remove()
    assert decoded_sizes[:-1] and set(decoded_sizes[:-1]) == {latent_side} and decoded_sizes[-1] == 8


def test_guidance_changes_output_and_is_deterministic(guided_pipe):
    plain = _run(guided_pipe, expression="happy").images
    guided = _run(guided_pipe, expression="happy", semantic_guidance_scale=2.0).images
    again = _run(guided_pipe, expression="happy", semantic_guidance_scale=2.0).images
    assert not np.allclose(plain, guided) and np.allclose(guided, again, atol=1e-5)


def test_images_without_target_are_not_guided(guided_pipe):
    kwargs = {"prompt": ["a", "b"], "expression": ["fear", None], "n": 2}
    plain = _run(guided_pipe, **kwargs).images
    guided = _run(guided_pipe, semantic_guidance_scale=2.0, **kwargs).images
    assert not np.allclose(plain[0], guided[0]) and np.abs(plain[1] - guided[1]).max() < 1e-5


@pytest.mark.parametrize("normalization", ["global", "per_token"])
def test_guided_step_descends_the_guide_loss(guided_pipe, normalization):
    pipe = guided_pipe
    pipe.scheduler.set_timesteps(10)
    t = pipe.scheduler.timesteps[7]
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    embeds, _ = pipe.encode_prompt(["a photo of a face", "a photo of a man"], "cpu", 1, False)
    au_embeds = pipe.unet.encode_action_units(torch.full((2, 12), 2.0))
    guide = pipe.prepare_semantic_guidance(
        ["happy", "anger"], {"happiness": "happy"}, "guide_size", (8, 8), torch.device("cpu")
    )

    def loss_of(text):
        with torch.no_grad():
            eps = pipe.unet(latents, t, text, au_embeds=au_embeds).sample
            abar = pipe.scheduler.alphas_cumprod[t]
            images = pipe.vae.decode((latents - (1 - abar).sqrt() * eps) / abar.sqrt()).sample
            return pipe.guidance_loss((images / 2 + 0.5).clamp(0, 1), guide).item()

    _, updated = pipe.semantic_guidance_step(latents, t, embeds, au_embeds, 1.0, guide, 0.05, normalization)
    step_norms = (embeds - updated).norm(dim=-1 if normalization == "per_token" else (-2, -1))
    assert torch.allclose(step_norms, torch.full_like(step_norms, 0.05), atol=1e-4)
    assert loss_of(updated) < loss_of(embeds)


def test_guide_round_trips_with_the_checkpoint(guided_pipe, tmp_path):
    expected = _run(guided_pipe, expression="sad", semantic_guidance_scale=1.0).images
    guided_pipe.save_pretrained(tmp_path)
    loaded = SynFERPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.guidance_classifier, ResNetForImageClassification)
    # backward passes through oneDNN kernels may sum in another order from run to run: equal up to float rounding
    assert np.allclose(_run(loaded, expression="sad", semantic_guidance_scale=1.0).images, expected, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"semantic_guidance_scale": -1.0}, "semantic_guidance_scale"),
        ({"semantic_guidance_scale": math.nan}, "semantic_guidance_scale"),
        ({"semantic_guidance_scale": 1.0, "semantic_guidance_window": (0.9, 0.2)}, "semantic_guidance_window"),
        ({"semantic_guidance_scale": 1.0, "semantic_guidance_window": (0.5, 1.2)}, "semantic_guidance_window"),
        ({"semantic_guidance_scale": 1.0, "semantic_guidance_normalization": "l1"}, "normalization"),
        ({"semantic_guidance_scale": 1.0, "semantic_guidance_interval": 0}, "semantic_guidance_interval"),
        ({"semantic_guidance_scale": 1.0, "semantic_guidance_interval": 1.5}, "semantic_guidance_interval"),
        ({"semantic_guidance_scale": 1.0, "semantic_guidance_decode": "half"}, "semantic_guidance_decode"),
        ({"semantic_guidance_scale": 1.0, "expression": None}, "target expressions"),
        ({"semantic_guidance_scale": 1.0, "guidance_label_mapping": None}, "guidance_label_mapping"),
        ({"layout_strength": 1.5, "layout_image": PIL.Image.new("RGB", (16, 16))}, "layout_strength"),
    ],
)
def test_bad_guidance_inputs(guided_pipe, kwargs, match):
    kwargs = {"expression": "happy", **kwargs}
    with pytest.raises(ValueError, match=match):
        _run(guided_pipe, **kwargs)


def test_guidance_without_guide_is_refused(tiny_components):
    pipe = SynFERPipeline(**tiny_components)
    with pytest.raises(ValueError, match="guidance_classifier"):
        _run(pipe, expression="happy", semantic_guidance_scale=1.0)


def test_unmappable_guide_labels_are_refused(tiny_components):
    guide, processor = make_guide(labels=["a", "b", "c", "d", "e", "f", "g"])
    pipe = SynFERPipeline(**tiny_components, guidance_classifier=guide, guidance_image_processor=processor)
    with pytest.raises(ValueError, match="do not map onto"):
        _run(pipe, expression="happy", semantic_guidance_scale=1.0, guidance_label_mapping=None)


def _face(value):
    array = np.full((16, 16, 3), value, dtype=np.uint8)
    array[4:12, 4:12] = 255 - value
    return PIL.Image.fromarray(array)


def test_layout_initialisation(guided_pipe):
    steps = []
    count_steps = lambda pipe, i, t, tensors: steps.append(int(t)) or {}  # noqa: E731
    full = _run(guided_pipe, expression="happy", layout_image=_face(40), callback_on_step_end=count_steps).images
    assert len(steps) == 4
    steps.clear()
    half = _run(guided_pipe, expression="happy", layout_image=_face(40), layout_strength=0.5,
                callback_on_step_end=count_steps).images  # fmt: skip
    assert len(steps) == 2 and not np.allclose(full, half)
    assert not np.allclose(
        half, _run(guided_pipe, expression="happy", layout_image=_face(200), layout_strength=0.5).images
    )
    per_image = _run(
        guided_pipe, expression="happy", layout_image=[_face(40), _face(200)], num_images_per_prompt=2, n=2
    )
    assert per_image.images.shape[0] == 2 and not np.allclose(per_image.images[0], per_image.images[1])


def test_layout_strength_zero_reconstructs_the_layout(guided_pipe):
    layout = _face(60)
    out = _run(guided_pipe, expression="happy", layout_image=layout, layout_strength=0.0, output_type="pt").images
    with torch.no_grad():
        pixels = guided_pipe.image_processor.preprocess(layout)
        latent = guided_pipe.vae.encode(pixels).latent_dist.mean
        expected = guided_pipe.image_processor.postprocess(guided_pipe.vae.decode(latent).sample, output_type="pt")
    assert torch.allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize(
    "layout, match",
    [
        (PIL.Image.new("RGB", (24, 16)), r"layout_image\[0\]"),
        ([PIL.Image.new("RGB", (16, 16))] * 3, "must be 1"),
    ],
)
def test_bad_layout_images(guided_pipe, layout, match):
    with pytest.raises(ValueError, match=match):
        _run(guided_pipe, expression="happy", layout_image=layout, num_images_per_prompt=2, n=2)


def test_layout_and_latents_are_exclusive(guided_pipe):
    with pytest.raises(ValueError, match="not both"):
        _run(guided_pipe, expression="happy", layout_image=_face(0), latents=torch.zeros(1, 4, 8, 8))


def _guided_step_inputs(pipe):
    """`(latents, t, prompt_embeds, au_embeds, au_scale, guide)` of a guided step at step 7 of 10, two images."""
    pipe.scheduler.set_timesteps(10)
    t = pipe.scheduler.timesteps[7]
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * pipe.scheduler.init_noise_sigma
    embeds, _ = pipe.encode_prompt(["a photo of a face", "a photo of a man"], "cpu", 1, False)
    au_embeds = pipe.unet.encode_action_units(torch.full((2, 12), 2.0))
    guide = pipe.prepare_semantic_guidance(
        ["happy", "anger"], {"happiness": "happy"}, "guide_size", (8, 8), torch.device("cpu")
    )
    return latents, t, embeds, au_embeds, 1.0, guide


@pytest.mark.parametrize("scheduler_class", [DDIMScheduler, EulerDiscreteScheduler])
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_guide_scores_the_schedulers_x0_hat(guided_pipe, monkeypatch, scheduler_class, prediction_type):
    pipe = guided_pipe
    pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config, prediction_type=prediction_type)
    inputs = latents, t, embeds, au_embeds, _, _ = _guided_step_inputs(pipe)
    decoded = []
    decode = pipe.vae.decode
    monkeypatch.setattr(pipe.vae, "decode", lambda z, **kwargs: decoded.append(z.detach()) or decode(z, **kwargs))
    model_output, _ = pipe.semantic_guidance_step(*inputs, 0.05, "global")
    with torch.no_grad():  # the raw conditional UNet output, for the caller's CFG
        model_input = pipe.scheduler.scale_model_input(latents, t)
        expected_output = pipe.unet(model_input, t, embeds, au_embeds=au_embeds).sample
    x0_hat = pipe.scheduler.step(model_output, t, latents).pred_original_sample
    assert torch.allclose(model_output, expected_output, atol=1e-5)
    assert torch.allclose(decoded[0] * pipe.vae.config.scaling_factor, x0_hat, atol=1e-5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_guidance_runs_with_a_sigma_space_sampler(guided_pipe, prediction_type):
    guided_pipe.scheduler = EulerDiscreteScheduler.from_config(
        guided_pipe.scheduler.config, prediction_type=prediction_type
    )
    kwargs = {"expression": "happy", "semantic_guidance_window": (0.0, 1.0), "semantic_guidance_interval": 1}
    plain = _run(guided_pipe, **kwargs).images
    guided = _run(guided_pipe, semantic_guidance_scale=2.0, **kwargs).images
    again = _run(guided_pipe, semantic_guidance_scale=2.0, **kwargs).images
    assert not np.allclose(plain, guided) and np.allclose(guided, again, atol=1e-5)


def _blurred_face(width, height):
    """A smooth face-like RGB image: PIL and torch resampling then differ by 8-bit rounding only."""
    image = PIL.Image.new("RGB", (width, height), (40, 90, 160))
    draw = PIL.ImageDraw.Draw(image)
    draw.ellipse((0.25 * width, 0.1 * height, 0.75 * width, 0.95 * height), fill=(230, 180, 150))
    for left in (0.35, 0.55):
        draw.ellipse((left * width, 0.35 * height, (left + 0.1) * width, 0.45 * height), fill=(30, 30, 30))
    draw.arc((0.38 * width, 0.5 * height, 0.62 * width, 0.8 * height), 20, 160, fill=(150, 30, 40), width=3)
    return image.filter(PIL.ImageFilter.GaussianBlur(1.5))


GUIDE_PROCESSORS = {
    "fixed size": lambda: ViTImageProcessorPil(size={"height": 24, "width": 20}),
    "convnext crop_pct": lambda: ConvNextImageProcessorPil(size={"shortest_edge": 24}),  # 27 px short side, crop 24
    "convnext from 384": lambda: ConvNextImageProcessorPil(size={"shortest_edge": 384}),  # a square 384, no crop
    "resize and crop": lambda: ViTImageProcessorPil(
        size={"shortest_edge": 32}, do_center_crop=True, crop_size={"height": 24, "width": 20},
        resample=PIL.Image.Resampling.BICUBIC, do_normalize=False,
    ),  # fmt: skip
}


@pytest.mark.parametrize("image_size", [(60, 45), (45, 60)])
@pytest.mark.parametrize("processor_name", GUIDE_PROCESSORS)
def test_guide_reads_what_its_processor_makes(tiny_components, processor_name, image_size):
    processor = GUIDE_PROCESSORS[processor_name]()
    guide, _ = make_guide()
    pipe = SynFERPipeline(**tiny_components, guidance_classifier=guide, guidance_image_processor=processor)
    image = _blurred_face(*image_size)
    expected = torch.from_numpy(np.asarray(processor(image, return_tensors="np")["pixel_values"]))
    read = []
    guide.register_forward_pre_hook(lambda module, args, kwargs: read.append(kwargs["pixel_values"]), with_kwargs=True)
    images = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float().div(255).requires_grad_(True)
    target = pipe.prepare_semantic_guidance(["happy"], {"happiness": "happy"}, "full", (8, 8), torch.device("cpu"))
    pipe.guidance_loss(images, target).backward()
    # PIL resamples 8-bit images in two separable passes, each rounded to 0-255, torch in float: <= ~1/255 apart
    std = min(processor.image_std) if processor.do_normalize else 1.0
    assert read[0].shape == expected.shape and (read[0] - expected).abs().max() < 1.5 / 255 / std
    assert images.grad.abs().sum() > 0  # differentiable


def test_decode_size_is_the_guides_resize_target(tiny_components):
    guide, _ = make_guide()
    processor = ConvNextImageProcessorPil(size={"shortest_edge": 4}, crop_pct=0.5)  # short side to 8 px, crop 4
    pipe = SynFERPipeline(**tiny_components, guidance_classifier=guide, guidance_image_processor=processor)
    pipe.set_progress_bar_config(disable=True)
    decoded_sizes = []
    hook = pipe.vae.decoder.register_forward_pre_hook(lambda module, args: decoded_sizes.append(args[0].shape[-2:]))
    try:  # 16 x 24 px images: the guide resizes them to 8 x 12, read from 4 x 6 latents
        _run(pipe, expression="happy", semantic_guidance_scale=1.0, height=16, width=24)
    finally:
        hook.remove()
    assert decoded_sizes[:-1] and set(decoded_sizes[:-1]) == {(4, 6)} and decoded_sizes[-1] == (8, 12)


def test_unsupported_guide_sizes_are_refused(tiny_components):
    guide, _ = make_guide()
    processor = ViTImageProcessorPil(size={"shortest_edge": 16, "longest_edge": 32})
    pipe = SynFERPipeline(**tiny_components, guidance_classifier=guide, guidance_image_processor=processor)
    with pytest.raises(ValueError, match="guidance_image_processor.size"):
        _run(pipe, expression="happy", semantic_guidance_scale=1.0)


def _requires_grad(pipe):
    modules = {"unet": pipe.unet, "vae": pipe.vae, "guide": pipe.guidance_classifier}
    return {name: [p.requires_grad for p in module.parameters()] for name, module in modules.items()}


def test_guided_step_freezes_the_weights(guided_pipe, monkeypatch):
    pipe = guided_pipe
    inputs = _guided_step_inputs(pipe)
    next(pipe.unet.parameters()).requires_grad_(False)  # flags come back as they were, not all True
    before = _requires_grad(pipe)
    seen = []
    for name, module in {"unet": pipe.unet, "vae": pipe.vae.decoder, "guide": pipe.guidance_classifier}.items():
        module.register_forward_pre_hook(
            lambda module, args, name=name: seen.append((name, any(p.requires_grad for p in module.parameters())))
        )
    _, updated = pipe.semantic_guidance_step(*inputs, 0.05, "global")
    assert {name for name, _ in seen} == {"unet", "vae", "guide"} and not any(grad for _, grad in seen)
    assert _requires_grad(pipe) == before
    modules = (pipe.unet, pipe.vae, pipe.guidance_classifier)
    assert all(p.grad is None for module in modules for p in module.parameters())
    # freezing leaves d loss / d text as it was
    monkeypatch.setattr(semantic_guidance, "frozen_parameters", lambda *modules: contextlib.nullcontext())
    assert torch.allclose(pipe.semantic_guidance_step(*inputs, 0.05, "global")[1], updated, atol=1e-6)


def test_guided_step_restores_the_flags_on_error(guided_pipe, monkeypatch):
    pipe = guided_pipe
    inputs = _guided_step_inputs(pipe)
    next(pipe.vae.parameters()).requires_grad_(False)
    before = _requires_grad(pipe)

    frozen_when_it_failed = []

    def fail(images, guide):
        frozen_when_it_failed.append(not any(any(flags) for flags in _requires_grad(pipe).values()))
        raise RuntimeError("guide failed")

    monkeypatch.setattr(pipe, "guidance_loss", fail)
    with pytest.raises(RuntimeError, match="guide failed"):
        pipe.semantic_guidance_step(*inputs, 0.05, "global")
    assert frozen_when_it_failed == [True] and _requires_grad(pipe) == before


def test_layout_inversion_reads_v_prediction_outputs(tiny_components):
    """With a v-prediction UNet the inversion must turn the UNet's v into eps: inverting with the scheduler told
    `v_prediction` equals inverting with an epsilon scheduler whose UNet outputs the eps that v implies."""
    from diffusers import DDIMScheduler

    from synfer_diffusers.pipelines.synfer.prediction import predicted_noise

    v_scheduler = DDIMScheduler.from_config(tiny_components["scheduler"].config, prediction_type="v_prediction")
    v_pipe = SynFERPipeline(**{**tiny_components, "scheduler": v_scheduler})
    v_pipe.scheduler.set_timesteps(4)
    timesteps = v_pipe.scheduler.timesteps
    image = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        inverted = v_pipe.invert_layout(image, timesteps)

    unet = tiny_components["unet"]
    alphas = v_scheduler.alphas_cumprod

    class EpsUNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner, self.config, self.dtype = unet, unet.config, unet.dtype

        def forward(self, sample, t, **kwargs):
            v = unet(sample, t, **kwargs)[0]
            return (predicted_noise(v, sample, alphas[t.long()], "v_prediction"),)

    eps_pipe = SynFERPipeline(**tiny_components)
    eps_pipe.unet = EpsUNet()
    with torch.no_grad():
        expected = eps_pipe.invert_layout(image, timesteps)
    assert torch.allclose(inverted, expected, atol=1e-5)
    with torch.no_grad():
        naive = SynFERPipeline(**tiny_components).invert_layout(image, timesteps)
    assert not torch.allclose(inverted, naive, atol=1e-3)
