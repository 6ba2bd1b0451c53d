"""The dataset card's fields of a synthetic set, from its plan and labeller."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..facs import EXPRESSIONS, AUSpace
from ..hub_utils import inherited_license, license_label, load_card_metadata, split_hub_ids
from .config import DEFAULT_DESCRIPTIONS, expression_probabilities
from .labelers import Labeler
from .model import DEFAULT_MODEL_DIR, TINY_MODEL_NAME
from .plan import draw_target

if TYPE_CHECKING:
    from .relabel import RelabelSummary

DEFAULT_CARD_DATA: dict[str, Any] = {
    "pretty_name": "SynFER synthetic facial-expression dataset",
    "language": ["en"],  # the prompts
    "annotations_creators": ["machine-generated"],  # target, FERAnno and classifier labels
    "task_categories": ["image-classification", "text-to-image"],
    "tags": ["synfer", "synthetic", "facial-expression-recognition", "action-units"],
}


MAX_PEOPLE_ROWS = 12
"""Descriptions listed one per row in the card's people table; the rarer ones share a last row."""

SOURCE_DATASET_FIELDS = ("au_dataset", "layout_dataset", "edit_dataset")
"""Plan fields naming datasets a set is made from (the card's `source_datasets` where they are Hub ids)."""


def card_fields(
    plan: Mapping[str, Any], labeler: Labeler, repo_id: str | None, label_summary: RelabelSummary | None = None
) -> dict[str, Any]:
    """Card metadata (the generating model's licence, read from its card; the AU and layout datasets as
    `source_datasets` where they are on the Hub) and the template's text fields; `label_summary`: what a set-level
    aggregation or a relabel did (the per-voter reliabilities it estimated, how many labels differ from the
    targets)."""
    model = plan["model"]["name"]
    tiny = model == TINY_MODEL_NAME
    model_dir = DEFAULT_MODEL_DIR if model == "synfer_diffusers/default_model" else model
    model_card = None if tiny else load_card_metadata(model_dir)
    distribution = plan["expression_distribution"]
    space = AUSpace.from_config(plan["au_space"])
    value = space.prototype_value(plan["prototype_intensity"])
    if plan["au_policy"] == "prototype" and space.kind == "occurrence":
        au_policy = f"EMFACS prototype of the target (and left/right variants of its AUs) at {value:g}, no jitter"
    elif plan["au_policy"] == "prototype":
        au_policy = (f"EMFACS prototype of the target at intensity {value:g}, Gaussian jitter (std "
                     f"{plan['au_jitter']}) on its active AUs, drawn from each image's seed")  # fmt: skip
    else:
        au_policy = f"AU vector of a random row of `{plan['au_source']['name']}` with the target label"
    return {
        **inherited_license(model_card),
        # the Hub's convention: `original` for newly made data, `extended|<id>` for data made from a Hub dataset
        "source_datasets": ["original"]
        + [f"extended|{d}" for d in split_hub_ids([plan[k] for k in SOURCE_DATASET_FIELDS if plan[k]])[0]],
        "model_license": license_label(model_card),
        "source_note": _source_note(plan),
        "repo_id": repo_id,
        "num_samples": plan["num_samples"],
        "master_seed": plan["seed"],
        "image_size": "{}x{}".format(*plan["image_size"]),
        "sampling_summary": _sampling_summary(plan),
        "model_name": model,
        "model_fingerprint": plan["model"]["fingerprint"][:16],
        "model_lineage": "tiny random weights from `synfer_diffusers.tiny` (a stand-in)" if tiny else None,
        "au_names": plan["au_space"]["names"],
        "au_kind": plan["au_space"]["kind"],
        "expressions": list(EXPRESSIONS),
        "expression_summary": "balanced over the seven classes" if distribution is None
        else ", ".join(f"{name} {p:.1%}" for name, p in distribution.items()),
        "au_policy_summary": au_policy,
        "labeler_description": labeler.description,
        "label_summary": label_summary.describe() if label_summary is not None else None,
        "drop_discarded": plan["drop_discarded"],
        "edit_dataset": plan["edit_dataset"],
        "persons": plan.get("persons"),
        "people_table": people_table(plan),
        "noise_warning": "made with tiny random weights (no embedded default checkpoint yet): the images are noise."
        if tiny else None,
    }  # fmt: skip


def people_table(plan: Mapping[str, Any]) -> str | None:
    """Who the plan asks for, as a markdown table: samples per coarse description (the person a prompt describes:
    age, gender, hair, accessories, as the descriptions word them) and target expression, redrawn from each sample's
    seed as the plan draws them; None for an edit set, whose people are its source faces."""
    if plan["edit_dataset"] or plan.get("persons"):
        return None
    probabilities = expression_probabilities(plan["expression_distribution"])
    descriptions = plan["descriptions"] or DEFAULT_DESCRIPTIONS
    counts = Counter(
        draw_target(plan["seed"], i, probabilities, descriptions)[2:] for i in range(plan["num_samples"])
    )  # (expression, description) -> samples
    totals = Counter()
    for (_, description), count in counts.items():
        totals[description] += count
    ranked = [description for description, _ in totals.most_common()]
    rows = [(d, [counts[e, d] for e in EXPRESSIONS]) for d in ranked[:MAX_PEOPLE_ROWS]]
    rest = ranked[MAX_PEOPLE_ROWS:]
    if rest:
        rows.append((f"{len(rest)} other descriptions", [sum(counts[e, d] for d in rest) for e in EXPRESSIONS]))
    lines = [
        f"| description | {' | '.join(EXPRESSIONS)} | all |",
        "|---|" + "---|" * (len(EXPRESSIONS) + 1),
        *(f"| {name} | {' | '.join(map(str, row))} | {sum(row)} |" for name, row in rows),
        f"| all | {' | '.join(str(sum(row[i] for _, row in rows)) for i in range(len(EXPRESSIONS)))} | "
        f"{plan['num_samples']} |",
    ]
    return "\n".join(lines)


def _sampling_summary(plan: Mapping[str, Any]) -> str:
    """The card's one-line account of how the images were sampled."""
    parts = [
        f"{plan['num_inference_steps']} steps of {plan['scheduler_class']}",
        f"guidance scale {plan['guidance_scale']}",
        f"AU scale {plan['au_scale']}",
        *([f"AU guidance scale {plan['au_guidance_scale']}"] if plan.get("au_guidance_scale") is not None else []),
        *([f"AU feedback passes {plan['au_feedback_passes']} at gain {plan['au_feedback_gain']}"]
          if plan.get("au_feedback_passes") else []),  # fmt: skip
        f"{plan['dtype']} on {plan['device_type']}",
    ]
    if plan["negative_prompt"]:
        parts.append(f"negative prompt {plan['negative_prompt']!r}")
    if plan["eta"]:
        parts.append(f"eta {plan['eta']}")
    if plan["semantic_guidance_scale"]:
        start, end = plan["semantic_guidance_window"]
        parts.append(
            f"semantic guidance {plan['semantic_guidance_scale']} over the steps {start:.0%}-{end:.0%} (a gradient "
            f"every {plan['semantic_guidance_interval']} steps, {plan['semantic_guidance_normalization']} "
            "normalisation)"
        )
    if plan["pipeline_kwargs"]:
        parts.append(f"extra pipeline arguments {plan['pipeline_kwargs']}")
    if plan["layout_dataset"]:
        parts.append(f"layout initialisation from `{plan['layout_dataset']}` at strength {plan['layout_strength']}")
    if plan["edit_dataset"]:
        parts.append(
            f"edits of the faces of `{plan['edit_dataset']}` (`SynFERPipeline.edit`, DDIM inversion under each "
            f"face's own condition, strength {plan['edit_strength']}{_mutual_self_attention(plan)})"
        )
    if plan.get("persons"):
        parts.append(
            f"edits of {plan['persons']} synthetic persons' neutral faces (`SynFERPipeline.edit`, strength "
            f"{plan['edit_strength']}{_mutual_self_attention(plan)})"
        )
    if plan["drop_discarded"]:
        parts.append("rows the discard rule marks are left out")
    return ", ".join(parts)


def _mutual_self_attention(plan: Mapping[str, Any]) -> str:
    """The edit's mutual self-attention, as a clause of the sampling summary ("" when off)."""
    window = plan.get("mutual_self_attention_window")
    if window is None:
        return ""
    start, end = window
    return (f", mutual self-attention over the steps {start:.0%}-{end:.0%} from self-attention layer "
            f"{plan['mutual_self_attention_start_layer']}")  # fmt: skip


def _source_note(plan: Mapping[str, Any]) -> str | None:
    """Where the faces of an edit set come from, and how a person's identity is kept across its expressions."""
    if plan["edit_dataset"]:
        return f"the faces of an edit set are edits of `{plan['edit_dataset']}`'s images"
    if plan.get("persons"):
        return (
            f"each of the {plan['persons']} synthetic persons is a neutral face generated from its own seed and "
            "description, then edited into each expression: the face is DDIM-inverted under its own condition (its "
            "description and neutral AUs) and denoised under the target's, so that what the condition does not "
            "change (the person, the background) comes back from the inverted noise, and with mutual self-attention "
            "the edit's self-attention reads the source's keys and values; `person_id` groups a person's rows (on "
            "FaceWorld, benchmarks/RESULTS.md table 4 at a820b36: the edit's default (CFG 2, semantic guidance 12, AU "
            "guidance 3, mutual self-attention in every step from the decoder) keeps 70.7% of the identity attributes "
            "an identity classifier reads off the source, the layout baseline 63.0%; across a person's 7 images of a "
            "36-person set the classifier's readings agree 82.9% of the time, 39.7% for 7 plain generated images)"
        )
    return None
