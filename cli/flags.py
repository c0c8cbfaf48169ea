"""Flags generated from dataclass fields: every field is a flag named after it (`n_layer` -> `--n-layer`)."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any


def add_dataclass_flags(
    parser: argparse.ArgumentParser, cls: type, title: str, skip: Sequence[str] = ()
) -> argparse._ArgumentGroup:
    """One flag per field, in a group titled `title` (returned, for flags that belong with them); absent flags
    stay absent (SUPPRESS), so callers can layer defaults."""
    group = parser.add_argument_group(title)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.metadata.get("cli", True):
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        shown = f"{default:g}" if isinstance(default, float) else default
        help_text = f"{f.metadata.get('help', '')} (default: {shown})"
        if f.type in (bool, "bool"):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        else:
            kind = (
                _friendly(f.metadata["type"]) if "type" in f.metadata else _PLAIN_TYPES.get(str(f.type), type(default))
            )
            group.add_argument(flag, type=kind, default=argparse.SUPPRESS, help=help_text, metavar=f.name.upper())
    return group


_PLAIN_TYPES = {"int": int, "float": float, "str": str}


def _friendly(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """Let argparse show the parser's own error message instead of 'invalid value'."""

    def wrapped(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return wrapped


def given(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of `cls` the user set on the command line."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
