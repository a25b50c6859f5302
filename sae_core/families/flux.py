"""Flux.1 (dev, schnell, Kontext): double-stream and single-stream DiT blocks.

Blocks are ComfyUI's `double_blocks.<i>` / `single_blocks.<i>` (diffusers:
`transformer_blocks.<i>` / `single_transformer_blocks.<i>`). Flux.1 has 19 + 38; the loaded model
says how many it has. Only image tokens are recorded or steered: the latent is patchified 2x2, so
token t sits at row t // w, column t % w of an (ceil(H/2), ceil(W/2)) grid; text tokens (and
Kontext reference tokens) are excluded. The width is the hidden size (3072 for Flux.1).
"""
from .base import DIT, SCHEDULE, ModelFamily, indexed_block_parser

DOUBLE, SINGLE = "double_blocks", "single_blocks"
FLUX1_DEPTH = {DOUBLE: 19, SINGLE: 38}
# Shabalin et al. train at double block 18 (also 9, single 9 / 18); SDLens's Flux branch at double 18.
DEFAULT_BLOCKS = ("double_blocks.18",)

_parse = indexed_block_parser({
    r"double_blocks\.(\d+)": DOUBLE + ".{}",
    r"transformer_blocks\.(\d+)": DOUBLE + ".{}",
    r"single_blocks\.(\d+)": SINGLE + ".{}",
    r"single_transformer_blocks\.(\d+)": SINGLE + ".{}",
})


def _alias(block: str) -> str:
    kind, i = block.rsplit(".", 1)
    return f"transformer_blocks.{i}" if kind == DOUBLE else f"single_transformer_blocks.{i}"


def patch_key(block: str) -> tuple[str, int]:
    """ComfyUI's patches_replace["dit"] key of a canonical block: ("double_block", 18)."""
    kind, i = block.rsplit(".", 1)
    return ("double_block" if kind == DOUBLE else "single_block", int(i))


FAMILY = ModelFamily(
    name="flux", display="Flux.1",
    comfy_configs=("Flux", "FluxInpaint", "FluxSchnell"),
    patch_kind=DIT, time_axis=SCHEDULE,
    default_blocks=DEFAULT_BLOCKS, parse_block=_parse, alias_of=_alias,
    blocks_help="Flux blocks are double_blocks.<i> (diffusers transformer_blocks.<i>, Flux.1: 0-18) "
                "and single_blocks.<i> (single_transformer_blocks.<i>, Flux.1: 0-37)",
    tokens_per_latent_pixel=2, image_tokens_only=True, centre_directions=True,
)
