"""SynFERPipeline: text + action-unit controlled facial-expression synthesis (SynFER stage 2, sampling)."""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DPMSolverMultistepScheduler, UNet2DConditionModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor
from diffusers.loaders import StableDiffusionLoraLoaderMixin, TextualInversionLoaderMixin
from diffusers.models.lora import adjust_lora_scale_text_encoder
from diffusers.pipelines.pipeline_utils import DiffusionPipeline, StableDiffusionMixin
from diffusers.utils import USE_PEFT_BACKEND, replace_example_docstring, scale_lora_layers, unscale_lora_layers
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPTextModel, CLIPTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.image_processing_utils import BaseImageProcessor

from ...facs import EXPRESSIONS, AUSpace, classifier_expression_probabilities
from ...loaders.au_adapter import AUAdapterLoaderMixin
from ...models.feature_extraction import UNetFeatureRecorder, UNetFeatures
from ...models.feranno import FERAnnoHead
from ...models.unet_au import AUConditionedUNet2DConditionModel
from ..hub_mixin import ModelCardPipelineMixin
from .conditions import AUInput, GeneratorInput, plan_conditions, resolve_batch
from .editing import EditingMixin
from .layout_initialisation import LayoutImageInput, LayoutInitialisationMixin
from .pipeline_feranno import FERAnnoPipeline
from .pipeline_output import OUTPUT_TYPES, SynFERPipelineOutput
from .prediction import combine_guidance
from .semantic_guidance import (
    DEFAULT_SG_INTERVAL,
    DEFAULT_SG_WINDOW,
    SemanticGuidanceMixin,
    check_semantic_guidance_inputs,
    semantic_guidance_gradient_steps,
)

logger = logging.getLogger(__name__)

SEMANTIC_GUIDANCE_ARGUMENTS = ("scale", "window", "normalization", "interval", "decode")
"""`semantic_guidance_<name>` arguments, in the order of `check_inputs`'s `semantic_guidance` tuple."""

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


class SynFERPipeline(
    ModelCardPipelineMixin,
    DiffusionPipeline,
    StableDiffusionMixin,
    TextualInversionLoaderMixin,
    StableDiffusionLoraLoaderMixin,
    AUAdapterLoaderMixin,
    SemanticGuidanceMixin,
    LayoutInitialisationMixin,
    EditingMixin,
):
    r"""
    Facial-expression generation controlled by text and facial action units (SynFER, arXiv 2410.09865).

    Follows the call contract of diffusers' text-to-image pipelines (`prompt_embeds`, `negative_prompt_embeds`,
    `cross_attention_kwargs`, `callback_on_step_end` with [`~diffusers.callbacks.PipelineCallback`]s, the generator
    convention and the [`~diffusers.pipelines.StableDiffusionMixin`] helpers) and adds AU control, prompt enrichment,
    semantic guidance, layout initialisation, in-loop FERAnno labels and expression editing ([`edit`], see
    `editing.py`). Classifier-free guidance contrasts the
    conditional branch (prompt + AU tokens) with the unconditional one (negative prompt, default `""`, + the UNet's
    learned null AU condition).

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
        feranno_head ([`FERAnnoHead`], *optional*): labels each image (`feranno_probabilities`) as a
            [`FERAnnoPipeline`] with this head would label its final latents. Where the last denoising step's
            unconditional CFG half is FERAnno's training pass (the head's t, prompt `""`, null AU at scale 1: e.g.
            DDIM "leading" spacing with CFG), the head reads that step's features at the cost of one small head pass;
            otherwise one FERAnno pass on the final latents follows the loop.
        au_estimator ([`~transformers.PreTrainedModel`], *optional*): an AU regressor
            (`AutoModelForImageClassification` with `problem_type="regression"` and `config.au_names`, or `id2label`,
            naming the UNet's AUs, as `examples/train_fer_classifier.py --task action_units` trains one): estimates
            a source face's AUs in [`~SynFERPipeline.edit`] when `source_action_units` is not given.
        au_estimator_image_processor ([`~transformers.image_processing_utils.BaseImageProcessor`], *optional*): its
            image processor.

    The pipeline puts its models in eval mode (as `from_pretrained` does); a training loop that builds one for
    validation calls `unet.train()` again afterwards.
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components = [
        "guidance_classifier", "guidance_image_processor", "feranno_head", "au_estimator", "au_estimator_image_processor"
    ]  # fmt: skip
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds", "au_embeds"]
    model_card_template = "synfer_pipeline.md"
    _cross_attention_kwargs: dict[str, Any] | None = None
    _interrupt = False

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
        au_estimator: PreTrainedModel | None = None,
        au_estimator_image_processor: BaseImageProcessor | None = None,
    ):
        super().__init__()
        self.register_modules(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
            guidance_classifier=guidance_classifier, guidance_image_processor=guidance_image_processor,
            feranno_head=feranno_head, au_estimator=au_estimator,
            au_estimator_image_processor=au_estimator_image_processor,
        )  # fmt: skip
        if feranno_head is not None and unet is not None:
            feranno_head.check_unet(unet)
        for module in (vae, text_encoder, unet, guidance_classifier, feranno_head, au_estimator):
            if module is not None:
                module.eval()  # as `from_pretrained` leaves them, so built and reloaded pipelines match exactly
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1) if vae is not None else 8
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)

    @property
    def au_space(self) -> AUSpace | None:
        """The UNet's AU space, or `None` for a UNet without an AU adapter (read by attribute, so a UNet class loaded
        as remote code by stock diffusers counts too)."""
        return getattr(self.unet, "au_space", None) if hasattr(self.unet, "encode_action_units") else None

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

    # Copied from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion.StableDiffusionPipeline.encode_prompt
    def encode_prompt(
        self,
        prompt,
        device,
        num_images_per_prompt,
        do_classifier_free_guidance,
        negative_prompt=None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        lora_scale: float | None = None,
        clip_skip: int | None = None,
    ):
        r"""
        Encodes the prompt into text encoder hidden states.

        Args:
            prompt (`str` or `list[str]`, *optional*):
                prompt to be encoded
            device: (`torch.device`):
                torch device
            num_images_per_prompt (`int`):
                number of images that should be generated per prompt
            do_classifier_free_guidance (`bool`):
                whether to use classifier free guidance or not
            negative_prompt (`str` or `list[str]`, *optional*):
                The prompt or prompts not to guide the image generation. If not defined, one has to pass
                `negative_prompt_embeds` instead. Ignored when not using guidance (i.e., ignored if `guidance_scale` is
                less than `1`).
            prompt_embeds (`torch.Tensor`, *optional*):
                Pre-generated text embeddings. Can be used to easily tweak text inputs, *e.g.* prompt weighting. If not
                provided, text embeddings will be generated from `prompt` input argument.
            negative_prompt_embeds (`torch.Tensor`, *optional*):
                Pre-generated negative text embeddings. Can be used to easily tweak text inputs, *e.g.* prompt
                weighting. If not provided, negative_prompt_embeds will be generated from `negative_prompt` input
                argument.
            lora_scale (`float`, *optional*):
                A LoRA scale that will be applied to all LoRA layers of the text encoder if LoRA layers are loaded.
            clip_skip (`int`, *optional*):
                Number of layers to be skipped from CLIP while computing the prompt embeddings. A value of 1 means that
                the output of the pre-final layer will be used for computing the prompt embeddings.
        """
        # set lora scale so that monkey patched LoRA
        # function of text encoder can correctly access it
        if lora_scale is not None and isinstance(self, StableDiffusionLoraLoaderMixin):
            self._lora_scale = lora_scale

            # dynamically adjust the LoRA scale
            if not USE_PEFT_BACKEND:
                adjust_lora_scale_text_encoder(self.text_encoder, lora_scale)
            else:
                scale_lora_layers(self.text_encoder, lora_scale)

        if prompt is not None and isinstance(prompt, str):
            batch_size = 1
        elif prompt is not None and isinstance(prompt, list):
            batch_size = len(prompt)
        else:
            batch_size = prompt_embeds.shape[0]

        if prompt_embeds is None:
            # textual inversion: process multi-vector tokens if necessary
            if isinstance(self, TextualInversionLoaderMixin):
                prompt = self.maybe_convert_prompt(prompt, self.tokenizer)

            text_inputs = self.tokenizer(
                prompt,
                padding="max_length",
                max_length=self.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            )
            text_input_ids = text_inputs.input_ids
            untruncated_ids = self.tokenizer(prompt, padding="longest", return_tensors="pt").input_ids

            if untruncated_ids.shape[-1] >= text_input_ids.shape[-1] and not torch.equal(
                text_input_ids, untruncated_ids
            ):
                removed_text = self.tokenizer.batch_decode(
                    untruncated_ids[:, self.tokenizer.model_max_length - 1 : -1]
                )
                logger.warning(
                    "The following part of your input was truncated because CLIP can only handle sequences up to"
                    f" {self.tokenizer.model_max_length} tokens: {removed_text}"
                )

            if hasattr(self.text_encoder.config, "use_attention_mask") and self.text_encoder.config.use_attention_mask:
                attention_mask = text_inputs.attention_mask.to(device)
            else:
                attention_mask = None

            if clip_skip is None:
                prompt_embeds = self.text_encoder(text_input_ids.to(device), attention_mask=attention_mask)
                prompt_embeds = prompt_embeds[0]
            else:
                prompt_embeds = self.text_encoder(
                    text_input_ids.to(device), attention_mask=attention_mask, output_hidden_states=True
                )
                # Access the `hidden_states` first, that contains a tuple of
                # all the hidden states from the encoder layers. Then index into
                # the tuple to access the hidden states from the desired layer.
                prompt_embeds = prompt_embeds[-1][-(clip_skip + 1)]
                # We also need to apply the final LayerNorm here to not mess with the
                # representations. The `last_hidden_states` that we typically use for
                # obtaining the final prompt representations passes through the LayerNorm
                # layer.
                prompt_embeds = self.text_encoder.text_model.final_layer_norm(prompt_embeds)

        if self.text_encoder is not None:
            prompt_embeds_dtype = self.text_encoder.dtype
        elif self.unet is not None:
            prompt_embeds_dtype = self.unet.dtype
        else:
            prompt_embeds_dtype = prompt_embeds.dtype

        prompt_embeds = prompt_embeds.to(dtype=prompt_embeds_dtype, device=device)

        bs_embed, seq_len, _ = prompt_embeds.shape
        # duplicate text embeddings for each generation per prompt, using mps friendly method
        prompt_embeds = prompt_embeds.repeat(1, num_images_per_prompt, 1)
        prompt_embeds = prompt_embeds.view(bs_embed * num_images_per_prompt, seq_len, -1)

        # get unconditional embeddings for classifier free guidance
        if do_classifier_free_guidance and negative_prompt_embeds is None:
            uncond_tokens: list[str]
            if negative_prompt is None:
                uncond_tokens = [""] * batch_size
            elif prompt is not None and type(prompt) is not type(negative_prompt):
                raise TypeError(
                    f"`negative_prompt` should be the same type to `prompt`, but got {type(negative_prompt)} !="
                    f" {type(prompt)}."
                )
            elif isinstance(negative_prompt, str):
                uncond_tokens = [negative_prompt]
            elif batch_size != len(negative_prompt):
                raise ValueError(
                    f"`negative_prompt`: {negative_prompt} has batch size {len(negative_prompt)}, but `prompt`:"
                    f" {prompt} has batch size {batch_size}. Please make sure that passed `negative_prompt` matches"
                    " the batch size of `prompt`."
                )
            else:
                uncond_tokens = negative_prompt

            # textual inversion: process multi-vector tokens if necessary
            if isinstance(self, TextualInversionLoaderMixin):
                uncond_tokens = self.maybe_convert_prompt(uncond_tokens, self.tokenizer)

            max_length = prompt_embeds.shape[1]
            uncond_input = self.tokenizer(
                uncond_tokens,
                padding="max_length",
                max_length=max_length,
                truncation=True,
                return_tensors="pt",
            )

            if hasattr(self.text_encoder.config, "use_attention_mask") and self.text_encoder.config.use_attention_mask:
                attention_mask = uncond_input.attention_mask.to(device)
            else:
                attention_mask = None

            negative_prompt_embeds = self.text_encoder(
                uncond_input.input_ids.to(device),
                attention_mask=attention_mask,
            )
            negative_prompt_embeds = negative_prompt_embeds[0]

        if do_classifier_free_guidance:
            # duplicate unconditional embeddings for each generation per prompt, using mps friendly method
            seq_len = negative_prompt_embeds.shape[1]

            negative_prompt_embeds = negative_prompt_embeds.to(dtype=prompt_embeds_dtype, device=device)

            negative_prompt_embeds = negative_prompt_embeds.repeat(1, num_images_per_prompt, 1)
            negative_prompt_embeds = negative_prompt_embeds.view(batch_size * num_images_per_prompt, seq_len, -1)

        if self.text_encoder is not None:
            if isinstance(self, StableDiffusionLoraLoaderMixin) and USE_PEFT_BACKEND:
                # Retrieve the original scale by scaling back the LoRA layers
                unscale_lora_layers(self.text_encoder, lora_scale)

        return prompt_embeds, negative_prompt_embeds

    def check_inputs(
        self,
        prompt: str | list[str] | None,
        height: int,
        width: int,
        num_images_per_prompt: int,
        au_scale: float,
        guidance_scale: float,
        action_units: AUInput | None,
        negative_prompt: str | list[str] | None,
        prompt_embeds: torch.Tensor | None,
        negative_prompt_embeds: torch.Tensor | None,
        latents: torch.Tensor | None,
        layout_image: LayoutImageInput | list[LayoutImageInput] | None,
        layout_strength: float,
        semantic_guidance: tuple[float, tuple[float, float], str, int, str],
        output_type: str,
        callback_on_step_end_tensor_inputs: list[str],
        num_inference_steps: int,
    ) -> None:
        """Raises a concise error naming the first invalid argument; `semantic_guidance` is `(scale, window,
        normalization, interval, decode)`."""
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be an int >= 1, got {num_inference_steps!r}.")
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
        if prompt is not None and prompt_embeds is not None:
            raise ValueError("Pass either `prompt` or `prompt_embeds`, not both.")
        if prompt is not None and not isinstance(prompt, (str, list)):
            raise ValueError(f"`prompt` must be a str or a list of str, got {type(prompt).__name__}.")
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError("Pass either `negative_prompt` or `negative_prompt_embeds`, not both.")
        for name, embeds in (("prompt_embeds", prompt_embeds), ("negative_prompt_embeds", negative_prompt_embeds)):
            if embeds is not None and embeds.ndim != 3:
                raise ValueError(f"`{name}` must have shape (batch, tokens, dim), got {tuple(embeds.shape)}.")
        if prompt_embeds is not None and negative_prompt_embeds is not None:
            if prompt_embeds.shape != negative_prompt_embeds.shape:
                raise ValueError(
                    f"`prompt_embeds` {tuple(prompt_embeds.shape)} and `negative_prompt_embeds` "
                    f"{tuple(negative_prompt_embeds.shape)} must have the same shape."
                )
        if layout_image is not None and latents is not None:
            raise ValueError("Pass either `latents` or `layout_image`, not both.")
        if not isinstance(layout_strength, (int, float)) or not 0 <= layout_strength <= 1:
            raise ValueError(f"`layout_strength` must be in [0, 1], got {layout_strength!r}.")
        check_semantic_guidance_inputs(*semantic_guidance)
        if semantic_guidance[0] > 0 and self.guidance_classifier is None:
            raise ValueError(
                "`semantic_guidance_scale` > 0 needs a `guidance_classifier` component (pass one to the pipeline)."
            )
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {OUTPUT_TYPES}, got {output_type!r}.")
        unknown = set(callback_on_step_end_tensor_inputs) - set(self._callback_tensor_inputs)
        if unknown:
            raise ValueError(
                f"`callback_on_step_end_tensor_inputs` must be among {self._callback_tensor_inputs}, got {sorted(unknown)}."
            )

    # Adapted from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion.StableDiffusionPipeline.prepare_latents
    def prepare_latents(
        self,
        batch_size: int,
        num_channels_latents: int,
        height: int,
        width: int,
        dtype: torch.dtype,
        device: torch.device,
        generator: GeneratorInput,
        latents: torch.Tensor | None = None,
    ) -> torch.Tensor:  # (N, C, H / f, W / f), scaled by the scheduler's initial noise sigma
        shape = (batch_size, num_channels_latents, int(height) // self.vae_scale_factor, int(width) // self.vae_scale_factor)
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"`generator` list has {len(generator)} entries for {batch_size} images.")
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"`latents` must have shape {shape}, got {tuple(latents.shape)}.")
        else:
            latents = latents.to(device=device, dtype=dtype)
        return latents * self.scheduler.init_noise_sigma

    # Copied from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion.StableDiffusionPipeline.prepare_extra_step_kwargs
    def prepare_extra_step_kwargs(self, generator, eta):
        # prepare extra kwargs for the scheduler step, since not all schedulers have the same signature
        # eta (η) is only used with the DDIMScheduler, it will be ignored for other schedulers.
        # eta corresponds to η in DDIM paper: https://huggingface.co/papers/2010.02502
        # and should be between [0, 1]

        accepts_eta = "eta" in set(inspect.signature(self.scheduler.step).parameters.keys())
        extra_step_kwargs = {}
        if accepts_eta:
            extra_step_kwargs["eta"] = eta

        # check if the scheduler accepts generator
        accepts_generator = "generator" in set(inspect.signature(self.scheduler.step).parameters.keys())
        if accepts_generator:
            extra_step_kwargs["generator"] = generator
        return extra_step_kwargs

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def clip_skip(self) -> int | None:
        return self._clip_skip

    @property
    def do_classifier_free_guidance(self) -> bool:
        """Read at every step, so a callback that sets `pipe._guidance_scale` (e.g. `SDCFGCutoffCallback`) switches
        classifier-free guidance off for the remaining steps."""
        return self._guidance_scale > 1

    @property
    def cross_attention_kwargs(self) -> dict[str, Any] | None:
        return self._cross_attention_kwargs

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    def check_call(self, **kwargs: Any) -> None:
        """Checks the arguments of a call (`pipe.check_call(**kwargs)` for `pipe(**kwargs)`) without computing
        anything: unknown names, [`check_inputs`], the batch resolution (sizes, expressions, AU values against the AU
        space) and `prototype_intensity` against the AU space. Raises what the call would raise first."""
        try:
            bound = inspect.signature(self.__call__).bind(**kwargs)
        except TypeError as error:
            raise ValueError(f"Not an argument of {type(self).__name__}.__call__: {error}") from None
        bound.apply_defaults()
        a = bound.arguments
        semantic_guidance = tuple(a[f"semantic_guidance_{name}"] for name in SEMANTIC_GUIDANCE_ARGUMENTS)
        native = self.unet.config.sample_size * self.vae_scale_factor
        self.check_inputs(
            a["prompt"], a["height"] or native, a["width"] or native, a["num_images_per_prompt"], a["au_scale"],
            a["guidance_scale"], a["action_units"], a["negative_prompt"], a["prompt_embeds"],
            a["negative_prompt_embeds"], a["latents"], a["layout_image"], a["layout_strength"], semantic_guidance,
            a["output_type"], a["callback_on_step_end_tensor_inputs"] or ["latents"], a["num_inference_steps"],
        )  # fmt: skip
        resolve_batch(
            self.au_space, a["prompt"], a["expression"], a["action_units"], a["negative_prompt"], a["prompt_embeds"],
            a["negative_prompt_embeds"],
        )  # fmt: skip
        if self.au_space is not None:
            self.au_space.prototype_value(a["prototype_intensity"], field="prototype_intensity")

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
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
        generator: GeneratorInput = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        layout_image: LayoutImageInput | list[LayoutImageInput] | None = None,
        layout_strength: float = 1.0,
        semantic_guidance_scale: float = 0.0,
        semantic_guidance_window: tuple[float, float] = DEFAULT_SG_WINDOW,
        semantic_guidance_normalization: str = "global",
        semantic_guidance_interval: int = DEFAULT_SG_INTERVAL,
        semantic_guidance_decode: str = "guide_size",
        guidance_label_mapping: Mapping[str, str | None] | None = None,
        label_with_feranno: bool = True,
        feranno_label_mapping: Mapping[str, str | None] | None = None,
        enrich_prompt: bool = True,
        prototype_intensity: float | None = None,
        au_jitter: float = 0.5,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        clip_skip: int | None = None,
        callback_on_step_end: Callable[[DiffusionPipeline, int, int, dict], dict]
        | PipelineCallback
        | MultiPipelineCallbacks
        | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ) -> SynFERPipelineOutput | tuple:
        r"""
        Generates facial-expression images.

        Args:
            prompt (`str` or `list[str]`, *optional*): coarse description(s) of the person, e.g. "a photo of an
                elderly man with glasses". With `enrich_prompt`, expanded with the expression and AU words
                (`synfer_diffusers.prompts.enrich_prompt`).
            expression (`str` or `list[str | None]`, *optional*): target expression(s) from `EXPRESSIONS`. With
                no `action_units`, each image's AUs are the EMFACS prototype (`prototype_intensity`; default: 3.0 on
                intensity spaces, 1.0 on occurrence spaces) with seeded Gaussian jitter (`au_jitter`, intensity spaces
                only) on its active AUs.
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
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*): as in diffusers' pipelines: one
                generator draws the noise of the whole batch (then each image's AU jitter, then the step noise), so
                `generator=G` and `generator=[G]` give the same image; a list gives one generator per image (noise,
                AU jitter and step noise of image `i` from entry `i`), so image `i` of a batch equals image `i`
                generated alone: use a list for per-sample seeds (`SynFERPipelineOutput.seeds`).
            latents (`torch.Tensor`, *optional*): initial noise `(num_images, C, H/f, W/f)`.
            prompt_embeds (`torch.Tensor` of shape `(batch, L, D)`, *optional*): text embeddings used instead of
                `prompt` (e.g. prompt weighting). They are used as they are: no prompt enrichment (expression and AUs
                still condition the AU tokens, `prompts` in the output is `None` per image).
            negative_prompt_embeds (`torch.Tensor` of shape `(batch, L, D)`, *optional*): unconditional text
                embeddings used instead of `negative_prompt`.
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
            label_with_feranno (`bool`, defaults to True): with a `feranno_head` component, label each image
                (`feranno_probabilities` in the output; see the class docstring).
            feranno_label_mapping (`dict`, *optional*): renames the FERAnno head's labels (`id2label`) onto
                `EXPRESSIONS`, `None` drops an output (e.g. `{"contempt": None}`), exactly as for the guide and for
                voting classifiers (see `synfer_diffusers.facs.map_classifier_labels`).
            enrich_prompt (`bool`, defaults to True): expand prompts with expression and AU words.
            output_type (`str`, defaults to "pil"): "pil", "np", "pt" or "latent".
            return_dict (`bool`, defaults to True): else return `(images, expressions, action_units, prompts, seeds,
                feranno_probabilities)`.
            cross_attention_kwargs (`dict`, *optional*): passed to the attention processors (e.g. `{"scale": 0.5}`
                for a loaded LoRA); the AU branch is kept.
            clip_skip (`int`, *optional*): CLIP layers to skip when encoding `prompt`.
            callback_on_step_end (`Callable`, [`PipelineCallback`] or [`MultiPipelineCallbacks`], *optional*):
                `fn(pipe, step, timestep, callback_kwargs) -> dict`, called after each step with the tensors named in
                `callback_on_step_end_tensor_inputs` (`prompt_embeds` is the conditional text embedding, `(N, L, D)`,
                not diffusers' `[negative; positive]` concatenation); returned tensors replace them.
            callback_on_step_end_tensor_inputs (`list[str]`, *optional*): among `_callback_tensor_inputs`; default
                `["latents"]`.

        Examples:

        Returns:
            [`SynFERPipelineOutput`] or `tuple`.
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        callback_on_step_end_tensor_inputs = callback_on_step_end_tensor_inputs or ["latents"]

        # 0. Default height and width to unet
        height = height or self.unet.config.sample_size * self.vae_scale_factor
        width = width or self.unet.config.sample_size * self.vae_scale_factor

        # 1. Check inputs. Raise error if not correct
        semantic_guidance = (
            semantic_guidance_scale, semantic_guidance_window, semantic_guidance_normalization,
            semantic_guidance_interval, semantic_guidance_decode,
        )  # fmt: skip  # in SEMANTIC_GUIDANCE_ARGUMENTS order
        self.check_inputs(
            prompt, height, width, num_images_per_prompt, au_scale, guidance_scale, action_units, negative_prompt,
            prompt_embeds, negative_prompt_embeds, latents, layout_image, layout_strength, semantic_guidance,
            output_type, callback_on_step_end_tensor_inputs, num_inference_steps,
        )  # fmt: skip
        self._guidance_scale = guidance_scale
        self._clip_skip = clip_skip
        self._cross_attention_kwargs = cross_attention_kwargs
        self._interrupt = False

        # 2. Define call parameters
        batch_size, prompts, expressions, au_values, negatives = resolve_batch(
            self.au_space, prompt, expression, action_units, negative_prompt, prompt_embeds, negative_prompt_embeds
        )
        num_images = batch_size * num_images_per_prompt
        device = self._execution_device

        # 3. Prepare timesteps
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps

        # 4. Prepare latent variables: the noise is drawn first, so that it depends on the generator alone
        dtype = self.text_encoder.dtype if self.text_encoder is not None else self.unet.dtype
        latents = self.prepare_latents(
            num_images, self.unet.config.in_channels, height, width, dtype, device, generator, latents
        )

        # 5. Plan each image's condition: AUs (EMFACS prototype + jitter) and the prompt enriched with them
        used_prompts, image_expressions, au_matrix, has_au = plan_conditions(
            self.au_space, prompts if prompt_embeds is None else None, expressions, au_values, num_images_per_prompt, generator,
            prototype_intensity, au_jitter, enrich_prompt,
        )  # fmt: skip

        # 6. Encode the text and AU conditions
        negative_prompt_embeds_given = negative_prompt_embeds is not None
        lora_scale = self.cross_attention_kwargs.get("scale") if self.cross_attention_kwargs is not None else None
        if prompt_embeds is None:  # per-image prompts: each is enriched with its own AUs
            text_condition = {
                "prompt": used_prompts,
                "num_images_per_prompt": 1,
                "negative_prompt": _per_image(negatives, num_images_per_prompt),
                "negative_prompt_embeds": _per_image(negative_prompt_embeds, num_images_per_prompt),
            }
        else:
            text_condition = {
                "prompt": None,
                "num_images_per_prompt": num_images_per_prompt,
                "negative_prompt": negatives,
                "prompt_embeds": prompt_embeds,
                "negative_prompt_embeds": negative_prompt_embeds,
            }
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            device=device, do_classifier_free_guidance=self.do_classifier_free_guidance, lora_scale=lora_scale,
            clip_skip=self.clip_skip, **text_condition,
        )  # fmt: skip  # (N, L, D) each
        au_embeds = self.encode_au_condition(au_matrix, has_au, device)  # (N, T, D) or None

        # 7. Layout initialisation: start from the DDIM inversion of real faces instead of noise
        if layout_image is not None:
            images = self.preprocess_layout_images(layout_image, batch_size, num_images_per_prompt, height, width)
            timesteps = timesteps[len(timesteps) - round(len(timesteps) * layout_strength) :]
            latents = self.invert_layout(images.to(device), timesteps).to(prompt_embeds.dtype)
            if hasattr(self.scheduler, "set_begin_index"):
                self.scheduler.set_begin_index(num_inference_steps - len(timesteps))

        # 8. Prepare extra step kwargs, semantic guidance and the in-loop FERAnno recorder
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)
        guided_steps: set[int] = set()
        if semantic_guidance_scale > 0:
            guide = self.prepare_semantic_guidance(
                image_expressions, guidance_label_mapping, semantic_guidance_decode, latents.shape[-2:], device
            )
            guided_steps = semantic_guidance_gradient_steps(
                len(timesteps), semantic_guidance_window, semantic_guidance_interval
            )
        label = self.feranno_head is not None and label_with_feranno
        feranno_index_map = self.feranno_head.expression_index_map(feranno_label_mapping) if label else None
        label_in_loop = label and self.last_step_is_feranno_pass(
            timesteps, negatives, negative_prompt_embeds_given, au_scale
        )
        recorder = UNetFeatureRecorder(self.unet) if label_in_loop else contextlib.nullcontext()
        # AU keys/values once per call, not per step (absent from the code file of a checkpoint saved before it)
        cached_au_attention = getattr(self.unet, "cached_au_attention", contextlib.nullcontext)

        # 9. Denoising loop
        self._num_timesteps = len(timesteps)
        with recorder, cached_au_attention(), self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                negative = negative_prompt_embeds if self.do_classifier_free_guidance else None
                if i in guided_steps:
                    noise_uncond, noise_cond, prompt_embeds = self.guided_noise_branches(
                        latents, t, prompt_embeds, negative, au_embeds, au_scale, guide, semantic_guidance_scale,
                        semantic_guidance_normalization,
                    )  # fmt: skip
                else:
                    noise_uncond, noise_cond = self.predict_noise_branches(
                        latents, t, prompt_embeds, negative, au_embeds, au_scale
                    )
                noise_pred = combine_guidance(noise_uncond, noise_cond, self.guidance_scale)
                latents = self.scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=False)[0]

                if callback_on_step_end is not None:
                    step_tensors = {
                        "latents": latents, "prompt_embeds": prompt_embeds,
                        "negative_prompt_embeds": negative_prompt_embeds, "au_embeds": au_embeds,
                    }  # fmt: skip
                    callback_kwargs = {k: step_tensors[k] for k in callback_on_step_end_tensor_inputs}
                    callback_outputs = callback_on_step_end(self, i, t, callback_kwargs)
                    latents = callback_outputs.pop("latents", latents)
                    prompt_embeds = callback_outputs.pop("prompt_embeds", prompt_embeds)
                    negative_prompt_embeds = callback_outputs.pop("negative_prompt_embeds", negative_prompt_embeds)
                    au_embeds = callback_outputs.pop("au_embeds", au_embeds)
                progress_bar.update()
            features = recorder.features() if label_in_loop else None

        # 10. FERAnno labels: from the last step where it is FERAnno's own pass, else one pass on the final latents
        feranno_probabilities = None
        if label and features is not None and features.batch_size == 2 * num_images:
            feranno_probabilities = self.feranno_label(features, num_images, feranno_index_map)
        elif label:
            annotator = FERAnnoPipeline(**self.base_components, head=self.feranno_head)
            annotator.set_progress_bar_config(**getattr(self, "_progress_bar_config", {}))
            feranno_probabilities = annotator.label_latents(
                latents, generator, label_mapping=feranno_label_mapping
            ).to(latents.device)

        # 11. Decode and report each image's condition
        images = latents if output_type == "latent" else self.decode_latents(latents, output_type)
        self.maybe_free_model_hooks()
        au_dicts = (
            [d if keep else None for d, keep in zip(self.au_space.to_dicts(au_matrix), has_au)]
            if au_matrix is not None
            else [None] * num_images
        )
        seeds = [g.initial_seed() for g in generator] if isinstance(generator, list) else None
        if not return_dict:
            return images, image_expressions, au_dicts, used_prompts, seeds, feranno_probabilities
        return SynFERPipelineOutput(
            images=images, expressions=image_expressions, action_units=au_dicts, prompts=used_prompts, seeds=seeds,
            feranno_probabilities=feranno_probabilities,
        )  # fmt: skip

    def last_step_is_feranno_pass(
        self,
        timesteps: torch.Tensor,
        negatives: list[str] | None,
        negative_prompt_embeds_given: bool,
        au_scale: float,
    ) -> bool:
        """Whether the unconditional half of the last denoising step is exactly FERAnno's training pass (the head's
        timestep, the head's prompt, the null AU condition at scale 1, no attention kwargs), so that the head can read
        its features for free. Otherwise (CFG off, another negative prompt, DPM-Solver or "trailing" spacing whose last
        step is not the head's t, `au_scale != 1`, no step left) the labels come from one FERAnno pass on the final
        latents, so that `feranno_probabilities` mean the same thing on every configuration."""
        head = self.feranno_head.config
        return (
            len(timesteps) > 0
            and int(timesteps[-1]) == head.timestep
            and self.do_classifier_free_guidance
            and not negative_prompt_embeds_given
            and all(n == head.prompt for n in (negatives or [""]))
            and au_scale == 1
            and not self.cross_attention_kwargs
        )

    def feranno_label(
        self, features: UNetFeatures, num_images: int, index_map: list[int | None]
    ) -> torch.Tensor:  # (N, 7) probabilities
        """FERAnno probabilities over `EXPRESSIONS` from the features of the last UNet call, the head's labels
        mapped by name with `index_map` ([`FERAnnoHead.expression_index_map`]) as for any classifier; with CFG that
        call's batch is `[uncond; cond]` and the unconditional half (prompt `""` + null AU, FERAnno's training
        condition) is read."""
        if features.batch_size == 2 * num_images:
            features = features.select(slice(None, num_images))
        return classifier_expression_probabilities(self.feranno_head(features).logits, index_map)

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
        prompt_embeds: torch.Tensor | None,  # (N, L, D); None: no conditional branch
        negative_prompt_embeds: torch.Tensor | None,  # (N, L, D); None: no unconditional branch (CFG off)
        au_embeds: torch.Tensor | None,  # (N, T, D) conditional AU tokens; None for a UNet without AU adapter
        au_scale: float,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:  # (N, C, h, w) each
        """The unconditional (negative prompt + null AU) and conditional (prompt + AU tokens) noise predictions of the
        branches asked for, in one UNet call (batch `[uncond; cond]`)."""
        branches = [(negative_prompt_embeds, "null"), (prompt_embeds, "cond")]
        branches = [(text, kind) for text, kind in branches if text is not None]
        model_input = self.scheduler.scale_model_input(torch.cat([latents] * len(branches)), t)
        text = torch.cat([embeds for embeds, _ in branches])
        au_kwargs = {}
        if au_embeds is not None:
            null = self.unet.encode_action_units(None, batch_size=au_embeds.shape[0]).to(au_embeds)
            tokens = torch.cat([null if kind == "null" else au_embeds for _, kind in branches])
            au_kwargs = {"au_embeds": tokens, "au_scale": au_scale}
        noise_pred = self.unet(
            model_input, t, encoder_hidden_states=text, cross_attention_kwargs=self.cross_attention_kwargs,
            return_dict=False, **au_kwargs,
        )[0].chunk(len(branches))  # fmt: skip
        predictions = dict(zip([kind for _, kind in branches], noise_pred))
        return predictions.get("null"), predictions.get("cond")

    def decode_latents(self, latents: torch.Tensor, output_type: str) -> Any:
        image = self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False)[0]  # (N, 3, H, W)
        return self.image_processor.postprocess(image, output_type=output_type)


def _per_image(values: list[str] | torch.Tensor | None, num_images_per_prompt: int) -> list[str] | torch.Tensor | None:
    """Per-prompt values (a list or a `(batch, ...)` tensor) repeated for each image of their prompt."""
    if values is None or num_images_per_prompt == 1:
        return values
    if isinstance(values, torch.Tensor):
        return values.repeat_interleave(num_images_per_prompt, dim=0)
    return [v for v in values for _ in range(num_images_per_prompt)]
