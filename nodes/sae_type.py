"""What makes our nodes ours in a shared ComfyUI: the node-id prefix and the SAE socket type.

ComfyUI keeps one flat namespace of node ids and socket types for every installed pack; generic
names such as "LoadSAE" or "SAE" would collide with other SAE packs, so both carry the pack's name.
Display names stay readable ("Load SAE").
"""
from comfy_api.latest import io

NODE_PREFIX = "SAEConcepts_"
CATEGORY = "sae_concepts"


def node_id(name: str) -> str:
    """The registered id of our node `name` (e.g. "LoadSAE" -> "SAEConcepts_LoadSAE")."""
    return NODE_PREFIX + name


# Carries an SAESet (with its optional concept dictionary) from Load SAE to the other nodes.
SAE = io.Custom("SAE_CONCEPTS_SAE")
