"""GlobalStyleSteer: push a concept everywhere (style, in the middle of the reverse process)."""
from __future__ import annotations

import logging

from comfy_api.latest import io

from .concept_choice import check_concept, concept_inputs, concept_text
from .sae_type import CATEGORY, SAE, node_id
from ..sae_core.interventions import NORMALISATIONS
from .steering import steer_model
from .window_inputs import block_input, mode_input, window_inputs

log = logging.getLogger("sae_concepts")
# Chosen from the Toy World measurements (README, "The paper on the Toy World").
DEFAULT_NORMALISATION = "sum"


class GlobalStyleSteer(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=node_id("GlobalStyleSteer"),
            display_name="Global Style Steer",
            category=CATEGORY,
            description="Adds beta * ||z_ij|| / sum ||z|| * f_c at every position of the block. In the "
                        "middle window it changes style (the paper: 93 % success); early it changes "
                        "composition instead, late only texture.",
            inputs=[
                io.Model.Input("model", tooltip="The model to steer; the original stays unsteered."),
                SAE.Input("sae", tooltip="From Load SAE."),
                *concept_inputs("to push everywhere (a style)"),
                io.Float.Input("beta", default=10.0, min=-100000.0, max=100000.0, step=0.5,
                               tooltip="Total strength, spread over positions in proportion to their SAE "
                                       "code norm. The paper: 8 early, 10 middle, 10 final."),
                block_input(),
                *window_inputs(0.4, 0.8),
                mode_input(),
                io.Combo.Input("normalisation", options=list(NORMALISATIONS), default=DEFAULT_NORMALISATION, optional=True,
                               tooltip="How beta is spread over positions (mode paper): sum = beta * ||z_ij|| / "
                                       "sum ||z|| (the paper as written: the total is beta, so each position gets "
                                       "little on a big grid), mean = / mean ||z|| (beta is the change at an "
                                       "average position, at any resolution), none = beta * ||z_ij||."),
            ],
            outputs=[io.Model.Output(tooltip="A steered clone of the model.")],
        )

    @classmethod
    def execute(cls, model, sae, concept, beta, block, start_percent, end_percent, rows, mode="paper",
                concept_ids=None, normalisation=DEFAULT_NORMALISATION) -> io.NodeOutput:
        concept = concept_text(concept, concept_ids)
        steered, edits = steer_model(model, sae, block, concept, "global", beta, start_percent, end_percent, rows,
                                     mode=mode, normalisation=normalisation)
        for path, edit in edits.items():
            log.info(f"GlobalStyleSteer: {concept!r} at {path}, {edit.window.paper_t()}, rows={rows}, mode={mode}")
        return io.NodeOutput(steered)

    @classmethod
    def validate_inputs(cls, concept, concept_ids=None):
        """At queue time: an unknown word is refused with the nearest labels."""
        return check_concept(concept, concept_ids, "Global Style Steer")
