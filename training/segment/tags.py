"""Tags per held-out image: which object words the segmenter is asked to find.

Default (the paper's cheaper source): the nouns of the image's prompt, found by matching the
prompt's words and word pairs/triples against an object-noun vocabulary (plurals folded to the
singular). The bundled vocabulary (data/object_nouns.txt) is our own list of things prompts name
and detectors can box; --tag_vocabulary replaces it. No POS model is used: there is none offline,
and a vocabulary keeps adjectives ("red"), styles ("oil painting") and verbs out of the tags.

The RAM-style option (an image tagger that needs no prompt) is `ClipTagger` in clip_tagger.py.
"""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from ...sae_core.errors import SAEConceptsError

DEFAULT_VOCABULARY = Path(__file__).parent / "data" / "object_nouns.txt"
MAX_WORDS = 3   # longest vocabulary entry matched ("hot air balloon")

# Irregular plurals that suffix rules get wrong. Words that are their own plural ("sheep",
# "glasses") need no entry: a word is always tried as it stands first.
IRREGULAR = {"men": "man", "women": "woman", "children": "child", "people": "person", "feet": "foot",
             "teeth": "tooth", "geese": "goose", "mice": "mouse", "oxen": "ox"}


class TagVocabularyError(SAEConceptsError, ValueError):
    pass


@lru_cache(maxsize=8)
def load_vocabulary(path: str = "") -> frozenset[str]:
    """Lower-case entries of a vocabulary file (one per line, '#' comments); default: the bundled one."""
    p = Path(path) if path else DEFAULT_VOCABULARY
    if not p.is_file():
        raise TagVocabularyError(f"tag vocabulary file {p} not found")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise TagVocabularyError(f"{p}: not UTF-8 text ({e})") from e
    words = frozenset(" ".join(line.split("#")[0].lower().replace("_", " ").split()) for line in lines) - {""}
    if not words:
        raise TagVocabularyError(f"{p}: holds no tags")
    return words


def singular_forms(word: str) -> list[str]:
    """Candidate singulars of a word, most likely first (the word itself comes first)."""
    out = [word]
    if word in IRREGULAR:
        out.append(IRREGULAR[word])
    if word.endswith("ies") and len(word) > 4:
        out.append(word[:-3] + "y")
    if word.endswith("ves") and len(word) > 4:
        out += [word[:-3] + "f", word[:-3] + "fe"]
    if word.endswith("es") and len(word) > 3:
        out.append(word[:-2])
    if word.endswith("s") and not word.endswith("ss") and len(word) > 2:
        out.append(word[:-1])
    return out


def _match(words: list[str], vocabulary: frozenset[str]) -> str | None:
    """The vocabulary entry these words name (plural last word folded), or None."""
    for last in singular_forms(words[-1]):
        phrase = " ".join(words[:-1] + [last])
        if phrase in vocabulary:
            return phrase
    return None


def prompt_nouns(prompt: str, vocabulary: frozenset[str] | None = None) -> list[str]:
    """Vocabulary nouns a prompt names, in order of first mention, longest match first.

    "two dogs and a hot air balloon over the sea" -> ["dog", "hot air balloon", "sea"]
    """
    vocabulary = load_vocabulary() if vocabulary is None else vocabulary
    words = re.findall(r"[a-z][a-z'-]*", prompt.lower())
    tags: list[str] = []
    i = 0
    while i < len(words):
        for n in range(min(MAX_WORDS, len(words) - i), 0, -1):
            tag = _match(words[i:i + n], vocabulary)
            if tag is not None:
                if tag not in tags:
                    tags.append(tag)
                i += n
                break
        else:
            i += 1
    return tags
