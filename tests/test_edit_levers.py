"""Identity-keeping levers of `SynFERPipeline.edit` (issue 31): mutual self-attention (`mutual_attention.py`, MasaCtrl)
off reproduces the edit without it, keeps the retrace on every sampler, batches like single edits, and refuses bad
settings by name. On the embedded default (a trained model: a random tiny UNet's attention carries no face)."""

import diffusers
import pytest
import torch
from diffusers import DDIMScheduler

from synfer_diffusers import SynFERPipeline
from synfer_diffusers.generate.config import SCHEDULERS
from synfer_diffusers.generate.model import DEFAULT_MODEL_DIR
from synfer_diffusers.pipelines.synfer.mutual_attention import self_attention_layers

PROMPT = "a photo of a person"
STEPS = 10
SAMPLERS = (*SCHEDULERS, "HeunDiscreteScheduler")


@pytest.fixture(scope="module")
def default_pipe():
    """The embedded default and two of its faces with the AUs they were made with."""
    pipe = SynFERPipeline.from_pretrained(DEFAULT_MODEL_DIR, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompt=PROMPT, expression=["happy", "sad"], au_jitter=0.0, num_inference_steps=STEPS,
               guidance_scale=1.0, output_type="pt", generator=[torch.Generator().manual_seed(s) for s in (0, 1)])  # fmt: skip
    return pipe, pipe.scheduler.config, out.images, out.action_units


def _edit(pipe, faces, aus, **kwargs):
    defaults = {"target_expression": "surprise", "source_action_units": aus, "source_prompt": PROMPT,
                "num_inference_steps": STEPS, "guidance_scale": 2.0, "semantic_guidance_scale": 0.0,
                "output_type": "latent", "generator": [torch.Generator().manual_seed(i) for i in range(len(faces))]}  # fmt: skip
    return pipe.edit(list(faces), **{**defaults, **kwargs}).images


def test_mutual_self_attention_off_reproduces_the_edit_exactly(default_pipe):
    """`None` (the default) and a window that shares no step give today's edit bit for bit, and the UNet's own
    processors are back after an edit that shared."""
    pipe, config, faces, aus = default_pipe
    pipe.scheduler = DDIMScheduler.from_config(config)
    processors = dict(pipe.unet.attn_processors)
    guided = {"semantic_guidance_scale": None}  # the edit's default: semantic guidance by the model's guide
    plain = _edit(pipe, faces, aus, **guided)
    assert torch.equal(_edit(pipe, faces, aus, mutual_self_attention_window=None, **guided), plain)
    assert torch.equal(_edit(pipe, faces, aus, mutual_self_attention_window=(0.99, 1.0), **guided), plain)  # no step
    shared = _edit(pipe, faces, aus, mutual_self_attention_window=(0.0, 0.8), **guided)
    assert (shared - plain).abs().max() > 1e-3
    assert dict(pipe.unet.attn_processors) == processors
    assert torch.equal(_edit(pipe, faces, aus, **guided), plain)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_mutual_self_attention_keeps_the_retrace_on_every_sampler(default_pipe, sampler):
    """Edited back to the source's own condition at CFG 1, the edit retraces the inversion; sharing the source's keys
    and values in every step and layer (from the inversion's own trajectory, at each step's noise level) keeps that
    retrace, on every sampler the CLI offers and a second-order one, whereas the edit toward another expression
    moves closer to the source than without sharing."""
    pipe, config, faces, aus = default_pipe
    pipe.scheduler = getattr(diffusers, sampler).from_config(config)
    source = pipe.encode_image_latents(faces[:1] * 2 - 1)
    back = {"target_expression": None, "target_action_units": aus[:1], "prompt": PROMPT, "guidance_scale": 1.0}
    errors = {
        window: (_edit(pipe, faces[:1], aus[:1], mutual_self_attention_window=window, **back) - source).abs().mean()
        for window in (None, (0.0, 1.0))
    }
    assert errors[(0.0, 1.0)] <= 1.5 * errors[None] + 0.01, errors
    moved = {window: (_edit(pipe, faces[:1], aus[:1], mutual_self_attention_window=window) - source).abs().mean()
             for window in (None, (0.0, 1.0))}  # fmt: skip
    assert moved[(0.0, 1.0)] < moved[None], moved


def test_mutual_self_attention_batch_equals_single(default_pipe):
    pipe, config, faces, aus = default_pipe
    pipe.scheduler = DDIMScheduler.from_config(config)
    options = {"mutual_self_attention_window": (0.0, 0.6), "mutual_self_attention_start_layer": 2}
    batch = _edit(pipe, faces, aus, target_expression=["surprise", "anger"], **options)
    for i, expression in enumerate(("surprise", "anger")):
        single = _edit(pipe, faces[i : i + 1], aus[i : i + 1], target_expression=expression,
                       generator=[torch.Generator().manual_seed(i)], **options)  # fmt: skip
        torch.testing.assert_close(single[0], batch[i], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mutual_self_attention_window": (0.5, 0.2)}, "`mutual_self_attention_window` must be"),
        ({"mutual_self_attention_window": (-0.1, 1.0)}, "`mutual_self_attention_window` must be"),
        ({"mutual_self_attention_window": "early"}, "`mutual_self_attention_window` must be"),
        ({"mutual_self_attention_window": (0.0, 1.0), "mutual_self_attention_start_layer": 7},
         r"`mutual_self_attention_start_layer` must be an int in \[0, 6\]"),
        ({"mutual_self_attention_start_layer": -1}, "`mutual_self_attention_start_layer` must be"),
        ({"mutual_self_attention_start_layer": 1.5}, "`mutual_self_attention_start_layer` must be"),
    ],
)  # fmt: skip
def test_mutual_self_attention_bad_values_name_the_field(default_pipe, kwargs, match):
    pipe, config, faces, aus = default_pipe
    assert len(self_attention_layers(pipe.unet)) == 7
    with pytest.raises(ValueError, match=match):
        _edit(pipe, faces, aus, **kwargs)
    with pytest.raises(ValueError, match=match):
        pipe.check_edit_call(image=list(faces), target_expression="happy", source_action_units=aus, **kwargs)
