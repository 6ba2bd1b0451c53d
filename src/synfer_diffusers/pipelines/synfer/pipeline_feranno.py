"""FERAnnoPipeline: expression pseudo-labels from diffusion features (SynFER stage 3, FERAnno), the "pseudo-label
model on the Hub"."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DPMSolverMultistepScheduler, UNet2DConditionModel
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.utils import BaseOutput
from transformers import CLIPTextModel, CLIPTokenizer, PreTrainedTokenizerBase

from ...facs import EXPRESSIONS
from ...image_utils import resize_and_center_crop
from ...models.feature_extraction import UNetFeatureRecorder, UNetFeatures
from ...models.feranno import FERAnnoHead
from ...models.unet_au import AUConditionedUNet2DConditionModel
from ..hub_mixin import ModelCardPipelineMixin

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from PIL import Image
        >>> from synfer_diffusers import FERAnnoPipeline

        >>> pipe = FERAnnoPipeline.from_pretrained("path/or/repo-id")
        >>> out = pipe([Image.open("face.png")], generator=torch.Generator().manual_seed(0))
        >>> out.labels, out.probabilities  # ["happy"], (1, 7) in EXPRESSIONS order
        ```
"""

HIGH_BIT_DEPTH_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
"""PIL modes that `convert("RGB")` would clip rather than convert: rejected."""

ImageInput = PIL.Image.Image | Sequence[PIL.Image.Image] | np.ndarray | torch.Tensor


@dataclass
class FERAnnoPipelineOutput(BaseOutput):
    """
    Args:
        labels (`list[str]`): the most probable expression of each image.
        label_ids (`torch.Tensor` of shape `(batch,)`): their indices in `EXPRESSIONS`.
        probabilities (`torch.Tensor` of shape `(batch, len(EXPRESSIONS))`): softmax probabilities, `EXPRESSIONS`
            order.
    """

    labels: list[str]
    label_ids: torch.Tensor
    probabilities: torch.Tensor


class FERAnnoPipeline(ModelCardPipelineMixin, DiffusionPipeline):
    r"""
    Facial-expression pseudo-labelling with FERAnno (SynFER, arXiv 2410.09865): a classifier on the features of a
    diffusion UNet.

    For each image: VAE-encode (the posterior mean, scaled by the VAE's `scaling_factor`), add noise to the
    diffusion timestep `head.config.timestep` (default **t = 1**, the least noise of the training schedule:
    `x_1 = sqrt(abar_1) z_0 + sqrt(1 - abar_1) eps`, DDPM eq. 4), run the UNet once with the prompt
    `head.config.prompt` (default the **empty prompt `""`**) and, for an AU-conditioned UNet, the learned **null
    AU condition**, record its decoder feature maps and cross-attention maps
    ([`~synfer_diffusers.models.feature_extraction.UNetFeatureRecorder`]) and classify them with the
    [`FERAnnoHead`].

    Args:
        vae ([`AutoencoderKL`]), text_encoder ([`~transformers.CLIPTextModel`]), tokenizer
            ([`~transformers.CLIPTokenizer`]), unet ([`AUConditionedUNet2DConditionModel`] or
            [`~diffusers.UNet2DConditionModel`]), scheduler ([`DDIMScheduler`] or [`DPMSolverMultistepScheduler`]):
            the components of the diffusion model whose features are read, e.g. a [`SynFERPipeline`]'s.
        head ([`FERAnnoHead`]): trained for this UNet; a head made for another UNet layout raises a `ValueError`.

    Images: PIL images of any mode with 8 bits per channel are converted to RGB (an alpha channel is dropped,
    grey is replicated); 16-bit and float modes are rejected. PIL images of any size are resized (bicubic, shorter
    side) and centre-cropped to the pipeline's resolution (`unet.config.sample_size * vae_scale_factor`). Arrays
    and tensors are taken as they are: uint8 `(B, H, W, 3)` arrays, float arrays in [0, 1] `(B, H, W, 3)` or
    tensors in [0, 1] `(B, 3, H, W)` (a single image without the batch axis too), already at that resolution.
    """

    model_cpu_offload_seq = "text_encoder->vae->unet->head"
    model_card_template = "feranno.md"

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer | PreTrainedTokenizerBase,
        unet: AUConditionedUNet2DConditionModel | UNet2DConditionModel,
        scheduler: DDIMScheduler | DPMSolverMultistepScheduler,
        head: FERAnnoHead,
    ):
        super().__init__()
        head.check_unet(unet)
        self.register_modules(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler, head=head
        )
        for module in (vae, text_encoder, unet, head):
            module.eval()
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def resolution(self) -> int:
        """Side of the square images the UNet was configured for, in pixels."""
        return self.unet.config.sample_size * self.vae_scale_factor

    def model_card_fields(self) -> dict[str, Any]:
        head = self.head.config
        fields: dict[str, Any] = {
            "labels": list(EXPRESSIONS),
            "expressions": list(EXPRESSIONS),
            "resolution": self.resolution,
            "timestep": head.timestep,
            "prompt": head.prompt,
            "feature_channels": list(head.feature_channels),
            "num_attention_maps": head.num_attention_maps,
            "head_parameters": sum(p.numel() for p in self.head.parameters()),
            "unet_parameters": sum(p.numel() for p in self.unet.parameters()),
        }
        return fields

    def prepare_images(self, images: ImageInput) -> torch.Tensor:  # (B, 3, R, R) in [-1, 1]
        """Checks and converts `images` as the class docstring describes; errors name the offending entry."""
        size = self.resolution
        if isinstance(images, PIL.Image.Image):
            images = [images]
        if isinstance(images, np.ndarray):
            images = _array_to_tensor(images)
        if isinstance(images, torch.Tensor):
            batch = images[None] if images.ndim == 3 else images
            if batch.ndim != 4 or batch.shape[1] != 3 or tuple(batch.shape[2:]) != (size, size):
                raise ValueError(
                    f"`images` as a tensor must have shape (B, 3, {size}, {size}) (RGB at the pipeline's resolution), "
                    f"got {tuple(images.shape)}."
                )
            if not torch.is_floating_point(batch) or batch.min() < 0 or batch.max() > 1:
                raise ValueError("`images` as a tensor must be floating point with values in [0, 1].")
            return batch.float() * 2 - 1
        if not isinstance(images, Sequence) or not images:
            raise ValueError(
                f"`images` must be a non-empty list of PIL images, an array or a tensor, got {type(images).__name__}."
            )
        pixels = [_square_rgb(image, size, field=f"images[{i}]") for i, image in enumerate(images)]
        return torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float() / 127.5 - 1

    def encode_prompt(self, prompt: str, batch_size: int, device: torch.device) -> torch.Tensor:  # (B, L, D)
        tokens = self.tokenizer(
            [prompt],
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        return self.text_encoder(tokens.input_ids.to(device))[0].expand(batch_size, -1, -1)

    def unet_features(
        self,
        pixel_values: torch.Tensor,  # (B, 3, R, R) in [-1, 1]
        generator: torch.Generator | None = None,
        timestep: int | None = None,
        prompt: str | None = None,
    ) -> UNetFeatures:
        """One UNet pass at `timestep` with `prompt` (defaults: the head's) on the noised latents of
        `pixel_values`; returns the recorded features. Used by `__call__` and by `examples/train_feranno.py`."""
        device = self._execution_device
        timestep = self.head.config.timestep if timestep is None else timestep
        prompt = self.head.config.prompt if prompt is None else prompt
        pixel_values = pixel_values.to(device=device, dtype=self.vae.dtype)
        latents = self.vae.encode(pixel_values).latent_dist.mode() * self.vae.config.scaling_factor  # (B, 4, r, r)
        noise = torch.randn(latents.shape, generator=generator, dtype=latents.dtype).to(device)
        t = torch.full((latents.shape[0],), timestep, device=device, dtype=torch.long)
        noisy = self.scheduler.add_noise(latents, noise, t)  # sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps
        text = self.encode_prompt(prompt, latents.shape[0], device).to(self.unet.dtype)
        with UNetFeatureRecorder(self.unet) as recorder:
            self.unet(noisy.to(self.unet.dtype), t, encoder_hidden_states=text)
            return recorder.features()

    @torch.no_grad()
    def __call__(
        self,
        images: ImageInput,
        batch_size: int = 16,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> FERAnnoPipelineOutput | tuple:
        r"""
        Labels facial-expression images.

        Args:
            images (PIL image, list of PIL images, array or tensor): see the class docstring for modes and sizes.
            batch_size (`int`, defaults to 16): images per UNet pass.
            generator (`torch.Generator`, *optional*): draws the noise added at t ~ 1 (CPU generator; the same
                generator state gives the same labels).
            return_dict (`bool`, defaults to True): else return `(labels, label_ids, probabilities)`.

        Returns:
            [`FERAnnoPipelineOutput`] or `tuple`.
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be an int >= 1, got {batch_size!r}.")
        pixel_values = self.prepare_images(images)
        probabilities = []
        with self.progress_bar(total=-(-len(pixel_values) // batch_size)) as progress_bar:
            for batch in pixel_values.split(batch_size):
                logits = self.head(self.unet_features(batch, generator)).logits  # (b, 7)
                probabilities.append(logits.float().softmax(-1).cpu())
                progress_bar.update()
        self.maybe_free_model_hooks()
        probabilities = torch.cat(probabilities)  # (B, 7)
        label_ids = probabilities.argmax(-1)
        labels = [EXPRESSIONS[i] for i in label_ids.tolist()]
        if not return_dict:
            return labels, label_ids, probabilities
        return FERAnnoPipelineOutput(labels=labels, label_ids=label_ids, probabilities=probabilities)


def _array_to_tensor(array: np.ndarray) -> torch.Tensor:  # (B, 3, H, W) in [0, 1]
    """`(B, H, W, 3)` or `(H, W, 3)` arrays, uint8 or floats in [0, 1] -> a channels-first float tensor."""
    if array.dtype == np.uint8:
        array = array.astype(np.float32) / 255.0
    elif not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"`images` as an array must be uint8 or floating point, got {array.dtype}.")
    if array.ndim not in (3, 4) or array.shape[-1] != 3:
        raise ValueError(f"`images` as an array must have shape (B, H, W, 3) or (H, W, 3), got {array.shape}.")
    return torch.from_numpy(np.ascontiguousarray(array)).movedim(-1, -3)


def _square_rgb(image: Any, size: int, field: str) -> np.ndarray:  # (size, size, 3) uint8
    """RGB, shorter side resized to `size` (bicubic), centre-cropped."""
    if not isinstance(image, PIL.Image.Image):
        raise ValueError(f"`{field}` must be a PIL image, got {type(image).__name__}.")
    if image.mode in HIGH_BIT_DEPTH_MODES:
        raise ValueError(
            f"`{field}` has PIL mode {image.mode!r} (more than 8 bits per channel); convert it to 'RGB' first."
        )
    return resize_and_center_crop(image, size)


FERAnnoPipeline.__call__.__doc__ = (FERAnnoPipeline.__call__.__doc__ or "") + EXAMPLE_DOC_STRING
