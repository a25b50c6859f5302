"""SAE Concepts: find, map and steer interpretable concepts in SD1.x U-Nets with sparse autoencoders.

Installed with pip this folder is the package `sae_concepts`; ComfyUI loads the same folder from
`custom_nodes/`. The ComfyUI side is imported lazily inside `comfy_entrypoint`, so importing the
package (for the CLI, the core or pytest) never imports ComfyUI.
"""

__version__ = "0.1.0"


async def comfy_entrypoint():
    """ComfyUI v0.8+ calls this to get our nodes (V3 extension API)."""
    from .nodes import SAEConceptsExtension

    return SAEConceptsExtension()
