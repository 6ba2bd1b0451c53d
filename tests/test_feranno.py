"""FERAnno: the hook-based UNet feature reader, FERAnnoHead, FERAnnoPipeline and examples/train_feranno.py, on tiny
components built in code."""

import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    UNet2DConditionModel,
    UniPCMultistepScheduler,
)

import synfer_diffusers.pipelines.hub_mixin as hub_mixin
import synfer_diffusers.pipelines.synfer.pipeline_feranno as pipeline_feranno
from synfer_diffusers import SynFERPipeline
from synfer_diffusers.facs import EXPRESSIONS
from synfer_diffusers.models.feature_extraction import UNetFeatureRecorder, decoder_layout
from synfer_diffusers.models.feranno import FERAnnoHead
from synfer_diffusers.pipelines.synfer.pipeline_feranno import FERAnnoPipeline, FERAnnoPipelineOutput

HEAD_OPTIONS = {"hidden_dim": 32, "num_heads": 4, "tokens_per_side": 4}
TRAIN_SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "train_feranno.py"


@pytest.fixture()
def head(tiny_components):
    torch.manual_seed(0)
    return FERAnnoHead.from_unet(tiny_components["unet"], **HEAD_OPTIONS)


@pytest.fixture()
def pipe(tiny_components, head):
    pipe = FERAnnoPipeline(**tiny_components, head=head)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _faces(n, size=16, mode="RGB"):
    rng = np.random.default_rng(0)
    return [PIL.Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).convert(mode) for _ in range(n)]


def _unet_inputs(batch):
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch, 4, 8, 8, generator=generator), torch.randn(batch, 77, 32, generator=generator)


# ----- UNetFeatureRecorder ------------------------------------------------------------------------------------


def test_recorder_reads_decoder_and_attention_maps_without_changing_the_unet(tiny_components):
    unet = tiny_components["unet"]
    latents, text = _unet_inputs(2)
    with torch.no_grad():
        expected = unet(latents, 1, encoder_hidden_states=text).sample
        with UNetFeatureRecorder(unet) as recorder:
            sample = unet(latents, 1, encoder_hidden_states=text).sample
            features = recorder.features()
    assert torch.equal(sample, expected)
    layout = decoder_layout(unet)
    assert layout.feature_channels == (64, 32) and layout.num_attention_maps == 1
    assert [tuple(x.shape) for x in features.decoder] == [(2, 64, 8, 8), (2, 32, 8, 8)]
    (attention,) = features.cross_attention
    assert attention.shape == (2, 77, 4, 4)  # attn2 of the first up block runs before its upsampler
    assert torch.allclose(attention.sum(1), torch.ones(2, 4, 4), atol=1e-5)  # probabilities over text tokens
    assert not unet._forward_pre_hooks and not any(b._forward_hooks for b in unet.up_blocks)


def test_recorder_keeps_the_latest_forward_and_selects_rows(tiny_components):
    unet = tiny_components["unet"]
    with torch.no_grad(), UNetFeatureRecorder(unet) as recorder:
        with pytest.raises(RuntimeError, match="No UNet forward"):
            recorder.features()
        unet(*_unet_inputs(4)[:1], 500, encoder_hidden_states=_unet_inputs(4)[1])
        unet(_unet_inputs(2)[0], 1, encoder_hidden_states=_unet_inputs(2)[1])
        features = recorder.features()
    assert features.batch_size == 2
    second = features.select(slice(1, None))
    assert second.batch_size == 1 and torch.equal(second.decoder[0][0], features.decoder[0][1])


def test_in_loop_labels_come_from_the_final_step_and_do_not_change_images(tiny_components, head):
    """SynFERPipeline with a `feranno_head` labels from the unconditional half of the last CFG batch (t = 1:
    empty prompt + null AU, as the head was trained), which is what recording the call by hand gives."""
    kwargs = {"prompt": "a face", "expression": ["happy", "sad"], "num_inference_steps": 2, "guidance_scale": 2.0,
              "output_type": "np"}  # fmt: skip
    plain = SynFERPipeline(**tiny_components)
    plain.set_progress_bar_config(disable=True)
    with UNetFeatureRecorder(plain.unet) as recorder:
        expected = plain(generator=torch.Generator().manual_seed(0), **kwargs)
        features = recorder.features()
    assert int(plain.scheduler.timesteps[-1]) == head.config.timestep == 1 and features.batch_size == 4
    with torch.no_grad():
        expected_probabilities = head.eval()(features.select(slice(None, 2))).logits.softmax(-1)
    labelled = SynFERPipeline(**tiny_components, feranno_head=head)
    labelled.set_progress_bar_config(disable=True)
    out = labelled(generator=torch.Generator().manual_seed(0), **kwargs)
    assert np.array_equal(out.images, expected.images) and expected.feranno_probabilities is None
    assert torch.allclose(out.feranno_probabilities, expected_probabilities, atol=1e-6)
    off = labelled(generator=torch.Generator().manual_seed(0), label_with_feranno=False, **kwargs)
    assert off.feranno_probabilities is None


def test_pipeline_refuses_a_head_for_another_unet(tiny_components):
    other = FERAnnoHead(feature_channels=(128, 64, 32), num_attention_maps=2)
    with pytest.raises(ValueError, match="feature_channels"):
        SynFERPipeline(**tiny_components, feranno_head=other)


# ----- FERAnnoHead ---------------------------------------------------------------------------------------------


def test_head_config_comes_from_the_unet_and_checks_features(tiny_components, head):
    assert tuple(head.config.feature_channels) == (64, 32) and head.config.num_attention_maps == 1
    unet = tiny_components["unet"]
    with torch.no_grad(), UNetFeatureRecorder(unet) as recorder:
        unet(*_unet_inputs(3)[:1], 1, encoder_hidden_states=_unet_inputs(3)[1])
        features = recorder.features()
        assert head(features).logits.shape == (3, 7)
        features.decoder = features.decoder[:1]
        with pytest.raises(ValueError, match="features.decoder"):
            head(features)


@pytest.mark.parametrize(
    ("option", "match"),
    [({"hidden_dim": 30}, "hidden_dim"), ({"num_attention_maps": 0}, "num_attention_maps"),
     ({"dropout": 1.0}, "dropout"), ({"timestep": -1}, "timestep"), ({"feature_channels": ()}, "feature_channels")],
)  # fmt: skip
def test_head_rejects_bad_config(option, match):
    settings = {"feature_channels": (64, 32), "num_attention_maps": 1, **HEAD_OPTIONS, **option}
    with pytest.raises(ValueError, match=match):
        FERAnnoHead(**settings)


def test_head_for_another_unet_is_refused(tiny_components):
    other = UNet2DConditionModel(
        sample_size=8, block_out_channels=(32, 32), layers_per_block=1, cross_attention_dim=32,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=2,
    )  # fmt: skip
    with pytest.raises(ValueError, match="feature_channels"):
        FERAnnoPipeline(**tiny_components, head=FERAnnoHead.from_unet(other, **HEAD_OPTIONS))


# ----- FERAnnoPipeline -----------------------------------------------------------------------------------------


def test_pipeline_labels_images_of_any_8bit_mode_and_size(pipe):
    images = _faces(2) + _faces(1, size=24, mode="L") + [_faces(1, size=40, mode="RGBA")[0].crop((0, 0, 40, 20))]
    out = pipe(images, batch_size=3, generator=torch.Generator().manual_seed(0))
    assert isinstance(out, FERAnnoPipelineOutput) and len(out.labels) == 4
    assert all(label in EXPRESSIONS for label in out.labels) and out.probabilities.shape == (4, 7)
    assert torch.allclose(out.probabilities.sum(-1), torch.ones(4))
    again = pipe(images, batch_size=3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out.probabilities, again.probabilities)
    as_tensor = torch.from_numpy(np.stack([np.asarray(i) for i in images[:2]])).permute(0, 3, 1, 2) / 255
    tensor_out = pipe(as_tensor, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(tensor_out.probabilities, out.probabilities[:2], atol=1e-5)


@pytest.mark.parametrize(
    ("images", "match"),
    [([PIL.Image.new("I;16", (16, 16))], r"images\[0\].*I;16"), ([], "non-empty"), (["face.png"], r"images\[0\]"),
     (torch.rand(1, 3, 32, 32), r"\(B, 3, 16, 16\)"), (torch.rand(1, 1, 16, 16), r"\(B, 3, 16, 16\)"),
     (torch.rand(1, 3, 16, 16) * 2, r"\[0, 1\]"), (np.zeros((16, 16, 4), np.uint8), r"\(H, W, 3\)")],
)  # fmt: skip
def test_pipeline_rejects_bad_images(pipe, images, match):
    with pytest.raises(ValueError, match=match):
        pipe(images)


def test_save_load_round_trip_card_and_push(pipe, tmp_path, monkeypatch):
    expected = pipe(_faces(2), generator=torch.Generator().manual_seed(0)).probabilities
    card_fields = {
        "base_model": "user/synfer-faceworld",
        "datasets": ["user/faceworld"],
        "metrics": ["accuracy", "f1"],
    }
    pipe.save_pretrained(tmp_path / "saved", model_card=card_fields)
    index = json.loads((tmp_path / "saved" / "model_index.json").read_text())
    assert index["head"] == ["feranno", "FERAnnoHead"]
    assert not list(tmp_path.rglob("*.bin"))
    card = (tmp_path / "saved" / "README.md").read_text()
    metadata = ("library_name: diffusers", "base_model: user/synfer-faceworld", "- user/faceworld", "- accuracy")
    metadata += ("pipeline_tag: image-classification", "labels:", "- surprise", "t = 1")
    assert all(text in card for text in metadata), card
    loaded = FERAnnoPipeline.from_pretrained(tmp_path / "saved")
    loaded.set_progress_bar_config(disable=True)
    assert torch.allclose(loaded(_faces(2), generator=torch.Generator().manual_seed(0)).probabilities, expected)

    pushed = {}

    def fake_push(folder, repo_id, **kwargs):
        pushed.update(repo_id=repo_id, files=sorted(os.listdir(folder)), **kwargs)
        return f"https://hub/{repo_id}/commit/1"

    monkeypatch.setattr(hub_mixin, "push_folder_to_hub", fake_push)
    assert pipe.push_to_hub("user/feranno", model_card=card_fields) == "https://hub/user/feranno/commit/1"
    assert pushed["repo_id"] == "user/feranno" and {"README.md", "model_index.json", "head"} <= set(pushed["files"])


# ----- examples/train_feranno.py -------------------------------------------------------------------------------


def _train_script():
    if "train_feranno" not in sys.modules:
        spec = importlib.util.spec_from_file_location("train_feranno", TRAIN_SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules["train_feranno"] = module
        spec.loader.exec_module(module)
    return sys.modules["train_feranno"]


AFFECTNET8 = ["neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt"]


def _labelled_images(path, names):
    import datasets

    rng = np.random.default_rng(0)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(names))})

    def split(n):
        images = [PIL.Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)) for _ in range(n)]
        labels = [i % len(names) for i in range(n)]
        return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)

    datasets.DatasetDict({"train": split(8), "test": split(4)}).save_to_disk(path)
    return path


@pytest.fixture()
def labelled_images(tmp_path):
    return _labelled_images(tmp_path / "data", EXPRESSIONS)


def _train_options(tmp_path, components, dataset, output_dir):
    if not (tmp_path / "synfer").exists():
        SynFERPipeline(**components).save_pretrained(tmp_path / "synfer")
    return [
        "--pretrained_model", str(tmp_path / "synfer"), "--dataset_name", str(dataset),
        "--output_dir", str(output_dir), "--resolution", "16", "--train_batch_size", "4",
        "--checkpointing_steps", "1", "--validation_steps", "2", "--eval_batch_size", "4",
        "--hidden_dim", "32", "--num_heads", "4", "--tokens_per_side", "4", "--learning_rate", "1e-2",
    ]  # fmt: skip


def test_train_feranno_resumes_with_the_same_losses_and_a_bit_equal_head(tiny_components, labelled_images, tmp_path):
    from safetensors.torch import load_file

    script = _train_script()
    whole = script.main([*_train_options(tmp_path, tiny_components, labelled_images, tmp_path / "whole"),
                         "--max_train_steps", "4"])  # fmt: skip
    cut = _train_options(tmp_path, tiny_components, labelled_images, tmp_path / "cut")
    first = script.main([*cut, "--max_train_steps", "2"])  # stopped after the checkpoint of step 2
    assert first.losses == whole.losses[:2] and all(np.isfinite(whole.losses))
    resumed = script.main([*cut, "--max_train_steps", "4", "--resume_from_checkpoint", "latest"])
    assert (resumed.start_step, resumed.final_step) == (2, 4)
    assert resumed.losses == whole.losses[2:]  # the same trajectory, bit for bit on the CPU
    expected = load_file(tmp_path / "whole" / "head" / "diffusion_pytorch_model.safetensors")
    got = load_file(tmp_path / "cut" / "head" / "diffusion_pytorch_model.safetensors")
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    history = json.loads((tmp_path / "cut" / "evaluation.json").read_text())
    assert history == json.loads((tmp_path / "whole" / "evaluation.json").read_text()) and set(history) == {"2", "4"}
    assert set(history["4"]) == {"accuracy", "macro_f1", "per_class_recall", "confusion_matrix"}
    assert set(history["4"]["per_class_recall"]) == set(EXPRESSIONS)
    loaded = FERAnnoPipeline.from_pretrained(tmp_path / "cut")
    assert loaded.head.config.hidden_dim == 32 and "accuracy" in (tmp_path / "cut" / "README.md").read_text()
    with pytest.raises(ValueError, match="resolution"):
        script.main([*cut, "--max_train_steps", "1", "--resolution", "32", "--output_dir", str(tmp_path / "bad")])


def test_train_feranno_label_smoothing_is_the_smoothed_cross_entropy(tiny_components, labelled_images, tmp_path):
    """`--label_smoothing` reaches the loss: the same seed's first loss differs from the plain run's and stays
    finite; a value outside [0, 1) is refused naming the field."""
    script = _train_script()
    options = _train_options(tmp_path, tiny_components, labelled_images, tmp_path / "plain")
    plain = script.main([*options, "--max_train_steps", "1"])
    options = _train_options(tmp_path, tiny_components, labelled_images, tmp_path / "smooth")
    smooth = script.main([*options, "--max_train_steps", "1", "--label_smoothing", "0.5"])
    assert np.isfinite(smooth.losses[0]) and smooth.losses[0] != plain.losses[0]
    with pytest.raises(ValueError, match="`label_smoothing`"):
        script.main([*options, "--max_train_steps", "1", "--label_smoothing", "1.0"])


def test_train_feranno_takes_an_affectnet8_label_set_and_votes_by_name(tiny_components, tmp_path):
    from synfer_diffusers import EnsembleVoter
    from synfer_diffusers.labels import VotingConfig

    dataset = _labelled_images(tmp_path / "affectnet8", AFFECTNET8)
    options = _train_options(tmp_path, tiny_components, dataset, tmp_path / "out")
    _train_script().main([*options, "--max_train_steps", "2"])
    pipe = FERAnnoPipeline.from_pretrained(tmp_path / "out")
    pipe.set_progress_bar_config(disable=True)
    assert pipe.head.labels == AFFECTNET8 and pipe.head.classifier[-1].out_features == 8
    assert dict(pipe.head.config.label2id) == {name: i for i, name in enumerate(AFFECTNET8)}
    history = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert set(history["2"]["per_class_recall"]) == set(AFFECTNET8)
    out = pipe(_faces(3), generator=torch.Generator().manual_seed(0))
    assert out.probabilities.shape == (3, 8) and set(out.labels) <= set(AFFECTNET8)
    latents = _clean_latents(pipe, _pixels(3))
    with pytest.raises(ValueError, match=r"feranno_label_mapping.*contempt"):
        pipe.label_latents(latents)  # as for an external AffectNet-8 classifier: contempt must be mapped
    votes = pipe.label_latents(latents, torch.Generator().manual_seed(0), label_mapping={"contempt": None})
    logits = pipe.latent_logits(latents, torch.Generator().manual_seed(0))
    assert torch.allclose(votes, logits[:, :7].softmax(-1))  # contempt dropped before the softmax
    result = EnsembleVoter(config=VotingConfig())(probabilities={"feranno": votes})
    assert result.labels == [EXPRESSIONS[i] for i in logits[:, :7].argmax(-1).tolist()]


def _head_voting_for(tiny_components, id2label, logit_by_name):
    torch.manual_seed(0)
    head = FERAnnoHead.from_unet(tiny_components["unet"], id2label=dict(enumerate(id2label)), **HEAD_OPTIONS)
    linear = head.classifier[-1]
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.copy_(torch.tensor([logit_by_name.get(name, 0.0) for name in id2label]))
    return head


def test_a_head_with_another_label_order_votes_by_name_in_every_labelling_path(tiny_components):
    order = ["anger", "contempt", "disgust", "fear", "happy", "neutral", "sad", "surprise"]  # alphabetical
    head = _head_voting_for(tiny_components, order, {"contempt": 9.0, "happy": 5.0, "sad": 4.0})
    pipe = FERAnnoPipeline(**tiny_components, head=head)
    pipe.set_progress_bar_config(disable=True)
    assert pipe(_faces(2)).labels == ["contempt", "contempt"]  # the head's own label set
    latents = _clean_latents(pipe, _pixels(2))
    votes = pipe.label_latents(latents, label_mapping={"contempt": None})
    assert votes.argmax(-1).tolist() == [EXPRESSIONS.index("happy")] * 2  # by name: index 4 would be "fear"
    assert votes[0, EXPRESSIONS.index("sad")] > votes[0, EXPRESSIONS.index("neutral")]
    synfer = SynFERPipeline(**tiny_components, feranno_head=head)
    synfer.set_progress_bar_config(disable=True)
    kwargs = {"prompt": "a face", "expression": ["sad"], "num_inference_steps": 2, "output_type": "latent"}
    with pytest.raises(ValueError, match="feranno_label_mapping"):
        synfer(**kwargs)
    for guidance_scale in (2.0, 1.0):  # in-loop features, and a separate pass on the final latents
        out = synfer(guidance_scale=guidance_scale, feranno_label_mapping={"contempt": None}, **kwargs)
        assert torch.allclose(out.feranno_probabilities, votes[:1], atol=1e-6)


def test_head_configs_without_a_label_set_load_as_expressions(tiny_components, head, tmp_path):
    assert head.labels == list(EXPRESSIONS) and dict(head.config.label2id) == EXPRESSIONS.label2id
    old = {k: v for k, v in head.config.items() if k not in ("id2label", "label2id") and not k.startswith("_")}
    assert FERAnnoHead.from_config(old).labels == list(EXPRESSIONS)
    default = FERAnnoHead.from_pretrained(Path(pipeline_feranno.__file__).parents[2] / "default_model" / "feranno_head")
    assert default.labels == list(EXPRESSIONS) and default.classifier[-1].out_features == 7
    shuffled = FERAnnoHead.from_unet(tiny_components["unet"], id2label={0: "sad", 1: "happy"}, **HEAD_OPTIONS)
    shuffled.save_pretrained(tmp_path / "head")
    assert FERAnnoHead.from_pretrained(tmp_path / "head").labels == ["sad", "happy"]  # JSON's string keys
    with pytest.raises(ValueError, match="id2label"):
        FERAnnoHead.from_unet(tiny_components["unet"], id2label={0: "sad", 2: "happy"}, **HEAD_OPTIONS)
    with pytest.raises(ValueError, match="label2id"):
        FERAnnoHead.from_unet(tiny_components["unet"], id2label={0: "sad", 1: "happy"}, label2id={"sad": 1})


# ----- FERAnno's noising: DDPM's q(z_t | z_0) at the head's training timestep ---------------------------------


def _pixels(n):  # (n, 3, 16, 16) in [0, 1]
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def _clean_latents(pipe, pixels):  # (n, 4, 8, 8): what FERAnno encodes an image to
    with torch.no_grad():
        return pipe.vae.encode(pixels * 2 - 1).latent_dist.mode() * pipe.vae.config.scaling_factor


def _with_scheduler(components, head, scheduler_class, num_inference_steps=None, begin_index=None):
    scheduler = scheduler_class.from_config(components["scheduler"].config)
    if num_inference_steps is not None:
        scheduler.set_timesteps(num_inference_steps)
    if begin_index is not None:
        scheduler.set_begin_index(begin_index)
    pipe = FERAnnoPipeline(**{**components, "scheduler": scheduler}, head=head)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize(
    ("scheduler_class", "num_inference_steps", "begin_index"),
    [(DPMSolverMultistepScheduler, None, None), (DPMSolverMultistepScheduler, 25, None),
     (DPMSolverMultistepScheduler, 25, 12), (EulerDiscreteScheduler, None, None),
     (EulerAncestralDiscreteScheduler, None, None), (UniPCMultistepScheduler, None, None),
     (UniPCMultistepScheduler, 25, None)],
    ids=["dpm-fresh", "dpm-25-steps", "dpm-begin-index-12", "euler", "euler-ancestral", "unipc", "unipc-25-steps"],
)  # fmt: skip
def test_labels_do_not_depend_on_the_scheduler_or_its_history(
    tiny_components, head, pipe, scheduler_class, num_inference_steps, begin_index
):
    assert isinstance(pipe.scheduler, DDIMScheduler)
    expected = pipe(_pixels(2), generator=torch.Generator().manual_seed(0)).probabilities
    other = _with_scheduler(tiny_components, head, scheduler_class, num_inference_steps, begin_index)
    probabilities = other(_pixels(2), generator=torch.Generator().manual_seed(0)).probabilities
    assert torch.allclose(probabilities, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("timestep", [1, 250])
def test_unet_reads_the_ddpm_forward_process_at_the_heads_timestep(tiny_components, timestep):
    """The UNet input is `sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps` at `t = head.config.timestep` (eps: the
    generator's standard normal draw), on a DPM-Solver whose inference schedule was set (its `add_noise` looks t up
    there)."""
    torch.manual_seed(0)
    head = FERAnnoHead.from_unet(tiny_components["unet"], timestep=timestep, **HEAD_OPTIONS)
    pipe = _with_scheduler(tiny_components, head, DPMSolverMultistepScheduler, num_inference_steps=25)
    calls = []
    hook = pipe.unet.register_forward_pre_hook(lambda module, args: calls.append(args))
    try:
        pipe(_pixels(2), generator=torch.Generator().manual_seed(0))
    finally:
        hook.remove()
    (sample, t), *_ = calls
    clean = _clean_latents(pipe, _pixels(2))
    eps = torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    abar = tiny_components["scheduler"].alphas_cumprod[timestep]
    assert torch.equal(torch.as_tensor(t).flatten().unique(), torch.tensor([timestep]))
    assert torch.allclose(sample, abar.sqrt() * clean + (1 - abar).sqrt() * eps, atol=1e-6)


def test_label_latents_of_vae_latents_equals_labelling_the_images(pipe):
    pixels = _pixels(3)
    out = pipe(pixels, batch_size=2, generator=torch.Generator().manual_seed(0))
    probabilities = pipe.label_latents(_clean_latents(pipe, pixels), generator=torch.Generator().manual_seed(0))
    assert probabilities.shape == (3, 7)
    assert torch.allclose(probabilities, out.probabilities, atol=1e-6, rtol=0)


def test_a_list_of_generators_gives_each_image_its_own_noise(pipe):
    pixels = _pixels(3)
    batch = pipe(pixels, batch_size=2, generator=[torch.Generator().manual_seed(i) for i in range(3)])
    alone = pipe(pixels[1:2], generator=[torch.Generator().manual_seed(1)])
    assert torch.allclose(alone.probabilities[0], batch.probabilities[1], atol=1e-6, rtol=0)
    assert not torch.allclose(batch.probabilities[0], batch.probabilities[1], atol=1e-4)
    single = pipe(pixels[1:2], generator=torch.Generator().manual_seed(1))  # G and [G] are the same at one image
    assert torch.equal(single.probabilities, alone.probabilities)
    with pytest.raises(ValueError, match="generator"):
        pipe(pixels, generator=[torch.Generator().manual_seed(0)] * 2)


def test_noise_is_drawn_on_the_generators_device(pipe, monkeypatch):
    """A generator elsewhere (a CUDA one on a GPU; here a stand-in object, there being no GPU) draws there, and the
    noise is moved to the latents."""

    class ElsewhereGenerator:
        device = torch.device("meta")

    drawn = []

    def recording_randn(shape, generator=None, device=None, dtype=None):
        drawn.append(device)
        return torch.zeros(shape, dtype=dtype)

    monkeypatch.setattr(pipeline_feranno, "randn_tensor", recording_randn)
    pipe(_pixels(2), generator=ElsewhereGenerator())
    pipe(_pixels(2), generator=[ElsewhereGenerator(), ElsewhereGenerator()])
    pipe(_pixels(2))
    assert drawn == [torch.device("meta"), torch.device("meta"), torch.device("cpu")]


def test_label_latents_rejects_bad_latents_and_a_timestep_outside_the_schedule(tiny_components, pipe):
    with pytest.raises(ValueError, match=r"`latents` must have shape \(N >= 1, 4, h, w\)"):
        pipe.label_latents(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="batch_size"):
        pipe.label_latents(torch.zeros(1, 4, 8, 8), batch_size=0)
    head = FERAnnoHead.from_unet(tiny_components["unet"], timestep=1000, **HEAD_OPTIONS)
    with pytest.raises(ValueError, match=r"`timestep` must be a training timestep in \[0, 1000\), got 1000"):
        FERAnnoPipeline(**tiny_components, head=head).label_latents(torch.zeros(1, 4, 8, 8))
