"""ComfyUI adapters (V3 node API). Imported only inside ComfyUI (see the root __init__)."""
from typing_extensions import override
from comfy_api.latest import ComfyExtension, io

from .concept_map_preview import ConceptMapPreview
from .global_style_steer import GlobalStyleSteer
from .load_sae import LoadSAE
from .model_folders import register
from .spatial_concept_steer import SpatialConceptSteer
from .toyworld_nodes import NODES as TOYWORLD_NODES

NODES = [LoadSAE, SpatialConceptSteer, GlobalStyleSteer, ConceptMapPreview, *TOYWORLD_NODES]


class SAEConceptsExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        register()
        return NODES
