"""The CPU work after each pipeline call of `synfer generate`, as a bounded background stage.

After a pipeline call the main thread keeps only what needs the device: the call itself (denoising, VAE decode, the
in-loop FERAnno labels) and a host copy of the images. Everything else, the PIL conversion, the labeller's votes,
the rows, their PNG encoding and, at a shard's last batch, the parquet write with fsync and the manifest, runs in
[`BackgroundStage`]: one worker thread, fed in order, at most `queue_depth` batches ahead. PNG encoding, file writes
and torch kernels release the GIL, so this work overlaps with the next batch's denoising.

What the set is does not change: the worker handles the batches in the order they were generated with the same code
as a synchronous run (`queue_depth=0`, everything on the calling thread), so both write the same bytes; shards are
written atomically by the writer, so a kill -9 anywhere leaves whole shards or none, and `--resume` completes the set.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any, Generic, TypeVar

import numpy as np

from ..data.writer import ShardSpec, SyntheticRow, SyntheticSetWriter
from ..facs import EXPRESSIONS
from ..pipelines.synfer.pipeline_output import SynFERPipelineOutput
from .labelers import GeneratedOutput, Labeler, SampleLabels
from .plan import PlannedSample

logger = logging.getLogger(__name__)

Item = TypeVar("Item")


class BackgroundStage(Generic[Item]):
    r"""
    Runs `process(item)` for each submitted item, in order, on one worker thread, at most `queue_depth` items
    behind the caller: [`submit`] blocks while `queue_depth` items are queued or being processed, so memory holds
    at most `queue_depth` of them (plus the one the caller is making). With `queue_depth=0` items are processed on
    the calling thread as they are submitted.

    An error in `process` is raised in the calling thread (the same exception, its message and traceback) by the
    next [`submit`] or by [`close`]; the items after it are not processed. Used as a context manager, leaving the
    block processes what is queued and joins the worker; an error of the block wins over one of the worker.

    Args:
        process (`Callable`): what to do with each item.
        queue_depth (`int`): items processed behind the caller, at most (>= 0).
    """

    def __init__(self, process: Callable[[Item], None], queue_depth: int):
        if isinstance(queue_depth, bool) or not isinstance(queue_depth, int) or queue_depth < 0:
            raise ValueError(f"`queue_depth` must be an int >= 0, got {queue_depth!r}.")
        self.process = process
        self.queue_depth = queue_depth
        self.error: BaseException | None = None
        self._slots = threading.BoundedSemaphore(max(queue_depth, 1))
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        if queue_depth:
            self._worker = threading.Thread(target=self._work, name="synfer-generate-writer", daemon=True)
            self._worker.start()

    def submit(self, item: Item) -> None:
        """Hands `item` over (processes it, with `queue_depth=0`); raises the worker's error if it failed."""
        if self._worker is None:
            self.process(item)
            return
        self._slots.acquire()
        if self.error is not None:
            self._slots.release()
            raise self.error
        self._queue.put(item)

    def close(self) -> None:
        """Processes what is queued, stops the worker and raises its error, if any."""
        if self._worker is not None:
            self._queue.put(_STOP)
            self._worker.join()
            self._worker = None
        if self.error is not None:
            raise self.error

    def _work(self) -> None:
        while (item := self._queue.get()) is not _STOP:
            try:
                if self.error is None:
                    self.process(item)
            except BaseException as error:  # raised in the caller's thread, by `submit` or `close`
                self.error = error
            finally:
                self._slots.release()

    def __enter__(self) -> BackgroundStage[Item]:
        return self

    def __exit__(self, error_type: type | None, *_: Any) -> None:
        if error_type is None:
            self.close()
            return
        try:
            self.close()
        except BaseException as error:  # the block's own error is the one raised
            logger.error(f"The background stage failed as well: {type(error).__name__}: {error}")


_STOP = object()


@dataclass
class GeneratedBatch:
    """One pipeline call's result as the main thread hands it to the background stage: the shard it belongs to,
    its samples, the pipeline output (`images`: `output_type="pt"`, `(B, 3, H, W)` in [0, 1] on the pipeline's
    device), the same images on the host as `image_processor.pt_to_numpy` makes them (`pixels`, `(B, H, W, 3)`
    float32, what `output_type="pil"` converts; copied on the main thread, so that on a GPU the copy is ordered
    before the next batch's work) and whether it is the shard's last batch."""

    spec: ShardSpec
    samples: Sequence[PlannedSample]
    output: SynFERPipelineOutput
    pixels: np.ndarray
    last: bool


class ShardAssembler:
    """The background stage's work ([`BackgroundStage`]`.process`): each batch converted to PIL (as
    `output_type="pil"` would, byte for byte), labelled (voters that read tensors get the pipeline's), made into rows
    and PNG-encoded as it comes; at a shard's last batch the shard is written (parquet, fsync, manifest)."""

    def __init__(self, writer: SyntheticSetWriter, labeler: Labeler, to_pil: Callable[[np.ndarray], list],
                 drop_discarded: bool):  # fmt: skip
        self.writer = writer
        self.labeler = labeler
        self.to_pil = to_pil
        self.drop_discarded = drop_discarded
        self.encoded: list[dict[str, Any]] = []

    def __call__(self, batch: GeneratedBatch) -> None:
        images = self.to_pil(batch.pixels)
        given = {item.name: getattr(batch.output, item.name) for item in fields(SynFERPipelineOutput)}
        output = GeneratedOutput(**{**given, "images": images}, pixel_values=batch.output.images)
        labels = self.labeler(output, [EXPRESSIONS.label_id(s.expression) for s in batch.samples])
        self.encoded.extend(self.writer.encode_rows(sample_rows(batch.samples, images, labels, self.drop_discarded)))
        if batch.last:
            encoded, self.encoded = self.encoded, []
            self.writer.write_encoded(batch.spec, encoded)


def sample_rows(
    samples: Sequence[PlannedSample], images: Sequence[Any], labels: SampleLabels, drop_discarded: bool = False
) -> list[SyntheticRow]:
    """The dataset rows of a generated, labelled batch: the plan's prompt and AU vector, the labels and votes (and an
    edited sample's source face); rows marked `keep=False` are left out with `drop_discarded`."""
    rows = [
        SyntheticRow(
            image=images[i],
            text=sample.prompt,
            action_units=np.asarray(sample.action_units, dtype=np.float32).tolist(),
            target_label=EXPRESSIONS.label_id(sample.expression),
            label=int(labels.label[i]),
            label_probs=labels.label_probs[i].tolist(),
            agreement=float(labels.agreement[i]),
            keep=bool(labels.keep[i]),
            votes=labels.votes[i],
            seed=sample.seed,
            sample_id=sample.sample_id,
            source_id=sample.source.source_id if sample.source is not None and not sample.source.is_person else None,
            person_id=sample.source.source_id if sample.source is not None and sample.source.is_person else None,
            source_image_sha256=sample.source.image_sha256 if sample.source is not None else None,
        )
        for i, sample in enumerate(samples)
    ]
    return [row for row in rows if row.keep or not drop_discarded]
