import importlib.util
import json
import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForImageClassification  # noqa: E402

from synfer_diffusers import evaluation  # noqa: E402
from synfer_diffusers.data.faceworld import AU_NAMES, build_faceworld_dataset, write_faceworld_splits  # noqa: E402
from synfer_diffusers.facs import EXPRESSIONS  # noqa: E402
from synfer_diffusers.training import fer_classifier  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "train_fer_classifier.py"
_spec = importlib.util.spec_from_file_location("train_fer_classifier", SCRIPT)
trainer = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = trainer  # dataclasses look their module up
_spec.loader.exec_module(trainer)

TINY = ["--hidden_sizes", "8", "16", "--depths", "1", "1", "--max_train_steps", "3", "--train_batch_size", "8",
        "--eval_batch_size", "16", "--num_threads", "1"]  # fmt: skip


@pytest.fixture(scope="module")
def faceworld_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("faceworld")
    write_faceworld_splits(folder, num_train=32, num_test=12, seed=0, show_progress=False)
    return folder


@pytest.mark.parametrize(
    "task, architecture",
    [("expression", "resnet"), ("expression", "convnext"), ("expression", "mobilenet_v2"), ("expression", "vit"),
     ("expression", "regnet"), ("action_units", "resnet")],
)
def test_trains_a_few_steps_and_saves_a_loadable_model(faceworld_dir, tmp_path, task, architecture):
    output_dir = tmp_path / "model"
    args = ["--dataset_name", str(faceworld_dir), "--output_dir", str(output_dir), "--task", task]
    # MobileNetV2 (batch norm after every depthwise layer) needs a few more, smaller steps to lower its loss here
    extra = ["--max_train_steps", "12", "--learning_rate", "5e-4"] if architecture == "mobilenet_v2" else []
    argv = [*args, "--architecture", architecture, *TINY, *extra]
    metrics = trainer.main(argv)

    assert metrics["steps"] == (12 if extra else 3)
    _assert_trained(faceworld_dir, output_dir, argv)
    assert (output_dir / "model.safetensors").exists() and not list(output_dir.glob("*.bin"))
    saved = json.loads((output_dir / "metrics.json").read_text())
    assert set(saved["test"]) >= {"original", "blur_sigma1", "downscale_upscale_2x"}
    model = AutoModelForImageClassification.from_pretrained(output_dir)
    assert getattr(model.config, "au_names", None) == (list(AU_NAMES) if task == "action_units" else None)
    test = build_faceworld_dataset(12, seed=0, split="test")
    images = np.stack([np.asarray(image) for image in test["image"]])
    if task == "expression":
        assert model.config.id2label == EXPRESSIONS.id2label
        result = evaluation.evaluate_expression_classifier(model, images, test["clean_label"])
        assert result["accuracy"] == pytest.approx(saved["test"]["original"]["clean_labels"]["accuracy"])
        assert np.sum(result["confusion_matrix"]) == 12
    else:
        assert model.config.problem_type == "regression" and model.config.num_labels == 12
        result = evaluation.evaluate_au_regressor(model, images, test["action_units"])
        assert result["mae"] == pytest.approx(saved["test"]["original"]["mae"], abs=1e-5)
        assert set(result["mae_per_au"]) == set(AU_NAMES)
        assert "baseline_predict_train_mean" in saved["test"]


def _assert_trained(faceworld_dir, output_dir, argv) -> None:
    """The saved model was trained, not just stepped: every weight matrix moved from the seed's initialisation, and
    the training loss on the whole training split (batch statistics, no dropout or augmentation) is lower than the
    initial one."""
    from transformers import HfArgumentParser

    (config,) = HfArgumentParser(fer_classifier.TrainFERConfig).parse_args_into_dataclasses(args=argv)
    torch.manual_seed(config.seed)
    initial = fer_classifier.build_model(config)
    trained = AutoModelForImageClassification.from_pretrained(output_dir)
    initial_weights = dict(initial.named_parameters())
    moved = [name for name, p in trained.named_parameters() if p.ndim > 1 and not torch.equal(p, initial_weights[name])]
    assert moved and len(moved) == sum(p.ndim > 1 for p in initial.parameters()), moved
    splits = fer_classifier.load_splits(config)
    images = torch.from_numpy(splits["train"]["image"]).permute(0, 3, 1, 2).float() / 255.0
    column = config.label_column if config.task == "expression" else "action_units"
    targets = torch.from_numpy(splits["train"][column])
    targets = targets.long() if config.task == "expression" else targets.float()

    def loss(model):  # batch statistics as in training, no dropout: deterministic
        model.train()
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.eval()
        with torch.no_grad():
            return fer_classifier._loss(config, model(pixel_values=evaluation.to_pixel_values(images)).logits, targets)

    assert loss(trained) < loss(initial)


def test_trains_on_the_true_labels_with_label_column_clean_label(faceworld_dir, tmp_path):
    args = ["--dataset_name", str(faceworld_dir), "--output_dir", str(tmp_path / "m"), "--label_column", "clean_label"]
    metrics = trainer.main([*args, *TINY])
    assert metrics["steps"] == 3
    saved = json.loads((tmp_path / "m" / "metrics.json").read_text())
    clean = saved["test"]["original"]["clean_labels"]["accuracy"]
    assert saved["test"]["original"]["noisy_labels"]["accuracy"] == pytest.approx(clean)  # scored on the same column


def test_test_dataset_name_scores_on_another_sets_test_split_matching_labels_by_name(faceworld_dir, tmp_path):
    """`--test_dataset_name`: the train split of `dataset_name` (no test split, no `clean_label`, as a synthetic set)
    and the test split of another dataset; a label column whose class names come in another order (an imagefolder's
    alphabetical ones) is read as ids into EXPRESSIONS by name."""
    import datasets

    alphabetical = sorted(EXPRESSIONS)
    faces = build_faceworld_dataset(8, seed=1)
    names = [EXPRESSIONS[i] for i in faces["label"]]
    relabelled = faces.select_columns(["image"]).add_column("label", [alphabetical.index(n) for n in names])
    relabelled = relabelled.cast_column("label", datasets.ClassLabel(names=alphabetical))
    (tmp_path / "synthetic" / "data").mkdir(parents=True)
    relabelled.to_parquet(str(tmp_path / "synthetic" / "data" / "train-00000-of-00001.parquet"))
    config = fer_classifier.TrainFERConfig(
        dataset_name=str(tmp_path / "synthetic"), test_dataset_name=str(faceworld_dir), output_dir=str(tmp_path / "m")
    )
    splits = fer_classifier.load_splits(config)
    assert [EXPRESSIONS[i] for i in splits["train"]["label"]] == names
    assert set(splits["train"]) == {"image", "label"} and set(splits["test"]) == {"image", "label", "clean_label"}
    assert len(splits["test"]["image"]) == 12  # faceworld_dir's test split
    metrics = trainer.main(["--dataset_name", str(tmp_path / "synthetic"), "--test_dataset_name", str(faceworld_dir),
                            "--output_dir", str(tmp_path / "m"), *TINY])  # fmt: skip
    assert metrics["test"]["original"]["clean_labels"]["num_samples"] == 12


def test_rejects_an_unknown_task(faceworld_dir, tmp_path):
    with pytest.raises(ValueError, match="task"):
        trainer.main(["--dataset_name", str(faceworld_dir), "--output_dir", str(tmp_path / "m"), "--task", "age"])
    assert not (tmp_path / "m").exists()


def test_rejects_a_dataset_without_the_needed_column_before_training(tmp_path):
    data_dir = tmp_path / "no_aus" / "data"
    data_dir.mkdir(parents=True)
    for split in ("train", "test"):
        dataset = build_faceworld_dataset(4, seed=0, split=split).remove_columns("action_units")
        dataset.to_parquet(str(data_dir / f"{split}-00000-of-00001.parquet"))
    args = ["--dataset_name", str(tmp_path / "no_aus"), "--output_dir", str(tmp_path / "m"), "--task", "action_units"]
    with pytest.raises(ValueError, match="action_units"):
        trainer.main(args + TINY)
    assert not (tmp_path / "m").exists()


def test_degradations():
    images = torch.rand(2, 3, 64, 64)
    assert torch.allclose(evaluation.gaussian_blur(images, 0.0), images, atol=1e-5)
    assert evaluation.gaussian_blur(images, 1.0).std() < images.std()
    assert evaluation.downscale_upscale(images).shape == images.shape
    augmented = fer_classifier.augment(images, torch.Generator().manual_seed(0))
    assert augmented.shape == images.shape and 0 <= augmented.min() and augmented.max() <= 1
