"""Stable Diffusion 3 / 3.5 (MMDiT): joint blocks with separate image and text streams.

Blocks are ComfyUI's `joint_blocks.<i>` (diffusers: `transformer_blocks.<i>`): SD3 Medium and
SD3.5 Medium have 24, SD3.5 Large 38; the loaded model says how many it has. Each is patched as
ComfyUI's ("double_block", i) in patches_replace["dit"]; its image stream holds only the image
tokens (the latent patchified 2x2, as Flux: token t at row t // w, column t % w of a
(ceil(H/2), ceil(W/2)) grid). The width is the hidden size, 64 x depth (1536 for the Mediums,
2432 for SD3.5 Large). Every norm after a block is a LayerNorm without affine, so steering
directions are mean-centred, and the model is a rectified flow (ModelSamplingSD3's shift, 3.0 by
default), so steps are placed on the run's own schedule as for Flux.
"""
from .base import SCHEDULE, DitStream, dit_family

JOINT = "joint_blocks"
STREAMS = (DitStream(JOINT, "double_block", "transformer_blocks", 38),)
# No published SD3 SAE fixes a site; a middle block of SD3 Medium's 24, as for Flux's 18 of 19 + 38.
DEFAULT_BLOCKS = ("joint_blocks.12",)

FAMILY = dit_family(
    STREAMS, name="sd3", display="SD3/SD3.5",
    comfy_configs=("SD3",),
    time_axis=SCHEDULE, default_blocks=DEFAULT_BLOCKS,
    tokens_per_latent_pixel=2, centre_directions=True, known_widths=(1536, 2432),
)
