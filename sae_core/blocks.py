"""Names of the SD1.x U-Net's transformer blocks (pure data; no ComfyUI import).

ComfyUI path (under `diffusion_model.`) <-> diffusers name, for the 16 SpatialTransformer
blocks of an SD1.x U-Net. The paper's three 1280-channel blocks are PAPER_BLOCKS.
"""
from __future__ import annotations

SD1_BLOCKS: dict[str, tuple[str, int]] = {
    # comfy path: (diffusers name, channels)
    "input_blocks.1.1": ("down_blocks.0.attentions.0", 320),
    "input_blocks.2.1": ("down_blocks.0.attentions.1", 320),
    "input_blocks.4.1": ("down_blocks.1.attentions.0", 640),
    "input_blocks.5.1": ("down_blocks.1.attentions.1", 640),
    "input_blocks.7.1": ("down_blocks.2.attentions.0", 1280),
    "input_blocks.8.1": ("down_blocks.2.attentions.1", 1280),
    "middle_block.1": ("mid_block.attentions.0", 1280),
    "output_blocks.3.1": ("up_blocks.1.attentions.0", 1280),
    "output_blocks.4.1": ("up_blocks.1.attentions.1", 1280),
    "output_blocks.5.1": ("up_blocks.1.attentions.2", 1280),
    "output_blocks.6.1": ("up_blocks.2.attentions.0", 640),
    "output_blocks.7.1": ("up_blocks.2.attentions.1", 640),
    "output_blocks.8.1": ("up_blocks.2.attentions.2", 640),
    "output_blocks.9.1": ("up_blocks.3.attentions.0", 320),
    "output_blocks.10.1": ("up_blocks.3.attentions.1", 320),
    "output_blocks.11.1": ("up_blocks.3.attentions.2", 320),
}
DIFFUSERS_TO_COMFY = {diff: comfy for comfy, (diff, _) in SD1_BLOCKS.items()}

PAPER_BLOCKS = ("input_blocks.8.1", "middle_block.1", "output_blocks.3.1")
PAPER_TIMESTEPS = (1.0, 0.5, 0.0)
CONDITIONS = ("cond", "uncond", "both")


def canonical_block(name: str) -> str:
    """Accept a ComfyUI path (with or without `diffusion_model.`), a diffusers name (with or
    without a `unet.` prefix); return the ComfyUI path. Unknown names raise with the list."""
    n = name.strip()
    for prefix in ("diffusion_model.", "model.diffusion_model.", "unet."):
        if n.startswith(prefix):
            n = n[len(prefix):]
    if n in SD1_BLOCKS:
        return n
    if n in DIFFUSERS_TO_COMFY:
        return DIFFUSERS_TO_COMFY[n]
    raise ValueError(
        f"unknown SD1.x transformer block {name!r}; known blocks (ComfyUI path = diffusers name): "
        + ", ".join(f"{c} = {d}" for c, (d, _) in SD1_BLOCKS.items())
    )

