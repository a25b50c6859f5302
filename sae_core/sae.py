"""The k-sparse (TopK) autoencoder of Tinaz et al. / Gao et al., with SDLens's optional latent bias."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .config import SaeConfig
from .sparse_ops import encode_topk, sparse_decode, topk_sae_losses


class SparseCode(NamedTuple):
    values: torch.Tensor   # [N, k], >= 0
    indices: torch.Tensor  # [N, k], int64 latent ids


class ForwardOutput(NamedTuple):
    x_hat: torch.Tensor        # [N, d], in input units
    code: SparseCode
    fvu: torch.Tensor          # fraction of variance unexplained, scalar
    auxk_loss: torch.Tensor    # normalised MSE of the dead latents' fit to the residual


class TopKSAE(nn.Module):
    """Parameters (names are the native file's tensor names):

    encoder_weight [n_f, d], latent_bias [n_f], W_dec [n_f, d] (row i = concept vector f_i),
    b_pre [d] (shared by encoder and decoder), input_scale [] (inputs are divided by it), or [d]
    with `standardise`.
    """

    def __init__(self, cfg: SaeConfig, *, device=None, dtype=torch.float32):
        super().__init__()
        self.cfg = cfg
        n, d = cfg.n_latents, cfg.d_in
        kw = dict(device=device, dtype=dtype)
        self.encoder_weight = nn.Parameter(torch.empty(n, d, **kw))
        self.latent_bias = nn.Parameter(torch.zeros(n, **kw), requires_grad=cfg.latent_bias)
        self.W_dec = nn.Parameter(torch.empty(n, d, **kw))
        self.b_pre = nn.Parameter(torch.zeros(d, **kw))
        self.register_buffer("input_scale", torch.ones((d,) if cfg.standardise else (), **kw))
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Tied init: random unit-norm decoder rows, encoder = decoder (W_enc = W_dec^T)."""
        with torch.no_grad():
            w = torch.randn(self.W_dec.shape, generator=generator, dtype=torch.float32)
            w /= w.norm(dim=1, keepdim=True)
            self.W_dec.copy_(w)
            self.encoder_weight.copy_(w)
            self.latent_bias.zero_()
            self.b_pre.zero_()

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def n_latents(self) -> int:
        return self.cfg.n_latents

    @property
    def k(self) -> int:
        return self.cfg.k

    # ---- inference ---------------------------------------------------------------
    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return x / self.input_scale

    def encode(self, x: torch.Tensor) -> SparseCode:
        """x [N, d] -> its k active latents (values are in normalised units)."""
        self._check_input(x)
        xc = self.normalise(x.to(self.W_dec.dtype)) - self.b_pre
        values, indices, _, _ = encode_topk(xc, self.encoder_weight, self._used_latent_bias(), self.cfg.k)
        return SparseCode(values.relu(), indices)

    def decode(self, code: SparseCode) -> torch.Tensor:
        """Sparse code -> x_hat [N, d] in input units, touching only the k active rows of W_dec."""
        return (sparse_decode(code.values, code.indices, self.W_dec) + self.b_pre) * self.input_scale

    def dense_code(self, code: SparseCode) -> torch.Tensor:
        """[N, n_f] code with zeros outside the active set (what interventions read as Z)."""
        z = code.values.new_zeros(code.values.shape[0], self.cfg.n_latents)
        return z.scatter_(1, code.indices, code.values)

    def concept_vectors(self, ids=None) -> torch.Tensor:
        """Unit-norm concept directions f_i (rows of W_dec), in input space."""
        w = self.W_dec if ids is None else self.W_dec[torch.as_tensor(ids, device=self.W_dec.device)]
        w = self.to_input_space(w)
        return w / w.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    # ---- input units -------------------------------------------------------------
    # Latent i adds z_i * (W_dec[i] * s) to x_hat. With one scale s that is (z_i * s) * W_dec[i]: code
    # values times s are "input units" and W_dec's rows keep their direction. With a per-dimension s
    # the direction itself changes, so a latent's input-unit factor is ||W_dec[i] * s|| / ||W_dec[i]||
    # (s again when all dimensions share it) and its row in input space is W_dec[i] * s over that.
    def to_input_space(self, rows: torch.Tensor) -> torch.Tensor:
        """Directions in the SAE's (standardised) units -> input units: unchanged for one scale."""
        return rows * self.input_scale if self.cfg.standardise else rows

    def latent_scales(self) -> torch.Tensor:
        """Per latent, the factor from code values to input units: [n_f] (or the scalar scale)."""
        if not self.cfg.standardise:
            return self.input_scale
        version = (self.W_dec._version, self.input_scale._version, self.W_dec.data_ptr())
        if getattr(self, "_latent_scales_for", None) != version:   # frozen SAEs compute it once
            w = self.W_dec.detach()
            self._latent_scales = (w * self.input_scale).norm(dim=1) / w.norm(dim=1).clamp_min(1e-12)
            self._latent_scales_for = version
        return self._latent_scales

    def decoder_rows_in_input_units(self, ids: torch.Tensor) -> torch.Tensor:
        """W_dec[ids] mapped to input space with the norms the code values in input units expect."""
        rows = self.W_dec[ids]
        if not self.cfg.standardise:
            return rows
        return rows * self.input_scale / self.latent_scales()[ids][:, None]

    # ---- training ----------------------------------------------------------------
    def forward(self, x: torch.Tensor, dead_ids: torch.Tensor | None = None, k_aux: int = 0) -> ForwardOutput:
        """Training forward pass; all losses are computed in normalised units."""
        self._check_input(x)
        xn = self.normalise(x.to(self.W_dec.dtype))
        fvu, auxk, xn_hat, values, indices = topk_sae_losses(
            xn, self.encoder_weight, self.latent_bias, self.W_dec, self.b_pre, self.cfg.k,
            self.cfg.latent_bias, dead_ids, k_aux)
        return ForwardOutput(xn_hat * self.input_scale, SparseCode(values, indices), fvu, auxk)

    def _used_latent_bias(self) -> torch.Tensor | None:
        """The latent bias, or None when the config has none (it is then frozen at zero, and
        skipping it saves a pass over the [N, n_f] pre-activations)."""
        return self.latent_bias if self.cfg.latent_bias else None

    @torch.no_grad()
    def remove_parallel_decoder_grad(self) -> None:
        """Keep only the gradient component orthogonal to each unit-norm decoder row."""
        g = self.W_dec.grad
        if g is not None:
            g.addcmul_(torch.linalg.vecdot(g, self.W_dec).unsqueeze(1), self.W_dec, value=-1)

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        self.W_dec /= torch.linalg.vector_norm(self.W_dec, dim=1, keepdim=True).clamp_min(1e-12)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 2 or x.shape[1] != self.cfg.d_in:
            raise ValueError(
                f"SAE expects activations of shape [N, {self.cfg.d_in}], got {list(x.shape)}"
            )
