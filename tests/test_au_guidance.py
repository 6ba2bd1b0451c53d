"""AU guidance (`au_guidance_scale`): a third UNet branch (prompt + null AU tokens) and a separate scale for the AU
condition, `eps = null + w (text - null) + w_au (cond - text)`; the default (None) is today's two-branch CFG; batch =
single; every sampler of `synfer generate`; semantic guidance and in-loop FERAnno labels kept right; bad values
refused naming the field."""

import diffusers
import numpy as np
import pytest
import torch

from synfer_diffusers import FERAnnoHead, SynFERPipeline
from synfer_diffusers.generate import SCHEDULERS
from synfer_diffusers.pipelines.synfer.prediction import combine_guidance
from synfer_diffusers.tiny import make_tiny_components

HAPPY = {"AU6": 2.5, "AU12": 4.0}


@pytest.fixture(scope="module")
def pipe():
    components = make_tiny_components(seed=0)
    with torch.no_grad():  # a trained model's null AU tokens are not zero: make them count here too
        components["unet"].au_null_tokens.normal_(generator=torch.Generator().manual_seed(0))
    pipe = SynFERPipeline(**components, feranno_head=FERAnnoHead.from_unet(components["unet"]))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe, seeds=(0,), **kwargs):
    kwargs = {"prompt": "a face", "action_units": [HAPPY] * len(seeds), "num_inference_steps": 3, "guidance_scale": 3.0,
              "output_type": "np", **kwargs}  # fmt: skip
    return pipe(generator=[torch.Generator().manual_seed(s) for s in seeds], **kwargs)


def test_combination_is_text_cfg_plus_an_au_term():
    null, text, cond = (torch.full((1, 1), v) for v in (1.0, 2.0, 5.0))
    assert combine_guidance({"null": null, "cond": cond}, 3.0).item() == 1 + 3 * (5 - 1)
    assert combine_guidance({"null": null, "text": text, "cond": cond}, 3.0, 2.0).item() == 1 + 3 * (2 - 1) + 2 * (5 - 2)
    assert combine_guidance({"text": text, "cond": cond}, 1.0, 2.0).item() == 2 + 2 * (5 - 2)  # CFG off
    assert combine_guidance({"cond": cond}, 1.0).item() == 5


def test_au_guidance_at_the_text_scale_equals_the_default_and_other_scales_move_the_aus(pipe):
    default = run(pipe).images
    same = run(pipe, au_guidance_scale=3.0).images
    assert np.array_equal(same, default)  # the same guidance, run as the default's two branches
    more, none = run(pipe, au_guidance_scale=8.0).images, run(pipe, au_guidance_scale=0.0).images
    assert np.abs(more - default).max() > 1e-3 and np.abs(none - default).max() > 1e-3
    # w_au = 0 drops the AU tokens' contribution: with the same prompt, the requested AUs no longer matter
    plain = {"au_guidance_scale": 0.0, "enrich_prompt": False}
    happy, sad = run(pipe, **plain).images, run(pipe, action_units=[{"AU4": 4.0, "AU15": 3.0}], **plain).images
    assert np.abs(happy - sad).max() < 1e-5
    assert np.abs(run(pipe, enrich_prompt=False).images - run(pipe, action_units=[{"AU4": 4.0, "AU15": 3.0}],
                                                                enrich_prompt=False).images).max() > 1e-3  # fmt: skip


def test_batch_equals_single_with_au_guidance(pipe):
    batch = run(pipe, seeds=(3, 4), action_units=[HAPPY, {"AU4": 4.0}], au_guidance_scale=6.0).images
    for i, (seed, aus) in enumerate(((3, HAPPY), (4, {"AU4": 4.0}))):
        single = run(pipe, seeds=(seed,), action_units=[aus], au_guidance_scale=6.0).images[0]
        assert np.abs(single - batch[i]).max() < 1e-4


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_every_sampler_of_the_cli_takes_au_guidance(pipe, scheduler):
    original = pipe.scheduler
    pipe.scheduler = getattr(diffusers, scheduler).from_config(original.config)
    try:
        default, same = run(pipe).images, run(pipe, au_guidance_scale=3.0).images
    finally:
        pipe.scheduler = original
    assert np.isfinite(same).all() and np.abs(same - default).max() < 1e-4


def test_semantic_guidance_and_feranno_labels_with_au_guidance(pipe):
    from transformers import ResNetConfig, ResNetForImageClassification
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    from synfer_diffusers import EXPRESSIONS

    torch.manual_seed(0)
    guide = ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                                      layer_type="basic", id2label=EXPRESSIONS.id2label,
                                                      label2id=EXPRESSIONS.label2id)).eval()  # fmt: skip
    guided = SynFERPipeline(**pipe.components | {"guidance_classifier": guide,
                                                 "guidance_image_processor": ViTImageProcessorPil(size={"height": 16, "width": 16})})  # fmt: skip
    guided.set_progress_bar_config(disable=True)
    kwargs = {"expression": ["happy"], "semantic_guidance_scale": 2.0, "semantic_guidance_window": (0.0, 1.0),
              "semantic_guidance_interval": 1}  # fmt: skip
    default, same = run(guided, **kwargs), run(guided, au_guidance_scale=3.0, **kwargs)
    assert np.abs(same.images - default.images).max() < 1e-4
    # the last DDIM step is FERAnno's own pass (its "null" branch comes first in the batch of 2 N or 3 N)
    assert torch.allclose(same.feranno_probabilities, default.feranno_probabilities, atol=1e-4)
    plain = run(pipe, au_guidance_scale=6.0)
    separate = run(pipe, au_guidance_scale=6.0, negative_prompt="not the head's prompt")  # labelled by a separate pass
    assert plain.feranno_probabilities.shape == separate.feranno_probabilities.shape == (1, 7)


@pytest.mark.parametrize("value", [-1.0, float("nan"), True, "3"])
def test_bad_au_guidance_scales_are_refused_naming_the_field(pipe, value):
    with pytest.raises(ValueError, match="`au_guidance_scale`"):
        run(pipe, au_guidance_scale=value)
    with pytest.raises(ValueError, match="`au_guidance_scale`"):
        pipe.check_call(prompt="a face", au_guidance_scale=value)


def test_au_guidance_needs_an_au_unet():
    from synfer_diffusers.tiny import make_tiny_base_unet

    parts = make_tiny_components(seed=0)
    plain = SynFERPipeline(**{**parts, "unet": make_tiny_base_unet()})
    with pytest.raises(ValueError, match="`au_guidance_scale` needs a UNet with an AU adapter"):
        plain.check_call(prompt="a face", au_guidance_scale=2.0)
