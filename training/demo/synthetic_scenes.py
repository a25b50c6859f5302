"""SYNTHETIC scenes with planted concepts laid out in space, for the demo and the tests.

Every image is a 16 x 16 grid of labelled cells (a background split into sky and ground, one or
two objects as rectangles). Each (block, t, cond) has its own random unit "concept direction"
per label; the activation at a cell is its label's direction (random strength) plus a weak
random texture direction and Gaussian noise. So the right answers are known exactly: the SAE
must find one decoder row per label, the dictionary must name it with that label, and concept
maps must reproduce the object masks. Nothing here comes from a diffusion model.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

OBJECTS = ["dog", "cat", "car", "tree", "house", "boat", "horse", "bird"]
BACKGROUNDS = ["sky", "grass", "water", "road"]
LABELS = OBJECTS + BACKGROUNDS
COLOURS = {"dog": (0.6, 0.4, 0.2), "cat": (0.9, 0.6, 0.1), "car": (0.85, 0.1, 0.1), "tree": (0.1, 0.5, 0.1),
           "house": (0.7, 0.7, 0.6), "boat": (0.9, 0.9, 0.95), "horse": (0.4, 0.25, 0.1), "bird": (0.2, 0.2, 0.8),
           "sky": (0.55, 0.75, 0.95), "grass": (0.35, 0.75, 0.3), "water": (0.1, 0.3, 0.6), "road": (0.35, 0.35, 0.35)}
GRID = 16
IMAGE = 128


@dataclass
class Scene:
    labels: torch.Tensor        # [GRID, GRID] index into LABELS
    prompt: str
    objects: list[str]

    def masks(self, size: int = IMAGE) -> dict[str, torch.Tensor]:
        up = F.interpolate(self.labels[None, None].float(), size=(size, size), mode="nearest")[0, 0].long()
        return {LABELS[i]: up == i for i in self.labels.unique().tolist()}

    def image(self, g: torch.Generator) -> torch.Tensor:
        """[IMAGE, IMAGE, 3] flat colours per label with a little texture."""
        cols = torch.tensor([COLOURS[lab] for lab in LABELS])
        up = F.interpolate(self.labels[None, None].float(), size=(IMAGE, IMAGE), mode="nearest")[0, 0].long()
        return (cols[up] + 0.04 * torch.randn(IMAGE, IMAGE, 3, generator=g)).clamp(0, 1)


def random_scene(g: torch.Generator) -> Scene:
    def rint(lo, hi):
        return int(torch.randint(lo, hi + 1, (1,), generator=g))
    horizon = rint(6, 10)
    ground = BACKGROUNDS[1:][rint(0, 2)]
    labels = torch.full((GRID, GRID), LABELS.index("sky"), dtype=torch.long)
    labels[horizon:] = LABELS.index(ground)
    objects = [OBJECTS[i] for i in torch.randperm(len(OBJECTS), generator=g)[: rint(1, 2)].tolist()]
    for obj in objects:
        h, w = rint(4, 8), rint(4, 8)
        y, x = rint(0, GRID - h), rint(0, GRID - w)
        labels[y:y + h, x:x + w] = LABELS.index(obj)
    objects = [o for o in objects if (labels == LABELS.index(o)).any()]
    prompt = " and ".join(f"a {o}" for o in objects) + f" under the sky on the {ground}"
    return Scene(labels, prompt, objects)


def concept_directions(d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(one unit direction per label [len(LABELS), d], texture directions [16, d])."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(len(LABELS) + 16, d, generator=g)
    dirs /= dirs.norm(dim=1, keepdim=True)
    return dirs[: len(LABELS)], dirs[len(LABELS):]


def scene_activations(scene: Scene, directions, g: torch.Generator, noise: float = 0.03) -> torch.Tensor:
    """[GRID * GRID, d] activations of one scene at one (block, t, cond)."""
    label_dirs, texture = directions
    flat = scene.labels.reshape(-1)
    strength = 0.8 + 0.4 * torch.rand(flat.shape[0], 1, generator=g)
    tex = texture[torch.randint(0, texture.shape[0], (flat.shape[0],), generator=g)]
    x = strength * label_dirs[flat] + 0.15 * tex
    return x + noise * torch.randn(x.shape, generator=g)
