"""Object masks per held-out image, as the dictionary and the evaluation read them.

Layout (what users supply, what a segmenter run writes, what the demo writes):
  <masks>/<prompt id, 6 digits>/<label>.png   greyscale, > 127 = inside the object
Multi-word labels use spaces or underscores in the file name ("hot_dog.png").
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ...sae_core.errors import SAEConceptsError


class MaskError(SAEConceptsError, ValueError):
    pass


def image_masks(root, prompt_id: int, size: int | None = None) -> dict[str, torch.Tensor]:
    """{label: bool [H, W]} for one image (nearest-resized to size x size when given)."""
    from PIL import Image
    folder = Path(root) / f"{prompt_id:06d}"
    out = {}
    if not folder.is_dir():
        return out
    for f in sorted(folder.glob("*.png")):
        try:
            arr = np.asarray(Image.open(f).convert("L"))
        except Exception as e:  # noqa: BLE001
            raise MaskError(f"mask {f} cannot be read as an image: {e}") from e
        m = torch.from_numpy(arr > 127)
        if size:
            m = F.interpolate(m[None, None].float(), size=(size, size), mode="nearest")[0, 0] > 0.5
        out[f.stem.replace("_", " ")] = m
    return out


def save_mask(root, prompt_id: int, label: str, mask: torch.Tensor) -> None:
    from PIL import Image
    from ...sae_core.atomic import atomic_path
    path = Path(root) / f"{prompt_id:06d}" / f"{label.replace(' ', '_')}.png"
    with atomic_path(path) as tmp:
        Image.fromarray((mask.numpy().astype(np.uint8) * 255)).save(tmp, format="PNG")
