"""How `synfer generate` spells some [`~synfer_diffusers.generate.config.SyntheticSetConfig`] fields on the command
line: each function parses one flag's string into the field's value (the fields name them as `parse` in their
metadata) and raises a `ValueError` naming the flag. Standard library only (the command line's help imports it).
"""

from __future__ import annotations

import json


def parse_named_numbers(text: str, flag: str, forms: str = "'name=value,...' or a JSON object") -> dict[str, float]:
    """`"happy=0.5,sad=0.5"` or a JSON object -> `{name: number}`; a `ValueError` naming `flag` and the accepted
    `forms` otherwise."""
    if text.lstrip().startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"`{flag}`: not valid JSON ({error}).") from error
    values = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        try:
            values[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise ValueError(f"`{flag}` must be {forms}, got {text!r}.")
    return values


def parse_expression_distribution(text: str) -> dict[str, float] | None:
    """`"balanced"` or `"all"` -> None; `"happy=0.5,sad=0.5"` or a JSON object -> `{name: probability}`."""
    if text in ("balanced", "all"):
        return None
    return parse_named_numbers(text, "--expressions", "'balanced', 'name=prob,...' or a JSON object")


def parse_voter_weights(text: str) -> dict[str, float]:
    return parse_named_numbers(text, "--voter-weights")


def parse_label_mapping(text: str) -> dict[str, str | None]:
    """`"Happiness=happy,Contempt="` -> `{"Happiness": "happy", "Contempt": None}` (an empty name drops the label)."""
    mapping = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        label, separator, name = item.partition("=")
        if not separator or not label.strip():
            raise ValueError(f"`--guidance-label-mapping` must be 'label=expression,...', got {text!r}.")
        mapping[label.strip()] = name.strip() or None
    return mapping


def parse_window(text: str, flag: str = "--semantic-guidance-window") -> tuple[float, float]:
    """`"0.6,1.0"` -> `(0.6, 1.0)`; the range itself is checked by the config."""
    try:
        start, end = (float(bound) for bound in text.split(","))
    except ValueError:
        raise ValueError(f"`{flag}` must be 'start,end', e.g. '0.6,1.0', got {text!r}.") from None
    return start, end


def parse_mutual_self_attention_window(text: str) -> tuple[float, float] | None:
    """`"off"` -> None, else [`parse_window`]'s `(start, end)`."""
    return None if text == "off" else parse_window(text, "--mutual-self-attention-window")


def read_descriptions_file(path: str) -> list[str]:
    """One coarse description per non-empty line of a UTF-8 text file."""
    try:
        with open(path, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"`--descriptions-file` {path!r} could not be read: {error}") from error
