"""The demo's functions (what each button calls) on tiny components, its page, CLI, Space card and `make demo`."""

import re
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from transformers import ResNetConfig, ResNetForImageClassification, ViTImageProcessorPil

from synfer_diffusers import EXPRESSIONS, AUSpace, SynFERPipeline
from synfer_diffusers.models.feranno import FERAnnoHead
from synfer_diffusers.tiny import make_tiny_components
from synthetic_sets import assert_refused_in_one_line, folder_snapshot

gr = pytest.importorskip("gradio", reason="the demo extra (`pip install -e .[demo]`) is not installed")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "demo"))

import app  # noqa: E402
from synfer_demo import FERANNO, GUIDE, NO_EXPRESSION, SynFERDemo, action_units_from_controls, control_values  # noqa: E402

SMALL = {"num_inference_steps": 2, "guidance_scale": 3.0}


def tiny_guide(size: int = 16) -> tuple[ResNetForImageClassification, ViTImageProcessorPil]:
    torch.manual_seed(0)
    config = ResNetConfig(
        num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
        id2label=EXPRESSIONS.id2label, label2id=EXPRESSIONS.label2id,
    )  # fmt: skip
    processor = ViTImageProcessorPil(size={"height": size, "width": size}, image_mean=[0.5] * 3, image_std=[0.25] * 3)
    return ResNetForImageClassification(config).eval(), processor


@pytest.fixture(scope="module")
def demo():
    """Tiny components (16x16 images) with a FERAnno head and a guide classifier."""
    components = make_tiny_components(seed=0)
    guide, processor = tiny_guide()
    pipe = SynFERPipeline(
        **components, feranno_head=FERAnnoHead.from_unet(components["unet"]), guidance_classifier=guide,
        guidance_image_processor=processor,
    )  # fmt: skip
    return SynFERDemo(pipe, "tiny")


@pytest.fixture(scope="module")
def bare_demo():
    """Tiny components without labellers, on OpenGraphAU-41 occurrences."""
    return SynFERDemo(SynFERPipeline(**make_tiny_components(seed=0, au_space=AUSpace.opengraphau41())), "bare")


def _pixels(images):
    return np.stack([np.asarray(image) for image in images])


def test_preset_fills_the_emfacs_prototype(demo, bare_demo):
    happy = demo.preset("happy")
    assert {name for name, value in happy.items() if value} == {"AU6", "AU12"} and happy["AU12"] == 3.0
    assert set(happy) == set(demo.au_space.names)
    assert not any(demo.preset("neutral").values())
    assert demo.preset(NO_EXPRESSION) is None  # the AU controls stay as they are
    occurrence = bare_demo.preset("happy")
    assert occurrence["AU12"] == occurrence["AUL12"] == 1.0 and sum(occurrence.values()) == 6
    with pytest.raises(gr.Error, match="expression"):
        demo.preset("joy")


def test_controls_round_trip_sliders_and_checkboxes(demo, bare_demo):
    happy = demo.preset("happy")
    values = control_values(demo.au_space, happy)
    assert len(values) == 12 and values[demo.au_space.names.index("AU12")] == 3.0
    assert action_units_from_controls(demo.au_space, values) == happy
    checked = control_values(bare_demo.au_space, bare_demo.preset("happy"))
    assert checked == [["AU6", "AU12", "AUL6", "AUR6", "AUL12", "AUR12"]]
    assert action_units_from_controls(bare_demo.au_space, checked) == bare_demo.preset("happy")
    with pytest.raises(gr.Error, match="AU12"):
        action_units_from_controls(demo.au_space, [0.0] * 6 + [7.0] + [0.0] * 5)


def test_generate_gives_images_prompt_and_both_labellers(demo):
    progress = []
    out = demo.generate("a photo of a woman", "happy", demo.preset("happy"), seed=3, **SMALL,
                        progress=lambda done, desc: progress.append(done))  # fmt: skip
    assert len(out.images) == 4 and out.images[0].size == (16, 16)
    assert out.prompt_text() == "a photo of a woman, with a happy expression, cheek raiser and lip corner puller."
    assert set(out.probabilities) == {FERANNO, GUIDE}
    for probabilities in out.probabilities.values():
        assert probabilities.shape == (4, 7) and np.allclose(probabilities.sum(1), 1, atol=1e-5)
    frame = out.label_frame(GUIDE, 2)
    assert list(frame["expression"]) == list(EXPRESSIONS)
    assert np.allclose(frame["probability"], out.probabilities[GUIDE][2])
    assert [caption.split(" · ")[0] for _, caption in out.gallery()] == ["#1", "#2", "#3", "#4"]
    assert progress == [(0, 2), (1, 2), (2, 2)]
    again = demo.generate("a photo of a woman", "happy", demo.preset("happy"), seed=3, **SMALL)
    assert np.array_equal(_pixels(out.images), _pixels(again.images))
    alone = demo.generate("a photo of a woman", "happy", demo.preset("happy"), seed=4, num_images=1, **SMALL)
    assert np.abs(_pixels(alone.images)[0].astype(int) - _pixels(out.images)[1]).max() <= 1  # image i: seed + i


def test_moving_an_au_changes_the_images(demo):
    happy = demo.preset("happy")
    out = demo.generate("", "happy", happy, **SMALL)
    moved = demo.generate("", "happy", {**happy, "AU12": 5.0}, **SMALL)
    assert not np.array_equal(_pixels(out.images), _pixels(moved.images))
    assert out.prompt_text() == "a photo of a face, with a happy expression, cheek raiser and lip corner puller."


def test_no_expression_conditions_on_the_aus_alone(demo):
    out = demo.generate("a photo of a face", NO_EXPRESSION, {"AU26": 4.0}, num_images=1, **SMALL)
    assert out.prompts == ["a photo of a face, with a facial expression, jaw drop."]


@pytest.mark.parametrize(
    "change, match",
    [
        ({"semantic_guidance_scale": 3.0}, "guidance_classifier"),
        ({"action_units": {"AU12": 7.0}}, "AU12"),
        ({"action_units": {"AU99": 1.0}}, "AU99"),
        ({"au_scale": float("nan")}, "au_scale"),
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_bad_input_is_a_message_in_the_page(bare_demo, change, match):
    kwargs = {"description": "", "expression": "happy", "action_units": {}, **SMALL, **change}
    with pytest.raises(gr.Error, match=match):
        bare_demo.generate(**kwargs)


def test_sweep_moves_one_au_at_a_fixed_seed(demo):
    base = {**demo.preset("happy"), "AU26": 1.0}
    strip, values = demo.sweep("", "happy", base, "AU12", num_frames=3, seed=5, **SMALL)
    assert values == [0.0, 2.5, 5.0]
    assert strip.size == (3 * 16, 16)
    frames = [np.asarray(strip)[:, 16 * i : 16 * (i + 1)] for i in range(3)]
    assert not np.array_equal(frames[0], frames[2])
    alone = demo.generate("", "happy", {**base, "AU12": 2.5}, seed=5, num_images=1, **SMALL).images[0]
    assert np.abs(np.asarray(alone).astype(int) - frames[1]).max() <= 1  # every frame from the same seed
    with pytest.raises(gr.Error, match="au_name"):
        demo.sweep("", "happy", base, "AU99", **SMALL)
    with pytest.raises(gr.Error, match="num_frames"):
        demo.sweep("", "happy", base, "AU12", num_frames=1, **SMALL)


def test_edit_shows_the_source_beside_the_edit(demo, bare_demo):
    face = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8))
    out = demo.edit(face, "neutral", "surprise", {}, num_inference_steps=4)
    assert out.source.size == out.edited.size == (16, 16)
    assert "surprised expression" in out.prompt
    by_aus = demo.edit(face, "neutral", NO_EXPRESSION, {"AU12": 4.0, "AU6": 2.0}, num_inference_steps=4)
    assert "lip corner puller" in by_aus.prompt
    assert not np.array_equal(np.asarray(out.edited), np.asarray(by_aus.edited))
    with pytest.raises(gr.Error, match="image"):
        demo.edit(None, "neutral", "happy", {})
    with pytest.raises(gr.Error, match="au_estimator"):  # the source's AUs cannot be estimated: no estimator
        demo.edit(face, NO_EXPRESSION, "happy", {}, num_inference_steps=4)
    with pytest.raises(gr.Error, match="edit_strength"):
        demo.edit(face, "neutral", "happy", {}, edit_strength=0.0)


def _components(blocks, kind):
    return [block for block in blocks.blocks.values() if isinstance(block, kind)]


def test_page_has_a_control_per_au_and_a_chart_per_labeller(demo, bare_demo):
    page = app.build_app(demo)
    sliders = {s.elem_id: s for s in _components(page, gr.Slider) if (s.elem_id or "").startswith("au-")}
    assert list(sliders) == [f"au-{name}" for name in demo.au_space.names]
    assert sliders["au-AU12"].label == "AU12 lip corner puller" and sliders["au-AU12"].maximum == 5
    assert [p.elem_id for p in _components(page, gr.BarPlot)] == [f"labels-{FERANNO}", f"labels-{GUIDE}"]
    bare = app.build_app(bare_demo)
    (checkboxes,) = [c for c in _components(bare, gr.CheckboxGroup) if c.elem_id == "au-present"]
    assert len(checkboxes.choices) == 41 and ("AUL12 left lip corner puller", "AUL12") in checkboxes.choices
    assert not [s for s in _components(bare, gr.Slider) if (s.elem_id or "").startswith("au-")]
    assert not _components(bare, gr.BarPlot)


def test_generate_handler_passes_the_controls_as_one_au_dict(demo):
    seen = []
    controls = type("Controls", (), {"values": lambda self, values: action_units_from_controls(demo.au_space, values)})
    handler = app.with_action_units(lambda *args, progress: seen.append((args, progress)), controls(), 2)
    tracker = object()
    handler(tracker, "text", "happy", *control_values(demo.au_space, demo.preset("happy")))
    assert seen == [(("text", "happy", demo.preset("happy")), tracker)]


def test_model_comes_from_the_flag_or_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("SYNFER_DEMO_MODEL", raising=False)
    assert app.parse_args([]).model is None  # the embedded default
    monkeypatch.setenv("SYNFER_DEMO_MODEL", "user/synfer-faceworld")
    assert app.parse_args([]).model == "user/synfer-faceworld"
    assert app.parse_args(["--model", str(tmp_path)]).model == str(tmp_path)
    with pytest.raises(ValueError, match="model_index.json"):
        SynFERDemo.from_model(str(tmp_path))


BAD_FLAGS = {
    "steps": (["--steps", "0"], "argument --steps: must be >= 1"),
    "port-range": (["--port", "70000"], "argument --port: must be in 1-65535"),
    "port-type": (["--port", "http"], "argument --port: invalid int value"),
    "model": (["--model", "{tmp}/not_a_model"], "`--model` '{tmp}/not_a_model' is not a SynFERPipeline folder"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_FLAGS))
def test_bad_flags_end_the_app_in_one_line_naming_the_flag(case, tmp_path, monkeypatch, capsys):
    """`python demo/app.py` with a bad flag: exit 2, one error line naming the flag, nothing served, the model
    folder as it was."""
    monkeypatch.setattr(gr.Blocks, "launch", lambda *a, **k: pytest.fail("the app was served"))
    (tmp_path / "not_a_model").mkdir()
    (tmp_path / "not_a_model" / "notes.txt").write_text("mine")
    before = folder_snapshot(tmp_path)
    flags, message = BAD_FLAGS[case]
    argv = [flag.format(tmp=tmp_path) for flag in flags]
    assert_refused_in_one_line(app.main, argv, message.format(tmp=tmp_path), capsys)
    assert folder_snapshot(tmp_path) == before


def test_space_card_names_the_app_and_the_pinned_gradio():
    from huggingface_hub import SpaceCard

    card = SpaceCard.load(ROOT / "demo" / "README.md")
    assert card.data.sdk == "gradio" and (ROOT / "demo" / card.data.app_file).is_file()
    pins = dict(re.findall(r"^([\w-]+)==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M))
    assert card.data.sdk_version == pins["gradio"] == gr.__version__
    assert card.data.models

