import json
import math

import numpy as np
import pytest
import torch

from synfer_diffusers import EXPRESSIONS, AUSpace, describe_au, expression_prototype
from synfer_diffusers.prompts import enrich_prompt


def test_presets_have_the_documented_names():
    disfa = AUSpace.disfa12()
    assert disfa.names[:4] == ("AU1", "AU2", "AU4", "AU5") and disfa.num_aus == 12 and disfa.max_value == 5.0
    ogau = AUSpace.opengraphau41()
    assert ogau.num_aus == 41 and ogau.kind == "occurrence" and "AUL12" in ogau.names and "AU39" in ogau.names
    assert describe_au("AUR12") == "right lip corner puller"


def test_au_space_presets_are_one_registry_that_the_cli_the_scripts_and_fetext_read(monkeypatch):
    """`AUSpace.presets()` is the only list of AU-space names: `synfer build-fetext --au-space` and the training
    scripts' `--au_space` offer exactly it, and a preset added to the registry is accepted by FEText's config."""
    from synfer_diffusers import facs
    from synfer_diffusers.cli import command_parser
    from synfer_diffusers.data.fetext_config import FETextConfig
    from synfer_diffusers.training.config import ConfigParser
    from training_chain import load_example

    assert AUSpace.presets() == ("disfa12", "opengraphau41")
    assert [AUSpace.from_preset(name) for name in AUSpace.presets()] == [AUSpace.disfa12(), AUSpace.opengraphau41()]
    with pytest.raises(ValueError, match=r"`au_space` must be one of \['disfa12', 'opengraphau41'\], got 'disfa13'"):
        AUSpace.from_preset("disfa13")

    def choices(parser) -> tuple:
        (action,) = [a for a in parser._actions if a.dest == "au_space"]
        return tuple(action.choices)

    assert choices(command_parser("build-fetext")) == AUSpace.presets()
    for script, config_class in (("train_au_adapter", "AUAdapterTrainingConfig"),
                                 ("train_autoencoder", "AutoencoderTrainingConfig")):  # fmt: skip
        assert choices(ConfigParser(getattr(load_example(script), config_class))) == AUSpace.presets(), script

    monkeypatch.setitem(facs._PRESETS, "disfa2", (("AU6", "AU12"), "intensity"))
    assert FETextConfig(au_estimator="x", au_space="disfa2").space == AUSpace(("AU6", "AU12"))


def test_config_round_trip_is_json():
    space = AUSpace.opengraphau41()
    assert AUSpace.from_config(json.loads(json.dumps(space.to_config()))) == space


def test_dict_tensor_round_trip_and_batches():
    space = AUSpace.disfa12()
    single = space.to_tensor({"AU6": 2.5, "AU12": 4.0})
    assert single.shape == (1, 12) and single[0, space.index("AU12")] == 4.0 and single.sum() == 6.5
    batch = space.to_tensor([{"AU1": 1.0}, {"AU26": 5.0}])
    assert batch.shape == (2, 12)
    assert space.to_dicts(batch)[1]["AU26"] == 5.0
    assert torch.equal(space.to_tensor(np.ones(12, dtype=np.float32)), torch.ones(1, 12))


@pytest.mark.parametrize(
    "value, match",
    [({"AU7": 1.0}, "AU7"), ({"AU12": math.nan}, "AU12"), ({"AU12": 6.0}, r"\[0, 5\]"), ({"AU12": -1}, "AU12")],
)
def test_bad_au_dicts_name_the_field(value, match):
    with pytest.raises(ValueError, match=match):
        AUSpace.disfa12().to_tensor(value)


def test_bad_au_tensors():
    space = AUSpace.disfa12()
    with pytest.raises(ValueError, match=r"\(batch, 12\)"):
        space.to_tensor(torch.zeros(2, 11))
    with pytest.raises(ValueError, match="NaN or inf"):
        space.to_tensor(torch.full((1, 12), float("inf")))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        AUSpace.opengraphau41().to_tensor(torch.full((1, 41), 2.0))
    with pytest.raises(ValueError, match="unique"):
        AUSpace(("AU1", "AU1"))
    with pytest.raises(ValueError, match="kind"):
        AUSpace(("AU1",), "binary")


def test_expressions_and_prototypes():
    assert list(EXPRESSIONS) == ["neutral", "happy", "sad", "surprise", "fear", "disgust", "anger"]
    assert EXPRESSIONS.id2label[1] == "happy" and EXPRESSIONS.label2id["anger"] == 6
    happy = expression_prototype("happy", AUSpace.disfa12(), intensity=4.0)
    assert {k for k, v in happy.items() if v} == {"AU6", "AU12"} and happy["AU12"] == 4.0
    assert not any(expression_prototype("neutral").values())
    fear = expression_prototype("fear", AUSpace.opengraphau41())
    sided = {f"AU{side}{n}" for n in (1, 2, 4) for side in "LR"}
    assert {k for k, v in fear.items() if v} == {"AU1", "AU2", "AU4", "AU5", "AU7", "AU20", "AU26"} | sided
    assert set(fear.values()) == {0.0, 1.0}
    with pytest.raises(ValueError, match="expression"):
        expression_prototype("contempt")


def test_enrich_prompt_mentions_expression_and_strongest_aus():
    text = enrich_prompt("a photo of an elderly man with glasses", "happy", {"AU6": 2.5, "AU12": 4.0, "AU1": 0.2})
    assert text.startswith("a photo of an elderly man with glasses") and "happy" in text
    assert text.index("lip corner puller") < text.index("cheek raiser") and "brow" not in text
    assert enrich_prompt("a face", None, None) == "a face"


# -- kind-aware prototypes ----------------------------------------------------------------------------------------


def test_prototype_value_defaults_by_kind_and_refuses_values_outside_the_space():
    assert AUSpace.disfa12().prototype_value() == 3.0 and AUSpace.opengraphau41().prototype_value() == 1.0
    assert AUSpace.disfa12().prototype_value(4.5) == 4.5
    with pytest.raises(ValueError, match=r"`prototype_intensity` must be a number in \[0, 1\] for this occurrence"):
        AUSpace.opengraphau41().prototype_value(3.0, field="prototype_intensity")
    for bad in (-1.0, math.nan, True, "3"):
        with pytest.raises(ValueError, match="`intensity`"):
            AUSpace.disfa12().prototype_value(bad)
    with pytest.raises(ValueError, match="`intensity`"):
        expression_prototype("happy", AUSpace.opengraphau41(), intensity=3.0)


def test_prototypes_set_the_left_right_variants_of_their_aus():
    happy = expression_prototype("happy", AUSpace.opengraphau41())
    assert happy["AU12"] == happy["AUL12"] == happy["AUR12"] == 1.0
    assert happy["AU6"] == happy["AUL6"] == happy["AUR6"] == 1.0
    assert {k for k, v in happy.items() if v} == {"AU6", "AUL6", "AUR6", "AU12", "AUL12", "AUR12"}
    assert not any(v for k, v in expression_prototype("sad", AUSpace.opengraphau41()).items() if "12" in k)
    # any space with variants, also one without the bilateral AU, at the prototype's value
    sided = AUSpace(("AU1", "AUL12", "AUR12", "AU12"), "intensity")
    assert expression_prototype("happy", sided, intensity=4.0) == {"AU1": 0.0, "AUL12": 4.0, "AUR12": 4.0, "AU12": 4.0}
    assert expression_prototype("happy", AUSpace(("AUL12", "AU1"), "occurrence")) == {"AUL12": 1.0, "AU1": 0.0}


def test_opengraphau_pipeline_makes_prototypes_by_default():
    from synfer_diffusers import SynFERPipeline
    from synfer_diffusers.tiny import make_tiny_components

    pipe = SynFERPipeline(**make_tiny_components(au_space=AUSpace.opengraphau41()))
    pipe.set_progress_bar_config(disable=True)
    output = pipe(expression="happy", num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    action_units = output.action_units[0]
    assert action_units["AU12"] == action_units["AUL12"] == action_units["AUR12"] == 1.0
    assert set(action_units.values()) == {0.0, 1.0}  # occurrences: no jitter
    with pytest.raises(ValueError, match="`prototype_intensity` must be a number in \\[0, 1\\]"):
        pipe(expression="happy", num_inference_steps=2, prototype_intensity=3.0)


def test_enriched_prompts_do_not_repeat_left_and_right_variants_of_an_active_au():
    from synfer_diffusers.prompts import describe_muscles

    space = AUSpace.opengraphau41()
    happy = expression_prototype("happy", space)
    assert happy["AUL12"] == happy["AUR12"] == happy["AU12"] == 1.0
    assert describe_muscles(happy, threshold=1.0) == "cheek raiser and lip corner puller"
    assert describe_muscles({"AUL12": 1.0}, threshold=1.0) == "left lip corner puller"
