"""FACS vocabulary: action-unit spaces, the seven expression classes and their EMFACS prototypes.

This module imports nothing from the rest of the package, so every other module (models, data,
pipelines) can depend on it; torch and numpy are imported by the functions that take tensors, so the command line
reads the vocabulary without loading them.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import numpy as np
    import torch

AU_DESCRIPTIONS: dict[str, str] = {
    "AU1": "inner brow raiser",
    "AU2": "outer brow raiser",
    "AU4": "brow lowerer",
    "AU5": "upper lid raiser",
    "AU6": "cheek raiser",
    "AU7": "lid tightener",
    "AU9": "nose wrinkler",
    "AU10": "upper lip raiser",
    "AU11": "nasolabial deepener",
    "AU12": "lip corner puller",
    "AU13": "sharp lip puller",
    "AU14": "dimpler",
    "AU15": "lip corner depressor",
    "AU16": "lower lip depressor",
    "AU17": "chin raiser",
    "AU18": "lip pucker",
    "AU19": "tongue show",
    "AU20": "lip stretcher",
    "AU22": "lip funneler",
    "AU23": "lip tightener",
    "AU24": "lip pressor",
    "AU25": "lips part",
    "AU26": "jaw drop",
    "AU27": "mouth stretch",
    "AU32": "lip bite",
    "AU38": "nostril dilator",
    "AU39": "nostril compressor",
}
"""FACS names of the action units (Ekman & Friesen). Left/right variants (`AUL1`, `AUR12`, ...) share the
description of their bilateral AU; see [`describe_au`]."""

_DISFA12 = ("AU1", "AU2", "AU4", "AU5", "AU6", "AU9", "AU12", "AU15", "AU17", "AU20", "AU25", "AU26")
_OPENGRAPHAU_MAIN = (
    "AU1", "AU2", "AU4", "AU5", "AU6", "AU7", "AU9", "AU10", "AU11", "AU12", "AU13", "AU14", "AU15", "AU16",
    "AU17", "AU18", "AU19", "AU20", "AU22", "AU23", "AU24", "AU25", "AU26", "AU27", "AU32", "AU38", "AU39",
)  # fmt: skip
_OPENGRAPHAU_SIDED = tuple(f"AU{side}{n}" for n in (1, 2, 4, 6, 10, 12, 14) for side in ("L", "R"))

AUKind = Literal["intensity", "occurrence"]
_PRESETS: dict[str, tuple[tuple[str, ...], AUKind]] = {
    "disfa12": (_DISFA12, "intensity"),
    "opengraphau41": (_OPENGRAPHAU_MAIN + _OPENGRAPHAU_SIDED, "occurrence"),
}
"""AU spaces selectable by name (`AUSpace.from_preset`, `--au_space`): a new entry here reaches the command line,
the training scripts and FEText."""
_MAX_VALUE: dict[str, float] = {"intensity": 5.0, "occurrence": 1.0}
_PROTOTYPE_VALUE: dict[str, float] = {"intensity": 3.0, "occurrence": 1.0}  # FACS "C"; present


def describe_au(name: str) -> str:
    """FACS name of an action unit, e.g. `describe_au("AU12") == "lip corner puller"`,
    `describe_au("AUL12") == "left lip corner puller"`."""
    if name in AU_DESCRIPTIONS:
        return AU_DESCRIPTIONS[name]
    if len(name) > 3 and name[:3] in ("AUL", "AUR") and f"AU{name[3:]}" in AU_DESCRIPTIONS:
        side = "left" if name[2] == "L" else "right"
        return f"{side} {AU_DESCRIPTIONS[f'AU{name[3:]}']}"
    raise ValueError(f"Unknown action unit {name!r}: expected a FACS name such as 'AU12' or 'AUL12'.")


class ExpressionVocabulary(tuple):
    """The ordered expression classes with `id2label` / `label2id` maps, as transformers configs use them."""

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self))

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self)}

    def label_id(self, name: str, field: str = "expression") -> int:
        """Index of `name`, or a `ValueError` naming `field` and the allowed values."""
        if not isinstance(name, str) or name not in self:
            raise ValueError(f"`{field}` must be one of {list(self)}, got {name!r}.")
        return self.index(name)


EXPRESSIONS = ExpressionVocabulary(("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger"))
"""The seven classes of SynFER in a fixed order (AffectNet-7 orders them differently: map by name)."""

EMFACS_PROTOTYPES: dict[str, tuple[str, ...]] = {
    "neutral": (),
    "happy": ("AU6", "AU12"),
    "sad": ("AU1", "AU4", "AU15"),
    "surprise": ("AU1", "AU2", "AU5", "AU26"),
    "fear": ("AU1", "AU2", "AU4", "AU5", "AU7", "AU20", "AU26"),
    "disgust": ("AU9", "AU15", "AU16"),
    "anger": ("AU4", "AU5", "AU7", "AU23"),
}
"""EMFACS prototype AUs per expression (Ekman & Friesen). Variants not used by default: happy + AU25,
disgust as AU9 + AU10 + AU17."""


@dataclass(frozen=True)
class AUSpace:
    """An ordered action-unit vocabulary, stored in model configs.

    Args:
        names: AU names in tensor order, e.g. `("AU1", "AU2", ...)`. Map by name, never by bare index.
        kind: `"intensity"` (values in [0, 5], DISFA/FACS A-E scale) or `"occurrence"` (values in [0, 1]).

    Example:

    ```py
    >>> space = AUSpace.disfa12()
    >>> t = space.to_tensor({"AU6": 2.5, "AU12": 4.0})  # (1, 12), zeros elsewhere
    >>> space.to_dicts(t)[0]["AU12"]
    4.0
    ```
    """

    names: tuple[str, ...]
    kind: AUKind = "intensity"

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(self.names))
        if not self.names:
            raise ValueError("`names` of an AUSpace must not be empty.")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"`names` of an AUSpace must be unique, got {list(self.names)}.")
        for name in self.names:
            describe_au(name)
        if self.kind not in _MAX_VALUE:
            raise ValueError(f"`kind` must be one of {list(_MAX_VALUE)}, got {self.kind!r}.")

    @classmethod
    def disfa12(cls) -> AUSpace:
        """The 12 DISFA AUs with intensities 0-5 (the set FineFace uses)."""
        return cls.from_preset("disfa12")

    @classmethod
    def opengraphau41(cls) -> AUSpace:
        """The 41 binary outputs of OpenGraphAU (27 AUs plus 14 left/right variants), as in the paper."""
        return cls.from_preset("opengraphau41")

    @staticmethod
    def presets() -> tuple[str, ...]:
        """Names of the registered AU spaces, as `--au_space` / `--au-space` accept them."""
        return tuple(_PRESETS)

    @classmethod
    def from_preset(cls, name: str, field: str = "au_space") -> AUSpace:
        """The registered AU space `name` (see [`AUSpace.presets`]); a `ValueError` naming `field` otherwise."""
        if name not in _PRESETS:
            raise ValueError(f"`{field}` must be one of {list(_PRESETS)}, got {name!r}.")
        return cls(*_PRESETS[name])

    @property
    def num_aus(self) -> int:
        return len(self.names)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def max_value(self) -> float:
        return _MAX_VALUE[self.kind]

    def prototype_value(self, intensity: float | None = None, field: str = "intensity") -> float:
        """The value of an expression prototype's active AUs in this space: `intensity` checked against the
        space's range (a `ValueError` naming `field` otherwise), or, for `None`, 3.0 (FACS "C") on intensity
        spaces and 1.0 (present) on occurrence spaces."""
        if intensity is None:
            return _PROTOTYPE_VALUE[self.kind]
        number = isinstance(intensity, numbers.Real) and not isinstance(intensity, bool)
        if not number or not math.isfinite(intensity) or not 0.0 <= intensity <= self.max_value:
            raise ValueError(
                f"`{field}` must be a number in [0, {self.max_value:g}] for this {self.kind} AU space, got "
                f"{intensity!r}; None gives {_PROTOTYPE_VALUE[self.kind]:g}."
            )
        return float(intensity)

    def describe(self) -> dict[str, str]:
        """`{name: FACS description}` in this space's order."""
        return {name: describe_au(name) for name in self.names}

    def to_config(self) -> dict[str, Any]:
        """JSON-serialisable form, stored in model configs."""
        return {"names": list(self.names), "kind": self.kind}

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | AUSpace) -> AUSpace:
        if isinstance(config, AUSpace):
            return config
        if not isinstance(config, Mapping) or "names" not in config:
            raise ValueError(f"`au_space` must be an AUSpace or a dict with `names` and `kind`, got {config!r}.")
        return cls(tuple(config["names"]), config.get("kind", "intensity"))

    def index(self, name: str, field: str = "action_units") -> int:
        if name not in self.names:
            raise ValueError(f"`{field}`: {name!r} is not in this AU space; allowed: {list(self.names)}.")
        return self.names.index(name)

    def validate_value(self, value: float, name: str, field: str = "action_units") -> float:
        value = float(value)
        if not math.isfinite(value) or not 0.0 <= value <= self.max_value:
            raise ValueError(
                f"`{field}[{name!r}]` must be a finite {self.kind} in [0, {self.max_value:g}], got {value}."
            )
        return value

    def validate_tensor(self, values: torch.Tensor, field: str = "action_units") -> torch.Tensor:
        """Checks a `(batch, num_aus)` tensor for width, NaN/inf and range; returns it as float32."""
        if values.ndim != 2 or values.shape[1] != self.num_aus:
            raise ValueError(
                f"`{field}` must have shape (batch, {self.num_aus}) for this AU space, got {tuple(values.shape)}."
            )
        values = values.float()
        if not values.isfinite().all():
            raise ValueError(f"`{field}` contains NaN or inf values.")
        if values.numel() and (values.min() < 0 or values.max() > self.max_value):
            bad = values[(values < 0) | (values > self.max_value)][0].item()
            raise ValueError(f"`{field}` values must lie in [0, {self.max_value:g}] ({self.kind}), got {bad}.")
        return values

    def dict_to_vector(self, action_units: Mapping[str, float], field: str = "action_units") -> list[float]:
        """`{"AU12": 3.0}` -> a list of `num_aus` floats, zeros for AUs not named."""
        if not isinstance(action_units, Mapping):
            raise TypeError(f"`{field}` must be a dict of AU name -> value, got {type(action_units).__name__}.")
        vector = [0.0] * self.num_aus
        for name, value in action_units.items():
            vector[self.index(name, field)] = self.validate_value(value, name, field)
        return vector

    def to_tensor(
        self,
        action_units: Mapping[str, float] | Sequence[Mapping[str, float]] | torch.Tensor | np.ndarray,
        field: str = "action_units",
    ) -> torch.Tensor:
        """Converts one AU dict, a list of AU dicts, or a `(batch, num_aus)` / `(num_aus,)` array to a
        validated `(batch, num_aus)` float32 tensor."""
        import numpy as np
        import torch

        if isinstance(action_units, np.ndarray):
            action_units = torch.from_numpy(action_units)
        if isinstance(action_units, torch.Tensor):
            values = action_units.detach().cpu()
            return self.validate_tensor(values[None] if values.ndim == 1 else values, field)
        if isinstance(action_units, Mapping):
            action_units = [action_units]
        if not isinstance(action_units, Sequence) or isinstance(action_units, str) or not action_units:
            raise TypeError(
                f"`{field}` must be an AU dict, a non-empty list of AU dicts, or a (batch, {self.num_aus}) tensor."
            )
        rows = [self.dict_to_vector(d, f"{field}[{i}]") for i, d in enumerate(action_units)]
        return torch.tensor(rows, dtype=torch.float32)

    def to_dicts(self, values: torch.Tensor | np.ndarray) -> list[dict[str, float]]:
        """`(batch, num_aus)` values -> one `{name: value}` dict per row."""
        import torch

        values = torch.as_tensor(values, dtype=torch.float32)
        values = values[None] if values.ndim == 1 else values
        values = self.validate_tensor(values)
        return [dict(zip(self.names, map(float, row))) for row in values.tolist()]


def expression_prototype(name: str, space: AUSpace | None = None, intensity: float | None = None) -> dict[str, float]:
    """EMFACS prototype of an expression as a full AU dict of `space` (default DISFA-12).

    Each AU of the prototype is set in the space together with its left/right variants (`AU12` also sets `AUL12`
    and `AUR12`, as OpenGraphAU reports them); AUs the space lacks are left out (DISFA-12 has no AU7, AU16, AU23);
    AUs not in the prototype are 0.

    Args:
        name: one of [`EXPRESSIONS`].
        space: the AU space of the result.
        intensity: value of the active AUs, checked against the space (see [`AUSpace.prototype_value`]); default
            3.0 (FACS "C") for intensity spaces, 1.0 for occurrence spaces.

    Example:

    ```py
    >>> expression_prototype("happy")["AU12"]
    3.0
    >>> happy = expression_prototype("happy", AUSpace.opengraphau41())
    >>> happy["AU12"], happy["AUL12"], happy["AUR12"]
    (1.0, 1.0, 1.0)
    ```
    """
    EXPRESSIONS.label_id(name)
    space = space or AUSpace.disfa12()
    value = space.prototype_value(intensity)
    active = {f"AU{side}{au[2:]}" for au in EMFACS_PROTOTYPES[name] for side in ("", "L", "R")}
    return {au: value if au in active else 0.0 for au in space.names}


def map_classifier_labels(
    id2label: Mapping[int, str], label_mapping: Mapping[str, str | None] | None = None, field: str = "label_mapping"
) -> list[int | None]:
    """For each output of a classifier (in `id2label` order), the index of its class in [`EXPRESSIONS`], or
    `None` for an output mapped away (e.g. AffectNet-8's "contempt": `{"contempt": None}`).

    Names are matched case-insensitively; `label_mapping` renames the classifier's labels first (e.g.
    `{"happiness": "happy", "angry": "anger"}`). Every other output must map onto an expression and every
    expression must be exactly one output, else a `ValueError` naming `field` says what is wrong.

    Example:

    ```py
    >>> map_classifier_labels({0: "Anger", 1: "Neutral", 2: "happiness", 3: "sad", 4: "surprise", 5: "fear",
    ...                        6: "disgust"}, {"happiness": "happy"})
    [6, 0, 1, 2, 3, 4, 5]
    ```
    """
    renames = {k.lower(): (v.lower() if v is not None else None) for k, v in (label_mapping or {}).items()}
    raw = [str(id2label[i]).lower() for i in sorted(id2label, key=int)]
    names = [renames.get(n, n) for n in raw]
    unknown = sorted({n for n in names if n is not None and n not in EXPRESSIONS})
    if unknown:
        raise ValueError(
            f"`{field}`: classifier labels {unknown} do not map onto {list(EXPRESSIONS)}; map them (or to None)."
        )
    kept = [n for n in names if n is not None]
    missing = [e for e in EXPRESSIONS if e not in kept]
    if missing or len(kept) != len(set(kept)):
        raise ValueError(f"`{field}`: every expression must be exactly one classifier output; missing {missing}.")
    return [EXPRESSIONS.index(n) if n is not None else None for n in names]


def classifier_logits_to_expressions(logits: torch.Tensor, index_map: Sequence[int | None]) -> torch.Tensor:
    """Reorders classifier logits `(B, num_outputs)` into [`EXPRESSIONS`] order `(B, 7)`, dropping outputs
    mapped to `None` (see [`map_classifier_labels`])."""
    source = [index_map.index(target) for target in range(len(EXPRESSIONS))]
    return logits[:, source]


def classifier_expression_probabilities(logits: torch.Tensor, index_map: Sequence[int | None]) -> torch.Tensor:
    """Softmax over [`EXPRESSIONS`] `(B, 7)` of classifier logits `(B, num_outputs)` whose outputs map by name with
    `index_map` ([`map_classifier_labels`]); outputs mapped to `None` are dropped before the softmax. How every voter
    with its own label set (transformers classifiers, FERAnno) is read."""
    return classifier_logits_to_expressions(logits.float(), index_map).softmax(-1)
