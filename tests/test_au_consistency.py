"""AU-consistency training (`train_au_adapter.py --au_consistency_weight`): the loss is differentiable through the
VAE and the estimator into the adapter and falls when optimised, the script records it and resumes bit for bit,
and an estimator that cannot read the UNet's AUs is refused before training."""

import pytest
import torch
from diffusers import DDPMScheduler
from transformers import ResNetConfig, ResNetForImageClassification, ViTImageProcessorPil

from synfer_diffusers import AUConditionedUNet2DConditionModel, AUSpace
from synfer_diffusers.tiny import make_tiny_components
from synfer_diffusers.training import AUConsistencyLoss, denoised_estimate
from test_training_examples import assert_fails_before_training
from training_chain import pretrained_settings, run  # the chain's fixtures: session-scoped, conftest.py


def tiny_estimator(names, seed=0):
    torch.manual_seed(seed)
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
                          num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
                          au_names=list(names), problem_type="regression")  # fmt: skip
    return ResNetForImageClassification(config)


@pytest.fixture(scope="module")
def estimator_dir(tmp_path_factory):
    """A tiny AU regressor over DISFA-12 in reversed order (the loss must map outputs by name) with its processor."""
    path = tmp_path_factory.mktemp("au_estimator")
    tiny_estimator(list(reversed(AUSpace.disfa12().names))).save_pretrained(path)
    ViTImageProcessorPil(size={"height": 16, "width": 16}).save_pretrained(path)
    return path


def test_denoised_estimate_inverts_forward_noising_for_epsilon_and_v():
    for prediction_type in ("epsilon", "v_prediction"):
        scheduler = DDPMScheduler(prediction_type=prediction_type)
        x0, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
        t = torch.tensor([10, 400, 900])
        noisy = scheduler.add_noise(x0, noise, t)
        prediction = noise if prediction_type == "epsilon" else scheduler.get_velocity(x0, noise, t)
        assert torch.allclose(denoised_estimate(noisy, prediction, t, scheduler), x0, atol=1e-3)


def test_consistency_loss_reaches_the_adapter_and_falls_when_optimised(estimator_dir):
    parts = make_tiny_components(seed=0)
    space = AUSpace.disfa12()
    unet = AUConditionedUNet2DConditionModel.from_unet(parts["unet"], au_space=space, num_au_tokens=2)
    unet.freeze_base()
    vae, scheduler = parts["vae"].requires_grad_(False), DDPMScheduler()
    loss_fn = AUConsistencyLoss.from_pretrained(str(estimator_dir), space, max_timestep=500)
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(4, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size,
                          generator=generator)  # fmt: skip
    text = torch.randn(4, 8, unet.config.cross_attention_dim, generator=generator)
    aus = torch.zeros(4, space.num_aus)  # within reach of a tiny random estimator, so the loss can fall far
    t = torch.tensor([50, 150, 300, 450])
    noise = torch.randn(latents.shape, generator=generator)
    noisy = scheduler.add_noise(latents, noise, t)
    keep = torch.tensor([True, True, True, False])  # the last row's AUs were dropped: no consistency term
    params = list(unet.trainable_au_parameters())
    optimizer = torch.optim.Adam(params, lr=3e-2)
    losses = []
    for _ in range(15):
        prediction = unet(noisy, t, text, au_embeds=unet.encode_action_units(aus)).sample
        loss = loss_fn(noisy, prediction, t, aus, keep, scheduler, vae)
        optimizer.zero_grad()
        loss.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0] and sum(b < a for a, b in zip(losses, losses[1:])) >= 12, losses
    beyond = torch.tensor([600, 700, 800, 900])  # all beyond max_timestep: zero loss, graph kept
    zero = loss_fn(noisy, prediction.detach().requires_grad_(), beyond, aus, keep, scheduler, vae)
    assert zero.item() == 0.0 and zero.requires_grad


def test_an_estimator_stored_in_float16_is_read_in_float32(tmp_path):
    """The embedded default stores its AU estimator in float16; the loss reads float32 decoded images."""
    space = AUSpace.disfa12()
    tiny_estimator(list(space.names)).half().save_pretrained(tmp_path)
    ViTImageProcessorPil(size={"height": 16, "width": 16}).save_pretrained(tmp_path)
    loss_fn = AUConsistencyLoss.from_pretrained(str(tmp_path), space, max_timestep=999)
    assert {p.dtype for p in loss_fn.estimator.parameters()} == {torch.float32}
    parts = make_tiny_components(seed=0)
    latents = torch.randn(2, 4, 8, 8)
    loss = loss_fn(latents, torch.randn(2, 4, 8, 8), torch.tensor([10, 20]), torch.ones(2, space.num_aus),
                   torch.tensor([True, True]), DDPMScheduler(), parts["vae"])  # fmt: skip
    assert torch.isfinite(loss)


def consistency_settings(faceworld_dir, stage_a_dir, estimator_dir, **overrides):  # noqa: F811
    return pretrained_settings(faceworld_dir, stage_a_dir, au_consistency_weight=1.0, au_estimator=estimator_dir,
                               au_consistency_max_timestep=999, **overrides)  # fmt: skip


def test_script_records_the_consistency_loss_and_resume_repeats_it(
    faceworld_dir, stage_a_dir, estimator_dir, tmp_path  # noqa: F811
):
    whole = run("train_au_adapter", tmp_path / "whole", **consistency_settings(faceworld_dir, stage_a_dir, estimator_dir))
    assert len(whole.parts["au_consistency"]) == 2 and all(v > 0 for v in whole.parts["au_consistency"])
    for total, diffusion, au in zip(whole.losses, whole.parts["diffusion"], whole.parts["au_consistency"]):
        assert total == pytest.approx(diffusion + au, rel=1e-5)
    settings = consistency_settings(faceworld_dir, stage_a_dir, estimator_dir)
    run("train_au_adapter", tmp_path / "split", **{**settings, "max_train_steps": 1})
    resumed = run("train_au_adapter", tmp_path / "split", "--resume_from_checkpoint", "latest", **settings)
    assert resumed.losses == whole.losses[1:] and resumed.parts["au_consistency"] == whole.parts["au_consistency"][1:]


def test_an_estimator_that_cannot_read_the_unets_aus_is_refused(faceworld_dir, stage_a_dir, tmp_path):  # noqa: F811
    other = tmp_path / "occurrence_estimator"
    tiny_estimator(["AU1", "AU2", "AU99"]).save_pretrained(other)
    ViTImageProcessorPil(size={"height": 16, "width": 16}).save_pretrained(other)
    settings = consistency_settings(faceworld_dir, stage_a_dir, other)
    (tmp_path / "out").mkdir()
    assert_fails_before_training("train_au_adapter", tmp_path / "out", settings, r"`au_estimator` cannot read")
    settings = pretrained_settings(faceworld_dir, stage_a_dir, au_consistency_weight=1.0)
    assert_fails_before_training("train_au_adapter", tmp_path / "out", settings, "needs `au_estimator`")
