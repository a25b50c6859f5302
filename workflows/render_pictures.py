"""The registry icon (workflows/pictures/icon.png).

The workflow pictures beside it are screenshots of each workflow in ComfyUI's real frontend,
taken by the browser test: `SAE_CONCEPTS_SCREENSHOTS=workflows/pictures pytest tests/test_browser_workflows.py`.
"""
from __future__ import annotations

from pathlib import Path

from PIL import Image

HERE = Path(__file__).parent


def icon(out: Path, size: int = 400) -> None:
    """The registry icon: a concept map as ConceptMapPreview draws it (one colour per top concept
    at each block position, brightness = strength): an object over a two-part background."""
    import torch
    from sae_concepts.sae_core.concept_render import colour_map
    yy, xx = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    ids = torch.where(yy < 4, 3, 8)                                    # sky / ground
    blob = ((yy - 4.2) ** 2 + (xx - 3.6) ** 2) < 5.5                   # the object
    ids = torch.where(blob, 5, ids)
    strength = torch.where(blob, 1.0 - ((yy - 4.2) ** 2 + (xx - 3.6) ** 2) / 12, 0.55 + 0.05 * xx / 8)
    rgb = colour_map(ids, strength, (size, size))
    Image.fromarray((rgb.numpy() * 255).round().astype("uint8")).save(out)


if __name__ == "__main__":
    icon(HERE / "pictures" / "icon.png")
