import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import re  # noqa: E402

import datasets  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from synfer_diffusers.data.faceworld import (  # noqa: E402
    FaceWorldConfig,
    build_faceworld_dataset,
    faceworld_label_statistics,
    main,
    sample_faceworld_attributes,
)
from synfer_diffusers.facs import EXPRESSIONS  # noqa: E402

# Start of a row of the statistics table in `FaceWorldConfig.hard`'s docstring -> (key of
# `faceworld_label_statistics`, tolerance on 4,000 faces: about four standard errors).
DOCUMENTED = {
    "wrong labels": ("label_noise", 0.03),
    "of the wrong labels": ("partner_noise", 0.06),
    "blended faces": ("blend", 0.03),
    "subtle faces": ("subtle", 0.035),
}


def _documented_statistics() -> dict[str, tuple[float, float]]:
    """(hard, standard) per row of the statistics table in `FaceWorldConfig.hard.__doc__`."""
    rows = {}
    for line in FaceWorldConfig.hard.__doc__.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[1].endswith("%"):
            rows[cells[0]] = tuple(float(cell.rstrip("%")) / 100 for cell in cells[1:])
    return rows


def _documented_intensity_means() -> dict[str, tuple[float, float]]:
    doc = FaceWorldConfig.hard.__doc__
    return {
        name: (float(hard), float(standard))
        for name, hard, standard in re.findall(r"\| intensity, (\w+) \| ([\d.]+) \| ([\d.]+) \|", doc)
    }


@pytest.mark.parametrize("regime, column", [("hard", 0), ("standard", 1)])
def test_measured_statistics_match_the_documented_ones(regime, column):
    measured = faceworld_label_statistics(sample_faceworld_attributes(4_000, 1, FaceWorldConfig.from_regime(regime)))
    documented = _documented_statistics()
    for row, (key, tolerance) in DOCUMENTED.items():
        (name,) = [name for name in documented if name.startswith(row)]
        assert abs(measured[key] - documented[name][column]) < tolerance, (regime, row, measured[key])
    means = _documented_intensity_means()
    assert set(means) == set(EXPRESSIONS)
    for name, values in means.items():
        assert abs(measured["intensity_means"][name] - values[column]) < 0.08, (regime, name)


def test_hard_noise_is_confusion_structured():
    attributes = sample_faceworld_attributes(4_000, 2, FaceWorldConfig.hard())
    confusion = faceworld_label_statistics(attributes)["confusion"]
    index = EXPRESSIONS.index
    for first, second in (("fear", "surprise"), ("disgust", "anger"), ("sad", "neutral")):
        for a, b in ((first, second), (second, first)):
            wrong = np.delete(confusion[index(a)], index(a))
            assert confusion[index(a), index(b)] > 3 * np.delete(wrong, np.argmax(wrong)).max(), (a, b)
    happy = np.delete(confusion[index("happy")], index("happy"))  # no partner: spread over the other classes
    assert happy.min() > 0.4 * happy.mean()
    ambiguous = attributes["is_blend"]
    wrong = attributes["label"] != attributes["clean_label"]
    assert wrong[ambiguous].mean() > 1.5 * wrong[~ambiguous].mean()  # blends are mislabelled more


def test_hard_regime_is_deterministic_per_seed():
    first, again = (sample_faceworld_attributes(500, 3, FaceWorldConfig.hard()) for _ in range(2))
    other = sample_faceworld_attributes(500, 4, FaceWorldConfig.hard())
    assert all(np.array_equal(first[key], again[key]) for key in first)
    assert not np.array_equal(first["action_units"], other["action_units"])
    assert not np.array_equal(first["label"], other["label"])


def test_regimes_by_name():
    assert FaceWorldConfig.from_regime("standard") == FaceWorldConfig()
    assert FaceWorldConfig.from_regime("hard", resolution=128) == FaceWorldConfig.hard(resolution=128)
    hard, standard = FaceWorldConfig.hard(), FaceWorldConfig()
    assert hard.label_noise > standard.label_noise and hard.blend_probability > standard.blend_probability
    assert hard.max_rotation_degrees == standard.max_rotation_degrees  # same nuisances: only expressions and labels change
    with pytest.raises(ValueError, match="regime"):
        FaceWorldConfig.from_regime("easy")


def test_command_line_writes_the_hard_regime(tmp_path):
    main(["--output-dir", str(tmp_path), "--num-train", "20", "--num-test", "4", "--seed", "5", "--regime", "hard"])
    card = (tmp_path / "README.md").read_text()
    assert "in the `hard` regime" in card and "of the train labels differ from `clean_label`" in card
    loaded = datasets.load_dataset(str(tmp_path))["train"]
    expected = build_faceworld_dataset(20, seed=5, config="hard")
    assert loaded["label"] == expected["label"] and loaded["action_units"] == expected["action_units"]
    assert loaded["label"] != build_faceworld_dataset(20, seed=5)["label"]


@pytest.mark.parametrize(
    "field, value",
    [
        ("subtle_probability", (0.5, 0.5)),
        ("subtle_probability", 1.5),
        ("subtle_intensity_range", (2.0, 1.0)),
        ("ambiguous_label_noise", -0.1),
        ("confusable_noise_probability", 2.0),
        ("blend_partner_probability", -1.0),
    ],
)
def test_bad_regime_settings_raise_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        FaceWorldConfig(**{field: value})
