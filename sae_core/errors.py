"""Errors a user can fix: a bad file, folder, setting or input. Every one derives from
SAEConceptsError, so the CLI prints each the same way (one line, no traceback, exit status 2) and
the ComfyUI nodes turn each into a validation error. Anything else that escapes is a bug and keeps
its traceback. Each class also derives from the builtin it replaces (ValueError, RuntimeError,
OSError), so code that caught those still catches them."""
from __future__ import annotations

import math


class SAEConceptsError(Exception):
    """Base of every user-facing error; the message names the file/option, what was expected and
    what was found."""


class ConfigError(SAEConceptsError, ValueError):
    """A CLI option or node input whose value makes no sense (k > n_features, negative steps, ...)."""


class OutputError(SAEConceptsError, OSError):
    """An output location that cannot be written (permissions, a file in the way, a full disk)."""


class SAEFileError(SAEConceptsError, ValueError):
    """A file or folder that should hold an SAE cannot be used; the message names it and why."""

    def __init__(self, path, problem: str):
        self.path, self.problem = str(path), problem
        super().__init__(f"{path}: {problem}")


class ConceptNotLabelledError(ConfigError):
    """A concept asked by word that the dictionary gives no concept of a block."""


class DictionaryMismatchError(SAEConceptsError, ValueError):
    """A concept dictionary used with an SAE set other than the one it was built from."""


def require(condition: bool, message: str) -> None:
    """Raise ConfigError(message) unless condition holds."""
    if not condition:
        raise ConfigError(message)


def finite(name: str, value: float) -> float:
    """`value` as a float, or a ConfigError naming the option when it is NaN or infinite."""
    value = float(value)
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value}")
    return value
