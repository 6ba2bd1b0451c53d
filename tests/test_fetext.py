"""FEText builder (`synfer build-fetext`): annotators, the build, resume, bad input. Tiny models built in code."""

import os

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from transformers import (
    BertTokenizer,
    CLIPImageProcessor,
    GitConfig,
    GitForCausalLM,
    GitProcessor,
    GPT2Config,
    ResNetConfig,
    ResNetForImageClassification,
    VisionEncoderDecoderConfig,
    ViTConfig,
)
from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

from synfer_diffusers.annotators import AUEstimator, CaptionBatch, ModelCaptioner, TemplateCaptioner
from synfer_diffusers.cli import build_parser
from synfer_diffusers.data.faceworld import build_faceworld_dataset
from synfer_diffusers.data.fetext import (
    FETextConfig,
    build_fetext_dataset,
    fetext_features,
    laplacian_variance,
)
from synfer_diffusers.facs import AUSpace

DISFA = list(AUSpace.disfa12().names)


def tiny_au_model(au_names=DISFA, problem_type="regression", **config) -> ResNetForImageClassification:
    model_config = ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=len(au_names),
        problem_type=problem_type, **config,
    )  # fmt: skip
    model_config.au_names = list(au_names)
    return ResNetForImageClassification(model_config)


def processor() -> ViTImageProcessorPil:
    return ViTImageProcessorPil(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3)


@pytest.fixture(scope="module")
def estimator_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("au_estimator")
    tiny_au_model().save_pretrained(path)
    processor().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def faces():
    return build_faceworld_dataset(9, seed=0).remove_columns(["action_units"])  # AUs are hidden from the builder


def parse(argv):
    return build_parser().parse_args(["build-fetext", *argv])


def test_build_resume_and_plan_checks(tmp_path, estimator_dir, faces):
    source = tmp_path / "faces"
    faces.save_to_disk(source)
    out = tmp_path / "fetext"
    argv = ["--dataset", str(source), "--output-dir", str(out), "--au-estimator", str(estimator_dir),
            "--label-column", "label", "--shard-size", "4", "--batch-size", "3", "--no-progress"]  # fmt: skip
    args = parse(argv)
    assert args.func(args) == 0

    # a per-test cache: datasets keys a card-declared folder on its file patterns and could serve an older run's rows
    built = datasets.load_dataset(str(out), split="train", cache_dir=str(out.parent / "hf_cache"))
    assert built.features == fetext_features(AUSpace.disfa12(), labelled=True)
    assert len(built) == 9 and built["sample_id"] == list(range(9)) and built["source_index"] == list(range(9))
    assert built["label"] == faces["label"]
    aus = np.array(built["action_units"])
    assert aus.shape == (9, 12) and aus.min() >= 0 and aus.max() <= 5
    assert all(t.startswith("a ") for t in built["text"]) and set(built["au_source"]) == {str(estimator_dir)}
    card = (out / "README.md").read_text()
    assert "dataset_info" in card and "AU1, AU2, AU4" in card and (out / "preview.png").is_file()
    assert not (out / ".synfer" / "tmp").exists()

    # Resume: a lost shard (no manifest) is written again, identically; finished shards are kept.
    shard = sorted((out / "data").iterdir())[1]
    original = pq.read_table(shard).to_pydict()
    os.remove(out / ".synfer" / "shards" / "00001.json")
    with pytest.raises(FileExistsError, match="unfinished run"):
        build_fetext_dataset(source, out, FETextConfig(au_estimator=str(estimator_dir), label_column="label",
                                                       shard_size=4), show_progress=False)  # fmt: skip
    result = build_fetext_dataset(source, out, FETextConfig(au_estimator=str(estimator_dir), label_column="label",
                                                            shard_size=4), resume=True, show_progress=False)  # fmt: skip
    assert (result.num_shards, result.num_shards_written) == (3, 1)
    again = pq.read_table(shard).to_pydict()  # batch size 32 instead of 3: equal up to float rounding
    assert again["text"] == original["text"] and again["source_index"] == original["source_index"]
    np.testing.assert_allclose(again["action_units"], original["action_units"], atol=1e-5)

    # A different plan (other captioner seed) is refused and leaves the folder as it was.
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    other = FETextConfig(au_estimator=str(estimator_dir), label_column="label", shard_size=4, caption_seed=1)
    with pytest.raises(FileExistsError, match="different plan"):
        build_fetext_dataset(source, out, other, resume=True, show_progress=False)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_image_folder_with_bad_files(tmp_path, estimator_dir, faces):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        faces[i]["image"].save(folder / f"face{i}.png")
    faces[3]["image"].resize((16, 16)).save(folder / "small.png")
    Image.new("RGB", (64, 64), (120, 90, 80)).save(folder / "flat.png")  # no detail at all: blurry
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "notes.txt").write_text("not an image")  # not an image extension: imagefolder ignores it
    config = FETextConfig(au_estimator=str(estimator_dir), image_size=32, min_sharpness=1.0)

    result = build_fetext_dataset(folder, tmp_path / "out", config, show_progress=False)
    assert result.num_samples == 3 and result.skipped == {"unreadable": 1, "too_small": 1, "blurry": 1}
    built = datasets.load_dataset(str(tmp_path / "out"), split="train", cache_dir=str(tmp_path / "hf_cache"))
    assert "label" not in built.column_names and built[0]["image"].size == (32, 32)
    assert sorted(os.path.basename(f) for f in built["source_file"]) == ["face0.png", "face1.png", "face2.png"]
    assert all("a facial expression" in t or t == "a photo of a face" for t in built["text"])

    strict = FETextConfig(au_estimator=str(estimator_dir), bad_images="error")
    with pytest.raises(ValueError, match="broken.png.*not a readable image"):
        build_fetext_dataset(folder, tmp_path / "strict", strict, show_progress=False)
    assert not (tmp_path / "strict").exists()  # checked before anything is written


def test_au_estimator_maps_by_name():
    space = AUSpace.disfa12()
    reordered = AUEstimator(tiny_au_model(DISFA[::-1]), processor(), space)
    assert reordered.source_index == list(range(11, -1, -1))

    partial = tiny_au_model(DISFA[:10])
    with pytest.raises(ValueError, match=r"not \['AU25', 'AU26'\].*au_fill_missing"):
        AUEstimator(partial, processor(), space)
    filled = AUEstimator(partial, processor(), space, fill_missing=0.0)
    values = filled([Image.new("RGB", (40, 40))] * 2)
    assert values.shape == (2, 12) and (values[:, 10:] == 0).all()

    with pytest.raises(ValueError, match="cannot be mapped to action units"):
        AUEstimator(tiny_au_model(["happy"] + DISFA[1:]), processor(), space)
    with pytest.raises(ValueError, match="problem_type"):
        AUEstimator(tiny_au_model(problem_type="single_label_classification"), processor(), space)
    occurrence = tiny_au_model(DISFA, problem_type="multi_label_classification")
    with pytest.raises(ValueError, match="cannot fill an intensity AU space"):
        AUEstimator(occurrence, processor(), space)
    binary = AUEstimator(occurrence, processor(), AUSpace(tuple(DISFA), "occurrence"))
    assert set(binary([Image.new("RGB", (40, 40))]).unique().tolist()) <= {0.0, 1.0}


def tiny_git_dir(path):
    """A tiny GIT image-text-to-text model with a 14-word BERT vocabulary, saved with its processor."""
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "face", "smile", "brow", "raised", "describe", "the",
             "expression", "."]  # fmt: skip
    path.mkdir()
    (path / "vocab.txt").write_text("\n".join(words) + "\n")
    tokenizer = BertTokenizer(str(path / "vocab.txt"), model_input_names=["input_ids", "attention_mask"])
    image_processor = CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    GitProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    vision = {"hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 1,
              "image_size": 16, "patch_size": 8}  # fmt: skip
    GitForCausalLM(GitConfig(vision_config=vision, vocab_size=len(words), hidden_size=8, num_hidden_layers=1,
                             num_attention_heads=1, intermediate_size=8, bos_token_id=2, eos_token_id=3,
                             pad_token_id=0)).save_pretrained(path)  # fmt: skip
    return path


def test_model_captioner(tmp_path):
    git = tiny_git_dir(tmp_path / "git")
    batch = CaptionBatch([Image.new("RGB", (20, 20))] * 2, [None] * 2, [{}] * 2, [None] * 2, [0, 1])
    prefixed = ModelCaptioner.from_pretrained(git, prompt="describe the expression", max_new_tokens=4)
    assert not prefixed.uses_chat and len(prefixed(batch)) == 2 and all(isinstance(c, str) for c in prefixed(batch))
    assert len(ModelCaptioner.from_pretrained(git, prompt=None, max_new_tokens=4)(batch)) == 2
    prefixed.pipeline.processor.chat_template = (
        "{% for m in messages %}{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
        "{% endfor %}{% endfor %}"
    )
    chat = ModelCaptioner(prefixed.pipeline, "describe the expression", max_new_tokens=4)
    assert chat.uses_chat and len(chat(batch)) == 2


def test_captioners_and_config_errors(tmp_path):
    batch = CaptionBatch([Image.new("RGB", (8, 8))] * 2, ["happy", None], [{"AU6": 2.0, "AU12": 3.5}, {}],
                         ["a photo of an old man", None], [0, 1])  # fmt: skip
    happy, plain = TemplateCaptioner()(batch)
    assert "lip corner puller and cheek raiser" in happy and "old man" in happy and plain == "a photo of a face"
    assert TemplateCaptioner()(batch) == [happy, plain]

    # A caption prompt for a model that takes none fails from its config alone, before any weights load.
    VisionEncoderDecoderConfig.from_encoder_decoder_configs(
        ViTConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8),
        GPT2Config(n_embd=8, n_layer=1, n_head=1),
    ).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="takes no prompt"):
        ModelCaptioner.from_pretrained(tmp_path, prompt="Describe the expression.")
    with pytest.raises(ValueError, match="not an image-text-to-text model"):
        ResNetConfig().save_pretrained(tmp_path / "resnet") or ModelCaptioner.from_pretrained(tmp_path / "resnet")

    with pytest.raises(ValueError, match="`au_space` must be one of"):
        FETextConfig(au_estimator="x", au_space="disfa13")
    with pytest.raises(ValueError, match="`bad_images`"):
        FETextConfig(au_estimator="x", bad_images="ignore")
    assert laplacian_variance(Image.new("L", (16, 16), 128)) == 0.0
