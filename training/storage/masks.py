"""Object masks per held-out image, as the dictionary and the evaluation read them.

Layout (what users supply, what a segmenter run writes, what the demo writes):
  <masks>/<prompt id, 6 digits>/<label>.png   greyscale, > 127 = inside the object
Multi-word labels use spaces or underscores in the file name ("hot_dog.png").
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ...sae_core.errors import SAEConceptsError


LAYOUT = "<masks>/<image id, 6 digits>/<label>.png"


class MaskError(SAEConceptsError, ValueError):
    pass


def label_of(mask_file: Path) -> str:
    return mask_file.stem.replace("_", " ")


def mask_coverage(root, prompt_ids, option: str = "--masks") -> dict:
    """How many of the images `prompt_ids` have masks in `root`, and how many objects per label.
    Refuses a folder that is missing or matches none of the images, naming the expected layout
    and what the folder holds instead."""
    root = Path(root)
    if not root.is_dir():
        raise MaskError(f"{option} {root}: no such folder; expected object masks laid out as {LAYOUT}")
    ids = sorted(set(int(i) for i in prompt_ids))
    labels: Counter = Counter()
    with_masks = 0
    for pid in ids:
        files = sorted((root / f"{pid:06d}").glob("*.png"))
        with_masks += bool(files)
        labels.update(label_of(f) for f in files)
    if not ids:
        raise MaskError(f"{option} {root}: there are no images to match masks to")
    if not with_masks:
        found = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
        holds = f"{found[:6]}{' ...' if len(found) > 6 else ''}" if found else "nothing"
        raise MaskError(f"{option} {root}: no mask for any of the {len(ids)} images (ids {ids[0]:06d} to "
                        f"{ids[-1]:06d}); expected {LAYOUT}, e.g. {root / f'{ids[0]:06d}' / 'dog.png'}; "
                        f"the folder holds {holds}")
    return {"folder": str(root), "images": len(ids), "images_with_masks": with_masks,
            "masks_per_label": dict(sorted(labels.items()))}


def image_size(images_dir, prompt_id: int) -> tuple[int, int] | None:
    """(width, height) of the collected image `prompt_id`, or None when it is not there."""
    from PIL import Image
    path = Path(images_dir) / f"{prompt_id:06d}.png"
    if not path.is_file():
        return None
    with Image.open(path) as im:
        return im.size


def image_masks(root, prompt_id: int, size: int | None = None,
                expect_size: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
    """{label: bool [H, W]} for one image (nearest-resized to size x size when given). Every mask
    must have the image's size (`expect_size` = (width, height) when known; else the masks of one
    image must agree): a mask of another size belongs to another image or resolution."""
    from PIL import Image
    folder = Path(root) / f"{prompt_id:06d}"
    out = {}
    if not folder.is_dir():
        return out
    for f in sorted(folder.glob("*.png")):
        try:
            with Image.open(f) as im:
                arr = np.asarray(im.convert("L"))
        except Exception as e:  # noqa: BLE001
            raise MaskError(f"mask {f} cannot be read as an image: {e}") from e
        found = (arr.shape[1], arr.shape[0])
        if expect_size is None:
            expect_size = found
        elif found != tuple(expect_size):
            raise MaskError(f"mask {f} is {found[0]}x{found[1]} pixels, but image {prompt_id:06d} is "
                            f"{expect_size[0]}x{expect_size[1]}: masks must have their image's size")
        m = torch.from_numpy(arr > 127)
        if size:
            m = F.interpolate(m[None, None].float(), size=(size, size), mode="nearest")[0, 0] > 0.5
        out[label_of(f)] = m
    return out


def save_mask(root, prompt_id: int, label: str, mask: torch.Tensor) -> None:
    from PIL import Image
    from ...sae_core.atomic import atomic_path
    path = Path(root) / f"{prompt_id:06d}" / f"{label.replace(' ', '_')}.png"
    with atomic_path(path) as tmp:
        Image.fromarray((mask.numpy().astype(np.uint8) * 255)).save(tmp, format="PNG")
