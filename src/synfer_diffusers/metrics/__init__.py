"""`evaluate` metric modules of the package, usable offline.

`FER_METRICS_PATH` is the folder that `evaluate.load` reads (`evaluate.load(FER_METRICS_PATH)`); the class is
importable too (`FERMetrics()`). Pass `label_names=list(EXPRESSIONS)` to key per-class results by expression.
"""

import os

import evaluate

from .fer_metrics.fer_metrics import FERMetrics

FER_METRICS_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fer_metrics")


def load_fer_metric(**kwargs) -> evaluate.EvaluationModule:
    """`evaluate.load(FER_METRICS_PATH, **kwargs)`: the metric as evaluate loads it (cached module, hashed code)."""
    return evaluate.load(FER_METRICS_PATH, **kwargs)


__all__ = ["FER_METRICS_PATH", "FERMetrics", "load_fer_metric"]
