"""Which transformer blocks a loaded model has, and which block an SAE belongs to in it.

Block names resolve through ComfyUI's own config (comfy.utils.unet_to_diffusers), so an SAE's
diffusers block name ("up_blocks.0.attentions.1") finds its ComfyUI path on SD1.x and SDXL alike.
"""
from __future__ import annotations

import comfy.utils
from comfy.ldm.modules.attention import SpatialTransformer

FAMILIES = {"SD15": "sd1", "SD15_instructpix2pix": "sd1", "SDXL": "sdxl", "SSD1B": "sdxl", "Segmind_Vega": "sdxl",
            "KOALA_700M": "sdxl", "KOALA_1B": "sdxl", "SDXL_instructpix2pix": "sdxl", "SDXLRefiner": "sdxl_refiner"}


def model_family(model) -> str:
    name = type(model.model.model_config).__name__
    return FAMILIES.get(name, name.lower())


def diffusers_to_comfy(model) -> dict[str, str]:
    """{diffusers block name: ComfyUI path} of every transformer block in the model's U-Net."""
    unet_config = model.model.model_config.unet_config
    out = {}
    for diff, comfy_key in comfy.utils.unet_to_diffusers(unet_config).items():
        if ".attentions." in diff and diff.endswith(".proj_in.weight"):
            out[diff[: -len(".proj_in.weight")]] = comfy_key[: -len(".proj_in.weight")]
    return out


def transformer_blocks(model) -> dict[str, int]:
    """{ComfyUI path: channels} of every SpatialTransformer in the model's U-Net."""
    dm = model.get_model_object("diffusion_model")
    return {name: mod.in_channels for name, mod in dm.named_modules() if isinstance(mod, SpatialTransformer)}


def resolve_block(model, name: str) -> str:
    """A ComfyUI path or diffusers name (optionally prefixed) -> the model's ComfyUI path."""
    n = name.strip()
    for prefix in ("model.diffusion_model.", "diffusion_model.", "unet."):
        if n.startswith(prefix):
            n = n[len(prefix):]
    blocks = transformer_blocks(model)
    if n in blocks:
        return n
    mapping = diffusers_to_comfy(model)
    if n in mapping and mapping[n] in blocks:
        return mapping[n]
    raise ValueError(f"this {model_family(model)} model has no transformer block {name!r}; it has "
                     + ", ".join(f"{c} = {d}" for d, c in sorted(mapping.items(), key=lambda x: x[1])))


def entry_block(model, entry) -> str:
    """The ComfyUI path of the block an SAE was trained on, in this model; refuses another family."""
    fam, info = model_family(model), entry.info
    if info.model_family in ("sd1", "sdxl") and info.model_family != fam:
        raise ValueError(f"SAE {info.label()} was trained on an {info.model_family} model, but this model is "
                         f"{fam}: load an SAE made for it")
    name = info.block_diffusers or info.block
    if not name:
        raise ValueError(f"SAE {info.label()} does not say which block it belongs to; choose it in Load SAE")
    return resolve_block(model, name)
