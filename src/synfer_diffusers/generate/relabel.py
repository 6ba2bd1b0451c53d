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
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import PIL.Image
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ..data.files import atomic_write_bytes, canonical_json, sha256_file
from ..data.hub import check_push_target, push_synthetic_dataset
from ..data.writer import PLAN_FILE, WORK_DIR, ShardSpec, ShardVerificationError, SyntheticSetWriter, canonical_plan
from ..facs import EXPRESSIONS
from ..hub_utils import is_hub_repo_id, load_card_metadata
from ..labels import EnsembleVoter, GivenVoter, VoteBatch, Voter, VotingConfig, VotingResult, load_voter
from ..labels.voters import TARGET_VOTER
from .card import card_fields
from .config import VOTING_FIELDS, SyntheticSetConfig
from .labelers import SampleLabels, VotingLabeler
from .lock import OutputLock

RELABEL_DIR = f"{WORK_DIR}/relabel"
JOURNAL_FILE = f"{RELABEL_DIR}/journal.json"
LABEL_COLUMNS = ("label", "label_probs", "agreement", "keep", "votes")
PLAN_DEFAULTS = {"classifier_tempering": 1.0}
"""The voting fields a plan may predate, with the value the sets written before them were labelled with."""


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


def read_journal(output_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The journal of an interrupted label rewrite of `output_dir` (`from_plan`, `plan`: the plans before and after,
    `labels`: the rewrite's key), or `None` when none is in progress."""
    path = Path(output_dir) / JOURNAL_FILE
    if not path.is_file():
        return None
    try:
        journal = json.loads(path.read_text(encoding="utf-8"))
        return {"from_plan": journal["from_plan"], "plan": journal["plan"], "labels": journal["labels"]}
    except (OSError, ValueError, KeyError, TypeError) as error:
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
    _write_journal(writer, target, key)
    offset = 0
    for spec in target.shards:
        count = rows["counts"][spec.index]
        current = _state_and_table(writer, target, spec, key)
        if current is not None:
            _rewrite_shard(target, spec, *current, labels, rows["votes"], offset, key)
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


def _write_journal(writer: SyntheticSetWriter, target: SyntheticSetWriter, key: str) -> None:
    path = target.output_dir / JOURNAL_FILE
    content = canonical_json({"from_plan": writer.plan, "plan": target.plan, "labels": key}).encode()
    if path.is_file() and path.read_bytes() == content:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, content, path.parent)


def _state_and_table(
    writer: SyntheticSetWriter, target: SyntheticSetWriter, spec: ShardSpec, key: str
) -> tuple[pa.Table, str | None] | None:
    """`None` when shard `spec` already holds this rewrite; else its current table and file sha256 (checked to be
    the shard its manifest names, or the previous file of an interrupted rewrite)."""
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
    return writer.read_shard(spec), sha256


def _rewrite_shard(
    target: SyntheticSetWriter,
    spec: ShardSpec,
    table: pa.Table,
    previous_sha256: str | None,
    labels: SampleLabels,
    votes: list[list[dict[str, Any]]],
    offset: int,
    key: str,
) -> None:
    """Replaces the label columns of `table` (the shard file of sha256 `previous_sha256`) by rows `offset..` of
    `labels` and its votes by those of `votes` (the stored ones as read, plus any added voter's) and writes it under
    `target`'s plan."""
    count = table.num_rows
    values = {
        "label": labels.label[offset : offset + count],
        "label_probs": labels.label_probs[offset : offset + count].tolist(),
        "agreement": labels.agreement[offset : offset + count],
        "keep": labels.keep[offset : offset + count],
        "votes": votes[offset : offset + count],
    }
    for column in LABEL_COLUMNS:
        field = target.schema.field(column)
        table = table.set_column(table.schema.get_field_index(column), field, pa.array(values[column], field.type))
    target.write_table(spec, table, relabel={"labels": key, "previous_sha256": previous_sha256})


@dataclass
class RelabelResult:
    """What [`relabel_synthetic_dataset`] did: the set's folder, its [`RelabelSummary`] and the Hub `commit_url` if
    pushed."""

    output_dir: str
    summary: RelabelSummary
    commit_url: str | None = None


def relabel_synthetic_dataset(
    output_dir: str | os.PathLike,
    voters: Sequence[str | Voter] = (),
    voting: Mapping[str, Any] | None = None,
    push_to_hub: str | None = None,
    token: str | None = None,
    private: bool | None = None,
    wait: bool = False,
) -> RelabelResult:
    r"""
    Recomputes `label`, `label_probs`, `agreement` and `keep` of a finished synthetic set from its stored `votes`,
    optionally with more voters (run once on the stored images, their votes stored like the others), without
    regenerating an image.

    Args:
        output_dir (`str` or `os.PathLike`): the set's folder (written by `synfer generate`, or downloaded from the
            Hub: shards without local manifests are verified against the plan and adopted).
        voters (`list`): voters to add: `--voter` specs ([`~synfer_diffusers.labels.load_voter`]) or
            [`~synfer_diffusers.labels.Voter`]s.
        voting (`dict`, *optional*): new values of the voting fields [`VOTING_FIELDS`]; the others keep the plan's.
        push_to_hub, token, private: publish the relabelled set (resumable, as `synfer generate --push-to-hub`).
        wait (`bool`): wait for another run holding the folder's lock instead of raising.

    Everything is checked before the folder is touched; a kill at any moment and a rerun give the same set as an
    uninterrupted run (module docstring).

    Returns:
        [`RelabelResult`].

    Example:

    ```py
    >>> from synfer_diffusers.generate.relabel import relabel_synthetic_dataset

    >>> relabel_synthetic_dataset("outputs/demo", voting={"aggregation": "dawid_skene"}).summary.reliability
    ```
    """
    writer, labeler, new_plan, added = _checked_relabel(output_dir, voters, voting)
    if push_to_hub is not None:
        token = check_push_target(push_to_hub, token)
    with OutputLock(output_dir, wait=wait):
        journal = read_journal(output_dir)
        if journal is not None and journal["plan"] != canonical_plan(new_plan):
            raise FileExistsError(
                f"{output_dir} holds an interrupted relabel with other options; rerun that relabel to finish it."
            )
        card_data = _kept_card_data(output_dir)
        writer.adopt_unmanifested_shards()
        summary = rewrite_labels(writer, labeler, new_plan, added)
        target = SyntheticSetWriter(output_dir, new_plan)
        target.finalize(card_fields(target.plan, labeler, push_to_hub, summary), card_data)
        finish_rewrite(output_dir)
    commit_url = None
    if push_to_hub is not None:
        commit_url = push_synthetic_dataset(output_dir, push_to_hub, token=token, private=private)
    return RelabelResult(str(output_dir), summary, commit_url)


def _checked_relabel(
    output_dir: str | os.PathLike, voters: Sequence[str | Voter], voting: Mapping[str, Any] | None
) -> tuple[SyntheticSetWriter, VotingLabeler, dict[str, Any], list[Voter]]:
    """The set's writer (under its plan before any interrupted relabel), the new labeller, the new plan and the
    added voters; raises naming the field, and writes nothing."""
    folder = Path(output_dir)
    if not folder.is_dir():
        hint = "."
        if is_hub_repo_id(output_dir):
            hint = f": download a Hub set first (`hf download {output_dir} --repo-type dataset --local-dir DIR`)"
        raise ValueError(f"`output_dir` {str(output_dir)!r} is not a folder{hint}")
    journal = read_journal(folder)
    writer = SyntheticSetWriter.from_folder(folder) if journal is None else SyntheticSetWriter(folder, journal["from_plan"])
    voting = dict(voting or {})
    unknown = sorted(set(voting) - set(VOTING_FIELDS))
    if unknown:
        raise ValueError(f"`voting` fields {unknown} cannot be relabelled; these can: {list(VOTING_FIELDS)}.")
    if writer.plan.get("drop_discarded"):
        raise ValueError(
            f"{output_dir} was made with `drop_discarded`: the dropped rows' votes are gone, so its labels cannot be "
            "recomputed; regenerate it without --drop-discarded."
        )
    stored = _stored_voter_names(writer)
    added = [voter if isinstance(voter, Voter) else load_voter(voter) for voter in voters]
    options = {**{name: writer.plan.get(name, PLAN_DEFAULTS.get(name)) for name in VOTING_FIELDS}, **voting}
    voting_config = SyntheticSetConfig(**{**_config_fields(writer.plan), **options}).voting_options()  # checked
    replaced = {voter.name for voter in added}  # an added voter named like a stored one replaces its votes
    kept = [GivenVoter(name) for name in stored if name != TARGET_VOTER and name not in replaced]
    config = VotingConfig(probability_voters=(), use_target=TARGET_VOTER in stored, **voting_config)
    labeler = VotingLabeler(EnsembleVoter([*kept, *added], config))
    history = writer.plan.get("relabel", {}).get("from_labeler", writer.plan["labeler"])
    new_plan = {**writer.plan, **options, "labeler": labeler.config,
                "relabel": {"from_labeler": history, "added_voters": [v.config() for v in added]}}  # fmt: skip
    return writer, labeler, new_plan, added


def _config_fields(plan: Mapping[str, Any]) -> dict[str, Any]:
    """The [`SyntheticSetConfig`] fields stored in a plan."""
    return {item.name: plan[item.name] for item in fields(SyntheticSetConfig) if item.name in plan}


def _kept_card_data(output_dir: str | os.PathLike) -> dict[str, Any]:
    """The card metadata a relabel keeps (licence, tags, names, ...); the rest is recomputed from the shards."""
    metadata = load_card_metadata(output_dir, repo_type="dataset") or {}
    return {key: value for key, value in metadata.items() if key not in ("dataset_info", "configs", "size_categories")}


def _stored_voter_names(writer: SyntheticSetWriter) -> list[str]:
    """The voters of the set's first row (every row has the same); the set must have a `votes` column."""
    for spec in writer.shards:
        path = writer.output_dir / spec.filename
        if not path.is_file():
            continue
        try:
            names = pq.read_schema(path).names
        except (OSError, pa.ArrowException) as error:
            raise ValueError(f"{path} is not a readable parquet shard ({error}).") from error
        if "votes" not in names:
            raise ValueError(f"{path} has no `votes` column: not a synthetic set that can be relabelled.")
        first = writer.read_shard(spec, ["votes"]).column("votes").to_pylist()
        if first:
            return [vote["voter"] for vote in first[0]]
    raise ValueError(f"{writer.output_dir} holds no rows to relabel.")
