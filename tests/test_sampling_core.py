"""The sampling core shared by generation, layout initialisation and editing (`pipelines/synfer/sampling.py`,
`inversion.py`): every sampler `synfer generate` offers plus Heun, LMS and KDPM2 retrace an edit back to the source's
own condition, strength slicing follows the scheduler's own rules, and the loop's callbacks, interrupt and FERAnno
labels behave the same in `__call__` and `edit`."""

import re

import diffusers
import pytest
import torch
from diffusers import DDIMScheduler, HeunDiscreteScheduler, KDPM2DiscreteScheduler

from synfer_diffusers import AUSpace, FERAnnoHead, FERAnnoPipeline, SynFERPipeline
from synfer_diffusers.generate.config import SCHEDULERS
from synfer_diffusers.generate.model import DEFAULT_MODEL_DIR
from synfer_diffusers.pipelines.synfer.conditions import sample_prototype_action_units
from synfer_diffusers.tiny import make_tiny_base_unet

RETRACE_SAMPLERS = (*SCHEDULERS, "HeunDiscreteScheduler", "LMSDiscreteScheduler", "KDPM2DiscreteScheduler")
PROMPT = "a photo of a person"
STEPS = 10


@pytest.fixture(scope="module")
def default_pipe():
    """The embedded default (a model trained on FaceWorld: random tiny UNets cannot show a retrace) and one of its
    faces with the AUs it was made with."""
    pipe = SynFERPipeline.from_pretrained(DEFAULT_MODEL_DIR, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompt=PROMPT, expression="happy", au_jitter=0.0, num_inference_steps=STEPS, guidance_scale=1.0,
               output_type="pt", generator=torch.Generator().manual_seed(0))  # fmt: skip
    return pipe, pipe.scheduler.config, out.images, out.action_units[0]


def _retrace_error(pipe, face, aus, edit_strength):
    """Mean absolute latent error of an edit of `face` back to its own condition at CFG 1, by the sampling core alone
    (no mutual self-attention: test_edit_levers holds that lever to the same retrace)."""
    out = pipe.edit(face, target_action_units=aus, source_action_units=aus, source_prompt=PROMPT, prompt=PROMPT,
                    edit_strength=edit_strength, guidance_scale=1.0, num_inference_steps=STEPS, output_type="latent",
                    mutual_self_attention_window=None, generator=torch.Generator().manual_seed(0))  # fmt: skip
    source = pipe.encode_image_latents(face * 2 - 1)
    return (out.images - source).abs().mean().item()


_RETRACE_ERRORS: dict[tuple[str, str], dict[float, float]] = {}  # (sampler, prediction type) -> errors by strength


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("sampler", RETRACE_SAMPLERS)
def test_edit_back_to_the_source_condition_retraces_on_every_sampler(default_pipe, sampler, prediction_type):
    """Issue 28 items 1 (Euler-type samplers: inverted latents not scaled into sigma space) and 2 (Heun: a negative
    begin index and a cut splitting a step pair, NaN): each sampler returns the source within DDIM's own error scale
    (at most twice DDIM's error: the samplers' discretisations differ from the DDIM inversion; before the fix, Euler
    was at five times and Heun, LMS and KDPM2 at NaN or ten times). An ancestral sampler adds fresh noise at every
    step, so it cannot retrace a deterministic inversion: it is held to five times (before: six and more)."""
    pipe, config, face, aus = default_pipe
    errors = {}
    for name in ("DDIMScheduler", sampler):
        key = (name, prediction_type)
        if key not in _RETRACE_ERRORS:
            pipe.scheduler = getattr(diffusers, name).from_config(config, prediction_type=prediction_type)
            _RETRACE_ERRORS[key] = {s: _retrace_error(pipe, face, aus, s) for s in (1.0, 0.6)}
        errors[name] = _RETRACE_ERRORS[key]
    pipe.scheduler = DDIMScheduler.from_config(config)
    for strength in (1.0, 0.6):
        ddim, other = errors["DDIMScheduler"][strength], errors[sampler][strength]
        factor = 5.0 if "Ancestral" in sampler else 2.0
        assert other <= factor * ddim + 0.01, (strength, errors)


@pytest.mark.parametrize("sampler", ["EulerDiscreteScheduler", "HeunDiscreteScheduler", "KDPM2DiscreteScheduler"])
def test_layout_initialisation_keeps_the_layout_on_sigma_space_samplers(default_pipe, sampler):
    """Layout initialisation (`layout_strength` 0.6) keeps the layout image as closely with a sigma-space sampler
    as with DDIM (before: a washed-out face with Euler, NaN with Heun)."""
    pipe, config, face, aus = default_pipe
    source = pipe.encode_image_latents(face * 2 - 1)
    errors = {}
    for name in ("DDIMScheduler", sampler):
        pipe.scheduler = getattr(diffusers, name).from_config(config)
        out = pipe(prompt=PROMPT, action_units=aus, layout_image=face, layout_strength=0.6, guidance_scale=1.0,
                   num_inference_steps=STEPS, output_type="latent", generator=torch.Generator().manual_seed(0))  # fmt: skip
        errors[name] = (out.images - source).abs().mean().item()
    pipe.scheduler = DDIMScheduler.from_config(config)
    assert errors[sampler] <= 1.5 * errors["DDIMScheduler"] + 0.01, errors


@pytest.mark.parametrize("scheduler_class", [DDIMScheduler, HeunDiscreteScheduler, KDPM2DiscreteScheduler])
@pytest.mark.parametrize("strength", [1.0, 0.6, 0.25])
def test_strength_slicing_follows_the_schedulers_order(tiny_components, scheduler_class, strength):
    """`get_timesteps` cuts whole steps (`order` timesteps each) and sets the scheduler's begin index to the cut, as
    diffusers' img2img pipelines do."""
    scheduler = scheduler_class.from_config(tiny_components["scheduler"].config)
    pipe = SynFERPipeline(**{**tiny_components, "scheduler": scheduler})
    pipe.scheduler.set_timesteps(8)
    full = pipe.scheduler.timesteps
    timesteps = pipe.get_timesteps(8, strength)
    steps = round(8 * strength)
    begin = (8 - steps) * scheduler.order
    assert getattr(pipe.scheduler, "begin_index", begin) == begin >= 0  # DDIM has no begin index
    torch.testing.assert_close(timesteps, full[begin:])
    assert len(timesteps) == len(full) - begin and len(timesteps[:: scheduler.order]) == steps


def test_layout_at_au_scale_zero_is_the_base_unet(tiny_components):
    """Issue 28 item 5: `au_scale=0` is exactly the base UNet, also for the layout inversion (before: the inversion
    ran the AU branch at scale 1)."""
    base = SynFERPipeline(**{**tiny_components, "unet": make_tiny_base_unet(0)})
    pipe = SynFERPipeline(**tiny_components)
    with torch.no_grad():  # a trained null condition (freshly built, its tokens are 0 and the AU branch adds nothing)
        pipe.unet.au_null_tokens.normal_(generator=torch.Generator().manual_seed(0))
    layout = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    kwargs = {"prompt": "a face", "enrich_prompt": False, "num_inference_steps": 4, "layout_image": layout, "output_type": "latent",
              "generator": torch.Generator().manual_seed(0)}  # fmt: skip
    for strength in (1.0, 0.6):
        kwargs["generator"] = torch.Generator().manual_seed(0)
        expected = base(layout_strength=strength, **kwargs).images
        kwargs["generator"] = torch.Generator().manual_seed(0)
        got = pipe(action_units={"AU12": 4.0}, au_scale=0.0, layout_strength=strength, **kwargs).images
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def _guide_pipeline(components, id2label):
    from transformers import ResNetConfig, ResNetForImageClassification, ViTImageProcessorPil

    torch.manual_seed(1)
    config = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
                          id2label=dict(enumerate(id2label)), label2id={n: i for i, n in enumerate(id2label)})  # fmt: skip
    processor = ViTImageProcessorPil(size={"height": 16, "width": 16}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    pipe = SynFERPipeline(**components, guidance_classifier=ResNetForImageClassification(config).eval(),
                          guidance_image_processor=processor)  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


GUIDE_LABELS = ["Neutral", "Happiness", "Sadness", "Surprise", "Fear", "Disgust", "Anger"]
GUIDE_MAPPING = dict(zip(GUIDE_LABELS, ["neutral", "happy", "sad", "surprise", "fear", "disgust", "anger"]))


def test_edit_takes_a_guidance_label_mapping(tiny_components):
    """Issue 28 item 3: a guide whose labels need mapping is refused by `check_edit_call` without
    `guidance_label_mapping` (before: accepted, then the edit crashed after 4 UNet calls) and edits with one."""
    pipe = _guide_pipeline(tiny_components, GUIDE_LABELS)
    face = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    kwargs = {"image": face, "target_expression": "happy", "source_action_units": {"AU12": 1.0},
              "num_inference_steps": 4, "output_type": "latent"}  # fmt: skip
    with pytest.raises(ValueError, match="guidance_label_mapping"):
        pipe.check_edit_call(**kwargs)
    pipe.check_edit_call(guidance_label_mapping=GUIDE_MAPPING, **kwargs)
    guided = pipe.edit(guidance_label_mapping=GUIDE_MAPPING, **kwargs).images
    plain = pipe.edit(guidance_label_mapping=GUIDE_MAPPING, semantic_guidance_scale=0.0, **kwargs).images
    assert torch.isfinite(guided).all() and (guided - plain).abs().max() > 1e-4


def _head_pipeline(components):
    torch.manual_seed(0)
    head = FERAnnoHead.from_unet(components["unet"], hidden_dim=32, num_heads=4, tokens_per_side=4)
    pipe = SynFERPipeline(**components, feranno_head=head)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _interrupt_after(step):
    def callback(pipe, i, t, callback_kwargs):
        pipe._interrupt = i >= step
        return callback_kwargs

    return callback


def test_interrupted_call_labels_the_returned_latents(tiny_components):
    """Issue 28 item 4: after an interrupt the FERAnno labels are those of the returned latents (before: of the
    features of the last step run, a stale noisy one)."""
    pipe = _head_pipeline(tiny_components)
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    out = pipe(prompt="a face", action_units={"AU12": 3.0}, num_inference_steps=4, latents=latents,
               output_type="latent", callback_on_step_end=_interrupt_after(0),
               generator=torch.Generator().manual_seed(0))  # fmt: skip
    annotator = FERAnnoPipeline(**pipe.base_components, head=pipe.feranno_head)
    annotator.set_progress_bar_config(disable=True)
    expected = annotator.label_latents(out.images, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.feranno_probabilities, expected, atol=1e-6, rtol=0)


def test_fused_projections_with_a_feranno_head_fail_before_the_loop(tiny_components):
    """Issue 28 item 7: FERAnno's features need unfused cross-attention; the call says so before any step (before:
    after the whole denoising loop)."""
    pipe = _head_pipeline(tiny_components)
    pipe.fuse_qkv_projections()
    steps = []
    kwargs = {"prompt": "a face", "num_inference_steps": 3, "output_type": "latent",
              "callback_on_step_end": lambda p, i, t, k: steps.append(i) or k}  # fmt: skip
    with pytest.raises(ValueError, match="label_with_feranno"):
        pipe.check_call(**kwargs)
    with pytest.raises(ValueError, match="label_with_feranno"):
        pipe(**kwargs)
    assert steps == []
    pipe(label_with_feranno=False, **kwargs)  # unlabelled, fused projections are fine


def _edit_kwargs(**kwargs):
    face = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    return {"image": face, "target_expression": "surprise", "source_action_units": {"AU12": 2.0},
            "num_inference_steps": 4, "output_type": "latent", **kwargs}  # fmt: skip


def test_edit_strength_error_suggests_a_strength_that_runs(tiny_components):
    """Issue 28 item 7: the suggested `edit_strength` runs a step (before: "use at least 0.125" for 0.125)."""
    pipe = SynFERPipeline(**tiny_components)
    with pytest.raises(ValueError, match="runs no step") as error:
        pipe.check_edit_call(**_edit_kwargs(edit_strength=0.125))
    suggested = float(re.search(r"use (?:at least )?([0-9.]+)", str(error.value)).group(1))
    pipe.check_edit_call(**_edit_kwargs(edit_strength=suggested))


def test_edit_broadcasts_one_image_to_several_targets(tiny_components):
    """Issue 28 item 7: `image=[face]` broadcasts to the targets, as `layout_image=[img]` does in `__call__`."""
    pipe = SynFERPipeline(**tiny_components)
    pipe.set_progress_bar_config(disable=True)
    kwargs = _edit_kwargs(target_expression=["surprise", "anger"])
    face = kwargs.pop("image")
    one = pipe.edit(image=[face], generator=torch.Generator().manual_seed(0), **kwargs).images
    two = pipe.edit(image=[face, face], generator=torch.Generator().manual_seed(0), **kwargs).images
    torch.testing.assert_close(one, two)


def test_edit_callbacks_receive_the_tensors_they_name_and_interrupt(tiny_components):
    """`edit` runs the same loop as `__call__`: step callbacks get the named tensors (`(N, ...)` each), what they
    return replaces them, and `interrupt` ends the loop."""
    pipe = SynFERPipeline(**tiny_components)
    pipe.set_progress_bar_config(disable=True)
    seen = []

    def record(p, i, t, callback_kwargs):
        seen.append((i, {k: tuple(v.shape) for k, v in callback_kwargs.items()}))
        return callback_kwargs

    names = ["latents", "prompt_embeds", "negative_prompt_embeds", "au_embeds"]
    pipe.edit(**_edit_kwargs(callback_on_step_end=record, callback_on_step_end_tensor_inputs=names))
    assert [i for i, _ in seen] == [0, 1, 2, 3]
    shapes = seen[0][1]
    assert shapes["latents"] == (1, 4, 8, 8) and shapes["prompt_embeds"][0] == 1
    assert shapes["negative_prompt_embeds"] == shapes["prompt_embeds"] and shapes["au_embeds"][0] == 1
    zeroed = pipe.edit(
        **_edit_kwargs(callback_on_step_end=lambda p, i, t, k: {"latents": torch.zeros_like(k["latents"])})
    )
    assert torch.equal(zeroed.images, torch.zeros_like(zeroed.images))
    seen.clear()
    pipe.edit(
        **_edit_kwargs(
            callback_on_step_end=lambda p, i, t, k: (seen.append((i, {})), _interrupt_after(1)(p, i, t, k))[1]
        )
    )
    assert [i for i, _ in seen] == [0, 1]
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs"):
        pipe.check_edit_call(**_edit_kwargs(callback_on_step_end_tensor_inputs=["noise"]))


@pytest.mark.parametrize("intensity", [0.2, 0.5, 1.0, 3.0, 4.5])
def test_prototype_jitter_keeps_the_requested_intensity(intensity):
    """Issue 28 item 6: the jitter is symmetric around the requested intensity, narrowed near the range's edges, so
    its mean is the request (before: the clamp to [0.5, max] moved 0.2 to 0.579 and 0.5 to 0.695)."""
    space = AUSpace.disfa12()
    generator = torch.Generator().manual_seed(0)
    rows = torch.stack([sample_prototype_action_units(space, "happy", generator, intensity, 0.5) for _ in range(4000)])
    active = rows[:, space.names.index("AU12")]
    assert active.min() > 0 and active.max() <= space.max_value
    assert abs(active.mean().item() - intensity) < 0.01, active.mean()
    assert active.std() > 0.02  # still jittered
    assert (rows[:, space.names.index("AU4")] == 0).all()


def test_default_path_jitter_is_unchanged_away_from_the_edges():
    """At the default intensity (3.0 of 0-5) the jitter is the plain Gaussian it always was (same draws)."""
    space = AUSpace.disfa12()
    row = sample_prototype_action_units(space, "happy", torch.Generator().manual_seed(0), None, 0.5)
    noise = torch.randn(space.num_aus, generator=torch.Generator().manual_seed(0)) * 0.5
    active = row > 0
    torch.testing.assert_close(row[active], (3.0 + noise)[active].clamp(0.5, 5))
