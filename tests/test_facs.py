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
    assert {k for k, v in fear.items() if v} == {"AU1", "AU2", "AU4", "AU5", "AU7", "AU20", "AU26"}
    assert set(fear.values()) == {0.0, 1.0}
    with pytest.raises(ValueError, match="expression"):
        expression_prototype("contempt")


def test_enrich_prompt_mentions_expression_and_strongest_aus():
    text = enrich_prompt("a photo of an elderly man with glasses", "happy", {"AU6": 2.5, "AU12": 4.0, "AU1": 0.2})
    assert text.startswith("a photo of an elderly man with glasses") and "happy" in text
    assert text.index("lip corner puller") < text.index("cheek raiser") and "brow" not in text
    assert enrich_prompt("a face", None, None) == "a face"
