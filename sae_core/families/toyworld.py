"""The Toy World model (host/toyworld): SD1.x's U-Net topology at 1/10 of its widths.

Same 16 SpatialTransformer paths as SD1.x (so the paper's three blocks keep their names and
relative resolutions), own widths (32/64/128 channels), own family: an SAE trained on it can
never be applied to a real SD1.x model (or the reverse) without the refusal naming both.
"""
from .base import MODEL_TIMESTEP, SPATIAL_TRANSFORMER, ModelFamily
from .sd1 import PAPER_BLOCKS, SD1_BLOCKS

# model_channels 32, channel_mult (1, 2, 4, 4): SD1.x's 320/640/1280 become 32/64/128.
TOYWORLD_BLOCKS: dict[str, tuple[str, int]] = {
    path: (diffusers, width // 10) for path, (diffusers, width) in SD1_BLOCKS.items()}

FAMILY = ModelFamily(
    name="toyworld", display="Toy World (SD1.x topology)",
    comfy_configs=("ToyWorldModel",),
    patch_kind=SPATIAL_TRANSFORMER, time_axis=MODEL_TIMESTEP,
    default_blocks=PAPER_BLOCKS, fixed_blocks=TOYWORLD_BLOCKS,
)
