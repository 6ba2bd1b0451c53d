"""One way from a config dataclass to command-line flags: every `synfer` subcommand is built by
[`add_dataclass_arguments`] from the dataclasses that define its options.

A field `num_samples` becomes `--num-samples` (also accepted as `--num_samples`, as diffusers' scripts spell
flags). Its metadata carries the `help` (shown with the default: `(default: 25)`) and optionally:

- `flag`: another spelling (`expression_distribution` is `--expressions`);
- `parse`: a function text -> value (else the annotation decides: `int`, `float`, `str`, `bool` as a switch,
  `Literal[...]` as choices, `list[...]` as a repeatable flag, `tuple[...]` as comma-separated values);
- `cli_default`: the default as typed on the command line (parsed by `parse`);
- `choices`, `metavar`; `positional` for a positional argument.

Errors of the config's checks name the field (`` `expression_distribution` must ... ``); [`name_flags`] rewrites
them into the flag (`` `--expressions` must ... ``). This module imports nothing beyond the standard library.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

__all__ = [
    "FlagHelpFormatter",
    "OneLineArgumentParser",
    "add_dataclass_arguments",
    "dataclass_values",
    "field_flag",
    "flag_table",
    "name_flags",
]

_FIELD_NAME = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)(?=[`\[])")


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse with usage errors in one line (`synfer generate: error: ...`, exit 2), like the package's own."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


class FlagHelpFormatter(argparse.HelpFormatter):
    """Lists each flag once in the help (`--num-samples N`), without its underscore alias."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        shown = [option for option in action.option_strings if "_" not in option]
        if len(shown) < len(action.option_strings):
            action = copy.copy(action)
            action.option_strings = shown
        return super()._format_action_invocation(action)


def field_flag(item: dataclasses.Field) -> str:
    """The flag of a dataclass field: its metadata's `flag`, else `--field-name` (a positional's metavar)."""
    if item.metadata.get("positional"):
        return item.metadata.get("metavar", item.name.upper())
    return item.metadata.get("flag", "--" + item.name.replace("_", "-"))


def _comma_separated(convert: Callable[[str], Any]) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        return tuple(convert(value) for value in text.split(","))

    parse.__name__ = f"comma-separated {convert.__name__}"
    return parse


def _flag_value(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse `type` whose own errors (messages naming a field or flag in backquotes) reach the user as they
    are; other conversion errors read `invalid <type> value`."""

    def parse(text: str) -> Any:
        try:
            return convert(text)
        except ValueError as error:
            if str(error).startswith("`"):
                raise argparse.ArgumentTypeError(str(error)) from None
            raise

    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


def _argument_kwargs(item: dataclasses.Field, annotation: Any) -> dict[str, Any]:
    """`add_argument` keywords for a field: how its text is converted, switch or repeatable flag, choices."""
    metadata = item.metadata
    if "parse" in metadata:
        return {"type": _flag_value(metadata["parse"]), "metavar": metadata.get("metavar")}
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation, *others = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if others:
            raise TypeError(f"`{item.name}`: a union annotation needs a `parse` function in the field's metadata.")
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is bool:
        return {"action": "store_true"}
    if origin is typing.Literal:
        return {"type": type(args[0]), "choices": args}
    if origin is list:
        return {"action": "append", "type": args[0], "metavar": metadata.get("metavar")}
    if origin is tuple:
        return {"type": _comma_separated(args[0]), "metavar": metadata.get("metavar", "A,B")}
    if annotation in (int, float, str):
        return {"type": annotation, "choices": metadata.get("choices"), "metavar": metadata.get("metavar")}
    raise TypeError(f"`{item.name}`: no command-line form for {annotation!r}; give a `parse` function in its metadata.")


def _field_default(item: dataclasses.Field) -> Any:
    if item.default_factory is not dataclasses.MISSING:
        return item.default_factory()
    return item.default


def _default_text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "none"
    return str(value)


def add_dataclass_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    config_class: type,
    only: Sequence[str] | None = None,
    unset_default: str | None = None,
) -> dict[str, str]:
    """Adds one argument per field of the dataclass `config_class` (those named in `only`, if given) to `parser`
    and returns `{field name: flag}`. The parsed value lands in `args.<field name>`. With `unset_default`, every
    flag defaults to None (a value the caller leaves unset) and its help says `(default: <unset_default>)`."""
    hints = typing.get_type_hints(config_class)
    flags = {}
    for item in dataclasses.fields(config_class):
        if only is not None and item.name not in only:
            continue
        kwargs = {key: value for key, value in _argument_kwargs(item, hints[item.name]).items() if value is not None}
        default = item.metadata.get("cli_default", _field_default(item))
        required = default is dataclasses.MISSING and unset_default is None
        if kwargs.get("action") == "store_true" and default is True:
            raise TypeError(f"`{item.name}`: a switch defaults to False or None; name the field for its opposite.")
        if unset_default is not None:
            default, shown = None, unset_default
        else:
            shown = item.metadata.get("cli_default", _default_text(default))
        help_text = item.metadata["help"] + ("" if required else f" (default: {shown})")
        kwargs["help"] = help_text.replace("%", "%%")
        flag = field_flag(item)
        if kwargs.get("action") != "store_true" and "choices" not in kwargs:
            kwargs.setdefault("metavar", flag.lstrip("-").replace("-", "_").upper())
        if item.metadata.get("positional"):
            parser.add_argument(item.name, **kwargs)
        else:
            alias = flag.replace("_", "-") if "_" in flag else "--" + flag[2:].replace("-", "_")
            options = [flag] if alias == flag else [flag, alias]
            parser.add_argument(*options, dest=item.name, required=required,
                                default=None if required else default, **kwargs)  # fmt: skip
        flags[item.name] = flag
    return flags


def dataclass_values(config_class: type, args: argparse.Namespace, skip_unset: bool = False) -> dict[str, Any]:
    """The parsed values of `config_class`'s fields in `args` (those left None with `skip_unset`), as keywords for
    `config_class(**...)`."""
    values = {item.name: getattr(args, item.name) for item in dataclasses.fields(config_class) if hasattr(args, item.name)}
    return {name: value for name, value in values.items() if not (skip_unset and value is None)}


def name_flags(message: str, flags: Mapping[str, str]) -> str:
    """`message` with each field of `flags` quoted in it (`` `expression_distribution` ``,
    `` `voter_weights['x']` ``) replaced by its flag (`` `--expressions` ``)."""
    return _FIELD_NAME.sub(lambda match: "`" + flags.get(match.group(1), match.group(1)), message)


def flag_table(parser: argparse.ArgumentParser) -> str:
    """A markdown table of `parser`'s arguments (flag and metavar, help with the default), as the README lists
    them."""
    rows = ["| flag | meaning |", "|---|---|"]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        choices = "{" + ",".join(map(str, action.choices)) + "}" if action.choices else None
        metavar = "" if action.nargs == 0 else f" {action.metavar or choices or action.dest.upper()}"
        flag = (action.option_strings[0] if action.option_strings else "") + metavar
        meaning = action.help.replace("%%", "%").replace("|", "\\|")
        rows.append(f"| `{flag.strip()}` | {meaning} |")
    return "\n".join(rows) + "\n"
