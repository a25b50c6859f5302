"""Flux.1 (dev, schnell, Kontext): double-stream and single-stream DiT blocks.

Blocks are ComfyUI's `double_blocks.<i>` / `single_blocks.<i>` (diffusers:
`transformer_blocks.<i>` / `single_transformer_blocks.<i>`). Flux.1 has 19 + 38; the loaded model
says how many it has. Only image tokens are recorded or steered: the latent is patchified 2x2, so
token t sits at row t // w, column t % w of an (ceil(H/2), ceil(W/2)) grid; text tokens (and
Kontext reference tokens) are excluded. The width is the hidden size (3072 for Flux.1).
"""
from .base import SCHEDULE, DitStream, dit_family

DOUBLE, SINGLE = "double_blocks", "single_blocks"
STREAMS = (DitStream(DOUBLE, "double_block", "transformer_blocks", 19),
           # one stream cat(txt, img): image tokens follow the text
           DitStream(SINGLE, "single_block", "single_transformer_blocks", 38, text_first=True))
FLUX1_DEPTH = {s.name: s.released_depth for s in STREAMS}
# Shabalin et al. train at double block 18 (also 9, single 9 / 18); SDLens's Flux branch at double 18.
DEFAULT_BLOCKS = ("double_blocks.18",)

FAMILY = dit_family(
    STREAMS, name="flux", display="Flux.1",
    comfy_configs=("Flux", "FluxInpaint", "FluxSchnell"),
    time_axis=SCHEDULE, default_blocks=DEFAULT_BLOCKS,
    tokens_per_latent_pixel=2, centre_directions=True, known_widths=(3072,),
)
