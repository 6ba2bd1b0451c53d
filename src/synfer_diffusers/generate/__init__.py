"""Synthetic-set generation (SynFER stage 3): plan -> `SynFERPipeline` -> labels -> parquet shards + card.

This is the one package that ties the pipeline to the data writer (`data/` never imports `pipelines/`):
`config` (what a set is), `plan` (one [`PlannedSample`] per sample and the JSON plan), `labelers`, `model`
(which checkpoint, loaded how), `lock` (one run per folder), `run` (the loop) and `card`.

1. **Plan.** [`SyntheticSetConfig`] holds everything that determines the samples, sampler, dtype, device and
   voting options included. Sample `i` gets the seed [`sample_seed`]`(seed, i)` (a sha256, not Python's `hash`),
   and its expression, coarse description, final AU vector and final prompt are drawn from an RNG seeded by that
   seed alone ([`plan_sample`], through the pipeline's own planner `plan_image_condition`): the set does not depend
   on batch size, process count or resume point. The pipeline is given the plan's values and nothing is read back.
   The plan (config + scheduler class + device type + model fingerprint + AU space + AU source + the labeller's
   full configuration) is stored as `plan.json`; a rerun must match it.
2. **Generate** in batches with one `torch.Generator` per image (`pipe(..., generator=[...])`), so image `i` is
   reproduced alone from its seed.
3. **Label.** A [`Labeler`] maps the pipeline output + targets to `label`, `label_probs`, `agreement`, `keep` and
   each voter's vote. The default ([`default_labeler`]) votes with FERAnno, the guide (unless it steered the images:
   semantic guidance on) and the target ([`VotingLabeler`]), or takes the target alone ([`TargetLabeler`]) when there is nothing to vote with; extra
   pipeline arguments (those the config does not set) go through `pipeline_kwargs`; both are recorded in the plan.
4. **Write** shards with [`~synfer_diffusers.data.writer.SyntheticSetWriter`] (atomic, verified on resume), then
   the card and preview, then optionally push to the Hub. Steps 3 and 4 (and the PIL conversion) run in a bounded
   background stage (`background`: one thread, `queue_depth` batches behind) that overlaps with the next batch's
   denoising; the set is byte-identical to a synchronous run.

Before anything is written, everything is checked (config, model, sources, voters, a dry resolution of the
pipeline's inputs, the folder's state), and the folder is locked for the run ([`OutputLock`]).

An **edit set** (`edit_dataset`, `edit_set`) plans sample `i` as source face `i // E` edited into expression `i % E`
([`plan_edit_sample`]) and makes it with `SynFERPipeline.edit`; its rows carry `source_id` and `source_image_sha256`.

Several processes (`accelerate launch`, `torchrun`) split the shards round-robin: process `p` of `K` writes shards
`p, p + K, ...`; the main process writes the card once all are done. The result equals a one-process run.
"""

from .background import DEFAULT_QUEUE_DEPTH, BackgroundStage, sample_rows
from .card import DEFAULT_CARD_DATA, card_fields
from .config import (
    AU_POLICIES,
    DEFAULT_DESCRIPTIONS,
    DTYPES,
    MAX_IMAGE_SIZE_FACTOR,
    SCHEDULERS,
    ConfigFlag,
    SyntheticSetConfig,
    config_flags,
)
from .edit_set import EditSource, edit_inputs, plan_edit_sample
from .labelers import GeneratedOutput, Labeler, SampleLabels, TargetLabeler, VotingLabeler, default_labeler
from .lock import FolderLockedError, OutputLock
from .model import (
    DEFAULT_MODEL_DIR,
    DEFAULT_MODEL_ENV,
    TINY_MODEL_NAME,
    configure_pipeline,
    default_model_dir,
    pipeline_fingerprint,
    resolve_pipeline,
)
from .plan import AUSource, LayoutSource, PlannedSample, build_plan, pipeline_inputs, plan_sample, sample_seed
from .run import SyntheticSetResult, generate_synthetic_dataset

__all__ = [
    "AUSource",
    "AU_POLICIES",
    "BackgroundStage",
    "ConfigFlag",
    "DEFAULT_CARD_DATA",
    "DEFAULT_DESCRIPTIONS",
    "DEFAULT_MODEL_DIR",
    "DEFAULT_MODEL_ENV",
    "DEFAULT_QUEUE_DEPTH",
    "DTYPES",
    "EditSource",
    "FolderLockedError",
    "GeneratedOutput",
    "Labeler",
    "LayoutSource",
    "MAX_IMAGE_SIZE_FACTOR",
    "OutputLock",
    "PlannedSample",
    "SCHEDULERS",
    "SampleLabels",
    "SyntheticSetConfig",
    "SyntheticSetResult",
    "TINY_MODEL_NAME",
    "TargetLabeler",
    "VotingLabeler",
    "build_plan",
    "card_fields",
    "config_flags",
    "configure_pipeline",
    "default_labeler",
    "default_model_dir",
    "edit_inputs",
    "generate_synthetic_dataset",
    "pipeline_fingerprint",
    "pipeline_inputs",
    "plan_edit_sample",
    "plan_sample",
    "resolve_pipeline",
    "sample_rows",
    "sample_seed",
]
