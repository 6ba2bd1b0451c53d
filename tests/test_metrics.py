"""The package's evaluate metric: loads offline by path, is importable, and computes what it documents."""

import os

import evaluate
import pytest

from synfer_diffusers.facs import EXPRESSIONS
from synfer_diffusers.metrics import FER_METRICS_PATH, FERMetrics, load_fer_metric

PREDICTIONS = [0, 1, 1, 2, 2, 2, 0]
REFERENCES = [0, 1, 0, 2, 2, 1, 0]


def test_metric_loads_by_path_offline_and_matches_hand_computed_values():
    metric = evaluate.load(FER_METRICS_PATH)
    result = metric.compute(predictions=PREDICTIONS, references=REFERENCES, label_names=["neutral", "happy", "sad"])
    assert result["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 2]]  # rows: references
    assert result["accuracy"] == pytest.approx(5 / 7)
    assert result["per_class_recall"] == pytest.approx({"neutral": 2 / 3, "happy": 1 / 2, "sad": 1.0})
    f1 = [2 * 2 / (3 + 2), 2 * 1 / (2 + 2), 2 * 2 / (2 + 3)]
    assert result["macro_f1"] == pytest.approx(sum(f1) / 3)


def test_importable_class_batches_and_absent_classes():
    metric = FERMetrics()
    metric.add_batch(predictions=PREDICTIONS[:3], references=REFERENCES[:3])
    metric.add_batch(predictions=PREDICTIONS[3:], references=REFERENCES[3:])
    result = metric.compute(label_names=list(EXPRESSIONS))
    assert result == load_fer_metric().compute(
        predictions=PREDICTIONS, references=REFERENCES, label_names=list(EXPRESSIONS)
    )
    assert result["per_class_recall"]["anger"] is None and len(result["confusion_matrix"]) == 7
    assert result["macro_f1"] == pytest.approx(
        FERMetrics().compute(predictions=PREDICTIONS, references=REFERENCES)["macro_f1"]
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"num_classes": 2}, "predictions"), ({"num_classes": 3, "label_names": ["a", "b"]}, "label_names"),
     ({"predictions": [], "references": []}, "empty")],
)  # fmt: skip
def test_bad_inputs_raise(kwargs, match):
    inputs = {"predictions": PREDICTIONS, "references": REFERENCES, **kwargs}
    with pytest.raises(ValueError, match=match):
        FERMetrics().compute(**inputs)


def test_metric_folder_is_a_space_whose_app_launches_the_metric_widget(monkeypatch):
    import runpy

    import evaluate.utils
    import yaml

    card = open(os.path.join(FER_METRICS_PATH, "README.md"), encoding="utf-8").read()
    metadata = yaml.safe_load(card.split("---")[1])
    assert metadata["sdk"] == "gradio" and metadata["app_file"] == "app.py"
    assert {"evaluate", "metric"} <= set(metadata["tags"])
    launched = []
    monkeypatch.setattr(evaluate.utils, "launch_gradio_widget", launched.append)
    runpy.run_path(os.path.join(FER_METRICS_PATH, metadata["app_file"]), run_name="__main__")
    (module,) = launched
    assert module.compute(predictions=[0, 1], references=[0, 0])["accuracy"] == 0.5
