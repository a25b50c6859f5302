"""The block edit behind SpatialConceptSteer and GlobalStyleSteer: window, rows, SAE choice,
concept resolution and the mask, around the math in sae_core.interventions."""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from ..sae_core import SAESet
from ..sae_core.interventions import global_steer, spatial_steer
from .block_patch import BlockCall, TimestepWindow, block_channels, sigma_to_t

log = logging.getLogger("sae_concepts")
ROWS = ["cond", "uncond", "both"]


def parse_concept(text: str) -> tuple[list[int] | None, list[str]]:
    """'12, 40' -> ids; 'dog' or 'red car, dog' -> words."""
    parts = [p.strip() for p in text.replace(";", ",").split(",") if p.strip()]
    if not parts:
        raise ValueError("concept is empty: give concept ids (e.g. '12, 40') or a word")
    if all(p.lstrip("-").isdigit() for p in parts):
        return [int(p) for p in parts], []
    return None, parts


def resize_mask(mask: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """MASK [M, H, W] or [H, W] of any size -> [M, h, w] in [0, 1]; area-pooled (a mean) when
    shrinking, bilinear when growing."""
    m = mask.float()
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3:
        raise ValueError(f"mask must be [H, W] or [B, H, W], got shape {list(mask.shape)}")
    mode = "area" if m.shape[-2] >= h and m.shape[-1] >= w else "bilinear"
    kw = {} if mode == "area" else {"align_corners": False}
    return F.interpolate(m[:, None], size=(h, w), mode=mode, **kw)[:, 0].clamp(0, 1)


class ConceptSteerEdit:
    """Callable BlockEdit. kind: "spatial" (needs mask) or "global"."""

    def __init__(self, model, sae_set: SAESet, block: str, concept: str, kind: str, beta: float,
                 start_percent: float, end_percent: float, rows: str, mask: torch.Tensor | None = None):
        if rows not in ROWS:
            raise ValueError(f"rows must be one of {ROWS}, got {rows!r}")
        self.sae_set, self.block, self.kind, self.beta, self.rows = sae_set, block, kind, beta, rows
        self.window = TimestepWindow(model, start_percent, end_percent)
        self.model_sampling = model.get_model_object("model_sampling")
        self.ids, self.words = parse_concept(concept)
        self.mask = mask
        self._on_device: dict = {}
        self._warned: set = set()
        at_block = [e for e in sae_set if e.info.block == block]
        if not at_block:
            raise ValueError(f"the SAE has no SAE for block {block!r}; it covers {sae_set.blocks}")
        channels = block_channels(model, block)
        for e in at_block:
            if e.sae.d_in != channels:
                raise ValueError(f"SAE for {e.info.label()} has d={e.sae.d_in}, but block {block} of this "
                                 f"model has {channels} channels: the SAE was trained on another model")
        if self.words:
            if sae_set.dictionary is None:
                raise ValueError(f"concept {concept!r} is a word, which needs a concept dictionary: pick one "
                                 f"in LoadSAE, or give concept ids (e.g. '12, 40')")
            if not any(self._ids_for(e) for e in at_block):
                vocab = sae_set.dictionary.vocabulary()
                raise ValueError(f"no concept of block {block} is labelled {self.words}; the dictionary knows "
                                 f"{len(vocab)} labels, e.g. {vocab[:25]}")
        else:
            for e in at_block:
                bad = [i for i in self.ids if not 0 <= i < e.sae.n_latents]
                if bad:
                    raise ValueError(f"concept id(s) {bad} out of range for {e.info.label()} "
                                     f"(0..{e.sae.n_latents - 1})")
        if kind == "spatial":
            if mask is None:
                raise ValueError("SpatialConceptSteer needs a mask (the region S)")
            if float(mask.max()) <= 0:
                log.warning("SpatialConceptSteer: the mask is empty, so the concept is only removed "
                            "everywhere and added nowhere")

    def _ids_for(self, entry) -> list[int]:
        if self.ids is not None:
            return self.ids
        concepts = self.sae_set.dictionary.for_sae(entry.info.block, entry.info.t, entry.info.cond)
        return sorted({cid for w in self.words for cid in concepts.lookup(w)}) if concepts else []

    def _mask_at(self, h: int, w: int, device) -> torch.Tensor:
        key = ("mask", h, w, device)
        if key not in self._on_device:   # once per block size, not on every U-Net call
            self._on_device[key] = resize_mask(self.mask, h, w).to(device)
        return self._on_device[key]

    def _sae(self, entry, device):
        key = (id(entry), device)
        if key not in self._on_device:
            self._on_device[key] = entry.sae.to(device) if entry.sae.W_dec.device != device else entry.sae
        return self._on_device[key]

    def __call__(self, delta: torch.Tensor, call: BlockCall):
        active = self.window.active(call.sigmas)
        if not bool(active.any()):
            return None
        B, C, H, W = delta.shape
        change = torch.zeros_like(delta, dtype=torch.float32)
        touched = False
        kinds = call.row_kinds
        # Image index inside its cond/uncond chunk, to pick the mask of a mask batch.
        n_chunks = len(call.transformer_options.get("cond_or_uncond") or [0])
        per_chunk = B // n_chunks if B % n_chunks == 0 else B
        for i in range(B):
            if not active[i] or (self.rows != "both" and kinds[i] != self.rows):
                continue
            rows_delta = delta[i].reshape(C, H * W).t().float()
            if not torch.isfinite(rows_delta).all():
                if "nan" not in self._warned:
                    log.warning(f"SAE steer at {self.block}: the model's activations hold NaN/Inf; "
                                f"those rows are left unsteered")
                    self._warned.add("nan")
                continue
            t = sigma_to_t(self.model_sampling, float(call.sigmas[i]))
            entry = self.sae_set.select(self.block, t, kinds[i])
            ids = self._ids_for(entry)
            if not ids:
                continue
            sae = self._sae(entry, delta.device)
            with torch.no_grad():
                if self.kind == "spatial":
                    m = self._mask_at(H, W, delta.device)
                    region = m[(i % per_chunk) % m.shape[0]].reshape(-1)
                    ch = spatial_steer(sae, rows_delta, ids, region, self.beta)
                else:
                    ch = global_steer(sae, rows_delta, ids, self.beta)
            change[i] = ch.t().reshape(C, H, W)
            touched = True
        return change if touched else None
