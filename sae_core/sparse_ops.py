"""Index-based kernels for the TopK SAE.

A TopK code has k non-zeros out of n_f per vector, so neither decoding nor the encoder's
backward pass needs a dense [N, n_f] matrix product. The only dense product any TopK SAE
step must do is the encoder's forward pass (every latent's pre-activation is needed to
pick the top k).
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

# The CSR product below is all we use of torch's sparse support, and it is tested here.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")


def sparse_decode(values: torch.Tensor, indices: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """sum_j values[:, j] * W_dec[indices[:, j]] without building the dense code.

    values, indices: [N, k]; W_dec: [n_f, d] (one row per latent) -> [N, d].
    """
    return F.embedding_bag(indices, W_dec, per_sample_weights=values, mode="sum")


def sparse_decode_nonzero(values: torch.Tensor, indices: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """As sparse_decode, but entries whose value is 0 cost nothing (variable-length bags). For
    AuxK, where ReLU zeroes many of the k_aux values and the rest of the work would be wasted."""
    keep = values != 0
    offsets = torch.zeros(values.shape[0], dtype=torch.int64, device=values.device)
    offsets[1:] = torch.cumsum(keep.sum(1), 0)[:-1]
    return F.embedding_bag(indices[keep], W_dec, offsets, per_sample_weights=values[keep], mode="sum")


def _scatter_rows(indices: torch.Tensor, weights: torch.Tensor, rows: torch.Tensor, n: int) -> torch.Tensor:
    """out[i] = sum over (b, j) with indices[b, j] == i of weights[b, j] * rows[b].

    This is S @ rows with S an [n, N] matrix holding N * k non-zeros; done as a CSR
    product so the cost is N * k * d, not n * N * d.
    """
    N, k = indices.shape
    keep = (weights != 0).reshape(-1)   # zero gradients (ReLU'd AuxK entries) add nothing
    flat_idx = indices.reshape(-1)[keep]
    row_of = torch.arange(N, device=indices.device).repeat_interleave(k)[keep]
    order = torch.argsort(flat_idx, stable=True)
    cols = row_of[order]
    crow = torch.zeros(n + 1, dtype=torch.int64, device=indices.device)
    crow[1:] = torch.cumsum(torch.bincount(flat_idx, minlength=n), 0)
    S = torch.sparse_csr_tensor(crow, cols, weights.reshape(-1)[keep][order], size=(n, N), check_invariants=False)
    return torch.sparse.mm(S, rows)


class _TopKEncode(torch.autograd.Function):
    """Pre-activations -> top-k values and indices, plus optional AuxK top-k over dead latents.

    Backward scatters the [N, k (+ k_aux)] value gradients straight into the rows of W_enc
    that were selected, instead of a dense [N, n_f] x [N, d] product.
    """

    @staticmethod
    def forward(ctx, x_centered, W_enc, latent_bias, k, dead_ids, k_aux):
        pre = torch.addmm(latent_bias, x_centered, W_enc.t())
        values, indices = pre.topk(k, dim=1, sorted=False)
        if dead_ids is not None and dead_ids.numel() > 0 and k_aux > 0:
            aux_pre = pre.index_select(1, dead_ids)
            aux_values, aux_local = aux_pre.topk(min(k_aux, dead_ids.numel()), dim=1, sorted=False)
            aux_indices = dead_ids[aux_local]
        else:
            aux_values = pre.new_zeros(pre.shape[0], 0)
            aux_indices = indices.new_zeros(pre.shape[0], 0)
        ctx.save_for_backward(x_centered, W_enc, indices, aux_indices)
        ctx.n_latents = W_enc.shape[0]
        ctx.mark_non_differentiable(indices, aux_indices)
        return values, indices, aux_values, aux_indices

    @staticmethod
    def backward(ctx, grad_values, _gi, grad_aux_values, _gai):
        x_centered, W_enc, indices, aux_indices = ctx.saved_tensors
        if grad_values is None:
            grad_values = torch.zeros(indices.shape, dtype=x_centered.dtype, device=x_centered.device)
        if aux_indices.shape[1] > 0 and grad_aux_values is not None:
            idx = torch.cat([indices, aux_indices], 1)
            grad = torch.cat([grad_values, grad_aux_values], 1)
        else:
            idx, grad = indices, grad_values
        grad_x = grad_W = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = sparse_decode_nonzero(grad, idx, W_enc) if aux_indices.shape[1] else sparse_decode(grad, idx, W_enc)
        if ctx.needs_input_grad[1]:
            grad_W = _scatter_rows(idx, grad, x_centered, ctx.n_latents)
        if ctx.needs_input_grad[2]:
            grad_b = torch.zeros(ctx.n_latents, dtype=grad.dtype, device=grad.device)
            grad_b.index_add_(0, idx.reshape(-1), grad.reshape(-1))
        return grad_x, grad_W, grad_b, None, None, None


def topk_encode(x_centered, W_enc, latent_bias, k, dead_ids=None, k_aux=0):
    """(values, indices, aux_values, aux_indices); values are pre-ReLU."""
    return _TopKEncode.apply(x_centered, W_enc, latent_bias, k, dead_ids, k_aux)
