"""Index-based kernels for the TopK SAE.

A TopK code has k non-zeros out of n_f per vector, so neither decoding nor any part of the
backward pass needs a dense [N, n_f] matrix product. The only dense product a TopK SAE step
must do is the encoder's forward pass (every latent's pre-activation is needed to pick the top
k); everything else here costs O(N k d).

The training loss is one autograd function whose backward is written out by hand: the two
weight gradients share one grouping of the active (sample, latent) pairs by latent, and the
pre-bias gradient is a [n_f] x [n_f, d] product instead of an [N, d] matrix. Every kernel used
is deterministic on the CPU at a fixed thread count (no atomics).
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from .cpu_threads import thread_stable_sum

# The CSR products below are all we use of torch's sparse support, and they are tested here.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")

# AuxK's dead-latent products are done densely over the dead latents ([N, n_dead] x [n_dead, d]
# GEMMs) when the aux code fills at least this share of that matrix, and through the index
# kernels otherwise. Measured (benchmarks/bench_peers.py --aux-crossover; CPU, 1 thread, d 640,
# n_f 2560, batch 2048): dense faster at density 0.20 (5.8 s vs 6.5 s a step), the index
# kernels at 0.11 (5.7 s vs 8.9 s); dense/sparse time ~ 0.17-0.2 / density, so the crossover
# is near 1/6. (At k_aux 256 the aux code is that sparse only once most latents are dead.)
AUX_DENSE_MIN_DENSITY = 1 / 6


def sparse_decode(values: torch.Tensor, indices: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """sum_j values[:, j] * W_dec[indices[:, j]] without building the dense code.

    values, indices: [N, k]; W_dec: [n_f, d] (one row per latent) -> [N, d].
    """
    return F.embedding_bag(indices, W_dec, per_sample_weights=values, mode="sum")


class ActivePairs:
    """The (sample, latent) pairs of a sparse code, in sample order, with the two groupings the
    kernels need: by sample (CSR [N, n_f], for decoding and per-pair dot products) and by
    latent (for the weight gradients, built once on first use)."""

    def __init__(self, sample_offsets: torch.Tensor, latent_ids: torch.Tensor, n_latents: int):
        self.sample_offsets = sample_offsets   # [N + 1]
        self.latent_ids = latent_ids           # [P]
        self.n_latents = n_latents
        self._by_latent = None

    @classmethod
    def from_topk(cls, indices: torch.Tensor, n_latents: int, keep: torch.Tensor | None = None) -> "ActivePairs":
        """indices [N, k]; keep [N, k] bool drops pairs (AuxK entries that ReLU zeroed)."""
        N, k = indices.shape
        if keep is None:
            offsets = torch.arange(0, N * k + 1, k, device=indices.device)
            return cls(offsets, indices.reshape(-1), n_latents)
        offsets = torch.zeros(N + 1, dtype=torch.int64, device=indices.device)
        torch.cumsum(keep.sum(1), 0, out=offsets[1:])
        return cls(offsets, indices[keep], n_latents)

    @property
    def n_samples(self) -> int:
        return self.sample_offsets.numel() - 1

    def decode(self, weights: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        """[N, d]: row b = sum of weights[p] * W[latent p] over sample b's pairs."""
        return F.embedding_bag(self.latent_ids, W, self.sample_offsets, per_sample_weights=weights,
                               mode="sum", include_last_offset=True)

    def dots(self, rows: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        """[P]: <rows[sample p], W[latent p]> for every pair (a sampled dense-dense product)."""
        dtype = rows.dtype
        if dtype not in (torch.float32, torch.float64):   # no half-precision sampled_addmm kernel on CPU
            rows, W = rows.float(), W.float()
        pattern = torch.sparse_csr_tensor(self.sample_offsets, self.latent_ids,
                                          rows.new_zeros(self.latent_ids.numel()),
                                          size=(self.n_samples, self.n_latents), check_invariants=False)
        return torch.sparse.sampled_addmm(pattern, rows, W.t(), beta=0.0).values().to(dtype)

    def latent_sums(self, weights: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """[n_f, d]: row i = sum of weights[p] * rows[sample p] over latent i's pairs. An
        embedding bag per latent over the rows (cost P * d, not n_f * N * d; measured 2-3x
        faster on CPU than the same product as a CSR matmul)."""
        order, latent_offsets, samples = self._latent_pattern()
        return F.embedding_bag(samples, rows, latent_offsets, per_sample_weights=weights[order],
                               mode="sum", include_last_offset=True)

    def latent_totals(self, weights: torch.Tensor) -> torch.Tensor:
        """[n_f]: sum of weights[p] over latent i's pairs. On the CPU a 1-D index_add is one
        ordered loop; elsewhere it would use atomics, so a segment sum over the latent-sorted
        pairs keeps the result deterministic there."""
        if weights.device.type == "cpu":
            return weights.new_zeros(self.n_latents).index_add_(0, self.latent_ids, weights)
        order, latent_offsets, _ = self._latent_pattern()
        return torch.segment_reduce(weights[order], "sum", offsets=latent_offsets, unsafe=True)

    def _latent_pattern(self):
        if self._by_latent is None:
            order = torch.argsort(self.latent_ids, stable=True)
            crow = torch.zeros(self.n_latents + 1, dtype=torch.int64, device=self.latent_ids.device)
            torch.cumsum(torch.bincount(self.latent_ids, minlength=self.n_latents), 0, out=crow[1:])
            sample_of = torch.repeat_interleave(torch.arange(self.n_samples, device=crow.device),
                                                self.sample_offsets.diff(), output_size=self.latent_ids.numel())
            self._by_latent = (order, crow, sample_of[order])
        return self._by_latent


# Pre-activations are computed at most this many elements (rows x n_f, 128 MB in fp32) at a
# time on the CPU, so a large batch never holds its whole [N, n_f] matrix. The paper's batch
# (4096 x 5120) is one block: cache-sized blocks (2M elements) measured no faster here, as the
# GEMM re-packs W_enc for every block.
ENCODE_BLOCK_ELEMENTS = 1 << 25


def encode_topk(x_centered: torch.Tensor, W_enc: torch.Tensor, latent_bias: torch.Tensor | None, k: int,
                dead_ids: torch.Tensor | None = None, k_aux: int = 0):
    """(values, indices, aux_values, aux_local): the top k pre-activations of each row (pre-ReLU)
    and, with dead_ids, the top k_aux among the dead latents (aux_local indexes dead_ids; both
    None without). Differentiable when autograd needs it (one block then)."""
    N, n = x_centered.shape[0], W_enc.shape[0]
    with_aux = dead_ids is not None and dead_ids.numel() > 0 and k_aux > 0
    k_aux = min(k_aux, dead_ids.numel()) if with_aux else 0
    tracked = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x_centered, W_enc, latent_bias))
    if tracked or x_centered.device.type != "cpu":
        pre = x_centered @ W_enc.t() if latent_bias is None else torch.addmm(latent_bias, x_centered, W_enc.t())
        values, indices = pre.topk(k, dim=1, sorted=False)
        aux = pre.index_select(1, dead_ids).topk(k_aux, dim=1, sorted=False) if with_aux else (None, None)
        return values, indices, *aux
    rows = max(1, min(N, ENCODE_BLOCK_ELEMENTS // n))
    values = x_centered.new_empty(N, k)
    indices = torch.empty(N, k, dtype=torch.int64, device=x_centered.device)
    aux_values = x_centered.new_empty(N, k_aux) if with_aux else None
    aux_local = torch.empty(N, k_aux, dtype=torch.int64, device=x_centered.device) if with_aux else None
    block = x_centered.new_empty(rows, n)
    for s in range(0, N, rows):
        e = min(N, s + rows)
        pre = block[: e - s]
        if latent_bias is None:
            torch.mm(x_centered[s:e], W_enc.t(), out=pre)
        else:
            torch.addmm(latent_bias, x_centered[s:e], W_enc.t(), out=pre)
        torch.topk(pre, k, dim=1, sorted=False, out=(values[s:e], indices[s:e]))
        if with_aux:
            torch.topk(pre.index_select(1, dead_ids), k_aux, dim=1, sorted=False,
                       out=(aux_values[s:e], aux_local[s:e]))
    return values, indices, aux_values, aux_local


def _weighted_row_sum(weights: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """sum_i weights[i] * rows[i] -> [d], in one fixed order at any thread count."""
    ids = torch.arange(rows.shape[0], device=rows.device).unsqueeze(0)
    return F.embedding_bag(ids, rows, per_sample_weights=weights.unsqueeze(0), mode="sum").squeeze(0)


class _TopKLoss(torch.autograd.Function):
    """The TopK SAE's training losses with a hand-written backward.

    Inputs: xn [N, d] (normalised input), W_enc [n_f, d], latent_bias [n_f], W_dec [n_f, d],
    b_pre [d]; k; whether the latent bias is used; dead latent ids and k_aux for AuxK.
    Outputs: fvu, auxk (both scalars, as TopKSAE.forward defines them), xn_hat [N, d],
    the code's values (after ReLU) and indices [N, k].
    """

    @staticmethod
    def forward(ctx, xn, W_enc, latent_bias, W_dec, b_pre, k, use_latent_bias, dead_ids, k_aux):
        N, n = xn.shape[0], W_enc.shape[0]
        xc = xn - b_pre
        values, indices, aux_values, aux_local = encode_topk(
            xc, W_enc, latent_bias if use_latent_bias else None, k, dead_ids, k_aux)
        acts = values.relu()
        xn_hat = sparse_decode(acts, indices, W_dec).add_(b_pre)
        residual = xn_hat - xn
        # Full sums through thread_stable_sum: a plain .sum() of this size rounds differently
        # at another intra-op thread count, and the weights would drift with it (cpu_threads.py).
        total = thread_stable_sum((xn - xn.mean(0)).pow_(2)).clamp_min(1e-12)
        fvu = thread_stable_sum(residual.pow(2)) / total
        auxk = xn.new_zeros(())
        aux: tuple = ()
        if aux_values is not None:
            # The dead latents learn to explain what the live ones could not (target e = -residual,
            # held fixed). ReLU as in Gao et al.: only dead latents that would fire are pushed.
            n_dead = dead_ids.numel()
            keep = aux_values > 0
            e_total = thread_stable_sum((residual - residual.mean(0)).pow_(2)).clamp_min(1e-12)
            if int(keep.sum()) >= AUX_DENSE_MIN_DENSITY * N * n_dead:
                # Dense over the dead latents: one [N, n_dead] x [n_dead, d] GEMM per product.
                code = xn.new_zeros(N, n_dead).scatter_(1, aux_local, aux_values.relu())
                W_dec_dead = W_dec.index_select(0, dead_ids)
                aux_diff = torch.addmm(residual, code, W_dec_dead)   # e_hat - e
                aux = ("dense", code, aux_local, keep, W_dec_dead)
            else:
                pairs = ActivePairs.from_topk(dead_ids[aux_local], n, keep)
                aux_acts = aux_values[keep]
                aux_diff = pairs.decode(aux_acts, W_dec).add_(residual)
                aux = ("sparse", pairs, aux_acts)
            auxk = thread_stable_sum(aux_diff.pow(2)) / e_total
            aux = aux + (aux_diff, e_total)
        ctx.aux = aux
        ctx.use_latent_bias = use_latent_bias
        ctx.dead_ids = dead_ids
        ctx.save_for_backward(xn, W_enc, W_dec, xc, residual, total, fvu, values, acts, indices)
        ctx.mark_non_differentiable(indices)
        return fvu, auxk, xn_hat, acts, indices

    @staticmethod
    def backward(ctx, g_fvu, g_auxk, g_xn_hat, g_acts_out, _g_indices):
        xn, W_enc, W_dec, xc, residual, total, fvu, values, acts, indices = ctx.saved_tensors
        need_x, need_enc, need_bias, need_dec, need_pre = ctx.needs_input_grad[:5]
        N, k = indices.shape
        n = W_enc.shape[0]
        main = ActivePairs.from_topk(indices, n)
        fvu_scale = 2 * g_fvu / total if g_fvu is not None else xn.new_zeros(())
        g_xhat = residual * fvu_scale
        if g_xn_hat is not None:
            g_xhat += g_xn_hat
        g_acts = main.dots(g_xhat, W_dec).view(N, k)
        if g_acts_out is not None:
            g_acts = g_acts + g_acts_out
        g_values = (g_acts * (values > 0)).reshape(-1)
        g_W_enc = main.latent_sums(g_values, xc) if need_enc else None
        g_W_dec = main.latent_sums(acts.reshape(-1), g_xhat) if need_dec else None
        g_latent = main.latent_totals(g_values)   # = the latent bias gradient; also feeds b_pre's
        g_xc = main.decode(g_values, W_enc) if need_x else None

        if ctx.aux and g_auxk is not None:
            kind, *rest = ctx.aux
            aux_diff, e_total = rest[-2:]
            g_ehat = aux_diff * (2 * g_auxk / e_total)
            dead_ids = ctx.dead_ids
            if kind == "dense":
                code, aux_local, keep, W_dec_dead = rest[:4]
                g_sel = (g_ehat @ W_dec_dead.t()).gather(1, aux_local).mul_(keep)
                g_code = torch.zeros_like(code).scatter_(1, aux_local, g_sel)
                if need_enc:   # dead_ids are distinct: each row receives exactly one addition
                    g_W_enc.index_add_(0, dead_ids, g_code.t() @ xc)
                if need_dec:
                    g_W_dec.index_add_(0, dead_ids, code.t() @ g_ehat)
                g_latent.index_add_(0, dead_ids, g_code.sum(0))
                if need_x:
                    g_xc += g_code @ W_enc.index_select(0, dead_ids)
            else:
                pairs, aux_acts = rest[:2]
                g_aux = pairs.dots(g_ehat, W_dec)   # every kept pair has value > 0: ReLU passes
                if need_enc:
                    g_W_enc += pairs.latent_sums(g_aux, xc)
                if need_dec:
                    g_W_dec += pairs.latent_sums(aux_acts, g_ehat)
                g_latent += pairs.latent_totals(g_aux)
                if need_x:
                    g_xc += pairs.decode(g_aux, W_enc)

        # xn_hat = decode + b_pre and xc = xn - b_pre: b_pre's gradient is the sum over samples of
        # g_xhat - g_xc, and sum_b g_xc[b] = g_latent @ W_enc (no [N, d] matrix needed), summed as
        # one bag: a serial sum, where a GEMV may split the n_f terms by thread.
        g_b_pre = g_xhat.sum(0) - _weighted_row_sum(g_latent, W_enc) if need_pre else None
        g_x = None
        if need_x:   # through xc, through the residual, and through the FVU's denominator
            g_x = g_xc - residual * fvu_scale - (xn - xn.mean(0)) * (fvu_scale * fvu)
        g_bias = g_latent if need_bias and ctx.use_latent_bias else None
        return g_x, g_W_enc, g_bias, g_W_dec, g_b_pre, None, None, None, None


def topk_sae_losses(xn, W_enc, latent_bias, W_dec, b_pre, k: int, use_latent_bias: bool,
                    dead_ids: torch.Tensor | None = None, k_aux: int = 0):
    """(fvu, auxk, xn_hat, values, indices) of the TopK SAE on normalised input xn; see _TopKLoss."""
    return _TopKLoss.apply(xn, W_enc, latent_bias, W_dec, b_pre, k, use_latent_bias, dead_ids, k_aux)
