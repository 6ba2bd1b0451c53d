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
   background stage (`background`: one thread, `queue_depth` batches behind; by default on an accelerator only,
   [`default_queue_depth`]) that overlaps with the next batch's denoising; the set is byte-identical to a
   synchronous run.

Before anything is written, everything is checked (config, model, sources, voters, a dry resolution of the
pipeline's inputs, the folder's state), and the folder is locked for the run ([`OutputLock`]).

An **edit set** (`edit_dataset`, `edit_set`) plans sample `i` as source face `i // E` edited into expression `i % E`
([`plan_edit_sample`]) and makes it with `SynFERPipeline.edit`; its rows carry `source_id` and `source_image_sha256`.
A **persons set** (`persons`, `persons`) is an edit set of K new faces: person `p`'s description, neutral AUs and
neutral face come from its own seed ([`person_seed`]), generated on first use in each process
([`SyntheticPersons`]); its rows carry `person_id` and `source_image_sha256`.

Several processes (`accelerate launch`, `torchrun`) split the shards round-robin: process `p` of `K` writes shards
`p, p + K, ...`; the main process writes the card once all are done. The result equals a one-process run.

Names are imported lazily: [`SyntheticSetConfig`] loads no torch (the command line's help reads it).
"""

from ..lazy_imports import lazy_namespace

_import_structure = {
    "background": ["BackgroundStage", "sample_rows"],
    "card": ["DEFAULT_CARD_DATA", "card_fields"],
    "config": [
        "AU_POLICIES", "DEFAULT_DESCRIPTIONS", "DEFAULT_QUEUE_DEPTH", "DTYPES", "MAX_IMAGE_SIZE_FACTOR", "SCHEDULERS",
        "VOTING_FIELDS", "SyntheticSetConfig", "default_queue_depth", "torch_dtype",
    ],
    "edit_set": ["EditSource", "edit_inputs", "plan_edit_sample"],
    "labelers": ["GeneratedOutput", "Labeler", "SampleLabels", "TargetLabeler", "VotingLabeler", "default_labeler"],
    "lock": ["FolderLockedError", "OutputLock"],
    "model": [
        "DEFAULT_MODEL_DIR", "DEFAULT_MODEL_ENV", "TINY_MODEL_NAME", "configure_pipeline", "default_model_dir",
        "pipeline_fingerprint", "resolve_pipeline",
    ],
    "persons": ["SyntheticPersons", "person_seed"],
    "plan": [
        "AUSource", "LayoutSource", "PlannedSample", "build_plan", "pipeline_inputs", "plan_sample", "sample_seed",
    ],
    "run": ["SyntheticSetResult", "generate_synthetic_dataset"],
}  # fmt: skip

__getattr__, __dir__, __all__ = lazy_namespace(__name__, _import_structure)
