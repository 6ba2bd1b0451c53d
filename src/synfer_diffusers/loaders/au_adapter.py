"""Portable AU adapter: SynFER's action-unit adapter on its own, for any Stable Diffusion 1.x UNet.

The adapter is what `AUConditionedUNet2DConditionModel.from_unet` adds to a UNet: the AU encoder (MLP + LayerNorm
-> `num_au_tokens` tokens), the learned null AU tokens (the unconditional branch of classifier-free guidance) and
one AU key/value projection per text cross-attention layer (`attn2`):

    out = to_out( Attn(Q, K_text, V_text) + au_scale * Attn(Q, K_au, V_au) ),   K_au = W'_k c_au,  V_au = W'_v c_au.

A saved adapter is a folder (or a Hub repo) with three files:

- `au_adapter.safetensors`: only the adapter's tensors, under the AU UNet's state-dict names;
- `au_adapter_config.json`: `format_version`, `au_space`, `num_au_tokens`, `au_encoder_hidden_dim`,
  `cross_attention_dim` and the `attention_layers` it was made for (name -> AU key/value shapes and heads), so that
  a UNet of another layout is refused before anything is loaded;
- `README.md`: a model card (`model_cards/au_adapter.md`).

[`load_au_adapter`] puts it on a plain [`~diffusers.UNet2DConditionModel`] (someone's fine-tune, or a UNet with a
LoRA fused into it) by converting it with `AUConditionedUNet2DConditionModel.from_unet` and loading the tensors
strictly. LoRA weights load on top afterwards with the usual `load_lora_weights`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import torch
from diffusers import DiffusionPipeline, UNet2DConditionModel
from diffusers.models.attention_processor import Attention
from huggingface_hub import hf_hub_download
from safetensors.torch import load_file, save_file

from ..facs import AUSpace
from ..hub_utils import push_folder_to_hub, write_model_card
from ..models.unet_au import AUConditionedUNet2DConditionModel

AU_ADAPTER_WEIGHTS_NAME = "au_adapter.safetensors"
AU_ADAPTER_CONFIG_NAME = "au_adapter_config.json"
AU_ADAPTER_FORMAT_VERSION = 1
AU_ADAPTER_MODEL_CARD = "au_adapter.md"
AU_ADAPTER_TAGS = ["synfer", "action-units", "au-adapter", "stable-diffusion", "facial-expression-recognition"]
_CONFIG_KEYS = (
    "format_version", "au_space", "num_au_tokens", "au_encoder_hidden_dim", "cross_attention_dim", "attention_layers",
)  # fmt: skip


def cross_attention_layout(unet: UNet2DConditionModel) -> dict[str, dict[str, Any]]:
    """`{layer name: {"to_k_au": [out, in], "to_v_au": [out, in], "heads": h}}` for every cross-attention layer of
    `unet`: the shapes an AU key/value projection of that layer has (those of its text `to_k` / `to_v`)."""
    return {
        name: {
            "to_k_au": [module.to_k.out_features, module.to_k.in_features],
            "to_v_au": [module.to_v.out_features, module.to_v.in_features],
            "heads": module.heads,
        }
        for name, module in unet.named_modules()
        if isinstance(module, Attention) and module.is_cross_attention
    }


def export_au_adapter(unet: AUConditionedUNet2DConditionModel, base_model: str | None = None) -> dict[str, Any]:
    r"""
    The AU adapter of `unet` in memory: what [`save_au_adapter`] writes and [`load_au_adapter`] accepts.

    Args:
        unet ([`AUConditionedUNet2DConditionModel`]): the UNet whose adapter is exported.
        base_model (`str`, *optional*): the base checkpoint the adapter was trained on, recorded in the config.

    Returns:
        `dict`: `{"config": <au_adapter_config.json content>, "state_dict": {name: tensor}}`.

    Example:

    ```py
    >>> from synfer_diffusers.loaders import export_au_adapter, load_au_adapter

    >>> adapter = export_au_adapter(au_unet)  # au_unet: a trained AUConditionedUNet2DConditionModel
    >>> other_au_unet = load_au_adapter(other_sd15_unet, adapter)  # no files in between
    ```
    """
    if not isinstance(unet, AUConditionedUNet2DConditionModel):
        raise ValueError(
            f"`unet` must be an AUConditionedUNet2DConditionModel to export an AU adapter, got {type(unet).__name__}."
        )
    config = {
        "format_version": AU_ADAPTER_FORMAT_VERSION,
        **_adapter_settings(unet),
        "cross_attention_dim": unet.config.cross_attention_dim,
        "attention_layers": cross_attention_layout(unet),
        "base_model": base_model,
    }
    return {"config": config, "state_dict": unet.au_state_dict()}


def _adapter_settings(unet: AUConditionedUNet2DConditionModel) -> dict[str, Any]:
    """AU space, token count and AU-encoder width of an AU UNet's adapter (the width as built, never `None`)."""
    return {
        "au_space": unet.au_space.to_config(),
        "num_au_tokens": unet.config.num_au_tokens,
        "au_encoder_hidden_dim": unet.au_encoder.mlp[0].out_features,
    }


def save_au_adapter(
    unet: AUConditionedUNet2DConditionModel,
    save_directory: str | os.PathLike,
    base_model: str | None = None,
    license: str | None = None,
    model_card: Mapping[str, Any] | None = None,
    push_to_hub: bool = False,
    repo_id: str | None = None,
    token: str | None = None,
) -> None:
    r"""
    Saves only the AU adapter of `unet`: `au_adapter.safetensors`, `au_adapter_config.json` and a `README.md` card.

    Args:
        unet ([`AUConditionedUNet2DConditionModel`]): the UNet whose adapter is saved (in its dtype).
        save_directory (`str` or `os.PathLike`): the folder to write (created if needed).
        base_model (`str`, *optional*): Hub id of the base model the adapter was trained on; goes into the card's
            metadata (`base_model`) and the config.
        license (`str`, *optional*): the card's `license` (e.g. `"creativeml-openrail-m"` for SD 1.5).
        model_card (`dict`, *optional*): more card fields (`model_name`, `training`, `evaluation`, `datasets`, ...).
        push_to_hub (`bool`, defaults to False): then upload the folder in one commit to `repo_id` (default: the
            folder's name).
        repo_id (`str`, *optional*), token (`str`, *optional*): Hub repository and token for `push_to_hub`.

    Example:

    ```py
    >>> from synfer_diffusers.loaders import save_au_adapter

    >>> save_au_adapter(pipe.unet, "synfer-au-adapter", base_model="stable-diffusion-v1-5/stable-diffusion-v1-5",
    ...                 push_to_hub=True, repo_id="user/synfer-au-adapter")
    ```
    """
    adapter = export_au_adapter(unet, base_model=base_model)
    os.makedirs(save_directory, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in adapter["state_dict"].items()}
    save_file(tensors, os.path.join(save_directory, AU_ADAPTER_WEIGHTS_NAME), metadata={"format": "pt"})
    with open(os.path.join(save_directory, AU_ADAPTER_CONFIG_NAME), "w", encoding="utf-8") as file:
        json.dump(adapter["config"], file, indent=2)
    write_model_card(save_directory, AU_ADAPTER_MODEL_CARD, {**_card_fields(adapter, license), **(model_card or {})})
    if push_to_hub:
        push_folder_to_hub(
            save_directory, repo_id or os.path.basename(os.path.abspath(save_directory)),
            commit_message="Upload SynFER AU adapter", token=token,
        )  # fmt: skip


def _card_fields(adapter: Mapping[str, Any], license: str | None) -> dict[str, Any]:
    config = adapter["config"]
    space = AUSpace.from_config(config["au_space"])
    return {
        "tags": AU_ADAPTER_TAGS,
        "base_model": config["base_model"],
        "license": license,
        "au_space": space.describe(),
        "au_kind": space.kind,
        "num_au_tokens": config["num_au_tokens"],
        "au_encoder_hidden_dim": config["au_encoder_hidden_dim"],
        "cross_attention_dim": config["cross_attention_dim"],
        "num_attention_layers": len(config["attention_layers"]),
        "adapter_parameters": sum(t.numel() for t in adapter["state_dict"].values()),
    }


def load_au_adapter(
    unet_or_pipeline: UNet2DConditionModel | DiffusionPipeline,
    pretrained_model_name_or_path_or_dict: str | os.PathLike | Mapping[str, Any],
    subfolder: str | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    force_download: bool = False,
    local_files_only: bool = False,
) -> AUConditionedUNet2DConditionModel:
    r"""
    Puts a saved AU adapter on a Stable Diffusion 1.x UNet and returns the AU-conditioned UNet.

    A plain [`~diffusers.UNet2DConditionModel`] is converted with `AUConditionedUNet2DConditionModel.from_unet`
    (a new model on the UNet's device, in its dtype and train/eval mode; the given UNet is left unchanged). An
    [`AUConditionedUNet2DConditionModel`] with the same AU space, token count and encoder width gets the adapter's
    tensors in place. Given a pipeline, its `unet` is used and replaced by the result (`register_modules`).

    The UNet must have the adapter's `cross_attention_dim` and exactly its cross-attention layers (names, key/value
    shapes and heads), and the tensors must be exactly the adapter's (no key missing or unexpected, same shapes);
    otherwise a `ValueError` names the field, layer or key, and nothing is changed. Only safetensors are read.

    Args:
        unet_or_pipeline ([`~diffusers.UNet2DConditionModel`] or a pipeline with a `unet`): where the adapter goes.
            Load the adapter before any LoRA, or fuse the LoRA first (`fuse_lora()` then `unload_lora_weights()`).
        pretrained_model_name_or_path_or_dict (`str`, `os.PathLike` or `dict`): a folder written by
            [`save_au_adapter`], a Hub repo id holding one, or the dict of [`export_au_adapter`].
        subfolder (`str`, *optional*): the adapter's folder inside the folder or repo.
        token, revision, cache_dir, force_download, local_files_only: as in `huggingface_hub.hf_hub_download`,
            for a repo id (offline, `HF_HUB_OFFLINE=1` or `local_files_only=True` reads the local cache).

    Returns:
        [`AUConditionedUNet2DConditionModel`]: the UNet with the adapter.

    Example:

    ```py
    >>> from diffusers import UNet2DConditionModel
    >>> from synfer_diffusers.loaders import load_au_adapter

    >>> base = UNet2DConditionModel.from_pretrained("someone/sd15-finetune", subfolder="unet")
    >>> unet = load_au_adapter(base, "user/synfer-au-adapter")
    >>> noise_pred = unet(latents, t, text_embeds, action_units=unet.au_space.to_tensor({"AU12": 4.0})).sample
    ```
    """
    pipeline = None if isinstance(unet_or_pipeline, torch.nn.Module) else unet_or_pipeline
    unet = getattr(pipeline, "unet", None) if pipeline is not None else unet_or_pipeline
    if not isinstance(unet, UNet2DConditionModel):
        raise ValueError(
            "`unet_or_pipeline` must be a UNet2DConditionModel or a pipeline with one as `unet`, got "
            f"{type(unet_or_pipeline).__name__}."
        )
    if isinstance(pretrained_model_name_or_path_or_dict, Mapping):
        adapter = pretrained_model_name_or_path_or_dict
    else:
        adapter = _read_adapter(
            pretrained_model_name_or_path_or_dict, subfolder, token=token, revision=revision, cache_dir=cache_dir,
            force_download=force_download, local_files_only=local_files_only,
        )  # fmt: skip
    config, state_dict = _check_adapter(adapter)
    _check_unet(unet, config)
    if isinstance(unet, AUConditionedUNet2DConditionModel):
        au_unet = unet
    else:
        au_unet = AUConditionedUNet2DConditionModel.from_unet(
            unet, au_space=AUSpace.from_config(config["au_space"]), num_au_tokens=config["num_au_tokens"],
            au_encoder_hidden_dim=config["au_encoder_hidden_dim"],
        ).train(unet.training)  # fmt: skip
    _load_adapter_tensors(au_unet, state_dict)
    if pipeline is not None:
        pipeline.register_modules(unet=au_unet)
    return au_unet


def _read_adapter(
    path_or_repo_id: str | os.PathLike, subfolder: str | None, **hub_kwargs: Any
) -> dict[str, Any]:
    """`{"config", "state_dict"}` from a folder or a Hub repo (two files; safetensors only)."""
    paths = {}
    for name in (AU_ADAPTER_CONFIG_NAME, AU_ADAPTER_WEIGHTS_NAME):
        if os.path.isdir(path_or_repo_id):
            path = os.path.join(path_or_repo_id, subfolder or "", name)
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"{path} does not exist: an AU adapter folder holds {AU_ADAPTER_CONFIG_NAME} and "
                    f"{AU_ADAPTER_WEIGHTS_NAME} (written by `save_au_adapter`; only safetensors are read)."
                )
        else:
            path = hf_hub_download(str(path_or_repo_id), name, subfolder=subfolder, **hub_kwargs)
        paths[name] = path
    with open(paths[AU_ADAPTER_CONFIG_NAME], encoding="utf-8") as file:
        config = json.load(file)
    return {"config": config, "state_dict": load_file(paths[AU_ADAPTER_WEIGHTS_NAME])}


def _check_adapter(adapter: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    if set(adapter) != {"config", "state_dict"}:
        raise ValueError(
            "An AU adapter dict has the keys 'config' and 'state_dict' (see `export_au_adapter`), got "
            f"{sorted(adapter)}."
        )
    config = dict(adapter["config"])
    if config.get("format_version") != AU_ADAPTER_FORMAT_VERSION:
        raise ValueError(
            f"`format_version` {config.get('format_version')!r} of the AU adapter is not supported; this version of "
            f"synfer_diffusers reads format {AU_ADAPTER_FORMAT_VERSION}."
        )
    missing = [k for k in _CONFIG_KEYS if k not in config]
    if missing:
        raise ValueError(f"The AU adapter config lacks {missing}.")
    return config, dict(adapter["state_dict"])


def _check_unet(unet: UNet2DConditionModel, config: Mapping[str, Any]) -> None:
    """Raises a `ValueError` naming the first difference between `unet` and what the adapter was made for."""
    if any(".base_layer." in name for name, _ in unet.named_parameters()):
        raise ValueError(
            "`unet` carries peft (LoRA) layers: load the AU adapter first and the LoRA afterwards, or fuse the LoRA "
            "into the weights first (`pipe.fuse_lora()` then `pipe.unload_lora_weights()`)."
        )
    if unet.config.cross_attention_dim != config["cross_attention_dim"]:
        raise ValueError(
            f"`cross_attention_dim`: the AU adapter was made for {config['cross_attention_dim']}, the UNet has "
            f"{unet.config.cross_attention_dim}."
        )
    expected, found = config["attention_layers"], cross_attention_layout(unet)
    for name in sorted(expected.keys() | found.keys()):
        if name not in found:
            raise ValueError(f"`attention_layers`: the UNet has no cross-attention layer {name} (the AU adapter has).")
        if name not in expected:
            raise ValueError(f"`attention_layers`: the AU adapter has no weights for the UNet's layer {name}.")
        if found[name] != expected[name]:
            raise ValueError(
                f"`attention_layers`: layer {name} is {found[name]}, the AU adapter expects {expected[name]}."
            )
    if isinstance(unet, AUConditionedUNet2DConditionModel):
        for key, value in _adapter_settings(unet).items():
            if value != config[key]:
                raise ValueError(
                    f"`{key}`: the UNet already has an AU adapter with {value}, this one has {config[key]}; load it "
                    "onto `unet.to_base_unet()` instead."
                )


def _load_adapter_tensors(unet: AUConditionedUNet2DConditionModel, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Copies the adapter's tensors into `unet` (cast to its dtype and device) after checking keys and shapes."""
    expected = unet.au_state_dict()
    missing, unexpected = sorted(expected.keys() - state_dict.keys()), sorted(state_dict.keys() - expected.keys())
    if missing or unexpected:
        raise ValueError(
            f"The AU adapter's tensors do not match the UNet: missing {missing[:5]}, unexpected {unexpected[:5]}."
        )
    for key, tensor in state_dict.items():
        if tensor.shape != expected[key].shape:
            raise ValueError(
                f"The AU adapter's tensor {key} has shape {tuple(tensor.shape)}, the UNet expects "
                f"{tuple(expected[key].shape)}."
            )
    unet.load_state_dict(state_dict, strict=False)


class AUAdapterLoaderMixin:
    """Pipeline methods for a portable AU adapter on the pipeline's `unet` (see [`load_au_adapter`]).

    Example:

    ```py
    >>> from diffusers import StableDiffusionPipeline
    >>> from synfer_diffusers import SynFERPipeline

    >>> sd = StableDiffusionPipeline.from_pretrained("someone/sd15-finetune")
    >>> pipe = SynFERPipeline.from_pipe(sd)  # shares sd's components; its plain UNet is a text-only model
    >>> pipe.load_au_adapter("user/synfer-au-adapter")  # pipe.unet is now an AUConditionedUNet2DConditionModel
    >>> image = pipe(prompt="a photo of an old man", expression="happy").images[0]
    ```
    """

    def load_au_adapter(
        self, pretrained_model_name_or_path_or_dict: str | os.PathLike | Mapping[str, Any], **kwargs: Any
    ) -> None:
        """Replaces `self.unet` by the UNet with the AU adapter (`register_modules`); `kwargs` (`subfolder`, `token`,
        `revision`, `cache_dir`, `force_download`, `local_files_only`) as in [`load_au_adapter`]."""
        load_au_adapter(self, pretrained_model_name_or_path_or_dict, **kwargs)

    def save_au_adapter(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Saves the AU adapter of `self.unet`; `kwargs` (`base_model`, `license`, `model_card`, `push_to_hub`,
        `repo_id`, `token`) as in [`save_au_adapter`]."""
        save_au_adapter(self.unet, save_directory, **kwargs)
