"""The portable AU adapter (`synfer_diffusers.loaders`): saved alone, put on any Stable Diffusion 1.x UNet or pipeline.

The adapter under test has every tensor moved away from `from_unet`'s initialisation (`_trained_components`), so a
loader that loaded nothing, or the wrong tensor, could not reproduce its outputs. Hub round trip: as in
`test_hub_roundtrip.py`, the server runs in this process and the client in a subprocess (this file run as a script,
`python tests/test_au_adapter.py <workdir>`), because `HF_ENDPOINT` is read when the HF libraries are imported.
"""

import json
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from huggingface_hub import ModelCard
from safetensors.torch import load_file, save_file

import fork_server
from hub_server import arm_fault, client_env
from synfer_diffusers import AUConditionedUNet2DConditionModel, SynFERPipeline
from synfer_diffusers.loaders import (
    AU_ADAPTER_CONFIG_NAME,
    AU_ADAPTER_WEIGHTS_NAME,
    AUAdapterLoaderMixin,
    export_au_adapter,
    load_au_adapter,
    save_au_adapter,
)
from synfer_diffusers.tiny import make_tiny_base_unet, make_tiny_components

HERE = Path(__file__).resolve().parent
ADAPTER_REPO = "tester/synfer-au-adapter"
NESTED_REPO = "tester/checkpoint-with-au-adapter"
GENERATE = {"prompt": "a photo of a face", "expression": "happy", "action_units": {"AU6": 2.5, "AU12": 4.0},
            "num_inference_steps": 2, "output_type": "np"}  # fmt: skip


class AdapterSynFERPipeline(SynFERPipeline, AUAdapterLoaderMixin):
    """`SynFERPipeline` with the adapter methods (a no-op subclass once SynFERPipeline lists the mixin itself)."""


def _trained_components(seed: int = 0) -> dict:
    """Tiny SynFER components whose AU adapter differs from `from_unet`'s initialisation in every tensor."""
    components = make_tiny_components(seed=seed)
    generator = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for param in components["unet"].trainable_au_parameters():
            param.add_(0.2 * torch.randn(param.shape, generator=generator))
    return components


@torch.no_grad()
def _unet_outputs(unet: UNet2DConditionModel) -> list[torch.Tensor]:
    """Noise predictions with AUs, with the null AU condition and at `au_scale` 0.5."""
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 8, 8, generator=g)
    text = torch.randn(2, 7, 32, generator=g)
    aus = torch.rand(2, 12, generator=g) * 5
    return [
        unet(sample, 500, text, action_units=aus).sample,
        unet(sample, 500, text).sample,
        unet(sample, 500, text, action_units=aus, au_scale=0.5).sample,
    ]


def _stock_sd_pipeline(components: dict, unet: UNet2DConditionModel) -> StableDiffusionPipeline:
    return StableDiffusionPipeline(
        vae=components["vae"], text_encoder=components["text_encoder"], tokenizer=components["tokenizer"], unet=unet,
        scheduler=components["scheduler"], safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip


def _images(pipe, **kwargs) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    return pipe(generator=torch.Generator().manual_seed(0), **{**GENERATE, **kwargs}).images


@pytest.fixture()
def trained():
    return _trained_components()


@pytest.fixture()
def adapter_dir(trained, tmp_path):
    save_au_adapter(trained["unet"], tmp_path / "adapter")
    return tmp_path / "adapter"


def test_adapter_on_a_fresh_unet_gives_bit_identical_outputs(trained, adapter_dir):
    fresh = make_tiny_base_unet(seed=0).eval()  # the same base weights as the AU UNet's base
    unet = load_au_adapter(fresh, adapter_dir)
    assert type(unet) is AUConditionedUNet2DConditionModel and unet.au_space == trained["unet"].au_space
    for got, expected in zip(_unet_outputs(unet), _unet_outputs(trained["unet"])):
        assert torch.equal(got, expected)
    assert type(fresh) is UNet2DConditionModel and not any("_au" in key for key in fresh.state_dict())  # untouched


def test_pipeline_route_from_pipe_gives_the_same_images(trained, tmp_path):
    """`SynFERPipeline.from_pipe(stock SD pipeline)` + `load_au_adapter` generates exactly what the SynFER pipeline
    the adapter came from generates, and saves as a full SynFER checkpoint that reloads to the same images."""
    reference = AdapterSynFERPipeline(**trained)
    reference.save_au_adapter(tmp_path / "adapter")
    sd = _stock_sd_pipeline(trained, make_tiny_base_unet(seed=0))
    pipe = AdapterSynFERPipeline.from_pipe(sd)
    assert pipe.unet is sd.unet and pipe.feranno_head is None and pipe.guidance_classifier is None
    text_only = _images(pipe, action_units=None)  # a plain UNet is a text-only SynFER model
    pipe.load_au_adapter(tmp_path / "adapter")
    assert isinstance(pipe.unet, AUConditionedUNet2DConditionModel) and type(sd.unet) is UNet2DConditionModel
    assert pipe.config["unet"] == ("synfer_diffusers.models.unet_au", "AUConditionedUNet2DConditionModel")
    expected = _images(reference)
    assert np.array_equal(_images(pipe), expected) and not np.allclose(text_only, expected, atol=1e-3)
    pipe.save_pretrained(tmp_path / "pipeline")
    assert np.array_equal(_images(SynFERPipeline.from_pretrained(tmp_path / "pipeline")), expected)


def test_dict_form_loads_in_place_into_an_au_unet_with_the_same_adapter_layout(trained):
    target = make_tiny_components(seed=0)["unet"]  # same base, adapter at its initialisation
    assert not torch.equal(_unet_outputs(target)[0], _unet_outputs(trained["unet"])[0])
    assert load_au_adapter(target, export_au_adapter(trained["unet"])) is target
    for got, expected in zip(_unet_outputs(target), _unet_outputs(trained["unet"])):
        assert torch.equal(got, expected)


def test_dtype_device_and_mode_are_kept(trained, adapter_dir):
    fresh = make_tiny_base_unet(seed=0).to(torch.bfloat16).train()
    unet = load_au_adapter(fresh, adapter_dir)
    assert unet.training and unet.device == fresh.device
    assert {p.dtype for p in unet.parameters()} == {torch.bfloat16}
    for key, tensor in trained["unet"].au_state_dict().items():
        assert torch.equal(unet.state_dict()[key], tensor.to(torch.bfloat16)), key


def _bigger_unet() -> UNet2DConditionModel:
    """Cross-attention in both levels: one more `attn2` layer set than the tiny SD UNet."""
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=(2, 4), norm_num_groups=32,
    )  # fmt: skip


@pytest.mark.parametrize(
    "make_unet, match",
    [
        (lambda: make_tiny_base_unet(seed=0, cross_attention_dim=16), r"`cross_attention_dim`: .* made for 32, .* 16"),
        (_bigger_unet, r"`attention_layers`: the AU adapter has no weights for the UNet's layer down_blocks\.0\."),
        (lambda: make_tiny_components(num_au_tokens=3)["unet"], r"`num_au_tokens`: .* already has .* 3, .* 2"),
    ],
    ids=["cross_attention_dim", "layer_set", "other_au_adapter"],
)
def test_mismatching_unet_is_refused_and_left_unchanged(trained, adapter_dir, make_unet, match):
    sd = _stock_sd_pipeline(trained, make_unet())
    pipe = AdapterSynFERPipeline.from_pipe(sd)
    unet = pipe.unet
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        pipe.load_au_adapter(adapter_dir)
    assert pipe.unet is unet and pipe.config["unet"][1] == type(unet).__name__
    assert all(torch.equal(v, before[k]) for k, v in unet.state_dict().items())


def test_other_heads_are_refused(adapter_dir):
    """The tiny SD UNet's shapes, with 8 attention heads instead of 4 in its cross-attention level."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 8), norm_num_groups=32,
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"layer down_blocks\.1\.attentions\.0\.\S+ is .*'heads': 8.* expects"):
        load_au_adapter(unet, adapter_dir)


def _drop_null_tokens(config, tensors):
    tensors.pop("au_null_tokens")


def _add_key(config, tensors):
    tensors["au_encoder.extra.weight"] = torch.zeros(2)


def _reshape_null_tokens(config, tensors):
    tensors["au_null_tokens"] = torch.zeros(3, 32)


def _future_format(config, tensors):
    config["format_version"] = 2


@pytest.mark.parametrize(
    "corrupt, match",
    [
        (_drop_null_tokens, r"missing \['au_null_tokens'\]"),
        (_add_key, r"unexpected \['au_encoder\.extra\.weight'\]"),
        (_reshape_null_tokens, r"tensor au_null_tokens has shape \(3, 32\), the UNet expects \(2, 32\)"),
        (_future_format, r"`format_version` 2"),
    ],
    ids=["missing", "unexpected", "shape", "format_version"],
)
def test_mismatching_adapter_files_are_refused(adapter_dir, corrupt, match):
    config = json.loads((adapter_dir / AU_ADAPTER_CONFIG_NAME).read_text())
    tensors = load_file(adapter_dir / AU_ADAPTER_WEIGHTS_NAME)
    corrupt(config, tensors)
    (adapter_dir / AU_ADAPTER_CONFIG_NAME).write_text(json.dumps(config))
    save_file(tensors, adapter_dir / AU_ADAPTER_WEIGHTS_NAME)
    with pytest.raises(ValueError, match=match):
        load_au_adapter(make_tiny_base_unet(seed=0), adapter_dir)


def test_only_safetensors_no_pickle(trained, adapter_dir, monkeypatch):
    assert sorted(os.listdir(adapter_dir)) == sorted(["README.md", AU_ADAPTER_CONFIG_NAME, AU_ADAPTER_WEIGHTS_NAME])
    assert set(load_file(adapter_dir / AU_ADAPTER_WEIGHTS_NAME)) == set(trained["unet"].au_state_dict())

    def refuse(*args, **kwargs):
        raise AssertionError("the AU adapter loader unpickled something")

    for module, name in [(torch, "load"), (pickle, "load"), (pickle, "loads"), (pickle, "Unpickler")]:
        monkeypatch.setattr(module, name, refuse)
    assert torch.equal(_unet_outputs(load_au_adapter(make_tiny_base_unet(seed=0), adapter_dir))[0],
                       _unet_outputs(trained["unet"])[0])  # fmt: skip
    monkeypatch.undo()
    torch.save(trained["unet"].au_state_dict(), adapter_dir / "au_adapter.bin")
    (adapter_dir / AU_ADAPTER_WEIGHTS_NAME).unlink()
    with pytest.raises(FileNotFoundError, match="only safetensors are read"):
        load_au_adapter(make_tiny_base_unet(seed=0), adapter_dir)


def test_lora_loads_on_top_of_the_adapter_and_changes_outputs(trained, adapter_dir, tmp_path):
    """A LoRA trained for the base model (saved by `StableDiffusionPipeline.save_lora_weights`) loads with
    `load_lora_weights` after the adapter, changes the images, leaves the AU projections alone, and acts as on the
    base: the same images as fusing it into the base UNet before the adapter is loaded."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    lora_base = make_tiny_base_unet(seed=0)
    lora_base.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                     init_lora_weights=False))  # fmt: skip
    StableDiffusionPipeline.save_lora_weights(tmp_path / "lora", unet_lora_layers=get_peft_model_state_dict(lora_base))

    pipe = AdapterSynFERPipeline.from_pipe(_stock_sd_pipeline(trained, make_tiny_base_unet(seed=0)))
    pipe.load_au_adapter(adapter_dir)
    without_lora = _images(pipe)
    pipe.load_lora_weights(tmp_path / "lora")
    with_lora = _images(pipe)
    assert not np.allclose(with_lora, without_lora, atol=1e-3)
    assert not any("_au." in name and "lora" in name for name, _ in pipe.unet.named_parameters())
    assert not np.allclose(_images(pipe, au_scale=0.0), with_lora, atol=1e-3)  # the AUs still act

    sd = _stock_sd_pipeline(trained, make_tiny_base_unet(seed=0))
    sd.load_lora_weights(tmp_path / "lora")
    with pytest.raises(ValueError, match="load the AU adapter first and the LoRA afterwards"):
        load_au_adapter(sd.unet, adapter_dir)
    sd.fuse_lora()
    sd.unload_lora_weights()
    fused_first = AdapterSynFERPipeline.from_pipe(sd)
    fused_first.load_au_adapter(adapter_dir)
    assert np.allclose(_images(fused_first), with_lora, atol=1e-5)


def test_model_card_metadata(trained, tmp_path):
    save_au_adapter(trained["unet"], tmp_path / "a", base_model="someone/sd15-finetune",
                    license="creativeml-openrail-m", model_card={"training": "FaceWorld, 600 steps."})  # fmt: skip
    card = ModelCard.load(tmp_path / "a" / "README.md")
    # diffusers cannot load an adapter alone: the card claims no library
    assert card.data.library_name is None and {"synfer", "action-units"} <= set(card.data.tags)
    assert card.data.base_model in ("someone/sd15-finetune", ["someone/sd15-finetune"])
    assert card.data.license == "creativeml-openrail-m"
    assert "4 text cross-attention layers" in card.text and "| AU12 | lip corner puller |" in card.text
    assert 'load_au_adapter("path/to/this/adapter")' in card.text and "FaceWorld, 600 steps." in card.text
    save_au_adapter(trained["unet"], tmp_path / "b")
    assert ModelCard.load(tmp_path / "b" / "README.md").data.base_model is None


# ----------------------------------------------------------------------------------------------------------
# Hub: load by repo id (and from a subfolder, and from the cache with the server refusing downloads)
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client_run(hub, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("au_adapter_client")
    result = fork_server.run([sys.executable, __file__, str(workdir)], env=client_env(hub),
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    files = hub.files("model", ADAPTER_REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), files


@pytest.mark.slow  # one subprocess that imports the HF stack
def test_load_by_repo_id_from_the_hub(client_run):
    observations, files = client_run
    published = sorted(f for f in files if f != ".gitattributes")  # the Hub makes .gitattributes with the repo
    assert published == sorted(["README.md", AU_ADAPTER_CONFIG_NAME, AU_ADAPTER_WEIGHTS_NAME])
    assert observations == {"repo_id": True, "subfolder": True, "cached_while_server_refuses": True}




def _client(workdir: Path) -> dict:
    from synfer_diffusers.hub_utils import push_folder_to_hub

    torch.set_num_threads(1)
    source = _trained_components()["unet"]
    expected = _unet_outputs(source)
    save_au_adapter(source, workdir / "adapter", push_to_hub=True, repo_id=ADAPTER_REPO)
    save_au_adapter(source, workdir / "checkpoint" / "au_adapter")
    push_folder_to_hub(workdir / "checkpoint", NESTED_REPO)

    def same(unet) -> bool:
        return all(torch.equal(a, b) for a, b in zip(_unet_outputs(unet), expected))

    observations = {
        "repo_id": same(load_au_adapter(make_tiny_base_unet(seed=0).eval(), ADAPTER_REPO)),
        "subfolder": same(load_au_adapter(make_tiny_base_unet(seed=0).eval(), NESTED_REPO, subfolder="au_adapter")),
    }
    arm_fault("resolve", times=100)  # every download would fail now: the cache must serve
    cached = load_au_adapter(make_tiny_base_unet(seed=0).eval(), ADAPTER_REPO, local_files_only=True)
    observations["cached_while_server_refuses"] = same(cached)
    arm_fault("resolve", times=0)
    return observations


if __name__ == "__main__":
    print(json.dumps(_client(Path(sys.argv[1]))))
