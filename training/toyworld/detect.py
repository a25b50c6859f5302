"""Judge a Toy World image on the renderer's own terms: which objects (colour, shape, where),
how many, and which background style.

Objects are the saturated pixels (the background is neutral grey; a colour cast on it is
removed first), split by nearest palette colour into connected components; a component's shape
is read from how much of its bounding box it fills (square ~1, circle ~0.79, triangle ~0.5) and,
to separate a triangle from a blurred circle, where its mass sits (a triangle is bottom-heavy).

The style is read from the background's brightness pattern at the world's pattern period, not
from absolute grey levels: a diffusion model leaves a tint (global or smoothly varying), a
brightness/contrast shift, per-pixel colour grain and some blur on the background; none of these
puts energy at the pattern's frequencies, and each style has its own (see `classify_style`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ...host.toyworld.world import COLOURS, PATTERN_PERIOD

SATURATION_MIN = 0.30       # max-min of RGB; the background has 0, object colours >= 0.7
MIN_AREA = 20               # px; smaller colour specks are noise (smallest object: a 12 px triangle, ~72 px)
MIN_BACKGROUND = 50         # px of background needed to read a style ("unknown" below)
OBJECT_MARGIN = 2           # px around an object left out of the style reading (its blurred edge)
# A pattern is present when its strongest frequency amplitude (see pattern_amplitudes) is at least
# a quarter of the rendered dots' (0.029, the weakest style): fainter is no visible pattern...
PATTERN_MIN_AMPLITUDE = 0.007
# ...and this many times what noise of the background's own spread gives (grain is no pattern).
PATTERN_MIN_SNR = 5.0
# Stripes / checks: the frequencies a style lacks are below this fraction of its strongest one.
MINOR_FRACTION = 0.4
CAST_SMOOTHING = 8          # px, Gaussian sigma of the local colour cast (a tint varies slowly)
CAST_MARGIN = 4             # px around an object left out of the cast (a blurred edge carries its colour)
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


def pattern_amplitudes(grey: np.ndarray, keep: np.ndarray) -> tuple[dict[str, float], float]:
    """The background's brightness amplitude at the world's four fundamental pattern frequencies
    (one period along x, along y, along each diagonal), and the noise floor of that amplitude.

    The local mean (a Gaussian of one pattern period, over `keep` only) is removed first: it holds
    a global or smoothly varying tint and brightness but nothing at the pattern period, and
    removing it stops the object holes from leaking the background level into the frequencies.
    The amplitude is the modulus of a Fourier coefficient (mean over `keep`), so the pattern's
    phase does not matter. Rendered: striped x 0.10; checkered diagonals 0.067; dotted x and y
    0.029, diagonals 0.025; all else ~0. Blur lowers them (the diagonals most); contrast scales them."""
    p = PATTERN_PERIOD
    w = keep.astype(np.float32)
    local = ndimage.gaussian_filter(grey * w, p) / np.maximum(ndimage.gaussian_filter(w, p), 1e-6)
    r = np.where(keep, grey - local, 0.0)
    n = float(keep.sum())
    yy, xx = np.mgrid[0:grey.shape[0], 0:grey.shape[1]]
    phase = {"x": xx, "y": yy, "diagonal": xx + yy, "antidiagonal": xx - yy}
    amps = {k: float(np.abs((r * np.exp(-2j * np.pi * v / p)).sum())) / n for k, v in phase.items()}
    # White noise with the residual's spread s gives amplitudes of about s / sqrt(n).
    return amps, float(r[keep].std()) / np.sqrt(n)


def classify_style(image: np.ndarray, exclude: np.ndarray) -> str:
    """Background style from the pixels outside `exclude` (the objects and their margin).

    Plain: no energy at the pattern frequencies. Striped (vertical): along x only. Checkered: on
    the diagonals only (an x square wave times a y square wave). Dotted: along x and y alike (a
    lattice of dots has every lattice frequency). Anything else (horizontal stripes, which the
    world never draws) is "unknown"."""
    keep = ~exclude
    if keep.sum() < MIN_BACKGROUND:
        return "unknown"
    amps, noise = pattern_amplitudes(image.mean(axis=2), keep)
    ax, ay = amps["x"], amps["y"]
    diagonal = max(amps["diagonal"], amps["antidiagonal"])
    strongest = max(ax, ay, diagonal)
    if strongest < PATTERN_MIN_AMPLITUDE or strongest < PATTERN_MIN_SNR * noise:
        return "plain"
    if max(ax, ay) < MINOR_FRACTION * diagonal:
        return "checkered"
    if min(ax, ay) >= MINOR_FRACTION * max(ax, ay):
        return "dotted"
    if ay < ax and diagonal < MINOR_FRACTION * ax:
        return "striped"
    return "unknown"


def find_objects(image: np.ndarray, cast) -> tuple[list[DetectedObject], np.ndarray]:
    """Saturated components of >= MIN_AREA px, saturation and palette colour read after removing
    `cast` (a colour per pixel or one for the image); returns them and their union mask."""
    image = image - cast
    saturated = (image.max(axis=2) - image.min(axis=2)) > SATURATION_MIN
    nearest = np.argmin(((image[:, :, None, :] - _PALETTE[None, None]) ** 2).sum(-1), axis=2)
    objects, kept = [], np.zeros(saturated.shape, dtype=bool)
    for ci, colour in enumerate(_PALETTE_NAMES):
        labels, n = ndimage.label(saturated & (nearest == ci))
        for k in range(1, n + 1):
            comp = labels == k
            if comp.sum() < MIN_AREA:
                continue
            # Grain knocks single pixels out of an object; the holes would make a square read as a circle.
            comp = ndimage.binary_fill_holes(comp)
            rows, cols = np.nonzero(comp)
            shape, fill = classify_shape(comp)
            objects.append(DetectedObject(colour, shape, len(rows), (float(rows.mean()), float(cols.mean())),
                                          (int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1),
                                          fill, comp))
            kept |= comp
    return objects, kept


def detect(image) -> Detection:
    """image: [H, W, 3] in [0, 1] (numpy or torch)."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"detect: expected an image [H, W, 3], got shape {image.shape}")
    # A colour cast (a tint: the background's colour away from grey) is not object colour; left in,
    # a tinted background with grain crosses SATURATION_MIN in patches that count as objects.
    # First pass: one cast, the median over the image (mostly background). Second pass: the cast of
    # the background around each pixel (objects left out), for a tint that varies over the image.
    chroma = image - image.mean(axis=2, keepdims=True)
    _, kept = find_objects(image, np.median(chroma.reshape(-1, 3), axis=0))
    background = (~ndimage.binary_dilation(kept, iterations=CAST_MARGIN)).astype(np.float32)[..., None]
    sigma = (CAST_SMOOTHING, CAST_SMOOTHING, 0)
    local_cast = ndimage.gaussian_filter(chroma * background, sigma) / np.maximum(
        ndimage.gaussian_filter(background, sigma), 1e-6)
    objects, kept = find_objects(image, local_cast)
    # Only the objects (with their blurred edge) are left out of the style reading: lone saturated
    # pixels are colour grain on the background, which the reading tolerates (leaving them out,
    # dilated, emptied grainy backgrounds into "unknown").
    exclude = ndimage.binary_dilation(kept, iterations=OBJECT_MARGIN)
    objects.sort(key=lambda o: -o.area)
    return Detection(tuple(objects), classify_style(image, exclude), kept)
