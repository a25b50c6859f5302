"""Concept dictionaries: which labels each concept id (CID) of an SAE was seen with.

File (JSON): {"format": "sae_concepts.concept_dictionary", "format_version": 2,
  "built_from": {"sae_file": the SAE set's file name, "fingerprint": the set's content fingerprint},
  "dictionaries": [{"block": ComfyUI path, "t": float | null, "cond": "cond" | "uncond" | "both",
                    "sae_fingerprint": content fingerprint of that SAE's weights,
                    "concepts": {"<cid>": {"labels": [..], "counts": {label: n}}}}]}
One entry per SAE of a set; a word looks up the CIDs whose labels contain it (the paper's C_o).
Concept ids mean something only for the weights they were found in, so every consumer checks the
fingerprints against the SAE set it is given (`check_built_from`). Version 1 files (no
fingerprints) still load; they cannot be checked.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from .atomic import write_text_atomic
from .errors import DictionaryMismatchError, SAEFileError
from .families import canonical_block
from .fingerprint import sae_fingerprint, set_fingerprint
from .selection import nearest

FORMAT_NAME = "sae_concepts.concept_dictionary"
FORMAT_VERSION = 2
log = logging.getLogger("sae_concepts")


@dataclass
class SAEConcepts:
    block: str
    t: float | None
    cond: str
    concepts: dict[int, dict] = field(default_factory=dict)   # cid -> {"labels": [...], "counts": {...}}
    sae_fingerprint: str = ""   # content fingerprint of the SAE the concepts were found in

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


def _sae_key(info) -> tuple:
    try:
        block = canonical_block(info.block or info.block_diffusers)
    except ValueError:
        block = info.block or info.block_diffusers
    return block, info.t, info.cond


class ConceptDictionary:
    def __init__(self, entries: list[SAEConcepts], source: str = "", built_from: dict | None = None):
        self.entries, self.source = entries, source
        self.built_from = built_from or {}   # {"sae_file": name, "fingerprint": set fingerprint}

    @classmethod
    def for_sae_set(cls, sae_set, entries: list[SAEConcepts]) -> "ConceptDictionary":
        """A dictionary whose entries record the fingerprints of `sae_set`'s SAEs."""
        prints = {_sae_key(e.info): sae_fingerprint(e.sae) for e in sae_set}
        for c in entries:
            c.sae_fingerprint = prints.get((c.block, c.t, c.cond), "")
        name = Path(sae_set.source).name if sae_set.source else ""
        return cls(entries, built_from={"sae_file": name, "fingerprint": set_fingerprint(list(prints.values()))})

    def check_built_from(self, sae_set) -> str:
        """Raise DictionaryMismatchError unless this dictionary was built from `sae_set`'s weights:
        every SAE whose (block, t, cond) the dictionary covers must have the recorded fingerprint,
        and it must cover at least one. Returns the set's fingerprint (hashing the weights once for
        callers that also record or compare it)."""
        prints = [sae_fingerprint(e.sae) for e in sae_set]
        if not self.built_from.get("fingerprint"):
            log.warning(f"concept dictionary {self.source}: made before dictionaries recorded their SAE set "
                        f"(format_version 1); cannot check that it belongs to {sae_set.source}")
            return set_fingerprint(prints)
        own = {(e.block, e.t, e.cond): e for e in self.entries}
        covered = [(e, fp, own[_sae_key(e.info)]) for e, fp in zip(sae_set, prints) if _sae_key(e.info) in own]
        wrong = [e.info.label() for e, fp, mine in covered if mine.sae_fingerprint != fp]
        if covered and not wrong:
            # The right weights, so ids beyond their latents mean an edited or damaged file.
            too_large = [f"{e.info.label()} (concept {max(mine.concepts)} of {e.sae.n_latents})"
                         for e, _, mine in covered if mine.concepts and hasattr(e.sae, "n_latents")
                         and max(mine.concepts) >= e.sae.n_latents]
            if too_large:
                raise DictionaryMismatchError(f"concept dictionary {self.source or '(unsaved)'}: concept ids beyond the "
                                              f"SAE's latents: {too_large[:3]}; the file was edited or is damaged")
            missing = [e.info.label() for e in sae_set if _sae_key(e.info) not in own]
            if missing:
                log.warning(f"concept dictionary {self.source}: has no concepts for {len(missing)} of the set's "
                            f"{len(prints)} SAEs ({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''}; built "
                            f"before they were trained?); they are left unlabelled")
            return set_fingerprint(prints)
        why = (f"its SAEs for {wrong[:3]} have other weights" if wrong else
               f"it covers none of the set's SAEs (dictionary: {sorted({e.block for e in self.entries})}, "
               f"SAE set: {sae_set.blocks})")
        raise DictionaryMismatchError(
            f"concept dictionary {self.source or '(unsaved)'} was built from the SAE set "
            f"{self.built_from.get('sae_file') or '?'} (fingerprint {self.built_from['fingerprint']}), not from "
            f"{sae_set.source or 'this SAE set'} (fingerprint {set_fingerprint(prints)}): {why}, so its concept "
            f"ids would name other concepts. Use the dictionary made from this SAE set, or rebuild one with "
            f"`sae-concepts dictionary --sae {sae_set.source or '<this set>'}`")

    def for_sae(self, block: str, t: float | None, cond: str) -> SAEConcepts | None:
        block = canonical_block(block)
        at_block = [e for e in self.entries if e.block == block]
        exact = [e for e in at_block if e.t == t and e.cond == cond]
        if exact:
            return exact[0]
        if self.built_from.get("fingerprint"):
            # Concept ids name concepts of the one SAE they were found in: another (t, cond)'s SAE
            # (a dictionary built before its set was complete) has other concepts under the same ids.
            return None
        return nearest(at_block, t, cond, t_of=lambda e: e.t, cond_of=lambda e: e.cond) if at_block else None

    def vocabulary(self) -> list[str]:
        return sorted({lab for e in self.entries for c in e.concepts.values() for lab in c.get("labels", [])})

    def save(self, path) -> None:
        data = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "built_from": self.built_from,
                "dictionaries": [
                    {"block": e.block, "t": e.t, "cond": e.cond, "sae_fingerprint": e.sae_fingerprint,
                     "concepts": {str(k): v for k, v in sorted(e.concepts.items())}} for e in self.entries]}
        write_text_atomic(path, json.dumps(data, indent=1))

    @classmethod
    def load(cls, path) -> "ConceptDictionary":
        from .foreign_formats import read_json
        path = Path(path)
        data = read_json(path)
        if data.get("format") != FORMAT_NAME:
            raise SAEFileError(path, f"not a concept dictionary (format must be {FORMAT_NAME!r})")
        if data.get("format_version", 1) not in (1, FORMAT_VERSION):
            raise SAEFileError(path, f"format_version {data.get('format_version')!r} is not supported (this "
                                     f"version reads 1 and {FORMAT_VERSION}); update sae_concepts")
        entries = []
        try:
            for d in data["dictionaries"]:
                concepts = {}
                for k, v in d["concepts"].items():
                    labels = v.get("labels", [])
                    if int(k) < 0 or not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
                        raise ValueError(f"concept {k!r} of {d['block']}: ids must be >= 0 and labels a list of words")
                    concepts[int(k)] = {"labels": list(labels), "counts": dict(v.get("counts", {}))}
                entries.append(SAEConcepts(canonical_block(d["block"]), d.get("t"), d.get("cond", "both"), concepts,
                                           str(d.get("sae_fingerprint", ""))))
            built_from = dict(data.get("built_from") or {})
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise SAEFileError(path, f"malformed concept dictionary: {type(e).__name__}: {e}") from e
        return cls(entries, source=str(path), built_from=built_from)
