#!/usr/bin/env python
"""SynFER stage 2b: train the AU adapter on a text-to-image model from `examples/train_text_to_image.py`.

The stage-A UNet is wrapped with `AUConditionedUNet2DConditionModel.from_unet`: an MLP turns the AU vector into
`num_au_tokens` tokens that every text cross-attention layer reads through decoupled AU keys/values,
`out = Attn(Q, K_text, V_text) + au_scale * Attn(Q, K_au, V_au)` (IP-Adapter-style; `W'_k, W'_v` start as copies
of the text ones). The loss is stage A's epsilon-MSE, now conditioned on text and AUs, with

- condition dropout (IP-Adapter recipe): text only 5%, AUs only 5%, both 5%; dropped AUs are the UNet's learned
  null AU tokens, which classifier-free guidance uses at sampling time;
- AU smoothing (FineFace): Gaussian noise (std 0.2) on the AU vector, clipped to its range, occasionally
  rounding to whole intensity levels instead.

`--au_consistency_weight` (beyond the paper, after ControlNet++) adds an AU-consistency loss: at `t <=
--au_consistency_max_timestep` the one-step estimate `x0_hat` is decoded by the frozen VAE and a frozen,
differentiable AU estimator (`--au_estimator`, e.g. a checkpoint's `au_estimator`; never the model that will measure
AU error) reads its AUs; their mean absolute error to the conditioning AUs is added to the loss with that weight.
`--continue_adapter` continues training the adapter of an AU pipeline (e.g. the embedded default) instead of
building a new one on a stage-A model.

`--unet_training` chooses what trains besides the adapter:

- `frozen` (default, **what the SynFER paper does**): only the adapter; the base UNet keeps its text-to-image
  behaviour, and `au_scale=0` reproduces the stage-A model exactly;
- `lora`: also a peft LoRA on the base UNet's attention (as FineFace does); merged into the UNet when saved;
- `full`: every UNet weight (more capacity, forgets more of stage A; use on small from-scratch models).

The output folder is a `SynFERPipeline` (AU UNet) that `SynFERPipeline.from_pretrained` loads. A validation grid
(expressions x identities, EMFACS prototype AUs, fixed seeds) is written to `validation/` every
`--validation_steps` and at the end. The base UNet, frozen under `frozen` and `lora`, is held in the
mixed-precision dtype while what trains stays in float32 (`cast_training_params`). `--cache_latents` encodes
the images with the VAE once (a cache keyed by dataset, resolution and VAE, shared with stage A). Rerun with
`--resume_from_checkpoint latest` after a kill to continue from the newest checkpoint with the same losses.
diffusers' options keep their meaning (see `train_text_to_image.py`); `--prediction_type` also changes the saved
scheduler.

FaceWorld on a 2-core CPU (after stage A in `runs/stage_a`; ~20 min):

```bash
python examples/train_au_adapter.py --pretrained_model_name_or_path runs/stage_a --dataset_name runs/faceworld \
    --output_dir runs/stage_b --resolution 64 --train_batch_size 32 --learning_rate 3e-4 --lr_warmup_steps 50 \
    --max_train_steps 600 --checkpointing_steps 100 --validation_steps 300 --resume_from_checkpoint latest
# more capacity on a small from-scratch base: --unet_training full --learning_rate 1e-4
```

Stable Diffusion 1.5 on a GPU (stage A output from the SD 1.5 fine-tune):

```bash
accelerate launch examples/train_au_adapter.py --pretrained_model_name_or_path runs/sd15-fetext \
    --dataset_name <FEText folder with an AU column> --au_space opengraphau41 --output_dir runs/sd15-au \
    --resolution 512 --mixed_precision bf16 --train_batch_size 16 --gradient_checkpointing \
    --learning_rate 1e-4 --max_train_steps 20000 --snr_gamma 5.0 --checkpointing_steps 2000 \
    --validation_steps 2000 --validation_guidance_scale 7.5 --validation_inference_steps 50 \
    --dataloader_num_workers 8 --report_to tensorboard --resume_from_checkpoint latest
```
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from diffusers.training_utils import cast_training_params
from torch import nn

from synfer_diffusers import AUConditionedUNet2DConditionModel, AUSpace, SynFERPipeline
from synfer_diffusers.training import (
    AUConsistencyLoss,
    DiffusionTrainingConfig,
    ExampleTransform,
    LossParts,
    StepRandom,
    TrainingSummary,
    add_training_noise,
    add_unet_lora,
    apply_unet_memory_options,
    check_existing_path,
    check_positive,
    check_probability,
    condition_dropout_masks,
    diffusion_loss,
    diffusion_training_batches,
    drop_captions,
    finish_run,
    frozen_weight_dtype,
    is_local_path,
    load_pretrained,
    load_train_split,
    make_optimizer,
    parse_config,
    prepare_run,
    run_from_command_line,
    run_training_loop,
    save_expression_grid,
    smooth_action_units,
    tokenize_captions,
    training_card_text,
    training_latents,
    training_noise_scheduler,
    validate_action_units_column,
)


@dataclass(kw_only=True)
class AUAdapterTrainingConfig(DiffusionTrainingConfig):
    pretrained_model_name_or_path: str = field(
        metadata={"help": "The stage-A SynFERPipeline (text-only UNet): a folder or Hub id."}
    )
    au_column: str = field(default="action_units", metadata={"help": "Column holding the AU vector of each image."})
    au_space: str = field(
        default="disfa12",
        metadata={"help": "AU vocabulary of `au_column` (an `AUSpace` preset).", "choices": AUSpace.presets()},
    )
    num_au_tokens: int = field(default=4, metadata={"help": "AU tokens made by the AU encoder."})
    au_encoder_hidden_dim: int | None = field(
        default=None, metadata={"help": "Hidden width of the AU encoder MLP; unset: the cross-attention width."}
    )
    unet_training: Literal["frozen", "lora", "full"] = field(
        default="frozen",
        metadata={"help": "Besides the adapter: nothing (the paper), a LoRA on the base UNet (FineFace), or all."},
    )
    rank: int = field(default=4, metadata={"help": "LoRA rank for `--unet_training lora` (was `--lora_rank`)."})
    au_dropout_prob: float = field(default=0.05, metadata={"help": "Probability of dropping only the AUs."})
    both_dropout_prob: float = field(default=0.05, metadata={"help": "Probability of dropping text and AUs."})
    au_noise_std: float = field(default=0.2, metadata={"help": "AU smoothing: std of the Gaussian noise."})
    au_noise_prob: float = field(default=1.0, metadata={"help": "AU smoothing: probability a row gets noise."})
    au_round_prob: float = field(
        default=0.1, metadata={"help": "AU smoothing: probability a row is rounded to whole levels instead."}
    )
    au_consistency_weight: float = field(
        default=0.0,
        metadata={"help": "Weight of the AU-consistency loss (AU estimator on the decoded x0_hat); 0: off."},
    )
    au_estimator: str | None = field(
        default=None,
        metadata={"help": "AU estimator for the consistency loss: a transformers image model with `au_names` "
                          "(folder or Hub id); not the model that measures AU error."},
    )  # fmt: skip
    au_estimator_image_processor: str | None = field(
        default=None, metadata={"help": "Its image processor (folder or Hub id); unset: `au_estimator`'s own."}
    )
    au_consistency_max_timestep: int = field(
        default=400, metadata={"help": "The consistency loss applies at training timesteps t <= this."}
    )
    continue_adapter: bool = field(
        default=False,
        metadata={"help": "`pretrained_model_name_or_path` is an AU pipeline: continue training its adapter."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if is_local_path(self.pretrained_model_name_or_path):
            check_existing_path(self, "pretrained_model_name_or_path")
        AUSpace.from_preset(self.au_space)
        check_positive(self, "num_au_tokens", "rank")
        check_positive(self, "au_encoder_hidden_dim", allow_none=True)
        check_positive(self, "au_noise_std", allow_zero=True)
        check_probability(self, "au_dropout_prob", "both_dropout_prob", "au_noise_prob", "au_round_prob")
        check_positive(self, "au_consistency_weight", "au_consistency_max_timestep", allow_zero=True)
        if self.au_consistency_weight > 0 and self.au_estimator is None:
            raise ValueError("`au_consistency_weight` > 0 needs `au_estimator`.")
        total = self.text_dropout_prob + self.au_dropout_prob + self.both_dropout_prob
        if total > 1:
            raise ValueError(
                f"`text_dropout_prob` + `au_dropout_prob` + `both_dropout_prob` must be <= 1, got {total}."
            )


class AUDenoiser(nn.Module):
    """AU tokens (with AU dropout) and the UNet call in one `forward`, so accelerate (DDP, autocast) also wraps the
    AU encoder, which `encode_action_units` runs outside the UNet's own `forward`."""

    def __init__(self, unet: AUConditionedUNet2DConditionModel):
        super().__init__()
        self.unet = unet

    def forward(
        self,
        noisy_latents: torch.Tensor,  # (B, C, h, w)
        timesteps: torch.Tensor,  # (B,)
        text_embeds: torch.Tensor,  # (B, L, D)
        action_units: torch.Tensor,  # (B, num_aus)
        drop_au: torch.Tensor,  # (B,) bool
    ) -> torch.Tensor:  # (B, C, h, w)
        au_embeds = self.unet.encode_action_units(action_units, drop_mask=drop_au)  # (B, T, D)
        return self.unet(noisy_latents, timesteps, text_embeds, au_embeds=au_embeds).sample


def load_stage_a(config: AUAdapterTrainingConfig) -> SynFERPipeline:
    """The stage-A pipeline (`--revision` / `--variant`), its scheduler predicting `--prediction_type` if given."""
    pipe = load_pretrained(SynFERPipeline.from_pretrained, config)
    if config.prediction_type:
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, prediction_type=config.prediction_type)
    has_adapter = isinstance(pipe.unet, AUConditionedUNet2DConditionModel)
    if has_adapter and not config.continue_adapter:
        raise ValueError(
            "`pretrained_model_name_or_path` already has an AU adapter; pass the stage-A (text-only) pipeline, "
            "`--continue_adapter` to train its adapter further, or `--resume_from_checkpoint latest` to continue an "
            "interrupted adapter run."
        )
    if config.continue_adapter and not has_adapter:
        raise ValueError("`continue_adapter` needs an AU pipeline; `pretrained_model_name_or_path` has no AU adapter.")
    return pipe


def build_au_unet(pipe: SynFERPipeline, au_space: AUSpace, config: AUAdapterTrainingConfig):
    """The AU UNet to train: the pipeline's own with `--continue_adapter` (its AU space must be `au_space`), else a
    new adapter around the stage-A UNet."""
    if config.continue_adapter:
        if pipe.unet.au_space != au_space:
            raise ValueError(f"`au_space` {config.au_space!r} differs from the pipeline's {pipe.unet.au_space.names}.")
        return pipe.unet
    return AUConditionedUNet2DConditionModel.from_unet(
        pipe.unet, au_space=au_space, num_au_tokens=config.num_au_tokens,
        au_encoder_hidden_dim=config.au_encoder_hidden_dim,
    )  # fmt: skip


def configure_trainable(unet: AUConditionedUNet2DConditionModel, config: AUAdapterTrainingConfig) -> None:
    """Sets `requires_grad` for `--unet_training` (see the module docstring)."""
    if config.unet_training == "full":
        unet.requires_grad_(True)
        return
    unet.freeze_base()
    if config.unet_training == "lora":
        add_unet_lora(unet, config.rank, config.lora_alpha)  # peft freezes all but LoRA: unfreeze the adapter
        for param in unet.trainable_au_parameters():
            param.requires_grad_(True)


def main(argv: Sequence[str] | None = None) -> TrainingSummary:
    config = parse_config(AUAdapterTrainingConfig, argv, description=__doc__.splitlines()[0])
    accelerator = prepare_run(config)
    au_space = AUSpace.from_preset(config.au_space)
    dataset = load_train_split(
        config,
        {
            config.caption_column: "captions (--caption_column)",
            config.au_column: f"{au_space.num_aus} AU values per row (--au_column)",
        },
        accelerator.num_processes,
    )
    validate_action_units_column(dataset, config.au_column, au_space)
    pipe = load_stage_a(config)
    vae, tokenizer, text_encoder = pipe.vae, pipe.tokenizer, pipe.text_encoder
    if config.resolution != pipe.unet.config.sample_size * pipe.vae_scale_factor:
        raise ValueError(
            f"`resolution` {config.resolution} differs from the stage-A model's "
            f"{pipe.unet.config.sample_size * pipe.vae_scale_factor} px."
        )
    transform = ExampleTransform.from_config(
        config, text_column=config.caption_column, tokenizer=tokenizer, au_column=config.au_column, au_space=au_space
    )
    empty_ids = tokenize_captions(tokenizer, [""])
    noise_scheduler = training_noise_scheduler(pipe.scheduler.config)  # stage A's schedule, for training

    unet = build_au_unet(pipe, au_space, config)
    consistency = None
    if config.au_consistency_weight > 0:
        consistency = AUConsistencyLoss.from_pretrained(
            config.au_estimator, au_space, config.au_estimator_image_processor, config.au_consistency_max_timestep
        ).to(accelerator.device)
    configure_trainable(unet, config)
    if config.unet_training != "full":  # the frozen base in the mixed-precision dtype, what trains in float32
        unet.to(dtype=frozen_weight_dtype(accelerator))
        cast_training_params(unet, dtype=torch.float32)
    apply_unet_memory_options(unet, config)
    vae.requires_grad_(False).to(accelerator.device, dtype=frozen_weight_dtype(accelerator))
    text_encoder.requires_grad_(False).to(accelerator.device, dtype=frozen_weight_dtype(accelerator))
    batches = diffusion_training_batches(dataset, transform, config, accelerator, vae)
    optimizer, lr_scheduler = make_optimizer(config, [p for p in unet.parameters() if p.requires_grad])
    model, optimizer = accelerator.prepare(AUDenoiser(unet), optimizer)
    unet = accelerator.unwrap_model(model).unet

    def compute_loss(batch: dict[str, torch.Tensor], random: StepRandom) -> torch.Tensor:
        batch_size = len(batch["input_ids"])
        drop_text, drop_au = condition_dropout_masks(
            batch_size, random, config.text_dropout_prob, config.au_dropout_prob, config.both_dropout_prob
        )
        aus = smooth_action_units(
            batch["action_units"], au_space, random, config.au_noise_std, config.au_noise_prob, config.au_round_prob
        )
        input_ids = drop_captions(batch["input_ids"], drop_text, empty_ids).to(accelerator.device)
        latents = training_latents(batch, vae, random)  # (B, C, h, w)
        noisy_latents, noise, timesteps = add_training_noise(latents, noise_scheduler, random, config.noise_offset)
        with torch.no_grad():
            text_embeds = text_encoder(input_ids)[0]  # (B, L, D)
        aus, drop_au = aus.to(accelerator.device), drop_au.to(accelerator.device)
        model_pred = model(noisy_latents, timesteps, text_embeds, aus, drop_au)
        loss = diffusion_loss(model_pred, latents, noise, timesteps, noise_scheduler, config.snr_gamma)
        if consistency is None:
            return loss
        au_loss = consistency(noisy_latents, model_pred, timesteps, aus, ~drop_au, noise_scheduler, vae)
        return LossParts(loss + config.au_consistency_weight * au_loss, {"diffusion": loss, "au_consistency": au_loss})

    def build_pipeline() -> SynFERPipeline:
        return SynFERPipeline(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=pipe.scheduler
        )

    def validate(step: int) -> None:
        save_expression_grid(
            build_pipeline(), f"{config.output_dir}/validation/grid-{step:06d}.png", config.validation_expressions,
            config.num_validation_identities, config.validation_prompt, seed=config.seed,
            num_inference_steps=config.validation_inference_steps, guidance_scale=config.validation_guidance_scale,
        )  # fmt: skip
        unet.train()

    unet.train()
    summary = run_training_loop(
        accelerator, config, batches, compute_loss, optimizer, lr_scheduler, {"model": model}, validate=validate,
        project=f"au-adapter-{config.unet_training}",
    )  # fmt: skip
    if accelerator.is_main_process:
        if config.unet_training == "lora":
            unet.fuse_lora()  # merge the LoRA into the base weights: the saved UNet is a plain AU UNet
            unet.unload_lora()
        pipeline = build_pipeline().to(torch.float32)
        pipeline.save_pretrained(
            config.output_dir,
            model_card={
                "base_model": config.pretrained_model_name_or_path,
                "datasets": [config.dataset_source],
                "training": training_card_text(config, "train_au_adapter.py"),
            },
        )
        accelerator.print(f"Saved the AU-conditioned pipeline to {config.output_dir}.")
    finish_run(accelerator, config)
    return summary


if __name__ == "__main__":
    run_from_command_line(main)
