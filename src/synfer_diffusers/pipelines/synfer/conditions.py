"""What each generated or edited image is conditioned on (SynFER sampling): the call's inputs resolved to one batch
(generation's [`resolve_batch`], editing's [`EditBatch`] helpers), EMFACS prototype AUs with seeded jitter for target
expressions, and prompts enriched with the expression and AU words.

Functions of the UNet's [`AUSpace`] (`None` for a text-only UNet), so that [`SynFERPipeline`] plans conditions the same
way whichever UNet class (the package's, or a checkpoint's code file) it drives.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor

from ...facs import EXPRESSIONS, AUSpace, expression_prototype
from ...prompts import enrich_prompt

AUInput = Mapping[str, float] | Sequence[Mapping[str, float]] | torch.Tensor | np.ndarray
GeneratorInput = torch.Generator | list[torch.Generator] | None


def resolve_batch(
    space: AUSpace | None,
    prompt: str | list[str] | None,
    expression: str | list[str | None] | None,
    action_units: AUInput | None,
    negative_prompt: str | list[str] | None,
    prompt_embeds: torch.Tensor | None,
    negative_prompt_embeds: torch.Tensor | None,
) -> tuple[int, list[str | None], list[str | None], torch.Tensor | None, list[str] | None]:
    """Checks that batched inputs agree in length and broadcasts single values; returns `(batch_size, prompts,
    expressions, au_values (batch, num_aus) or None, negative_prompts or None)`."""
    au_values = space.to_tensor(action_units) if action_units is not None else None
    sizes = {
        "prompt": len(prompt) if isinstance(prompt, list) else None,
        "prompt_embeds": prompt_embeds.shape[0] if prompt_embeds is not None else None,
        "negative_prompt_embeds": negative_prompt_embeds.shape[0] if negative_prompt_embeds is not None else None,
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
    if all(c is None for c in (*prompts, *expressions, au_values, prompt_embeds)):
        raise ValueError("Give at least one of `prompt`, `prompt_embeds`, `expression` or `action_units`.")
    if au_values is not None and au_values.shape[0] == 1:
        au_values = au_values.expand(batch_size, -1)
    negatives = None
    if negative_prompt is not None:
        negatives = negative_prompt if isinstance(negative_prompt, list) else [negative_prompt] * batch_size
    return batch_size, prompts, expressions, au_values, negatives


def sample_prototype_action_units(
    space: AUSpace, expression: str, generator: torch.Generator | None, intensity: float | None, jitter: float
) -> torch.Tensor:  # (num_aus,)
    """EMFACS prototype of `expression` (its AUs and their left/right variants at `intensity`, see
    [`expression_prototype`]) with seeded intensity jitter on its active AUs, drawn from `generator` on its own device
    (torch's global RNG for `None`). Occurrence spaces get no jitter (their prototypes are 0/1 by default).

    Each active AU of prototype value `v` becomes `v + clip(sigma z, -d, d)` with `z` standard normal: a Gaussian of
    std `sigma = min(jitter, d / 2)` truncated symmetrically to `v ± d`, where `d = min(v - floor, max - v)` is the
    room to the range's edges (`floor = min(0.5, v / 2)`, so the AU stays active). The distribution is symmetric
    around `v`, so its mean is the requested intensity, and narrows near the edges (no jitter at the range's top);
    away from them (e.g. the default 3.0 of 0-5 with jitter 0.5) it is the plain Gaussian."""
    prototype = torch.tensor(list(expression_prototype(expression, space, intensity).values()))
    if space.kind == "occurrence" or jitter == 0:
        return prototype
    device = generator.device if generator is not None else None
    room = torch.minimum(prototype - torch.clamp(prototype / 2, max=0.5), space.max_value - prototype)  # d
    std = torch.clamp(room / 2, max=jitter)
    noise = randn_tensor(prototype.shape, generator=generator, device=device).cpu() * std
    return torch.where(prototype > 0, prototype + torch.maximum(torch.minimum(noise, room), -room), prototype)


def plan_image_condition(
    space: AUSpace | None,
    prompt: str | None,
    expression: str | None,
    action_units: torch.Tensor | None,  # (num_aus,)
    generator: torch.Generator | None,
    prototype_intensity: float | None,
    au_jitter: float,
    enrich: bool,
) -> tuple[str, torch.Tensor | None]:  # prompt, (num_aus,) or None
    """One image's condition, the single planner of SynFER sampling (the pipeline's per-image conditions and
    `synfer generate`'s plan both come from it): the AU vector (`action_units` as given; else the EMFACS prototype of
    `expression` with jitter from `generator`, see [`sample_prototype_action_units`]; else `None`: the null AU
    condition) and the prompt (enriched with the expression and AU words when `enrich`)."""
    if space is None:
        row = None
    elif action_units is not None:
        row = action_units
    elif expression is not None:
        row = sample_prototype_action_units(space, expression, generator, prototype_intensity, au_jitter)
    else:
        row = None
    if not enrich:
        return prompt or "", row
    return enrich_prompt(prompt, expression, space.to_dicts(row)[0] if row is not None else None), row


def plan_conditions(
    space: AUSpace | None,
    prompts: list[str | None] | None,
    expressions: list[str | None],
    au_values: torch.Tensor | None,
    num_images_per_prompt: int,
    generator: GeneratorInput,
    prototype_intensity: float | None,
    au_jitter: float,
    enrich: bool,
) -> tuple[list[str | None], list[str | None], torch.Tensor | None, list[bool]]:
    """Per image ([`plan_image_condition`]): prompt to encode (`None` for all with `prompts=None`, i.e. given
    `prompt_embeds`), target expression, AU vector (`(num_images, num_aus)`) and whether it has an AU condition
    (False -> null AU condition). Prototype jitter of image `i` comes from `generator[i]` for a list, else from the
    one generator (or torch's global RNG), in image order."""
    num_images = len(expressions) * num_images_per_prompt
    generators = generator if isinstance(generator, list) else [generator] * num_images
    if space is not None:  # checked against the space once, naming the call's argument
        prototype_intensity = space.prototype_value(prototype_intensity, field="prototype_intensity")
    used_prompts, image_expressions, rows, has_au = [], [], [], []
    for i, g in enumerate(generators):
        p = i // num_images_per_prompt
        given = au_values[p] if au_values is not None else None
        prompt = prompts[p] if prompts is not None else None
        used, row = plan_image_condition(
            space, prompt, expressions[p], given, g, prototype_intensity, au_jitter, enrich
        )
        used_prompts.append(used if prompts is not None else None)
        image_expressions.append(expressions[p])
        rows.append(row if row is not None else torch.zeros(space.num_aus) if space else None)
        has_au.append(row is not None)
    au_matrix = torch.stack(rows).float() if space is not None else None
    return used_prompts, image_expressions, au_matrix, has_au


def _is_batched(action_units: AUInput) -> bool:
    if isinstance(action_units, (torch.Tensor, np.ndarray)):
        return action_units.ndim == 2
    return not isinstance(action_units, Mapping)


@dataclass
class EditBatch:
    """An edit call's inputs resolved to one entry per image (`N` images)."""

    images: torch.Tensor  # (N, 3, H, W) in [-1, 1]
    target_expressions: list[str | None]
    target_action_units: torch.Tensor | None  # (N, num_aus): absolute targets, or None
    target_action_unit_delta: torch.Tensor | None  # (N, num_aus): signed changes from the source, or None
    source_action_units: torch.Tensor | None  # (N, num_aus), or None: estimated
    source_prompts: list[str | None]
    prompts: list[str | None]

    @property
    def num_images(self) -> int:
        return self.images.shape[0]


def au_delta_to_tensor(space: AUSpace, delta: AUInput, field: str = "target_action_unit_delta") -> torch.Tensor:
    """Signed AU changes (one dict, a list of dicts, or a `(batch, num_aus)` / `(num_aus,)` array) -> a validated
    `(batch, num_aus)` float32 tensor; each change lies in `[-max, max]` of the space."""
    if isinstance(delta, np.ndarray):
        delta = torch.from_numpy(delta)
    if isinstance(delta, torch.Tensor):
        values = delta.detach().cpu().float()
        values = values[None] if values.ndim == 1 else values
        if values.ndim != 2 or values.shape[1] != space.num_aus:
            raise ValueError(f"`{field}` must have shape (batch, {space.num_aus}), got {tuple(values.shape)}.")
    else:
        rows = [delta] if isinstance(delta, Mapping) else delta
        if not isinstance(rows, list) or not rows or not all(isinstance(r, Mapping) for r in rows):
            raise TypeError(f"`{field}` must be an AU dict, a non-empty list of AU dicts, or a tensor.")
        values = torch.zeros(len(rows), space.num_aus)
        for i, row in enumerate(rows):
            for name, value in row.items():
                values[i, space.index(name, field)] = float(value)
    bad = ~torch.isfinite(values) | (values.abs() > space.max_value)
    if bad.any():
        raise ValueError(
            f"`{field}` values must be finite changes in [-{space.max_value:g}, {space.max_value:g}], got "
            f"{values[bad][0].item()}."
        )
    return values


def check_expression_agrees(space: AUSpace, expression: str, action_units: torch.Tensor, field: str) -> None:
    """An expression and a target AU vector `(num_aus,)` contradict when an AU of the expression's EMFACS prototype
    (in `space`) is 0 in the vector, or, for a prototype without AUs (neutral), when any AU is active."""
    prototype = expression_prototype(expression, space)
    active = {name for name, value in zip(space.names, action_units.tolist()) if value > 0}
    required = {name for name, value in prototype.items() if value > 0}
    missing = sorted(required - active, key=space.names.index)
    if missing or (not required and active):
        detail = f"its prototype AUs {missing} are 0" if missing else f"it has no active AUs, got {sorted(active)}"
        raise ValueError(f"`target_expression` {expression!r} contradicts `{field}`: {detail}.")


def broadcast_to_images(value, num_images: int, field: str) -> list:
    """A value for all images, or a list with one per image."""
    if not isinstance(value, list):
        return [value] * num_images
    if len(value) != num_images:
        raise ValueError(f"`{field}` has {len(value)} entries for {num_images} images.")
    return value


def broadcast_au_rows(rows: torch.Tensor | None, num_images: int, field: str) -> torch.Tensor | None:
    if rows is None or rows.shape[0] == num_images:
        return rows
    if rows.shape[0] == 1:
        return rows.expand(num_images, -1)
    raise ValueError(f"`{field}` has {rows.shape[0]} rows for {num_images} images.")


def edit_batch_size(image, values: Mapping[str, object], au_rows: Mapping[str, torch.Tensor | None]) -> int:
    """The number of images: the common length of the list inputs (and AU inputs of more than one row); one image, in
    a list or not, is broadcast to all, as `layout_image` in [`~SynFERPipeline.__call__`]."""
    sizes = {"image": len(image)} if isinstance(image, list) and len(image) != 1 else {}
    sizes.update({k: len(v) for k, v in values.items() if isinstance(v, list)})
    sizes.update({k: v.shape[0] for k, v in au_rows.items() if v is not None and v.shape[0] > 1})
    if len(set(sizes.values())) > 1:
        raise ValueError(f"Batch sizes of the inputs do not match: {sizes}.")
    size = next(iter(sizes.values()), 1)
    if size < 1:
        raise ValueError(f"Inputs must not be empty lists, got {sizes}.")
    return size


def per_image(values: list[str] | torch.Tensor | None, num_images_per_prompt: int) -> list[str] | torch.Tensor | None:
    """Per-prompt values (a list or a `(batch, ...)` tensor) repeated for each image of their prompt."""
    if values is None or num_images_per_prompt == 1:
        return values
    if isinstance(values, torch.Tensor):
        return values.repeat_interleave(num_images_per_prompt, dim=0)
    return [v for v in values for _ in range(num_images_per_prompt)]
