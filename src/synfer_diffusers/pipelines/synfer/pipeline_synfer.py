"""SynFERPipeline: text + action-unit controlled facial-expression synthesis (SynFER stage 2, sampling)."""

from __future__ import annotations

import contextlib
import inspect
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DPMSolverMultistepScheduler, UNet2DConditionModel
from diffusers.image_processor import VaeImageProcessor
from diffusers.loaders import StableDiffusionLoraLoaderMixin
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPTextModel, CLIPTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.image_processing_utils import BaseImageProcessor

from ...facs import EXPRESSIONS, AUSpace, classifier_logits_to_expressions, expression_prototype, map_classifier_labels
from ...models.feature_extraction import UNetFeatureRecorder, UNetFeatures
from ...models.feranno import FERAnnoHead
from ...models.unet_au import AUConditionedUNet2DConditionModel
from ...prompts import enrich_prompt
from ..hub_mixin import ModelCardPipelineMixin
from .pipeline_output import SynFERPipelineOutput

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from synfer_diffusers import SynFERPipeline

        >>> pipe = SynFERPipeline.from_pretrained("path/or/repo-id")
        >>> out = pipe(
        ...     prompt="a photo of an elderly man with glasses",
        ...     expression="happy",
        ...     action_units={"AU6": 2.5, "AU12": 4.0},
        ...     num_images_per_prompt=4,
        ...     generator=torch.Generator().manual_seed(0),
        ... )
        >>> out.images[0].save("happy.png"); out.expressions, out.action_units, out.prompts
        ```
"""

AUInput = Mapping[str, float] | Sequence[Mapping[str, float]] | torch.Tensor | np.ndarray
ImageInput = PIL.Image.Image | np.ndarray | torch.Tensor
SG_NORMALIZATIONS = ("global", "per_token")
SG_DECODES = ("guide_size", "full")


class SynFERPipeline(ModelCardPipelineMixin, DiffusionPipeline, StableDiffusionLoraLoaderMixin):
    r"""
    Facial-expression generation controlled by text and facial action units (SynFER, arXiv 2410.09865).

    Classifier-free guidance contrasts the conditional branch (enriched prompt + AU tokens) with the
    unconditional one (negative prompt, default `""`, + the UNet's learned null AU condition).

    Args:
        vae ([`AutoencoderKL`]): image <-> latent autoencoder.
        text_encoder ([`~transformers.CLIPTextModel`]): frozen text encoder.
        tokenizer ([`~transformers.CLIPTokenizer`]): its tokenizer.
        unet ([`AUConditionedUNet2DConditionModel`] or [`~diffusers.UNet2DConditionModel`]): denoiser; a plain
            UNet gives a text-only model (no AU control).
        scheduler ([`DDIMScheduler`] or [`DPMSolverMultistepScheduler`]): for latents, DDIM's `clip_sample`
            must be off.
        guidance_classifier ([`~transformers.PreTrainedModel`], *optional*): an image classifier
            (`AutoModelForImageClassification`) whose `id2label` maps onto `EXPRESSIONS`, used for semantic
            guidance. Keep it different from any classifier used to measure results.
        guidance_image_processor ([`~transformers.image_processing_utils.BaseImageProcessor`], *optional*): its
            image processor; only `size`, `image_mean` and `image_std` are read, and applied in torch,
            differentiably.
        feranno_head ([`FERAnnoHead`], *optional*): labels each image in the loop from the UNet features of its
            final denoising step (the unconditional CFG half: prompt `""` + null AU, as FERAnno is trained), so
            pseudo-labels cost one small head pass.

    The pipeline puts its models in eval mode (as `from_pretrained` does); a training loop that builds one for
    validation calls `unet.train()` again afterwards.
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components = ["guidance_classifier", "guidance_image_processor", "feranno_head"]
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds", "au_embeds"]
    model_card_template = "synfer_pipeline.md"

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer | PreTrainedTokenizerBase,
        unet: AUConditionedUNet2DConditionModel | UNet2DConditionModel,
        scheduler: DDIMScheduler | DPMSolverMultistepScheduler,
        guidance_classifier: PreTrainedModel | None = None,
        guidance_image_processor: BaseImageProcessor | None = None,
        feranno_head: FERAnnoHead | None = None,
    ):
        super().__init__()
        self.register_modules(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
            guidance_classifier=guidance_classifier, guidance_image_processor=guidance_image_processor,
            feranno_head=feranno_head,
        )  # fmt: skip
        if feranno_head is not None:
            feranno_head.check_unet(unet)
        for module in (vae, text_encoder, unet, guidance_classifier, feranno_head):
            if module is not None:
                module.eval()  # as `from_pretrained` leaves them, so built and reloaded pipelines match exactly
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1) if vae is not None else 8
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)

    @property
    def au_space(self) -> AUSpace | None:
        """The UNet's AU space, or `None` for a UNet without an AU adapter."""
        return self.unet.au_space if isinstance(self.unet, AUConditionedUNet2DConditionModel) else None

    @property
    def base_components(self) -> dict[str, Any]:
        """VAE, text encoder, tokenizer, UNet and scheduler, without the optional guide and FERAnno head: what a
        [`FERAnnoPipeline`] (with a `head`) or a pipeline with other optional components is built from."""
        return {k: v for k, v in self.components.items() if k not in self._optional_components}

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, au_space: AUSpace | None = None, **kwargs: Any
    ) -> SynFERPipeline:
        """[`DiffusionPipeline.from_pretrained`] (folder or Hub repo id), plus `au_space`: if given, the
        checkpoint's AU space must equal it, else a `ValueError` is raised."""
        pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        if au_space is not None and pipe.au_space != au_space:
            found = pipe.au_space.names if pipe.au_space else None
            raise ValueError(
                f"`au_space`: the checkpoint's AU space {found} differs from the requested {list(au_space.names)}."
            )
        return pipe

    def model_card_fields(self) -> dict[str, Any]:
        space = self.au_space
        fields: dict[str, Any] = {
            "au_space": space.describe() if space else {},
            "au_kind": space.kind if space else None,
            "num_au_tokens": self.unet.config.get("num_au_tokens"),
            "expressions": list(EXPRESSIONS),
            "resolution": self.unet.config.sample_size * self.vae_scale_factor,
            "cross_attention_dim": self.unet.config.cross_attention_dim,
            "unet_parameters": sum(p.numel() for p in self.unet.parameters()),
        }
        return fields

    def encode_prompt(self, prompts: list[str], device: torch.device) -> torch.Tensor:  # (B, L, D)
        """Tokenises (padded to the tokenizer's maximum length) and encodes prompts; each distinct prompt is
        encoded once."""
        unique = list(dict.fromkeys(prompts))
        tokens = self.tokenizer(
            unique,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        embeds = self.text_encoder(tokens.input_ids.to(device))[0]  # (U, L, D)
        index = torch.tensor([unique.index(p) for p in prompts], device=embeds.device)
        return embeds.index_select(0, index)

    def check_inputs(
        self,
        height: int,
        width: int,
        num_images_per_prompt: int,
        au_scale: float,
        guidance_scale: float,
        action_units: AUInput | None,
        callback_on_step_end_tensor_inputs: list[str],
    ) -> None:
        if height % self.vae_scale_factor or width % self.vae_scale_factor:
            raise ValueError(
                f"`height` and `width` must be divisible by {self.vae_scale_factor} (the VAE scale), got {height}x{width}."
            )
        if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise ValueError(f"`num_images_per_prompt` must be an int >= 1, got {num_images_per_prompt!r}.")
        if not isinstance(au_scale, (int, float)) or not math.isfinite(au_scale):
            raise ValueError(f"`au_scale` must be a finite number, got {au_scale!r}.")
        if not isinstance(guidance_scale, (int, float)) or not math.isfinite(guidance_scale) or guidance_scale < 0:
            raise ValueError(f"`guidance_scale` must be a finite number >= 0, got {guidance_scale!r}.")
        if action_units is not None and self.au_space is None:
            raise ValueError(
                "`action_units` were given but the UNet has no AU adapter; use AUConditionedUNet2DConditionModel."
            )
        unknown = set(callback_on_step_end_tensor_inputs) - set(self._callback_tensor_inputs)
        if unknown:
            raise ValueError(
                f"`callback_on_step_end_tensor_inputs` must be among {self._callback_tensor_inputs}, got {sorted(unknown)}."
            )

    def resolve_batch(
        self,
        prompt: str | list[str] | None,
        expression: str | list[str | None] | None,
        action_units: AUInput | None,
        negative_prompt: str | list[str] | None,
    ) -> tuple[int, list[str | None], list[str | None], torch.Tensor | None, list[str]]:
        """Checks that list inputs agree in length and broadcasts single values; returns `(batch_size,
        prompts, expressions, au_values (batch, num_aus) or None, negative_prompts)`."""
        au_values = self.au_space.to_tensor(action_units) if action_units is not None else None
        sizes = {
            "prompt": len(prompt) if isinstance(prompt, list) else None,
            "expression": len(expression) if isinstance(expression, list) else None,
            "action_units": au_values.shape[0] if au_values is not None and _is_batched(action_units) else None,
            "negative_prompt": len(negative_prompt) if isinstance(negative_prompt, list) else None,
        }
        given = {k: v for k, v in sizes.items() if v is not None}
        if len(set(given.values())) > 1:
            raise ValueError(f"Batch sizes of the inputs do not match: {given}.")
        batch_size = next(iter(given.values()), 1)
        if batch_size < 1:
            raise ValueError(f"Inputs must not be empty lists, got {given}.")
        prompts = prompt if isinstance(prompt, list) else [prompt] * batch_size
        expressions = expression if isinstance(expression, list) else [expression] * batch_size
        for i, name in enumerate(expressions):
            if name is not None:
                EXPRESSIONS.label_id(name, field=f"expression[{i}]" if isinstance(expression, list) else "expression")
        for i, text in enumerate(prompts):
            if text is not None and not isinstance(text, str):
                raise TypeError(f"`prompt[{i}]` must be a string or None, got {type(text).__name__}.")
        if all(p is None for p in prompts) and all(e is None for e in expressions) and au_values is None:
            raise ValueError("Give at least one of `prompt`, `expression` or `action_units`.")
        if au_values is not None and au_values.shape[0] == 1:
            au_values = au_values.expand(batch_size, -1)
        negatives = negative_prompt if isinstance(negative_prompt, list) else [negative_prompt or ""] * batch_size
        return batch_size, prompts, expressions, au_values, [n or "" for n in negatives]

    def prepare_generators(
        self, generator: torch.Generator | list[torch.Generator] | None, num_images: int
    ) -> tuple[list[torch.Generator], list[int]]:
        """One CPU generator per image. A list is used as given (one per image); a single generator draws
        one seed per image; `None` draws seeds from torch's global RNG."""
        if isinstance(generator, list):
            if len(generator) != num_images:
                raise ValueError(f"`generator` list has {len(generator)} entries for {num_images} images.")
            return generator, [g.initial_seed() for g in generator]
        seeds = torch.randint(0, 2**31 - 1, (num_images,), generator=generator).tolist()
        return [torch.Generator("cpu").manual_seed(s) for s in seeds], seeds

    def sample_prototype_action_units(
        self, expression: str, generator: torch.Generator, intensity: float, jitter: float
    ) -> torch.Tensor:  # (num_aus,)
        """EMFACS prototype of `expression` with Gaussian intensity jitter (std `jitter`) on its active AUs,
        clipped to the space's range. Occurrence spaces get no jitter."""
        space = self.au_space
        prototype = torch.tensor(list(expression_prototype(expression, space, intensity).values()))
        if space.kind == "occurrence" or jitter == 0:
            return prototype
        noise = torch.randn(prototype.shape, generator=generator) * jitter
        return torch.where(prototype > 0, (prototype + noise).clamp(0.5, space.max_value), prototype)

    def plan_conditions(
        self,
        prompts: list[str | None],
        expressions: list[str | None],
        au_values: torch.Tensor | None,
        num_images_per_prompt: int,
        generators: list[torch.Generator],
        prototype_intensity: float,
        au_jitter: float,
        enrich: bool,
    ) -> tuple[list[str], list[str | None], torch.Tensor | None, list[bool]]:
        """Per image: prompt used, target expression, AU vector (`(num_images, num_aus)`) and whether it
        has an AU condition (False -> null AU condition)."""
        space = self.au_space
        used_prompts, image_expressions, rows, has_au = [], [], [], []
        for i, g in enumerate(generators):
            p = i // num_images_per_prompt
            expression = expressions[p]
            if space is None:
                row = None
            elif au_values is not None:
                row = au_values[p]
            elif expression is not None:
                row = self.sample_prototype_action_units(expression, g, prototype_intensity, au_jitter)
            else:
                row = None
            au_dict = space.to_dicts(row)[0] if row is not None else None
            used_prompts.append(enrich_prompt(prompts[p], expression, au_dict) if enrich else prompts[p] or "")
            image_expressions.append(expression)
            rows.append(row if row is not None else torch.zeros(space.num_aus) if space else None)
            has_au.append(row is not None)
        au_matrix = torch.stack(rows).float() if space is not None else None
        return used_prompts, image_expressions, au_matrix, has_au

    def prepare_latents(
        self,
        num_images: int,
        height: int,
        width: int,
        generators: list[torch.Generator],
        latents: torch.Tensor | None,
        device: torch.device,
    ) -> torch.Tensor:  # (N, C, H / f, W / f), unit variance
        """Initial noise, drawn first from each image's generator so that it depends on the seed alone (not on
        whether AU jitter is drawn afterwards)."""
        shape = (
            num_images,
            self.unet.config.in_channels,
            height // self.vae_scale_factor,
            width // self.vae_scale_factor,
        )
        if latents is None:
            return randn_tensor(shape, generator=generators, device=device, dtype=torch.float32)
        if tuple(latents.shape) != shape:
            raise ValueError(f"`latents` must have shape {shape}, got {tuple(latents.shape)}.")
        return latents

    def prepare_extra_step_kwargs(self, generator: torch.Generator | None, eta: float) -> dict[str, Any]:
        params = set(inspect.signature(self.scheduler.step).parameters)
        kwargs: dict[str, Any] = {}
        if "eta" in params:
            kwargs["eta"] = eta
        if "generator" in params:
            kwargs["generator"] = generator
        return kwargs

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        expression: str | list[str | None] | None = None,
        action_units: AUInput | None = None,
        au_scale: float = 1.0,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        layout_image: ImageInput | list[ImageInput] | None = None,
        layout_strength: float = 1.0,
        semantic_guidance_scale: float = 0.0,
        semantic_guidance_window: tuple[float, float] = (0.6, 1.0),
        semantic_guidance_normalization: str = "global",
        semantic_guidance_interval: int = 2,
        semantic_guidance_decode: str = "guide_size",
        guidance_label_mapping: Mapping[str, str | None] | None = None,
        label_with_feranno: bool = True,
        enrich_prompt: bool = True,
        prototype_intensity: float = 3.0,
        au_jitter: float = 0.5,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[[DiffusionPipeline, int, int, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ) -> SynFERPipelineOutput | tuple:
        r"""
        Generates facial-expression images.

        Args:
            prompt (`str` or `list[str]`, *optional*): coarse description(s) of the person, e.g. "a photo of an
                elderly man with glasses". With `enrich_prompt`, expanded with the expression and AU words
                (`synfer_diffusers.prompts.enrich_prompt`).
            expression (`str` or `list[str | None]`, *optional*): target expression(s) from `EXPRESSIONS`. With
                no `action_units`, each image's AUs are the EMFACS prototype (`prototype_intensity`) with seeded
                Gaussian jitter (`au_jitter`) on its active AUs.
            action_units (`dict`, `list[dict]` or tensor `(batch, num_aus)`, *optional*): AU condition(s) in the
                UNet's AU space, by name. With AUs only (no expression), `expressions` in the output is `None`:
                the image has no target label.
            au_scale (`float`, defaults to 1.0): weight of the AU cross-attention branch; 0 disables it.
            height, width (`int`, *optional*): image size, divisible by the VAE scale; default from the UNet.
            num_inference_steps (`int`, defaults to 50), guidance_scale (`float`, defaults to 7.5): sampling
                steps and classifier-free guidance (`<= 1` disables it).
            negative_prompt (`str` or `list[str]`, *optional*): the unconditional prompt (default `""`).
            num_images_per_prompt (`int`, defaults to 1): images per batch entry.
            eta (`float`, defaults to 0.0): DDIM eta.
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*): see `SynFERPipelineOutput.seeds`;
                a list gives one generator per image (latents and AU jitter of image `i` come from entry `i`).
            latents (`torch.Tensor`, *optional*): initial noise `(num_images, C, H/f, W/f)`.
            layout_image (image or list of images, *optional*): layout initialisation (SynFER): each image (PIL,
                array or tensor, exactly `height` x `width`; one for all images, one per prompt, or one per image)
                is encoded and DDIM-inverted under the null condition (prompt `""`, null AU tokens, no CFG) to the
                noise level of step `(1 - layout_strength) * num_inference_steps`, and denoising starts there.
            layout_strength (`float` in [0, 1], defaults to 1.0): 1.0 inverts all the way (the paper's layout
                initialisation); smaller values keep more of the layout image and run fewer denoising steps.
            semantic_guidance_scale (`float`, defaults to 0.0): lambda_g of SynFER's semantic guidance; 0 disables it.
                In the guided steps, `x0_hat = (x_t - sqrt(1 - abar_t) eps_cond) / sqrt(abar_t)` is decoded by the
                VAE and scored by `guidance_classifier`, and the text embedding moves *against* the normalised
                gradient of the cross-entropy to the target expression (descent on the loss; the paper's
                transcribed formula shows a plus sign), `c <- c - lambda_g * g / ||g||`, carried to later steps.
                Images without a target expression are not guided.
            semantic_guidance_window (`tuple[float, float]`, defaults to (0.6, 1.0)): the steps denoised with a
                guided embedding, as fractions of the denoising steps run (0.6-1.0 = the last 40%). The gradients
                come from the conditional passes of the steps just before the window's steps (see
                `semantic_guidance_interval`), so guidance costs no extra UNet forward.
            semantic_guidance_normalization (`str`, defaults to "global"): "global" divides each image's gradient
                by its L2 norm over all tokens; "per_token" normalises every token's gradient separately.
            semantic_guidance_interval (`int`, defaults to 2): take a guidance gradient every `interval`-th step of
                the window (1: every step); each update is carried to all later steps, so a larger interval
                divides the guidance cost by about `interval` and moves the embedding fewer times.
            semantic_guidance_decode (`str`, defaults to "guide_size"): "guide_size" resizes `x0_hat` to the guide's
                input size (in latent pixels) before the VAE decode when the guide reads smaller images than the
                pipeline makes (e.g. 224 px guide, 512 px images: the decode and its backward cost ~5x less; the
                guide would downsample the decoded image anyway); "full" decodes at full size.
            guidance_label_mapping (`dict`, *optional*): renames the guide's labels onto `EXPRESSIONS`
                (see `synfer_diffusers.facs.map_classifier_labels`).
            label_with_feranno (`bool`, defaults to True): with a `feranno_head` component, label each image from
                its final denoising step (`feranno_probabilities` in the output).
            enrich_prompt (`bool`, defaults to True): expand prompts with expression and AU words.
            output_type (`str`, defaults to "pil"): "pil", "np", "pt" or "latent".
            return_dict (`bool`, defaults to True): else return `(images, expressions, action_units, prompts, seeds,
                feranno_probabilities)`.
            callback_on_step_end (`Callable`, *optional*): `fn(pipe, step, timestep, callback_kwargs) -> dict`,
                called after each step with the tensors named in `callback_on_step_end_tensor_inputs`; returned
                tensors replace them.

        Returns:
            [`SynFERPipelineOutput`] or `tuple`.
        """
        callback_inputs = callback_on_step_end_tensor_inputs or ["latents"]
        height = height or self.unet.config.sample_size * self.vae_scale_factor
        width = width or self.unet.config.sample_size * self.vae_scale_factor
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"`output_type` must be one of 'pil', 'np', 'pt', 'latent', got {output_type!r}.")
        self.check_inputs(
            height, width, num_images_per_prompt, au_scale, guidance_scale, action_units, callback_inputs
        )
        self.check_guidance_inputs(
            semantic_guidance_scale, semantic_guidance_window, semantic_guidance_normalization,
            semantic_guidance_interval, semantic_guidance_decode, layout_strength,
        )  # fmt: skip
        if layout_image is not None and latents is not None:
            raise ValueError("Pass either `latents` or `layout_image`, not both.")
        batch_size, prompts, expressions, au_values, negatives = self.resolve_batch(
            prompt, expression, action_units, negative_prompt
        )
        num_images = batch_size * num_images_per_prompt
        generators, seeds = self.prepare_generators(generator, num_images)
        device = self._execution_device
        latents = self.prepare_latents(num_images, height, width, generators, latents, device)
        used_prompts, image_expressions, au_matrix, has_au = self.plan_conditions(
            prompts, expressions, au_values, num_images_per_prompt, generators, prototype_intensity, au_jitter,
            enrich_prompt,
        )  # fmt: skip
        do_cfg = guidance_scale > 1.0

        prompt_embeds = self.encode_prompt(used_prompts, device)  # (N, L, D)
        negative_prompt_embeds = None
        if do_cfg:
            negative_prompt_embeds = self.encode_prompt(
                [n for n in negatives for _ in range(num_images_per_prompt)], device
            )
        au_embeds = self.encode_au_condition(au_matrix, has_au, device)  # (N, T, D) or None

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        if layout_image is None:
            latents = latents.to(device=device, dtype=prompt_embeds.dtype) * self.scheduler.init_noise_sigma
        else:
            images = self.preprocess_layout_images(layout_image, batch_size, num_images_per_prompt, height, width)
            timesteps = timesteps[len(timesteps) - round(len(timesteps) * layout_strength) :]
            latents = self.invert_layout(images.to(device), timesteps).to(prompt_embeds.dtype)
            if hasattr(self.scheduler, "set_begin_index"):
                self.scheduler.set_begin_index(num_inference_steps - len(timesteps))
        extra_step_kwargs = self.prepare_extra_step_kwargs(generators[0], eta)

        guided_steps = set()
        if semantic_guidance_scale > 0:
            guide = self.prepare_semantic_guidance(
                image_expressions, guidance_label_mapping, semantic_guidance_decode, latents.shape[-2:], device
            )
            guided_steps = semantic_guidance_gradient_steps(
                len(timesteps), semantic_guidance_window, semantic_guidance_interval
            )
        label_in_loop = self.feranno_head is not None and label_with_feranno
        recorder = UNetFeatureRecorder(self.unet) if label_in_loop else contextlib.nullcontext()
        with recorder:
            with self.progress_bar(total=len(timesteps)) as progress_bar:
                for i, t in enumerate(timesteps):
                    if i in guided_steps:
                        noise_pred, prompt_embeds = self.semantic_guidance_step(
                            latents, t, prompt_embeds, negative_prompt_embeds, au_embeds, au_scale, guidance_scale,
                            guide, semantic_guidance_scale, semantic_guidance_normalization,
                        )  # fmt: skip
                    else:
                        branches = self.predict_noise_branches(
                            latents, t, prompt_embeds, negative_prompt_embeds, au_embeds, au_scale
                        )
                        noise_pred = combine_guidance(*branches, guidance_scale)
                    latents = self.scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=False)[0]
                    if callback_on_step_end is not None:
                        local_tensors = {
                            "latents": latents, "prompt_embeds": prompt_embeds,
                            "negative_prompt_embeds": negative_prompt_embeds, "au_embeds": au_embeds,
                        }  # fmt: skip
                        outputs = callback_on_step_end(self, i, t, {k: local_tensors[k] for k in callback_inputs})
                        latents = outputs.pop("latents", latents)
                        prompt_embeds = outputs.pop("prompt_embeds", prompt_embeds)
                        negative_prompt_embeds = outputs.pop("negative_prompt_embeds", negative_prompt_embeds)
                        au_embeds = outputs.pop("au_embeds", au_embeds)
                    progress_bar.update()
            feranno_probabilities = self.feranno_label(recorder.features(), num_images) if label_in_loop else None

        images = latents if output_type == "latent" else self.decode_latents(latents, output_type)
        self.maybe_free_model_hooks()
        au_dicts = (
            [d if keep else None for d, keep in zip(self.au_space.to_dicts(au_matrix), has_au)]
            if au_matrix is not None
            else [None] * num_images
        )
        if not return_dict:
            return images, image_expressions, au_dicts, used_prompts, seeds, feranno_probabilities
        return SynFERPipelineOutput(
            images=images, expressions=image_expressions, action_units=au_dicts, prompts=used_prompts, seeds=seeds,
            feranno_probabilities=feranno_probabilities,
        )  # fmt: skip

    def check_guidance_inputs(
        self,
        semantic_guidance_scale: float,
        semantic_guidance_window: tuple[float, float],
        semantic_guidance_normalization: str,
        semantic_guidance_interval: int,
        semantic_guidance_decode: str,
        layout_strength: float,
    ) -> None:
        if not isinstance(semantic_guidance_scale, (int, float)) or not (
            math.isfinite(semantic_guidance_scale) and semantic_guidance_scale >= 0
        ):
            raise ValueError(
                f"`semantic_guidance_scale` must be a finite number >= 0, got {semantic_guidance_scale!r}."
            )
        window = tuple(semantic_guidance_window) if isinstance(semantic_guidance_window, (tuple, list)) else ()
        if (
            len(window) != 2
            or not all(isinstance(w, (int, float)) and 0 <= w <= 1 for w in window)
            or window[0] >= window[1]
        ):
            raise ValueError(
                f"`semantic_guidance_window` must be (start, end) with 0 <= start < end <= 1, got {semantic_guidance_window!r}."
            )
        if semantic_guidance_normalization not in SG_NORMALIZATIONS:
            raise ValueError(
                f"`semantic_guidance_normalization` must be one of {SG_NORMALIZATIONS}, got {semantic_guidance_normalization!r}."
            )
        if (
            isinstance(semantic_guidance_interval, bool)
            or not isinstance(semantic_guidance_interval, int)
            or (semantic_guidance_interval < 1)
        ):
            raise ValueError(f"`semantic_guidance_interval` must be an int >= 1, got {semantic_guidance_interval!r}.")
        if semantic_guidance_decode not in SG_DECODES:
            raise ValueError(
                f"`semantic_guidance_decode` must be one of {SG_DECODES}, got {semantic_guidance_decode!r}."
            )
        if semantic_guidance_scale > 0 and self.guidance_classifier is None:
            raise ValueError(
                "`semantic_guidance_scale` > 0 needs a `guidance_classifier` component (pass one to the pipeline)."
            )
        if not isinstance(layout_strength, (int, float)) or not 0 <= layout_strength <= 1:
            raise ValueError(f"`layout_strength` must be in [0, 1], got {layout_strength!r}.")

    def preprocess_layout_images(
        self,
        layout_image: ImageInput | list[ImageInput],
        batch_size: int,
        num_images_per_prompt: int,
        height: int,
        width: int,
    ) -> torch.Tensor:  # (N, 3, H, W) in [-1, 1]
        """One layout image for all images, one per prompt, or one per image; each exactly `height` x `width`."""
        images = list(layout_image) if isinstance(layout_image, list) else [layout_image]
        num_images = batch_size * num_images_per_prompt
        if len(images) not in (1, batch_size, num_images):
            raise ValueError(
                f"`layout_image` must be 1, {batch_size} (one per prompt) or {num_images} (one per image) images, "
                f"got {len(images)}."
            )
        tensors = [self.image_processor.preprocess(image, height=None, width=None) for image in images]
        for i, tensor in enumerate(tensors):
            if tuple(tensor.shape[-2:]) != (height, width):
                raise ValueError(f"`layout_image[{i}]` is {tuple(tensor.shape[-2:])}, expected ({height}, {width}).")
        stacked = torch.cat(tensors)
        repeats = num_images // stacked.shape[0]
        return stacked.repeat_interleave(repeats, dim=0)

    def invert_layout(self, images: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:  # (N, C, h, w)
        """DDIM inversion (eta = 0) of images to the noise level of `timesteps[0]`, under the null condition
        (prompt `""`, null AU tokens) without CFG:
        `x_next = sqrt(abar_next) * (x - sqrt(1 - abar) eps) / sqrt(abar) + sqrt(1 - abar_next) * eps`,
        starting from the clean latent (`abar = 1`), with `eps = eps(x, t_next)`."""
        vae_dtype = next(self.vae.parameters()).dtype
        latents = self.vae.encode(images.to(vae_dtype)).latent_dist.mean * self.vae.config.scaling_factor
        null_text = self.encode_prompt([""], latents.device).expand(latents.shape[0], -1, -1)
        au_kwargs = {}
        if self.au_space is not None:
            au_kwargs = {"au_embeds": self.unet.encode_action_units(None, batch_size=latents.shape[0])}
        alphas = self.scheduler.alphas_cumprod.to(latents.device)
        abar = torch.tensor(1.0, device=latents.device)
        latents = latents.to(null_text.dtype)
        for t in timesteps.flip(0):
            eps = self.unet(latents, t, encoder_hidden_states=null_text, return_dict=False, **au_kwargs)[0]
            abar_next = alphas[t]
            x0 = (latents - (1 - abar).sqrt() * eps) / abar.sqrt()
            latents = abar_next.sqrt() * x0 + (1 - abar_next).sqrt() * eps
            abar = abar_next
        return latents

    def prepare_semantic_guidance(
        self,
        expressions: list[str | None],
        label_mapping: Mapping[str, str | None] | None,
        decode: str,
        latent_size: tuple[int, int],
        device: torch.device,
    ) -> dict[str, Any]:
        """Target indices (`-100` = not guided), the guide's label order, its preprocessing constants and the latent
        size at which `x0_hat` is decoded (`None`: as it is)."""
        if all(e is None for e in expressions):
            raise ValueError("Semantic guidance needs target expressions: pass `expression`.")
        index_map = map_classifier_labels(
            self.guidance_classifier.config.id2label, label_mapping, field="guidance_label_mapping"
        )
        processor = self.guidance_image_processor
        size = getattr(processor, "size", None) or {}
        side = size.get("shortest_edge")
        target_size = (size["height"], size["width"]) if "height" in size else (side, side) if side else None
        mean = getattr(processor, "image_mean", None) or [0.5, 0.5, 0.5]
        std = getattr(processor, "image_std", None) or [0.5, 0.5, 0.5]
        return {
            "targets": torch.tensor([EXPRESSIONS.index(e) if e else -100 for e in expressions], device=device),
            "index_map": index_map,
            "size": target_size,
            "decode_size": guidance_decode_size(target_size, tuple(latent_size), self.vae_scale_factor, decode),
            "mean": torch.tensor(mean, device=device).view(1, -1, 1, 1),
            "std": torch.tensor(std, device=device).view(1, -1, 1, 1),
        }

    def guidance_loss(self, images: torch.Tensor, guide: dict[str, Any]) -> torch.Tensor:
        """Cross-entropy of the guide on images in [0, 1] `(N, 3, H, W)`, preprocessed in torch (resize + normalise),
        summed over guided images."""
        classifier = self.guidance_classifier
        dtype = next(classifier.parameters()).dtype
        if guide["size"] is not None and tuple(images.shape[-2:]) != guide["size"]:
            images = F.interpolate(images, size=guide["size"], mode="bilinear", antialias=True, align_corners=False)
        pixels = ((images - guide["mean"]) / guide["std"]).to(dtype)
        logits = classifier(pixel_values=pixels).logits.float()  # (N, num_labels)
        logits = classifier_logits_to_expressions(logits, guide["index_map"])  # (N, 7)
        return F.cross_entropy(logits, guide["targets"], ignore_index=-100, reduction="sum")

    def semantic_guidance_step(
        self,
        latents: torch.Tensor,  # (N, C, h, w)
        t: torch.Tensor,
        prompt_embeds: torch.Tensor,  # (N, L, D)
        negative_prompt_embeds: torch.Tensor | None,
        au_embeds: torch.Tensor | None,
        au_scale: float,
        guidance_scale: float,
        guide: dict[str, Any],
        semantic_guidance_scale: float,
        normalization: str,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One guided step: the conditional UNet pass runs with gradients and serves both the CFG noise prediction
        and the guidance gradient, so a guided step costs one backward pass of the conditional half, a VAE decode
        and a classifier pass more than a plain step. The unconditional half runs in its own call without
        gradients (batching it into the graph would double the backward at real sizes). Returns `(noise_pred,
        updated prompt_embeds)`."""
        with torch.enable_grad():
            text = prompt_embeds.detach().requires_grad_(True)
            _, eps_cond = self.predict_noise_branches(latents, t, text, None, au_embeds, au_scale)
            abar = self.scheduler.alphas_cumprod.to(latents.device)[t]
            x0_hat = (latents - (1 - abar).sqrt() * eps_cond) / abar.sqrt()  # (N, C, h, w)
            if guide["decode_size"] is not None:
                resized = F.interpolate(x0_hat.float(), size=guide["decode_size"], mode="bilinear", antialias=True)
                x0_hat = resized.to(x0_hat.dtype)  # (N, C, h', w'); antialiased resizing has no bf16 CPU kernel
            images = self.vae.decode(x0_hat / self.vae.config.scaling_factor, return_dict=False)[0]
            loss = self.guidance_loss((images.float() / 2 + 0.5).clamp(0, 1), guide)
            grad = torch.autograd.grad(loss, text)[0]  # (N, L, D)
        dims = (-1,) if normalization == "per_token" else (-2, -1)
        step = grad / grad.norm(dim=dims, keepdim=True).clamp_min(1e-12)
        eps_uncond = None
        if negative_prompt_embeds is not None:
            null_au = None if au_embeds is None else self.unet.encode_action_units(None, batch_size=latents.shape[0])
            _, eps_uncond = self.predict_noise_branches(latents, t, negative_prompt_embeds, None, null_au, au_scale)
        noise_pred = combine_guidance(eps_uncond, eps_cond.detach(), guidance_scale)
        return noise_pred, (prompt_embeds - semantic_guidance_scale * step).to(prompt_embeds.dtype)

    def feranno_label(self, features: UNetFeatures, num_images: int) -> torch.Tensor:  # (N, 7) probabilities
        """FERAnno probabilities from the features of the last UNet call; with CFG that call's batch is
        `[uncond; cond]` and the unconditional half (prompt `""` + null AU, FERAnno's training condition) is read."""
        if features.batch_size == 2 * num_images:
            features = features.select(slice(None, num_images))
        return self.feranno_head(features).logits.float().softmax(-1)

    def encode_au_condition(
        self, au_matrix: torch.Tensor | None, has_au: list[bool], device: torch.device
    ) -> torch.Tensor | None:  # (N, T, D)
        """AU tokens per image; rows without an AU condition get the null AU tokens."""
        if au_matrix is None:
            return None
        drop = torch.tensor([not keep for keep in has_au], device=device)
        return self.unet.encode_action_units(au_matrix.to(device), drop_mask=drop)

    def predict_noise_branches(
        self,
        latents: torch.Tensor,  # (N, C, h, w)
        t: torch.Tensor,
        prompt_embeds: torch.Tensor,  # (N, L, D)
        negative_prompt_embeds: torch.Tensor | None,  # (N, L, D) when CFG
        au_embeds: torch.Tensor | None,  # (N, T, D)
        au_scale: float,
    ) -> tuple[torch.Tensor | None, torch.Tensor]:  # (N, C, h, w) each; no unconditional branch without CFG
        """The unconditional (negative prompt + null AU) and conditional noise predictions of one UNet call."""
        do_cfg = negative_prompt_embeds is not None
        model_input = torch.cat([latents, latents]) if do_cfg else latents
        model_input = self.scheduler.scale_model_input(model_input, t)
        text = torch.cat([negative_prompt_embeds, prompt_embeds]) if do_cfg else prompt_embeds
        au_kwargs = {}
        if au_embeds is not None:
            null = self.unet.encode_action_units(None, batch_size=au_embeds.shape[0]).to(au_embeds)
            au_kwargs = {"au_embeds": torch.cat([null, au_embeds]) if do_cfg else au_embeds, "au_scale": au_scale}
        noise_pred = self.unet(model_input, t, encoder_hidden_states=text, return_dict=False, **au_kwargs)[0]
        if not do_cfg:
            return None, noise_pred
        uncond, cond = noise_pred.chunk(2)
        return uncond, cond

    def decode_latents(self, latents: torch.Tensor, output_type: str) -> Any:
        image = self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False)[0]  # (N, 3, H, W)
        return self.image_processor.postprocess(image, output_type=output_type)


def combine_guidance(
    uncond: torch.Tensor | None, cond: torch.Tensor, guidance_scale: float
) -> torch.Tensor:  # (N, C, h, w)
    """Classifier-free guidance `uncond + w (cond - uncond)`; `cond` alone without an unconditional branch."""
    return cond if uncond is None else uncond + guidance_scale * (cond - uncond)


def semantic_guidance_steps(num_steps: int, window: tuple[float, float]) -> set[int]:
    """Indices of the steps inside `window` (fractions of `num_steps`): `ceil(start * n) <= i < ceil(end * n)`."""
    return set(range(math.ceil(window[0] * num_steps), math.ceil(window[1] * num_steps)))


def semantic_guidance_gradient_steps(num_steps: int, window: tuple[float, float], interval: int = 1) -> set[int]:
    """Steps whose conditional pass also yields the guidance gradient: the step before every `interval`-th step
    of the window, starting with its first, so that the window is denoised with embeddings updated by earlier
    steps (a gradient taken at the last step could not act on anything)."""
    steps = sorted(i - 1 for i in semantic_guidance_steps(num_steps, window) if i >= 1)
    return set(steps[::interval])


def guidance_decode_size(
    guide_size: tuple[int, int] | None, latent_size: tuple[int, int], vae_scale_factor: int, decode: str
) -> tuple[int, int] | None:
    """Latent size `(h, w)` at which `x0_hat` is decoded for the guide, or None to decode it as it is: with
    `decode="guide_size"` and a guide reading smaller images than the decoder makes, the smallest latent whose
    decode covers the guide's input."""
    if decode == "full" or guide_size is None:
        return None
    size = tuple(min(math.ceil(g / vae_scale_factor), n) for g, n in zip(guide_size, latent_size))
    return None if size == latent_size else size


def _is_batched(action_units: AUInput) -> bool:
    if isinstance(action_units, (torch.Tensor, np.ndarray)):
        return action_units.ndim == 2
    return not isinstance(action_units, Mapping)


SynFERPipeline.__call__.__doc__ = (SynFERPipeline.__call__.__doc__ or "") + EXAMPLE_DOC_STRING
