"""SpatialConceptSteer: put a concept in a region (composition, early in the reverse process)."""
from __future__ import annotations

import logging

from comfy_api.latest import io

from .concept_choice import check_concept, concept_inputs, concept_text
from .sae_type import CATEGORY, SAE, node_id
from .steering import steer_model
from .window_inputs import block_input, mode_input, window_inputs

log = logging.getLogger("sae_concepts")


class SpatialConceptSteer(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=node_id("SpatialConceptSteer"),
            display_name="Spatial Concept Steer (composition)",
            category=CATEGORY,
            description="Inside the mask adds beta * ||z|| * f_c for the chosen concepts to the block's "
                        "residual update; outside it removes the concepts' own contribution. Strongest "
                        "early (the paper: 80 % placement success at t = 1.0).",
            inputs=[
                io.Model.Input("model", tooltip="The model to steer; the original stays unsteered."),
                SAE.Input("sae", tooltip="From Load SAE."),
                *concept_inputs("to place in the region"),
                io.Mask.Input("mask", tooltip="Region S where the concept should appear. Any size: resized "
                                              "to the block's resolution (averaged, so edges are soft)."),
                io.Float.Input("beta", default=4000.0, min=-100000.0, max=100000.0, step=10.0,
                               tooltip="Strength; multiplied by each position's SAE code norm. The paper: "
                                       "4000 early, 400 middle, 1000 final."),
                block_input(),
                *window_inputs(0.0, 0.4),
                mode_input(),
            ],
            outputs=[io.Model.Output(tooltip="A steered clone of the model.")],
        )

    @classmethod
    def execute(cls, model, sae, concept, mask, beta, block, start_percent, end_percent, rows,
                mode="paper", concept_ids=None) -> io.NodeOutput:
        concept = concept_text(concept, concept_ids)
        steered, edits = steer_model(model, sae, block, concept, "spatial", beta, start_percent, end_percent, rows,
                                     mask=mask, mode=mode)
        if float(mask.max()) <= 0:   # valid for steer_model, but in a graph most likely a forgotten mask
            log.warning("SpatialConceptSteer: the mask is empty, so the concept is only removed "
                        "everywhere and added nowhere")
        for path, edit in edits.items():
            log.info(f"SpatialConceptSteer: {concept!r} at {path}, {edit.window.paper_t()}, rows={rows}, mode={mode}")
        return io.NodeOutput(steered)

    @classmethod
    def validate_inputs(cls, concept, concept_ids=None):
        """At queue time: an unknown word is refused with the nearest labels (this also replaces
        ComfyUI's own combo check, so ids and comma lists given through the API pass)."""
        return check_concept(concept, concept_ids, "Spatial Concept Steer")
