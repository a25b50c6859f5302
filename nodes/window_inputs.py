"""Inputs every steering node shares: the SAE block, the timestep window and the rows."""
from __future__ import annotations

from comfy_api.latest import io

from ..sae_core import PAPER_BLOCKS, SD1_BLOCKS
from .steering import ROWS

BLOCK_OPTIONS = list(PAPER_BLOCKS) + [b for b in SD1_BLOCKS if b not in PAPER_BLOCKS]


def block_input(default: str = "middle_block.1"):
    return io.Combo.Input(
        "block", options=BLOCK_OPTIONS, default=default,
        tooltip="U-Net transformer block to steer (ComfyUI path). The paper's SAEs: input_blocks.8.1 "
                "(down), middle_block.1 (mid), output_blocks.3.1 (up). The SAE must have one for it.")


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
                               "the negative (uncond) one, or both. With cfg 1 only cond exists."),
    ]
