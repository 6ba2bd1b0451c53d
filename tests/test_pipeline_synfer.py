import json
import math

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler

from synfer_diffusers import AUSpace, SynFERPipeline, SynFERPipelineOutput
from synfer_diffusers.tiny import make_tiny_base_unet

PROMPT = "a photo of an elderly man with glasses"
HAPPY_AUS = {"AU6": 2.5, "AU12": 4.0}


@pytest.fixture()
def pipe(tiny_components):
    pipe = SynFERPipeline(**tiny_components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run(pipe, seed=0, **kwargs):
    kwargs.setdefault("prompt", PROMPT)
    kwargs.setdefault("num_inference_steps", 3)
    kwargs.setdefault("output_type", "np")
    return pipe(generator=torch.Generator().manual_seed(seed), **kwargs)


def test_issue_example_runs(pipe):
    out = pipe(
        prompt=PROMPT, expression="happy", action_units=HAPPY_AUS, au_scale=1.0, num_images_per_prompt=4,
        num_inference_steps=2, generator=[torch.Generator().manual_seed(s) for s in range(4)],
    )  # fmt: skip
    assert isinstance(out, SynFERPipelineOutput) and len(out.images) == 4
    assert all(isinstance(image, PIL.Image.Image) for image in out.images)
    assert out.expressions == ["happy"] * 4 and out.action_units[0]["AU12"] == 4.0
    assert "happy" in out.prompts[0] and "lip corner puller" in out.prompts[0] and len(set(out.seeds)) == 4


def test_same_seed_same_output_and_different_seed_differs(pipe):
    a, b, c = _run(pipe, 0).images, _run(pipe, 0).images, _run(pipe, 1).images
    assert np.array_equal(a, b) and not np.allclose(a, c)


def test_batch_equals_single_calls(pipe):
    generators = [torch.Generator().manual_seed(s) for s in (3, 4, 5)]
    expressions = ["happy", "sad", "anger"]
    batch = pipe(prompt=[PROMPT] * 3, expression=expressions, num_inference_steps=3, output_type="np",
                 generator=generators)  # fmt: skip
    for i, (expression, seed) in enumerate(zip(expressions, (3, 4, 5))):
        single = pipe(prompt=PROMPT, expression=expression, num_inference_steps=3, output_type="np",
                      generator=[torch.Generator().manual_seed(seed)])  # fmt: skip
        assert np.abs(single.images[0] - batch.images[i]).max() < 1e-4
        assert single.action_units[0] == batch.action_units[i] and single.prompts[0] == batch.prompts[i]


def test_reported_seed_reproduces_an_image_alone(pipe):
    generators = [torch.Generator().manual_seed(s) for s in (7, 8, 9)]
    out = pipe(prompt=PROMPT, expression="fear", num_images_per_prompt=3, num_inference_steps=3, output_type="np",
               generator=generators)  # fmt: skip
    assert out.seeds == [7, 8, 9]
    again = pipe(prompt=PROMPT, expression="fear", num_inference_steps=3, output_type="np",
                 generator=[torch.Generator().manual_seed(out.seeds[2])])  # fmt: skip
    assert np.abs(again.images[0] - out.images[2]).max() < 1e-4


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_one_generator_equals_a_list_of_it_and_draws_the_batch_as_stock_pipelines(pipe, eta):
    """diffusers' convention: `generator=G` and `generator=[G]` give the same image; one generator draws the whole
    batch's noise (then the AU jitter of each image in turn) and reports no per-image seeds."""
    single = _run(pipe, 3, expression="fear", eta=eta)
    listed = pipe(prompt=PROMPT, expression="fear", num_inference_steps=3, output_type="np", eta=eta,
                  generator=[torch.Generator().manual_seed(3)])  # fmt: skip
    assert np.array_equal(single.images, listed.images) and single.action_units == listed.action_units
    assert single.seeds is None and listed.seeds == [3]
    batch = _run(pipe, 3, expression="fear", num_images_per_prompt=2, eta=eta)
    assert batch.seeds is None and not np.allclose(batch.images[0], batch.images[1])


def test_list_of_generators_gives_per_image_step_noise(pipe):
    """With eta > 0 the scheduler's step noise of image `i` comes from generator `i`: image 2 alone equals image 2 of
    a batch."""
    kwargs = {"prompt": PROMPT, "expression": "sad", "num_inference_steps": 3, "output_type": "np", "eta": 1.0}
    batch = pipe(**kwargs, num_images_per_prompt=3, generator=[torch.Generator().manual_seed(s) for s in (0, 1, 2)])
    alone = pipe(**kwargs, generator=[torch.Generator().manual_seed(2)])
    assert np.abs(alone.images[0] - batch.images[2]).max() < 1e-4


def test_save_load_round_trip_is_identical_and_writes_card(pipe, tmp_path):
    expected = _run(pipe, 0, expression="happy", action_units=HAPPY_AUS).images
    pipe.save_pretrained(tmp_path, model_card={"training": "tiny test model", "datasets": ["faceworld"]})
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["unet"] == ["unet_au", "AUConditionedUNet2DConditionModel"]
    assert not list(tmp_path.rglob("*.bin")) and list(tmp_path.rglob("*.safetensors"))
    card = (tmp_path / "README.md").read_text()
    assert "library_name: diffusers" in card and "lip corner puller" in card and "tiny test model" in card
    loaded = SynFERPipeline.from_pretrained(tmp_path, au_space=AUSpace.disfa12())
    loaded.set_progress_bar_config(disable=True)
    assert np.array_equal(_run(loaded, 0, expression="happy", action_units=HAPPY_AUS).images, expected)


def test_checkpoint_with_other_au_space_is_refused(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="au_space"):
        SynFERPipeline.from_pretrained(tmp_path, au_space=AUSpace.opengraphau41())


def test_num_images_per_prompt_and_prompt_lists(pipe):
    out = _run(pipe, prompt=["a young woman", "an old man"], expression=["happy", None], num_images_per_prompt=2)
    assert out.images.shape == (4, 16, 16, 3)
    assert out.expressions == ["happy", "happy", None, None]
    assert out.action_units[2] is None and out.prompts[2] == "an old man"


def test_expression_only_uses_jittered_prototypes(pipe):
    out = _run(pipe, expression="surprise", num_images_per_prompt=3)
    active = {"AU1", "AU2", "AU5", "AU26"}
    for aus in out.action_units:
        assert {k for k, v in aus.items() if v > 0} == active
    assert out.action_units[0] != out.action_units[1]
    assert _run(pipe, expression="surprise", num_images_per_prompt=3).action_units == out.action_units
    fixed = _run(pipe, expression="surprise", au_jitter=0.0, num_images_per_prompt=2).action_units
    assert fixed[0] == fixed[1] and fixed[0]["AU26"] == 3.0


def test_aus_only_have_no_expression(pipe):
    out = _run(pipe, prompt=None, action_units=torch.tensor([[0.0] * 11 + [5.0]]))
    assert out.expressions == [None] and out.action_units[0]["AU26"] == 5.0 and out.prompts[0].startswith("a photo")


def test_negative_prompt_changes_output(pipe):
    base = _run(pipe, expression="sad").images
    negative = _run(pipe, expression="sad", negative_prompt="blurry, smiling").images
    assert not np.allclose(base, negative)
    with pytest.raises(ValueError, match="Batch sizes"):
        _run(pipe, prompt=["a", "b"], negative_prompt=["x", "y", "z"])


def test_callback_sees_every_step_and_can_edit_latents(pipe):
    seen = []

    def zero_latents(p, step, timestep, tensors):
        seen.append((step, sorted(tensors)))
        return {"latents": torch.zeros_like(tensors["latents"])}

    out = _run(pipe, callback_on_step_end=zero_latents, callback_on_step_end_tensor_inputs=["latents", "au_embeds"],
               output_type="latent")  # fmt: skip
    assert [s for s, _ in seen] == [0, 1, 2] and seen[0][1] == ["au_embeds", "latents"]
    assert torch.count_nonzero(out.images) == 0
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs"):
        _run(pipe, callback_on_step_end=zero_latents, callback_on_step_end_tensor_inputs=["noise"])


def test_output_types_and_tuple(pipe):
    as_np = _run(pipe, output_type="np").images
    as_pt = _run(pipe, output_type="pt").images
    as_pil = _run(pipe, output_type="pil").images
    latent = _run(pipe, output_type="latent").images
    assert as_np.shape == (1, 16, 16, 3) and as_pt.shape == (1, 3, 16, 16) and latent.shape == (1, 4, 8, 8)
    assert np.allclose(as_pt.permute(0, 2, 3, 1).numpy(), as_np) and as_pil[0].size == (16, 16)
    images, expressions, action_units, prompts, seeds, labels = _run(pipe, return_dict=False, expression="anger")
    assert np.array_equal(images, _run(pipe, expression="anger").images) and expressions == ["anger"]
    assert len(action_units) == len(prompts) == 1 and seeds is None and labels is None


def test_au_scale_zero_equals_plain_unet_pipeline(pipe, tiny_components):
    base_pipe = SynFERPipeline(**{**tiny_components, "unet": make_tiny_base_unet(seed=0)})
    base_pipe.set_progress_bar_config(disable=True)
    with_au0 = _run(pipe, expression="happy", au_scale=0.0, enrich_prompt=False).images
    assert np.array_equal(with_au0, _run(base_pipe, expression="happy", enrich_prompt=False).images)
    assert not np.allclose(_run(pipe, expression="happy", enrich_prompt=False).images, with_au0)
    assert not np.allclose(_run(pipe, action_units=HAPPY_AUS).images, _run(pipe, action_units={"AU26": 5}).images)


def test_dpm_solver_scheduler(pipe):
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    out = _run(pipe, expression="happy", num_inference_steps=4)
    assert np.isfinite(out.images).all() and np.array_equal(
        out.images, _run(pipe, expression="happy", num_inference_steps=4).images
    )


def test_load_lora_weights(pipe, tmp_path):
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    before = _run(pipe, expression="happy").images
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                     init_lora_weights=False))  # fmt: skip
    lora_state = get_peft_model_state_dict(pipe.unet)
    with_lora = _run(pipe, expression="happy").images
    SynFERPipeline.save_lora_weights(tmp_path, unet_lora_layers=lora_state)
    pipe.unet.delete_adapters("default")
    assert np.allclose(_run(pipe, expression="happy").images, before, atol=1e-6)
    pipe.load_lora_weights(tmp_path)
    assert not np.allclose(before, with_lora, atol=1e-3)
    assert np.allclose(_run(pipe, expression="happy").images, with_lora, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"expression": "contempt"}, ValueError, "expression"),
        ({"expression": ["happy", "smug"], "prompt": ["a", "b"]}, ValueError, r"expression\[1\]"),
        ({"action_units": {"AU7": 1.0}}, ValueError, "AU7"),
        ({"action_units": {"AU12": math.nan}}, ValueError, "AU12"),
        ({"action_units": {"AU12": math.inf}}, ValueError, "AU12"),
        ({"action_units": {"AU12": 7.0}}, ValueError, r"\[0, 5\]"),
        ({"action_units": torch.zeros(1, 5)}, ValueError, r"\(batch, 12\)"),
        ({"prompt": ["a", "b"], "expression": ["happy", "sad", "fear"]}, ValueError, "Batch sizes"),
        ({"prompt": ["a", "b"], "action_units": torch.zeros(3, 12)}, ValueError, "Batch sizes"),
        ({"num_images_per_prompt": 0}, ValueError, "num_images_per_prompt"),
        ({"num_inference_steps": 0}, ValueError, "num_inference_steps"),  # was a ZeroDivisionError in the scheduler
        ({"height": 15}, ValueError, "divisible by 2"),
        ({"au_scale": math.nan}, ValueError, "au_scale"),
        ({"au_scale": math.inf}, ValueError, "au_scale"),
        ({"output_type": "jpeg"}, ValueError, "output_type"),
        ({"prompt": None}, ValueError, "at least one"),
        ({"action_units": "AU12"}, TypeError, "action_units"),
    ],
)
def test_bad_input_gets_a_clear_error(pipe, kwargs, error, match):
    with pytest.raises(error, match=match):
        _run(pipe, **kwargs)


def test_plain_unet_refuses_action_units(tiny_components):
    pipe = SynFERPipeline(**{**tiny_components, "unet": make_tiny_base_unet(seed=0)})
    with pytest.raises(ValueError, match="no AU adapter"):
        _run(pipe, action_units=HAPPY_AUS)
    out = _run(pipe, expression="happy")
    assert out.action_units == [None] and "happy" in out.prompts[0]


def test_au_jitter_is_drawn_on_the_generators_own_device(monkeypatch):
    """A CUDA generator (the usual diffusers idiom on a GPU) must draw the AU jitter on its device: torch refuses a
    CUDA generator for CPU noise. No GPU here: a stand-in generator whose `device` is CUDA, and a stand-in `torch.randn`
    recording the device it is asked for."""
    from diffusers.utils import torch_utils

    from synfer_diffusers.pipelines.synfer.conditions import sample_prototype_action_units

    class CudaGenerator:
        device = torch.device("cuda")

    class OnDevice:  # what torch.randn would return on the generator's device: moved to the CPU by the pipeline
        def __init__(self, shape):
            self.shape = shape

        def to(self, device):
            return self

        def cpu(self):
            return torch.zeros(self.shape)

    asked = []

    def randn(shape, generator=None, device=None, dtype=None, layout=None):
        asked.append((generator, torch.device(device)))
        return OnDevice(shape)

    monkeypatch.setattr(torch_utils.torch, "randn", randn)
    generator = CudaGenerator()
    prototype = sample_prototype_action_units(AUSpace.disfa12(), "happy", generator, None, 0.5)
    assert asked == [(generator, torch.device("cuda"))] and prototype.device.type == "cpu"
    assert prototype[AUSpace.disfa12().index("AU12")] == 3.0
