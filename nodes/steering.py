"""The block edit behind SpatialConceptSteer and GlobalStyleSteer: window, rows, SAE choice,
concept resolution, the mask and the steering mode, around the math in sae_core.interventions."""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from ..sae_core import SAESet
from ..sae_core.errors import ConceptNotLabelledError, ConfigError, finite
from ..sae_core.interventions import NORMALISATIONS, activation_addition, global_steer, sdlens_paint, spatial_steer
from ..sae_core.sae_set import select_entry
from ..host.block_patch import BlockCall, StepClock, TimestepWindow, patch_block
from ..host.model_blocks import entry_block, resolve_block, transformer_blocks
from .sae_memory import DeviceFallback, attach_saes

log = logging.getLogger("sae_concepts")
ROWS = ["cond", "uncond", "both"]
AUTO = "auto"
MODES = ["paper", "sdlens", "activation_addition"]


def parse_concept(text: str) -> tuple[list[int] | None, list[str]]:
    """'12, 40' -> ids; 'dog' or 'red car, dog' -> words."""
    parts = [p.strip() for p in text.replace(";", ",").split(",") if p.strip()]
    if not parts:
        raise ConfigError("concept is empty: give concept ids (e.g. '12, 40') or a word")
    if all(p.lstrip("-").isdigit() for p in parts):
        return [int(p) for p in parts], []
    return None, parts


def resize_mask(mask: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """MASK [M, H, W] or [H, W] of any size -> [M, h, w] in [0, 1]; area-pooled (a mean, as SDLens
    pools its brush) when shrinking, bilinear when growing."""
    m = mask.float()
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3:
        raise ConfigError(f"mask must be [H, W] or [B, H, W], got shape {list(mask.shape)}")
    mode = "area" if m.shape[-2] >= h and m.shape[-1] >= w else "bilinear"
    kw = {} if mode == "area" else {"align_corners": False}
    return F.interpolate(m[:, None], size=(h, w), mode=mode, **kw)[:, 0].clamp(0, 1)


def sae_groups(model, sae_set: SAESet, block: str) -> dict[str, list]:
    """{ComfyUI block path: the set's SAEs for it}: every block the set covers ("auto"), or one."""
    groups: dict[str, list] = {}
    for e in sae_set:
        groups.setdefault(entry_block(model, e), []).append(e)
    if block != AUTO:
        path = resolve_block(model, block)
        if path not in groups:
            raise ConfigError(f"the SAE has no SAE for block {block!r}; it covers {sorted(groups)}")
        groups = {path: groups[path]}
    channels = transformer_blocks(model)
    for path, entries in groups.items():
        for e in entries:
            if e.sae.d_in != channels[path]:
                raise ConfigError(f"SAE for {e.info.label()} has d={e.sae.d_in}, but block {path} of this model "
                                 f"has {channels[path]} channels: the SAE was trained on another model")
    return groups


class ConceptSteerEdit:
    """Callable BlockEdit for one block. kind: "spatial" (needs mask) or "global".
    mode "paper": the paper's adaptive beta; "sdlens": strength * mean activation * f_c (SDLens)."""

    def __init__(self, model, block: str, entries: list, sae_set: SAESet, concept: str, kind: str, beta: float,
                 start_percent: float, end_percent: float, rows: str, mask: torch.Tensor | None = None,
                 mode: str = "paper", normalisation: str = "sum"):
        finite("beta", beta)   # NaN / inf would turn every steered activation into NaN mid-sampling
        if rows not in ROWS:
            raise ConfigError(f"rows must be one of {ROWS}, got {rows!r}")
        if mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {mode!r}")
        self.block, self.entries, self.dictionary = block, entries, sae_set.dictionary
        self.kind, self.beta, self.rows, self.mode = kind, beta, rows, mode
        if normalisation not in NORMALISATIONS:
            raise ConfigError(f"normalisation must be one of {NORMALISATIONS}, got {normalisation!r}")
        self.normalisation = normalisation
        self.window = TimestepWindow(model, start_percent, end_percent)
        self.clock = StepClock(model)   # the family's rule for the paper's t of a call
        self.centre = self.clock.family.centre_directions
        quantities = {e.info.quantity for e in entries}
        if len(quantities) > 1:
            raise ConfigError(f"the SAEs for block {block} read different quantities {sorted(quantities)}; "
                              f"steer them with separate nodes")
        self.quantity = quantities.pop()
        self.ids, self.words = parse_concept(concept)
        self.mask = mask
        self._cache: dict = {}
        self._device = DeviceFallback()
        self._warned: set = set()
        if self.words:
            if self.dictionary is None:
                raise ConfigError(f"concept {concept!r} is a word, which needs a concept dictionary: pick one "
                                 f"in LoadSAE, or give concept ids (e.g. '12, 40')")
            if not any(self._ids_for(e) for e in entries):
                from .concept_choice import nearest_labels
                labels = sorted({lab for e in entries for lab in self._block_labels(e)})
                raise ConceptNotLabelledError(f"no concept of block {block} is labelled {self.words}; nearest "
                                              f"labels the dictionary has there: {nearest_labels(self.words[0], labels)}")
        else:
            for e in entries:
                bad = [i for i in self.ids if not 0 <= i < e.sae.n_latents]
                if bad:
                    raise ConfigError(f"concept id(s) {bad} out of range for {e.info.label()} "
                                     f"(0..{e.sae.n_latents - 1})")
        if mode == "sdlens":
            missing = [e.info.label() for e in entries if e.latent_mean is None]
            if missing:
                raise ConfigError(f"mode 'sdlens' scales by each feature's mean activation, which {missing} do not "
                                 f"carry (SDLens folders ship it as mean.pt); use mode 'paper'")
        if kind == "spatial":
            if mask is None:
                raise ConfigError("SpatialConceptSteer needs a mask (the region S)")
            resize_mask(mask, 1, 1)   # a mask of the wrong shape is refused now, not mid-sampling
            if not torch.isfinite(mask).all():
                raise ConfigError("the mask holds NaN/Inf values")

    def _ids_for(self, entry) -> list[int]:
        if self.ids is not None:
            return self.ids
        concepts = self.dictionary.for_sae(entry.info.block or entry.info.block_diffusers, entry.info.t,
                                           entry.info.cond)
        return sorted({cid for w in self.words for cid in concepts.lookup(w)}) if concepts else []

    def _block_labels(self, entry) -> list[str]:
        concepts = self.dictionary.for_sae(entry.info.block or entry.info.block_diffusers, entry.info.t,
                                           entry.info.cond)
        return sorted({lab for c in concepts.concepts.values() for lab in c.get("labels", [])}) if concepts else []

    def _cached(self, key, make):
        if key not in self._cache:   # once per SAE and device / block size, not on every U-Net call
            self._cache[key] = make()
        return self._cache[key]

    def __call__(self, delta: torch.Tensor, call: BlockCall):
        active = self.window.active(call.sigmas, call.transformer_options)
        if not bool(active.any()):
            return None
        B, C, H, W = delta.shape
        # The SAE math runs in float32 one image at a time (fp16/bf16 Delta is upcast per image);
        # the change is kept in Delta's dtype, clamped to its finite range: the paper's beta * ||z||
        # can exceed fp16's 65504, which would turn the whole image into NaN.
        change = torch.zeros_like(delta)
        limit = torch.finfo(delta.dtype).max if delta.dtype.is_floating_point else None
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
            t = self.clock.t(float(call.sigmas[i]), call.transformer_options)
            entry = select_entry(self.entries, t, kinds[i])
            ids = self._ids_for(entry)
            if not ids:
                continue
            dev = delta.device
            sae = self._device.on(entry.sae, dev)
            if self.kind == "spatial":
                m = self._cached(("mask", H, W, dev), lambda: resize_mask(self.mask, H, W).to(dev))
                region = m[(i % per_chunk) % m.shape[0]].reshape(-1)
            else:
                region = torch.ones(H * W, device=dev)
            with torch.no_grad():
                if self.mode == "sdlens":
                    mean = self._cached(("mean", id(entry), dev), lambda: entry.latent_mean.to(dev))
                    ch = sdlens_paint(sae, mean, ids, region, self.beta)
                    if self.rows == "both" and kinds[i] == "uncond":
                        # As sdxl-unbox (hooks/sdxl.py, add_feature_on_area_base_both): the edit is
                        # added to the positive row and subtracted from the negative one, so CFG
                        # amplifies it instead of cancelling it.
                        ch = -ch
                elif self.mode == "activation_addition":
                    ch = activation_addition(sae, rows_delta, ids, region, self.beta, centre=self.centre)
                elif self.kind == "spatial":
                    ch = spatial_steer(sae, rows_delta, ids, region, self.beta)
                else:
                    ch = global_steer(sae, rows_delta, ids, self.beta, self.normalisation)
            if self.centre:   # LayerNorms without affine follow (Flux): the all-ones part does nothing
                ch = ch - ch.mean(dim=1, keepdim=True)
            ch = ch.t().reshape(C, H, W)
            change[i] = ch.clamp(-limit, limit) if limit is not None else ch
            touched = True
        return change if touched else None


def steer_model(model, sae_set: SAESet, block: str, concept: str, kind: str, beta: float, start_percent: float,
                end_percent: float, rows: str, mask=None, mode: str = "paper", normalisation: str = "sum"):
    """Validate everything, then patch each block the steer applies to. Returns (model, edits).
    An all-zero spatial mask is valid here (it removes the concept everywhere, as the toy paper's
    suppression does); the node warns about it, where it is most likely a forgotten mask."""
    edits, unlabelled = {}, []
    groups = sae_groups(model, sae_set, block)
    for path, entries in groups.items():
        try:
            edits[path] = ConceptSteerEdit(model, path, entries, sae_set, concept, kind, beta, start_percent,
                                           end_percent, rows, mask=mask, mode=mode, normalisation=normalisation)
        except ConceptNotLabelledError as e:
            # With every block ("auto"), a word steers where the dictionary knows it: a block whose
            # concepts carry other labels (e.g. a mid block that holds only style concepts) is left
            # alone, as the paper steers only the blocks that have the concept. Asked for one block,
            # or known nowhere, it stays an error.
            if len(groups) == 1:
                raise
            unlabelled.append(str(e))
    if not edits:
        raise ConceptNotLabelledError(f"no block of the SAE set has a concept labelled {concept!r}: "
                                      + "; ".join(unlabelled))
    if unlabelled:
        log.info(f"steering {concept!r} at {sorted(edits)}; skipped {len(unlabelled)} block(s) whose dictionary "
                 f"has no such label: " + "; ".join(unlabelled))
    for path, edit in edits.items():
        model = patch_block(model, path, edit, quantity=edit.quantity)
    attach_saes(model, [e.sae for edit in edits.values() for e in edit.entries])
    return model, edits
