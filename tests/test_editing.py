"""Expression editing (`SynFERPipeline.edit`): DDIM inversion under the source's condition, denoising under the
target's, on tiny components built in code."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from transformers import ResNetConfig, ResNetForImageClassification, ViTImageProcessorPil

from synfer_diffusers import EXPRESSIONS, AUSpace, SynFEREditOutput, SynFERPipeline
from synfer_diffusers.pipelines.synfer.editing import DEFAULT_EDIT_SEMANTIC_GUIDANCE_SCALE

SOURCE_AUS = {"AU6": 3.0, "AU12": 3.0}  # the happy prototype at intensity 3 (DISFA-12)
STEPS = 20


def make_au_regressor(seed=0, size=16):
    """A tiny random AU regressor with the layout `examples/train_fer_classifier.py --task action_units` saves."""
    names = list(AUSpace.disfa12().names)
    torch.manual_seed(seed)
    config = ResNetConfig(
        num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
        num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
        problem_type="regression",
    )  # fmt: skip
    config.au_names = names
    processor = ViTImageProcessorPil(size={"height": size, "width": size}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return ResNetForImageClassification(config).eval(), processor


@pytest.fixture()
def pipe(tiny_components):
    pipe = SynFERPipeline(**tiny_components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _faces(num=2) -> torch.Tensor:  # (num, 3, 16, 16) in [0, 1]
    return torch.from_numpy(np.random.default_rng(0).random((num, 3, 16, 16), dtype=np.float32))


def _edit(pipe, image, **kwargs):
    defaults = {"source_action_units": SOURCE_AUS, "num_inference_steps": STEPS, "output_type": "latent",
                "generator": torch.Generator().manual_seed(0)}  # fmt: skip
    return pipe.edit(image, **{**defaults, **kwargs})


@pytest.mark.parametrize("inversion_condition", ["source", "null"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_same_expression_small_strength_returns_nearly_the_source(pipe, prediction_type, inversion_condition):
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, prediction_type=prediction_type)
    face, other_face = _faces(2)[:1], _faces(2)[1:]
    source_latents = pipe.encode_image_latents(face * 2 - 1)
    errors = {
        strength: (_edit(pipe, face, target_expression="happy", au_jitter=0.0, edit_strength=strength, guidance_scale=1.0,
                         inversion_condition=inversion_condition).images - source_latents).abs().mean().item()
        for strength in (0.05, 1.0)
    }  # fmt: skip
    other = (pipe.encode_image_latents(other_face * 2 - 1) - source_latents).abs().mean().item()
    # one inverted and one denoised step vs a regeneration from noise level; another face is much further away
    assert errors[0.05] < 0.1 * errors[1.0], errors
    assert errors[0.05] < 0.25 * other, (errors, other)


def test_null_inversion_inverts_under_another_condition(pipe):
    face = _faces(1)
    edits = {condition: _edit(pipe, face, target_expression="sad", edit_strength=0.5, inversion_condition=condition)
             for condition in ("source", "null")}  # fmt: skip
    assert (edits["source"].images - edits["null"].images).abs().max() > 1e-3
    assert edits["source"].prompts == edits["null"].prompts  # the target condition is the same


def test_output_reports_source_and_target_conditions(pipe):
    out = _edit(pipe, _faces(1), target_expression="surprise", edit_strength=0.5, output_type="np")
    assert isinstance(out, SynFEREditOutput)
    assert out.images.shape == (1, 16, 16, 3)
    assert out.expressions == ["surprise"]
    assert out.source_action_units[0]["AU12"] == 3.0
    assert out.action_units[0]["AU26"] > 0 and out.action_units[0]["AU12"] == 0  # surprise prototype + jitter
    assert "surprised" in out.prompts[0] and "lip corner puller" in out.source_prompts[0]


def test_action_unit_delta_moves_from_the_source(pipe):
    out = _edit(pipe, _faces(1), target_action_unit_delta={"AU12": -2.0, "AU26": 4.0}, edit_strength=0.5)
    assert out.expressions == [None]
    target = out.action_units[0]
    assert target["AU12"] == 1.0 and target["AU26"] == 4.0 and target["AU6"] == 3.0 and target["AU4"] == 0.0


def test_batch_equals_single_with_per_image_generators(pipe):
    faces = _faces(2)
    expressions = ["surprise", "anger"]
    batch = _edit(pipe, list(faces), target_expression=expressions, edit_strength=0.6, output_type="np",
                  generator=[torch.Generator().manual_seed(s) for s in (3, 4)])  # fmt: skip
    for i, seed in enumerate((3, 4)):
        single = _edit(pipe, faces[i], target_expression=expressions[i], edit_strength=0.6, output_type="np",
                       generator=[torch.Generator().manual_seed(seed)])  # fmt: skip
        assert single.action_units[0] == batch.action_units[i] and single.prompts[0] == batch.prompts[i]
        assert np.abs(single.images[0] - batch.images[i]).max() < 1e-3  # float32 batch effects, amplified by inversion
    assert batch.seeds == [3, 4]
    assert not np.allclose(batch.images[0], batch.images[1])


def test_au_estimator_fills_source_action_units(tiny_components):
    regressor, processor = make_au_regressor()
    pipe = SynFERPipeline(**tiny_components, au_estimator=regressor, au_estimator_image_processor=processor)
    pipe.set_progress_bar_config(disable=True)
    face = _faces(1)
    out = _edit(pipe, face, target_expression="happy", source_action_units=None, edit_strength=0.3)
    with torch.no_grad():
        expected = regressor(pixel_values=processor(pipe.image_processor.postprocess(face * 2 - 1), return_tensors="pt")
                             .pixel_values).logits.clamp(0, 5)[0]  # fmt: skip
    got = torch.tensor(list(out.source_action_units[0].values()))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    given = _edit(pipe, face, target_expression="happy", source_action_units=out.source_action_units[0],
                  edit_strength=0.3)  # fmt: skip
    torch.testing.assert_close(given.images, out.images)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "Give a target: `target_expression`"),
        ({"target_expression": "happy", "target_action_units": {"AU4": 3.0}}, "`target_expression` 'happy' contradicts `target_action_units`"),
        ({"target_expression": "neutral", "target_action_units": {"AU4": 3.0}}, "'neutral' contradicts"),
        ({"target_action_units": {"AU4": 3.0}, "target_action_unit_delta": {"AU4": 1.0}}, "pass one of them"),
        ({"target_expression": "happy", "edit_strength": 0.0}, r"`edit_strength` must be a number in \(0, 1\]"),
        ({"target_expression": "happy", "edit_strength": 1.5}, r"`edit_strength` must be a number in \(0, 1\]"),
        ({"target_expression": "happy", "edit_strength": 0.01}, "runs no step"),
        ({"target_expression": "joy"}, "target_expression"),
        ({"target_expression": "happy", "source_action_units": {"AU99": 1.0}}, "source_action_units"),
        ({"target_action_unit_delta": {"AU12": 9.0}}, "`target_action_unit_delta` values"),
        ({"target_expression": ["happy", "sad", "anger"]}, "Batch sizes of the inputs do not match"),
        ({"target_expression": "happy", "height": 32}, r"`image\[0\]` is \(16, 16\), expected \(32, 16\)"),
        ({"target_expression": "happy", "source_action_units": None}, "`source_action_units=None` .* no `au_estimator` component"),
        ({"target_expression": "happy", "output_type": "jpg"}, "`output_type`"),
        ({"target_expression": "happy", "inversion_condition": "target"}, "`inversion_condition` must be one of"),
        ({"target_expression": "happy", "semantic_guidance_scale": 1.0}, "needs a `guidance_classifier`"),
        ({"target_expression": "happy", "semantic_guidance_scale": -1.0}, "`semantic_guidance_scale` must be"),
    ],
)  # fmt: skip
def test_bad_inputs_are_clear_errors(pipe, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        _edit(pipe, list(_faces(2)), **kwargs)


def guided_pipeline(components) -> SynFERPipeline:
    """A pipeline of `components` with a tiny random expression classifier as its semantic-guidance guide."""
    torch.manual_seed(1)
    config = ResNetConfig(
        num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
        id2label=dict(enumerate(EXPRESSIONS)), label2id={name: i for i, name in enumerate(EXPRESSIONS)},
    )  # fmt: skip
    guide, processor = ResNetForImageClassification(config).eval(), make_au_regressor()[1]
    pipe = SynFERPipeline(**components, guidance_classifier=guide, guidance_image_processor=processor)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _guided_edit(pipe, face, **kwargs) -> tuple[torch.Tensor, list[float]]:
    """An edit's latents and the guide's cross-entropy toward the target on `x0_hat` at each of its guided steps
    (what SG lowers)."""
    recorded, original = [], pipe.guidance_loss

    def record(images, guide):
        loss = original(images, guide)
        recorded.append(loss.item())
        return loss

    pipe.guidance_loss = record
    try:
        return _edit(pipe, face, **kwargs).images, recorded
    finally:
        del pipe.guidance_loss


def test_semantic_guidance_steers_expression_targets_only(tiny_components):
    """Guidance toward the target expression steers the edit toward it: the guide's cross-entropy toward the target
    on x0_hat over the guided steps is lower than on the same schedule unguided (scale 1e-12); the edit is
    deterministic. An AU target without an expression has nothing to be guided toward and is edited as without
    guidance."""
    pipe = guided_pipeline(tiny_components)
    face = _faces(1)
    plain, unsteered = _guided_edit(pipe, face, target_expression="surprise", semantic_guidance_scale=1e-12)
    guided, steered = _guided_edit(pipe, face, target_expression="surprise", semantic_guidance_scale=2.0)
    again = _edit(pipe, face, target_expression="surprise", semantic_guidance_scale=2.0).images
    assert (guided - plain).abs().max() > 1e-3 and torch.allclose(guided, again, atol=1e-5)
    assert len(steered) == len(unsteered) > 0 and np.mean(steered) < np.mean(unsteered)
    by_aus = {"target_action_units": {"AU4": 3.0}}
    unguided = _edit(pipe, face, **by_aus).images
    torch.testing.assert_close(_edit(pipe, face, semantic_guidance_scale=2.0, **by_aus).images, unguided)


def test_edits_guide_by_default_where_the_pipeline_has_a_guide(tiny_components, pipe):
    """`semantic_guidance_scale=None` (the default) is DEFAULT_EDIT_SEMANTIC_GUIDANCE_SCALE with a guide and no
    guidance without one (the edit runs instead of asking for a guide)."""
    guided, face = guided_pipeline(tiny_components), _faces(1)
    scale = DEFAULT_EDIT_SEMANTIC_GUIDANCE_SCALE
    default = _edit(guided, face, target_expression="surprise").images
    explicit = _edit(guided, face, target_expression="surprise", semantic_guidance_scale=scale).images
    unguided = _edit(guided, face, target_expression="surprise", semantic_guidance_scale=0.0).images
    assert scale > 0 and torch.equal(default, explicit)
    assert (default - unguided).abs().max() > 1e-3
    without_guide = _edit(pipe, face, target_expression="surprise", semantic_guidance_scale=0.0).images
    torch.testing.assert_close(_edit(pipe, face, target_expression="surprise").images, without_guide)


def test_wrong_image_size_is_an_error(pipe):
    with pytest.raises(ValueError, match=r"`image\[1\]` is \(24, 24\), expected \(16, 16\)"):
        _edit(pipe, [_faces(1)[0], torch.rand(3, 24, 24)], target_expression="happy")


def test_au_estimator_round_trips_through_save_pretrained(tiny_components, tmp_path):
    regressor, processor = make_au_regressor()
    pipe = SynFERPipeline(**tiny_components, au_estimator=regressor, au_estimator_image_processor=processor)
    pipe.save_pretrained(tmp_path / "pipe")
    reloaded = SynFERPipeline.from_pretrained(tmp_path / "pipe")
    faces = pipe.image_processor.preprocess(_faces(2))
    torch.testing.assert_close(
        reloaded.estimate_source_action_units(faces), pipe.estimate_source_action_units(faces)
    )
    assert SynFERPipeline.from_pretrained(tmp_path / "pipe", au_estimator=None).au_estimator is None


def test_faceworld_editing_benchmark_runs_at_a_tiny_size(tmp_path, monkeypatch):
    import importlib.util
    import sys
    from pathlib import Path

    from synfer_diffusers.data.faceworld import write_faceworld_splits

    benchmarks = Path(__file__).resolve().parents[1] / "benchmarks"
    monkeypatch.syspath_prepend(str(benchmarks))  # its sibling modules (the judge features, the identity classifier)
    spec = importlib.util.spec_from_file_location("eval_faceworld_editing", benchmarks / "eval_faceworld_editing.py")
    benchmark = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, benchmark)  # its dataclass looks its module up while the file executes
    spec.loader.exec_module(benchmark)
    write_faceworld_splits(tmp_path / "faceworld", num_train=32, num_test=8, seed=0, show_progress=False)
    rows = benchmark.main([
        "--num-faces", "1", "--steps", "2", "--strengths", "0.5", "--guidance-scales", "1", "--inversions", "source",
        "null", "--identity-classifier", str(tmp_path / "identity"), "--faceworld", str(tmp_path / "faceworld"),
        "--identity-steps", "2", "--json", str(tmp_path / "editing.json"),
    ])  # fmt: skip
    assert [row["name"] for row in rows] == [
        "source, unedited (reference)", "ground-truth render (reference)", "another face (reference)",
        "plain generation, cfg 1", "layout init (baseline), cfg 1", "edit, strength 0.5, cfg 1",
        "edit, strength 0.5, cfg 1, null inversion",
    ]  # fmt: skip
    source, truth = rows[0], rows[1]
    assert source["error_to_source"] == 0 and source["error_to_ground_truth"] > 0 and truth["error_to_ground_truth"] == 0
    assert source["identity_cosine"] == pytest.approx(1.0)  # the source is its own person
    assert all(row["num_images"] == 7 and 0 <= row["identity_attribute_accuracy"] <= 1 for row in rows)
    assert rows[5]["error_to_source"] != rows[6]["error_to_source"]  # the two inversions differ
    assert (tmp_path / "editing.json").is_file() and (tmp_path / "identity" / "model.safetensors").is_file()
