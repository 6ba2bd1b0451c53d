#!/usr/bin/env python
"""SynFER stage 2a, "FEText fine-tune": train a latent diffusion UNet on image-caption pairs.

Loss: epsilon-MSE (DDPM, Ho et al. 2020, eq. 14), `|| eps - eps_theta(x_t, t, c_text) ||^2` on VAE latents, with
optional min-SNR-gamma weighting (`--snr_gamma`) and caption dropout (`--text_dropout_prob`, the empty prompt,
for classifier-free guidance). Any dataset with an image and a text column works.

Two starting points:

- `--pretrained_model_name_or_path`: a `SynFERPipeline` or Stable Diffusion folder / Hub id. The UNet is
  fine-tuned, fully or, with `--rank N`, as a peft LoRA on its attention projections (saved in diffusers'
  LoRA format with a model card: `SynFERPipeline.from_pretrained(base).load_lora_weights(output_dir)`). The card
  names the base model and inherits its licence (SD 1.5's `creativeml-openrail-m`, for example).
- From scratch (the FaceWorld default model): `--vae_path` (from `examples/train_autoencoder.py`), a CLIP
  tokenizer trained offline on the dataset's captions, a small `CLIPTextModel` built in code (trained jointly
  with `--train_text_encoder`) and a `UNet2DConditionModel` of configurable size.

Training uses SD's `DDPMScheduler`; the saved pipeline gets a `DDIMScheduler` with `clip_sample=False` (the model
works on latents), `set_alpha_to_one=False`, `steps_offset=1`. Without LoRA the output folder is a
`SynFERPipeline` with a plain UNet (the text-only model) that `SynFERPipeline.from_pretrained` loads and that
`examples/train_au_adapter.py` extends.

diffusers' conventions: rows are decoded in DataLoader workers (`--dataloader_num_workers`, `--streaming` for a
stream), `--gradient_accumulation_steps`, `--report_to tensorboard`, `accelerator.save_state` checkpoints every
`--checkpointing_steps` (the newest `--checkpoints_total_limit` kept), `--use_ema` with diffusers' `EMAModel`,
a LoRA base held in the mixed-precision dtype (`cast_training_params` keeps the LoRA weights in float32),
`--cache_latents` (the VAE posterior of every image computed once, shared with `train_au_adapter.py`), and
`--push_to_hub` / `--hub_model_id`. diffusers' data and speed options keep their meaning there: `--train_data_dir`
(an imagefolder with `metadata.jsonl`), `--center_crop` (else random crops), `--random_flip`, `--noise_offset`,
`--prediction_type` (`v_prediction`: the loss targets the velocity and the saved scheduler predicts it),
`--revision` / `--variant` of the pretrained model, `--allow_tf32`, `--use_8bit_adam` and
`--enable_xformers_memory_efficient_attention`. Kill it any time; rerun with `--resume_from_checkpoint latest` to continue
with the same loss trajectory.

FaceWorld from scratch on a 2-core CPU (64 px, 32x32x4 latents, 4.2M-parameter UNet, ~35 min):

```bash
python examples/train_text_to_image.py --dataset_name runs/faceworld --vae_path runs/vae \
    --output_dir runs/stage_a --resolution 64 --max_text_length 48 --train_text_encoder \
    --unet_block_out_channels 32 64 128 --train_batch_size 32 --learning_rate 3e-4 --lr_warmup_steps 100 \
    --max_train_steps 1000 --checkpointing_steps 100 --validation_steps 500 --use_ema --ema_decay 0.995 \
    --resume_from_checkpoint latest
```

Stable Diffusion 1.5 on a GPU (FEText-style folder with `image` and `text` columns):

```bash
accelerate launch examples/train_text_to_image.py \
    --pretrained_model_name_or_path stable-diffusion-v1-5/stable-diffusion-v1-5 \
    --dataset_name <FEText folder> --output_dir runs/sd15-fetext --resolution 512 --mixed_precision bf16 \
    --train_batch_size 16 --gradient_checkpointing --learning_rate 1e-5 --lr_warmup_steps 500 \
    --max_train_steps 20000 --snr_gamma 5.0 --text_dropout_prob 0.1 --use_ema --checkpointing_steps 2000 \
    --dataloader_num_workers 8 --report_to tensorboard --resume_from_checkpoint latest
# LoRA instead of a full fine-tune: add --rank 64 --learning_rate 1e-4 (drop --use_ema).
```
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from accelerate import Accelerator
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from diffusers.training_utils import EMAModel, cast_training_params
from diffusers.utils import convert_state_dict_to_diffusers
from peft.utils import get_peft_model_state_dict
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from synfer_diffusers import SynFERPipeline
from synfer_diffusers.hub_utils import write_model_card
from synfer_diffusers.tokenization import train_clip_tokenizer
from synfer_diffusers.training import (
    AnyDataset,
    DiffusionTrainingConfig,
    ExampleTransform,
    StepRandom,
    TrainingSummary,
    add_training_noise,
    add_unet_lora,
    apply_unet_memory_options,
    check_existing_path,
    check_positive,
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
    tokenize_captions,
    training_card_text,
    training_latents,
    training_noise_scheduler,
)

UNET_BLOCK_PAIRS = {"DownBlock2D": "UpBlock2D", "CrossAttnDownBlock2D": "CrossAttnUpBlock2D"}
"""Down block type -> the up block type that mirrors it (the up path runs the levels in reverse)."""


@dataclass(kw_only=True)
class TextToImageTrainingConfig(DiffusionTrainingConfig):
    pretrained_model_name_or_path: str | None = field(
        default=None, metadata={"help": "SynFERPipeline / Stable Diffusion folder or Hub id to fine-tune."}
    )
    vae_path: str | None = field(
        default=None, metadata={"help": "From scratch: the AutoencoderKL folder from examples/train_autoencoder.py."}
    )
    text_dropout_prob: float = field(
        default=0.1, metadata={"help": "Probability of replacing a caption by '' (for classifier-free guidance)."}
    )
    rank: int = field(
        default=0, metadata={"help": "> 0: train a LoRA of this rank instead of the full UNet (was `--lora_rank`)."}
    )
    train_text_encoder: bool = field(default=False, metadata={"help": "Train the text encoder jointly."})
    use_ema: bool = field(
        default=False,
        metadata={"help": "Keep an exponential moving average of the UNet (diffusers' `EMAModel`); save it."},
    )
    ema_decay: float = field(default=0.999, metadata={"help": "EMA decay (with `EMAModel`'s (1+n)/(10+n) warmup)."})
    tokenizer_vocab_size: int = field(default=1024, metadata={"help": "From scratch: BPE vocabulary size."})
    max_text_length: int = field(default=77, metadata={"help": "From scratch: tokens per caption (CLIP: 77)."})
    text_encoder_width: int = field(default=128, metadata={"help": "From scratch: text encoder hidden size."})
    text_encoder_layers: int = field(default=2, metadata={"help": "From scratch: text encoder layers."})
    text_encoder_heads: int = field(default=4, metadata={"help": "From scratch: text encoder attention heads."})
    unet_block_out_channels: list[int] = field(
        default_factory=lambda: [32, 64, 128], metadata={"help": "From scratch: UNet channels per level."}
    )
    unet_down_block_types: list[str] = field(
        default_factory=lambda: ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        metadata={"help": "From scratch: DownBlock2D or CrossAttnDownBlock2D per level; the up path mirrors it."},
    )
    unet_layers_per_block: int = field(default=1, metadata={"help": "From scratch: ResNet layers per level."})
    unet_attention_heads: int = field(default=4, metadata={"help": "From scratch: attention heads per layer."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.pretrained_model_name_or_path is None) == (self.vae_path is None):
            raise ValueError(
                "Give exactly one of `pretrained_model_name_or_path` (fine-tune) and `vae_path` (from scratch)."
            )
        check_existing_path(self, "vae_path")
        if self.pretrained_model_name_or_path and is_local_path(self.pretrained_model_name_or_path):
            check_existing_path(self, "pretrained_model_name_or_path")
        check_positive(self, "rank", allow_zero=True)
        if self.rank and self.vae_path:
            raise ValueError("`rank` needs `pretrained_model_name_or_path`: a LoRA adapts a trained UNet.")
        if self.rank and self.train_text_encoder:
            raise ValueError("`train_text_encoder` is not supported with `rank` (only LoRA weights are saved).")
        check_positive(self, "ema_decay", "tokenizer_vocab_size", "max_text_length", "text_encoder_width")
        check_positive(
            self, "text_encoder_layers", "text_encoder_heads", "unet_layers_per_block", "unet_attention_heads"
        )
        if self.ema_decay >= 1:
            raise ValueError(f"`ema_decay` must be < 1, got {self.ema_decay}.")
        if self.text_encoder_width % self.text_encoder_heads:
            raise ValueError("`text_encoder_width` must be divisible by `text_encoder_heads`.")
        if len(self.unet_down_block_types) != len(self.unet_block_out_channels):
            raise ValueError("`unet_down_block_types` needs one entry per `unet_block_out_channels` level.")
        unknown = sorted(set(self.unet_down_block_types) - set(UNET_BLOCK_PAIRS))
        if unknown or "CrossAttnDownBlock2D" not in self.unet_down_block_types:
            raise ValueError(
                f"`unet_down_block_types` must be from {list(UNET_BLOCK_PAIRS)} with at least one "
                f"CrossAttnDownBlock2D, got {self.unet_down_block_types}."
            )
        if any(c <= 0 or c % 32 for c in self.unet_block_out_channels):
            raise ValueError(
                f"`unet_block_out_channels` must be positive multiples of 32, got {self.unet_block_out_channels}."
            )


def build_text_encoder(config: TextToImageTrainingConfig, tokenizer: CLIPTokenizer) -> CLIPTextModel:
    """A small CLIP text transformer whose vocabulary and special ids match `tokenizer`."""
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.text_encoder_width,
        intermediate_size=4 * config.text_encoder_width,
        num_hidden_layers=config.text_encoder_layers,
        num_attention_heads=config.text_encoder_heads,
        max_position_embeddings=config.max_text_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(text_config)


def build_unet(config: TextToImageTrainingConfig, latent_size: int, latent_channels: int) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=latent_channels,
        out_channels=latent_channels,
        block_out_channels=tuple(config.unet_block_out_channels),
        down_block_types=tuple(config.unet_down_block_types),
        up_block_types=tuple(UNET_BLOCK_PAIRS[t] for t in reversed(config.unet_down_block_types)),
        layers_per_block=config.unet_layers_per_block,
        cross_attention_dim=config.text_encoder_width,
        attention_head_dim=config.unet_attention_heads,  # diffusers' historical name: the number of heads
    )


STABLE_DIFFUSION_SCHEDULE = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type="epsilon"
)
"""Stable Diffusion's training schedule (scaled-linear betas 0.00085 -> 0.012, 1000 steps, epsilon): from scratch."""


def load_components(config: TextToImageTrainingConfig, dataset: AnyDataset) -> dict:
    """`vae`, `tokenizer`, `text_encoder`, `unet` and the training `noise_scheduler`: from the pretrained pipeline,
    or built from scratch around `--vae_path` (the tokenizer is then trained on the dataset's captions)."""
    if config.pretrained_model_name_or_path:
        pipe = load_pretrained(SynFERPipeline.from_pretrained, config)
        components = {k: getattr(pipe, k) for k in ("vae", "tokenizer", "text_encoder", "unet")}
        return {**components, "noise_scheduler": training_noise_scheduler(pipe.scheduler.config, config.prediction_type)}
    vae = AutoencoderKL.from_pretrained(config.vae_path)
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    if config.resolution % scale:
        raise ValueError(
            f"`resolution` {config.resolution} must be divisible by the VAE's downsampling factor {scale}."
        )
    captions = (row[config.caption_column] for row in dataset.select_columns([config.caption_column]))
    tokenizer = train_clip_tokenizer(
        captions, vocab_size=config.tokenizer_vocab_size, model_max_length=config.max_text_length
    )
    return {
        "vae": vae,
        "tokenizer": tokenizer,
        "text_encoder": build_text_encoder(config, tokenizer),
        "unet": build_unet(config, config.resolution // scale, vae.config.latent_channels),
        "noise_scheduler": training_noise_scheduler(STABLE_DIFFUSION_SCHEDULE, config.prediction_type),
    }


def sampling_scheduler(noise_scheduler: DDPMScheduler) -> DDIMScheduler:
    """The DDIM scheduler saved with the pipeline: the training schedule, no clipping of latents."""
    return DDIMScheduler.from_config(noise_scheduler.config, clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def configure_trainable(
    unet: UNet2DConditionModel, text_encoder: CLIPTextModel, vae: AutoencoderKL, config: TextToImageTrainingConfig,
    accelerator: Accelerator,
) -> None:  # fmt: skip
    """`requires_grad` and dtypes: the frozen parts (VAE, a frozen text encoder, the base UNet under LoRA) in the
    mixed-precision dtype; what trains in float32 (`cast_training_params` for the LoRA weights)."""
    weight_dtype = frozen_weight_dtype(accelerator)
    vae.requires_grad_(False).to(accelerator.device, dtype=weight_dtype)
    text_encoder.requires_grad_(config.train_text_encoder)
    if not config.train_text_encoder:
        text_encoder.to(accelerator.device, dtype=weight_dtype)
    unet.requires_grad_(True)
    if config.rank:
        add_unet_lora(unet, config.rank, config.lora_alpha)  # freezes everything but the LoRA weights
        unet.to(accelerator.device, dtype=weight_dtype)
        cast_training_params(unet, dtype=torch.float32)
    apply_unet_memory_options(unet, config)


def main(argv: Sequence[str] | None = None) -> TrainingSummary:
    config = parse_config(TextToImageTrainingConfig, argv, description=__doc__.splitlines()[0])
    accelerator = prepare_run(config)
    dataset = load_train_split(config, {config.caption_column: "captions (--caption_column)"}, accelerator.num_processes)
    components = load_components(config, dataset)
    vae, tokenizer, text_encoder, unet = (components[k] for k in ("vae", "tokenizer", "text_encoder", "unet"))
    noise_scheduler = components["noise_scheduler"]
    transform = ExampleTransform.from_config(config, text_column=config.caption_column, tokenizer=tokenizer)
    empty_ids = tokenize_captions(tokenizer, [""])

    configure_trainable(unet, text_encoder, vae, config, accelerator)
    batches = diffusion_training_batches(dataset, transform, config, accelerator, vae)
    ema_unet = EMAModel(unet.parameters(), decay=config.ema_decay) if config.use_ema else None
    trained = [p for p in unet.parameters() if p.requires_grad]
    trained += list(text_encoder.parameters()) if config.train_text_encoder else []
    optimizer, lr_scheduler = make_optimizer(config, trained)
    unet, optimizer = accelerator.prepare(unet, optimizer)
    models = {"unet": unet}
    if config.train_text_encoder:  # a frozen module must not be wrapped (DDP needs trainable parameters)
        models["text_encoder"] = text_encoder = accelerator.prepare(text_encoder)
    if ema_unet is not None:
        ema_unet.to(accelerator.device)

    def compute_loss(batch: dict[str, torch.Tensor], random: StepRandom) -> torch.Tensor:
        drop_text, _ = condition_dropout_masks(len(batch["input_ids"]), random, text_prob=config.text_dropout_prob)
        input_ids = drop_captions(batch["input_ids"], drop_text, empty_ids).to(accelerator.device)
        latents = training_latents(batch, vae, random)  # (B, C, h, w)
        noisy_latents, noise, timesteps = add_training_noise(latents, noise_scheduler, random, config.noise_offset)
        with torch.set_grad_enabled(config.train_text_encoder):
            text_embeds = text_encoder(input_ids)[0]  # (B, L, D)
        model_pred = unet(noisy_latents, timesteps, text_embeds).sample
        return diffusion_loss(model_pred, latents, noise, timesteps, noise_scheduler, config.snr_gamma)

    def after_step(completed: int) -> None:
        if ema_unet is not None:
            ema_unet.step(accelerator.unwrap_model(unet).parameters())

    def build_pipeline() -> SynFERPipeline:
        return SynFERPipeline(
            vae=vae, text_encoder=accelerator.unwrap_model(text_encoder), tokenizer=tokenizer,
            unet=accelerator.unwrap_model(unet), scheduler=sampling_scheduler(noise_scheduler),
        )  # fmt: skip

    def validate(step: int) -> None:
        with ema_weights(ema_unet, accelerator.unwrap_model(unet)):
            save_expression_grid(
                build_pipeline(), f"{config.output_dir}/validation/grid-{step:06d}.png",
                config.validation_expressions, config.num_validation_identities, config.validation_prompt,
                seed=config.seed, num_inference_steps=config.validation_inference_steps,
                guidance_scale=config.validation_guidance_scale,
            )  # fmt: skip
        unet.train()
        text_encoder.train(config.train_text_encoder)

    unet.train()
    text_encoder.train(config.train_text_encoder)
    summary = run_training_loop(
        accelerator, config, batches, compute_loss, optimizer, lr_scheduler, models, after_step, validate,
        project="text-to-image", states={"ema_unet": ema_unet} if ema_unet is not None else None,
    )  # fmt: skip
    if accelerator.is_main_process:
        save_outputs(config, build_pipeline(), ema_unet)
    finish_run(accelerator, config)
    return summary


@contextlib.contextmanager
def ema_weights(ema_unet: EMAModel | None, unet: nn.Module) -> Iterator[None]:
    """The UNet holds the EMA weights inside the block (validation), its own weights again after it."""
    if ema_unet is None:
        yield
        return
    ema_unet.store(unet.parameters())
    ema_unet.copy_to(unet.parameters())
    try:
        yield
    finally:
        ema_unet.restore(unet.parameters())


def save_outputs(config: TextToImageTrainingConfig, pipeline: SynFERPipeline, ema_unet: EMAModel | None) -> None:
    """The trained pipeline (the EMA weights, with `--use_ema`) or, with LoRA, the LoRA weights; with a card."""
    if ema_unet is not None:
        ema_unet.copy_to(pipeline.unet.parameters())
    pipeline.to(torch.float32)
    model_card = {
        "base_model": config.pretrained_model_name_or_path,  # None from scratch
        "datasets": [config.dataset_source],
        "training": training_card_text(config, "train_text_to_image.py"),
    }
    if config.rank:
        lora_layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipeline.unet))
        SynFERPipeline.save_lora_weights(config.output_dir, unet_lora_layers=lora_layers)
        lora = pipeline.unet.peft_config["default"]
        write_model_card(
            config.output_dir, "synfer_lora.md", {**model_card, "lora_rank": lora.r, "lora_alpha": lora.lora_alpha}
        )
    else:
        pipeline.save_pretrained(config.output_dir, model_card=model_card)
    print(f"Saved {'LoRA weights' if config.rank else 'the pipeline'} to {config.output_dir}.")


if __name__ == "__main__":
    run_from_command_line(main)
