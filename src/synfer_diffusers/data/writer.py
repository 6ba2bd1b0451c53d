"""Synthetic-set writer: crash-safe parquet shards, a plan, a dataset card and a preview grid.

The writer knows nothing about models or pipelines (it imports `facs`, `hub_utils`, `datasets` and `pyarrow`
only). [`synfer_diffusers.generate`] hands it a JSON-serialisable *plan* (everything that determines the
samples) and rows; the writer makes a folder that `datasets.load_dataset(folder)` reads with
[`synthetic_features`] exactly:

```
output_dir/
  plan.json                            the plan; a rerun must match it (`--resume`) or replace it (`--overwrite`)
  data/train-00000-of-00004.parquet    shard 0: samples [0, shard_size), and so on; names are fixed by the plan
  README.md                            dataset card (YAML: features, splits, configs, size, licence, tags),
                                       written when complete
  preview.png                          grid of the first samples, written when complete
  .synfer/shards/00000.json            manifest of each finished shard: sample range, rows, sha256
  .synfer/tmp/                         shards being written (removed when the set is complete)
  .synfer/lock                         the run's lock file (see `generate/lock.py`); never removed while held
```

Shard `i` holds the samples `[i * shard_size, min((i + 1) * shard_size, num_samples))`, so the layout does not
depend on the number of processes or on where a run was interrupted. Each shard is written to `.synfer/tmp`,
fsynced and moved into `data/` with `os.replace`, then its manifest is written the same way: a shard without a
manifest is unfinished and is written again. On resume each manifested shard is verified (sha256, parquet
metadata, sample ids); a damaged shard is reported and regenerated, a shard from another plan, an unreadable
manifest or an unknown file in `data/` stops the run. A plan with `drop_discarded` true leaves the rows marked
`keep=False` out, so a shard holds the kept subset of its sample range.

[`SyntheticSetWriter.check`] inspects the folder without writing anything (so that bad input leaves it as it
was); [`SyntheticSetWriter.prepare`] checks again and writes `plan.json`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import PIL.Image
import PIL.ImageDraw
import pyarrow as pa
import pyarrow.parquet as pq
from huggingface_hub import DatasetCard, DatasetCardData

from ..facs import EXPRESSIONS
from ..hub_utils import DATASET_CARD_DATA_KEYS, model_card_template, size_category, split_card_fields
from .files import ShardVerificationError, atomic_write_bytes, canonical_json, png_bytes, sha256_file
from .schema import SyntheticRow, synthetic_features

logger = logging.getLogger(__name__)

PLAN_FILE = "plan.json"
DATA_DIR = "data"
WORK_DIR = ".synfer"
SPLIT = "train"
CARD_TEMPLATE = "synthetic_dataset.md"
PREVIEW_FILE = "preview.png"
CARD_FILE = "README.md"
PREVIEW_SAMPLES = 32
_PARQUET_METADATA_KEY = b"synfer"
_OWN_ENTRIES = (PLAN_FILE, DATA_DIR, WORK_DIR, CARD_FILE, PREVIEW_FILE)
LOCK_FILE = f"{WORK_DIR}/lock"
"""The lock file of a run (and `lock.<part>` of a run split by hand); removing `.synfer/` keeps these."""


def canonical_plan(plan: Mapping[str, Any]) -> dict[str, Any]:
    """`plan` as it reads back from `plan.json` (tuples as lists, keys as strings), for comparisons."""
    return json.loads(canonical_json(plan))


def plan_fingerprint(plan: Mapping[str, Any]) -> str:
    """sha256 of the plan's canonical JSON; stored in every shard so shards of another plan are recognised."""
    return hashlib.sha256(canonical_json(plan).encode()).hexdigest()


@dataclass(frozen=True)
class ShardSpec:
    """Shard `index` of `num_shards`: samples `[start, end)`."""

    index: int
    num_shards: int
    start: int
    end: int

    @property
    def filename(self) -> str:
        return f"{DATA_DIR}/{SPLIT}-{self.index:05d}-of-{self.num_shards:05d}.parquet"

    @property
    def sample_ids(self) -> range:
        return range(self.start, self.end)


def shard_specs(num_samples: int, shard_size: int) -> list[ShardSpec]:
    """The fixed shard grid of a plan: `ceil(num_samples / shard_size)` contiguous sample ranges."""
    num_shards = math.ceil(num_samples / shard_size)
    return [
        ShardSpec(i, num_shards, i * shard_size, min((i + 1) * shard_size, num_samples)) for i in range(num_shards)
    ]


class SyntheticSetWriter:
    r"""
    Writes one plan's samples into `output_dir` as verified parquet shards and, once complete, a card and preview.

    Args:
        output_dir (`str` or `os.PathLike`): the dataset folder.
        plan (`Mapping`): JSON-serialisable description of the samples; must hold `num_samples`, `shard_size` and
            `au_space` (`{"names": [...], "kind": ...}`), which fixes the rows' [`synthetic_features`] (with the
            source columns when it holds `edit_source`).

    Example:

    ```py
    >>> plan = {"num_samples": 2, "shard_size": 2, "au_space": AUSpace.disfa12().to_config()}
    >>> writer = SyntheticSetWriter("out", plan)
    >>> writer.prepare(resume=False, overwrite=False)
    >>> pending = writer.pending_shards()  # [ShardSpec(index=0, num_shards=1, start=0, end=2)]
    >>> writer.write_shard(pending[0], rows)  # rows: dicts with the features' columns, PIL images allowed
    >>> writer.finalize(card_fields={...})  # README.md + preview.png
    ```
    """

    card_template = CARD_TEMPLATE
    """The card's template in `model_cards/`."""

    def __init__(self, output_dir: str | os.PathLike, plan: Mapping[str, Any]):
        self.output_dir = Path(output_dir)
        self.plan = canonical_plan(plan)
        self.features = synthetic_features(len(self.plan["au_space"]["names"]), edit="edit_source" in self.plan,
                                           persons=self.plan.get("persons") is not None)  # fmt: skip
        self.fingerprint = plan_fingerprint(self.plan)
        self.shards = shard_specs(int(self.plan["num_samples"]), int(self.plan["shard_size"]))
        self.schema = self.features.arrow_schema

    @classmethod
    def from_folder(cls, output_dir: str | os.PathLike) -> SyntheticSetWriter:
        """The writer of an existing synthetic-set folder, from its `plan.json`."""
        path = Path(output_dir) / PLAN_FILE
        if not path.is_file():
            raise ValueError(f"`output_dir` {str(output_dir)!r} holds no {PLAN_FILE}: not a synthetic set.")
        return cls(output_dir, json.loads(path.read_text(encoding="utf-8")))

    # -- folder state --------------------------------------------------------------------------------------

    def existing_plan(self) -> dict[str, Any] | None:
        path = self.output_dir / PLAN_FILE
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ShardVerificationError(f"{path} is not a readable plan ({error}); pass --overwrite.") from error

    def check(self, resume: bool, overwrite: bool, is_main_process: bool = True) -> None:
        """Inspects the folder against the plan without writing anything; raises what [`prepare`] would.

        An empty or missing folder can be started. A folder with the same plan can be completed with `resume` (it
        is left as is when already complete). A folder with another plan, or with files that are not a synthetic
        set, is refused unless `overwrite` (only the main process overwrites; other processes follow its
        decision and never refuse a folder with the same plan). With `resume`, every shard is verified.

        Raises:
            `ValueError`: `resume` and `overwrite` together.
            `FileExistsError`: the folder holds another plan or other files, or an unfinished run without `resume`.
            [`ShardVerificationError`]: unreadable `plan.json` or manifest, a shard of another plan, a foreign file.
            `OSError`: the path is a file, or the folder cannot be written.
        """
        if resume and overwrite:
            raise ValueError("`resume` and `overwrite` exclude each other: pick one.")
        self._check_writable()
        try:
            found = self.existing_plan()
        except ShardVerificationError:
            if not (overwrite and is_main_process):
                raise
            found = {}  # unreadable: replaced like another plan
        if found is not None and found != self.plan:
            if not (overwrite and is_main_process):
                raise FileExistsError(
                    f"{self.output_dir} holds a different plan (fields {_diff_keys(found, self.plan)} differ); "
                    "pass --overwrite to replace it" + ("" if is_main_process else " from process 0") + "."
                )
        elif found is None and self.output_dir.is_dir():
            others = sorted(p.name for p in self.output_dir.iterdir() if p.name not in _OWN_ENTRIES)
            data = sorted(p.name for p in self._data_dir.iterdir()) if self._data_dir.is_dir() else []
            if others or data:
                raise FileExistsError(
                    f"{self.output_dir} is not empty and holds no synthetic-set plan ({others or [DATA_DIR]}); "
                    "choose another --output-dir."
                )
        elif found is not None and not overwrite:
            pending = self.pending_shards()
            if is_main_process and not resume and pending:
                raise FileExistsError(
                    f"{self.output_dir} holds an unfinished run of this plan; pass --resume to complete it or "
                    "--overwrite to start again."
                )

    def prepare(self, resume: bool, overwrite: bool, is_main_process: bool = True) -> None:
        """Checks the folder ([`check`]), then starts it: with `overwrite` (main process) this writer's entries
        (`plan.json`, `data/`, `.synfer/` but its lock files, `README.md`, `preview.png`) are removed first; the
        folders are made and `plan.json` is written where there is none."""
        self.check(resume, overwrite, is_main_process)
        if overwrite and is_main_process:
            self._remove_own_entries()
        self._make_dirs()
        if self.existing_plan() is None:
            atomic_write_bytes(self.output_dir / PLAN_FILE, canonical_json(self.plan, indent=2).encode(),
                                self._tmp_dir)  # fmt: skip

    def pending_shards(self, shards: Sequence[ShardSpec] | None = None) -> list[ShardSpec]:
        """Shards (of `shards`, default all) that must still be written: missing, unfinished or damaged ones.

        Damaged shards (checksum or content mismatch) are logged as warnings. Raises
        [`ShardVerificationError`] for a shard written under another plan or an unknown file in `data/`.
        """
        expected = {spec.filename for spec in self.shards}
        present = self._data_dir.iterdir() if self._data_dir.is_dir() else ()
        unknown = sorted(f"{DATA_DIR}/{p.name}" for p in present if f"{DATA_DIR}/{p.name}" not in expected)
        if unknown:
            raise ShardVerificationError(
                f"{self.output_dir}: files that are not shards of this plan: {unknown}; remove them or pass --overwrite."
            )
        pending = []
        for spec in self.shards if shards is None else shards:
            problem = self.verify_shard(spec)
            if problem is not None:
                if problem not in ("missing", "unfinished"):
                    logger.warning(f"Shard {spec.filename} is damaged ({problem}); it will be generated again.")
                pending.append(spec)
        return pending

    def verify_shard(self, spec: ShardSpec) -> str | None:
        """`None` when the shard is complete and intact, else why not (`"missing"`, `"unfinished"`, a damage)."""
        path, manifest_path = self.output_dir / spec.filename, self._manifest_path(spec)
        if not path.is_file():
            if manifest_path.is_file() and self._is_empty_shard(self._read_manifest(manifest_path)):
                return None  # every row dropped: a manifest and no file
            return "missing"
        try:
            parquet = pq.ParquetFile(path)
            metadata = json.loads(parquet.schema_arrow.metadata[_PARQUET_METADATA_KEY])
        except (OSError, ValueError, KeyError, TypeError, pa.ArrowException) as error:
            return f"unreadable: {error}"
        if metadata.get("plan_fingerprint") != self.fingerprint:
            raise ShardVerificationError(
                f"{self.output_dir / spec.filename} was written under another plan; remove it or pass --overwrite."
            )
        if not manifest_path.is_file():
            return "unfinished"  # killed between the shard's os.replace and its manifest's
        manifest = self._read_manifest(manifest_path)
        if manifest.get("plan_fingerprint") != self.fingerprint:
            raise ShardVerificationError(f"{manifest_path} belongs to another plan; remove it or pass --overwrite.")
        sha256 = sha256_file(path)
        if sha256 != manifest.get("sha256") and sha256 != manifest.get("previous_sha256"):
            return "sha256 differs from its manifest"
        try:
            ids = parquet.read(columns=["sample_id"]).column("sample_id").to_pylist()
        except (OSError, pa.ArrowException) as error:
            return f"unreadable: {error}"
        if (len(ids) != manifest.get("num_rows") and sha256 == manifest.get("sha256")) or not self._valid_ids(spec, ids):
            return f"sample ids {ids[:1]}..{ids[-1:]} do not match [{spec.start}, {spec.end}) and its manifest"
        return None

    def _valid_ids(self, spec: ShardSpec, ids: Sequence[int]) -> bool:
        """Whether `ids` are the shard's sample ids: all of them, or with `drop_discarded` an increasing subset."""
        if not self.plan.get("drop_discarded"):
            return list(ids) == list(spec.sample_ids)
        return all(a < b for a, b in zip(ids, ids[1:])) and all(spec.start <= i < spec.end for i in ids)

    @staticmethod
    def _read_manifest(path: Path) -> dict[str, Any]:
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ShardVerificationError(
                f"{path} is not a readable shard manifest ({error}); remove it or pass --overwrite."
            ) from error
        if not isinstance(manifest, dict):
            raise ShardVerificationError(f"{path} is not a shard manifest; remove it or pass --overwrite.")
        return manifest

    def _is_empty_shard(self, manifest: Mapping[str, Any]) -> bool:
        return manifest.get("plan_fingerprint") == self.fingerprint and manifest.get("num_rows") == 0

    def num_rows(self) -> int:
        """Rows written in all shards (the number of samples, less the dropped ones with `drop_discarded`)."""
        return sum(int(self._read_manifest(self._manifest_path(spec))["num_rows"]) for spec in self.shards)

    def published_files(self) -> dict[str, str | None]:
        """What publishing uploads, card last: `{path in the folder: sha256}`, each shard's sha256 from its manifest
        (which [`verify_shard`] checks against the file) and `None` for the plan, preview and card. `.synfer/` and
        anything else in the folder stay local."""
        manifests = {spec.filename: self._read_manifest(self._manifest_path(spec)) for spec in self.shards}
        shards = {name: m["sha256"] for name, m in manifests.items() if not self._is_empty_shard(m)}
        return {PLAN_FILE: None, **shards, PREVIEW_FILE: None, CARD_FILE: None}

    # -- writing -------------------------------------------------------------------------------------------

    def write_shard(self, spec: ShardSpec, rows: Sequence[SyntheticRow | Mapping[str, Any]]) -> None:
        """Encodes `rows` (sample ids `spec.start..spec.end - 1`, in order; with `drop_discarded` an increasing
        subset) and writes the shard atomically, then its manifest. On failure (full disk, ...) nothing is left
        under the shard's name and the error says so."""
        self.write_encoded(spec, self.encode_rows(rows))

    def encode_rows(self, rows: Sequence[SyntheticRow | Mapping[str, Any]]) -> list[dict[str, Any]]:
        """`rows` as the shard stores them (images PNG-encoded): a shard's rows can be encoded batch by batch as
        they come, then written together with [`write_encoded`]."""
        examples = [row.to_example() if isinstance(row, SyntheticRow) else dict(row) for row in rows]
        return [self.features.encode_example({name: example[name] for name in self.features}) for example in examples]

    def write_encoded(self, spec: ShardSpec, encoded: Sequence[Mapping[str, Any]]) -> None:
        """Writes rows encoded by [`encode_rows`] as [`write_shard`] does."""
        self.write_table(spec, pa.Table.from_pylist(list(encoded), schema=self.schema))

    def write_table(self, spec: ShardSpec, table: pa.Table, relabel: Mapping[str, Any] | None = None) -> None:
        """Writes an encoded shard `table` (schema [`synthetic_features`]) as [`write_shard`] does.

        `relabel` (`{"labels": key, "previous_sha256": sha256}`): the shard replaces one whose labels were rewritten
        ([`~synfer_diffusers.generate.relabel`]). Its manifest, written *before* the shard, records both, so a kill
        between the two leaves a shard that matches the manifest's `previous_sha256`: intact, its rewrite pending."""
        ids = table.column("sample_id").to_pylist()
        if not self._valid_ids(spec, ids):
            raise ValueError(f"rows of {spec.filename} must have sample ids [{spec.start}, {spec.end}), got {ids}.")
        metadata = {**self.schema.metadata, _PARQUET_METADATA_KEY: canonical_json(
            {"plan_fingerprint": self.fingerprint, "start": spec.start, "end": spec.end}).encode()}  # fmt: skip
        buffer = io.BytesIO()
        pq.write_table(table.cast(self.schema).replace_schema_metadata(metadata), buffer)
        rows = len(ids)
        data = buffer.getvalue() if rows else None  # a shard whose rows were all dropped has no file
        manifest = {"file": spec.filename if rows else None, "start": spec.start, "end": spec.end,
                    "num_rows": rows, "sha256": hashlib.sha256(data).hexdigest() if rows else None,
                    "plan_fingerprint": self.fingerprint, **(relabel or {})}  # fmt: skip
        self._make_dirs()  # a finished set's `.synfer/tmp` is gone: a relabel writes again
        writes = [(self._manifest_path(spec), canonical_json(manifest).encode())]
        if rows:
            writes.insert(0 if relabel is None else 1, (self.output_dir / spec.filename, data))
        try:
            for path, content in writes:
                atomic_write_bytes(path, content, self._tmp_dir)
            if not rows:
                (self.output_dir / spec.filename).unlink(missing_ok=True)
        except OSError as error:
            raise OSError(
                error.errno, f"Could not write {spec.filename} in {self.output_dir} ({error.strerror or error}); "
                "the shards written before it are complete: free space or fix permissions and rerun with --resume.",
            ) from error  # fmt: skip

    def adopt_unmanifested_shards(self) -> None:
        """Writes the manifest of every shard file that has none but belongs to this plan with the right sample ids
        (a set downloaded from the Hub, whose `.synfer/` stayed with its maker, or a shard moved into place just
        before a kill): such a file was moved in atomically, so it is complete."""
        for spec in self.shards:
            path = self.output_dir / spec.filename
            if self._manifest_path(spec).is_file() or not path.is_file():
                continue
            try:
                metadata = json.loads(pq.read_schema(path).metadata[_PARQUET_METADATA_KEY])
                ids = self.read_shard(spec, ["sample_id"]).column("sample_id").to_pylist()
            except (OSError, ValueError, KeyError, TypeError, pa.ArrowException):
                continue  # not this plan's shard: verification reports it
            if metadata.get("plan_fingerprint") != self.fingerprint or not self._valid_ids(spec, ids):
                continue
            manifest = {"file": spec.filename, "start": spec.start, "end": spec.end, "num_rows": len(ids),
                        "sha256": sha256_file(path), "plan_fingerprint": self.fingerprint}  # fmt: skip
            self._make_dirs()
            atomic_write_bytes(self._manifest_path(spec), canonical_json(manifest).encode(), self._tmp_dir)

    def read_shard(self, spec: ShardSpec, columns: Sequence[str] | None = None) -> pa.Table:
        """Shard `spec`'s table (all columns, or `columns`); an empty table for a shard whose rows were all dropped."""
        path = self.output_dir / spec.filename
        if not path.is_file():
            return self.schema.empty_table().select(list(columns or self.schema.names))
        return pq.read_table(path, columns=list(columns) if columns else None)

    def manifest(self, spec: ShardSpec) -> dict[str, Any]:
        """Shard `spec`'s manifest (`num_rows`, `sha256`, `plan_fingerprint`, and `labels` once relabelled)."""
        return self._read_manifest(self._manifest_path(spec))

    def finalize(self, card_fields: Mapping[str, Any], card_data: Mapping[str, Any] | None = None) -> None:
        """Writes `preview.png` and the `README.md` card (YAML features, splits, configs + `card_fields` in the
        template) once every shard is intact, and removes `.synfer/tmp`. Raises `RuntimeError` if shards are
        missing."""
        pending = self.pending_shards()
        if pending:
            raise RuntimeError(f"{len(pending)} shards are not written yet, e.g. {pending[0].filename}.")
        atomic_write_bytes(self.output_dir / PREVIEW_FILE, png_bytes(self.preview_grid()), self._tmp_dir)
        card = self.render_card(card_fields, card_data)
        atomic_write_bytes(self.output_dir / CARD_FILE, str(card).encode(), self._tmp_dir)
        shutil.rmtree(self._tmp_dir, ignore_errors=True)

    def render_card(self, card_fields: Mapping[str, Any], card_data: Mapping[str, Any] | None = None) -> DatasetCard:
        """The dataset card from the template `card_template`. YAML: `dataset_info` (features, split sizes),
        `configs` (`data/train-*`), `size_categories` (from the number of samples), the `card_fields` among
        `DATASET_CARD_DATA_KEYS` (licence, tags, source datasets, ...) and `card_data`, which wins over both; the
        other `card_fields` fill the template."""
        metadata, text_fields = split_card_fields(card_fields, DATASET_CARD_DATA_KEYS)
        num_samples = self.num_rows()
        files = [self.output_dir / spec.filename for spec in self.shards]
        num_bytes = sum(path.stat().st_size for path in files if path.is_file())
        splits = datasets.SplitDict()
        splits.add(datasets.SplitInfo(name=SPLIT, num_bytes=num_bytes, num_examples=num_samples))
        data = DatasetCardData(**{"size_categories": [size_category(num_samples)], **metadata, **(card_data or {})})
        datasets.info.DatasetInfosDict(
            {"default": datasets.DatasetInfo(features=self.features, splits=splits)}
        ).to_dataset_card_data(data)
        datasets.utils.metadata.MetadataConfigs(
            {"default": {"data_files": [{"split": SPLIT, "path": f"{DATA_DIR}/{SPLIT}-*"}]}}
        ).to_dataset_card_data(data)
        fields = {"plan_json": canonical_json(self.plan, indent=2), **text_fields}
        return DatasetCard.from_template(data, template_str=model_card_template(self.card_template), **fields)

    def preview_grid(self, num_samples: int = PREVIEW_SAMPLES, columns: int = 8) -> PIL.Image.Image:
        """The first `num_samples` images in a grid, each captioned with its target expression."""
        tiles = list(self._first_images(num_samples))
        if not tiles:  # every row was dropped
            return PIL.Image.new("RGB", (columns, 1), "white")
        width, height = tiles[0][0].size
        caption = 12
        rows = math.ceil(len(tiles) / columns)
        grid = PIL.Image.new("RGB", (columns * width, rows * (height + caption)), "white")
        draw = PIL.ImageDraw.Draw(grid)
        for i, (image, label) in enumerate(tiles):
            x, y = (i % columns) * width, (i // columns) * (height + caption)
            grid.paste(image.convert("RGB"), (x, y))
            draw.text((x + 2, y + height), EXPRESSIONS[label], fill="black")
        return grid

    def _first_images(self, num_samples: int) -> Iterator[tuple[PIL.Image.Image, int]]:
        for spec in self.shards:
            if not (self.output_dir / spec.filename).is_file():
                continue  # every row dropped
            table = pq.read_table(self.output_dir / spec.filename, columns=["image", "target_label"])
            for image, label in zip(table.column("image").to_pylist(), table.column("target_label").to_pylist()):
                if num_samples <= 0:
                    return
                num_samples -= 1
                yield PIL.Image.open(io.BytesIO(image["bytes"])), label

    # -- helpers -------------------------------------------------------------------------------------------

    @property
    def _data_dir(self) -> Path:
        return self.output_dir / DATA_DIR

    @property
    def _tmp_dir(self) -> Path:
        return self.output_dir / WORK_DIR / "tmp"

    def _manifest_path(self, spec: ShardSpec) -> Path:
        return self.output_dir / WORK_DIR / "shards" / f"{spec.index:05d}.json"

    def _check_writable(self) -> None:
        """`OSError` naming `output_dir` unless it is a writable folder or can be made one (read-only check)."""
        existing = self.output_dir
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        problem = None
        if not existing.is_dir():
            problem = "it is a file" if existing == self.output_dir else f"{existing} is a file"
        elif not os.access(existing, os.W_OK | os.X_OK):
            problem = f"{existing} is not writable"
        if problem:
            raise OSError(f"`output_dir` {str(self.output_dir)!r} is not a writable folder: {problem}.")

    def _make_dirs(self) -> None:
        try:
            for path in (self._data_dir, self._tmp_dir, self.output_dir / WORK_DIR / "shards"):
                path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OSError(
                error.errno,
                f"`output_dir` {str(self.output_dir)!r} is not a writable folder: {error.strerror or error}",
            ) from error

    def _remove_own_entries(self) -> None:
        """Removes this writer's entries; in `.synfer/`, everything but the lock files (a held lock stays held)."""
        for name in _OWN_ENTRIES:
            path = self.output_dir / name
            if name == WORK_DIR and path.is_dir():
                for entry in path.iterdir():
                    if entry.name.startswith(Path(LOCK_FILE).name):
                        continue
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
            elif path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()


def _diff_keys(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


__all__ = [
    "LOCK_FILE",
    "PLAN_FILE",
    "WORK_DIR",
    "ShardSpec",
    "ShardVerificationError",
    "SyntheticRow",
    "SyntheticSetWriter",
    "canonical_plan",
    "plan_fingerprint",
    "shard_specs",
    "synthetic_features",
]
