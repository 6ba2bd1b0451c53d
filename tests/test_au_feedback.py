"""AU feedback (`au_feedback_passes`, `au_feedback_gain`): each pass renders the images, reads their AUs with the
pipeline's `au_estimator` and corrects the condition by `gain * (requested - read)`; the final pass renders from the
same noise. A zero gain reproduces the call without feedback on every sampler of `synfer generate` (the generator
states and the sampler's state are restored between passes); one pass equals a call with the corrected condition;
batch = single; bad values refused naming the field."""

import diffusers
import numpy as np
import pytest
import torch

from synfer_diffusers import SynFERPipeline
from synfer_diffusers.annotators import AUEstimator
from synfer_diffusers.facs import AUSpace
from synfer_diffusers.generate import SCHEDULERS
from synfer_diffusers.pipelines.synfer.au_feedback import corrected_condition
from synfer_diffusers.tiny import make_tiny_base_unet, make_tiny_components
from test_au_guidance import HAPPY, run
from test_editing import make_au_regressor
from test_semantic_guidance import make_guide

SAD = {"AU1": 3.0, "AU4": 2.0, "AU15": 3.5}


@pytest.fixture(scope="module")
def pipe():
    regressor, processor = make_au_regressor(seed=1)
    with torch.no_grad():  # outputs around 1-3, so that the correction is neither zero nor clipped everywhere
        regressor.classifier[-1].bias.fill_(2.0)
    pipe = SynFERPipeline(**make_tiny_components(seed=0), au_estimator=regressor, au_estimator_image_processor=processor)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_correction_moves_the_condition_by_the_gain_times_the_error_within_the_space():
    condition = torch.tensor([[3.0, 0.0, 4.5], [3.0, 0.0, 4.5]])
    requested = torch.tensor([[3.0, 0.0, 4.5], [3.0, 0.0, 4.5]])
    estimated = torch.tensor([[2.0, 0.7, 3.0], [2.0, 0.7, 3.0]])
    out = corrected_condition(condition, requested, estimated, torch.tensor([True, False]), 0.5, 5.0)
    torch.testing.assert_close(out, torch.tensor([[3.5, 0.0, 5.0], [3.0, 0.0, 4.5]]))


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_zero_gain_reproduces_the_call_without_feedback_on_every_sampler(pipe, scheduler):
    original = pipe.scheduler
    pipe.scheduler = getattr(diffusers, scheduler).from_config(original.config)
    try:
        plain = run(pipe, seeds=(3, 4), eta=1.0).images  # eta: DDIM's step noise too
        again = run(pipe, seeds=(3, 4), eta=1.0, au_feedback_passes=2, au_feedback_gain=0.0).images
    finally:
        pipe.scheduler = original
    assert np.array_equal(plain, again)


def test_zero_gain_reproduces_layout_initialisation_and_semantic_guidance(pipe):
    guide, processor = make_guide()
    guided = SynFERPipeline(**pipe.components | {"guidance_classifier": guide, "guidance_image_processor": processor})
    guided.scheduler = diffusers.DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    guided.set_progress_bar_config(disable=True)
    face = torch.from_numpy(np.random.default_rng(0).random((1, 3, 16, 16), dtype=np.float32))
    kwargs = {"expression": ["happy"], "semantic_guidance_scale": 2.0, "semantic_guidance_window": (0.0, 1.0),
              "semantic_guidance_interval": 1, "guidance_label_mapping": {"happiness": "happy"}, "layout_image": face, "layout_strength": 0.7,
              "num_inference_steps": 4}  # fmt: skip
    plain = run(guided, **kwargs)
    again = run(guided, au_feedback_passes=1, au_feedback_gain=0.0, **kwargs)
    assert np.array_equal(plain.images, again.images)
    torch.testing.assert_close(plain.feranno_probabilities, again.feranno_probabilities)


def test_one_pass_renders_the_condition_corrected_by_the_estimators_reading(pipe):
    kwargs = {"seeds": (5, 6), "action_units": [HAPPY, SAD], "enrich_prompt": False}
    first = run(pipe, **kwargs | {"output_type": "pil"})
    requested = torch.tensor([[d[n] for n in d] for d in first.action_units])  # (2, 12)
    estimated = AUEstimator(pipe.au_estimator, pipe.au_estimator_image_processor, pipe.au_space)(first.images)
    expected = (requested + 0.8 * (requested - estimated)).clamp(0, 5)
    assert (expected - requested).abs().max() > 0.5  # the tiny estimator's error is corrected, not nothing
    fed_back = run(pipe, au_feedback_passes=1, au_feedback_gain=0.8, **kwargs)
    explicit = run(pipe, **kwargs | {"action_units": expected})
    np.testing.assert_allclose(fed_back.images, explicit.images, atol=1e-6)
    assert fed_back.action_units == first.action_units  # the labels stay the requested AUs
    assert np.abs(fed_back.images - run(pipe, **kwargs).images).max() > 1e-3


def test_batch_equals_single_with_au_feedback(pipe):
    batch = run(pipe, seeds=(3, 4), action_units=[HAPPY, SAD], au_feedback_passes=2).images
    for i, (seed, aus) in enumerate(((3, HAPPY), (4, SAD))):
        single = run(pipe, seeds=(seed,), action_units=[aus], au_feedback_passes=2).images[0]
        assert np.abs(single - batch[i]).max() < 1e-4


def test_images_without_an_au_condition_are_rendered_as_without_feedback(pipe):
    text_only = {"action_units": None, "seeds": (2,)}
    plain = run(pipe, **text_only).images
    assert np.array_equal(run(pipe, au_feedback_passes=1, **text_only).images, plain)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"au_feedback_passes": -1}, "`au_feedback_passes`"),
        ({"au_feedback_passes": 1.5}, "`au_feedback_passes`"),
        ({"au_feedback_passes": True}, "`au_feedback_passes`"),
        ({"au_feedback_passes": 1, "au_feedback_gain": -0.5}, "`au_feedback_gain`"),
        ({"au_feedback_passes": 1, "au_feedback_gain": float("nan")}, "`au_feedback_gain`"),
    ],
)
def test_bad_au_feedback_values_are_refused_naming_the_field(pipe, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pipe.check_call(prompt="a face", **kwargs)
    with pytest.raises(ValueError, match=match):
        run(pipe, **kwargs)


def test_au_feedback_needs_an_estimator_and_an_intensity_au_unet():
    parts = make_tiny_components(seed=0)
    with pytest.raises(ValueError, match="`au_feedback_passes` > 0 needs the pipeline's AU estimator .* `au_estimator`"):
        SynFERPipeline(**parts).check_call(prompt="a face", au_feedback_passes=1)
    with pytest.raises(ValueError, match="`au_feedback_passes` needs a UNet with an AU adapter on an intensity"):
        SynFERPipeline(**{**parts, "unet": make_tiny_base_unet()}).check_call(prompt="a face", au_feedback_passes=1)
    occurrence = make_tiny_components(seed=0, au_space=AUSpace(("AU6", "AU12"), "occurrence"))
    with pytest.raises(ValueError, match="intensity AU space"):
        SynFERPipeline(**occurrence).check_call(prompt="a face", au_feedback_passes=1)
