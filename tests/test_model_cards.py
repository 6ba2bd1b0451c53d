"""Model and dataset cards carry the metadata the Hub reads.

Model cards: `library_name`, `pipeline_tag`, `base_model` (Hub ids only), `license` inherited from the base model's
card (a local folder's `README.md` or the Hub's; offline, a missing card never crashes), `datasets` (Hub ids only;
local folders are named in the text), `tags`. Dataset cards: `license` (inherited from the generating model or the
source dataset), `task_categories`, `size_categories`, `source_datasets`, `tags`, `configs`, `dataset_info`.
"""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForImageClassification

from synfer_diffusers import EXPRESSIONS, FERAnnoHead, FERAnnoPipeline, SynFERPipeline
from synfer_diffusers.hub_utils import base_model_card_data, render_model_card

ROOT = Path(__file__).resolve().parents[1]
SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SD15_LICENSE = "creativeml-openrail-m"
PACKAGE_TAGS = {"synfer", "facial-expression-recognition", "action-units"}


def card_parts(folder: Path) -> tuple[dict, str]:
    """`(YAML metadata, text)` of `folder/README.md`."""
    _, front_matter, text = (folder / "README.md").read_text(encoding="utf-8").split("---\n", 2)
    return yaml.safe_load(front_matter), text


def load_example(name: str):
    """Imports `examples/{name}.py` by path (the examples are scripts, not a package)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the file executes
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture()
def sd15_finetune(tmp_path):
    """A local folder whose card says it is a fine-tune of SD 1.5 under SD 1.5's licence."""
    folder = tmp_path / "sd15-finetune"
    folder.mkdir()
    (folder / "README.md").write_text(f"---\nlicense: {SD15_LICENSE}\nbase_model: {SD15}\n---\n\n# A fine-tune\n")
    return folder


@pytest.fixture(scope="module")
def faceworld_dir(tmp_path_factory):
    """A tiny FaceWorld folder (its card: `license: cc0-1.0`), not on the Hub."""
    from synfer_diffusers.data.faceworld import write_faceworld_splits

    folder = tmp_path_factory.mktemp("faceworld")
    write_faceworld_splits(folder, num_train=8, num_test=4, seed=0, show_progress=False)
    return folder


# ----------------------------------------------------------------------------------------------------------
# Licence inheritance and Hub ids (hub_utils)
# ----------------------------------------------------------------------------------------------------------


def test_licence_is_inherited_from_a_local_base_folder_and_an_explicit_one_wins(sd15_finetune):
    card = render_model_card("synfer_pipeline.md", {"base_model": str(sd15_finetune)})
    assert card.data.license == SD15_LICENSE
    assert card.data.base_model == SD15  # the folder is not on the Hub: its own base model is named instead
    assert f"`{sd15_finetune}` (not on the Hub; its base model: `{SD15}`)" in card.text
    explicit = render_model_card("synfer_pipeline.md", {"base_model": str(sd15_finetune), "license": "mit"})
    assert explicit.data.license == "mit"


def test_a_model_without_a_base_gets_the_package_licence():
    card = render_model_card("synfer_pipeline.md", {})
    assert card.data.license == "apache-2.0" and card.data.base_model is None


@pytest.mark.parametrize("base", ["no_card", "bad_yaml", "no_license", "hub_offline"])
def test_a_missing_or_unreadable_base_card_never_crashes(tmp_path, base):
    folder = tmp_path / base
    folder.mkdir()
    if base == "bad_yaml":
        (folder / "README.md").write_text("---\nlicense: [unclosed\n---\n# card\n")
    if base == "no_license":
        (folder / "README.md").write_text("---\ntags:\n- x\n---\n# card\n")
    name = "user/unknown-model" if base == "hub_offline" else str(folder)
    data = base_model_card_data(name)
    assert data["license"] == "other"  # the documented fallback (UNKNOWN_LICENSE)
    assert data.get("base_model") == ("user/unknown-model" if base == "hub_offline" else None)
    card = render_model_card("synfer_pipeline.md", {"base_model": name})
    assert card.data.license == "other" and "check the base model's terms" in card.text


def test_local_dataset_paths_are_named_in_the_text_not_in_datasets(tmp_path):
    local = tmp_path / "my_faces"
    local.mkdir()
    entries = [str(local), "user/faces", "FaceWorld (seed 0, 20k train)", "./relative/folder"]
    card = render_model_card("synfer_pipeline.md", {"datasets": entries})
    assert card.data.datasets == ["user/faces"]
    assert f"`{local}` (not on the Hub)" in card.text
    assert "`FaceWorld (seed 0, 20k train)` (not on the Hub)" in card.text
    assert render_model_card("synfer_pipeline.md", {"datasets": [str(local)]}).data.datasets is None


# ----------------------------------------------------------------------------------------------------------
# Pipeline cards (save_pretrained)
# ----------------------------------------------------------------------------------------------------------


def test_synfer_pipeline_card(tiny_components, tmp_path, sd15_finetune):
    faces = tmp_path / "faces"
    faces.mkdir()
    model_card = {"base_model": str(sd15_finetune), "datasets": [str(faces), "user/faces"]}
    SynFERPipeline(**tiny_components).save_pretrained(tmp_path / "pipe", model_card=model_card)
    metadata, text = card_parts(tmp_path / "pipe")
    assert metadata["library_name"] == "diffusers" and metadata["pipeline_tag"] == "text-to-image"
    assert metadata["license"] == SD15_LICENSE and metadata["base_model"] == SD15
    assert metadata["datasets"] == ["user/faces"] and PACKAGE_TAGS <= set(metadata["tags"])
    assert str(faces) not in str(metadata) and f"`{faces}` (not on the Hub)" in text
    assert f"the local checkpoint `{sd15_finetune}`" in text


def test_feranno_pipeline_card_with_an_offline_hub_base(tiny_components, tmp_path):
    head = FERAnnoHead.from_unet(tiny_components["unet"], hidden_dim=32, num_heads=4, tokens_per_side=4)
    pipe = FERAnnoPipeline(**tiny_components, head=head)
    model_card = {"base_model": "user/synfer-faceworld", "datasets": ["user/fw"]}
    pipe.save_pretrained(tmp_path / "feranno", model_card=model_card)
    metadata, text = card_parts(tmp_path / "feranno")
    assert metadata["library_name"] == "diffusers" and metadata["pipeline_tag"] == "image-classification"
    assert metadata["base_model"] == "user/synfer-faceworld" and metadata["datasets"] == ["user/fw"]
    assert metadata["license"] == "other"  # offline: the base's card cannot be read, so its licence is unknown
    assert metadata["labels"] == list(EXPRESSIONS) and PACKAGE_TAGS <= set(metadata["tags"])
    assert "check the base model's terms" in text


def test_embedded_default_card_is_what_the_card_code_renders():
    from synfer_diffusers.generate import DEFAULT_MODEL_DIR

    metadata, text = card_parts(DEFAULT_MODEL_DIR)
    assert metadata["library_name"] == "diffusers" and metadata["pipeline_tag"] == "text-to-image"
    assert metadata["license"] == "apache-2.0" and PACKAGE_TAGS <= set(metadata["tags"])
    assert "base_model" not in metadata and "datasets" not in metadata  # from scratch, on FaceWorld (not on the Hub)
    assert "FaceWorld (synfer_diffusers.data.faceworld, seed 0, 20k train)` (not on the Hub)" in text

    assemble = load_example("assemble_default_model")
    current = (DEFAULT_MODEL_DIR / "README.md").read_text(encoding="utf-8")
    pipe = SynFERPipeline.from_pretrained(DEFAULT_MODEL_DIR)
    fields = assemble.default_model_card(
        assemble.card_section(current, "Training"), assemble.card_section(current, "Evaluation")
    )
    assert str(render_model_card(pipe.model_card_template, {**pipe.model_card_fields(), **fields})) == current


def test_embedded_default_card_indexes_its_faceworld_numbers_and_tells_how_to_load_it():
    """The default's `model-index` holds every number of its Evaluation table's generated rows, on FaceWorld (the
    Hub's schema, as the strict test Hub checks it); its Usage has an install line and the stock-diffusers route."""
    import re

    from hub_card_rules import card_errors
    from synfer_diffusers.generate import DEFAULT_MODEL_DIR

    readme = (DEFAULT_MODEL_DIR / "README.md").read_text(encoding="utf-8")
    assert card_errors(readme) == []
    metadata, text = card_parts(DEFAULT_MODEL_DIR)
    (index,) = metadata["model-index"]
    (result,) = index["results"]
    assert "FaceWorld" in result["dataset"]["name"] and result["dataset"]["split"] == "test"
    assert all("FaceWorld" in metric["name"] for metric in result["metrics"])
    indexed = {(m["name"].split(": ")[0], m["type"]): m["value"] for m in result["metrics"]}
    table = re.findall(r"^\| (\+ AUs[^|]*|text only) \| \d+ \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$", text, re.M)
    assert len(table) == 3 and indexed == {
        (row.strip(), metric): float(value)
        for row, *values in table
        for metric, value in zip(("accuracy", "mae", "frechet_distance"), values)
    }
    assert "pip install synfer-diffusers" in text
    assert 'DiffusionPipeline.from_pretrained("path/to/this/checkpoint", trust_remote_code=True)' in text


def test_resaving_the_embedded_default_keeps_its_training_evaluation_and_model_index(tmp_path):
    """`SynFERPipeline.from_pretrained(default).save_pretrained(folder)` writes the card's recorded sections and its
    `model-index` again instead of "Not recorded"; a pipeline built in code records none."""
    from synfer_diffusers.generate import DEFAULT_MODEL_DIR
    from synfer_diffusers.hub_utils import card_section

    SynFERPipeline.from_pretrained(DEFAULT_MODEL_DIR).save_pretrained(tmp_path / "resaved")
    original, resaved = (
        Path(folder, "README.md").read_text(encoding="utf-8") for folder in (DEFAULT_MODEL_DIR, tmp_path / "resaved")
    )
    for heading in ("Training", "Evaluation"):
        assert card_section(original, heading) is not None and card_section(resaved, heading) == card_section(
            original, heading
        )
    assert card_parts(tmp_path / "resaved")[0]["model-index"] == card_parts(DEFAULT_MODEL_DIR)[0]["model-index"]
    assert "Not recorded" not in resaved and "No evaluation recorded" not in resaved


def test_assembly_names_the_packages_modules_and_bundles_no_code(tiny_components, tmp_path):
    """The embedded default runs the package's code: `package_layout` turns the stock-diffusers layout that
    `save_pretrained` writes into the package's module names, with no code files, and the folder still loads; the
    shipped default is in that layout."""
    from synfer_diffusers.generate import DEFAULT_MODEL_DIR

    assemble = load_example("assemble_default_model")
    folder = tmp_path / "pipe"
    SynFERPipeline(**tiny_components).save_pretrained(folder)
    assert list(folder.rglob("*.py"))  # the stock-diffusers layout, before
    assemble.package_layout(str(folder))
    for checkpoint in (folder, DEFAULT_MODEL_DIR):
        index = json.loads((checkpoint / "model_index.json").read_text(encoding="utf-8"))
        assert index["_class_name"] == "SynFERPipeline"
        assert index["unet"] == ["synfer_diffusers.models.unet_au", "AUConditionedUNet2DConditionModel"]
        assert not list(checkpoint.rglob("*.py"))
    assert isinstance(SynFERPipeline.from_pretrained(folder), SynFERPipeline)


def test_assembly_adds_an_au_estimator_and_leaves_the_other_components(faceworld_dir, tmp_path):
    """`assemble_default_model.py --add_au_estimator`: the estimator's folders and `model_index.json` entries are
    added, no other component file changes, the estimator maps onto the UNet's AUs, and the card states its measured
    AU MAE once (also when added again)."""
    from synfer_diffusers.tiny import make_tiny_components

    assemble = load_example("assemble_default_model")
    estimator = tmp_path / "au_estimator"
    load_example("train_fer_classifier").main([
        "--dataset_name", str(faceworld_dir), "--output_dir", str(estimator), "--task", "action_units",
        "--hidden_sizes", "8", "16", "--depths", "1", "1", "--max_train_steps", "1", "--train_batch_size", "4",
        "--num_threads", "1", "--seed", "3",
    ])  # fmt: skip
    folder = tmp_path / "default"
    card = assemble.default_model_card("Trained on FaceWorld.", None)
    SynFERPipeline(**make_tiny_components(seed=0)).save_pretrained(folder, model_card=card)
    before = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    argv = ["--add_au_estimator", "--au_estimator", str(estimator), "--output_dir", str(folder)]
    for _ in range(2):
        assemble.main(argv)
    after = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert {p for p in before if after[p] != before[p]} == {Path("model_index.json"), Path("README.md")}
    assert {p.parts[0] for p in set(after) - set(before)} == {"au_estimator", "au_estimator_image_processor"}
    pipe = SynFERPipeline.from_pretrained(folder)
    assert list(pipe.au_estimator.config.au_names) == list(pipe.au_space.names)
    mae = json.loads((estimator / "metrics.json").read_text())["test"]["original"]["mae"]
    _, text = card_parts(folder)
    assert text.count("AU estimator for `pipe.edit(source_action_units=None)`") == 1 and f"AU MAE {mae:.3f}" in text


def test_assembly_adds_a_voter_that_generate_reads(faceworld_dir, tmp_path):
    """`assemble_default_model.py --add_voter NAME=PATH`: the classifier lands in `voters/NAME/` (safetensors),
    `checkpoint_voters` loads it under that name with the same weights, no other file but the card changes, and the
    card names it once with its measured accuracy (also when added again); a classifier of other labels is refused."""
    from synfer_diffusers.generate.model import checkpoint_voters
    from synfer_diffusers.tiny import make_tiny_components

    assemble = load_example("assemble_default_model")
    classifier = tmp_path / "regnet"
    load_example("train_fer_classifier").main([
        "--dataset_name", str(faceworld_dir), "--output_dir", str(classifier), "--architecture", "regnet",
        "--hidden_sizes", "16", "32", "--depths", "1", "1", "--max_train_steps", "1", "--train_batch_size", "4",
        "--num_threads", "1", "--seed", "4",
    ])  # fmt: skip
    folder = tmp_path / "default"
    SynFERPipeline(**make_tiny_components(seed=0)).save_pretrained(
        folder, model_card=assemble.default_model_card("Trained on FaceWorld.", None)
    )
    before = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    for _ in range(2):
        assemble.main(["--add_voter", f"regnet={classifier}", "--output_dir", str(folder)])
    after = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert {p for p in before if after[p] != before[p]} == {Path("README.md")}
    assert {p for p in set(after) - set(before)} == {
        Path("voters/regnet") / name for name in ("config.json", "model.safetensors", "preprocessor_config.json")
    }
    (voter,) = checkpoint_voters(str(folder))
    trained = AutoModelForImageClassification.from_pretrained(classifier)
    assert voter.name == "regnet" and all(
        torch.equal(a, b) for a, b in zip(voter.model.state_dict().values(), trained.state_dict().values())
    )
    accuracy = json.loads((classifier / "metrics.json").read_text())["test"]["original"]["clean_labels"]["accuracy"]
    _, text = card_parts(folder)
    assert text.count("Voter `regnet` of `synfer generate`") == 1 and f"{accuracy:.1%} on" in text

    estimator = tmp_path / "au_estimator"  # an AU regressor: not an expression classifier
    load_example("train_fer_classifier").main([
        "--dataset_name", str(faceworld_dir), "--output_dir", str(estimator), "--task", "action_units",
        "--hidden_sizes", "8", "--depths", "1", "--max_train_steps", "1", "--train_batch_size", "4",
        "--num_threads", "1",
    ])  # fmt: skip
    with pytest.raises(ValueError, match="`add_voter`.*are not"):
        assemble.main(["--add_voter", f"au={estimator}", "--output_dir", str(folder)])
    assert not (folder / "voters" / "au").exists()


def test_assembly_replaces_the_feranno_head_and_its_card_sentence(faceworld_dir, tmp_path):
    """`assemble_default_model.py --replace_feranno PATH`: the checkpoint's head becomes the trained one (same
    weights, in the storage dtype), no other file but its config and the card changes (its bundled code stays), and the card's FERAnno words name the new
    head's steps and measured accuracy instead of the old ones."""
    from safetensors.torch import load_file

    from synfer_diffusers.tiny import make_tiny_components

    assemble = load_example("assemble_default_model")
    folder = tmp_path / "default"
    components = make_tiny_components(seed=0)
    head = FERAnnoHead.from_unet(components["unet"], hidden_dim=32, num_heads=4, tokens_per_side=4)
    card = assemble.default_model_card("Trained: FERAnno head (600 steps; 83.3% on noisy FaceWorld test labels).", None)
    SynFERPipeline(**components, feranno_head=head).save_pretrained(folder, model_card=card)
    trained = tmp_path / "feranno"
    load_example("train_feranno").main([
        "--pretrained_model", str(folder), "--dataset_name", str(faceworld_dir), "--output_dir", str(trained),
        "--resolution", "16", "--train_batch_size", "4", "--max_train_steps", "2", "--validation_steps", "2",
        "--eval_batch_size", "4", "--hidden_dim", "32", "--num_heads", "4", "--tokens_per_side", "4",
        "--label_smoothing", "0.1",
    ])  # fmt: skip
    before = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assemble.main(["--replace_feranno", str(trained), "--output_dir", str(folder), "--storage_dtype", "float32"])
    after = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    weights = Path("feranno_head") / "diffusion_pytorch_model.safetensors"
    changed = {p for p in before if after.get(p) != before[p]}
    assert changed <= {weights, Path("feranno_head/config.json"), Path("README.md")} and set(after) == set(before)
    assert {weights, Path("README.md")} <= changed
    expected = load_file(trained / "head" / "diffusion_pytorch_model.safetensors")
    got = load_file(folder / weights)
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    accuracy = json.loads((trained / "evaluation.json").read_text())["2"]["accuracy"]
    _, text = card_parts(folder)
    assert "600 steps" not in text and f"FERAnno head (2 steps of batch 4, label smoothing 0.1; {accuracy:.1%}" in text


# ----------------------------------------------------------------------------------------------------------
# Training outputs (examples/), tiny
# ----------------------------------------------------------------------------------------------------------


def test_text_to_image_lora_output_has_a_card(faceworld_dir, tmp_path):
    from synfer_diffusers.tiny import make_tiny_base_unet, make_tiny_components

    stage_a = tmp_path / "stage_a"  # a text-only pipeline, fine-tuned from SD 1.5 (as its card says)
    components = {**make_tiny_components(seed=0), "unet": make_tiny_base_unet(seed=0)}
    SynFERPipeline(**components).save_pretrained(stage_a, model_card={"base_model": SD15, "license": SD15_LICENSE})
    argv = [
        "--pretrained_model_name_or_path", str(stage_a), "--dataset_name", str(faceworld_dir),
        "--output_dir", str(tmp_path / "lora"), "--resolution", "16", "--train_batch_size", "4",
        "--max_train_steps", "1", "--rank", "4", "--validation_expressions", "happy",
        "--num_validation_identities", "1", "--validation_inference_steps", "1",
    ]  # fmt: skip
    load_example("train_text_to_image").main(argv)
    assert (tmp_path / "lora" / "pytorch_lora_weights.safetensors").exists()
    metadata, text = card_parts(tmp_path / "lora")
    assert metadata["library_name"] == "diffusers" and metadata["pipeline_tag"] == "text-to-image"
    assert metadata["base_model"] == SD15 and metadata["license"] == SD15_LICENSE
    assert {"lora", *PACKAGE_TAGS} <= set(metadata["tags"]) and "datasets" not in metadata
    assert f'SynFERPipeline.from_pretrained("{stage_a}")' in text and "rank 4" in text
    assert f"`{faceworld_dir}` (not on the Hub)" in text


def test_fer_classifier_output_has_a_card(faceworld_dir, tmp_path):
    argv = [
        "--dataset_name", str(faceworld_dir), "--output_dir", str(tmp_path / "judge"), "--hidden_sizes", "8", "16",
        "--depths", "1", "1", "--max_train_steps", "1", "--train_batch_size", "4", "--num_threads", "1",
    ]  # fmt: skip
    load_example("train_fer_classifier").main(argv)
    metadata, text = card_parts(tmp_path / "judge")
    assert metadata["library_name"] == "transformers" and metadata["pipeline_tag"] == "image-classification"
    assert metadata["license"] == "apache-2.0" and "base_model" not in metadata and "datasets" not in metadata
    assert metadata["labels"] == list(EXPRESSIONS) and "ResNetForImageClassification" in text


def test_autoencoder_output_has_a_card(faceworld_dir, tmp_path):
    argv = [
        "--dataset_name", str(faceworld_dir), "--output_dir", str(tmp_path / "vae"), "--resolution", "16",
        "--block_out_channels", "32", "32", "--train_batch_size", "4", "--max_train_steps", "1",
        "--num_scaling_images", "4", "--num_test_images", "4",
    ]  # fmt: skip
    load_example("train_autoencoder").main(argv)
    metadata, text = card_parts(tmp_path / "vae")
    assert metadata["library_name"] == "diffusers" and "autoencoder" in metadata["tags"]
    assert metadata["license"] == "apache-2.0" and "base_model" not in metadata and "datasets" not in metadata
    assert "4x8x8 latents" in text and "`psnr`" in text


# ----------------------------------------------------------------------------------------------------------
# Dataset cards
# ----------------------------------------------------------------------------------------------------------


def test_synthetic_dataset_card(tiny_components, tmp_path, sd15_finetune):
    from synfer_diffusers.data.writer import SyntheticSetWriter
    from synfer_diffusers.generate import SyntheticSetConfig, TargetLabeler, card_fields, generate_synthetic_dataset

    model_card = {"base_model": str(sd15_finetune)}
    SynFERPipeline(**tiny_components).save_pretrained(tmp_path / "model", model_card=model_card)
    config = SyntheticSetConfig(num_samples=2, shard_size=2, num_inference_steps=1)
    out = tmp_path / "set"
    generate_synthetic_dataset(config, out, model=str(tmp_path / "model"), batch_size=2, show_progress=False)
    metadata, text = card_parts(out)
    assert metadata["task_categories"] == ["image-classification", "text-to-image"]
    assert metadata["size_categories"] == ["n<1K"] and {"synfer", "synthetic"} <= set(metadata["tags"])
    assert metadata["configs"][0]["data_files"] == [{"split": "train", "path": "data/train-*"}]
    assert metadata["dataset_info"]["splits"][0]["num_examples"] == 2 and metadata["source_datasets"] == ["original"]
    assert metadata["license"] == SD15_LICENSE
    assert "## Who is in the data\n\nSynthetic persons only" in text
    assert f"`{tmp_path / 'model'}` is released under `{SD15_LICENSE}`" in text

    # The card fields of this plan: the generating model's licence; Hub AU datasets as source datasets.
    writer = SyntheticSetWriter.from_folder(out)
    plan = {**writer.plan, "au_policy": "dataset", "au_dataset": "user/aus", "au_source": {"name": "user/aus"}}
    card = writer.render_card(card_fields(plan, TargetLabeler(), None))
    assert card.data.license == SD15_LICENSE and card.data.source_datasets == ["original", "extended|user/aus"]


def test_synthetic_dataset_card_counts_the_people_the_plan_asked_for_and_states_its_limits(tiny_components, tmp_path):
    """The card's people table counts, per coarse description and target expression, exactly the rows generated (each
    prompt starts with its description); its Limitations name the voters, the aggregation and FaceWorld."""
    import datasets

    from synfer_diffusers.generate import SyntheticSetConfig, generate_synthetic_dataset

    SynFERPipeline(**tiny_components).save_pretrained(tmp_path / "model")
    descriptions = ["a photo of a child", "a photo of an old man with glasses"]
    config = SyntheticSetConfig(
        num_samples=9, shard_size=9, num_inference_steps=1, descriptions=descriptions,
        expression_distribution={"happy": 0.5, "sad": 0.5},
    )  # fmt: skip
    generate_synthetic_dataset(
        config, tmp_path / "set", model=str(tmp_path / "model"), batch_size=9, show_progress=False
    )
    _, text = card_parts(tmp_path / "set")
    rows = datasets.load_dataset(str(tmp_path / "set"), split="train", cache_dir=str(tmp_path / ".cache"))
    names = rows.features["target_label"].names
    generated = [
        (d, names[t])
        for text_, t in zip(rows["text"], rows["target_label"])
        for d in descriptions
        if text_.startswith(d)
    ]
    assert len(generated) == 9
    header = "| description | " + " | ".join(EXPRESSIONS) + " | all |"
    assert header in text
    for description in descriptions:
        counts = [sum(1 for g in generated if g == (description, e)) for e in EXPRESSIONS]
        assert f"| {description} | {' | '.join(map(str, counts))} | {sum(counts)} |" in text
    limitations = text.split("## Limitations")[1]
    assert "synthetic" in limitations.lower() and "FaceWorld" in limitations
    assert "the generation target (no pseudo-labeller)" in limitations  # the labeller of a model with no voters


def test_fetext_dataset_card_inherits_the_source_licence(faceworld_dir, tmp_path):
    from transformers import ResNetConfig, ResNetForImageClassification
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    from synfer_diffusers import AUSpace
    from synfer_diffusers.data.fetext import FETextConfig, build_fetext_dataset

    names = list(AUSpace.disfa12().names)
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8], depths=[1], num_labels=12, problem_type="regression")
    config.au_names = names
    ResNetForImageClassification(config).save_pretrained(tmp_path / "au")
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "au")
    fetext = FETextConfig(au_estimator=str(tmp_path / "au"), label_column="label", shard_size=8)
    build_fetext_dataset(faceworld_dir, tmp_path / "fetext", fetext, show_progress=False)
    metadata, text = card_parts(tmp_path / "fetext")
    assert metadata["license"] == "cc0-1.0"  # FaceWorld's, from its card
    assert metadata["task_categories"] == ["text-to-image", "image-classification"]
    assert metadata["size_categories"] == ["n<1K"] and {"fetext", "synfer"} <= set(metadata["tags"])
    assert metadata["source_datasets"] == ["original"] and "dataset_info" in metadata  # the source is a local folder
    assert f"## Who is in the data\n\nThe people of the source `{faceworld_dir}`" in text
    assert f"`{faceworld_dir}`: `cc0-1.0` (read from" in text
