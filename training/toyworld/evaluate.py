"""The Toy World quality bar: sample held-out prompts with KSampler's path, judge with the detector.

Held-out means new scenes and new noise: prompts come from rng(EVAL_SEED_BASE + seed), a
stream training never draws (training uses rng([seed, step])). The world is small (12 objects,
4 styles), so every prompt string is in the training distribution; what is held out is
the sample, not the vocabulary.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ...sae_core.atomic import check_replaceable, write_text_atomic
from ...sae_core.errors import require
from .detect import detect
from ...host.toyworld.sampling import DEFAULT_SAMPLER, SHIPPED_WEIGHTS, load_toy_model, sample_images
from ...host.toyworld.world import parse_prompt, sample_scene

EVAL_SEED_BASE = 1_000_000
QUALITY_BAR = {"colour_shape": 0.90, "style": 0.90, "count": 0.90}


@dataclass
class ToyEvalConfig:
    weights: str = field(default=str(SHIPPED_WEIGHTS), metadata={"help": "toy world weights file"})
    prompts: int = field(default=200, metadata={"help": "held-out prompts (half 1-object, half 2-object)"})
    seed: int = field(default=0, metadata={"help": "which held-out prompt/noise stream"})
    steps: int = field(default=DEFAULT_SAMPLER["steps"], metadata={"help": "sampler steps"})
    cfg: float = field(default=DEFAULT_SAMPLER["cfg"], metadata={"help": "classifier-free guidance scale"})
    sampler_name: str = field(default=DEFAULT_SAMPLER["sampler_name"], metadata={"help": "ComfyUI sampler"})
    scheduler: str = field(default=DEFAULT_SAMPLER["scheduler"], metadata={"help": "ComfyUI scheduler"})
    batch_size: int = field(default=50, metadata={"help": "images sampled at once"})
    out: str = field(default="toyworld_eval.json", metadata={"help": "metrics JSON to write"})
    grid: str = field(default="", metadata={"help": "also save the first 32 samples as a PNG grid here"})


def held_out_prompts(n: int, seed: int = 0) -> list[str]:
    """n prompts, alternating 1 and 2 objects, every style named."""
    rng = np.random.default_rng(EVAL_SEED_BASE + seed)
    return [sample_scene(rng, n_objects=1 + i % 2).prompt for i in range(n)]


def judge(prompt: str, image) -> dict:
    """One sample against its prompt: every prompted colour+shape found, style, object count."""
    wanted, style = parse_prompt(prompt)
    d = detect(image)
    found = [d.has(c, s) for c, s in wanted]
    labels = [f"{o.colour} {o.shape}" for o in d.objects]
    return {"prompt": prompt, "n_objects": len(wanted),
            "colour_shape": all(found), "objects_found": sum(found),
            "style": style is None or d.style == style, "detected_style": d.style,
            "count": d.count == len(wanted), "detected": labels,
            "too_many": d.count > len(wanted), "too_few": d.count < len(wanted),
            "copy": len(set(labels)) < len(labels)}


def summarise(rows: list[dict]) -> dict:
    def rate(key, sel=lambda r: True):
        chosen = [r for r in rows if sel(r)]
        return round(float(np.mean([r[key] for r in chosen])), 4) if chosen else None
    out = {k: rate(k) for k in ("colour_shape", "style", "count")}
    out["all_three"] = round(float(np.mean([r["colour_shape"] and r["style"] and r["count"] for r in rows])), 4)
    for n in (1, 2):
        out[f"colour_shape_{n}obj"] = rate("colour_shape", lambda r, n=n: r["n_objects"] == n)
        out[f"count_{n}obj"] = rate("count", lambda r, n=n: r["n_objects"] == n)
    out["objects_found_rate"] = round(sum(r["objects_found"] for r in rows) / sum(r["n_objects"] for r in rows), 4)
    # How the count goes wrong: more objects than asked, or fewer; and how often one colour+shape is
    # found twice (mostly an object drawn twice, the commonest failure, with or without the right
    # count; or one the detector splits in two). Shares of all samples.
    out["too_many"] = rate("too_many")
    out["copy"] = rate("copy")
    out["too_few"] = rate("too_few")
    out["passes_bar"] = all(out[k] >= v for k, v in QUALITY_BAR.items())
    return out


def check_eval_config(cfg: ToyEvalConfig) -> None:
    from ..collect.collect import check_sampler_names
    require(cfg.prompts >= 2, f"--prompts must be 2 or more (half have one object, half two), got {cfg.prompts}")
    require(cfg.batch_size >= 1 and cfg.steps >= 1,
            f"--batch-size and --steps must be 1 or more, got {cfg.batch_size} and {cfg.steps}")
    require(math.isfinite(cfg.cfg) and cfg.cfg >= 0, f"--cfg must be a finite number >= 0, got {cfg.cfg}")
    require(not cfg.grid or Path(cfg.grid).suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"),
            f"--grid {cfg.grid}: give a .png, .jpg or .webp file")
    check_sampler_names(cfg.sampler_name, cfg.scheduler, ("--sampler-name", "--scheduler"))
    check_replaceable(cfg.out, "--out", "json", inputs={"--weights": cfg.weights})


def evaluate_model(cfg: ToyEvalConfig, model=None, progress: bool = True) -> dict:
    """Sample cfg.prompts held-out prompts and judge them; writes cfg.out (and cfg.grid)."""
    from tqdm import tqdm
    check_eval_config(cfg)
    patcher, text_encoder = model or load_toy_model(cfg.weights)
    prompts = held_out_prompts(cfg.prompts, cfg.seed)
    rows, images = [], []
    for b, start in enumerate(tqdm(range(0, len(prompts), cfg.batch_size), disable=not progress, desc="toyworld evaluate")):
        batch = prompts[start:start + cfg.batch_size]
        imgs = sample_images(patcher, text_encoder, batch, seed=EVAL_SEED_BASE + cfg.seed * 1000 + b,
                             steps=cfg.steps, cfg=cfg.cfg, sampler_name=cfg.sampler_name, scheduler=cfg.scheduler)
        if not torch.isfinite(imgs).all():
            raise FloatingPointError(f"toyworld evaluate: non-finite samples from {cfg.weights}")
        rows += [judge(p, im.numpy()) for p, im in zip(batch, imgs)]
        images += list(imgs.numpy())
    result = {"summary": summarise(rows), "quality_bar": QUALITY_BAR, "config": asdict(cfg), "samples": rows}
    write_text_atomic(cfg.out, json.dumps(result, indent=1))
    if cfg.grid:
        save_grid(images[:32], cfg.grid)
    return result


def save_grid(images, path, columns: int = 8, scale: int = 3):
    from PIL import Image
    images = [np.asarray(i) for i in images]
    h, w, _ = images[0].shape
    rows = (len(images) + columns - 1) // columns
    grid = np.ones((rows * (h + 2), columns * (w + 2), 3), dtype=np.float32)
    for i, im in enumerate(images):
        r, c = divmod(i, columns)
        grid[r * (h + 2):r * (h + 2) + h, c * (w + 2):c * (w + 2) + w] = im
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((grid * 255).round().astype(np.uint8)).resize(
        (grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST).save(path)
