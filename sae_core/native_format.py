"""The native file: one safetensors file holding one or more SAEs, with JSON metadata.

Tensors are named `sae.<i>.<param>`; the header's metadata carries
  format = "sae_concepts.sae_set", format_version = "1",
  saes = JSON list, one object per SAE: {config: SaeConfig, info: SAEInfo,
         normalisation: {kind: "scalar", scale} or {kind: "per_dimension"} (config.standardise:
         input_scale is a [d] tensor), d, n_f, k}.
"""
from __future__ import annotations

import json

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .atomic import atomic_path
from .canonical_safetensors import canonicalise_header
from .config import SaeConfig
from .errors import SAEFileError
from .sae import TopKSAE
from .sae_set import SAEEntry, SAEInfo, SAESet
from .validation import check_tensor, require_keys

FORMAT_NAME = "sae_concepts.sae_set"
FORMAT_VERSION = 1
_PARAMS = ("encoder_weight", "latent_bias", "W_dec", "b_pre", "input_scale")


def save_sae_set(path, entries: SAESet | list[SAEEntry]) -> None:
    """Write atomically: a kill mid-write leaves any earlier file untouched."""
    entries = list(entries)
    tensors: dict[str, torch.Tensor] = {}
    described = []
    for i, e in enumerate(entries):
        for name, value in e.sae.state_dict().items():
            tensors[f"sae.{i}.{name}"] = value.detach().float().contiguous().cpu()
        for name in ("latent_mean", "latent_std"):
            value = getattr(e, name)
            if value is not None:
                tensors[f"sae.{i}.{name}"] = value.detach().float().contiguous().cpu()
        described.append({
            "config": e.sae.cfg.to_dict(), "info": e.info.to_dict(),
            "normalisation": ({"kind": "per_dimension"} if e.sae.cfg.standardise
                              else {"kind": "scalar", "scale": float(e.sae.input_scale)}),
            "d": e.sae.d_in, "n_f": e.sae.n_latents, "k": e.sae.k,
        })
    meta = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION), "saes": json.dumps(described)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
        canonicalise_header(tmp)   # the same SAEs give the same bytes


def read_safetensors(path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(metadata, tensors) or an SAEFileError for a truncated / non-safetensors file."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise SAEFileError(path, f"not a readable safetensors file (truncated or corrupt?): {e}") from e
    return meta, tensors


def is_native(meta: dict) -> bool:
    return meta.get("format") == FORMAT_NAME


def load_native(path, meta: dict, tensors: dict[str, torch.Tensor]) -> SAESet:
    version = meta.get("format_version")
    if version != str(FORMAT_VERSION):
        raise SAEFileError(path, f"format_version {version!r} is not supported (this version reads "
                                 f"{FORMAT_VERSION}); update sae_concepts")
    try:
        described = json.loads(meta["saes"])
    except (KeyError, json.JSONDecodeError) as e:
        raise SAEFileError(path, f"metadata 'saes' is missing or not JSON: {e}") from e
    entries = []
    for i, desc in enumerate(described):
        try:
            cfg = SaeConfig.from_dict(desc["config"])
            info = SAEInfo.from_dict(desc["info"])
        except (KeyError, TypeError, ValueError) as e:
            raise SAEFileError(path, f"SAE #{i}: bad config/info metadata: {e}") from e
        n, d = cfg.n_latents, cfg.d_in
        shapes = {"encoder_weight": (n, d), "latent_bias": (n,), "W_dec": (n, d), "b_pre": (d,),
                  "input_scale": (d,) if cfg.standardise else ()}
        require_keys(path, tensors, [f"sae.{i}.{p}" for p in _PARAMS])
        sae = TopKSAE(cfg)
        sae.load_state_dict({p: check_tensor(path, f"sae.{i}.{p}", tensors[f"sae.{i}.{p}"], shapes[p],
                                             positive=p == "input_scale") for p in _PARAMS})
        stats = {name: check_tensor(path, f"sae.{i}.{name}", tensors[f"sae.{i}.{name}"], (n,))
                 for name in ("latent_mean", "latent_std") if f"sae.{i}.{name}" in tensors}
        entries.append(SAEEntry(sae.eval().requires_grad_(False), info, **stats))
    return SAESet(entries, source=str(path))
