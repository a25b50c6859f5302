"""SD1.x U-Nets: 16 SpatialTransformer blocks, Delta = output - input of each."""
from .base import MODEL_TIMESTEP, SPATIAL_TRANSFORMER, ModelFamily

SD1_BLOCKS: dict[str, tuple[str, int]] = {
    # ComfyUI path (under diffusion_model.): (diffusers name, channels)
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
# The paper's three 1280-channel blocks: down, mid, up.
PAPER_BLOCKS = ("input_blocks.8.1", "middle_block.1", "output_blocks.3.1")

FAMILY = ModelFamily(
    name="sd1", display="SD1.x",
    comfy_configs=("SD15", "SD15_instructpix2pix"),
    patch_kind=SPATIAL_TRANSFORMER, time_axis=MODEL_TIMESTEP,
    default_blocks=PAPER_BLOCKS, fixed_blocks=SD1_BLOCKS,
)
