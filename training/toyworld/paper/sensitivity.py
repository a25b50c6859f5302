"""How much the final image depends on each block: a random edit the size of the block's own
Delta (r x ||Delta_ij|| at every position, along a random direction per position, the same
directions at every step) is added to one transformer block's Delta, and the image's change is
measured. It only perturbs the transformer's Delta, with random directions (a steer adds SAE
directions, usually far larger: beta x ||z_ij||); what it shows is how much of the image runs
through that block at the size of what the block itself adds. Measured along the U, down and back
up: the paper's three blocks and, for contrast, a transformer at each larger grid on both sides.
At the paper's blocks the same edit is also made the size of the block's *output* (the residual
stream there, r x ||output_ij||): where even that leaves the image alone, nothing at that grid
matters to it, not only the transformer's own update."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ....sae_core.atomic import write_text_atomic
from ....sae_core.blocks import PAPER_BLOCKS
from ....host.toyworld.world import sample_scene

from .config import ToyPaperConfig

# Down the U and back up (SD1.x paths; on the 24x24 toy latent: 24, 12, 6, 3, 6, 12, 24).
SENSITIVITY_BLOCKS = ("input_blocks.1.1", "input_blocks.5.1", "input_blocks.8.1", "middle_block.1",
                      "output_blocks.3.1", "output_blocks.6.1", "output_blocks.11.1")
RATIOS = (1.0, 4.0)
STREAM_BLOCKS = PAPER_BLOCKS   # the paper's three
STREAM_RATIO = 4.0


def random_edit(ratio: float, seed: int, resolution: dict, block: str):
    """BlockEdit: ratio x ||x_ij|| along a random unit direction per position, x being what the
    patch shows (Delta, or the output); seeded, the same directions at every call of the same shape."""
    directions: dict[tuple, torch.Tensor] = {}

    def edit(delta, call):
        shape = tuple(delta.shape)
        if shape not in directions:
            g = torch.Generator().manual_seed(seed)
            u = torch.randn(shape, generator=g)
            directions[shape] = u / u.norm(dim=1, keepdim=True)
        resolution[block] = f"{shape[2]}x{shape[3]}"
        return ratio * delta.float().norm(dim=1, keepdim=True) * directions[shape]
    return edit


def reading(image: np.ndarray) -> tuple:
    """What the detector reads in an image: its objects (colour, shape) and its style."""
    from ..detect import detect
    d = detect(image)
    return sorted((o.colour, o.shape) for o in d.objects), d.style


# What a row's edit is sized by, as the tables name it, for each block_patch quantity.
EDIT_NAME = {"delta": "delta", "output": "stream"}


def run_sensitivity(cfg: ToyPaperConfig, model, clip, progress: bool = True) -> list[dict]:
    """Rows {block, resolution, edit ("delta" / "stream"), ratio, n, rmse, same_reading}. Resumes
    from sensitivity.json row by row: a row of the plan already there for the same image count is
    kept, any other (a row the plan gained, another --steer-images) is measured."""
    from tqdm import tqdm
    from ....host.block_patch import patch_block
    from ....host.toyworld.sampling import PAPER_SAMPLER, sample_images
    path = Path(cfg.out) / "sensitivity.json"
    rng = np.random.default_rng(cfg.seed * 1000 + 77)
    prompts = [sample_scene(rng).prompt for _ in range(cfg.steer_images)]
    seed = cfg.seed * 1000 + 78
    plan = [(b, r, "delta") for b in SENSITIVITY_BLOCKS for r in RATIOS] + \
           [(b, STREAM_RATIO, "output") for b in STREAM_BLOCKS]

    def key(block, ratio, edit, n=len(prompts)) -> tuple:
        return block, float(ratio), edit, n
    saved = {key(r["block"], r["ratio"], r.get("edit", "delta"), r["n"]): {**r, "edit": r.get("edit", "delta")}
             for r in (json.loads(path.read_text()) if path.exists() else [])}   # rows from before "edit": Delta
    missing = [step for step in plan if key(step[0], step[1], EDIT_NAME[step[2]]) not in saved]
    if missing:
        def images(m):
            return sample_images(m, clip.text_encoder, prompts, seed=seed, steps=cfg.steps, cfg=cfg.cfg,
                                 sampler_name=PAPER_SAMPLER["sampler_name"],
                                 scheduler=PAPER_SAMPLER["scheduler"]).numpy()
        base = images(model)
        base_readings = [reading(b) for b in base]
        resolution = {}
        for block, ratio, quantity in tqdm(missing, desc="toyworld block sensitivity", disable=not progress):
            edit = random_edit(ratio, cfg.seed, resolution, block)
            edited = images(patch_block(model, block, edit, quantity=quantity))
            rmse = float(np.sqrt(((edited - base) ** 2).mean()))
            same = float(np.mean([reading(e) == r for e, r in zip(edited, base_readings)]))
            saved[key(block, ratio, EDIT_NAME[quantity])] = {
                "block": block, "resolution": resolution.get(block), "edit": EDIT_NAME[quantity], "ratio": ratio,
                "n": len(prompts), "rmse": rmse, "same_reading": same}
    rows = [saved[key(b, r, EDIT_NAME[q])] for b, r, q in plan]
    write_text_atomic(path, json.dumps(rows, indent=1))
    return rows
