"""A naive dense TopK SAE: every product is a full [N, n_f] matrix product.

It is the yardstick for correctness tests and the "naive step" in the benchmark, so it is
written for clarity, with the same parameters as TopKSAE.
"""
from __future__ import annotations

import torch

from .sae import TopKSAE


def dense_topk_code(sae: TopKSAE, x: torch.Tensor) -> torch.Tensor:
    xc = x / sae.input_scale - sae.b_pre
    pre = xc @ sae.encoder_weight.t() + sae.latent_bias
    values, indices = pre.topk(sae.cfg.k, dim=1)
    return torch.zeros_like(pre).scatter(1, indices, values.relu())


def dense_decode(sae: TopKSAE, z: torch.Tensor) -> torch.Tensor:
    return (z @ sae.W_dec + sae.b_pre) * sae.input_scale


def dense_losses(sae: TopKSAE, x: torch.Tensor, dead_mask: torch.Tensor | None = None, k_aux: int = 0):
    """(fvu, auxk_loss) computed densely, mirroring TopKSAE.forward."""
    xn = x / sae.input_scale
    xc = xn - sae.b_pre
    pre = xc @ sae.encoder_weight.t() + sae.latent_bias
    values, indices = pre.topk(sae.cfg.k, dim=1)
    z = torch.zeros_like(pre).scatter(1, indices, values.relu())
    xn_hat = z @ sae.W_dec + sae.b_pre
    residual = xn - xn_hat
    fvu = residual.pow(2).sum() / (xn - xn.mean(0)).pow(2).sum()
    auxk = xn.new_zeros(())
    if dead_mask is not None and k_aux > 0 and dead_mask.any():
        masked = pre.masked_fill(~dead_mask, float("-inf"))
        kk = min(k_aux, int(dead_mask.sum()))
        av, ai = masked.topk(kk, dim=1)
        z_aux = torch.zeros_like(pre).scatter(1, ai, av.relu())
        e = residual.detach()
        auxk = (z_aux @ sae.W_dec - e).pow(2).sum() / (e - e.mean(0)).pow(2).sum()
    return fvu, auxk
