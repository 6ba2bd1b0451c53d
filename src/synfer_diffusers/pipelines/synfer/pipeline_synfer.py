"""SynFERPipeline: text + action-unit controlled facial-expression synthesis (SynFER stage 2, sampling)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DPMSolverMultistepScheduler, ModelMixin, UNet2DConditionModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor
from diffusers.loaders import StableDiffusionLoraLoaderMixin, TextualInversionLoaderMixin
from diffusers.models.lora import adjust_lora_scale_text_encoder
from diffusers.pipelines.pipeline_utils import DiffusionPipeline, StableDiffusionMixin
from diffusers.utils import USE_PEFT_BACKEND, replace_example_docstring, scale_lora_layers, unscale_lora_layers
from transformers import CLIPTextModel, CLIPTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.image_processing_utils import BaseImageProcessor

from ...facs import EXPRESSIONS, AUSpace
from ...loaders.au_adapter import AUAdapterLoaderMixin
from ...models.feature_extraction import UNetFeatureRecorder
from ...models.unet_au import AUConditionedUNet2DConditionModel
from ...value_checks import check_int, check_number
from ..hub_mixin import ModelCardPipelineMixin
from .au_feedback import AUFeedbackMixin
from .checks import bind_call, check_sampling_inputs
from .conditions import AUInput, GeneratorInput, per_image, plan_conditions, resolve_batch
from .editing import EditingMixin
from .inversion import InversionMixin, LayoutImageInput
from .options import DEFAULT_SG_INTERVAL, DEFAULT_SG_WINDOW
from .pipeline_output import SynFERPipelineOutput
from .sampling import SamplingMixin
from .semantic_guidance import SemanticGuidanceMixin

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
    SamplingMixin,
    SemanticGuidanceMixin,
    AUFeedbackMixin,
    InversionMixin,
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
        scheduler ([`DDIMScheduler`], [`DPMSolverMultistepScheduler`] or another diffusers sampler): DDIM's
            `clip_sample` must be off. Layout initialisation and editing follow each sampler's own rules (its order,
            begin index and sigma space; see `sampling.py` and `inversion.py`): DDIM, DPM-Solver, UniPC, Euler, Heun,
            LMS and KDPM2 retrace an inversion; an ancestral sampler (Euler ancestral) adds fresh noise at every
            step, so edits with it keep less of the source.
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

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer | PreTrainedTokenizerBase,
        unet: AUConditionedUNet2DConditionModel | UNet2DConditionModel,
        scheduler: DDIMScheduler | DPMSolverMultistepScheduler,
        guidance_classifier: PreTrainedModel | None = None,
        guidance_image_processor: BaseImageProcessor | None = None,
        feranno_head: ModelMixin | None = None,  # a FERAnnoHead (see `FERAnnoPipeline.__init__`)
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
        guidance_label_mapping: Mapping[str, str | None] | None,
        label_with_feranno: bool,
        feranno_label_mapping: Mapping[str, str | None] | None,
        output_type: str,
        callback_on_step_end_tensor_inputs: list[str],
        num_inference_steps: int,
        au_guidance_scale: float | None = None,
        au_feedback: tuple[int, float] = (0, 1.0),
    ) -> None:
        """Raises a concise error naming the first invalid argument: those of every sampling call
        ([`~checks.check_sampling_inputs`], shared with [`edit`]), then generation's own; `semantic_guidance` is
        `(scale, window, normalization, interval, decode)`."""
        check_sampling_inputs(
            self, num_inference_steps, height, width, guidance_scale, au_scale, au_guidance_scale, output_type,
            semantic_guidance, guidance_label_mapping, label_with_feranno, feranno_label_mapping,
            callback_on_step_end_tensor_inputs,
        )  # fmt: skip
        check_int("num_images_per_prompt", num_images_per_prompt, 1)
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
        check_number("layout_strength", layout_strength, 0, 1)
        self.check_au_feedback_inputs(*au_feedback)

    def check_call(self, **kwargs: Any) -> None:
        """Checks the arguments of a call (`pipe.check_call(**kwargs)` for `pipe(**kwargs)`) without computing
        anything: unknown names, [`check_inputs`], the batch resolution (sizes, expressions, AU values against the AU
        space) and `prototype_intensity` against the AU space. Raises what the call would raise first."""
        a = bind_call(self.__call__, kwargs)
        native = self.unet.config.sample_size * self.vae_scale_factor
        self.check_inputs(
            a["prompt"], a["height"] or native, a["width"] or native, a["num_images_per_prompt"], a["au_scale"],
            a["guidance_scale"], a["action_units"], a["negative_prompt"], a["prompt_embeds"],
            a["negative_prompt_embeds"], a["latents"], a["layout_image"], a["layout_strength"],
            tuple(a[f"semantic_guidance_{name}"] for name in SEMANTIC_GUIDANCE_ARGUMENTS), a["guidance_label_mapping"],
            a["label_with_feranno"], a["feranno_label_mapping"], a["output_type"],
            a["callback_on_step_end_tensor_inputs"] or ["latents"], a["num_inference_steps"], a["au_guidance_scale"],
            (a["au_feedback_passes"], a["au_feedback_gain"]),
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
        au_guidance_scale: float | None = None,
        au_feedback_passes: int = 0,
        au_feedback_gain: float = 1.0,
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
            au_guidance_scale (`float`, *optional*): a guidance scale of the AU condition's own. `None` (default):
                CFG contrasts (prompt + AU tokens) with (negative prompt + null AU tokens), text and AUs together, two
                UNet branches. A number `w_au`: a third branch (prompt + null AU tokens) and `eps = eps_null +
                guidance_scale (eps_text - eps_null) + w_au (eps_text_au - eps_text)`, so the AU condition can be
                followed more (or less) closely than the text; the UNet batch grows from 2 N to 3 N images (1.5x the
                UNet cost). `au_guidance_scale == guidance_scale` under CFG is the default's guidance and runs as the
                default does (two branches, the same images).
            au_feedback_passes (`int`, defaults to 0): AU feedback (beyond the paper): this many passes render the
                images, read their AUs with the `au_estimator` component and correct each image's AU condition by
                `gain * (requested - read)`; the last pass renders the returned images from the same noise (the
                generator states are restored; pass generators for the same step noise with stochastic samplers). Each
                pass costs a whole sampling loop: `P` passes make the call `(1 + P)` times as long. Needs an intensity
                AU space and an `au_estimator`; images without an AU condition are rendered as without feedback;
                `action_units` in the output stay the requested ones. See `au_feedback.py`.
            au_feedback_gain (`float`, defaults to 1.0): the share of the read AU error each pass corrects.
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
                is encoded and DDIM-inverted under the null condition (prompt `""`, null AU tokens at `au_scale`, no
                CFG) to the noise level of step `(1 - layout_strength) * num_inference_steps` (whole sampler steps),
                scaled into the sampler's space, and denoising starts there.
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
            label_with_feranno (`bool`, defaults to True): with a `feranno_head` component, label each returned
                image (`feranno_probabilities` in the output, also after an interrupt; see the class docstring); needs
                unfused attention projections.
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
            guidance_label_mapping, label_with_feranno, feranno_label_mapping, output_type,
            callback_on_step_end_tensor_inputs, num_inference_steps, au_guidance_scale,
            (au_feedback_passes, au_feedback_gain),
        )  # fmt: skip
        self.start_call(guidance_scale, clip_skip, cross_attention_kwargs, au_guidance_scale)

        # 2. Define call parameters
        batch_size, prompts, expressions, au_values, negatives = resolve_batch(
            self.au_space, prompt, expression, action_units, negative_prompt, prompt_embeds, negative_prompt_embeds
        )
        num_images = batch_size * num_images_per_prompt
        device = self._execution_device

        # 3. Prepare timesteps (of the last `layout_strength` share with a layout image)
        strength = layout_strength if layout_image is not None else None
        timesteps = self.set_schedule(num_inference_steps, device, strength)

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
                "negative_prompt": per_image(negatives, num_images_per_prompt),
                "negative_prompt_embeds": per_image(negative_prompt_embeds, num_images_per_prompt),
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

        # 7. Layout initialisation: start from the inversion of real faces (null condition) instead of noise
        if layout_image is not None:
            images = self.preprocess_layout_images(layout_image, batch_size, num_images_per_prompt, height, width)
            latents = self.invert_layout(images.to(device), timesteps, au_scale).to(prompt_embeds.dtype)

        # 8. Prepare extra step kwargs, semantic guidance and the in-loop FERAnno recorder
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)
        guidance = self.plan_semantic_guidance(
            image_expressions, guidance_label_mapping, semantic_guidance_scale, semantic_guidance_window,
            semantic_guidance_normalization, semantic_guidance_interval, semantic_guidance_decode, latents.shape[-2:],
            len(timesteps), device,
        )  # fmt: skip
        label = self.feranno_head is not None and label_with_feranno
        label_in_loop = label and self.last_step_is_feranno_pass(
            timesteps, negatives, negative_prompt_embeds_given, au_scale
        )
        recorder = UNetFeatureRecorder(self.unet) if label_in_loop else contextlib.nullcontext()

        # 9. AU feedback: each pass renders the images, reads their AUs and corrects their AU condition
        if au_feedback_passes and au_matrix is not None:
            def render(tokens: torch.Tensor) -> torch.Tensor:  # one pass from the same start, without callbacks
                return self.denoise(
                    latents, self.set_schedule(num_inference_steps, device, strength), prompt_embeds,
                    negative_prompt_embeds, tokens, au_scale, extra_step_kwargs, guidance,
                )  # fmt: skip

            au_embeds = self.au_feedback_condition(
                render, au_matrix.to(device), has_au, generator, au_feedback_passes, au_feedback_gain
            )
            timesteps = self.set_schedule(num_inference_steps, device, strength)

        # 10. Denoising loop
        with recorder:
            latents = self.denoise(
                latents, timesteps, prompt_embeds, negative_prompt_embeds, au_embeds, au_scale, extra_step_kwargs,
                guidance, callback_on_step_end, callback_on_step_end_tensor_inputs,
            )  # fmt: skip
            features = recorder.features() if label_in_loop and not self.interrupt else None

        # 11. FERAnno labels of the returned latents
        feranno_probabilities = None
        if label:
            feranno_probabilities = self.feranno_probabilities(latents, generator, feranno_label_mapping, features)

        # 12. Decode and report each image's condition (the requested AUs, also after AU feedback)
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
