"""Patch a block of a cloned ModelPatcher so an edit sees and changes its output, for every family.

An edit always sees the block's image activations as a grid [B, C, H, W] (Delta = output - input
by default, or the block's output) and returns an additive change of that shape, or None.

U-Nets (SD1.x, SDXL), verified in ComfyUI v0.8.0: an object patch on the block's path with a
SpatialTransformer *subclass* instance that shares the original's children and parameters.
- A subclass, because forward_timestep_embed dispatches on isinstance(SpatialTransformer).
- Shared _modules/_parameters/_buffers: weight and LoRA patches, which ComfyUI applies by
  attribute path through whatever sits at the block's path, reach the real weights.
- The wrapped module is whatever get_model_object returns, possibly an earlier wrapper, so
  patches chain. Object patches live on the clone only and are reverted by ComfyUI on unpatch:
  nothing global is left behind.
DiTs (Flux, SD3): a `patches_replace["dit"][(kind, i)]` function, the key and the token layout
from the family's DitStream, which wraps whatever function was there (SkipLayerGuidance and
others use the same keys and the last writer wins: we wrap, never drop). Only image tokens are
shown to the edit, laid out on the (h, w) token grid; the grid and the text length come from an
APPLY_MODEL wrapper (every model has that one; SD3's MMDiT runs no DIFFUSION_MODEL wrappers)
that writes them into transformer_options (rebuilt for every model call). Flux blocks update
their input in place, so the input is copied before the block runs.
The training collector uses these same patches, so what an SAE learned is what a node steers.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional

import comfy.patcher_extension
import torch
from comfy.ldm.modules.attention import SpatialTransformer

from ..sae_core.errors import ConfigError
from ..sae_core.families import DIT, MODEL_TIMESTEP, ModelFamily
from .model_blocks import require_family, resolve_block


log = logging.getLogger("sae_concepts")

ROW_KIND = {0: "cond", 1: "uncond"}   # ComfyUI's cond_or_uncond codes
QUANTITIES = ("delta", "output")        # what the edit sees: output - input (the paper's), or output
GRID_KEY = "sae_concepts_token_grid"    # transformer_options entry: (h, w, text tokens)


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

    def __init__(self, inner: SpatialTransformer, block: str, edit: BlockEdit, quantity: str = "delta"):
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
        object.__setattr__(self, "sae_quantity", quantity)

    def forward(self, x, context=None, transformer_options={}):
        out = self.sae_inner(x, context, transformer_options)
        call = BlockCall(self.sae_block, row_sigmas(x.shape[0], transformer_options),
                         row_kinds(x.shape[0], transformer_options), transformer_options)
        change = self.sae_edit(out - x if self.sae_quantity == "delta" else out, call)
        if change is None:
            return out
        return out + change.to(out.dtype)


def record_token_grid(executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None,
                      **kwargs):
    """APPLY_MODEL wrapper (BaseModel.apply_model's arguments): note the image token grid and the
    text length for the dit patches."""
    if transformer_options is not None:
        p = executor.class_obj.diffusion_model.patch_size
        txt_len = c_crossattn.shape[1] if c_crossattn is not None else 0
        transformer_options[GRID_KEY] = ((x.shape[-2] + p // 2) // p, (x.shape[-1] + p // 2) // p, txt_len)
    return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)


class DitBlockPatch:
    """patches_replace["dit"] function: runs the previous patch (or the block), then lets `edit`
    change the image tokens of the block's Delta (or output)."""

    def __init__(self, block: str, edit: BlockEdit, previous=None, quantity: str = "delta", text_first: bool = False):
        self.block, self.edit, self.previous, self.quantity = block, edit, previous, quantity
        self.text_first = text_first   # the stream is cat(txt, img) (Flux's single blocks)

    def __deepcopy__(self, memo):
        # ModelPatcher.clone() deep-copies model_options: without this every later clone would hold
        # a copy of the edit (a recorder recording into a copy nobody reads, an SAE duplicated).
        return self

    def __call__(self, args: dict, extra: dict) -> dict:
        opts = args.get("transformer_options") or {}
        if GRID_KEY not in opts:
            raise RuntimeError(f"SAE patch at {self.block}: the token grid was not recorded (the model ran "
                               f"without the sae_concepts APPLY_MODEL wrapper)")
        h, w, txt_len = opts[GRID_KEY]
        # Image tokens: a two-stream block's img stream starts with them (Kontext reference tokens
        # follow; SD3's holds nothing else); a one-stream block's is cat(txt, img).
        start = (args["txt"].shape[1] if "txt" in args else txt_len) if self.text_first else 0
        stop = start + h * w
        before = args["img"][:, start:stop].clone() if self.quantity == "delta" else None   # updated in place
        out = self.previous(args, extra) if self.previous is not None else extra["original_block"](args)
        img = out["img"]
        tokens = img[:, start:stop]
        q = tokens - before if before is not None else tokens
        B, n, C = q.shape
        grid = q.transpose(1, 2).contiguous().reshape(B, C, h, w)   # a copy: later blocks work in place
        call = BlockCall(self.block, row_sigmas(B, opts), row_kinds(B, opts), opts)
        change = self.edit(grid, call)
        if change is None:
            return out
        img = img.clone()
        img[:, start:stop] += change.reshape(B, C, n).transpose(1, 2).to(img.dtype)
        return {**out, "img": img}


def patch_block(model, block: str, edit: BlockEdit, quantity: str = "delta"):
    """A clone of `model` whose block `block` runs `edit` after the original (or earlier patch)."""
    if quantity not in QUANTITIES:
        raise ValueError(f"quantity must be one of {QUANTITIES}, got {quantity!r}")
    family = require_family(model)
    path = resolve_block(model, block)
    m = model.clone()
    if family.patch_kind == DIT:
        stream, index = family.dit_stream(path)
        kind = stream.patch_kind
        previous = m.model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {}).get(
            (kind, index))
        m.set_model_patch_replace(DitBlockPatch(path, edit, previous, quantity, stream.text_first), "dit", kind, index)
        wrappers = comfy.patcher_extension.WrappersMP.APPLY_MODEL
        if not m.get_wrappers(wrappers, GRID_KEY):
            m.add_wrapper_with_key(wrappers, GRID_KEY, record_token_grid)
        return m
    inner = m.get_model_object("diffusion_model." + path)
    m.add_object_patch("diffusion_model." + path, PatchedSpatialTransformer(inner, path, edit, quantity))
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
    """The paper's diffusion time t in [0, 1] (1.0 = pure noise) from a DDPM model's own timestep."""
    try:
        ts = float(model_sampling.timestep(torch.tensor([float(sigma)])).reshape(-1)[0])
        n = len(model_sampling.sigmas) - 1
    except (AttributeError, TypeError):
        return None
    return min(max(ts / n, 0.0), 1.0)


def schedule_position(sigma: float, sample_sigmas) -> tuple[int, int] | None:
    """(step index, steps) of the schedule step whose sigma is nearest to `sigma`."""
    if sample_sigmas is None or len(sample_sigmas) < 2:
        return None
    sig = [float(s) for s in sample_sigmas[:-1]]
    i = min(range(len(sig)), key=lambda k: abs(sig[k] - sigma))
    return i, len(sig)


class StepClock:
    """Where a model call sits in the reverse process, by the family's rule (sae_core.families):
    DDPM U-Nets by the model's own timestep; flow models (Flux, SD3) by the step's position in the
    run's sigma schedule (so a ModelSamplingFlux shift set anywhere in the graph changes nothing)."""

    def __init__(self, model):
        self.family: ModelFamily = require_family(model)
        self.model_sampling = model.get_model_object("model_sampling")

    def t(self, sigma: float, transformer_options: dict | None = None) -> float | None:
        if self.family.time_axis == MODEL_TIMESTEP:
            return sigma_to_t(self.model_sampling, sigma)
        pos = schedule_position(sigma, (transformer_options or {}).get("sample_sigmas"))
        return None if pos is None else self.family.schedule_t(*pos)

    def step_ts(self, sigmas) -> list[float]:
        """t of every step of a schedule (sigmas with the trailing 0, as KSampler.sigmas)."""
        sig = [float(s) for s in sigmas[:-1]]
        if self.family.time_axis == MODEL_TIMESTEP:
            return [sigma_to_t(self.model_sampling, s) for s in sig]
        return [self.family.schedule_t(i, len(sig)) for i in range(len(sig))]


class TimestepWindow:
    """ComfyUI's start_percent / end_percent convention (as ControlNet). U-Nets: active when
    percent_to_sigma(end) <= sigma <= percent_to_sigma(start). Flow models: active when the step's
    position step / steps in the run's own schedule lies in [start, end]."""

    def __init__(self, model, start_percent: float, end_percent: float):
        if not 0.0 <= start_percent <= end_percent <= 1.0:
            raise ConfigError(f"timestep window needs 0 <= start_percent <= end_percent <= 1, got "
                             f"start_percent={start_percent}, end_percent={end_percent}")
        ms = model.get_model_object("model_sampling")
        family = require_family(model)
        self.by_schedule = family.time_axis != MODEL_TIMESTEP
        self.start, self.end = start_percent, end_percent
        self.sigma_hi = ms.percent_to_sigma(start_percent)
        self.sigma_lo = ms.percent_to_sigma(end_percent)

    def active(self, sigmas: torch.Tensor, transformer_options: dict | None = None) -> torch.Tensor:
        s = sigmas.float().cpu()
        schedule = (transformer_options or {}).get("sample_sigmas")
        if self.by_schedule and schedule is not None:
            out = []
            for v in s.tolist():
                i, n = schedule_position(v, schedule)
                out.append(self.start - 1e-9 <= i / n <= self.end + 1e-9)
            return torch.tensor(out, dtype=torch.bool)
        return (s >= self.sigma_lo) & (s <= self.sigma_hi)

    def paper_t(self) -> str:
        return f"paper's t from {1 - self.start:.2f} down to {1 - self.end:.2f}"
