"""The metric's Hugging Face Space: evaluate's metric widget (as evaluate's metric template), reading the module
beside this file. Push this folder as a Space (`sdk: gradio` in `README.md`) to publish the metric."""

import os

import evaluate
from evaluate.utils import launch_gradio_widget

module = evaluate.load(os.path.join(os.path.dirname(os.path.abspath(__file__)), "fer_metrics.py"))
launch_gradio_widget(module)
