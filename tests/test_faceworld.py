import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import datasets  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from huggingface_hub import DatasetCard  # noqa: E402

from synfer_diffusers.data.faceworld import (  # noqa: E402
    AU_NAMES,
    FACEWORLD_FEATURES,
    FaceWorldConfig,
    build_faceworld_dataset,
    faceworld_captions,
    faceworld_expression_prototypes,
    main,
    render_action_units,
    render_faces,
    sample_faceworld_attributes,
    write_faceworld_splits,
)
from synfer_diffusers.facs import EXPRESSIONS  # noqa: E402
from synfer_diffusers.prompts import EXPRESSION_PHRASES  # noqa: E402

# Face coordinates (unit = image side, origin at the face centre) of the region each AU may change.
#                 (x_min, x_max, y_min, y_max)
BROWS = (-0.26, 0.26, -0.30, -0.08)
EYES = (-0.25, 0.25, -0.18, 0.0)
CHEEKS = (-0.30, 0.30, -0.12, 0.16)
NOSE = (-0.12, 0.12, -0.09, 0.12)
MOUTH = (-0.23, 0.23, 0.10, 0.34)
MOUTH_AND_CHIN = (-0.32, 0.32, 0.10, 0.50)
CHIN = (-0.16, 0.16, 0.14, 0.40)
AU_REGIONS = {
    "AU1": BROWS, "AU2": BROWS, "AU4": BROWS, "AU5": EYES, "AU6": CHEEKS, "AU9": NOSE,
    "AU12": MOUTH, "AU15": MOUTH, "AU17": CHIN, "AU20": MOUTH, "AU25": MOUTH, "AU26": MOUTH_AND_CHIN,
}  # fmt: skip
FACE_CENTRE = (0.5, 0.51)  # in image fractions, before jitter


def _region_mask(region, resolution=64):
    x_min, x_max, y_min, y_max = region
    pixel_centres = (np.arange(resolution) + 0.5) / resolution
    xs = (pixel_centres - FACE_CENTRE[0])[None, :]
    ys = (pixel_centres - FACE_CENTRE[1])[:, None]
    return (xs >= x_min) & (xs <= x_max) & (ys >= y_min) & (ys <= y_max)


def test_same_seed_same_faces_different_seed_different_faces():
    first, again = build_faceworld_dataset(12, seed=1), build_faceworld_dataset(12, seed=1)
    other = build_faceworld_dataset(12, seed=2)
    images = np.stack([np.asarray(im) for im in first["image"]])
    assert np.array_equal(images, np.stack([np.asarray(im) for im in again["image"]]))
    assert first["text"] == again["text"] and first["label"] == again["label"]
    assert first["action_units"] == again["action_units"]
    assert not np.array_equal(images, np.stack([np.asarray(im) for im in other["image"]]))
    assert first["text"] != other["text"]
    assert np.array_equal(render_faces(first[:]), images)  # rows re-render from their attribute columns


def test_splits_use_different_random_streams():
    train = sample_faceworld_attributes(8, np.random.default_rng([0, 0, 0]))
    test = build_faceworld_dataset(8, seed=0, split="test")
    assert not set(train["seed"].tolist()) & set(test["seed"])


def test_features_are_exactly_the_documented_schema():
    dataset = build_faceworld_dataset(4, seed=0)
    assert dataset.features == FACEWORLD_FEATURES
    assert dataset.features["action_units"] == datasets.List(datasets.Value("float32"), length=12)
    assert dataset.features["label"] == datasets.ClassLabel(names=list(EXPRESSIONS))
    assert dataset.features["clean_label"] == datasets.ClassLabel(names=list(EXPRESSIONS))
    assert isinstance(dataset.features["image"], datasets.Image)
    row = dataset[0]
    assert row["image"].size == (64, 64) and row["image"].mode == "RGB"
    assert len(row["action_units"]) == 12 and isinstance(row["text"], str)


def test_resolution_128():
    images = render_faces(sample_faceworld_attributes(2, 0), FaceWorldConfig(resolution=128))
    assert images.shape == (2, 128, 128, 3) and images.dtype == np.uint8


@pytest.mark.parametrize("au", AU_NAMES)
def test_each_action_unit_changes_its_own_region_more_with_intensity(au):
    still = FaceWorldConfig(max_rotation_degrees=0.0, max_shift=0.0, scale_range=(1.0, 1.0), max_noise_std=0.0)
    attributes = sample_faceworld_attributes(8, 5, still)
    attributes["action_units"] = np.zeros((8, 12), dtype=np.float32)
    neutral = render_faces(attributes, still).astype(np.float32)
    changes = []
    for intensity in (2.5, 5.0):
        attributes["action_units"][:, AU_NAMES.index(au)] = intensity
        change = np.abs(render_faces(attributes, still).astype(np.float32) - neutral).sum(axis=(0, 3))  # (H, W)
        changes.append(change)
    weak, strong = changes
    assert 0 < weak.sum() < strong.sum()
    inside = strong[_region_mask(AU_REGIONS[au])].sum() / strong.sum()
    assert inside > 0.9, f"{au}: only {inside:.0%} of the change lies in its region"
    assert (strong > 0).sum() >= 25, f"{au}: the cue is too small to survive an autoencoder"


def test_prototypes_of_all_expressions_differ():
    always, optional = faceworld_expression_prototypes()
    assert len({tuple(row) for row in always}) == len(EXPRESSIONS)
    anger = always[EXPRESSIONS.index("anger")]
    assert anger[AU_NAMES.index("AU17")] == 1  # the documented stand-in for AU23/AU24
    assert optional[EXPRESSIONS.index("happy"), AU_NAMES.index("AU25")] == 1


def test_label_noise_rate_and_balance():
    attributes = sample_faceworld_attributes(20_000, 0, FaceWorldConfig(label_noise=0.1))
    assert abs(np.mean(attributes["label"] != attributes["clean_label"]) - 0.1) < 0.01
    assert np.allclose(np.bincount(attributes["clean_label"], minlength=7) / 20_000, 1 / 7, atol=0.01)
    assert attributes["action_units"].min() >= 0 and attributes["action_units"].max() <= 5
    clean = sample_faceworld_attributes(2_000, 0, FaceWorldConfig(label_noise=0.0))
    assert np.array_equal(clean["label"], clean["clean_label"])


def test_captions_mention_the_expression_at_the_configured_rate():
    attributes = sample_faceworld_attributes(2_000, 0)
    captions = faceworld_captions(attributes)
    phrases = [p for ps in EXPRESSION_PHRASES.values() for p in ps]
    mentions = np.mean([any(p in caption for p in phrases) for caption in captions])
    assert abs(mentions - 0.7) < 0.04
    assert len(set(captions)) > 1_500
    assert all("a photo of a photo" not in c and "close-up photo of a photo" not in c for c in captions)


def test_render_action_units_uses_the_given_action_units():
    action_units = np.zeros((3, 12), dtype=np.float32)
    action_units[:, AU_NAMES.index("AU12")] = 5.0
    images = render_action_units(action_units, seed=4)
    attributes = sample_faceworld_attributes(3, 4)
    attributes["action_units"] = action_units
    assert np.array_equal(images, render_faces(attributes))
    with pytest.raises(ValueError, match="action_units"):
        render_action_units(np.zeros((3, 11)), seed=0)
    with pytest.raises(ValueError, match="action_units"):
        render_action_units(np.full((1, 12), 6.0), seed=0)


def test_write_splits_and_load_dataset_round_trip(tmp_path):
    main(["--output-dir", str(tmp_path), "--num-train", "30", "--num-test", "12", "--seed", "3"])
    card = DatasetCard.load(tmp_path / "README.md")
    assert card.data.source_datasets == ["original"] and "synthetic" in card.data.tags
    assert card.data.annotations_creators == ["machine-generated"] and card.data.language == ["en"]
    assert "Who is in the data: nobody." in card.text
    loaded = datasets.load_dataset(str(tmp_path))
    assert {split: len(d) for split, d in loaded.items()} == {"train": 30, "test": 12}
    assert loaded["train"].features == FACEWORLD_FEATURES and loaded["test"].features == FACEWORLD_FEATURES
    expected = build_faceworld_dataset(12, seed=3, split="test")
    assert np.array_equal(np.asarray(loaded["test"][7]["image"]), np.asarray(expected[7]["image"]))
    assert loaded["test"]["text"] == expected["text"]
    assert not set(loaded["train"]["seed"]) & set(loaded["test"]["seed"])


def test_rewritten_folder_is_not_served_from_a_stale_cache(tmp_path):
    folder = tmp_path / "faceworld_rewritten"
    for seed in (1, 2):
        written = write_faceworld_splits(folder, num_train=3, num_test=2, seed=seed, show_progress=False)
        assert datasets.load_dataset(str(folder))["test"]["seed"] == written["test"]["seed"]


@pytest.mark.parametrize(
    "field, value",
    [
        ("resolution", 32),
        ("label_noise", 1.5),
        ("blend_probability", -0.1),
        ("blend_weight_range", (0.2, 0.6)),
        ("active_intensity_range", (3.0, 2.0)),
        ("expression_probabilities", (0.5, 0.5)),
        ("max_noise_std", -1.0),
        ("scale_range", (0.1, 1.0)),
    ],
)
def test_bad_config_values_raise_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        FaceWorldConfig(**{field: value})


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="num_samples"):
        build_faceworld_dataset(-1)
    with pytest.raises(ValueError, match="split"):
        build_faceworld_dataset(2, split="dev")
