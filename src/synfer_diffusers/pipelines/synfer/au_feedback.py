"""AU feedback (beyond the paper): closed-loop AU conditioning, so that each image shows the intensities it was asked for.

The same AU condition renders different intensities on different seeds (on FaceWorld the spread of the AU regressor's
estimates about the requested intensity is 1.7x its spread on real faces, 2x on the upper face: README "Why the AU
error stays above 1.2x"). Feedback reads that error on each image and corrects its condition: a pass renders the
images with condition `c_k`, the pipeline's `au_estimator` reads their AUs `e_k`, and the next pass re-renders the
same noise (generator states restored) with

    c_{k+1} = clip(c_k + gain * (a - e_k), 0, max)            (a: the requested AUs, c_0 = a)

per image with an AU condition. After `au_feedback_passes` corrections the final pass renders the returned images;
the output reports the requested AUs `a` (the image's labels), not the corrected condition. Each correction costs a
whole sampling pass (and an estimator pass): `P` passes make a call `(1 + P)` times as long.

The estimator shapes the images, so it must not be the model that measures AU control (the benchmarks read them with a
separate regressor).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ...annotators import AUEstimator
from ...value_checks import check_int, check_number
from .conditions import GeneratorInput


def _generators(generator: GeneratorInput) -> list[torch.Generator]:
    """`generator` as a list: one, a list, or None (none)."""
    return generator if isinstance(generator, list) else [generator] if generator is not None else []


def generator_states(generator: GeneratorInput) -> list[torch.Tensor]:
    """The states of `generator`, to replay its draws with [`restore_generators`]."""
    return [g.get_state() for g in _generators(generator)]


def restore_generators(generator: GeneratorInput, states: list[torch.Tensor]) -> None:
    """Sets `generator` back to `states` (from [`generator_states`])."""
    for g, state in zip(_generators(generator), states):
        g.set_state(state)


def corrected_condition(
    condition: torch.Tensor,  # (N, A) the condition just rendered
    requested: torch.Tensor,  # (N, A)
    estimated: torch.Tensor,  # (N, A) the estimator's AUs of the rendered images
    has_au: torch.Tensor,  # (N,) bool: rows with an AU condition
    gain: float,
    max_value: float,
) -> torch.Tensor:  # (N, A)
    """`clip(condition + gain * (requested - estimated), 0, max_value)` on the rows with an AU condition; other rows
    unchanged."""
    corrected = (condition + gain * (requested - estimated)).clamp(0.0, max_value)
    return torch.where(has_au[:, None], corrected, condition)


class AUFeedbackMixin:
    """AU feedback for a pipeline with `vae`, `image_processor`, `au_space`, an `au_estimator` component (see
    `EditingMixin.pipeline_au_estimator`), `encode_au_condition` and `denoise`."""

    def check_au_feedback_inputs(self, passes: int, gain: float) -> None:
        """Raises a `ValueError` naming the first invalid AU-feedback argument."""
        check_int("au_feedback_passes", passes, 0)
        check_number("au_feedback_gain", gain, 0)
        if passes == 0:
            return
        if self.au_space is None or self.au_space.kind != "intensity":
            raise ValueError("`au_feedback_passes` needs a UNet with an AU adapter on an intensity AU space.")
        self.pipeline_au_estimator("`au_feedback_passes` > 0")

    def estimate_action_units(self, latents: torch.Tensor, estimator: AUEstimator) -> torch.Tensor:
        """The estimator's AUs `(N, num_aus)` of the images that `latents` `(N, C, h, w)` decode to."""
        images = self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False)[0]  # (N, 3, H, W)
        return estimator(self.image_processor.postprocess(images, output_type="pil"))

    def au_feedback_condition(
        self,
        render: Callable[[torch.Tensor | None], torch.Tensor],
        au_matrix: torch.Tensor,  # (N, A) the requested AUs
        has_au: list[bool],
        generator: GeneratorInput,
        passes: int,
        gain: float,
    ) -> torch.Tensor:  # (N, T, D)
        """The AU tokens of the final pass after `passes` corrections: `render(au_embeds)` runs one denoising pass
        from the call's starting latents and returns its latents; the generator states are restored after every
        pass, so each pass and the final one draw the same noise."""
        estimator = self.pipeline_au_estimator("`au_feedback_passes` > 0")
        device = au_matrix.device
        states = generator_states(generator)
        keep = torch.tensor(has_au, device=device)
        condition = au_matrix
        for _ in range(passes):
            latents = render(self.encode_au_condition(condition, has_au, device))
            restore_generators(generator, states)
            estimated = self.estimate_action_units(latents, estimator).to(device)
            condition = corrected_condition(condition, au_matrix, estimated, keep, gain, self.au_space.max_value)
        return self.encode_au_condition(condition, has_au, device)
