"""FER metrics: accuracy, macro-F1, per-class recall and the confusion matrix of a multi-class classifier.

A self-contained `evaluate` module (numpy, datasets and evaluate only), so it loads offline by path:
`evaluate.load("path/to/fer_metrics")`; with `app.py` and `README.md` (the Space card) this folder is a metric
Space as evaluate's template makes one.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """Accuracy, macro-averaged F1, per-class recall and the confusion matrix (rows: references, columns:
predictions) of class-index predictions. Macro-F1 averages the F1 of every class that occurs in the references or
the predictions. A class without references has recall `None`."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[int]`): predicted class indices.
    references (`list[int]`): true class indices.
    num_classes (`int`, *optional*): number of classes (default: `len(label_names)`, else the largest index + 1).
    label_names (`list[str]`, *optional*): class names, which key `per_class_recall` (default: the indices as strings).

Returns:
    accuracy (`float`), macro_f1 (`float`), per_class_recall (`dict[str, float | None]`),
    confusion_matrix (`list[list[int]]`, `[reference][prediction]`).

Examples:
    >>> metric = evaluate.load("path/to/fer_metrics")
    >>> metric.compute(predictions=[0, 1, 1], references=[0, 1, 0], label_names=["neutral", "happy"])["accuracy"]
    0.6666666666666666
"""

_CITATION = """@inproceedings{he2025synfer,
  title={SynFER: Towards Boosting Facial Expression Recognition with Synthetic Data},
  author={He, Xilin and Luo, Cheng and others},
  booktitle={ICCV},
  year={2025}
}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class FERMetrics(evaluate.Metric):
    """Accuracy, macro-F1, per-class recall and confusion matrix for facial expression recognition."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, num_classes=None, label_names=None):
        predictions, references = np.asarray(predictions, dtype=np.int64), np.asarray(references, dtype=np.int64)
        if len(references) == 0:
            raise ValueError("`references` must not be empty.")
        if num_classes is None:
            num_classes = (
                len(label_names) if label_names is not None else int(max(predictions.max(), references.max())) + 1
            )
        if label_names is not None and len(label_names) != num_classes:
            raise ValueError(f"`label_names` has {len(label_names)} names for {num_classes} classes.")
        for name, values in (("predictions", predictions), ("references", references)):
            if values.min() < 0 or values.max() >= num_classes:
                raise ValueError(
                    f"`{name}` must be class indices in [0, {num_classes}), got {values.min()}..{values.max()}."
                )
        names = [str(n) for n in label_names] if label_names is not None else [str(i) for i in range(num_classes)]
        confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
        np.add.at(confusion, (references, predictions), 1)
        true_positives = np.diag(confusion).astype(np.float64)
        support, predicted = confusion.sum(1), confusion.sum(0)  # per class: references, predictions
        occurring = (support + predicted) > 0
        f1 = 2 * true_positives[occurring] / (support + predicted)[occurring]
        recall = {n: (float(tp / s) if s else None) for n, tp, s in zip(names, true_positives, support)}
        return {
            "accuracy": float(true_positives.sum() / len(references)),
            "macro_f1": float(f1.mean()),
            "per_class_recall": recall,
            "confusion_matrix": confusion.tolist(),
        }
