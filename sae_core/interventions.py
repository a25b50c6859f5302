"""Steering math on a block's residual update Delta, through an SAE's concept vectors.

All functions take the positions of ONE image as rows (delta: [P, d], P = h * w) and return
the additive change to Delta (same shape), so that positions left alone stay bit-identical.
The SAE code Z is read in input units (values times the SAE's input scale), so beta means the
same whatever normalisation the SAE was trained with. method.md marks these formulas [R]:
they follow the paper's prose and Figure 2.
"""
from __future__ import annotations

import torch

from .errors import ConfigError
from .sae import TopKSAE


def _ids(sae: TopKSAE, concept_ids) -> torch.Tensor:
    ids = torch.as_tensor(list(concept_ids), dtype=torch.long, device=sae.W_dec.device)
    if ids.numel() == 0:
        raise ConfigError("no concept ids given")
    bad = ids[(ids < 0) | (ids >= sae.n_latents)]
    if bad.numel():
        raise ConfigError(f"concept id(s) {bad.tolist()} out of range: this SAE has {sae.n_latents} "
                         f"concepts (0..{sae.n_latents - 1})")
    return ids


def code_in_input_units(sae: TopKSAE, delta: torch.Tensor):
    """(values [P, k], indices [P, k]) of Delta's SAE code, values scaled to input units."""
    code = sae.encode(delta)
    scales = sae.latent_scales()
    return code.values * (scales[code.indices] if scales.ndim else scales), code.indices


def concept_values(values: torch.Tensor, indices: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Z[:, ids] from a sparse code: [P, len(ids)], zero where a concept is not active."""
    hit = indices[:, :, None] == ids[None, None, :]          # [P, k, C]
    return (hit * values[:, :, None]).sum(1)


def spatial_steer(sae: TopKSAE, delta: torch.Tensor, concept_ids, region: torch.Tensor,
                  beta: float) -> torch.Tensor:
    """Composition: inside S add beta * ||Z_ij|| * sum_c f_c; outside S remove the concepts'
    own contribution sum_c Z_ij[c] * W_dec[c]. `region` [P] in [0, 1] (soft masks blend both)."""
    ids = _ids(sae, concept_ids)
    values, indices = code_in_input_units(sae, delta)
    norm = values.norm(dim=1, keepdim=True)                  # ||Z_ij||
    f_sum = sae.concept_vectors(ids).sum(0)                  # sum_c f_c (unit vectors)
    own = concept_values(values, indices, ids) @ sae.decoder_rows_in_input_units(ids)
    r = region.to(delta.dtype).reshape(-1, 1)
    return r * (beta * norm * f_sum) - (1 - r) * own


# How the style steer spreads beta over positions (beta * ||z_ij|| / divisor): "sum" divides by
# sum_ij ||z_ij|| (the paper as written: the total added is beta, so the change per position
# shrinks with the grid), "mean" by the mean ||z|| (beta = the change at an average position,
# whatever the grid size), "none" not at all (beta * ||z_ij||, as the spatial steer).
NORMALISATIONS = ("sum", "mean", "none")


def global_steer(sae: TopKSAE, delta: torch.Tensor, concept_ids, beta: float,
                 normalisation: str = "sum") -> torch.Tensor:
    """Style: every position gets beta * ||z_ij|| / divisor * sum_c f_c (see NORMALISATIONS)."""
    if normalisation not in NORMALISATIONS:
        raise ConfigError(f"normalisation must be one of {NORMALISATIONS}, got {normalisation!r}")
    ids = _ids(sae, concept_ids)
    values, _ = code_in_input_units(sae, delta)
    norm = values.norm(dim=1, keepdim=True)
    tiny = torch.finfo(norm.dtype).tiny
    divisor = {"sum": norm.sum(), "mean": norm.mean(), "none": torch.ones((), dtype=norm.dtype)}[normalisation]
    weight = beta * norm / divisor.clamp_min(tiny)
    return weight * sae.concept_vectors(ids).sum(0)


def top_concepts(sae: TopKSAE, delta: torch.Tensor):
    """Per position the strongest concept id and its value (input units): ([P], [P])."""
    values, indices = code_in_input_units(sae, delta)
    best, where = values.max(dim=1)
    return indices.gather(1, where[:, None]).squeeze(1), best


def concept_map(sae: TopKSAE, delta: torch.Tensor, concept_ids) -> torch.Tensor:
    """Summed activation of the given concepts at each position: [P] (input units)."""
    ids = _ids(sae, concept_ids)
    values, indices = code_in_input_units(sae, delta)
    return concept_values(values, indices, ids).sum(1)


def sdlens_paint(sae: TopKSAE, latent_mean: torch.Tensor, concept_ids, region: torch.Tensor,
                 strength: float) -> torch.Tensor:
    """SDLens-style steering: region * strength * sum_c mean_activation[c] * W_dec[c] (input units).
    The region is the brush mask pooled to the block's grid; no SAE code of Delta is needed."""
    ids = _ids(sae, concept_ids)
    direction = (latent_mean[ids].to(sae.W_dec.dtype)[:, None] * sae.W_dec[ids]).sum(0) * sae.input_scale
    return region.to(sae.W_dec.dtype).reshape(-1, 1) * strength * direction


def activation_addition(sae: TopKSAE, acts: torch.Tensor, concept_ids, region: torch.Tensor, strength: float,
                        centre: bool = False) -> torch.Tensor:
    """Shabalin et al.'s steering: region * strength * mean_p ||acts_p|| * u, where u is the unit
    sum of the concepts' decoder directions (mean-centred first when `centre`: a LayerNorm without
    affine after the block removes the all-ones component). acts [P, d] are what the SAE reads."""
    ids = _ids(sae, concept_ids)
    direction = sae.to_input_space(sae.W_dec[ids].sum(0)).to(acts.dtype)
    if centre:
        direction = direction - direction.mean()
    unit = direction / direction.norm().clamp_min(torch.finfo(direction.dtype).tiny)
    scale = acts.norm(dim=1).mean()
    return region.to(acts.dtype).reshape(-1, 1) * (strength * scale) * unit
