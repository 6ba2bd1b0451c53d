"""The sampling core of SynFER (stage 2, sampling), shared by generation (`SynFERPipeline.__call__`), layout
initialisation and expression editing (`editing.py`): timesteps and strength by the scheduler's own rules, the UNet's
conditional and unconditional branches, classifier-free and semantic guidance, the denoising loop with step callbacks
and `interrupt`, FERAnno labels of the returned latents, and decoding.

A step's model output is `combine_guidance(branches, guidance_scale, au_guidance_scale)` over the branches of one
batched UNet call ([`SamplingMixin.predict_noise_branches`]): `"null"` (negative prompt + null AU tokens, under CFG),
`"text"` (prompt + null AU tokens, with AU guidance) and `"cond"` (prompt + AU tokens).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from diffusers.utils.torch_utils import randn_tensor

from ...facs import classifier_expression_probabilities
from ...models.feature_extraction import UNetFeatures
from .conditions import GeneratorInput
from .mutual_attention import MutualSelfAttention
from .pipeline_feranno import FERAnnoPipeline
from .prediction import combine_guidance
from .semantic_guidance import SemanticGuidanceSchedule

StepCallback = Callable[[Any, int, int, dict], dict]


class SamplingMixin:
    """The sampling core for a pipeline with `vae`, `unet`, `scheduler`, `image_processor`, `progress_bar`, optional
    `feranno_head`, [`SemanticGuidanceMixin`]'s `guided_noise_branches`, and `_callback_tensor_inputs`. A call sets
    `_guidance_scale`, `_clip_skip`, `_cross_attention_kwargs` and `_interrupt` first ([`start_call`])."""

    _guidance_scale: float = 1.0
    _au_guidance_scale: float | None = None
    _clip_skip: int | None = None
    _cross_attention_kwargs: dict[str, Any] | None = None
    _interrupt = False
    _num_timesteps = 0

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def au_guidance_scale(self) -> float | None:
        """The AU condition's own guidance scale, or `None` where it is guided with the text (two branches)."""
        return self._au_guidance_scale

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

    def start_call(
        self,
        guidance_scale: float,
        clip_skip: int | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        au_guidance_scale: float | None = None,
    ) -> None:
        """Sets the state a call's loop and callbacks read (and clears an earlier call's `interrupt`)."""
        self._guidance_scale = guidance_scale
        self._au_guidance_scale = au_guidance_scale
        self._clip_skip = clip_skip
        self._cross_attention_kwargs = cross_attention_kwargs
        self._interrupt = False

    def set_schedule(
        self, num_inference_steps: int, device: torch.device, strength: float | None = None
    ) -> torch.Tensor:
        """Sets the scheduler's timesteps, which also clears the state a multistep sampler kept from an earlier loop,
        and returns those to denoise: all of them, or with `strength` the last share ([`get_timesteps`])."""
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        if strength is None:
            return self.scheduler.timesteps
        return self.get_timesteps(num_inference_steps, strength)

    # Adapted from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img.StableDiffusionImg2ImgPipeline.get_timesteps
    def get_timesteps(self, num_inference_steps: int, strength: float) -> torch.Tensor:
        """The timesteps of the last `strength` share of the schedule set on the scheduler (`set_timesteps` first):
        `round(num_inference_steps * strength)` whole steps of `scheduler.order` timesteps each, so that a cut never
        splits a second-order step pair; the scheduler's begin index is set to the cut. (diffusers truncates the
        number of steps; SynFER has always rounded it.)"""
        init_steps = min(round(num_inference_steps * strength), num_inference_steps)
        t_start = (num_inference_steps - init_steps) * self.scheduler.order
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(t_start)
        return self.scheduler.timesteps[t_start:]

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
        shape = (
            batch_size,
            num_channels_latents,
            int(height) // self.vae_scale_factor,
            int(width) // self.vae_scale_factor,
        )
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

    def encode_au_condition(
        self, au_matrix: torch.Tensor | None, has_au: list[bool], device: torch.device
    ) -> torch.Tensor | None:  # (N, T, D)
        """AU tokens per image; rows without an AU condition get the null AU tokens."""
        if au_matrix is None:
            return None
        drop = torch.tensor([not keep for keep in has_au], device=device)
        return self.unet.encode_action_units(au_matrix.to(device), drop_mask=drop)

    def guidance_branches(self) -> tuple[str, ...]:
        """The UNet branches a step combines: `"null"` under CFG, `"text"` with AU guidance, and `"cond"`. AU guidance
        at the text's own scale under CFG is the joint guidance (`null + w (text - null) + w (cond - text)` is
        `null + w (cond - null)`) and runs as such, in two branches."""
        cfg = self.do_classifier_free_guidance
        joint = self.au_guidance_scale is None or (cfg and self.au_guidance_scale == self.guidance_scale)
        return (("null",) if cfg else ()) + (() if joint else ("text",)) + ("cond",)

    def predict_noise_branches(
        self,
        latents: torch.Tensor,  # (N, C, h, w)
        t: torch.Tensor,
        prompt_embeds: torch.Tensor | None,  # (N, L, D), for the "text" and "cond" branches
        negative_prompt_embeds: torch.Tensor | None,  # (N, L, D), for the "null" branch
        au_embeds: torch.Tensor | None,  # (N, T, D) conditional AU tokens; None for a UNet without AU adapter
        au_scale: float,
        branches: Sequence[str] = ("null", "cond"),
    ) -> dict[str, torch.Tensor]:  # branch -> (N, C, h, w)
        """The noise predictions of `branches`, in one UNet call (their batches concatenated in that order):
        `"null"` (negative prompt + null AU tokens), `"text"` (prompt + null AU tokens) and `"cond"` (prompt + AU
        tokens). A UNet without AU adapter has no AU tokens: `"text"` is then `"cond"`."""
        text = {"null": negative_prompt_embeds, "text": prompt_embeds, "cond": prompt_embeds}
        model_input = self.scheduler.scale_model_input(torch.cat([latents] * len(branches)), t)
        au_kwargs = {}
        if au_embeds is not None:
            null = self.unet.encode_action_units(None, batch_size=au_embeds.shape[0]).to(au_embeds)
            tokens = torch.cat([au_embeds if branch == "cond" else null for branch in branches])
            au_kwargs = {"au_embeds": tokens, "au_scale": au_scale}
        noise_pred = self.unet(
            model_input, t, encoder_hidden_states=torch.cat([text[branch] for branch in branches]),
            cross_attention_kwargs=self.cross_attention_kwargs, return_dict=False, **au_kwargs,
        )[0].chunk(len(branches))  # fmt: skip
        return dict(zip(branches, noise_pred))

    def guided_model_output(
        self,
        latents: torch.Tensor,  # (N, C, h, w)
        t: torch.Tensor,
        step: int,
        prompt_embeds: torch.Tensor,  # (N, L, D)
        negative_prompt_embeds: torch.Tensor | None,  # (N, L, D)
        au_embeds: torch.Tensor | None,  # (N, T, D)
        au_scale: float,
        semantic_guidance: SemanticGuidanceSchedule | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # (N, C, h, w), (N, L, D)
        """One step's model output under classifier-free guidance (while `do_classifier_free_guidance`), and the
        text embedding for the later steps, moved by semantic guidance at its gradient steps."""
        branches = self.guidance_branches()
        if semantic_guidance is not None and step in semantic_guidance.steps:
            predictions, prompt_embeds = self.guided_noise_branches(
                latents, t, prompt_embeds, negative_prompt_embeds, au_embeds, au_scale, branches,
                semantic_guidance.guide, semantic_guidance.scale, semantic_guidance.normalization,
            )  # fmt: skip
        else:
            predictions = self.predict_noise_branches(
                latents, t, prompt_embeds, negative_prompt_embeds, au_embeds, au_scale, branches
            )
        return combine_guidance(predictions, self.guidance_scale, self.au_guidance_scale), prompt_embeds

    def denoise(
        self,
        latents: torch.Tensor,  # (N, C, h, w): the sampler's state at `timesteps[0]`
        timesteps: torch.Tensor,
        prompt_embeds: torch.Tensor,  # (N, L, D)
        negative_prompt_embeds: torch.Tensor | None,  # (N, L, D); None without CFG
        au_embeds: torch.Tensor | None,  # (N, T, D)
        au_scale: float,
        extra_step_kwargs: dict[str, Any],
        semantic_guidance: SemanticGuidanceSchedule | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        mutual_self_attention: MutualSelfAttention | None = None,
    ) -> torch.Tensor:  # (N, C, h, w)
        """The denoising loop: a guided model output ([`guided_model_output`]) and a scheduler step per timestep
        (preceded by the source pass of an attached `mutual_self_attention`, in its steps);
        after each step `callback_on_step_end(pipe, i, t, {name: tensor})` gets the tensors named in
        `callback_on_step_end_tensor_inputs` (`prompt_embeds` is the conditional text embedding) and the tensors it
        returns replace them. Steps after `interrupt` is set are skipped. Returns the final (or interrupted) latents."""
        self._num_timesteps = len(timesteps)
        tensors = {"latents": latents, "prompt_embeds": prompt_embeds,
                   "negative_prompt_embeds": negative_prompt_embeds, "au_embeds": au_embeds}  # fmt: skip
        # AU keys/values once per call, not per step (a UNet class from an older checkpoint's code lacks the method)
        cached_au_attention = getattr(self.unet, "cached_au_attention", contextlib.nullcontext)
        with cached_au_attention(), self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                if mutual_self_attention is not None:
                    mutual_self_attention.before_step(i)
                model_output, tensors["prompt_embeds"] = self.guided_model_output(
                    tensors["latents"], t, i, tensors["prompt_embeds"], tensors["negative_prompt_embeds"],
                    tensors["au_embeds"], au_scale, semantic_guidance,
                )  # fmt: skip
                tensors["latents"] = self.scheduler.step(
                    model_output, t, tensors["latents"], **extra_step_kwargs, return_dict=False
                )[0]
                if callback_on_step_end is not None:
                    callback_kwargs = {name: tensors[name] for name in callback_on_step_end_tensor_inputs}
                    callback_outputs = callback_on_step_end(self, i, t, callback_kwargs)
                    tensors.update({k: v for k, v in callback_outputs.items() if k in tensors})
                progress_bar.update()
        return tensors["latents"]

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

    def feranno_probabilities(
        self,
        latents: torch.Tensor,  # (N, C, h, w): the returned latents
        generator: GeneratorInput,
        label_mapping: Mapping[str, str | None] | None,
        features: UNetFeatures | None = None,
    ) -> torch.Tensor:  # (N, 7)
        """FERAnno's probabilities over `EXPRESSIONS` for the returned latents: from `features` of the last step
        where its unconditional CFG branch was FERAnno's own pass (the first `N` of a batch of `2 N`, or `3 N` with AU
        guidance), else from one
        [`FERAnnoPipeline`] pass on the latents (also after an interrupt, whose last features are stale)."""
        num_images = latents.shape[0]
        if features is not None and features.batch_size in (2 * num_images, 3 * num_images):  # "null" comes first
            index_map = self.feranno_head.expression_index_map(label_mapping)
            logits = self.feranno_head(features.select(slice(None, num_images))).logits
            return classifier_expression_probabilities(logits, index_map)
        annotator = FERAnnoPipeline(**self.base_components, head=self.feranno_head)
        annotator.set_progress_bar_config(**getattr(self, "_progress_bar_config", {}))
        return annotator.label_latents(latents, generator, label_mapping=label_mapping).to(latents.device)

    def decode_latents(self, latents: torch.Tensor, output_type: str) -> Any:
        """Latents `(N, C, h, w)` -> images of `output_type` ("pil", "np" or "pt")."""
        image = self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False)[0]  # (N, 3, H, W)
        return self.image_processor.postprocess(image, output_type=output_type)
