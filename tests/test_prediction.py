import pytest
import torch
from diffusers import DDIMScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler

from synfer_diffusers.pipelines.synfer.prediction import (
    PREDICTION_TYPES,
    predicted_noise,
    predicted_original_sample,
    variance_preserving_sample,
)

# Stable Diffusion's (DDIM reads `clip_sample`, the others ignore it)
SCHEDULER_CONFIG = {
    "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "steps_offset": 1,
    "clip_sample": False,
}  # fmt: skip


def _state(scheduler_class, prediction_type, step=3):
    scheduler = scheduler_class.from_config({**SCHEDULER_CONFIG, "prediction_type": prediction_type})
    scheduler.set_timesteps(10)
    generator = torch.Generator().manual_seed(0)
    sample, model_output = torch.randn(2, 2, 4, 4, 4, generator=generator)  # (N, C, h, w) each
    sample = sample * scheduler.init_noise_sigma
    return scheduler, scheduler.timesteps[step], sample, model_output


@pytest.mark.parametrize(
    "scheduler_class, prediction_type",
    [
        (scheduler_class, prediction_type)
        for scheduler_class in (DDIMScheduler, EulerDiscreteScheduler, EulerAncestralDiscreteScheduler)
        for prediction_type in PREDICTION_TYPES
        if (scheduler_class, prediction_type) != (EulerAncestralDiscreteScheduler, "sample")  # not implemented there
    ],
)
def test_predicted_original_sample_is_the_schedulers(scheduler_class, prediction_type):
    scheduler, t, sample, model_output = _state(scheduler_class, prediction_type)
    x_t, alpha_prod_t = variance_preserving_sample(scheduler, sample, t)
    x0_hat = predicted_original_sample(model_output, x_t, alpha_prod_t, prediction_type)
    expected = scheduler.step(model_output, t, sample, generator=torch.Generator().manual_seed(0)).pred_original_sample
    assert torch.allclose(x0_hat, expected, atol=1e-5)


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_predicted_noise_is_ddims(prediction_type):
    scheduler, t, sample, model_output = _state(DDIMScheduler, prediction_type)
    alpha_prod_t = scheduler.alphas_cumprod[t]
    alpha_prod_prev = scheduler.alphas_cumprod[t - scheduler.config.num_train_timesteps // 10]
    x0_hat = predicted_original_sample(model_output, sample, alpha_prod_t, prediction_type)
    eps = predicted_noise(model_output, sample, alpha_prod_t, prediction_type)
    # DDIM at eta 0 moves x0_hat and pred_epsilon to the previous noise level
    expected = scheduler.step(model_output, t, sample).prev_sample
    assert torch.allclose(alpha_prod_prev**0.5 * x0_hat + (1 - alpha_prod_prev) ** 0.5 * eps, expected, atol=1e-5)
    # and both decompose the sample
    assert torch.allclose(alpha_prod_t**0.5 * x0_hat + (1 - alpha_prod_t) ** 0.5 * eps, sample, atol=1e-5)


def test_vp_sample_of_sigma_space_samplers_is_the_unet_input():
    scheduler, t, sample, _ = _state(EulerDiscreteScheduler, "epsilon")
    x_t, alpha_prod_t = variance_preserving_sample(scheduler, sample, t)
    sigma = scheduler.sigmas[scheduler.step_index]
    assert torch.allclose(x_t, sample / (sigma**2 + 1) ** 0.5) and torch.allclose(alpha_prod_t, 1 / (sigma**2 + 1))
    scheduler, t, sample, _ = _state(DDIMScheduler, "epsilon")
    x_t, alpha_prod_t = variance_preserving_sample(scheduler, sample, t)
    assert x_t is sample and alpha_prod_t == scheduler.alphas_cumprod[t]


@pytest.mark.parametrize("convert", [predicted_original_sample, predicted_noise])
def test_unknown_prediction_type_is_refused(convert):
    with pytest.raises(ValueError, match="`prediction_type` must be one of"):
        convert(torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 2), torch.tensor(0.5), "flow")
