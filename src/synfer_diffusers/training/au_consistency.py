"""AU-consistency loss for the AU adapter (beyond the paper; the idea of ControlNet++'s reward-consistency loss).

At the timesteps where the one-step denoised estimate is meaningful (`t <= max_timestep`), the noise prediction
gives `x0_hat` (DDPM eq. 15: `x0_hat = (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t)`; for v-prediction
`x0_hat = sqrt(abar_t) x_t - sqrt(1 - abar_t) v_hat`), the frozen VAE decodes it, and a frozen, differentiable AU
estimator reads the AUs of that image. The loss is their mean absolute error to the AUs the adapter was conditioned
on, on the rows whose AUs were not dropped; its gradient flows through the estimator and the decoder into the UNet.

The estimator is any transformers image model whose outputs are AU intensities named by `config.au_names` (the
package's AU regressors, e.g. a checkpoint's `au_estimator`). It must not be the model that later measures AU
error: a gain read by the model the training optimised against is not a gain.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from torch import nn
from transformers import AutoImageProcessor, AutoModelForImageClassification

from ..facs import AUSpace


class AUConsistencyLoss(nn.Module):
    r"""
    Mean absolute AU error of the decoded one-step estimate `x0_hat`, by a frozen AU estimator.

    Args:
        estimator (`nn.Module`): image model, `pixel_values (B, 3, S, S) -> logits (B, num_outputs)` in AU units.
        au_names (`Sequence[str]`): the estimator's output names (e.g. `config.au_names`).
        au_space ([`AUSpace`]): the UNet's AU space; every one of its AUs must be among `au_names`.
        image_size (`int`): the estimator's input size; `image_mean`, `image_std`: its normalisation.
        max_timestep (`int`, defaults to 400): the loss applies at `t <= max_timestep` only.
    """

    def __init__(
        self,
        estimator: nn.Module,
        au_names: Sequence[str],
        au_space: AUSpace,
        image_size: int,
        image_mean: Sequence[float] = (0.5, 0.5, 0.5),
        image_std: Sequence[float] = (0.5, 0.5, 0.5),
        max_timestep: int = 400,
    ):
        super().__init__()
        missing = [name for name in au_space.names if name not in list(au_names)]
        if missing:
            raise ValueError(
                f"`au_estimator` cannot read the UNet's AUs {missing}: its outputs are {list(au_names)}; use an "
                f"estimator trained on the {au_space.num_aus}-AU space of the UNet."
            )
        self.estimator = estimator.requires_grad_(False).eval()
        self.register_buffer("output_index", torch.tensor([list(au_names).index(n) for n in au_space.names]))
        self.register_buffer("mean", torch.tensor(image_mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(image_std, dtype=torch.float32).view(1, 3, 1, 1))
        self.image_size = image_size
        self.max_timestep = max_timestep

    @classmethod
    def from_pretrained(
        cls, name_or_path: str, au_space: AUSpace, image_processor: str | None = None, max_timestep: int = 400
    ) -> AUConsistencyLoss:
        """Loads the estimator in float32 (it reads float32 decoded images; checkpoints such as the embedded default
        store it in float16) and its image processor (default: from the same folder or repo)."""
        try:
            model = AutoModelForImageClassification.from_pretrained(name_or_path, dtype=torch.float32)
            processor = AutoImageProcessor.from_pretrained(image_processor or name_or_path)
        except (OSError, ValueError) as error:
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ValueError(f"`au_estimator` {name_or_path!r} could not be loaded: {reason}") from error
        names = getattr(model.config, "au_names", None)
        if not names:
            raise ValueError(f"`au_estimator` {name_or_path!r} has no `au_names` in its config: not an AU estimator.")
        size = processor.size.get("height") or processor.size.get("shortest_edge")
        return cls(model, names, au_space, size, processor.image_mean, processor.image_std, max_timestep)

    def forward(
        self,
        noisy_latents: torch.Tensor,  # (B, C, h, w)
        model_pred: torch.Tensor,  # (B, C, h, w), epsilon or v
        timesteps: torch.Tensor,  # (B,)
        action_units: torch.Tensor,  # (B, num_aus), what the UNet was conditioned on
        use: torch.Tensor,  # (B,) bool, rows whose AUs were not dropped
        scheduler: DDPMScheduler,
        vae: nn.Module,
    ) -> torch.Tensor:  # scalar
        rows = use & (timesteps <= self.max_timestep)
        if not rows.any():
            return model_pred.sum() * 0.0  # keeps the graph (DDP) with no contribution
        x0_hat = denoised_estimate(noisy_latents[rows], model_pred[rows], timesteps[rows], scheduler)
        images = vae.decode((x0_hat / vae.config.scaling_factor).to(vae.dtype)).sample.float()  # (b, 3, H, W)
        images = ((images + 1) / 2).clamp(0, 1)
        if images.shape[-1] != self.image_size:
            images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear", antialias=True)
        estimated = self.estimator(pixel_values=(images - self.mean) / self.std).logits  # (b, num_outputs)
        return (estimated[:, self.output_index] - action_units[rows].to(estimated)).abs().mean()


def denoised_estimate(
    noisy_latents: torch.Tensor,  # (B, C, h, w)
    model_pred: torch.Tensor,  # (B, C, h, w)
    timesteps: torch.Tensor,  # (B,)
    scheduler: DDPMScheduler,
) -> torch.Tensor:  # (B, C, h, w)
    """The one-step estimate of the clean latents from the UNet's epsilon or v prediction."""
    alpha_bar = scheduler.alphas_cumprod.to(noisy_latents.device)[timesteps].view(-1, 1, 1, 1).to(model_pred.dtype)
    if scheduler.config.prediction_type == "epsilon":
        return (noisy_latents - (1 - alpha_bar).sqrt() * model_pred) / alpha_bar.sqrt()
    if scheduler.config.prediction_type == "v_prediction":
        return alpha_bar.sqrt() * noisy_latents - (1 - alpha_bar).sqrt() * model_pred
    raise ValueError(f"Unsupported `prediction_type` {scheduler.config.prediction_type!r}; use epsilon or v_prediction.")
