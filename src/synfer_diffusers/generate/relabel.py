"""Rewriting the labels of a written synthetic set from its stored votes: the finalisation pass of a set-level
aggregation (Dawid-Skene) in `synfer generate`, and `synfer relabel` (another aggregation or voting rule, more
voters) on a finished set, without regenerating a single image.

The rewrite is crash-safe at every write event:

1. New voters (if any) vote on the stored images shard by shard; each shard's votes are cached atomically in
   `.synfer/relabel/votes-NNNNN.json` (a rerun reuses them).
2. All rows' votes are aggregated together (deterministic: the same votes give the same labels).
3. A journal, `.synfer/relabel/journal.json`, records the target plan before the first shard changes. While it
   exists, `synfer generate` refuses the folder unless the journal's plan is its own (a finalisation to resume).
4. Each shard is rewritten from its own rows (images, votes, targets untouched; `label`, `label_probs`,
   `agreement`, `keep` and, with new voters, `votes` replaced): its manifest first, recording the old file's
   sha256, then the file, both atomically. A shard is done when its manifest names this rewrite (`labels`) and its
   file matches; a file that matches the manifest's `previous_sha256` is rewritten again.
5. `plan.json` (when it changes), the card, and last the journal's removal.

A kill anywhere and a rerun give the same set as an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import PIL.Image
import pyarrow as pa
import torch

from ..data.writer import (
    PLAN_FILE,
    WORK_DIR,
    ShardSpec,
    ShardVerificationError,
    SyntheticSetWriter,
    atomic_write_bytes,
    canonical_json,
    sha256_file,
)
from ..facs import EXPRESSIONS
from ..labels import VoteBatch, Voter, VotingResult
from .labelers import VotingLabeler

RELABEL_DIR = f"{WORK_DIR}/relabel"
JOURNAL_FILE = f"{RELABEL_DIR}/journal.json"
LABEL_COLUMNS = ("label", "label_probs", "agreement", "keep", "votes")


@dataclass
class RelabelSummary:
    """What a label rewrite did: the `aggregation` rule, each voter's estimated `reliability` (Dawid-Skene; `None`
    for the paper's rule), how many rows' labels differ from their generation target (`num_changed` of `num_rows`)
    and how many rows the discard rule marks `keep=False` (`num_discarded`)."""

    aggregation: str
    reliability: dict[str, float] | None
    num_changed: int
    num_rows: int
    num_discarded: int

    def describe(self) -> str:
        """One sentence for the dataset card."""
        text = (
            f"labels aggregated over the whole set by {self.aggregation} ({self.num_changed} of {self.num_rows} "
            f"labels differ from the generation target; {self.num_discarded} rows marked keep=False)"
        )
        if self.reliability:
            estimated = ", ".join(f"{name} {value:.1%}" for name, value in self.reliability.items())
            text += f"; estimated probability that each voter's vote is right: {estimated}"
        return text


def journal_plan(output_dir: str | Path) -> dict[str, Any] | None:
    """The plan an interrupted label rewrite of `output_dir` is heading to, or `None` when none is."""
    path = Path(output_dir) / JOURNAL_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))["plan"]
    except (OSError, ValueError, KeyError) as error:
        raise ShardVerificationError(f"{path} is not a readable relabel journal ({error}).") from error


def rewrite_labels(
    writer: SyntheticSetWriter,
    labeler: VotingLabeler,
    new_plan: Mapping[str, Any] | None = None,
    added_voters: Sequence[Voter] = (),
) -> RelabelSummary:
    r"""
    Rewrites the labels of every shard of `writer`'s complete set from its stored votes (and `added_voters`' votes
    on the stored images) under `labeler`; with `new_plan`, the set's `plan.json` becomes that plan. See the module
    docstring for the crash-safety protocol. The caller holds the folder's lock, writes the card, then calls
    [`finish_rewrite`].

    Returns:
        [`RelabelSummary`].
    """
    target = SyntheticSetWriter(writer.output_dir, new_plan or writer.plan)
    rows = _read_votes(writer, target, added_voters)
    result = labeler.relabel(rows["votes"], rows["target_label"])
    labels = labeler.labels(result)
    key = _labels_key(target.fingerprint, result)
    _write_journal(target, key)
    offset = 0
    for spec in target.shards:
        count = rows["counts"][spec.index]
        table = _state_and_table(writer, target, spec, key)
        if table is not None:
            _rewrite_shard(target, spec, table, labels, offset, key)
        offset += count
    if new_plan is not None:
        atomic_write_bytes(target.output_dir / PLAN_FILE, canonical_json(target.plan, indent=2).encode(),
                           target.output_dir / WORK_DIR / "tmp")  # fmt: skip
    return RelabelSummary(
        aggregation=labeler.voter.config.aggregation,
        reliability=result.reliability,
        num_changed=int((result.label_ids != torch.tensor(rows["target_label"])).sum()),
        num_rows=len(rows["target_label"]),
        num_discarded=int((~result.keep).sum()),
    )


def finish_rewrite(output_dir: str | Path) -> None:
    """Removes the journal and the cached votes of a finished label rewrite (after its card is written)."""
    path = Path(output_dir) / JOURNAL_FILE
    path.unlink(missing_ok=True)
    shutil.rmtree(Path(output_dir) / RELABEL_DIR, ignore_errors=True)


def _read_votes(
    writer: SyntheticSetWriter, target: SyntheticSetWriter, added_voters: Sequence[Voter]
) -> dict[str, list]:
    """Every row's `target_label` and `votes` (with the added voters' votes appended), and each shard's row count,
    read from the shards as they are (rewritten or not: rows, votes and targets do not change in a rewrite)."""
    rows: dict[str, list] = {"target_label": [], "votes": [], "counts": []}
    for spec in writer.shards:
        table = writer.read_shard(spec, ["target_label", "votes"])
        votes = table.column("votes").to_pylist()
        if added_voters:
            votes = _with_added_votes(writer, target, spec, votes, table.column("target_label").to_pylist(),
                                      added_voters)  # fmt: skip
        rows["target_label"].extend(table.column("target_label").to_pylist())
        rows["votes"].extend(votes)
        rows["counts"].append(table.num_rows)
    return rows


def _with_added_votes(
    writer: SyntheticSetWriter,
    target: SyntheticSetWriter,
    spec: ShardSpec,
    votes: list[list[dict[str, Any]]],
    target_labels: list[int],
    added_voters: Sequence[Voter],
) -> list[list[dict[str, Any]]]:
    """`votes` with each added voter's vote appended (replacing a stored vote of the same name), from the cache of
    this rewrite or by running the voters on the shard's stored images (then cached atomically)."""
    cache = target.output_dir / RELABEL_DIR / f"votes-{spec.index:05d}.json"
    key = hashlib.sha256(canonical_json([v.config() for v in added_voters]).encode()).hexdigest()
    cached = json.loads(cache.read_text(encoding="utf-8")) if cache.is_file() else None
    if cached is None or cached.get("voters") != key or len(cached["votes"]) != len(votes):
        images = [PIL.Image.open(io.BytesIO(image["bytes"])).convert("RGB")
                  for image in writer.read_shard(spec, ["image"]).column("image").to_pylist()]  # fmt: skip
        batch = VoteBatch(images=images, targets=[EXPRESSIONS[i] for i in target_labels])
        probabilities = {voter.name: voter.vote(batch).tolist() for voter in added_voters} if images else {}
        cached = {"voters": key, "votes": [{name: p[i] for name, p in probabilities.items()} for i in range(len(votes))]}
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(cache, canonical_json(cached).encode(), cache.parent)
    names = {voter.name for voter in added_voters}
    return [
        [vote for vote in row if vote["voter"] not in names] + [{"voter": n, "probs": p} for n, p in new.items()]
        for row, new in zip(votes, cached["votes"])
    ]


def _labels_key(fingerprint: str, result: VotingResult) -> str:
    """Identifies one rewrite: the target plan and the labels it writes."""
    digest = hashlib.sha256(fingerprint.encode())
    for tensor in (result.label_ids, result.probabilities, result.agreement, result.keep):
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


def _write_journal(target: SyntheticSetWriter, key: str) -> None:
    path = target.output_dir / JOURNAL_FILE
    content = canonical_json({"plan": target.plan, "labels": key}).encode()
    if path.is_file() and path.read_bytes() == content:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, content, path.parent)


def _state_and_table(
    writer: SyntheticSetWriter, target: SyntheticSetWriter, spec: ShardSpec, key: str
) -> pa.Table | None:
    """`None` when shard `spec` already holds this rewrite; else its current table (checked to be the shard its
    manifest names, or the previous file of an interrupted rewrite)."""
    manifest = writer.manifest(spec)
    path = writer.output_dir / spec.filename
    sha256 = sha256_file(path) if path.is_file() else None
    if manifest.get("labels") == key and manifest.get("plan_fingerprint") == target.fingerprint:
        if sha256 == manifest.get("sha256"):
            return None
    if sha256 not in (manifest.get("sha256"), manifest.get("previous_sha256")):
        raise ShardVerificationError(
            f"{path} does not match its manifest: the set is damaged; regenerate it with `synfer generate --resume`."
        )
    return writer.read_shard(spec)


def _rewrite_shard(
    target: SyntheticSetWriter, spec: ShardSpec, table: pa.Table, labels: Any, offset: int, key: str
) -> None:
    """Replaces the label columns of `table` by rows `offset..` of `labels` and writes it under `target`'s plan."""
    count = table.num_rows
    values = {
        "label": labels.label[offset : offset + count],
        "label_probs": labels.label_probs[offset : offset + count].tolist(),
        "agreement": labels.agreement[offset : offset + count],
        "keep": labels.keep[offset : offset + count],
        "votes": labels.votes[offset : offset + count],
    }
    for column in LABEL_COLUMNS:
        field = target.schema.field(column)
        table = table.set_column(table.schema.get_field_index(column), field, pa.array(values[column], field.type))
    path = target.output_dir / spec.filename
    previous = sha256_file(path) if path.is_file() else None
    target.write_table(spec, table, relabel={"labels": key, "previous_sha256": previous})
