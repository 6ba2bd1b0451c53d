"""What a diffusion model's output says about the clean sample and the noise, for each `prediction_type` of diffusers'
schedulers ("epsilon", "v_prediction", "sample"), with the formulas of `DDIMScheduler.step`.

They hold in the variance-preserving form `x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps` (`abar_t`: the scheduler's
`alphas_cumprod[t]`); [`variance_preserving_sample`] brings a sampler's state to that form, also for samplers that
work in sigma space (Euler, Heun, LMS: `x = x_0 + sigma eps`).
"""

from __future__ import annotations

import torch
from diffusers import SchedulerMixin

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def _unknown_prediction_type(prediction_type: str) -> ValueError:
    return ValueError(f"`prediction_type` must be one of {PREDICTION_TYPES}, got {prediction_type!r}.")


def predicted_original_sample(
    model_output: torch.Tensor,  # (N, C, h, w)
    sample: torch.Tensor,  # (N, C, h, w): x_t
    alpha_prod_t: torch.Tensor | float,  # () or broadcastable to (N, C, h, w)
    prediction_type: str,
) -> torch.Tensor:  # (N, C, h, w)
    """
    The clean sample `x_0` that a model output at `x_t` predicts (`pred_original_sample` of `DDIMScheduler.step`).

    Args:
        model_output (`torch.Tensor`): the model's prediction of the noise, of `v` or of `x_0`.
        sample (`torch.Tensor`): the noisy sample `x_t` in variance-preserving form.
        alpha_prod_t (`torch.Tensor` or `float`): `abar_t`, the scheduler's `alphas_cumprod[t]`.
        prediction_type (`str`): "epsilon", "v_prediction" or "sample", as in the scheduler's config.

    Returns:
        `torch.Tensor`: `x_0`, the shape of `sample`.

    Raises:
        `ValueError`: an unknown `prediction_type`.

    Example:

    ```py
    >>> import torch
    >>> from synfer_diffusers.pipelines.synfer.prediction import predicted_original_sample

    >>> x0, eps, abar = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8), torch.tensor(0.3)
    >>> v = abar**0.5 * eps - (1 - abar) ** 0.5 * x0
    >>> x_t = abar**0.5 * x0 + (1 - abar) ** 0.5 * eps
    >>> torch.allclose(predicted_original_sample(v, x_t, abar, "v_prediction"), x0, atol=1e-5)
    True
    ```
    """
    alpha, sigma = alpha_prod_t**0.5, (1 - alpha_prod_t) ** 0.5
    if prediction_type == "epsilon":
        return (sample - sigma * model_output) / alpha
    if prediction_type == "v_prediction":
        return alpha * sample - sigma * model_output
    if prediction_type == "sample":
        return model_output
    raise _unknown_prediction_type(prediction_type)


def predicted_noise(
    model_output: torch.Tensor,  # (N, C, h, w)
    sample: torch.Tensor,  # (N, C, h, w): x_t
    alpha_prod_t: torch.Tensor | float,  # () or broadcastable to (N, C, h, w)
    prediction_type: str,
) -> torch.Tensor:  # (N, C, h, w)
    """
    The noise `eps` that a model output at `x_t` predicts (`pred_epsilon` of `DDIMScheduler.step`). With
    `prediction_type="sample"` it is undefined at `abar_t = 1` (no noise to predict).

    Args:
        model_output (`torch.Tensor`): the model's prediction of the noise, of `v` or of `x_0`.
        sample (`torch.Tensor`): the noisy sample `x_t` in variance-preserving form.
        alpha_prod_t (`torch.Tensor` or `float`): `abar_t`, the scheduler's `alphas_cumprod[t]`.
        prediction_type (`str`): "epsilon", "v_prediction" or "sample", as in the scheduler's config.

    Returns:
        `torch.Tensor`: `eps`, the shape of `sample`.

    Raises:
        `ValueError`: an unknown `prediction_type`.

    Example:

    ```py
    >>> import torch
    >>> from synfer_diffusers.pipelines.synfer.prediction import predicted_noise

    >>> x0, eps, abar = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8), torch.tensor(0.3)
    >>> x_t = abar**0.5 * x0 + (1 - abar) ** 0.5 * eps
    >>> torch.allclose(predicted_noise(x0, x_t, abar, "sample"), eps, atol=1e-5)
    True
    ```
    """
    alpha, sigma = alpha_prod_t**0.5, (1 - alpha_prod_t) ** 0.5
    if prediction_type == "epsilon":
        return model_output
    if prediction_type == "v_prediction":
        return alpha * model_output + sigma * sample
    if prediction_type == "sample":
        return (sample - alpha * model_output) / sigma
    raise _unknown_prediction_type(prediction_type)


def variance_preserving_sample(
    scheduler: SchedulerMixin,
    sample: torch.Tensor,  # (N, C, h, w): the sampler's state at `timestep`
    timestep: torch.Tensor | int,
) -> tuple[torch.Tensor, torch.Tensor]:  # (N, C, h, w), ()
    """
    The sampler's state at `timestep` in variance-preserving form `x_t`, and its `abar_t`, for the functions above.

    Samplers whose initial noise has a standard deviation above 1 (`init_noise_sigma > 1`: Euler, Euler ancestral,
    Heun, LMS) work in sigma space, `x = x_0 + sigma eps`: `x_t` is their `scale_model_input(x) = x / sqrt(sigma^2 +
    1)` (the UNet's input) and `abar_t = 1 / (sigma^2 + 1)`, with `sigma` at their current `step_index`. The others
    (DDIM, DPM-Solver, UniPC) work on `x_t` itself, at `abar_t = alphas_cumprod[timestep]`.

    Args:
        scheduler ([`~diffusers.SchedulerMixin`]): the sampler, with its timesteps set.
        sample (`torch.Tensor`): its state at `timestep`.
        timestep (`torch.Tensor` or `int`): the current step's timestep.

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: `x_t` (the shape of `sample`) and `abar_t` (a 0-dim tensor).

    Example:

    ```py
    >>> import torch
    >>> from diffusers import EulerDiscreteScheduler
    >>> from synfer_diffusers.pipelines.synfer.prediction import predicted_original_sample, variance_preserving_sample

    >>> scheduler = EulerDiscreteScheduler()
    >>> scheduler.set_timesteps(10)
    >>> t, latents, model_output = scheduler.timesteps[3], torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    >>> x0_hat = predicted_original_sample(model_output, *variance_preserving_sample(scheduler, latents, t), "epsilon")
    >>> torch.allclose(x0_hat, scheduler.step(model_output, t, latents).pred_original_sample, atol=1e-4)
    True
    ```
    """
    if uses_sigma_space(scheduler):
        sample = scheduler.scale_model_input(sample, timestep)  # sets `step_index` on the step's first call
        sigma = scheduler.sigmas[scheduler.step_index].to(sample.device)
        return sample, 1 / (sigma**2 + 1)
    timestep = torch.as_tensor(timestep, device=sample.device).long()
    return sample, scheduler.alphas_cumprod.to(sample.device)[timestep]


def uses_sigma_space(scheduler: SchedulerMixin) -> bool:
    """Whether the sampler's state is `x_0 + sigma eps` (Euler, Euler ancestral, Heun, LMS, KDPM2: initial noise of
    standard deviation `init_noise_sigma > 1`) rather than the variance-preserving `x_t`."""
    return scheduler.init_noise_sigma > 1


def inversion_levels(
    scheduler: SchedulerMixin,
    timesteps: torch.Tensor,  # the schedule's last `len(timesteps)` timesteps
) -> tuple[torch.Tensor, torch.Tensor]:  # (S,), (S,)
    """
    The noise levels that the denoising steps of `timesteps` start from, as `(timesteps, abar)`: one per step of
    `scheduler.order` timesteps (a second-order step's pair starts at its first timestep), descending. `abar` is
    `alphas_cumprod[t]`, or `1 / (sigma^2 + 1)` with the step's own sigma for a sampler in sigma space (exact also
    where its timesteps are not integers).

    Args:
        scheduler ([`~diffusers.SchedulerMixin`]): the sampler, with its timesteps set.
        timesteps (`torch.Tensor`): the end of `scheduler.timesteps` that is denoised (cut at a step's start).

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: the steps' first timesteps and their `abar`, float32.
    """
    order = scheduler.order
    starts = timesteps[::order]
    if uses_sigma_space(scheduler):
        first = len(scheduler.timesteps) - len(timesteps)  # the cut, an index into the whole schedule
        sigmas = scheduler.sigmas[first : first + len(timesteps) : order].to(timesteps.device)
        return starts, 1 / (sigmas.float() ** 2 + 1)
    return starts, scheduler.alphas_cumprod.to(timesteps.device)[starts.long()]


def scheduler_sample(
    scheduler: SchedulerMixin,
    sample: torch.Tensor,
    alpha_prod_t: torch.Tensor,  # (N, C, h, w) x_t, ()
) -> torch.Tensor:  # (N, C, h, w)
    """A variance-preserving `x_t` at `abar_t` as the sampler's state (the inverse of
    [`variance_preserving_sample`]): `x_t / sqrt(abar_t) = x_0 + sigma eps` in sigma space, else `x_t` itself."""
    return sample / alpha_prod_t.sqrt() if uses_sigma_space(scheduler) else sample


def combine_guidance(
    branches: dict[str, torch.Tensor], guidance_scale: float, au_guidance_scale: float | None = None
) -> torch.Tensor:  # (N, C, h, w)
    """Classifier-free guidance over the UNet's branches (each `(N, C, h, w)`): `"null"` (negative prompt + null AU
    tokens; absent without CFG), `"cond"` (prompt + AU tokens) and, with AU guidance, `"text"` (prompt + null AU
    tokens). Without `"text"`: `null + w (cond - null)` (text and AUs guided together), or `cond` alone. With it:
    `null + w (text - null) + w_au (cond - text)`, a separate scale for the AU condition (`text + w_au (cond - text)`
    without CFG)."""
    cond, null, text = branches["cond"], branches.get("null"), branches.get("text")
    if text is None:
        return cond if null is None else null + guidance_scale * (cond - null)
    base = text if null is None else null + guidance_scale * (text - null)
    return base + au_guidance_scale * (cond - text)
