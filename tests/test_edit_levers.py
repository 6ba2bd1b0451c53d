"""Identity-keeping levers of `SynFERPipeline.edit` (issue 31): on by default as measured (AU guidance 3 under CFG,
mutual self-attention in every step from the decoder's first self-attention layer); off, they reproduce the edit
without them; mutual self-attention (`mutual_attention.py`, MasaCtrl) keeps the retrace on every sampler, batches like
single edits, and refuses bad settings by name. On the embedded default (a trained model: a random tiny UNet's
attention carries no face)."""

import diffusers
import pytest
import torch
from diffusers import DDIMScheduler

from synfer_diffusers import SynFERPipeline
from synfer_diffusers.generate.config import SCHEDULERS
from synfer_diffusers.generate.model import DEFAULT_MODEL_DIR
from synfer_diffusers.pipelines.synfer.mutual_attention import default_start_layer, self_attention_layers
from synfer_diffusers.pipelines.synfer.options import edit_au_guidance_scale, joint_au_guidance_scale
from synfer_diffusers.tiny import make_tiny_base_unet

PROMPT = "a photo of a person"
STEPS = 6
SAMPLERS = (*SCHEDULERS, "HeunDiscreteScheduler")
OFF = {"au_guidance_scale": joint_au_guidance_scale(2.0), "mutual_self_attention_window": None}
"""The levers off at `_edit`'s CFG 2: the AUs guided with the text, no mutual self-attention (the edit before them)."""


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


def _unet_batches(pipe, **kwargs) -> list[int]:
    """The batch size of every UNet call of `_edit(pipe, ...)` (without the FERAnno labelling pass)."""
    batches = []
    hook = pipe.unet.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
    try:
        _edit(pipe, *kwargs.pop("faces_and_aus"), label_with_feranno=False, **kwargs)
    finally:
        hook.remove()
    return batches


def test_levers_off_reproduce_the_edit_exactly(default_pipe):
    """Off (`au_guidance_scale` at the CFG scale, `mutual_self_attention_window=None`) the edit makes the UNet calls
    of the edit before the levers (N images per inversion step, the null and conditional branches per denoising step:
    no AU branch, no source pass) and a window that shares no step gives it bit for bit; the UNet's own processors
    are back after an edit that shared."""
    pipe, config, faces, aus = default_pipe
    pipe.scheduler = DDIMScheduler.from_config(config)
    processors = dict(pipe.unet.attn_processors)
    guided = {"semantic_guidance_scale": None}  # the edit's default: semantic guidance by the model's guide
    assert (
        _unet_batches(pipe, faces_and_aus=(faces, aus), semantic_guidance_scale=0.0, **OFF)
        == [2] * STEPS + [4] * STEPS
    )
    plain = _edit(pipe, faces, aus, **guided, **OFF)
    no_step = {**OFF, "mutual_self_attention_window": (0.99, 1.0)}
    assert torch.equal(_edit(pipe, faces, aus, **guided, **no_step), plain)
    shared = _edit(pipe, faces, aus, **guided, **{**OFF, "mutual_self_attention_window": (0.0, 0.8)})
    assert (shared - plain).abs().max() > 1e-3
    assert dict(pipe.unet.attn_processors) == processors
    assert torch.equal(_edit(pipe, faces, aus, **guided, **OFF), plain)


def test_the_default_edit_is_the_measured_winner(default_pipe):
    """By default an edit under CFG runs AU guidance 3 and mutual self-attention in every step from layer 3 (the
    decoder's first of the default's 7): bit for bit the explicit setting, and not the edit without the levers."""
    pipe, config, faces, aus = default_pipe
    pipe.scheduler = DDIMScheduler.from_config(config)
    assert default_start_layer(pipe.unet) == 3
    default = _edit(pipe, faces, aus)
    winner = {
        "au_guidance_scale": 3.0,
        "mutual_self_attention_window": (0.0, 1.0),
        "mutual_self_attention_start_layer": 3,
    }
    assert torch.equal(_edit(pipe, faces, aus, **winner), default)
    assert (_edit(pipe, faces, aus, **OFF) - default).abs().max() > 1e-3
    # a source pass and the null, text and conditional branches per denoising step
    assert _unet_batches(pipe, faces_and_aus=(faces, aus)) == [2] * STEPS + [2, 6] * STEPS


def test_the_default_au_guidance_applies_under_cfg_only(default_pipe):
    """`au_guidance_scale=None` is the edit's AU guidance 3 under CFG and none without it (the retrace contract: at
    CFG 1 the default edit's denoising steps run the conditional branch alone, after the source pass); explicit values
    stay as given at every CFG scale."""
    pipe, config, faces, aus = default_pipe
    pipe.scheduler = DDIMScheduler.from_config(config)
    assert _unet_batches(pipe, faces_and_aus=(faces, aus), guidance_scale=1.0) == [2] * STEPS + [2, 2] * STEPS
    assert edit_au_guidance_scale(None, 2.0) == 3.0 and edit_au_guidance_scale(None, 1.0) is None
    assert edit_au_guidance_scale(5.0, 1.0) == 5.0 and edit_au_guidance_scale(0.0, 2.0) == 0.0
    assert joint_au_guidance_scale(2.0) == 2.0 and joint_au_guidance_scale(1.0) is None


def test_the_default_start_layer_is_valid_for_every_unet():
    """The decoder's first self-attention layer where the decoder has one (the tiny test UNet's, after its encoder
    and middle block), else the last layer."""
    unet = make_tiny_base_unet()
    layers = self_attention_layers(unet)
    first = default_start_layer(unet)
    assert layers[first].startswith("up_blocks.") and not layers[first - 1].startswith("up_blocks.")
    no_decoder_attention = make_tiny_base_unet()
    no_decoder_attention.up_blocks = no_decoder_attention.up_blocks[1:]  # the decoder without its attention block
    assert default_start_layer(no_decoder_attention) == len(self_attention_layers(no_decoder_attention)) - 1 >= 0


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_mutual_self_attention_keeps_the_retrace_on_every_sampler(default_pipe, sampler):
    """Edited back to the source's own condition at CFG 1, the edit retraces the inversion; sharing the source's keys
    and values in every step and layer (from the inversion's own trajectory, at each step's noise level) keeps that
    retrace, on every sampler the CLI offers and a second-order one, whereas the edit toward another expression
    moves closer to the source than without sharing."""
    pipe, config, faces, aus = default_pipe
    pipe.scheduler = getattr(diffusers, sampler).from_config(config)
    source = pipe.encode_image_latents(faces[:1] * 2 - 1)
    back = {"target_expression": None, "target_action_units": aus[:1], "prompt": PROMPT, "guidance_scale": 1.0,
            "mutual_self_attention_start_layer": 0}  # fmt: skip
    errors = {
        window: (_edit(pipe, faces[:1], aus[:1], mutual_self_attention_window=window, **back) - source).abs().mean()
        for window in (None, (0.0, 1.0))
    }
    assert errors[(0.0, 1.0)] <= 1.5 * errors[None] + 0.01, errors
    moved = {window: (_edit(pipe, faces[:1], aus[:1], mutual_self_attention_window=window,
                            mutual_self_attention_start_layer=0) - source).abs().mean()
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
