"""Table 2: downstream classifiers trained on real FaceWorld, synthetic sets and both."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from synfer_diffusers import FERAnnoPipeline, SynFERPipeline
from synfer_diffusers.generate import SyntheticSetConfig, VotingLabeler, default_model_dir, generate_synthetic_dataset
from synfer_diffusers.labels import EnsembleVoter, VotingConfig

from .common import (
    DEFAULT_LABELS,
    DEFAULT_TEMPERING,
    LABEL_SOURCES,
    SuiteConfig,
    agreement_with_judges,
    cached,
    combined_stage,
    load_real,
    row_key,
    run_classifiers,
    stage_summary,
    summarise_runs,
)


@dataclass(frozen=True)
class DownstreamRow:
    name: str
    real: bool  # includes the N real faces
    synthetic: int  # synthetic images, in units of N (0, 1 or synthetic_factor)
    labels: str | None  # synthetic label source
    guided: bool = True  # synthetic images generated with semantic guidance

    @property
    def key(self) -> str:
        return row_key(self.name)


def labelled_rows(
    groups: tuple[tuple[int, bool, bool, str], ...], sources: tuple[str, ...] = LABEL_SOURCES
) -> list[DownstreamRow]:
    """One row per label source of each group `(synthetic size in N, with the real N, guided, name)`."""
    return [
        DownstreamRow(f"{name} ({source})", real, size, source, guided)
        for size, real, guided, name in groups
        for source in sources
    ]


def downstream_rows(config: SuiteConfig) -> list[DownstreamRow]:
    """Real N; the paper's vote, plain and tempered Dawid-Skene labels (the latter `synfer generate`'s default) of
    the SG groups, voted by FERAnno, the default's RegNet voter and the target; the same and the target's labels of the
    no-SG set, where the guide votes too. FERAnno's own labels are table 5's and 6's subject."""
    k = config.synthetic_factor
    vote = ("vote", "dawid_skene", DEFAULT_LABELS)
    return [
        DownstreamRow("real N", True, 0, None),
        *labelled_rows(((1, False, True, "synthetic N"),), vote),
        *labelled_rows(((1, False, False, "synthetic N, no SG"),), ("target", *vote)),
        *labelled_rows(((k, False, True, f"synthetic {k}N"), (1, True, True, "real N + synthetic N")), vote),
    ]


def build_synthetic_set(config: SuiteConfig, work: Path, guided: bool) -> tuple[Path, dict]:
    """`synfer generate`'s library call with the default checkpoint, labels voted by FERAnno, the checkpoint's guide
    and the target: the guided set (synthetic_factor * N images, semantic guidance on) or the unguided ablation (the
    same plan's first N samples, semantic guidance off)."""
    name = "synthetic_set" if guided else "synthetic_set_no_sg"
    size = config.num_real * (config.synthetic_factor if guided else 1)
    return write_set(synthetic_set_config(config, size, guided), work, name)


def synthetic_set_config(config: SuiteConfig, size: int, guided: bool) -> SyntheticSetConfig:
    """The first `size` samples of the suite's synthetic plan (seed 0; the same images whatever `size`)."""
    return SyntheticSetConfig(
        num_samples=size, seed=0, num_inference_steps=config.generation_steps,
        semantic_guidance_scale=config.semantic_guidance_scale if guided else 0.0,
    )  # fmt: skip


def write_set(set_config: SyntheticSetConfig, work: Path, name: str) -> tuple[Path, dict]:
    """`generate_synthetic_dataset` into `work / name` (resumed shard by shard), cached as `work / name.json`."""
    output = work / name

    def compute() -> dict:
        result = generate_synthetic_dataset(set_config, output, batch_size=35, resume=output.exists())
        return {"num_samples": result.num_samples, "config": asdict(set_config)}

    return output, cached(work / f"{name}.json", compute)


def _rows_in_sample_order(path: Path, columns: list[str]) -> tuple[dict[str, np.ndarray], list[list[dict]]]:
    """A written set's `columns` as numpy arrays in sample order, and its stored votes in the same order."""
    import datasets

    data = datasets.load_dataset(str(path), split="train", cache_dir=str(path.parent / "hf_cache")).sort("sample_id")
    return data.select_columns(columns).with_format("numpy")[:], data["votes"]


def load_synthetic_set(path: Path) -> dict[str, np.ndarray]:
    """Images `(M, 64, 64, 3)` uint8 in sample order, with the target labels, the labels the paper's rule
    (`"vote"`), plain Dawid-Skene and `synfer generate`'s tempered Dawid-Skene give from the stored votes (as
    `synfer relabel --aggregation ... --classifier-tempering ...` would, whichever rule wrote the set), and the stored
    votes themselves under `"votes"`."""
    data, votes = _rows_in_sample_order(path, ["image", "target_label"])
    targets = data["target_label"]
    return {"image": np.asarray(data["image"]), "target": targets, "vote": voted_labels(votes, targets, "paper"),
            "dawid_skene": voted_labels(votes, targets, "dawid_skene"),
            DEFAULT_LABELS: voted_labels(votes, targets, "dawid_skene", classifier_tempering=DEFAULT_TEMPERING),
            "votes": votes}  # fmt: skip


def generated_set(config: SuiteConfig, work: Path) -> tuple[Path, dict]:
    """Table 4's plain generated images: the first 6M samples of the suite's synthetic plan (table 2's images), as
    many as the downstream rows' edits; the persons rows use its first 7K."""
    return write_set(synthetic_set_config(config, 6 * config.edit_num_real, guided=True), work, "edit_fresh_set")


def load_edit_set(path: Path, source: str = "source_id") -> dict[str, np.ndarray]:
    """An edit set's images `(N, 64, 64, 3)` uint8 in sample order, with the `source` column (`source_id`, or a
    persons set's `person_id`), target labels and the paper's vote from the stored votes."""
    data, votes = _rows_in_sample_order(path, ["image", source, "target_label"])
    targets = data["target_label"]
    return {"image": np.asarray(data["image"]), source: data[source], "target": targets,
            "vote": voted_labels(votes, targets, "paper")}  # fmt: skip


def voted_labels(
    votes: list[list[dict]],
    targets: np.ndarray,
    aggregation: str,
    voters: tuple[str, ...] | None = None,
    classifier_tempering: float = 1.0,
) -> np.ndarray:
    """The labels `aggregation` gives from a set's stored `votes`, counting only `voters` (default: every voter of
    the set, the target included)."""
    names = voters or tuple(vote["voter"] for vote in votes[0])
    given = tuple(name for name in names if name != "target")
    ensemble = EnsembleVoter(config=VotingConfig(probability_voters=given, use_target="target" in names,
                                                 aggregation=aggregation,
                                                 classifier_tempering=classifier_tempering))  # fmt: skip
    kept = [[vote for vote in row if vote["voter"] in names] for row in votes]
    return VotingLabeler(ensemble).relabel(kept, [int(t) for t in targets]).label_ids.numpy()


def feranno_labels(images: np.ndarray, path: Path) -> tuple[np.ndarray, dict]:
    """FERAnno (the default checkpoint's head, a separate FERAnnoPipeline pass at t ~ 1) on the synthetic images."""

    def compute() -> dict:
        default = SynFERPipeline.from_pretrained(default_model_dir())
        annotator = FERAnnoPipeline(**default.base_components, head=default.feranno_head)
        annotator.set_progress_bar_config(disable=True)
        output = annotator(images, batch_size=64, generator=torch.Generator().manual_seed(0))
        return {"label_ids": output.label_ids.tolist()}

    result = cached(path, compute)
    return np.asarray(result["label_ids"]), result


def labelled_set(path: Path, work: Path, suffix: str) -> dict[str, np.ndarray]:
    """A written synthetic set's images with target, vote and FERAnno labels; its FERAnno stage's cached result
    under `"feranno_stage"`."""
    synthetic = load_synthetic_set(path)
    synthetic["feranno"], synthetic["feranno_stage"] = feranno_labels(
        synthetic["image"], work / f"feranno_labels{suffix}.json"
    )
    return synthetic


def prepare_synthetic(config: SuiteConfig, work: Path, guided: bool) -> tuple[dict[str, np.ndarray], dict]:
    """A synthetic set's images and target / vote / FERAnno labels, and its stages' cached results by name."""
    path, generation = build_synthetic_set(config, work, guided)
    suffix, label = ("", "") if guided else ("_no_sg", ", no SG")
    synthetic = labelled_set(path, work, suffix)
    return synthetic, {f"synthetic set{label}": generation, f"FERAnno labels{label}": synthetic.pop("feranno_stage")}


def training_data(row: DownstreamRow, num_real: int, real: dict, synthetic: dict[bool, dict]) -> dict[str, np.ndarray]:
    """The real `num_real` faces (annotated labels) and/or the row's first `row.synthetic * num_real` synthetic
    images with its label source."""
    parts = []
    if row.real:
        parts.append((real["image"], real["label"]))
    if row.synthetic:
        count, images = row.synthetic * num_real, synthetic[row.guided]
        parts.append((images["image"][:count], images[row.labels][:count]))
    return {"image": np.concatenate([p[0] for p in parts]), "label": np.concatenate([p[1] for p in parts])}


def table_downstream(config: SuiteConfig, run_dir: Path, work: Path) -> dict:
    (guided, guided_stages), (unguided, unguided_stages) = (prepare_synthetic(config, work, g) for g in (True, False))
    synthetic = {True: guided, False: unguided}
    real = load_real(run_dir, "train", ("image", "label"), config.num_real)
    test = load_real(run_dir, "test", ("image", "clean_label"))
    sets = {row.name: partial(training_data, row, config.num_real, real, synthetic) for row in downstream_rows(config)}
    runs = run_classifiers(sets, test, work / "downstream", config, run_dir)
    agreement = {
        f"{name} {source}": float((labels[source] == labels["target"]).mean())
        for name, labels in (("SG", guided), ("no SG", unguided))
        for source in ("feranno", "vote", "dawid_skene", DEFAULT_LABELS)
    }
    stages = {**guided_stages, **unguided_stages}
    stages["classifiers"] = combined_stage(runs)
    return {
        "rows": [{**asdict(row), **summarise_runs(runs, row.name)} for row in downstream_rows(config)],
        "runs": runs, "label_agreement_with_target": agreement, "stages": stage_summary(stages),
        "label_agreement_with_judges": {"SG": agreement_with_judges(guided, run_dir),
                                        "no SG": agreement_with_judges(unguided, run_dir)},
    }  # fmt: skip
