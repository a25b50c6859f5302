"""The `concept` input of the steer nodes and ConceptMapPreview: a word picked from a list, or ids.

What ComfyUI v0.8.0 offers for options that depend on another input, and why neither fits:
- `io.DynamicCombo`: the nested inputs depend on the combo's own choice; its options are fixed
  in the schema and cannot follow another input.
- a `remote` combo (`io.RemoteOptions`): the frontend (1.35.9) fetches the options from a route
  with static query parameters (never another input's value), overwrites a loaded workflow's
  saved value with the first fetched option on load, and adds an auto-refresh toggle widget.
Neither can follow the dictionary chosen in an upstream Load SAE (a linked input, only known
when the graph runs). The best the host allows: the options are the labels of every concept
dictionary in models/sae, re-read whenever the frontend refreshes node definitions (key R), as
its model-file lists are; a word is checked against them when the prompt is queued (with the
nearest labels named), and against the dictionary actually loaded when the node runs.
"""
from __future__ import annotations

import difflib
import logging
import os

import folder_paths
from comfy_api.latest import io

from ..sae_core.concept_dictionary import ConceptDictionary
from .model_folders import dictionary_files

log = logging.getLogger("sae_concepts")

BY_ID = "(concept ids)"
NO_CONCEPT = "(none)"
_loaded: dict[str, tuple[float, ConceptDictionary | None]] = {}   # path -> (mtime, dictionary)


def _dictionaries() -> list[ConceptDictionary]:
    """Every concept dictionary in models/sae, re-read only when its file changed."""
    out = []
    for name in dictionary_files():
        path = folder_paths.get_full_path("sae_dictionaries", name)
        if path is None:
            continue
        mtime = os.path.getmtime(path)
        if path not in _loaded or _loaded[path][0] != mtime:
            try:
                _loaded[path] = (mtime, ConceptDictionary.load(path))
            except (ValueError, OSError) as e:   # a .json that is not a dictionary: not listed
                log.debug(f"sae_concepts: {path} is not a concept dictionary ({e})")
                _loaded[path] = (mtime, None)
        if _loaded[path][1] is not None:
            out.append(_loaded[path][1])
    return out


def known_labels() -> list[str]:
    return sorted({lab for d in _dictionaries() for lab in d.vocabulary()})


def nearest_labels(word: str, labels: list[str], n: int = 8) -> list[str]:
    """Labels closest in spelling to `word`, then labels that contain it, for error messages."""
    w = word.strip().lower()
    close = difflib.get_close_matches(w, [lab.lower() for lab in labels], n=n, cutoff=0.5)
    by_lower = {lab.lower(): lab for lab in labels}
    found = [by_lower[c] for c in close]
    found += [lab for lab in labels if w and w in lab.lower() and lab not in found]
    return found[:n] or labels[:n]


def concept_inputs(what: str, allow_none: bool = False) -> list:
    """The concept combo (dictionary labels + BY_ID, + NO_CONCEPT if allowed) and the ids text
    used with BY_ID. Both are required inputs so that they sit together on the node; the combo
    defaults to the first label, or to BY_ID where no dictionary exists."""
    labels = known_labels()
    first = [NO_CONCEPT] if allow_none else []
    default = NO_CONCEPT if allow_none else (labels[0] if labels else BY_ID)
    return [
        io.Combo.Input(
            "concept", options=first + [BY_ID] + labels, default=default,
            tooltip=("'(none)': no concept. " if allow_none else "") +
                    f"The concept {what}: a label from the concept dictionaries in models/sae (every concept "
                    f"labelled with it, or whose label contains it as a word), checked against the dictionary "
                    f"picked in Load SAE when the graph runs. Pick '{BY_ID}' to give ids in concept_ids instead. "
                    f"The list is re-read when node definitions are refreshed (R)."),
        io.String.Input(
            "concept_ids", default="0",
            tooltip=f"Used when concept is '{BY_ID}': SAE latent ids, e.g. '12, 40' (from the report's concept "
                    f"cards). Also takes words ('dog, cat')."),
    ]


def concept_text(concept: str, concept_ids: str | None) -> str:
    """What the user asked for, as the text parse_concept reads ('12, 40' or 'dog')."""
    if concept == BY_ID:
        return concept_ids if concept_ids is not None else ""
    return "" if concept == NO_CONCEPT else concept


def check_concept(concept: str, concept_ids: str | None, node: str) -> bool | str:
    """Queue-time check: a word must be a label (or a word of a label) of some dictionary in
    models/sae. Returns True or the error ComfyUI shows on the node."""
    from .steering import parse_concept
    text = concept_text(concept, concept_ids)
    if concept == NO_CONCEPT:
        return True
    try:
        ids, words = parse_concept(text)
    except ValueError as e:
        return f"{node}: {e}"
    if not words:
        return True
    dictionaries = _dictionaries()
    labels = sorted({lab for d in dictionaries for lab in d.vocabulary()})
    unknown = [w for w in words if not any(e.lookup(w) for d in dictionaries for e in d.entries)]
    if not unknown:
        return True
    if not labels:
        return (f"{node}: concept {text!r} is a word, but models/sae holds no concept dictionary; "
                f"pick '{BY_ID}' and give concept ids, or add a dictionary (.json from `sae-concepts dictionary`)")
    return "; ".join(f"{node}: no concept dictionary in models/sae has the label {w!r}; nearest labels: "
                     f"{', '.join(nearest_labels(w, labels))}" for w in unknown)
