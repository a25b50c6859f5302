"""Which family and blocks a loaded model has, and which block an SAE belongs to in it.

The family comes from the registry (sae_core.families) by ComfyUI's model config class. U-Net
block names resolve through ComfyUI's own config (comfy.utils.unet_to_diffusers), so a diffusers
name finds its ComfyUI path on SD1.x and SDXL alike; DiT blocks (Flux, SD3) are counted on the model,
stream by stream as the family lists them.
"""
from __future__ import annotations

import comfy.utils
from comfy.ldm.modules.attention import SpatialTransformer

from ..sae_core.errors import ConfigError
from ..sae_core.families import DIT, FAMILIES, ModelFamily, UnknownBlock, family_of_config, get_family, strip_prefix


class UnsupportedModel(ConfigError):
    pass


def config_name(model) -> str:
    return type(model.model.model_config).__name__


def family_of(model) -> ModelFamily | None:
    return family_of_config(config_name(model))


def model_family(model) -> str:
    """The registry's family name ("sd1", "sdxl", "flux", "sd3"), else ComfyUI's config name, lowercased."""
    fam = family_of(model)
    return fam.name if fam else config_name(model).lower()


def require_family(model, what: str = "this model") -> ModelFamily:
    fam = family_of(model)
    if fam is None:
        raise UnsupportedModel(f"{what} is a {config_name(model)} model; SAE Concepts knows "
                               f"{known_families()} models")
    return fam


def known_families() -> str:
    """The real model families the registry knows, for messages: "SD1.x, SDXL, Flux.1 and SD3/SD3.5"."""
    names = [f.display for f in FAMILIES.values() if f.name != "toyworld"]
    return ", ".join(names[:-1]) + " and " + names[-1]


def diffusers_to_comfy(model) -> dict[str, str]:
    """{diffusers block name: ComfyUI path} of every transformer block the model has."""
    fam = family_of(model)
    if fam is not None and fam.patch_kind == DIT:
        return {fam.alias(b): b for b in transformer_blocks(model)}
    unet_config = model.model.model_config.unet_config
    out = {}
    for diff, comfy_key in comfy.utils.unet_to_diffusers(unet_config).items():
        if ".attentions." in diff and diff.endswith(".proj_in.weight"):
            out[diff[: -len(".proj_in.weight")]] = comfy_key[: -len(".proj_in.weight")]
    return out


def transformer_blocks(model) -> dict[str, int]:
    """{block name: width} of every block SAEs can sit at: the U-Net's SpatialTransformers
    (channels), or a DiT's blocks of each stream its family names (hidden size)."""
    dm = model.get_model_object("diffusion_model")
    fam = family_of(model)
    if fam is not None and fam.patch_kind == DIT:
        hidden = int(dm.hidden_size)
        return {f"{s.name}.{i}": hidden for s in fam.dit_streams for i in range(len(getattr(dm, s.name)))}
    return {name: mod.in_channels for name, mod in dm.named_modules() if isinstance(mod, SpatialTransformer)}


def _blocks_help(model, blocks: dict[str, int]) -> str:
    fam = family_of(model)
    if fam is not None and fam.patch_kind == DIT:
        dm = model.get_model_object("diffusion_model")
        return (" and ".join(f"{s.name}.0-{len(getattr(dm, s.name)) - 1}" for s in fam.dit_streams)
                + f" (width {next(iter(blocks.values()))})")
    mapping = diffusers_to_comfy(model)
    return ", ".join(f"{c} = {d}" for d, c in sorted(mapping.items(), key=lambda x: x[1]))


def resolve_block(model, name: str) -> str:
    """A ComfyUI path or diffusers name (optionally prefixed) -> the model's block name."""
    n = strip_prefix(name)
    blocks = transformer_blocks(model)
    if n in blocks:
        return n
    fam = family_of(model)
    if fam is not None and fam.patch_kind == DIT:
        try:
            canon = fam.canonical_block(n)
        except UnknownBlock:
            canon = None
        if canon in blocks:
            return canon
    else:
        mapping = diffusers_to_comfy(model)
        if n in mapping and mapping[n] in blocks:
            return mapping[n]
    raise ValueError(f"this {model_family(model)} model has no transformer block {name!r}; it has "
                     + _blocks_help(model, blocks))


def entry_block(model, entry) -> str:
    """The block an SAE was trained on, in this model; refuses an SAE of another family."""
    fam, info = model_family(model), entry.info
    if info.model_family in FAMILIES and info.model_family != fam:
        raise ValueError(f"SAE {info.label()} was trained on an {info.model_family} model, but this model is "
                         f"{fam}: load an SAE made for it")
    name = info.block or info.block_diffusers
    if not name:
        raise ValueError(f"SAE {info.label()} does not say which block it belongs to; choose it in Load SAE")
    try:
        return resolve_block(model, name)
    except ValueError as e:
        raise ValueError(f"SAE {info.label()}: {e}") from None


__all__ = ["UnsupportedModel", "known_families", "family_of", "model_family", "require_family", "diffusers_to_comfy",
           "transformer_blocks", "resolve_block", "entry_block", "get_family"]
