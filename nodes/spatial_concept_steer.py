"""SpatialConceptSteer: put a concept in a region (composition, early in the reverse process)."""
from __future__ import annotations

import logging

from comfy_api.latest import io

from .block_patch import patch_block
from .sae_type import SAE
from .steering import ConceptSteerEdit
from .window_inputs import block_input, window_inputs

log = logging.getLogger("sae_concepts")


class SpatialConceptSteer(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SpatialConceptSteer",
            display_name="Spatial Concept Steer (composition)",
            category="sae_concepts",
            description="Inside the mask adds beta * ||z|| * f_c for the chosen concepts to the block's "
                        "residual update; outside it removes the concepts' own contribution. Strongest "
                        "early (the paper: 80 % placement success at t = 1.0).",
            inputs=[
                io.Model.Input("model", tooltip="The model to steer; the original stays unsteered."),
                SAE.Input("sae", tooltip="From Load SAE."),
                io.String.Input("concept", default="0",
                                tooltip="Concept ids ('12, 40') or a word looked up in the SAE's dictionary "
                                        "('dog'): all concepts labelled with it are used."),
                io.Mask.Input("mask", tooltip="Region S where the concept should appear. Any size: resized "
                                              "to the block's resolution (averaged, so edges are soft)."),
                io.Float.Input("beta", default=4000.0, min=-100000.0, max=100000.0, step=10.0,
                               tooltip="Strength; multiplied by each position's SAE code norm. The paper: "
                                       "4000 early, 400 middle, 1000 final."),
                block_input("middle_block.1"),
                *window_inputs(0.0, 0.4),
            ],
            outputs=[io.Model.Output(tooltip="A steered clone of the model.")],
        )

    @classmethod
    def execute(cls, model, sae, concept, mask, beta, block, start_percent, end_percent, rows) -> io.NodeOutput:
        edit = ConceptSteerEdit(model, sae, block, concept, "spatial", beta, start_percent, end_percent,
                                rows, mask=mask)
        log.info(f"SpatialConceptSteer: {concept!r} at {block}, {edit.window.paper_t()}, rows={rows}")
        return io.NodeOutput(patch_block(model, block, edit))
