"""Content fingerprints of SAEs: what a concept dictionary records about the SAE set it was built
from, so a consumer can tell "the same weights" from "a file of the same name" (a path says nothing
once a set is retrained or renamed)."""
from __future__ import annotations

import hashlib
import json

import torch


def sae_fingerprint(sae) -> str:
    """16 hex digits of SHA-256 over the SAE's config and every parameter/buffer as float32
    (name, shape, bytes): equal exactly when two SAEs encode and decode the same."""
    h = hashlib.sha256(json.dumps(sae.cfg.to_dict(), sort_keys=True).encode())
    for name, value in sorted(sae.state_dict().items()):
        t = value.detach().to("cpu", torch.float32).contiguous()
        h.update(f"{name}{list(t.shape)}".encode())
        h.update(t.numpy().data)
    return h.hexdigest()[:16]


def set_fingerprint(fingerprints: list[str]) -> str:
    """One fingerprint for a set, from its SAEs' fingerprints in order."""
    return hashlib.sha256(",".join(fingerprints).encode()).hexdigest()[:16]


def sae_set_fingerprint(sae_set) -> str:
    """The fingerprint of a whole set (what metrics and dictionaries record of the set they came from)."""
    return set_fingerprint([sae_fingerprint(e.sae) for e in sae_set])
