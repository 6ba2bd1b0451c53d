"""Expression editing: the same face with another expression, by action units.

[`EditingMixin.edit`] encodes a source face, DDIM-inverts it under the source's *own* condition (its caption or `""`,
enriched with its AUs, and its AU tokens) to the noise level that `edit_strength` names, then denoises from there under
the *target* condition (the same caption enriched with the target expression and AUs, and the target AU tokens). The
inversion and the regeneration differ only in the condition, so what the condition does not describe (the person, the
background) is meant to come back from the inverted noise; `edit_strength` trades how far the expression may move
against how much of the source is kept. The contract: with the target condition equal to the source's and `guidance_scale <= 1`, an
edit returns its source up to the sampler's own discretisation error, on every deterministic diffusers sampler
(`tests/test_sampling_core.py`); an image of a batch equals the image edited alone (with per-image generators).
The identity-keeping levers on by default (`options.DEFAULT_EDIT_AU_GUIDANCE_SCALE`,
`DEFAULT_EDIT_MUTUAL_SELF_ATTENTION_WINDOW`) keep that contract: the default AU guidance applies only under CFG, and
mutual self-attention reads the source's own reconstruction pass.

`edit` is a composition of the pipeline's sampling core (`sampling.py`: timesteps, the denoising loop with callbacks
and `interrupt`, guidance, FERAnno labels) and its inversion (`inversion.py`), so that generation, layout
initialisation and editing cannot drift apart. The source's AUs are given or estimated by the pipeline's optional AU
estimator (an AU regressor, [`~synfer_diffusers.annotators.AUEstimator`]).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any

import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.utils import replace_example_docstring

from ...annotators import AUEstimator
from ...facs import EXPRESSIONS
from ...value_checks import check_number
from .checks import bind_call, check_sampling_inputs
from .conditions import (
    AUInput,
    EditBatch,
    GeneratorInput,
    au_delta_to_tensor,
    broadcast_au_rows,
    broadcast_to_images,
    check_expression_agrees,
    edit_batch_size,
    plan_image_condition,
)
from .inversion import LayoutImageInput
from .mutual_attention import MutualSelfAttention, check_mutual_self_attention_inputs, default_start_layer
from .options import (
    DEFAULT_EDIT_GUIDANCE_SCALE,
    DEFAULT_EDIT_MUTUAL_SELF_ATTENTION_WINDOW,
    DEFAULT_EDIT_SEMANTIC_GUIDANCE_SCALE,
    DEFAULT_EDIT_STRENGTH,
    DEFAULT_SG_INTERVAL,
    DEFAULT_SG_WINDOW,
    edit_au_guidance_scale,
)
from .pipeline_output import SynFEREditOutput
from .prediction import inversion_levels

INVERSION_CONDITIONS = ("source", "null")
SOURCE_AUS_ESTIMATED = "`source_action_units=None` (the source's AUs estimated)"
"""What [`EditingMixin.edit`] inverts the source under: its own condition (caption + its AUs) or the null condition
(`""` + the null AU tokens)."""

EDIT_EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import PIL.Image
        >>> import torch
        >>> from synfer_diffusers import SynFERPipeline

        >>> pipe = SynFERPipeline.from_pretrained("path/or/repo-id")
        >>> face = PIL.Image.open("face.png")  # exactly the pipeline's image size
        >>> out = pipe.edit(
        ...     image=face,
        ...     target_expression="surprise",  # or target_action_units={...}, or target_action_unit_delta={...}
        ...     source_action_units={"AU6": 2.0, "AU12": 3.0},  # None: estimated by the pipeline's `au_estimator`
        ...     edit_strength=0.8,
        ...     generator=torch.Generator().manual_seed(0),
        ... )
        >>> out.images[0].save("surprise.png"); out.action_units[0], out.source_action_units[0]
        ```
"""


class EditingMixin:
    """Expression editing for a [`SynFERPipeline`]: a composition of its sampling core ([`SamplingMixin`]:
    `get_timesteps`, `encode_au_condition`, `plan_semantic_guidance`, `denoise`, `feranno_probabilities`,
    `decode_latents`), its inversion ([`InversionMixin`]: `preprocess_layout_images`, `invert_images`), `encode_prompt`
    and its optional `au_estimator`."""

    def check_edit_call(self, **kwargs: Any) -> None:
        """Checks the arguments of an edit (`pipe.check_edit_call(**kwargs)` for `pipe.edit(**kwargs)`) without running
        the UNet: unknown names, [`check_edit_inputs`] and [`resolve_edit_batch`]. Raises what the edit would raise
        first."""
        a = bind_call(self.edit, kwargs)
        native = self.unet.config.sample_size * self.vae_scale_factor
        height, width = a["height"] or native, a["width"] or native
        self.check_edit_inputs(
            a["target_expression"], a["target_action_units"], a["target_action_unit_delta"], a["source_action_units"],
            a["edit_strength"], a["num_inference_steps"], a["guidance_scale"], a["au_scale"], height, width,
            a["output_type"], a["inversion_condition"], a["semantic_guidance_scale"], a["guidance_label_mapping"],
            a["label_with_feranno"], a["feranno_label_mapping"], a["callback_on_step_end_tensor_inputs"] or ["latents"],
            a["au_guidance_scale"], a["mutual_self_attention_window"], a["mutual_self_attention_start_layer"],
        )  # fmt: skip
        self.resolve_edit_batch(
            a["image"], a["target_expression"], a["target_action_units"], a["target_action_unit_delta"],
            a["source_action_units"], a["source_prompt"], a["prompt"], height, width,
        )  # fmt: skip
        self.au_space.prototype_value(a["prototype_intensity"], field="prototype_intensity")

    def check_edit_inputs(
        self,
        target_expression: str | list[str | None] | None,
        target_action_units: AUInput | None,
        target_action_unit_delta: AUInput | None,
        source_action_units: AUInput | None,
        edit_strength: float,
        num_inference_steps: int,
        guidance_scale: float,
        au_scale: float,
        height: int,
        width: int,
        output_type: str,
        inversion_condition: str,
        semantic_guidance_scale: float | None,
        guidance_label_mapping: Mapping[str, str | None] | None,
        label_with_feranno: bool,
        feranno_label_mapping: Mapping[str, str | None] | None,
        callback_on_step_end_tensor_inputs: list[str],
        au_guidance_scale: float | None = None,
        mutual_self_attention_window: tuple[float, float] | None = None,
        mutual_self_attention_start_layer: int | None = None,
    ) -> None:
        """Raises a concise error naming the first invalid argument of [`edit`]: those of every sampling call
        ([`~checks.check_sampling_inputs`], shared with [`~SynFERPipeline.__call__`]), then editing's own (batch
        contents are checked by [`resolve_edit_batch`])."""
        if self.au_space is None:
            raise ValueError("`edit` needs a UNet with an AU adapter (AUConditionedUNet2DConditionModel).")
        semantic_guidance = (self.edit_semantic_guidance_scale(semantic_guidance_scale), DEFAULT_SG_WINDOW, "global",
                             DEFAULT_SG_INTERVAL, "guide_size")  # fmt: skip
        check_sampling_inputs(
            self, num_inference_steps, height, width, guidance_scale, au_scale, au_guidance_scale, output_type,
            semantic_guidance, guidance_label_mapping, label_with_feranno, feranno_label_mapping,
            callback_on_step_end_tensor_inputs,
        )  # fmt: skip
        given = [name for name, value in (("target_action_units", target_action_units),
                 ("target_action_unit_delta", target_action_unit_delta)) if value is not None]  # fmt: skip
        if len(given) > 1:
            raise ValueError("`target_action_units` and `target_action_unit_delta` contradict: pass one of them.")
        if not given and target_expression is None:
            raise ValueError(
                "Give a target: `target_expression`, `target_action_units` or `target_action_unit_delta`."
            )
        check_number("edit_strength", edit_strength, 0, 1, open_minimum=True)
        if round(num_inference_steps * edit_strength) < 1:
            raise ValueError(
                f"`edit_strength` {edit_strength} of {num_inference_steps} `num_inference_steps` runs no step; "
                f"use {1 / num_inference_steps:.3g} or more (one step)."
            )
        if inversion_condition not in INVERSION_CONDITIONS:
            raise ValueError(
                f"`inversion_condition` must be one of {INVERSION_CONDITIONS}, got {inversion_condition!r}."
            )
        check_mutual_self_attention_inputs(self.unet, mutual_self_attention_window, mutual_self_attention_start_layer)
        if source_action_units is None:
            self.pipeline_au_estimator(SOURCE_AUS_ESTIMATED)  # raises when there is none

    def resolve_edit_batch(
        self,
        image: LayoutImageInput | list[LayoutImageInput],
        target_expression: str | list[str | None] | None,
        target_action_units: AUInput | None,
        target_action_unit_delta: AUInput | None,
        source_action_units: AUInput | None,
        source_prompt: str | list[str | None] | None,
        prompt: str | list[str | None] | None,
        height: int,
        width: int,
    ) -> EditBatch:
        """Validates the per-image inputs and broadcasts single values to the batch: the images (each exactly `height`
        x `width`), expressions, AUs (against the UNet's AU space) and prompts; a target expression given with target
        AUs must agree with them ([`check_expression_agrees`])."""
        space = self.au_space
        au_rows = {
            "target_action_units": space.to_tensor(target_action_units, "target_action_units")
            if target_action_units is not None else None,
            "target_action_unit_delta": au_delta_to_tensor(space, target_action_unit_delta)
            if target_action_unit_delta is not None else None,
            "source_action_units": space.to_tensor(source_action_units, "source_action_units")
            if source_action_units is not None else None,
        }  # fmt: skip
        texts = {"target_expression": target_expression, "source_prompt": source_prompt, "prompt": prompt}
        num_images = edit_batch_size(image, texts, au_rows)
        rows = {field: broadcast_au_rows(value, num_images, field) for field, value in au_rows.items()}
        expressions = broadcast_to_images(target_expression, num_images, "target_expression")
        for i, name in enumerate(expressions):
            if name is not None:
                field = f"target_expression[{i}]" if isinstance(target_expression, list) else "target_expression"
                EXPRESSIONS.label_id(name, field=field)
                if rows["target_action_units"] is not None:
                    check_expression_agrees(space, name, rows["target_action_units"][i], "target_action_units")
        if rows["target_action_units"] is None and rows["target_action_unit_delta"] is None and None in expressions:
            raise ValueError(f"`target_expression[{expressions.index(None)}]` is None and no target AUs are given.")
        source_prompts = broadcast_to_images(source_prompt, num_images, "source_prompt")
        prompts = broadcast_to_images(prompt, num_images, "prompt")
        for field, values in (("source_prompt", source_prompts), ("prompt", prompts)):
            for i, text in enumerate(values):
                if text is not None and not isinstance(text, str):
                    raise TypeError(f"`{field}[{i}]` must be a string or None, got {type(text).__name__}.")
        images = self.preprocess_layout_images(image, num_images, 1, height, width, field="image")
        return EditBatch(
            images=images, target_expressions=expressions, target_action_units=rows["target_action_units"],
            target_action_unit_delta=rows["target_action_unit_delta"], source_action_units=rows["source_action_units"],
            source_prompts=source_prompts, prompts=[p if p is not None else s for p, s in zip(prompts, source_prompts)],
        )  # fmt: skip

    def edit_semantic_guidance_scale(self, semantic_guidance_scale: float | None) -> float:
        """An edit's semantic-guidance scale: as given, or for `None` [`DEFAULT_EDIT_SEMANTIC_GUIDANCE_SCALE`] where the
        pipeline has a `guidance_classifier` and 0 (no guidance) where it has none."""
        if semantic_guidance_scale is not None:
            return semantic_guidance_scale
        return DEFAULT_EDIT_SEMANTIC_GUIDANCE_SCALE if self.guidance_classifier is not None else 0.0

    def pipeline_au_estimator(self, field: str) -> AUEstimator:
        """The pipeline's `au_estimator` component as an [`AUEstimator`] onto the UNet's AU space; without one, a
        `ValueError` naming `field`, the argument that needs it."""
        if self.au_estimator is None or self.au_estimator_image_processor is None:
            missing = "au_estimator" if self.au_estimator is None else "au_estimator_image_processor"
            raise ValueError(
                f"{field} needs the pipeline's AU estimator but it has no `{missing}` component: add an AU regressor "
                "(e.g. trained by `examples/train_fer_classifier.py --task action_units`) as `au_estimator` and its "
                "image processor as `au_estimator_image_processor`."
            )
        return AUEstimator(self.au_estimator, self.au_estimator_image_processor, self.au_space, name="au_estimator")

    def estimate_source_action_units(self, images: torch.Tensor) -> torch.Tensor:  # (N, 3, H, W) in [-1, 1]
        """The AU estimator's AUs `(N, num_aus)` of the source images, in the UNet's AU space."""
        return self.pipeline_au_estimator(SOURCE_AUS_ESTIMATED)(self.image_processor.postprocess(images, output_type="pil"))

    def plan_edit_conditions(
        self,
        batch: EditBatch,
        source_action_units: torch.Tensor,  # (N, num_aus)
        generator: GeneratorInput,
        prototype_intensity: float | None,
        au_jitter: float,
        enrich: bool,
    ) -> tuple[list[str], list[str], torch.Tensor]:  # source prompts, target prompts, target AUs (N, num_aus)
        """Per image ([`plan_image_condition`]): the source prompt enriched with the source AUs, and the target prompt
        and AUs: `target_action_units` as given, else the source AUs plus `target_action_unit_delta` (clipped to the
        space's range), else the EMFACS prototype of the target expression with jitter from `generator[i]` (a list)
        or the one generator, in image order."""
        space = self.au_space
        generators = generator if isinstance(generator, list) else [generator] * batch.num_images
        if len(generators) != batch.num_images:
            raise ValueError(f"`generator` list has {len(generators)} entries for {batch.num_images} images.")
        prototype_intensity = space.prototype_value(prototype_intensity, field="prototype_intensity")
        source_prompts, prompts, rows = [], [], []
        for i, g in enumerate(generators):
            source_prompt, _ = plan_image_condition(
                space, batch.source_prompts[i], None, source_action_units[i], None, None, 0.0, enrich
            )
            given = None
            if batch.target_action_units is not None:
                given = batch.target_action_units[i]
            elif batch.target_action_unit_delta is not None:
                given = (source_action_units[i] + batch.target_action_unit_delta[i]).clamp(0, space.max_value)
            prompt, row = plan_image_condition(
                space, batch.prompts[i], batch.target_expressions[i], given, g, prototype_intensity, au_jitter, enrich
            )
            source_prompts.append(source_prompt)
            prompts.append(prompt)
            rows.append(row)
        return source_prompts, prompts, torch.stack(rows).float()

    @torch.no_grad()
    @replace_example_docstring(EDIT_EXAMPLE_DOC_STRING)
    def edit(
        self,
        image: LayoutImageInput | list[LayoutImageInput],
        target_expression: str | list[str | None] | None = None,
        target_action_units: AUInput | None = None,
        target_action_unit_delta: AUInput | None = None,
        source_action_units: AUInput | None = None,
        source_prompt: str | list[str | None] | None = None,
        prompt: str | list[str | None] | None = None,
        edit_strength: float = DEFAULT_EDIT_STRENGTH,
        inversion_condition: str = "source",
        num_inference_steps: int = 50,
        guidance_scale: float = DEFAULT_EDIT_GUIDANCE_SCALE,
        au_guidance_scale: float | None = None,
        au_scale: float = 1.0,
        semantic_guidance_scale: float | None = None,
        guidance_label_mapping: Mapping[str, str | None] | None = None,
        mutual_self_attention_window: tuple[float, float] | None = DEFAULT_EDIT_MUTUAL_SELF_ATTENTION_WINDOW,
        mutual_self_attention_start_layer: int | None = None,
        height: int | None = None,
        width: int | None = None,
        prototype_intensity: float | None = None,
        au_jitter: float = 0.5,
        enrich_prompt: bool = True,
        label_with_feranno: bool = True,
        feranno_label_mapping: Mapping[str, str | None] | None = None,
        generator: GeneratorInput = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[[Any, int, int, dict], dict]
        | PipelineCallback
        | MultiPipelineCallbacks
        | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ) -> SynFEREditOutput | tuple:
        r"""
        Edits the expression of faces, keeping the rest of the image: DDIM inversion of each source under its own
        condition (`source_prompt` enriched with its AUs, its AU tokens), then denoising under the target condition
        (`prompt` enriched with the target expression and AUs, the target AU tokens), both with the pipeline's
        scheduler and the UNet's AU path.

        Args:
            image (image or list of images): the source faces (PIL, array or tensor in the pipeline's conventions),
                each exactly `height` x `width`; one image for all targets, or one per image.
            target_expression (`str` or `list[str | None]`, *optional*): the target expression(s) from `EXPRESSIONS`.
                Alone, the target AUs are its EMFACS prototype (`prototype_intensity`) with seeded jitter
                (`au_jitter`); with `target_action_units` or `target_action_unit_delta` it is the images' label and
                must agree with the target AUs (every AU of its prototype active; none for neutral).
            target_action_units (`dict`, `list[dict]` or tensor `(batch, num_aus)`, *optional*): absolute target AUs.
            target_action_unit_delta (`dict`, `list[dict]` or tensor `(batch, num_aus)`, *optional*): signed AU
                changes from the source AUs (`{"AU12": +3.0, "AU4": -2.0}`), the result clipped to the AU range. Pass
                at most one of `target_action_units` and `target_action_unit_delta`.
            source_action_units (`dict`, `list[dict]` or tensor `(batch, num_aus)`, *optional*): the sources' AUs;
                `None` estimates them with the pipeline's `au_estimator` component (an error without one).
            source_prompt (`str` or `list[str | None]`, *optional*): the sources' captions; default `""` (the
                default description), enriched with the source AUs when `enrich_prompt`.
            prompt (`str` or `list[str | None]`, *optional*): the target captions; default the source captions.
            edit_strength (`float` in (0, 1], defaults to 1.0): the share of the `num_inference_steps` schedule that
                is inverted and then denoised under the target: 1.0 inverts to pure noise level, small values keep
                more of the source (and leave less room for the expression to change).
            inversion_condition (`str`, defaults to "source"): invert under the source's own condition ("source": its
                prompt enriched with its AUs, its AU tokens) or the null condition ("null": `""` and the null AU
                tokens, the unconditional branch of CFG).
            num_inference_steps (`int`, defaults to 50): the length of the full schedule.
            guidance_scale (`float`, defaults to 2.0): classifier-free guidance of the target denoising (negative
                prompt `""` + null AU); `<= 1` disables it, so that with the target equal to the source the
                denoising retraces the inversion (but the expression rarely changes).
            au_guidance_scale (`float`, *optional*): the target AU condition's own guidance scale in the target
                denoising, as in [`~SynFERPipeline.__call__`]. `None` (default): 3.0
                (`DEFAULT_EDIT_AU_GUIDANCE_SCALE`) under classifier-free guidance (`guidance_scale > 1`), none without
                it (so that an edit without CFG toward the source's own condition retraces the inversion). To guide
                the AUs with the text (two branches), pass `guidance_scale` itself (`joint_au_guidance_scale`).
            au_scale (`float`, defaults to 1.0): weight of the AU cross-attention branch in both passes.
            semantic_guidance_scale (`float`, *optional*): SynFER's semantic guidance toward each target expression
                during the target denoising, as in [`~SynFERPipeline.__call__`] (its default window and interval; > 0
                needs a `guidance_classifier`); images without a target expression are not guided. Default: 12.0
                (`DEFAULT_EDIT_SEMANTIC_GUIDANCE_SCALE`) where the pipeline has a guide, else 0.
            guidance_label_mapping (`dict`, *optional*): renames the guide's labels onto `EXPRESSIONS`, as in
                [`~SynFERPipeline.__call__`].
            mutual_self_attention_window (`tuple[float, float]`, *optional*): mutual self-attention (MasaCtrl,
                `mutual_attention.py`) in this share of the target denoising steps (`(0, 0.5)`: the first half): the
                edit's self-attention queries attend to the source's keys and values from its reconstruction pass
                (one more UNet pass per shared step). Defaults to `(0.0, 1.0)`
                (`DEFAULT_EDIT_MUTUAL_SELF_ATTENTION_WINDOW`, every step); `None`: off.
            mutual_self_attention_start_layer (`int`, *optional*): the first shared self-attention layer, in forward
                order (encoder, middle, decoder: `self_attention_layers(pipe.unet)`). `None` (default): the decoder's
                first (`default_start_layer`: 3 in the embedded default), the last layer where the decoder has none.
            height, width (`int`, *optional*): the image size; default from the UNet.
            prototype_intensity (`float`, *optional*), au_jitter (`float`, defaults to 0.5): the target expression's
                prototype AUs, as in [`~SynFERPipeline.__call__`].
            enrich_prompt (`bool`, defaults to True): enrich the source and target prompts with their AUs and the
                target expression.
            label_with_feranno (`bool`, defaults to True): with a `feranno_head` component, label each edit
                (`feranno_probabilities`) with one FERAnno pass on its final latents.
            feranno_label_mapping (`dict`, *optional*): renames the head's labels onto `EXPRESSIONS`, as in
                [`~SynFERPipeline.__call__`].
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*): draws the prototype jitter; a list
                gives one per image, so image `i` of a batch equals image `i` edited alone. A deterministic sampler's steps draw nothing.
            output_type (`str`, defaults to "pil"): "pil", "np", "pt" or "latent".
            return_dict (`bool`, defaults to True): else return `(images, expressions, action_units, prompts, seeds,
                feranno_probabilities, source_action_units)`.
            callback_on_step_end (`Callable`, [`PipelineCallback`] or [`MultiPipelineCallbacks`], *optional*),
            callback_on_step_end_tensor_inputs (`list[str]`, *optional*): as in [`~SynFERPipeline.__call__`], called
                after each step of the target denoising (`prompt_embeds`: the target text embedding); setting
                `pipe._interrupt` ends it.

        Examples:

        Returns:
            [`SynFEREditOutput`] or `tuple`: per image, the edit, its target expression (`None` for AU targets
            without one), target AUs, target prompt, seed, and the source AUs (given or estimated).
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        callback_on_step_end_tensor_inputs = callback_on_step_end_tensor_inputs or ["latents"]

        # 0. Default height and width to unet
        height = height or self.unet.config.sample_size * self.vae_scale_factor
        width = width or self.unet.config.sample_size * self.vae_scale_factor

        # 1. Check inputs and resolve them to one entry per image
        self.check_edit_inputs(
            target_expression, target_action_units, target_action_unit_delta, source_action_units, edit_strength,
            num_inference_steps, guidance_scale, au_scale, height, width, output_type, inversion_condition,
            semantic_guidance_scale, guidance_label_mapping, label_with_feranno, feranno_label_mapping,
            callback_on_step_end_tensor_inputs, au_guidance_scale, mutual_self_attention_window,
            mutual_self_attention_start_layer,
        )  # fmt: skip
        batch = self.resolve_edit_batch(
            image, target_expression, target_action_units, target_action_unit_delta, source_action_units,
            source_prompt, prompt, height, width,
        )  # fmt: skip
        self.start_call(guidance_scale, au_guidance_scale=edit_au_guidance_scale(au_guidance_scale, guidance_scale))
        device = self._execution_device

        # 2. Source AUs: given or estimated
        source_aus = batch.source_action_units
        if source_aus is None:
            source_aus = self.estimate_source_action_units(batch.images.to(device))

        # 3. Plan the source and target conditions
        source_prompts, prompts, target_aus = self.plan_edit_conditions(
            batch, source_aus.cpu(), generator, prototype_intensity, au_jitter, enrich_prompt
        )

        # 4. Prepare timesteps: the last `edit_strength` share of the schedule
        timesteps = self.set_schedule(num_inference_steps, device, edit_strength)

        # 5. Encode the source and target conditions
        inverted_prompts = source_prompts if inversion_condition == "source" else [""] * batch.num_images
        source_text = self.encode_prompt(inverted_prompts, device, 1, False)[0]  # (N, L, D)
        has_source_au = [inversion_condition == "source"] * batch.num_images
        source_au = self.encode_au_condition(source_aus, has_source_au, device)  # (N, T, D)
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompts, device, 1, self.do_classifier_free_guidance
        )  # (N, L, D) each
        au_embeds = self.encode_au_condition(target_aus, [True] * batch.num_images, device)

        # 6. Invert the sources under their own condition, from where the scheduler's last step ends
        end_level = float(getattr(self.scheduler, "final_alpha_cumprod", 1.0))
        trajectory = [] if mutual_self_attention_window is not None else None
        latents = self.invert_images(
            batch.images.to(device), timesteps, source_text, source_au, au_scale, end_level, trajectory
        )
        mutual_self_attention = None
        if trajectory is not None:
            source_condition = {"encoder_hidden_states": source_text, "au_embeds": source_au, "au_scale": au_scale,
                                "cross_attention_kwargs": self.cross_attention_kwargs}  # fmt: skip
            mutual_self_attention = MutualSelfAttention(
                self.unet, torch.stack(trajectory), inversion_levels(self.scheduler, timesteps)[0], source_condition,
                mutual_self_attention_window,
                default_start_layer(self.unet) if mutual_self_attention_start_layer is None
                else mutual_self_attention_start_layer,
                self.scheduler.order,
            )  # fmt: skip

        # 7. Denoise under the target condition, with semantic guidance toward the target expressions
        guided = any(e is not None for e in batch.target_expressions)
        guidance = self.plan_semantic_guidance(
            batch.target_expressions, guidance_label_mapping,
            self.edit_semantic_guidance_scale(semantic_guidance_scale) if guided else 0.0, DEFAULT_SG_WINDOW, "global",
            DEFAULT_SG_INTERVAL, "guide_size", latents.shape[-2:], len(timesteps), device,
        )  # fmt: skip
        with mutual_self_attention.attached() if mutual_self_attention else contextlib.nullcontext():
            latents = self.denoise(
                latents, timesteps, prompt_embeds, negative_prompt_embeds, au_embeds, au_scale,
                self.prepare_extra_step_kwargs(generator, 0.0), guidance, callback_on_step_end,
                callback_on_step_end_tensor_inputs, mutual_self_attention,
            )  # fmt: skip

        # 8. FERAnno labels: one pass on the returned latents
        feranno_probabilities = None
        if self.feranno_head is not None and label_with_feranno:
            feranno_probabilities = self.feranno_probabilities(latents, generator, feranno_label_mapping)

        # 9. Decode and report each image's source and target condition
        images = latents if output_type == "latent" else self.decode_latents(latents, output_type)
        self.maybe_free_model_hooks()
        space = self.au_space
        seeds = [g.initial_seed() for g in generator] if isinstance(generator, list) else None
        outputs = (images, batch.target_expressions, space.to_dicts(target_aus), prompts, seeds, feranno_probabilities)
        if not return_dict:
            return (*outputs, space.to_dicts(source_aus.cpu()))
        return SynFEREditOutput(
            *outputs, source_action_units=space.to_dicts(source_aus.cpu()), source_prompts=source_prompts
        )
