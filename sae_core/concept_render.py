"""Pictures of concept maps (pure torch): one colour per concept id, brightness = strength."""
from __future__ import annotations

import colorsys

import torch
import torch.nn.functional as F


def concept_colour(cid: int) -> tuple[float, float, float]:
    """A stable, well-spread colour per concept id (golden-ratio hue steps)."""
    hue = (int(cid) * 0.6180339887) % 1.0
    return colorsys.hsv_to_rgb(hue, 0.8, 1.0)


def colour_map(top_ids: torch.Tensor, strength: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """top_ids, strength: [h, w] -> RGB image [H, W, 3] in [0, 1] (nearest upsampling: one
    visible cell per block position)."""
    palette = {int(c): concept_colour(int(c)) for c in top_ids.unique().tolist()}
    rgb = torch.tensor([palette[int(c)] for c in top_ids.reshape(-1).tolist()], dtype=torch.float32)
    rgb = rgb.reshape(*top_ids.shape, 3)
    s = strength.float().clamp_min(0)
    s = s / s.max() if float(s.max()) > 0 else s
    rgb = rgb * (0.25 + 0.75 * s[..., None])
    return F.interpolate(rgb.permute(2, 0, 1)[None], size=out_hw, mode="nearest")[0].permute(1, 2, 0)


def normalised_map(values: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """[h, w] activation -> [H, W] in [0, 1] (bilinear), as the paper normalises before thresholding."""
    v = values.float().clamp_min(0)
    v = F.interpolate(v[None, None], size=out_hw, mode="bilinear", align_corners=False)[0, 0]
    top = float(v.max())
    return v / top if top > 0 else v
