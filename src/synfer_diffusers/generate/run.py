"""The run loop of `synfer generate`: check everything, lock the folder, generate and write the pending shards of
this process, then the card, then the optional push."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from tqdm.auto import tqdm

from ..data.hub import check_push_target, push_synthetic_dataset
from ..data.writer import SyntheticSetWriter
from ..labels import load_voter
from ..pipelines.synfer.mutual_attention import default_start_layer
from ..pipelines.synfer.pipeline_synfer import SynFERPipeline
from ..value_checks import check_int
from .background import BackgroundStage, GeneratedBatch, ShardAssembler
from .card import DEFAULT_CARD_DATA, card_fields
from .config import SyntheticSetConfig, check_device, default_queue_depth, torch_dtype
from .edit_set import EditSource, edit_inputs, plan_edit_sample
from .labelers import Labeler, changed_voting_options, default_labeler
from .lock import OutputLock
from .model import checkpoint_voters, configure_pipeline, resolve_pipeline
from .persons import SyntheticPersons
from .plan import AUSource, LayoutSource, PlannedSample, build_plan, pipeline_inputs, plan_sample
from .relabel import finish_rewrite, read_journal, rewrite_labels

logger = logging.getLogger(__name__)


@dataclass
class SyntheticSetResult:
    """What a [`generate_synthetic_dataset`] call did: `shards_written` by this process, whether the set is
    `complete` (card written), and the Hub `commit_url` if pushed."""

    output_dir: str
    num_samples: int
    num_shards: int
    shards_written: int
    complete: bool
    commit_url: str | None = None


@dataclass
class _Run:
    """What a checked run needs: the config (an edit set's `num_samples` resolved), the configured pipeline, sources,
    labeller, plan and writer."""

    config: SyntheticSetConfig
    pipe: SynFERPipeline
    au_source: AUSource | None
    layout_source: LayoutSource | None
    edit_source: EditSource | SyntheticPersons | None
    labeler: Labeler
    writer: SyntheticSetWriter

    def plan(self, sample_id: int) -> PlannedSample:
        """Sample `sample_id` of the plan: edited from a source face in an edit set, else generated."""
        if self.edit_source is not None:
            return plan_edit_sample(self.config, sample_id, self.pipe, self.edit_source)
        return plan_sample(self.config, sample_id, self.pipe.au_space, self.au_source, self.layout_source)

    def inputs(self, samples: Sequence[PlannedSample], pipeline_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
        """The arguments of the pipeline call ([`generate`]) that makes `samples`."""
        if self.edit_source is not None:
            return edit_inputs(self.config, samples, pipeline_kwargs)
        return pipeline_inputs(self.config, samples, pipeline_kwargs)

    def planned(
        self, sample_ids: range, pipeline_kwargs: Mapping[str, Any] | None
    ) -> tuple[list[PlannedSample], dict[str, Any]]:
        """The samples `sample_ids` of the plan and the arguments of the [`generate`] call that makes them."""
        samples = [self.plan(i) for i in sample_ids]
        return samples, self.inputs(samples, pipeline_kwargs)

    def generate(self, inputs: Mapping[str, Any]) -> Any:
        """The pipeline's output for `inputs` ([`planned`]): `pipe.edit` in an edit set, else `pipe(...)`, its images
        as tensors (`output_type="pt"`: the background stage converts them, [`ShardAssembler`])."""
        call = self.pipe.edit if self.edit_source is not None else self.pipe
        return call(**{**inputs, "output_type": "pt"})


def generate_synthetic_dataset(
    config: SyntheticSetConfig,
    output_dir: str | os.PathLike,
    model: str | None = None,
    pipeline: SynFERPipeline | None = None,
    batch_size: int = 8,
    resume: bool = False,
    overwrite: bool = False,
    push_to_hub: str | None = None,
    token: str | None = None,
    private: bool | None = None,
    labeler: Labeler | None = None,
    voters: Sequence[str] = (),
    pipeline_kwargs: Mapping[str, Any] | None = None,
    card_data: Mapping[str, Any] | None = None,
    process_index: int | None = None,
    num_processes: int | None = None,
    show_progress: bool = True,
    wait: bool = False,
    queue_depth: int | None = None,
) -> SyntheticSetResult:
    r"""
    Generates, labels and writes a synthetic facial-expression dataset folder (and optionally publishes it).

    Args:
        config ([`SyntheticSetConfig`]): what to generate.
        output_dir (`str` or `os.PathLike`): the dataset folder (`datasets.load_dataset(output_dir)` reads it).
        model (`str`, *optional*): a `SynFERPipeline` folder or Hub repo id; default: [`resolve_pipeline`]`(None)`.
        pipeline ([`SynFERPipeline`], *optional*): an already loaded pipeline, instead of `model`; it gets the
            config's scheduler, dtype and device in place ([`configure_pipeline`]).
        batch_size (`int`, defaults to 8): images per pipeline call. Not part of the plan: results agree across
            batch sizes up to float rounding, and exactly for the same batch size.
        resume (`bool`): complete an interrupted run of the same plan (verifying the shards already written).
        overwrite (`bool`): replace a folder holding another plan.
        push_to_hub (`str`, *optional*): Hub dataset repo id `"user/name"`; the complete set is uploaded
            ([`push_synthetic_dataset`]: one commit for small sets, a resumable upload with the card last for large
            ones). The repo id and token are checked before anything is generated.
        token (`str`, *optional*), private (`bool`, *optional*): for the push.
        labeler ([`Labeler`], *optional*): default [`default_labeler`]: FERAnno + guide + target voting when the
            pipeline has a `feranno_head` (or `voters` are given), with the config's voting options, else
            [`TargetLabeler`]; the guide does not vote on a set made with semantic guidance.
        voters (`list[str]`, *optional*): extra voting classifiers (transformers image-classifier folders or repo
            ids, `id2label` mappable onto `EXPRESSIONS`) for the default labeler.
        pipeline_kwargs (`dict`, *optional*): extra JSON-serialisable pipeline arguments (recorded in the plan),
            other than those the config sets.
        card_data (`dict`, *optional*): YAML metadata of the card (`license`, `tags`, `pretty_name`, ...).
        process_index, num_processes (`int`, *optional*): this process's share (shards `process_index::num_processes`).
            Default: accelerate's state, so `accelerate launch --num_processes K -m synfer_diffusers.cli generate`
            splits the work, with barriers. Given explicitly there is no barrier: the call that finds every shard
            written finalises the set, so run process 0 first (it prepares the folder) or together.
        show_progress (`bool`, defaults to True): a progress bar with rate and ETA.
        wait (`bool`, defaults to False): when another run holds the folder's lock, wait for it instead of raising
            [`FolderLockedError`].
        queue_depth (`int`, *optional*): batches the CPU work after each pipeline call (PIL conversion, votes,
            PNG encoding, shard writes) may fall behind, done meanwhile by a background thread
            ([`BackgroundStage`]) so that it overlaps with the next batch's denoising; at most this many generated
            batches wait in memory. 0: all on the calling thread. Default ([`default_queue_depth`]): 2 on an
            accelerator, 0 on the CPU. Not part of the plan: the set is byte-identical.

    Everything is checked before the folder is touched (the config, the model, the sources, the voters, one dry
    resolution of the pipeline's inputs, the folder's state): bad input raises and leaves the folder as it was.

    Returns:
        [`SyntheticSetResult`].

    Example:

    ```py
    >>> from datasets import load_dataset
    >>> from synfer_diffusers.generate import SyntheticSetConfig, generate_synthetic_dataset

    >>> config = SyntheticSetConfig(num_samples=16, seed=0, num_inference_steps=4, shard_size=8)
    >>> generate_synthetic_dataset(config, "outputs/demo")  # no model: the embedded default
    >>> load_dataset("outputs/demo", split="train").features["label"].names[:2]
    ['neutral', 'happy']
    ```
    """
    if not isinstance(config, SyntheticSetConfig):
        raise TypeError(f"`config` must be a SyntheticSetConfig, got {type(config).__name__}.")
    check_int("batch_size", batch_size, 1)
    if queue_depth is not None:
        check_int("queue_depth", queue_depth, 0)
    if resume and overwrite:
        raise ValueError("`resume` and `overwrite` exclude each other: pick one.")
    if push_to_hub is not None:
        token = check_push_target(push_to_hub, token)
    if labeler is not None and changed_voting_options(config.voting_options()):
        raise ValueError("The config's voting options are for the default labeler; pass them to your `labeler`.")
    rank, world, barrier, process_device = _process_layout(process_index, num_processes)
    distributed = process_index is None and world > 1
    run = _checked_run(config, output_dir, model, pipeline, labeler, voters, pipeline_kwargs, process_device)
    config = run.config
    queue_depth = default_queue_depth(run.pipe.device) if queue_depth is None else queue_depth
    run.writer.check(resume=resume, overwrite=overwrite, is_main_process=rank == 0)

    lock = None
    if rank == 0 or not distributed:  # the other processes of a launch follow process 0, which holds the lock
        lock = OutputLock(output_dir, part=None if process_index is None else process_index, wait=wait).acquire()
    try:
        if distributed and rank > 0:
            barrier()  # the main process prepares the folder first
        run.writer.prepare(resume=resume, overwrite=overwrite, is_main_process=rank == 0)
        if distributed and rank == 0:
            barrier()
        pending = _write_pending_shards(config, run, batch_size, pipeline_kwargs, rank, world, show_progress,
                                        queue_depth)  # fmt: skip
        if distributed:
            barrier()
        result = SyntheticSetResult(str(output_dir), config.num_samples, len(run.writer.shards), len(pending), False)
        if (rank == 0 or not distributed) and not run.writer.pending_shards():
            summary = rewrite_labels(run.writer, run.labeler) if run.labeler.needs_whole_set else None
            if summary is not None:
                logger.info(f"Process {rank + 1}/{world} finalised the labels: {summary.describe()}")
            fields = card_fields(run.writer.plan, run.labeler, push_to_hub, summary)
            run.writer.finalize(fields, {**DEFAULT_CARD_DATA, **(card_data or {})})
            finish_rewrite(output_dir)
            result.complete = True
            if push_to_hub is not None:
                result.commit_url = push_synthetic_dataset(output_dir, push_to_hub, token=token, private=private)
        return result
    finally:
        if lock is not None:
            lock.release()


def _checked_run(
    config: SyntheticSetConfig,
    output_dir: str | os.PathLike,
    model: str | None,
    pipeline: SynFERPipeline | None,
    labeler: Labeler | None,
    voters: Sequence[str],
    pipeline_kwargs: Mapping[str, Any] | None,
    process_device: torch.device,
) -> _Run:
    """Loads and checks everything a run needs without touching `output_dir`; raises `ValueError` naming the field."""
    device = _resolve_device(config.device, process_device)
    if pipeline is not None:
        pipe, model_name = pipeline, str(getattr(pipeline, "name_or_path", None) or "custom")
    else:
        pipe, model_name = resolve_pipeline(model, torch_dtype(config.dtype))
    if pipe.au_space is None:
        raise ValueError("`model` has no AU adapter (AUConditionedUNet2DConditionModel): cannot record action units.")
    configure_pipeline(pipe, config, device)
    pipe.set_progress_bar_config(disable=True)
    size = config.check_image_size(pipe.unet.config.sample_size * pipe.vae_scale_factor)
    au_source = AUSource.from_dataset(config.au_dataset, pipe.au_space) if config.au_policy == "dataset" else None
    if au_source is not None:
        au_source.check_covers(config.expression_probabilities())
    layout_source = LayoutSource.from_dataset(config.layout_dataset, size) if config.layout_dataset else None
    edit_source, edit_plan = None, None
    if config.is_edit_set:
        edit_source = (EditSource.from_dataset(config.edit_dataset, size, pipe) if config.edit_dataset is not None
                       else SyntheticPersons(config, pipe))  # fmt: skip
        config = _edit_set_config(config, len(edit_source), pipe)
        edit_plan = {"name": edit_source.name, "fingerprint": edit_source.fingerprint, "num_faces": len(edit_source)}
    shipped = checkpoint_voters(model) if pipeline is None else []
    voter_models = [*shipped, *(load_voter(spec) for spec in voters)]
    labeler = labeler or default_labeler(
        pipe, voter_models, config.voting_options(), guided=config.semantic_guidance_scale > 0,
        guide_label_mapping=config.guidance_label_mapping,
    )
    if config.drop_discarded and labeler.needs_whole_set:
        raise ValueError(
            f"`drop_discarded` needs `aggregation='paper'` (`--aggregation paper`): {config.aggregation!r} labels the "
            "whole set at the end, so rows are flagged keep=False rather than dropped (filter them when loading)."
        )
    plan = build_plan(config, pipe, model_name, au_source, labeler, pipeline_kwargs, layout_source, edit_plan)
    run = _Run(config, pipe, au_source, layout_source, edit_source, labeler, SyntheticSetWriter(output_dir, plan))
    journal = read_journal(output_dir)
    if journal is not None and journal["plan"] != run.writer.plan:
        raise FileExistsError(
            f"{output_dir} holds an interrupted `synfer relabel`: rerun it to finish, or pass --overwrite."
        )
    check = pipe.check_edit_call if edit_source is not None else pipe.check_call
    check(**run.inputs([run.plan(0)], pipeline_kwargs))
    return run


def _edit_set_config(config: SyntheticSetConfig, num_faces: int, pipe: SynFERPipeline) -> SyntheticSetConfig:
    """The config with an edit set's `num_samples` (every face x expression by default, at most that), semantic
    guidance scale (`None`: the edit's default for `pipe`, see `SynFERPipeline.edit_semantic_guidance_scale`) and first
    mutual self-attention layer (`None`: `pipe`'s decoder's first, `default_start_layer`), as the plan records them."""
    available = num_faces * len(config.edit_expressions())
    layer = config.mutual_self_attention_start_layer
    config = replace(
        config, semantic_guidance_scale=pipe.edit_semantic_guidance_scale(config.semantic_guidance_scale),
        mutual_self_attention_start_layer=default_start_layer(pipe.unet) if layer is None else layer,
    )  # fmt: skip
    if config.num_samples is None:
        return replace(config, num_samples=available)
    if config.num_samples > available:
        raise ValueError(
            f"`num_samples` {config.num_samples} exceeds the edit set's {num_faces} faces x "
            f"{len(config.edit_expressions())} expressions = {available}."
        )
    return config


def _write_pending_shards(
    config: SyntheticSetConfig,
    run: _Run,
    batch_size: int,
    pipeline_kwargs: Mapping[str, Any] | None,
    rank: int,
    world: int,
    show_progress: bool,
    queue_depth: int,
) -> list:
    """Generates this process's pending shards (`rank::world`) and has a [`BackgroundStage`] `queue_depth` batches
    deep label and write them; returns them once all are written."""
    writer = run.writer
    mine = writer.shards[rank::world]
    pending = writer.pending_shards(mine)
    total = sum(len(spec.sample_ids) for spec in mine)
    done = total - sum(len(spec.sample_ids) for spec in pending)
    logger.info(f"Process {rank + 1}/{world}: {len(pending)} of its {len(mine)} shards to write.")
    with tqdm(total=total, initial=done, unit="img", desc=f"synfer generate [{rank + 1}/{world}]",
              disable=not show_progress, position=rank, dynamic_ncols=True) as progress:  # fmt: skip
        assembler = ShardAssembler(writer, run.labeler, run.pipe.image_processor.numpy_to_pil, config.drop_discarded)
        jobs = [(spec, ids, ids.stop == spec.sample_ids.stop) for spec in pending
                for ids in _chunks(spec.sample_ids, batch_size)]  # fmt: skip
        following = run.planned(jobs[0][1], pipeline_kwargs) if jobs else None
        with BackgroundStage(assembler, queue_depth) as stage:
            for number, (spec, _, last) in enumerate(jobs, 1):
                samples, inputs = following
                output = run.generate(inputs)
                batch = GeneratedBatch(spec, samples, output, run.pipe.image_processor.pt_to_numpy(output.images), last)
                # the next call is planned before the stage gets this batch: the main thread's Python work between
                # two pipeline calls then does not wait behind the stage's for the GIL
                following = run.planned(jobs[number][1], pipeline_kwargs) if number < len(jobs) else None
                stage.submit(batch)
                progress.update(len(samples))
    return pending


def _process_layout(
    process_index: int | None, num_processes: int | None
) -> tuple[int, int, Callable[[], None], torch.device]:
    """`(rank, world, barrier, device)`: from accelerate's state, or as given (then no barrier). Launched by
    `torchrun` or `accelerate launch` on a machine without a GPU, accelerate only sees the processes when told the
    run is on the CPU (`PartialState(cpu=True)`); on GPUs its own detection applies."""
    if process_index is None and num_processes is None:
        from accelerate import PartialState

        launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
        state = PartialState(cpu=True) if launched and not torch.cuda.is_available() else PartialState()
        return state.process_index, state.num_processes, state.wait_for_everyone, state.device
    check_int("num_processes", num_processes, 1)
    check_int("process_index", process_index, 0, num_processes - 1)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return process_index, num_processes, lambda: None, device


def _resolve_device(name: str | None, process_device: torch.device) -> torch.device:
    """The device to generate on: `name` (checked), where plain `"cuda"` is this process's own GPU under accelerate;
    `None`: `process_device`."""
    if name is None:
        return process_device
    device = check_device(name)
    if device.type == "cuda" and device.index is None and process_device.type == "cuda":
        return process_device
    return device


def _chunks(ids: range, size: int) -> Iterator[range]:
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


