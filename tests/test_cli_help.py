"""`sae-concepts <stage> --help`: every option says what it does, and its default once."""
import argparse
import dataclasses
import re

from sae_concepts.training.cli import build_parser
from sae_concepts.training.dataclass_cli import add_dataclass_args


def _subparsers(parser, path=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield path + (name,), sub
                yield from _subparsers(sub, path + (name,))


def test_every_option_of_every_stage_has_help_and_one_default():
    stages = list(_subparsers(build_parser()))
    assert len(stages) >= 8
    problems = []
    for path, sub in stages:
        for action in sub._actions:
            if action.dest == "help":
                continue
            text = action.help or ""
            if not re.sub(r"\(default: [^)]*\)", "", text).strip():
                problems.append(f"{' '.join(path)} {action.option_strings or action.dest}: no help")
            if text.count("(default:") > 1:
                problems.append(f"{' '.join(path)} {action.option_strings}: default given twice")
        formatted = sub.format_help()   # also catches a stray % in a help text
        assert "(default: )" not in formatted, path
    assert not problems, "\n".join(problems)


def test_attribute_docstrings_become_help_and_a_default_is_not_repeated():
    @dataclasses.dataclass
    class Config:
        rate: float = 0.5
        """How fast, in 1/s."""
        place: str = dataclasses.field(default="", metadata={"help": "where (default: the current folder)"})
        loud: bool = False
        """Say more (100% more)."""

    parser = argparse.ArgumentParser()
    add_dataclass_args(parser, Config)
    helps = {a.dest: a.help for a in parser._actions}
    assert helps["rate"] == "How fast, in 1/s. (default: 0.5)"
    assert helps["place"] == "where (default: the current folder)"
    assert "Say more (100%% more). (default: False)" == helps["loud"]
    assert "100% more" in parser.format_help()
    ns = parser.parse_args(["--rate", "2", "--loud"])
    assert (ns.rate, ns.loud, ns.place) == (2.0, True, "")
