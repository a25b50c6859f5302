"""Inputs every steering node shares: the SAE block, the timestep window and the rows."""
from __future__ import annotations

from comfy_api.latest import io

from ..sae_core import PAPER_BLOCKS, SD1_BLOCKS
from ..sae_core.families import released_dit_blocks
from .steering import AUTO, MODES, ROWS

# SDXL's transformer blocks that SD1.x lacks (ComfyUI paths); SDLens's are input_blocks.8.1,
# middle_block.1, output_blocks.0.1 and output_blocks.1.1.
SDXL_ONLY = ["output_blocks.0.1", "output_blocks.1.1", "output_blocks.2.1"]
# The DiT families' blocks of their largest releases (Flux.1: 19 double, 38 single; SD3.5 Large: 38
# joint); a smaller model is checked when the node runs.
DIT_BLOCKS = [f"{s.name}.{i}" for _, s, i in released_dit_blocks()]
BLOCK_OPTIONS = ([AUTO] + list(PAPER_BLOCKS) + [b for b in SD1_BLOCKS if b not in PAPER_BLOCKS] + SDXL_ONLY
                 + DIT_BLOCKS)


def block_input(default: str = AUTO):
    return io.Combo.Input(
        "block", options=BLOCK_OPTIONS, default=default,
        tooltip="U-Net transformer block (ComfyUI path). 'auto': every block the SAE set has SAEs for. "
                "The paper's SD1.x blocks: input_blocks.8.1 (down), middle_block.1 (mid), output_blocks.3.1 "
                "(up); SDLens's SDXL ones: input_blocks.8.1, middle_block.1, output_blocks.0.1 / 1.1; Flux: "
                "double_blocks.<i> / single_blocks.<i> (Shabalin et al.: double_blocks.18); SD3/SD3.5: joint_blocks.<i>.")


def mode_input():
    return io.Combo.Input(
        "mode", options=MODES, default="paper",
        tooltip="paper: the paper's adaptive beta (scaled by the SAE code's norm at each position). sdlens: "
                "beta is SDLens's strength (-40..40, default 10), times each feature's mean activation "
                "(SAEs that carry mean.pt, e.g. SDLens), painted through the mask pooled to the block grid. "
                "With rows = both it is added to the positive row and subtracted from the negative one, as "
                "sdxl-unbox does (paper mode adds to both). activation_addition: beta is Shabalin et al.'s "
                "strength (e.g. 0.8): beta x mean token norm x the unit concept direction, added inside the mask.")


def window_inputs(start: float, end: float):
    return [
        io.Float.Input("start_percent", default=start, min=0.0, max=1.0, step=0.01,
                       tooltip="Start of the window in ComfyUI's percent of the sampling (0 = first step, "
                               "pure noise). The paper's t is 1 - percent: early = t in [0.6, 1] = "
                               "percent 0.0-0.4, middle = 0.4-0.8, final = 0.8-1.0."),
        io.Float.Input("end_percent", default=end, min=0.0, max=1.0, step=0.01,
                       tooltip="End of the window (percent of the sampling); must be >= start_percent."),
        io.Combo.Input("rows", options=ROWS, default="both",
                       tooltip="Which halves of the CFG batch to steer: the positive (cond) prediction, "
                               "the negative (uncond) one, or both (mode sdlens: + on positive, - on "
                               "negative, as sdxl-unbox). With cfg 1 only cond exists."),
    ]
