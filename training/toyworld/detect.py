"""Judge a Toy World image on the renderer's own terms: which objects (colour, shape, where),
how many, and which background style.

Objects are the saturated pixels (the background is neutral grey), split by nearest palette
colour into connected components; a component's shape is read from how much of its bounding
box it fills (square ~1, circle ~0.79, triangle ~0.5) and, to separate a triangle from a blurred
circle, where its mass sits (a triangle is bottom-heavy). The style is read from the grey
pixels: the fraction of dark ink and whether the ink is constant along columns (stripes).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .world import BACKGROUND_DARK, BACKGROUND_LIGHT, COLOURS

SATURATION_MIN = 0.30       # max-min of RGB; the background has 0, object colours >= 0.7
MIN_AREA = 20               # px; smaller colour specks are noise (smallest object: a 12 px triangle, ~72 px)
_PALETTE_NAMES = list(COLOURS)
_PALETTE = np.array([COLOURS[c] for c in _PALETTE_NAMES], dtype=np.float32)


@dataclass(frozen=True, eq=False)
class DetectedObject:
    colour: str
    shape: str
    area: int
    centre: tuple[float, float]        # (row, col) centre of mass, px
    bbox: tuple[int, int, int, int]    # top, left, bottom, right (exclusive)
    fill: float                        # area / bbox area
    mask: np.ndarray                   # [H, W] bool: the component's pixels

    @property
    def label(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Detection:
    objects: tuple[DetectedObject, ...]
    style: str
    object_mask: np.ndarray            # [H, W] bool: all saturated pixels kept as objects

    @property
    def count(self) -> int:
        return len(self.objects)

    def has(self, colour: str, shape: str) -> bool:
        return any(o.colour == colour and o.shape == shape for o in self.objects)


def classify_shape(mask: np.ndarray) -> tuple[str, float]:
    """A component's shape from its fill of the bounding box and its vertical mass balance."""
    rows, cols = np.nonzero(mask)
    h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    fill = len(rows) / float(h * w)
    # Triangle (apex up): mass centre at 2/3 of the height; circle and square: 1/2.
    centre_frac = (rows.mean() - rows.min() + 0.5) / h
    if fill < 0.66 or (fill < 0.74 and centre_frac > 0.58):
        return "triangle", fill
    if fill < 0.89:
        return "circle", fill
    return "square", fill


def classify_style(image: np.ndarray, exclude: np.ndarray) -> str:
    """Background style from the grey pixels outside `exclude` (objects, dilated)."""
    grey = image.mean(axis=2)
    keep = ~exclude
    if keep.sum() < 50:
        return "unknown"
    ink = grey < (BACKGROUND_LIGHT + BACKGROUND_DARK) / 2
    fraction = ink[keep].mean()
    if fraction < 0.03:
        return "plain"
    if fraction < 0.30:
        return "dotted"
    # Stripes are vertical: ink is constant down each column. Checks alternate in both directions.
    col_agreement = _axis_agreement(ink, keep, axis=0)
    row_agreement = _axis_agreement(ink, keep, axis=1)
    if col_agreement > 0.85 and col_agreement - row_agreement > 0.15:
        return "striped"
    return "checkered"


def _axis_agreement(ink: np.ndarray, keep: np.ndarray, axis: int) -> float:
    """Mean over lines along `axis` of the majority fraction of ink (1 = every line uniform)."""
    n = keep.sum(axis=axis)
    on = (ink & keep).sum(axis=axis)
    valid = n >= 4
    if not valid.any():
        return 0.0
    frac = on[valid] / n[valid]
    return float(np.maximum(frac, 1 - frac).mean())


def detect(image) -> Detection:
    """image: [H, W, 3] in [0, 1] (numpy or torch)."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"detect: expected an image [H, W, 3], got shape {image.shape}")
    saturated = (image.max(axis=2) - image.min(axis=2)) > SATURATION_MIN
    nearest = np.argmin(((image[:, :, None, :] - _PALETTE[None, None]) ** 2).sum(-1), axis=2)
    objects, kept = [], np.zeros(saturated.shape, dtype=bool)
    for ci, colour in enumerate(_PALETTE_NAMES):
        labels, n = ndimage.label(saturated & (nearest == ci))
        for k in range(1, n + 1):
            comp = labels == k
            area = int(comp.sum())
            if area < MIN_AREA:
                continue
            rows, cols = np.nonzero(comp)
            shape, fill = classify_shape(comp)
            objects.append(DetectedObject(colour, shape, area, (float(rows.mean()), float(cols.mean())),
                                          (int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1),
                                          fill, comp))
            kept |= comp
    exclude = ndimage.binary_dilation(saturated, iterations=2)
    objects.sort(key=lambda o: -o.area)
    return Detection(tuple(objects), classify_style(image, exclude), kept)
