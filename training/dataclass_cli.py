"""Turn config dataclasses into argparse options, so one dataclass is both config and CLI.

A field's help is its `metadata["help"]` or, as in sparsify's configs, the string literal right
under it (an attribute docstring, read from the class's source as simple-parsing and tyro do).
The default is appended once, unless the help already says what the default means.

Why not tyro or simple-parsing (both on PyPI, both read these docstrings): a stage's options
here come from two dataclasses plus plain flags (`train` = TrainCommandConfig + TrainConfig +
--quiet), errors must go through the CLI's one error path (one line, rc 2), and a ComfyUI pack
should not add dependencies to ComfyUI's environment (tyro brings rich, typeguard, shtab and
docstring-parser; simple-parsing brings docstring-parser). Their extras over this file (nested
configs, config files, union types) are not used by any stage today.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import textwrap
import typing


@functools.lru_cache(maxsize=None)
def field_docstrings(cls) -> dict[str, str]:
    """{field name: the string literal under it} for cls and its dataclass bases."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):   # no source (frozen app): metadata help only
            continue
        body = tree.body[0].body
        for stmt, nxt in zip(body, body[1:]):
            if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                    and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                    and isinstance(nxt.value.value, str)):
                docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def field_help(cls, f: dataclasses.Field) -> str:
    return f.metadata.get("help") or field_docstrings(cls).get(f.name, "")


def add_dataclass_args(parser: argparse.ArgumentParser, cls, prefix: str = "", skip=()) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + (prefix + f.name).replace("_", "-")
        typ = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = field_help(cls, f)
        if "default" not in help_text and default not in (None, ""):
            help_text += f" (default: {default})"
        help_text = help_text.replace("%", "%%")   # argparse formats help with %
        if typ is bool:
            # BooleanOptionalAction would append its own "(default: ...)" before Python 3.14.
            parser.add_argument(flag, dest=prefix + f.name, default=default, help=help_text,
                                action=_BooleanFlag)
        else:
            parser.add_argument(flag, dest=prefix + f.name, type=typ, default=default, help=help_text)


class _BooleanFlag(argparse.BooleanOptionalAction):
    """--x / --no-x, with the help text exactly as given."""

    def __init__(self, *args, help=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.help = help


def dataclass_from_args(cls, ns: argparse.Namespace, prefix: str = "", **fixed):
    values = {f.name: getattr(ns, prefix + f.name) for f in dataclasses.fields(cls)
              if hasattr(ns, prefix + f.name)}
    values.update(fixed)
    return cls(**values)


def saved_setting(saved: dict, cls, key: str):
    """A setting as a run recorded it (the dataclass's asdict), or, where the record predates
    the setting, the dataclass's default: the value the run then ran at."""
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    return saved.get(key, defaults[key])
