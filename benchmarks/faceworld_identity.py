"""An identity judge for FaceWorld, independent of any generator: a ResNet trained on real FaceWorld faces to
predict the sampled identity attributes of each face (what `sample_faceworld_attributes` draws as the person:
age group, gender, skin tone, hair style and colour, eye colour, glasses, beard), whatever its expression and
nuisances. It measures whether an edit keeps the person: the attributes it reads off an edit against the source
face's true attributes, and the cosine similarity of its pooled features (an identity embedding) between edit and
source.

Trained with the augmentation of `examples/train_fer_classifier.py` (blur, downscaling, colour, noise, small
geometric changes), so that the blur of a generated face is not read as another person. One head per attribute:
the logits are the attributes' classes side by side (`config.identity_attributes` names them), the loss the sum of
their cross-entropies.

    python benchmarks/faceworld_identity.py --faceworld runs/faceworld --output-dir runs/identity_classifier
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from eval_faceworld_generation import judge_features
from transformers import AutoModelForImageClassification, PreTrainedModel, ResNetConfig, ResNetForImageClassification

from synfer_diffusers.evaluation import predict, to_pixel_values
from synfer_diffusers.training.fer_classifier import augment

IDENTITY_ATTRIBUTES = ("age_group", "gender", "skin_tone", "hair_style", "hair_colour", "eye_colour", "glasses", "beard")
"""FaceWorld's identity columns with discrete values (the face's width, height and render seed are the rest)."""


def attribute_classes(columns: dict[str, np.ndarray]) -> dict[str, list[str]]:
    """The values of each identity attribute seen in `columns`, as sorted strings."""
    return {name: sorted({str(value) for value in columns[name]}) for name in IDENTITY_ATTRIBUTES}


def encode_attributes(columns: dict[str, np.ndarray], classes: dict[str, list[str]]) -> torch.Tensor:  # (N, A)
    """Class indices of each face's identity attributes; -1 (never predicted) for a value unseen in training."""
    codes = []
    for name in IDENTITY_ATTRIBUTES:
        index = {value: i for i, value in enumerate(classes[name])}
        codes.append([index.get(str(value), -1) for value in columns[name]])
    return torch.tensor(codes, dtype=torch.long).T


def split_logits(model: PreTrainedModel, logits: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """`(N, sum of classes)` logits -> one `(N, classes)` block per attribute, in `IDENTITY_ATTRIBUTES` order."""
    sizes = [len(model.config.identity_attributes[name]) for name in IDENTITY_ATTRIBUTES]
    return logits.split(sizes, dim=1)


def build_identity_classifier(classes: dict[str, list[str]]) -> ResNetForImageClassification:
    """The judge's architecture (ResNet [32, 64, 128], random init) with one head block per attribute."""
    config = ResNetConfig(
        embedding_size=32, hidden_sizes=[32, 64, 128], depths=[1, 1, 1], layer_type="basic",
        num_labels=sum(len(values) for values in classes.values()),
    )  # fmt: skip
    config.identity_attributes = classes
    return ResNetForImageClassification(config)


@torch.no_grad()
def predict_attributes(model: PreTrainedModel, images: torch.Tensor) -> torch.Tensor:  # (N, A)
    """Predicted class index of each identity attribute for `(N, 3, H, W)` images in [0, 1] (or uint8)."""
    return torch.stack([block.argmax(dim=1) for block in split_logits(model, predict(model, images))], dim=1)


def identity_scores(model: PreTrainedModel, images: torch.Tensor, sources: torch.Tensor, source_attributes) -> dict:
    """How much of the source person `images` keep (`images[i]` against `sources[i]`, both `(N, 3, H, W)` in [0, 1],
    `source_attributes` `(N, A)` the sources' true classes): the share of attributes read correctly, the share of
    images with every attribute right, and the mean cosine similarity of the identity features."""
    correct = predict_attributes(model, images) == source_attributes
    cosine = F.cosine_similarity(judge_features(model, images), judge_features(model, sources), dim=1)
    return {
        "identity_attribute_accuracy": float(correct.float().mean()),
        "identity_all_attributes": float(correct.all(dim=1).float().mean()),
        "identity_cosine": float(cosine.mean()),
    }


def identity_consistency(model: PreTrainedModel, images: torch.Tensor, person_ids: np.ndarray) -> dict:
    """How alike the classifier reads the images of each person (`images` `(N, 3, H, W)` in [0, 1], `person_ids`
    `(N,)` the person of each, at least two images per person): over every pair of one person's images, the share of
    identity attributes read the same on both, the share of pairs with all of them the same, and the cosine
    similarity of the identity features; each averaged over a person's pairs, then over persons."""
    attributes = predict_attributes(model, images)  # (N, A)
    features = F.normalize(judge_features(model, images), dim=1)  # (N, D)
    scores = []  # (persons, 3)
    for person in np.unique(person_ids):
        index = torch.from_numpy(np.flatnonzero(person_ids == person))
        if len(index) < 2:
            raise ValueError(f"`person_ids`: person {person} has one image, consistency needs two or more.")
        first, second = (index[pairs] for pairs in torch.triu_indices(len(index), len(index), offset=1))
        same = attributes[first] == attributes[second]  # (pairs, A)
        cosine = (features[first] * features[second]).sum(dim=1)
        scores.append([same.float().mean(), same.all(dim=1).float().mean(), cosine.mean()])
    attribute, all_attributes, cosine = torch.tensor(scores).mean(dim=0).tolist()
    return {"identity_attribute_agreement": attribute, "identity_all_attributes_agreement": all_attributes,
            "identity_cosine": cosine}  # fmt: skip


def _split(faceworld: str, split: str) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
    data = datasets.load_dataset(faceworld, split=split).select_columns(["image", *IDENTITY_ATTRIBUTES])
    columns = data.with_format("numpy")[:]
    images = torch.from_numpy(np.asarray(columns["image"])).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W) uint8
    return images, columns


def train_identity_classifier(
    faceworld: str, output_dir: Path, steps: int = 800, seed: int = 4, batch_size: int = 128
) -> PreTrainedModel:
    """Trains on the `train` split of a FaceWorld folder (AdamW 3e-3, one-cycle, augmentation), saves the model
    (safetensors) and `metrics.json` (per-attribute accuracy on the `test` split) to `output_dir`."""
    images, columns = _split(faceworld, "train")
    classes = attribute_classes(columns)
    targets = encode_attributes(columns, classes)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = build_identity_classifier(classes).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    start = time.perf_counter()
    for step in range(steps):
        batch = torch.randint(len(images), (batch_size,), generator=generator)
        pixels = augment(images[batch].float() / 255.0, generator)
        blocks = split_logits(model, model(pixel_values=to_pixel_values(pixels)).logits)
        loss = sum(F.cross_entropy(block, targets[batch, i]) for i, block in enumerate(blocks))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0:
            print(f"identity classifier step {step}: loss {loss.item():.3f}", flush=True)
    model.eval()
    test_images, test_columns = _split(faceworld, "test")
    correct = predict_attributes(model, test_images) == encode_attributes(test_columns, classes)
    metrics = {
        "steps": steps, "seed": seed, "train_seconds": round(time.perf_counter() - start, 1),
        "test_attribute_accuracy": dict(zip(IDENTITY_ATTRIBUTES, correct.float().mean(dim=0).tolist())),
        "test_all_attributes": float(correct.all(dim=1).float().mean()),
    }  # fmt: skip
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir, safe_serialization=True)
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return model


def load_identity_classifier(output_dir: Path, faceworld: str | None, steps: int = 800) -> PreTrainedModel:
    """The classifier saved in `output_dir`, trained there first on `faceworld` when there is none."""
    if (output_dir / "metrics.json").exists():
        return AutoModelForImageClassification.from_pretrained(output_dir).eval()
    if faceworld is None:
        raise ValueError(f"No identity classifier in {str(output_dir)!r}: pass `--faceworld` to train one there.")
    return train_identity_classifier(faceworld, output_dir, steps)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faceworld", required=True, help="FaceWorld folder with train and test splits")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--seed", type=int, default=4)
    args = parser.parse_args(argv)
    train_identity_classifier(args.faceworld, Path(args.output_dir), args.steps, args.seed)
    metrics = json.loads((Path(args.output_dir) / "metrics.json").read_text())
    print(json.dumps(metrics, indent=2))
    return metrics


if __name__ == "__main__":
    main()
