"""`synfer generate` / `SyntheticSetConfig` sampling and voting options: scheduler, dtype, device, negative prompt,
eta, semantic-guidance window / interval / normalisation, voting threshold / weights / label type / discard rule,
and kind-aware prototypes on an OpenGraphAU-41 (occurrence) model.

Each option is checked to reach the pipeline call (a spy on `SynFERPipeline.__call__`) or the labeller, to be in
`plan.json`, and to make a resume with another value a different plan. Tiny components, 16x16 pixels, 2 steps.
"""

import dataclasses
import functools
import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler

from synfer_diffusers import EXPRESSIONS, AUSpace, FERAnnoHead, SynFERPipeline
from synfer_diffusers.cli import main
from synfer_diffusers.generate import (
    SCHEDULERS,
    SyntheticSetConfig,
    TargetLabeler,
    VotingLabeler,
    configure_pipeline,
    default_labeler,
    generate_synthetic_dataset,
    pipeline_inputs,
    plan_sample,
    sample_rows,
)
from synfer_diffusers.generate.flags import parse_label_mapping
from synfer_diffusers.pipelines.synfer.pipeline_output import SynFERPipelineOutput
from synfer_diffusers.tiny import make_tiny_components
from test_editing import make_au_regressor

SMALL = {"num_inference_steps": 2, "height": 16, "width": 16}
CLI_ARGS = ["--num-inference-steps", "2", "--height", "16", "--width", "16", "--no-progress"]
OPTIONS = {
    "scheduler": "DDIMScheduler",  # the pipeline starts with Euler: DDIM must come from the config
    "dtype": "bfloat16",
    "device": "cpu",
    "negative_prompt": "a blurry photo",
    "eta": 0.5,
    "semantic_guidance_window": (0.5, 1.0),
    "semantic_guidance_interval": 1,
    "semantic_guidance_normalization": "per_token",
    "agreement_threshold": 0.5,
    "voter_weights": {"feranno": 2.0},
    "label_type": "soft",
    "discard_rule": "disagreement",
    "aggregation": "paper",
    "au_guidance_scale": 4.0,
    "au_feedback_passes": 1,
    "au_feedback_gain": 0.5,
}
"""Every option at a value other than its default."""
CALL_OPTIONS = ("eta", "semantic_guidance_window", "semantic_guidance_interval", "semantic_guidance_normalization",
                "au_guidance_scale", "au_feedback_passes", "au_feedback_gain")  # fmt: skip


def _feranno_pipeline() -> SynFERPipeline:
    """Tiny components with a FERAnno head (so that there is something to vote with) and an AU estimator (for AU
    feedback), sampling with Euler."""
    components = make_tiny_components(seed=0, sample_size=8)
    components["scheduler"] = EulerDiscreteScheduler.from_config(components["scheduler"].config)
    regressor, processor = make_au_regressor()
    return SynFERPipeline(**components, feranno_head=FERAnnoHead.from_unet(components["unet"]), au_estimator=regressor,
                          au_estimator_image_processor=processor)  # fmt: skip


def _generate(output_dir, pipe, resume=False, **options):
    config = SyntheticSetConfig(num_samples=2, shard_size=2, **SMALL, **options)
    return generate_synthetic_dataset(config, output_dir, pipeline=pipe, batch_size=2, resume=resume,
                                      show_progress=False, process_index=0, num_processes=1)  # fmt: skip


def _load(folder):
    return datasets.load_dataset(str(folder), split="train", cache_dir=str(Path(folder).parent / "hf_cache"))


@pytest.fixture(scope="module")
def configured_run(tmp_path_factory):
    """A set generated with every option set, and what each pipeline call saw."""
    calls = []
    original = SynFERPipeline.__call__

    @functools.wraps(original)  # keeps the call's signature, which `check_call` binds
    def spy(self, *args, **kwargs):
        calls.append({"kwargs": kwargs, "scheduler": self.scheduler, "dtype": self.unet.dtype, "device": self.device})
        output = original(self, *args, **kwargs)
        calls[-1]["feranno_probabilities"] = output.feranno_probabilities.float().clone()  # FERAnno's vote
        return output

    folder = tmp_path_factory.mktemp("configured") / "set"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SynFERPipeline, "__call__", spy)
        result = _generate(folder, _feranno_pipeline(), **OPTIONS)
    assert result.complete
    return folder, calls


# -- the options reach the pipeline call, the scheduler and the labeller ------------------------------------------


def test_each_option_reaches_the_pipeline_call(configured_run):
    _, calls = configured_run
    assert len(calls) == 1
    call = calls[0]
    for name in CALL_OPTIONS:
        assert call["kwargs"][name] == OPTIONS[name], name
    assert call["kwargs"]["negative_prompt"] == [OPTIONS["negative_prompt"]] * 2  # per image, from the plan
    assert isinstance(call["scheduler"], DDIMScheduler) and call["scheduler"].config.clip_sample is False
    assert call["dtype"] == torch.bfloat16 and call["device"] == torch.device("cpu")


def test_each_option_is_in_the_plan_and_the_card(configured_run):
    folder, _ = configured_run
    plan = json.loads((folder / "plan.json").read_text())
    for name, value in OPTIONS.items():
        assert plan[name] == (list(value) if isinstance(value, tuple) else value), name
    assert plan["scheduler_class"] == "DDIMScheduler" and plan["device_type"] == "cpu"
    assert plan["labeler"]["name"] == "vote:feranno,target"
    voting = {key: plan["labeler"]["voting"][key] for key in ("agreement_threshold", "label_type", "discard_rule")}
    assert voting == {"agreement_threshold": 0.5, "label_type": "soft", "discard_rule": "disagreement"}
    assert plan["labeler"]["voting"]["weights"] == {"feranno": 2.0}
    card = (folder / "README.md").read_text()
    assert "DDIMScheduler" in card and "bfloat16 on cpu" in card and "eta 0.5" in card and "AU guidance scale 4.0" in card and "AU feedback passes 1 at gain 0.5" in card and "'a blurry photo'" in card
    assert "soft labels, aggregated by the paper's weighted mean, agreement threshold 0.5, weights {'feranno': 2.0}" in card and "'disagreement'" in card


def test_voting_options_reach_the_labels(configured_run):
    folder, calls = configured_run
    probabilities = np.asarray(_load(folder)["label_probs"])
    # 'soft': the weighted mean of FERAnno (weight 2) and the one-hot target (weight 1), never one-hot
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5) and (probabilities.max(axis=1) < 1.0).all()
    assert (probabilities.max(axis=1) >= 1 / 3 - 1e-6).all()
    # the weights are visible in every row: label_probs = (2 * FERAnno's probabilities + one-hot target) / 3
    (call,) = calls
    feranno = call["feranno_probabilities"].numpy()
    target = np.eye(7)[np.asarray(_load(folder)["target_label"])]
    np.testing.assert_allclose(probabilities, (2.0 * feranno + target) / 3.0, atol=1e-4)

    labeler = default_labeler(_feranno_pipeline(), voting=SyntheticSetConfig(**OPTIONS).voting_options())
    assert isinstance(labeler, VotingLabeler)
    config = labeler.voter.config
    assert (config.agreement_threshold, config.weights, config.label_type, config.discard_rule) == (
        0.5, {"feranno": 2.0}, "soft", "disagreement")  # fmt: skip


@pytest.mark.parametrize("semantic_guidance_scale", [0.0, 2.0])
def test_the_guide_does_not_vote_on_images_it_steered(tmp_path, semantic_guidance_scale):
    from test_semantic_guidance import make_guide

    guide, processor = make_guide(labels=list(EXPRESSIONS))
    pipe = _feranno_pipeline()
    pipe.register_modules(guidance_classifier=guide, guidance_image_processor=processor)
    _generate(tmp_path, pipe, semantic_guidance_scale=semantic_guidance_scale)
    plan = json.loads((tmp_path / "plan.json").read_text())
    voters = {vote["voter"] for row in _load(tmp_path)["votes"] for vote in row}
    expected = {"feranno", "target"} if semantic_guidance_scale else {"feranno", "guide", "target"}
    assert voters == expected
    assert plan["labeler"]["name"] == "vote:" + ",".join(
        name for name in ("guide", "feranno", "target") if name in expected
    )


def test_discard_rule_marks_rows_not_kept():
    labeler = default_labeler(_feranno_pipeline(), voting={"discard_rule": "disagreement"})
    feranno = torch.tensor([[0.0, 1.0, 0, 0, 0, 0, 0], [0.0, 0.0, 1.0, 0, 0, 0, 0]])  # votes happy, sad
    no_aus = dict.fromkeys(AUSpace.disfa12().names, 0.0)
    output = SynFERPipelineOutput(images=[None, None], expressions=["happy"] * 2, action_units=[no_aus] * 2,
                                  prompts=["a", "b"], seeds=[0, 1], feranno_probabilities=feranno)  # fmt: skip
    labels = labeler(output, [EXPRESSIONS.label_id("happy")] * 2)  # image 1: FERAnno and the target disagree
    assert labels.keep == [True, False]
    samples = [plan_sample(SyntheticSetConfig(), i, AUSpace.disfa12()) for i in range(2)]
    assert [row.keep for row in sample_rows(samples, output.images, labels)] == [True, False]


def test_discard_rule_is_a_keep_column_of_the_dataset(configured_run):
    folder, _ = configured_run
    dataset = _load(folder)
    assert dataset.features["keep"].dtype == "bool"
    agreed = [agreement >= OPTIONS["agreement_threshold"] for agreement in dataset["agreement"]]
    assert dataset["keep"] == agreed  # discard rule 'disagreement'


class EvenTargetsKept(TargetLabeler):
    """Keeps the images whose target class id is even (a labeller with a discard decision, deterministic)."""

    name = "even-targets-kept"

    def __call__(self, output, target_labels):
        labels = super().__call__(output, target_labels)
        labels.keep = [t % 2 == 0 for t in target_labels]
        return labels


def test_drop_discarded_leaves_out_exactly_the_rows_marked_not_kept(tmp_path):
    flagged, dropped = tmp_path / "flagged", tmp_path / "dropped"
    for folder, drop in ((flagged, False), (dropped, True)):
        _generate_with(folder, drop)
    everything, kept = _load(flagged), _load(dropped)
    assert 0 < len(kept) < len(everything) == 8
    assert kept["sample_id"] == [i for i, keep in zip(everything["sample_id"], everything["keep"]) if keep]
    by_id = {row["sample_id"]: row for row in everything}
    for row in kept:
        assert row["keep"] and row["text"] == by_id[row["sample_id"]]["text"]
        assert np.array_equal(np.asarray(row["image"]), np.asarray(by_id[row["sample_id"]]["image"]))
    assert f"num_examples: {len(kept)}" in (dropped / "README.md").read_text()
    again = _generate_with(dropped, True, resume=True)
    assert again.complete and again.shards_written == 0  # the kept subsets verify as complete shards


def test_drop_discarded_is_refused_before_writing_where_labels_wait_for_the_whole_set(tmp_path):
    """`drop_discarded` with voters and the default aggregation (Dawid-Skene, which labels the whole set after the
    last shard) is refused naming the flag, before anything is written; with the paper's rule it runs."""
    config = SyntheticSetConfig(num_samples=2, shard_size=2, drop_discarded=True, discard_rule="disagreement", **SMALL)
    with pytest.raises(ValueError, match=r"`drop_discarded` needs `aggregation='paper'`"):
        generate_synthetic_dataset(config, tmp_path / "set", pipeline=_feranno_pipeline(), batch_size=2,
                                   show_progress=False, process_index=0, num_processes=1)  # fmt: skip
    assert not (tmp_path / "set").exists()
    paper = dataclasses.replace(config, aggregation="paper")
    assert generate_synthetic_dataset(paper, tmp_path / "set", pipeline=_feranno_pipeline(), batch_size=2,
                                      show_progress=False, process_index=0, num_processes=1).complete  # fmt: skip


def _generate_with(folder, drop_discarded, resume=False):
    config = SyntheticSetConfig(num_samples=8, shard_size=2, drop_discarded=drop_discarded, **SMALL)
    return generate_synthetic_dataset(config, folder, pipeline=_feranno_pipeline(), labeler=EvenTargetsKept(),
                                      batch_size=2, resume=resume, show_progress=False, process_index=0,
                                      num_processes=1)  # fmt: skip


@pytest.mark.parametrize("name", SCHEDULERS)
def test_scheduler_is_built_from_the_checkpoints_config(name):
    pipe = _feranno_pipeline()  # Euler: no clip_sample in its config, DDIM's default would be True
    checkpoint = dict(pipe.scheduler.config)
    configure_pipeline(pipe, SyntheticSetConfig(scheduler=name), torch.device("cpu"))
    assert type(pipe.scheduler).__name__ == name
    for key in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type"):
        assert pipe.scheduler.config[key] == checkpoint[key], key
    if name == "DDIMScheduler":
        assert pipe.scheduler.config.clip_sample is False
    assert pipe.components["scheduler"] is pipe.scheduler and pipe.config["scheduler"][1] == name


# -- resume -------------------------------------------------------------------------------------------------------

OTHER_VALUES = {
    "scheduler": "UniPCMultistepScheduler",
    "dtype": "float32",
    "device": None,
    "negative_prompt": "a drawing",
    "eta": 0.0,
    "semantic_guidance_window": (0.6, 1.0),
    "semantic_guidance_interval": 2,
    "semantic_guidance_normalization": "global",
    "agreement_threshold": 1.0,
    "voter_weights": {"feranno": 1.5},
    "label_type": "hard",
    "discard_rule": "none",
}


@pytest.mark.parametrize("name", sorted(OTHER_VALUES))
def test_a_resume_with_another_value_is_refused(configured_run, name, tmp_path):
    folder, _ = configured_run
    plan = (folder / "plan.json").read_text()
    options = {**OPTIONS, name: OTHER_VALUES[name]}
    if name == "scheduler":
        options["eta"] = 0.0  # UniPC has no eta
    with pytest.raises(FileExistsError, match="different plan"):
        _generate(folder, _feranno_pipeline(), resume=True, **options)
    assert (folder / "plan.json").read_text() == plan


def test_a_resume_with_the_same_values_is_accepted(configured_run):
    folder, _ = configured_run
    result = _generate(folder, _feranno_pipeline(), resume=True, **OPTIONS)
    assert result.complete and result.shards_written == 0


# -- bad values ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"scheduler": "PNDMScheduler"}, "`scheduler` must be one of"),
        ({"dtype": "float64"}, "`dtype` must be one of"),
        ({"device": "tpu"}, "`device` must be 'cpu', 'cuda', 'cuda:N' or 'mps'"),
        ({"device": "cpu:1"}, "`device` must be"),
        ({"device": "cuda:99"}, "`device` 'cuda:99' is not available"),
        ({"negative_prompt": ["a", "b"]}, "`negative_prompt` must be a string"),
        ({"eta": -0.1}, r"`eta` must be a number in \[0, 1\]"),
        ({"eta": 1.5}, r"`eta` must be a number in \[0, 1\]"),
        ({"eta": float("nan")}, r"`eta` must be a number in \[0, 1\], got nan"),
        ({"eta": 0.5, "scheduler": "EulerDiscreteScheduler"}, "`eta` > 0 needs a scheduler with DDIM's eta"),
        ({"semantic_guidance_scale": -1.0}, "`semantic_guidance_scale`"),
        ({"semantic_guidance_window": (0.8, 0.2)}, "`semantic_guidance_window` must be"),
        ({"semantic_guidance_window": (0.5,)}, "`semantic_guidance_window` must be"),
        ({"semantic_guidance_interval": 0}, "`semantic_guidance_interval` must be an int >= 1"),
        ({"semantic_guidance_normalization": "l1"}, "`semantic_guidance_normalization` must be one of"),
        ({"agreement_threshold": 1.5}, r"`agreement_threshold` must be a number in \[0, 1\]"),
        ({"voter_weights": {"feranno": -1.0}}, r"`voter_weights\['feranno'\]` must be a number >= 0"),
        ({"voter_weights": [("feranno", 1.0)]}, "`voter_weights` must be a dict"),
        ({"label_type": "fuzzy"}, "`label_type` must be one of"),
        ({"discard_rule": "all"}, "`discard_rule` must be one of"),
        ({"prototype_intensity": -1.0}, "`prototype_intensity` must be a number >= 0 or None"),
    ],
)
def test_config_refuses_bad_values_naming_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SyntheticSetConfig(**kwargs)


def test_an_unavailable_gpu_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    for device in ("cuda", "cuda:0", "mps"):
        with pytest.raises(ValueError, match=f"`device` '{device}' is not available"):
            SyntheticSetConfig(device=device)


def test_plain_cuda_is_each_processs_own_gpu(monkeypatch):
    from synfer_diffusers.generate.run import _resolve_device

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)  # no GPU is touched: devices are only named
    assert _resolve_device("cuda", torch.device("cuda", 1)) == torch.device("cuda", 1)
    assert _resolve_device("cuda:0", torch.device("cuda", 1)) == torch.device("cuda", 0)
    assert _resolve_device("cpu", torch.device("cuda", 1)) == torch.device("cpu")
    assert _resolve_device(None, torch.device("cuda", 1)) == torch.device("cuda", 1)


def test_model_dependent_values_are_refused_before_anything_is_written(tmp_path):
    occurrence = SynFERPipeline(**make_tiny_components(au_space=AUSpace.opengraphau41()))
    with pytest.raises(ValueError, match=r"`prototype_intensity` must be a number in \[0, 1\] for this occurrence"):
        _generate(tmp_path / "a", occurrence, prototype_intensity=3.0)
    with pytest.raises(ValueError, match="`eta` > 0 needs a scheduler with DDIM's eta"):
        _generate(tmp_path / "b", _feranno_pipeline(), eta=0.5)  # the pipeline's own scheduler is Euler
    with pytest.raises(ValueError, match=r"Voting options \['discard_rule'\] need voters"):
        _generate(tmp_path / "c", SynFERPipeline(**make_tiny_components()), discard_rule="disagreement")
    with pytest.raises(ValueError, match=r"`pipeline_kwargs` must not set \['eta'\]"):
        config = SyntheticSetConfig(num_samples=2, **SMALL)
        generate_synthetic_dataset(config, tmp_path / "d", pipeline=_feranno_pipeline(), pipeline_kwargs={"eta": 1.0},
                                   show_progress=False, process_index=0, num_processes=1)  # fmt: skip
    assert not any(tmp_path.iterdir())
    with pytest.raises(ValueError, match=r"`pipeline_kwargs` must not set \['semantic_guidance_scale'\]"):
        pipeline_inputs(SyntheticSetConfig(), [plan_sample(SyntheticSetConfig(), 0, AUSpace.disfa12())], {"semantic_guidance_scale": 1})


# -- an OpenGraphAU-41 (occurrence) model with the defaults -------------------------------------------------------


def test_generate_on_an_opengraphau_model_folder_runs_with_defaults(tmp_path):
    SynFERPipeline(**make_tiny_components(au_space=AUSpace.opengraphau41())).save_pretrained(tmp_path / "model")
    folder = tmp_path / "set"
    argv = ["generate", "--model", str(tmp_path / "model"), "--output-dir", str(folder), "--num-samples", "2",
            "--shard-size", "2", "--expressions", "happy=1", *CLI_ARGS]  # fmt: skip
    assert main(argv) == 0
    names = AUSpace.opengraphau41().names
    for row in _load(folder):
        action_units = dict(zip(names, row["action_units"]))
        assert action_units["AU12"] == action_units["AUL12"] == action_units["AUR12"] == 1.0
        assert set(action_units.values()) == {0.0, 1.0}
    assert "left/right variants of its AUs) at 1, no jitter" in (folder / "README.md").read_text()


# -- the command line ---------------------------------------------------------------------------------------------


@pytest.fixture
def captured(monkeypatch):
    """`synfer generate` with `generate_synthetic_dataset` replaced by a recorder of its arguments."""
    from synfer_diffusers import generate

    calls = []

    def record(config, output_dir, **kwargs):
        calls.append((config, kwargs))
        return generate.SyntheticSetResult(str(output_dir), config.num_samples, 1, 0, complete=False)

    monkeypatch.setattr(generate, "generate_synthetic_dataset", record)
    return calls


def test_cli_flags_parse_into_the_config(captured, tmp_path):
    flags = ["--scheduler", "DDIMScheduler", "--dtype", "bfloat16", "--device", "cpu",
             "--negative-prompt", "a blurry photo", "--eta", "0.5", "--semantic-guidance-window", "0.5,1.0",
             "--semantic-guidance-interval", "1", "--semantic-guidance-normalization", "per_token",
             "--agreement-threshold", "0.5", "--voter-weights", "feranno=2", "--label-type", "soft",
             "--discard-rule", "disagreement", "--aggregation", "paper", "--semantic-guidance-scale", "3",
             "--prototype-intensity", "4", "--au-guidance-scale", "4", "--au-feedback-passes", "1",
             "--au-feedback-gain", "0.5"]  # fmt: skip
    assert main(["generate", "--output-dir", str(tmp_path / "out"), *flags]) == 0
    config, kwargs = captured[0]
    for name, value in OPTIONS.items():
        assert getattr(config, name) == value, name
    assert config.semantic_guidance_scale == 3.0 and config.prototype_intensity == 4.0
    assert "pipeline_kwargs" not in kwargs  # semantic guidance is a config field now

    assert main(["generate", "--output-dir", str(tmp_path / "out")]) == 0
    assert captured[1][0] == SyntheticSetConfig()  # the flags' defaults are the config's


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--scheduler", "Foo"], "`--scheduler` must be one of"),
        (["--dtype", "float64"], "`--dtype` must be one of"),
        (["--device", "cuda:99"], "`--device` 'cuda:99' is not available"),
        (["--eta", "2"], "`--eta` must be a number in [0, 1]"),
        (["--semantic-guidance-window", "0.8"], "`--semantic-guidance-window` must be 'start,end'"),
        (["--semantic-guidance-window", "0.8,0.2"], "`--semantic-guidance-window` must be"),
        (["--voter-weights", "feranno"], "`--voter-weights` must be 'name=value,...'"),
        (["--discard-rule", "all"], "argument --discard-rule/--discard_rule: invalid choice: 'all'"),
        (["--au-guidance-scale", "-1"], "`--au-guidance-scale` must be a number >= 0 or None"),
    ],
)
def test_cli_reports_bad_option_values_in_one_line(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as error:
        main(["generate", "--output-dir", str(tmp_path / "out"), *argv, *CLI_ARGS])
    assert error.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_guide_whose_labels_need_mapping_guides_and_votes_with_guidance_label_mapping(tmp_path):
    """A guide with AffectNet-8 style names: refused up front without `guidance_label_mapping` (naming it), and with
    it (as `--guidance-label-mapping` parses it) it guides the set and votes, the mapping in the plan."""
    from transformers import ResNetConfig, ResNetForImageClassification
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    names = ["Neutral", "Happiness", "Sadness", "Surprise", "Fear", "Disgust", "Anger", "Contempt"]
    torch.manual_seed(0)
    guide = ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                                      layer_type="basic", id2label=dict(enumerate(names)),
                                                      label2id={n: i for i, n in enumerate(names)}))  # fmt: skip
    pipe = _feranno_pipeline()
    pipe.register_modules(guidance_classifier=guide.eval(),
                          guidance_image_processor=ViTImageProcessorPil(size={"height": 16, "width": 16}))  # fmt: skip
    with pytest.raises(ValueError, match="guidance_label_mapping"):
        _generate(tmp_path / "unmapped", pipe, semantic_guidance_scale=1.0)
    assert not (tmp_path / "unmapped").exists()
    mapping = parse_label_mapping("Happiness=happy,Sadness=sad,Contempt=")
    assert mapping == {"Happiness": "happy", "Sadness": "sad", "Contempt": None}
    result = _generate(tmp_path / "mapped", pipe, semantic_guidance_scale=1.0, guidance_label_mapping=mapping)
    assert result.complete
    plan = json.loads((tmp_path / "mapped" / "plan.json").read_text())
    assert plan["guidance_label_mapping"] == mapping
    unguided = _generate(tmp_path / "voted", pipe, guidance_label_mapping=mapping)  # no SG: the guide votes
    assert unguided.complete and "guide" in [v["voter"] for v in _load(tmp_path / "voted")["votes"][0]]
