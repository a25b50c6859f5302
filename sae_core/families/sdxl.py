"""SDXL U-Nets (base layout; SSD-1B, Vega and KOALA are SDXL with blocks removed)."""
from .base import MODEL_TIMESTEP, SPATIAL_TRANSFORMER, ModelFamily

SDXL_BLOCKS: dict[str, tuple[str, int]] = {
    "input_blocks.4.1": ("down_blocks.1.attentions.0", 640),
    "input_blocks.5.1": ("down_blocks.1.attentions.1", 640),
    "input_blocks.7.1": ("down_blocks.2.attentions.0", 1280),
    "input_blocks.8.1": ("down_blocks.2.attentions.1", 1280),
    "middle_block.1": ("mid_block.attentions.0", 1280),
    "output_blocks.0.1": ("up_blocks.0.attentions.0", 1280),
    "output_blocks.1.1": ("up_blocks.0.attentions.1", 1280),
    "output_blocks.2.1": ("up_blocks.0.attentions.2", 1280),
    "output_blocks.3.1": ("up_blocks.1.attentions.0", 640),
    "output_blocks.4.1": ("up_blocks.1.attentions.1", 640),
    "output_blocks.5.1": ("up_blocks.1.attentions.2", 640),
}
# SDLens's four SDXL-Turbo blocks.
SDLENS_BLOCKS = ("input_blocks.8.1", "middle_block.1", "output_blocks.0.1", "output_blocks.1.1")

FAMILY = ModelFamily(
    name="sdxl", display="SDXL",
    comfy_configs=("SDXL", "SSD1B", "Segmind_Vega", "KOALA_700M", "KOALA_1B", "SDXL_instructpix2pix"),
    patch_kind=SPATIAL_TRANSFORMER, time_axis=MODEL_TIMESTEP,
    default_blocks=SDLENS_BLOCKS, fixed_blocks=SDXL_BLOCKS,
)
