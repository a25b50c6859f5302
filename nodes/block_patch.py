"""Wrap SD1.x transformer blocks of a cloned ModelPatcher so an edit sees and changes Delta.

What was verified in ComfyUI v0.8.0 (see README): an object patch on the block's path with a
SpatialTransformer *subclass* instance that shares the original's children and parameters.
- A subclass, because forward_timestep_embed dispatches on isinstance(SpatialTransformer).
- Shared _modules/_parameters/_buffers: weight and LoRA patches, which ComfyUI applies by
  attribute path through whatever sits at the block's path, reach the real weights.
- The wrapped module is whatever get_model_object returns, possibly an earlier wrapper, so
  patches chain. Object patches live on the clone only and are reverted by ComfyUI on unpatch:
  nothing global is left behind.
The training collector uses this same wrapper, so what an SAE learned is what a node steers.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from comfy.ldm.modules.attention import SpatialTransformer


log = logging.getLogger("sae_concepts")

ROW_KIND = {0: "cond", 1: "uncond"}   # ComfyUI's cond_or_uncond codes


@dataclass
class BlockCall:
    """What an edit learns about one call of the block."""
    block: str                     # ComfyUI path, e.g. "input_blocks.8.1"
    sigmas: torch.Tensor           # [B] sigma of each batch row
    row_kinds: list[str]           # "cond" / "uncond" for each batch row
    transformer_options: dict


# edit(delta [B, C, H, W], call) -> additive change to delta (same shape) or None for no change
BlockEdit = Callable[[torch.Tensor, BlockCall], Optional[torch.Tensor]]


def row_kinds(batch: int, transformer_options: dict) -> list[str]:
    """The U-Net batch is len(cond_or_uncond) equal chunks; chunk i is of kind cond_or_uncond[i]."""
    codes = transformer_options.get("cond_or_uncond") or [0]
    if batch % len(codes):
        return ["cond"] * batch
    per = batch // len(codes)
    return [ROW_KIND.get(c, "cond") for c in codes for _ in range(per)]


def row_sigmas(batch: int, transformer_options: dict) -> torch.Tensor:
    """Sigma of each U-Net batch row. ComfyUI passes one sigma per latent image; every
    cond/uncond chunk repeats the latent batch, so row r belongs to image r % len(sigmas)."""
    sigmas = transformer_options.get("sigmas")
    if sigmas is None:
        return torch.full((batch,), float("nan"))
    sigmas = sigmas.reshape(-1)
    if sigmas.numel() == batch:
        return sigmas
    if batch % sigmas.numel() == 0:
        return sigmas.repeat(batch // sigmas.numel())
    return sigmas[:1].expand(batch)


class PatchedSpatialTransformer(SpatialTransformer):
    """Runs the wrapped block, then lets `edit` add a change to its Delta = output - input."""

    def __init__(self, inner: SpatialTransformer, block: str, edit: BlockEdit):
        torch.nn.Module.__init__(self)
        self._modules = inner._modules
        self._parameters = inner._parameters
        self._buffers = inner._buffers
        self.in_channels = inner.in_channels
        self.use_linear = inner.use_linear
        # Plain attributes, not submodules: registering them would add duplicate weights.
        object.__setattr__(self, "sae_inner", inner)
        object.__setattr__(self, "sae_block", block)
        object.__setattr__(self, "sae_edit", edit)

    def forward(self, x, context=None, transformer_options={}):
        out = self.sae_inner(x, context, transformer_options)
        call = BlockCall(self.sae_block, row_sigmas(x.shape[0], transformer_options),
                         row_kinds(x.shape[0], transformer_options), transformer_options)
        change = self.sae_edit(out - x, call)
        if change is None:
            return out
        return out + change.to(out.dtype)


def patch_block(model, block: str, edit: BlockEdit):
    """A clone of `model` whose block `block` runs `edit` after the original (or earlier patch)."""
    from .model_blocks import resolve_block
    path = resolve_block(model, block)
    m = model.clone()
    inner = m.get_model_object("diffusion_model." + path)
    m.add_object_patch("diffusion_model." + path, PatchedSpatialTransformer(inner, path, edit))
    return m


class TimestepRecorder:
    """BlockEdit that changes nothing and keeps Delta of the first call at each target sigma,
    per row kind: {(t, "cond" | "uncond"): [rows, C, H, W]} in `seen`, on the CPU."""

    def __init__(self, targets: dict[float, float], dtype=torch.float32):
        self.targets = targets            # t bucket -> sigma
        self.dtype = dtype
        self.seen: dict[tuple[float, str], torch.Tensor] = {}

    def reset(self):
        self.seen = {}

    def __call__(self, delta, call: BlockCall):
        for t, sigma in self.targets.items():
            hit = (call.sigmas.float().cpu() - sigma).abs() <= 1e-4 * max(1.0, abs(sigma))
            for kind in ("cond", "uncond"):
                rows = [i for i, k in enumerate(call.row_kinds) if k == kind and hit[i]]
                if rows and (t, kind) not in self.seen:
                    self.seen[(t, kind)] = delta[rows].detach().to("cpu", self.dtype)
        return None


def sigma_to_t(model_sampling, sigma: float) -> float | None:
    """The paper's diffusion time t in [0, 1] (1.0 = pure noise) for a sigma, i.e. 1 - percent."""
    try:
        ts = float(model_sampling.timestep(torch.tensor([float(sigma)])).reshape(-1)[0])
        n = len(model_sampling.sigmas) - 1
    except (AttributeError, TypeError):
        return None
    return min(max(ts / n, 0.0), 1.0)


class TimestepWindow:
    """ComfyUI's start_percent / end_percent convention (as ControlNet): active when
    percent_to_sigma(end) <= sigma <= percent_to_sigma(start)."""

    def __init__(self, model, start_percent: float, end_percent: float):
        if not 0.0 <= start_percent <= end_percent <= 1.0:
            raise ValueError(f"timestep window needs 0 <= start_percent <= end_percent <= 1, got "
                             f"start_percent={start_percent}, end_percent={end_percent}")
        ms = model.get_model_object("model_sampling")
        self.start, self.end = start_percent, end_percent
        self.sigma_hi = ms.percent_to_sigma(start_percent)
        self.sigma_lo = ms.percent_to_sigma(end_percent)

    def active(self, sigmas: torch.Tensor) -> torch.Tensor:
        s = sigmas.float().cpu()
        return (s >= self.sigma_lo) & (s <= self.sigma_hi)

    def paper_t(self) -> str:
        return f"paper's t from {1 - self.start:.2f} down to {1 - self.end:.2f}"
