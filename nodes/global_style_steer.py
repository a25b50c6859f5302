"""GlobalStyleSteer: push a concept everywhere (style, in the middle of the reverse process)."""
from __future__ import annotations

import logging

from comfy_api.latest import io

from .block_patch import patch_block
from .sae_type import SAE
from .steering import ConceptSteerEdit
from .window_inputs import block_input, window_inputs

log = logging.getLogger("sae_concepts")


class GlobalStyleSteer(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="GlobalStyleSteer",
            display_name="Global Style Steer",
            category="sae_concepts",
            description="Adds beta * ||z_ij|| / sum ||z|| * f_c at every position of the block. In the "
                        "middle window it changes style (the paper: 93 % success); early it changes "
                        "composition instead, late only texture.",
            inputs=[
                io.Model.Input("model", tooltip="The model to steer; the original stays unsteered."),
                SAE.Input("sae", tooltip="From Load SAE."),
                io.String.Input("concept", default="0",
                                tooltip="Concept ids ('12, 40') or a word looked up in the SAE's dictionary."),
                io.Float.Input("beta", default=10.0, min=-100000.0, max=100000.0, step=0.5,
                               tooltip="Total strength, spread over positions in proportion to their SAE "
                                       "code norm. The paper: 8 early, 10 middle, 10 final."),
                block_input("middle_block.1"),
                *window_inputs(0.4, 0.8),
            ],
            outputs=[io.Model.Output(tooltip="A steered clone of the model.")],
        )

    @classmethod
    def execute(cls, model, sae, concept, beta, block, start_percent, end_percent, rows) -> io.NodeOutput:
        edit = ConceptSteerEdit(model, sae, block, concept, "global", beta, start_percent, end_percent, rows)
        log.info(f"GlobalStyleSteer: {concept!r} at {block}, {edit.window.paper_t()}, rows={rows}")
        return io.NodeOutput(patch_block(model, block, edit))
