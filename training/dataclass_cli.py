"""Turn config dataclasses into argparse options, so one dataclass is both config and CLI."""
from __future__ import annotations

import argparse
import dataclasses
import typing


def add_dataclass_args(parser: argparse.ArgumentParser, cls, prefix: str = "", skip=()) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + (prefix + f.name).replace("_", "-")
        typ = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = (f.metadata.get("help") or "") + f" (default: {default})"
        if typ is bool:
            parser.add_argument(flag, dest=prefix + f.name, default=default,
                                action=argparse.BooleanOptionalAction, help=help_text)
        else:
            parser.add_argument(flag, dest=prefix + f.name, type=typ, default=default, help=help_text)


def dataclass_from_args(cls, ns: argparse.Namespace, prefix: str = "", **fixed):
    values = {f.name: getattr(ns, prefix + f.name) for f in dataclasses.fields(cls)
              if hasattr(ns, prefix + f.name)}
    values.update(fixed)
    return cls(**values)
