"""FERAnnoPipeline: expression pseudo-labels from diffusion features (SynFER stage 3, FERAnno), the "pseudo-label
model on the Hub"."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, ModelMixin, UNet2DConditionModel
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils import logging as diffusers_logging
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPTextModel, CLIPTokenizer, PreTrainedTokenizerBase

from ...facs import classifier_expression_probabilities
from ...image_utils import resize_and_center_crop
from ...models.feature_extraction import UNetFeatureRecorder, UNetFeatures
from ...models.feranno import FERAnnoHead
from ...models.unet_au import AUConditionedUNet2DConditionModel
from ...value_checks import check_int
from ..hub_mixin import ModelCardPipelineMixin
from .conditions import GeneratorInput

FERANNO_EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from PIL import Image
        >>> from synfer_diffusers import FERAnnoPipeline

        >>> pipe = FERAnnoPipeline.from_pretrained("path/or/repo-id")
        >>> out = pipe([Image.open("face.png")], generator=torch.Generator().manual_seed(0))
        >>> out.labels, out.probabilities  # ["happy"], (1, num_labels) in the head's id2label order
        ```
"""

SYNFER_HEAD_COMPONENT = "feranno_head"
"""The FERAnno head's component name in a `SynFERPipeline` checkpoint (`head` in a FERAnno one)."""
HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "proxies", "revision", "token")
"""`from_pretrained` arguments that say where and how to read the repo (passed on to the head's own load)."""

HIGH_BIT_DEPTH_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
"""PIL modes that `convert("RGB")` would clip rather than convert: rejected."""

FERAnnoImageInput = PIL.Image.Image | Sequence[PIL.Image.Image] | np.ndarray | torch.Tensor


@contextlib.contextmanager
def _quiet_diffusers() -> Iterator[None]:
    """diffusers' logger at error level for the block (its notes on skipped components of a SynFER checkpoint)."""
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(verbosity)


@dataclass
class FERAnnoPipelineOutput(BaseOutput):
    """
    Args:
        labels (`list[str]`): the most probable label of each image, a name of the head's `id2label` (default the
            `EXPRESSIONS`).
        label_ids (`torch.Tensor` of shape `(batch,)`): their ids in the head's `id2label`.
        probabilities (`torch.Tensor` of shape `(batch, num_labels)`): softmax probabilities in `id2label` order.
    """

    labels: list[str]
    label_ids: torch.Tensor
    probabilities: torch.Tensor


class FERAnnoPipeline(ModelCardPipelineMixin, DiffusionPipeline):
    r"""
    Facial-expression pseudo-labelling with FERAnno (SynFER, arXiv 2410.09865): a classifier on the features of a
    diffusion UNet.

    For each image: VAE-encode (the posterior mean, scaled by the VAE's `scaling_factor`), add noise to the
    training timestep `head.config.timestep` (default **t = 1**, the least noise of the training schedule:
    `x_1 = sqrt(abar_1) z_0 + sqrt(1 - abar_1) eps`, DDPM eq. 4, from the scheduler's `alphas_cumprod`), run the
    UNet once with the prompt `head.config.prompt` (default the **empty prompt `""`**) and, for an AU-conditioned
    UNet, the learned **null AU condition** at `au_scale` 1, record its decoder feature maps and cross-attention maps
    ([`~synfer_diffusers.models.feature_extraction.UNetFeatureRecorder`]) and classify them with the
    [`FERAnnoHead`] over its own label set (`head.config.id2label`, like a transformers classifier).
    [`label_latents`] gives probabilities over `EXPRESSIONS` for voting, mapped by name as for external classifiers,
    for latents, e.g. a sampler's final latents.

    Args:
        vae ([`AutoencoderKL`]), text_encoder ([`~transformers.CLIPTextModel`]), tokenizer
            ([`~transformers.CLIPTokenizer`]), unet ([`AUConditionedUNet2DConditionModel`] or
            [`~diffusers.UNet2DConditionModel`]): the components of the diffusion model whose features are read,
            e.g. a [`SynFERPipeline`]'s.
        scheduler ([`~diffusers.SchedulerMixin`]): any scheduler of that model (DDIM, DPM-Solver, Euler, UniPC,
            ...); only its training schedule `alphas_cumprod` is read, so neither its class nor the state of its
            inference schedule changes the labels.
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
        scheduler: SchedulerMixin,
        head: ModelMixin,
    ):
        # `head` is a [`FERAnnoHead`], annotated by its diffusers base class: in a checkpoint's code files the head
        # comes from its component file and the pipeline file holds another copy of the class, so diffusers' type
        # check of a stock load (`trust_remote_code=True`) would warn about an exact class
        super().__init__()
        head.check_unet(unet)
        self.register_modules(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler, head=head
        )
        for module in (vae, text_encoder, unet, head):
            module.eval()
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> FERAnnoPipeline:
        r"""
        As [`~diffusers.DiffusionPipeline.from_pretrained`], from a FERAnno repo or folder, or from a
        [`SynFERPipeline`] checkpoint that carries a FERAnno head (its `feranno_head` component becomes `head`; the
        SynFER-only components are not loaded).

        Example:

        ```py
        >>> FERAnnoPipeline.from_pretrained("path/to/synfer-checkpoint")  # e.g. the embedded default
        ```
        """
        hub_kwargs = {key: kwargs[key] for key in HUB_KWARGS if key in kwargs}
        index = cls.load_config(pretrained_model_name_or_path, **hub_kwargs)
        if "head" in kwargs or "head" in index or SYNFER_HEAD_COMPONENT not in index:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        head = FERAnnoHead.from_pretrained(pretrained_model_name_or_path, subfolder=SYNFER_HEAD_COMPONENT, **hub_kwargs)
        with _quiet_diffusers():  # the SynFER-only components it skips are expected, not a misconfiguration
            return super().from_pretrained(pretrained_model_name_or_path, head=head, **kwargs)

    @classmethod
    def from_pipe(cls, pipeline: DiffusionPipeline, **kwargs: Any) -> FERAnnoPipeline:
        """As [`~diffusers.DiffusionPipeline.from_pipe`]; from a [`SynFERPipeline`] its `feranno_head` is the head."""
        if "head" not in kwargs and "head" not in pipeline.components:
            head = pipeline.components.get(SYNFER_HEAD_COMPONENT)
            if head is None:
                raise ValueError(f"{type(pipeline).__name__} has no FERAnno head: pass `head=`.")
            kwargs["head"] = head
        with _quiet_diffusers():
            return super().from_pipe(pipeline, **kwargs)

    @property
    def resolution(self) -> int:
        """Side of the square images the UNet was configured for, in pixels."""
        return self.unet.config.sample_size * self.vae_scale_factor

    def model_card_fields(self) -> dict[str, Any]:
        head = self.head.config
        fields: dict[str, Any] = {
            "labels": self.head.labels,
            "resolution": self.resolution,
            "timestep": head.timestep,
            "prompt": head.prompt,
            "feature_channels": list(head.feature_channels),
            "num_attention_maps": head.num_attention_maps,
            "head_parameters": sum(p.numel() for p in self.head.parameters()),
            "unet_parameters": sum(p.numel() for p in self.unet.parameters()),
        }
        return fields

    def prepare_images(self, images: FERAnnoImageInput) -> torch.Tensor:  # (B, 3, R, R) in [-1, 1]
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

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:  # (B, C, h, w)
        """The clean latents FERAnno labels: the VAE posterior mean of `pixel_values` `(B, 3, R, R)` in [-1, 1],
        scaled by the VAE's `scaling_factor`."""
        pixel_values = pixel_values.to(device=self._execution_device, dtype=self.vae.dtype)
        return self.vae.encode(pixel_values).latent_dist.mode() * self.vae.config.scaling_factor

    def prepare_noisy_latents(
        self,
        latents: torch.Tensor,  # (N, C, h, w) clean, scaled
        generator: GeneratorInput = None,
    ) -> torch.Tensor:  # (N, C, h, w)
        """`latents` brought to the head's timestep with fresh noise drawn on the generator's device: DDPM's forward
        process ([`noise_to_timestep`]) with the scheduler's `alphas_cumprod`, whatever the scheduler's class or the
        state of its inference schedule."""
        noise = randn_on_generator_device(latents.shape, generator, latents.device)
        return noise_to_timestep(self.scheduler.alphas_cumprod, latents, noise, self.head.config.timestep)

    def unet_features(self, noisy_latents: torch.Tensor) -> UNetFeatures:  # noisy_latents: (N, C, h, w)
        """FERAnno's UNet pass on latents at the head's timestep (from [`prepare_noisy_latents`]): timestep
        `head.config.timestep`, the prompt `head.config.prompt` and, for an AU-conditioned UNet, the null AU
        condition at `au_scale` 1; returns the recorded features. Used by [`label_latents`] and by
        `examples/train_feranno.py`."""
        batch_size, device = noisy_latents.shape[0], noisy_latents.device
        t = torch.full((batch_size,), self.head.config.timestep, device=device, dtype=torch.long)
        text = self.encode_prompt(self.head.config.prompt, batch_size, device).to(self.unet.dtype)
        au_kwargs = {}
        if hasattr(self.unet, "encode_action_units"):  # the package's AU UNet, or a checkpoint's code file of it
            au_kwargs = {"au_embeds": self.unet.encode_action_units(None, batch_size=batch_size), "au_scale": 1.0}
        with UNetFeatureRecorder(self.unet) as recorder:
            self.unet(noisy_latents.to(self.unet.dtype), t, encoder_hidden_states=text, **au_kwargs)
            return recorder.features()

    @torch.no_grad()
    def latent_logits(
        self, latents: torch.Tensor, generator: GeneratorInput = None, batch_size: int = 16
    ) -> torch.Tensor:  # (N, num_labels)
        r"""
        The head's logits for clean latents with FERAnno's training pass: each latent is noised to
        `head.config.timestep` (`sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps` from the scheduler's `alphas_cumprod`), the
        UNet runs once with the head's prompt (default `""`) and, for an AU-conditioned UNet, the null AU condition at
        `au_scale` 1, and the head classifies the recorded features.

        Args:
            latents (`torch.Tensor` of shape `(N, C, h, w)`): clean latents scaled by the VAE's `scaling_factor`:
                `vae.encode(x).latent_dist.mode() * vae.config.scaling_factor`, or a sampler's final latents.
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*): draws the noise, on its own
                device; one generator draws the noise of all `N` latents at once (so `batch_size` does not change
                the result), a list has one generator per latent (latent `i` gets the same noise alone or in a
                batch).
            batch_size (`int`, defaults to 16): latents per UNet pass.

        Returns:
            `torch.Tensor` of shape `(N, num_labels)`: float32 logits in the head's `id2label` order, on the CPU.
        """
        channels = self.unet.config.in_channels
        if latents.ndim != 4 or latents.shape[0] == 0 or latents.shape[1] != channels:
            raise ValueError(f"`latents` must have shape (N >= 1, {channels}, h, w), got {tuple(latents.shape)}.")
        check_int("batch_size", batch_size, 1)
        noisy = self.prepare_noisy_latents(latents.to(self._execution_device), generator)  # (N, C, h, w)
        logits = []
        with self.progress_bar(total=-(-len(noisy) // batch_size)) as progress_bar:
            for batch in noisy.split(batch_size):
                logits.append(self.head(self.unet_features(batch)).logits.float().cpu())  # (b, num_labels)
                progress_bar.update()
        return torch.cat(logits)

    @torch.no_grad()
    def label_latents(
        self,
        latents: torch.Tensor,
        generator: GeneratorInput = None,
        batch_size: int = 16,
        label_mapping: Mapping[str, str | None] | None = None,
    ) -> torch.Tensor:  # (N, len(EXPRESSIONS))
        r"""
        FERAnno's vote on clean latents: [`latent_logits`] mapped onto `EXPRESSIONS` by name, exactly as external
        classifiers' are ([`~synfer_diffusers.facs.classifier_expression_probabilities`] with
        [`FERAnnoHead.expression_index_map`]), then softmax.

        Args:
            latents, generator, batch_size: as for [`latent_logits`].
            label_mapping (`dict`, *optional*): renames the head's labels onto `EXPRESSIONS`, `None` drops an output
                before the softmax (e.g. `{"contempt": None}` for an AffectNet-8 head); a label that maps nowhere
                raises a `ValueError` naming `feranno_label_mapping`, before the UNet runs.

        Returns:
            `torch.Tensor` of shape `(N, len(EXPRESSIONS))`: softmax probabilities in `EXPRESSIONS` order, float32,
            on the CPU.

        Example:

        ```py
        >>> feranno = FERAnnoPipeline(**synfer_pipe.base_components, head=synfer_pipe.feranno_head)
        >>> out = synfer_pipe(expression="happy", output_type="latent", generator=torch.Generator().manual_seed(0))
        >>> feranno.label_latents(out.images, generator=torch.Generator().manual_seed(0))  # (1, 7)
        ```
        """
        index_map = self.head.expression_index_map(label_mapping)
        return classifier_expression_probabilities(self.latent_logits(latents, generator, batch_size), index_map)

    @torch.no_grad()
    def __call__(
        self,
        images: FERAnnoImageInput,
        batch_size: int = 16,
        generator: GeneratorInput = None,
        return_dict: bool = True,
    ) -> FERAnnoPipelineOutput | tuple:
        r"""
        Labels facial-expression images over the head's label set: softmax of [`latent_logits`] of their VAE
        latents.

        Args:
            images (PIL image, list of PIL images, array or tensor): see the class docstring for modes and sizes.
            batch_size (`int`, defaults to 16): images per VAE and UNet pass.
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*): draws the noise added to reach
                the head's timestep, on the generator's own device (CPU or CUDA); the same generator state gives the
                same labels. A list has one generator per image, so image `i` is labelled the same alone or in a
                batch.
            return_dict (`bool`, defaults to True): else return `(labels, label_ids, probabilities)`.

        Returns:
            [`FERAnnoPipelineOutput`] or `tuple`.
        """
        check_int("batch_size", batch_size, 1)
        pixel_values = self.prepare_images(images)
        latents = torch.cat([self.encode_images(batch) for batch in pixel_values.split(batch_size)])  # (B, C, h, w)
        probabilities = self.latent_logits(latents, generator, batch_size).softmax(-1)  # (B, num_labels)
        self.maybe_free_model_hooks()
        label_ids = probabilities.argmax(-1)
        labels = [self.head.config.id2label[i] for i in label_ids.tolist()]
        if not return_dict:
            return labels, label_ids, probabilities
        return FERAnnoPipelineOutput(labels=labels, label_ids=label_ids, probabilities=probabilities)


def noise_to_timestep(
    alphas_cumprod: torch.Tensor,  # (T,)
    latents: torch.Tensor,  # (N, C, h, w) clean
    noise: torch.Tensor,  # (N, C, h, w) standard normal
    timestep: int,
) -> torch.Tensor:  # (N, C, h, w), in the dtype of `latents`
    r"""
    DDPM's forward process at a training timestep (Ho et al. 2020, eq. 4), computed in float32:
    `z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps` with `abar = alphas_cumprod`.

    Not a scheduler's `add_noise`: the multistep schedulers (DPM-Solver, UniPC) look `t` up in their *inference*
    schedule (`begin_index` / `step_index`) and the Euler ones add noise in sigma space, so their noise level depends
    on the scheduler's class and history.

    Example:

    ```py
    >>> z_t = noise_to_timestep(pipe.scheduler.alphas_cumprod, latents, torch.randn_like(latents), timestep=1)
    ```
    """
    if not 0 <= timestep < len(alphas_cumprod):
        raise ValueError(f"`timestep` must be a training timestep in [0, {len(alphas_cumprod)}), got {timestep}.")
    abar = alphas_cumprod[timestep].to(device=latents.device, dtype=torch.float32)
    noise = noise.to(device=latents.device, dtype=torch.float32)
    return (abar.sqrt() * latents.float() + (1 - abar).sqrt() * noise).to(latents.dtype)


def randn_on_generator_device(
    shape: tuple[int, ...], generator: GeneratorInput, device: torch.device
) -> torch.Tensor:  # float32, on `device`
    """Standard normal noise of `shape`, drawn where the generator lives (a CUDA generator on its GPU, a CPU one on
    the CPU, so a seed gives the same noise wherever the model runs) and moved to `device`. A list of generators
    draws row `i` with `generator[i]` (diffusers' convention); `None` draws on `device` from the global RNG."""
    if isinstance(generator, list) and len(generator) != shape[0]:
        raise ValueError(f"`generator` list has {len(generator)} entries for {shape[0]} images.")
    first = generator[0] if isinstance(generator, list) else generator
    draw_device = device if first is None else first.device
    return randn_tensor(shape, generator=generator, device=draw_device, dtype=torch.float32).to(device)


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


FERAnnoPipeline.__call__.__doc__ = (FERAnnoPipeline.__call__.__doc__ or "") + FERANNO_EXAMPLE_DOC_STRING
