"""EnsembleVoter, ClassifierVoter and FERAnnoVoter: the paper's rule, the configurable variants, tiny transformers
classifiers built from config, FERAnno on the pipeline's tensors, and the bad-input errors."""

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers.image_processor import VaeImageProcessor
from transformers import ConvNextConfig, ConvNextForImageClassification, ResNetConfig, ResNetForImageClassification
from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

import synfer_diffusers.pipelines.synfer.pipeline_feranno as pipeline_feranno
from synfer_diffusers import FERAnnoHead, FERAnnoPipeline
from synfer_diffusers.facs import EXPRESSIONS
from synfer_diffusers.labels import ClassifierVoter, EnsembleVoter, FERAnnoVoter, VoteBatch, VotingConfig

AFFECTNET8 = ["Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt"]


def one_hot(*names, confidence=0.9):
    rows = torch.full((len(names), 7), (1 - confidence) / 6)
    for i, name in enumerate(names):
        rows[i, EXPRESSIONS.index(name)] = confidence
    return rows


def tiny_resnet(labels):
    torch.manual_seed(0)
    config = ResNetConfig(
        num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
        id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)},
    )  # fmt: skip
    return ResNetForImageClassification(config)


def processor():
    return ViTImageProcessorPil(size={"height": 16, "width": 16}, image_mean=[0.5] * 3, image_std=[0.5] * 3)


def faces(n):
    rng = np.random.default_rng(0)
    return [PIL.Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)) for _ in range(n)]


def test_paper_rule_keeps_unanimous_labels_hard_and_averages_disputed_ones():
    voter = EnsembleVoter(config=VotingConfig(probability_voters=("feranno", "a", "b")))
    probabilities = {
        "feranno": one_hot("happy", "sad"),
        "a": one_hot("happy", "anger"),
        "b": one_hot("happy", "sad"),
    }
    result = voter(probabilities=probabilities)
    assert result.labels == ["happy", "sad"]
    assert torch.equal(result.probabilities[0], torch.nn.functional.one_hot(torch.tensor(1), 7).float())
    assert torch.allclose(result.probabilities[1], (2 * one_hot("sad")[0] + one_hot("anger")[0]) / 3)
    assert torch.allclose(result.agreement, torch.tensor([1.0, 2 / 3]))
    assert result.agreed.tolist() == [True, False] and result.keep.tolist() == [True, True]
    assert result.votes == {"feranno": ["happy", "sad"], "a": ["happy", "anger"], "b": ["happy", "sad"]}
    columns = result.to_columns()
    assert columns["label"] == ["happy", "sad"] and columns["vote_a"] == ["happy", "anger"]
    assert len(columns["label_probabilities"][1]) == 7


def test_target_voter_weights_threshold_label_type_and_discard_rules():
    probabilities = {"feranno": one_hot("fear", "sad", "happy")}
    targets = ["surprise", "sad", None]  # the third image had no target: the target voter abstains
    config = VotingConfig(use_target=True, weights={"feranno": 2.0}, agreement_threshold=0.6, label_type="soft",
                          discard_rule="disagreement")  # fmt: skip
    result = EnsembleVoter(config=config)(probabilities=probabilities, targets=targets)
    assert result.labels == ["fear", "sad", "happy"]  # FERAnno weighs 2, the target 1
    assert torch.allclose(result.agreement, torch.tensor([2 / 3, 1.0, 1.0]))
    assert result.keep.tolist() == [True, True, True]
    assert result.votes["target"] == ["surprise", "sad", None]
    assert torch.allclose(result.probabilities, result.ensemble_probabilities)
    judge = ["surprise", "sad", "fear"]
    assert result.agreement_with(judge) == pytest.approx({"feranno": 1 / 3, "target": 1.0, "voted": 1 / 3})

    strict = VotingConfig(use_target=True, label_type="hard", discard_rule="target_mismatch")
    result = EnsembleVoter(config=strict)(probabilities={"feranno": one_hot("fear", "sad", "happy", confidence=0.4)},
                                          targets=targets)  # fmt: skip
    assert result.labels[0] == "surprise"  # equal weights: the confident target outvotes a 0.4 FERAnno
    assert result.keep.tolist() == [True, True, False] and result.probabilities.sum(-1).tolist() == [1.0] * 3
    assert set(result.probabilities.flatten().tolist()) == {0.0, 1.0}


def test_classifier_voters_map_labels_and_vote_on_images():
    resnet = ClassifierVoter(tiny_resnet(AFFECTNET8), processor(), name="resnet", label_mapping={"contempt": None},
                             batch_size=2)  # fmt: skip
    torch.manual_seed(1)
    convnext_config = ConvNextConfig(
        num_channels=3,
        num_stages=2,
        hidden_sizes=[8, 16],
        depths=[1, 1],
        id2label=EXPRESSIONS.id2label,
        label2id=EXPRESSIONS.label2id,
    )
    convnext = ClassifierVoter(ConvNextForImageClassification(convnext_config), processor(), name="convnext")
    images = faces(3)
    probabilities = resnet(images)
    assert probabilities.shape == (3, 7) and torch.allclose(probabilities.sum(-1), torch.ones(3))
    result = EnsembleVoter([resnet, convnext])(images, probabilities={"feranno": one_hot("happy", "sad", "fear")})
    assert set(result.votes) == {"resnet", "convnext", "feranno"} and len(result.labels) == 3
    assert torch.allclose(result.voter_probabilities["resnet"], probabilities)


def test_classifier_voter_from_pretrained(tmp_path):
    tiny_resnet(list(EXPRESSIONS)).save_pretrained(tmp_path)
    processor().save_pretrained(tmp_path)
    voter = ClassifierVoter.from_pretrained(str(tmp_path), name="judge")
    assert voter.name == "judge" and voter(faces(2)).shape == (2, 7)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: EnsembleVoter(config=VotingConfig(probability_voters=())), "no voters"),
        (lambda: VotingConfig(agreement_threshold=1.5), "agreement_threshold"),
        (lambda: VotingConfig(agreement_threshold=-0.1), "agreement_threshold"),
        (lambda: VotingConfig(label_type="argmax"), "label_type"),
        (lambda: VotingConfig(discard_rule="target_mismatch"), "use_target"),
        (lambda: VotingConfig(weights={"feranno": -1.0}), r"weights\['feranno'\]"),
        (lambda: EnsembleVoter(config=VotingConfig(weights={"judge": 1.0})), "unknown voters"),
        (lambda: EnsembleVoter(config=VotingConfig(probability_voters=("a", "a"))), "unique"),
        (lambda: ClassifierVoter(tiny_resnet(AFFECTNET8), processor()), r"label_mapping.*contempt"),
    ],
)
def test_bad_voter_setups_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"probabilities": {}}, "exactly the voters"),
        ({"probabilities": {"feranno": torch.ones(2, 5)}}, r"\(N, 7\)"),
        ({"probabilities": {"feranno": -torch.ones(2, 7)}}, "non-negative"),
        ({"probabilities": {"feranno": one_hot("happy")}, "targets": ["happy", "sad"]}, "number of images"),
        ({"probabilities": {"feranno": one_hot("happy")}, "targets": ["joy"]}, r"targets\[0\]"),
    ],
)
def test_bad_votes_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EnsembleVoter(config=VotingConfig(use_target=True))(**kwargs)


def test_missing_inputs_raise():
    with pytest.raises(ValueError, match="targets"):
        EnsembleVoter(config=VotingConfig(use_target=True))(probabilities={"feranno": one_hot("happy")})
    resnet = ClassifierVoter(tiny_resnet(list(EXPRESSIONS)), processor(), name="resnet")
    with pytest.raises(ValueError, match="images"):
        EnsembleVoter([resnet])(probabilities={"feranno": one_hot("happy")})
    silent = EnsembleVoter(config=VotingConfig(probability_voters=(), use_target=True))
    with pytest.raises(ValueError, match="no voter with weight"):
        silent(targets=[None])


def test_feranno_voter_labels_the_pipelines_tensors_as_their_pil_images(tiny_components, monkeypatch):
    """Given the pipeline's tensors at its resolution, the FERAnno voter labels them without its PIL path: the VAE
    encodes the same pixel values, bit for bit (the tensors rounded to 8 bits as the PIL conversion rounds them), so
    the votes agree up to float rounding (the PIL path's pixels are channels-last in memory); at another resolution
    it reads the PIL images, which it resizes."""
    torch.manual_seed(0)
    head = FERAnnoHead.from_unet(tiny_components["unet"], hidden_dim=32, num_heads=4, tokens_per_side=4)
    labeller = FERAnnoPipeline(**tiny_components, head=head)
    labeller.set_progress_bar_config(disable=True)
    voter, image_processor, encoded = FERAnnoVoter(labeller), VaeImageProcessor(), []
    encode_images = labeller.encode_images
    monkeypatch.setattr(labeller, "encode_images", lambda pixels: (encoded.append(pixels), encode_images(pixels))[1])
    for size in (labeller.resolution, labeller.resolution + 4):
        pixels = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(size))  # (B, 3, H, W) in [0, 1]
        images = image_processor.numpy_to_pil(image_processor.pt_to_numpy(pixels))
        expected = voter.vote(VoteBatch(images=images))
        with monkeypatch.context() as patch:
            if size == labeller.resolution:
                patch.setattr(pipeline_feranno, "_square_rgb", lambda *args: pytest.fail("read the PIL images"))
            votes = voter.vote(VoteBatch(images=images, pixel_values=pixels))
        assert torch.equal(encoded[-1], encoded[-2]), size
        assert torch.allclose(votes, expected, rtol=0, atol=1e-5), (size, (votes - expected).abs().max())
