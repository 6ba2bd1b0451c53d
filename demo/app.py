"""SynFER demo: a Gradio app in the layout of a Hugging Face Space (`app_file: app.py`, see README.md).

Generate faces from a description, an expression preset (the EMFACS prototype fills the AU controls) and one control
per action unit of the checkpoint, see the enriched prompt and FERAnno / guide label probabilities; sweep one AU at a
fixed seed; edit an uploaded face into another expression. Runs offline on the embedded default checkpoint unless
`--model` or `$SYNFER_DEMO_MODEL` names another (a folder or Hub repo id):

    python demo/app.py [--model PATH_OR_REPO_ID] [--host 127.0.0.1] [--port 7860]

The functions the buttons call are [`SynFERDemo`]'s methods (`synfer_demo.py`); this file lays out the page.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import gradio as gr

from synfer_diffusers import EXPRESSIONS
from synfer_diffusers.dataclass_cli import name_flags
from synfer_diffusers.prompts import DEFAULT_DESCRIPTION

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `python demo/app.py` from anywhere, as a Space runs it
from synfer_demo import (  # noqa: E402
    MODEL_ENV,
    NO_EXPRESSION,
    PRESETS,
    Generation,
    SynFERDemo,
    action_units_from_controls,
    au_label,
    control_values,
)

# Read by Gradio at each call: no telemetry and no version check, whatever `analytics_enabled` a Blocks is given.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

MODEL_QUEUE = "model"
"""The events that run the pipeline share one queue slot: one pipeline call at a time."""
TARGET_AU_CONTROLS = "AU controls (Generate tab)"


class AUControls:
    """The AU inputs of a checkpoint's AU space: one slider per AU with its FACS name, in two columns (intensity
    spaces), or one group of checkboxes (occurrence spaces); `components` in the space's order."""

    def __init__(self, demo: SynFERDemo):
        self.space = demo.au_space
        if self.space.kind == "occurrence":
            choices = [(au_label(name), name) for name in self.space.names]
            self.components = [gr.CheckboxGroup(choices, value=[], label="Action units present", elem_id="au-present")]
        else:
            half = (self.space.num_aus + 1) // 2
            self.components = []
            with gr.Row():
                for names in (self.space.names[:half], self.space.names[half:]):
                    with gr.Column(min_width=240):
                        self.components += [
                            gr.Slider(0, self.space.max_value, value=0, step=0.1, label=au_label(name),
                                      elem_id=f"au-{name}")  # fmt: skip
                            for name in names
                        ]

    def values(self, values: Sequence) -> dict[str, float]:
        return action_units_from_controls(self.space, values)


def with_action_units(function: Callable, controls: AUControls, num_inputs: int) -> Callable:
    """A Gradio handler of `num_inputs` inputs followed by the AU controls: calls `function(*inputs, action_units,
    progress=...)` with the controls' values as one AU dict (Gradio passes the `progress` tracker first)."""

    def handler(progress: gr.Progress = gr.Progress(), *values):  # a `gr.Progress` default: Gradio passes its tracker
        inputs, au_values = values[:num_inputs], values[num_inputs:]
        return function(*inputs, controls.values(au_values), progress=progress)

    return handler


def build_app(demo: SynFERDemo, num_inference_steps: int = 25) -> gr.Blocks:
    """The page: Generate, AU sweep and Edit tabs on `demo`'s checkpoint; `num_inference_steps` is the default of
    the steps sliders."""
    space = demo.au_space
    with gr.Blocks(title="SynFER demo", analytics_enabled=False) as app:
        gr.Markdown(
            f"# SynFER: facial expressions from text and action units\n"
            f"Model `{demo.name}`: {demo.image_size} px, {space.num_aus} {space.kind} AUs "
            f"(0-{space.max_value:g}); labels by {', '.join(demo.labellers) or 'none'}."
        )
        with gr.Tab("Generate"):
            with gr.Row():
                with gr.Column():
                    description = gr.Textbox(DEFAULT_DESCRIPTION, label="Description", elem_id="description")
                    preset = gr.Radio(list(PRESETS), value=NO_EXPRESSION, label="Expression preset",
                                      info="fills the AU controls with its EMFACS prototype", elem_id="expression-preset")  # fmt: skip
                    generate_button = gr.Button("Generate 4 images", variant="primary", elem_id="generate-button")
                    with gr.Accordion("Action units", open=True):
                        controls = AUControls(demo)
                    with gr.Accordion("Sampling", open=True):
                        au_scale = gr.Slider(0, 2, value=1, step=0.05, label="au_scale (AU cross-attention weight)")
                        guidance = gr.Slider(
                            0, 20, value=0, step=0.5, label="semantic_guidance_scale",
                            info="needs a guide classifier" + ("" if demo.guide else ": this checkpoint has none"),
                        )  # fmt: skip
                        steps = gr.Slider(1, 100, value=num_inference_steps, step=1, precision=0, label="Steps")
                        cfg = gr.Slider(0, 15, value=3, step=0.5, label="CFG (guidance_scale)")
                        seed = gr.Number(0, precision=0, minimum=0, label="Seed (image i: seed + i)", elem_id="seed")
                with gr.Column():
                    gallery = gr.Gallery(label="Images (select one for its labels)", columns=4, height=200,
                                         format="png", elem_id="gallery")  # fmt: skip
                    prompt = gr.Textbox(label="Enriched prompt (what the text encoder read)", elem_id="prompt")
                    with gr.Row():
                        charts = [
                            gr.BarPlot(x="expression", y="probability", y_lim=[0, 1], sort=list(EXPRESSIONS),
                                       height=240, x_label_angle=45, label=f"{name} label probabilities",
                                       show_label=True, elem_id=f"labels-{name}", min_width=240)  # fmt: skip
                            for name in demo.labellers
                        ]
            generation = gr.State()
        with gr.Tab("AU sweep"):
            gr.Markdown("One AU from 0 to its maximum at the Generate tab's seed, description and other settings.")
            with gr.Row():
                sweep_au = gr.Dropdown([(au_label(n), n) for n in space.names], value=space.names[0], label="AU")
                frames = gr.Slider(2, 8, value=6, step=1, precision=0, label="Frames")
            sweep_button = gr.Button("Sweep", variant="primary", elem_id="sweep-button")
            strip = gr.Image(label="Sweep (left: 0)", format="png", height=200, elem_id="sweep-strip")
            sweep_values = gr.Textbox(label="AU values", elem_id="sweep-values")
        with gr.Tab("Edit"):
            with gr.Row():
                with gr.Column():
                    face = gr.Image(type="pil", label="Face", elem_id="edit-face")
                    source_expression = gr.Dropdown(
                        [(f"{NO_EXPRESSION}: estimated by the AU estimator", NO_EXPRESSION), *EXPRESSIONS]
                        if demo.pipe.au_estimator is not None else list(EXPRESSIONS),
                        value="neutral", label="Source expression (its prototype is the source's AUs)",
                    )  # fmt: skip
                    target = gr.Radio([*EXPRESSIONS, (TARGET_AU_CONTROLS, NO_EXPRESSION)], value="happy",
                                      label="Target")  # fmt: skip
                    edit_description = gr.Textbox("", label="Description of the face (optional)")
                    strength = gr.Slider(0.05, 1, value=0.8, step=0.05, label="edit_strength")
                    edit_steps = gr.Slider(1, 100, value=num_inference_steps, step=1, precision=0, label="Steps")
                    edit_cfg = gr.Slider(0, 15, value=1, step=0.5, label="CFG (guidance_scale)")
                    edit_seed = gr.Number(0, precision=0, minimum=0, label="Seed")
                    edit_button = gr.Button("Edit", variant="primary", elem_id="edit-button")
                with gr.Column():
                    edit_pair = gr.Gallery(label="Source | edit", columns=2, format="png", elem_id="edit-pair")
                    edit_prompt = gr.Textbox(label="Target prompt", elem_id="edit-prompt")

        def fill_preset(expression: str) -> list:
            action_units = demo.preset(expression)
            if action_units is None:
                return [gr.update() for _ in controls.components]
            return control_values(space, action_units)

        def show_generation(description_, expression, au_scale_, guidance_, steps_, cfg_, seed_, action_units,
                            progress: gr.Progress) -> tuple:  # fmt: skip
            out = demo.generate(description_, expression, action_units, au_scale_, guidance_, steps_, cfg_, seed_,
                                progress=progress)  # fmt: skip
            return out.gallery(), out.prompt_text(), out, *[out.label_frame(name) for name in demo.labellers]

        def select_image(out: Generation, event: gr.SelectData) -> list:
            return [out.label_frame(name, event.index) for name in demo.labellers]

        def show_sweep(description_, expression, au_name, num_frames, au_scale_, guidance_, steps_, cfg_, seed_,
                       action_units, progress: gr.Progress) -> tuple:  # fmt: skip
            image, values = demo.sweep(description_, expression, action_units, au_name, num_frames, au_scale_,
                                       guidance_, steps_, cfg_, seed_, progress=progress)  # fmt: skip
            return image, ", ".join(f"{value:g}" for value in values)

        def show_edit(image, source, target_, description_, strength_, steps_, cfg_, seed_, action_units,
                      progress: gr.Progress) -> tuple:  # fmt: skip
            out = demo.edit(image, source, target_, action_units, description_, strength_, steps_, cfg_, seed_,
                            progress=progress)  # fmt: skip
            return [(out.source, "source"), (out.edited, "edit")], out.prompt

        sampling = [au_scale, guidance, steps, cfg, seed]
        preset.change(fill_preset, preset, controls.components)
        generate_button.click(
            with_action_units(show_generation, controls, 2 + len(sampling)), [description, preset, *sampling,
            *controls.components], [gallery, prompt, generation, *charts], concurrency_id=MODEL_QUEUE,
        )  # fmt: skip
        gallery.select(select_image, generation, charts)
        sweep_button.click(
            with_action_units(show_sweep, controls, 4 + len(sampling)),
            [description, preset, sweep_au, frames, *sampling, *controls.components], [strip, sweep_values],
            concurrency_id=MODEL_QUEUE,
        )  # fmt: skip
        edit_button.click(
            with_action_units(show_edit, controls, 8),
            [face, source_expression, target, edit_description, strength, edit_steps, edit_cfg, edit_seed,
             *controls.components], [edit_pair, edit_prompt], concurrency_id=MODEL_QUEUE,
        )  # fmt: skip
    return app


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="SynFER demo (Gradio), offline on the embedded default by default.")
    parser.add_argument("--model", default=os.environ.get(MODEL_ENV),
                        help=f"SynFERPipeline folder or Hub repo id (default: ${MODEL_ENV}, else the embedded default)")  # fmt: skip
    parser.add_argument(
        "--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), help="address to serve on"
    )
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--steps", type=int, default=25, help="default number of denoising steps")
    return parser


def parse_args(argv: Sequence[str] | None = None, parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    """The flags; a port outside 1-65535 or fewer than 1 step ends the program (exit 2) naming the flag."""
    parser = parser or build_parser()
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error(f"argument --port: must be in 1-65535, got {args.port}")
    if args.steps < 1:
        parser.error(f"argument --steps: must be >= 1, got {args.steps}")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parse_args(argv, parser)
    try:
        demo = SynFERDemo.from_model(args.model)
    except (ValueError, OSError) as error:  # a folder that is no model, a Hub repo that cannot be read
        message = name_flags(" ".join(line.strip() for line in str(error).splitlines()), {"model": "--model"})
        parser.exit(2, f"{parser.prog}: error: {message}\n")
    app = build_app(demo, num_inference_steps=args.steps)
    app.queue(default_concurrency_limit=1).launch(
        server_name=args.host, server_port=args.port, share=False, ssr_mode=False, mcp_server=False
    )


if __name__ == "__main__":
    main()
