"""Concept dictionaries: which labels each concept id (CID) of an SAE was seen with.

File (JSON): {"format": "sae_concepts.concept_dictionary", "format_version": 1,
  "dictionaries": [{"block": ComfyUI path, "t": float | null, "cond": "cond" | "uncond" | "both",
                    "concepts": {"<cid>": {"labels": [..], "counts": {label: n}}}}]}
One entry per SAE of a set; a word looks up the CIDs whose labels contain it (the paper's C_o).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .atomic import write_text_atomic
from .blocks import canonical_block
from .errors import SAEFileError

FORMAT_NAME = "sae_concepts.concept_dictionary"


def _block_name(block: str) -> str:
    """SD1.x names are canonicalised; other families' block names are kept as written."""
    try:
        return canonical_block(block)
    except ValueError:
        return block


@dataclass
class SAEConcepts:
    block: str
    t: float | None
    cond: str
    concepts: dict[int, dict] = field(default_factory=dict)   # cid -> {"labels": [...], "counts": {...}}

    def labels(self, cid: int) -> list[str]:
        entry = self.concepts.get(int(cid))
        if not entry:
            return []
        counts = entry.get("counts") or {}
        return sorted(counts, key=lambda w: -counts[w]) if counts else list(dict.fromkeys(entry["labels"]))

    def lookup(self, word: str) -> list[int]:
        w = word.strip().lower()
        return sorted(cid for cid, e in self.concepts.items()
                      if any(w == lab.lower() or w in lab.lower().split() for lab in e.get("labels", [])))


class ConceptDictionary:
    def __init__(self, entries: list[SAEConcepts], source: str = ""):
        self.entries, self.source = entries, source

    def for_sae(self, block: str, t: float | None, cond: str) -> SAEConcepts | None:
        block = _block_name(block)
        fitting = [e for e in self.entries if e.block == block and e.cond in (cond, "both")] or \
                  [e for e in self.entries if e.block == block]
        if not fitting:
            return None
        if t is None:
            return fitting[0]
        return min(fitting, key=lambda e: abs((e.t if e.t is not None else t) - t))

    def vocabulary(self) -> list[str]:
        return sorted({lab for e in self.entries for c in e.concepts.values() for lab in c.get("labels", [])})

    def save(self, path) -> None:
        data = {"format": FORMAT_NAME, "format_version": 1, "dictionaries": [
            {"block": e.block, "t": e.t, "cond": e.cond,
             "concepts": {str(k): v for k, v in sorted(e.concepts.items())}} for e in self.entries]}
        write_text_atomic(path, json.dumps(data, indent=1))

    @classmethod
    def load(cls, path) -> "ConceptDictionary":
        from .foreign_formats import read_json
        path = Path(path)
        data = read_json(path)
        if data.get("format") != FORMAT_NAME:
            raise SAEFileError(path, f"not a concept dictionary (format must be {FORMAT_NAME!r})")
        entries = []
        try:
            for d in data["dictionaries"]:
                concepts = {int(k): {"labels": list(v.get("labels", [])), "counts": dict(v.get("counts", {}))}
                            for k, v in d["concepts"].items()}
                entries.append(SAEConcepts(_block_name(d["block"]), d.get("t"), d.get("cond", "both"), concepts))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise SAEFileError(path, f"malformed concept dictionary: {type(e).__name__}: {e}") from e
        return cls(entries, source=str(path))
