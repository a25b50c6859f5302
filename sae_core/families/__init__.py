"""The model-family registry: the one place that knows SD1.x, SDXL, Flux and SD3.

Adding a family is one module here (building a `ModelFamily`) plus its entry in FAMILIES.
"""
from __future__ import annotations

from . import flux, sd1, sd3, sdxl, toyworld
from ..errors import ConfigError
from .base import DIT, MODEL_TIMESTEP, SCHEDULE, SPATIAL_TRANSFORMER, DitStream, ModelFamily, UnknownBlock, strip_prefix

FAMILIES: dict[str, ModelFamily] = {f.name: f for f in (sd1.FAMILY, sdxl.FAMILY, flux.FAMILY, sd3.FAMILY, toyworld.FAMILY)}


class UnknownFamily(ConfigError):
    pass


def get_family(name: str) -> ModelFamily:
    try:
        return FAMILIES[name]
    except KeyError:
        raise UnknownFamily(f"unknown model family {name!r}; known: {sorted(FAMILIES)}") from None


def family_of_config(config_name: str) -> ModelFamily | None:
    """The family of a ComfyUI model config class (type(model.model.model_config).__name__)."""
    for fam in FAMILIES.values():
        if config_name in fam.comfy_configs:
            return fam
    return None


def released_dit_blocks() -> list[tuple[ModelFamily, DitStream, int]]:
    """(family, stream, index) of every DiT block of each family's largest release, in registry
    order (the block lists the nodes offer; a smaller model is checked when a node runs)."""
    return [(f, s, i) for f in FAMILIES.values() if f.patch_kind == DIT for s in f.dit_streams
            for i in range(s.released_depth)]


def guess_family(block: str, d_in: int | None = None) -> ModelFamily | None:
    """The family an SAE belongs to from its block name (and width, where names are shared by
    SD1.x and SDXL, or diffusers' transformer_blocks.<i> by Flux and SD3, whose released widths
    differ): None when nothing fits or it stays ambiguous."""
    fits = [f for f in FAMILIES.values() if f.has_block_name(block)]
    if d_in is not None and len(fits) > 1:
        fits = [f for f in fits if f.width(block) in (None, d_in)] or fits
    if d_in is not None and len(fits) > 1:
        fits = [f for f in fits if d_in in f.known_widths] or fits
    return fits[0] if len(fits) == 1 else None


__all__ = ["canonical_block", "FAMILIES", "ModelFamily", "UnknownBlock", "UnknownFamily", "get_family", "family_of_config",
           "guess_family", "released_dit_blocks", "strip_prefix", "DitStream", "DIT", "SPATIAL_TRANSFORMER", "MODEL_TIMESTEP", "SCHEDULE"]


def canonical_block(name: str, family: str | None = None) -> str:
    """A block name as the registry writes it (ComfyUI path). With `family`, that family's rule
    (unknown names raise); without, the first family that knows the name (SD1.x and SDXL map the
    diffusers names they share to the same ComfyUI paths), else the name as given."""
    if family is not None and family in FAMILIES:
        return FAMILIES[family].canonical_block(name)
    for fam in FAMILIES.values():
        if fam.has_block_name(name):
            return fam.canonical_block(name)
    return strip_prefix(name)
