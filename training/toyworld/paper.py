"""`sae-concepts toyworld paper`: the paper's findings measured on the Toy World model.

Every stage runs the project's own code, so what is measured is what users run:
1. collect: free-position prompts (the noise decides where objects go) sampled through
   `training/collect` (ComfyUI's sampler, the block patch the nodes steer with), Delta at the
   paper's three blocks, t = 1.0 / 0.5 / 0.0, cond and uncond, into the standard shards;
   three splits: train (SAEs), heldout (dictionary), eval (composition IoU).
2. masks: the final image's objects as the detector sees them (`<id>/<colour_shape>.png`) plus
   the background as its detected style (`<id>/<style>.png`); evaluation uses objects only.
3. train -> dictionary -> evaluate -> report: the standard commands' functions, unchanged.
4. steering (SpatialConceptSteer / GlobalStyleSteer's code, `nodes/steering.steer_model`):
   (b) put an object that is not in the prompt into a quadrant, (c) change the background
   style, (d) suppress a prompted object or style; windows early / middle / late (ComfyUI
   percent 0-0.4 / 0.4-0.8 / 0.8-1), beta sweeps; success judged by the detector, distance to
   the unsteered image (RMSE, SSIM) beside it.
Every stage writes atomically and is skipped when its output exists (resume = run again).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ...sae_core.atomic import write_text_atomic
from ...sae_core.errors import SAEConceptsError
from ...host.toyworld.sampling import DEFAULT_SAMPLER, SHIPPED_WEIGHTS
from ...host.toyworld.world import COLOURS, SHAPES, STYLES, sample_scene, scene_prompt, ToyObject

PAPER_T = (1.0, 0.5, 0.0)
SPLITS = {"train": 0, "heldout": 1, "eval": 2}
# ComfyUI percent windows of the paper's early / middle / late steering (t = 1 - percent).
WINDOWS = {"early": (0.0, 0.4), "middle": (0.4, 0.8), "late": (0.8, 1.0)}
# The paper (Tinaz et al. 2025) on SD1.4, for the tables.
PAPER = {
    "composition_mid_t1": 0.26,
    "spatial": {"early": 0.80, "middle": 0.23, "late": 0.25},
    "style": {"early": 0.78, "middle": 0.93, "late": 0.69},
}
QUADRANTS = ("top left", "top right", "bottom left", "bottom right")


@dataclass
class ToyPaperConfig:
    out: str = field(default="toyworld_paper", metadata={"help": "output folder (resumes if it exists)"})
    weights: str = field(default=str(SHIPPED_WEIGHTS), metadata={"help": "toy world weights file"})
    train_images: int = field(default=96, metadata={"help": "images whose Delta trains the SAEs"})
    heldout_images: int = field(default=32, metadata={"help": "images for the concept dictionary"})
    eval_images: int = field(default=32, metadata={"help": "images for composition IoU"})
    steps: int = field(default=DEFAULT_SAMPLER["steps"], metadata={"help": "sampler steps (DDIM)"})
    cfg: float = field(default=DEFAULT_SAMPLER["cfg"], metadata={"help": "classifier-free guidance scale"})
    expansion_factor: int = field(default=4, metadata={"help": "SAE latents = expansion_factor * channels"})
    k: int = field(default=10, metadata={"help": "SAE active latents per vector"})
    epochs: int = field(default=30, metadata={"help": "SAE training passes over the train split"})
    dictionary_iou: float = field(default=0.5, metadata={"help": "dictionary: IoU above which a mask's label is given"})
    steer_images: int = field(default=8, metadata={"help": "images per steering condition"})
    spatial_betas: str = field(default="4,16,64,256,1024,4096", metadata={"help": "beta sweep of the spatial steer"})
    style_betas: str = field(default="sum:10,1000;mean:2,8;none:2,8",
                             metadata={"help": "beta sweep of the style steer per normalisation"})
    suppress_betas: str = field(default="-8,-64,-512", metadata={"help": "betas of the negative global steer (mean norm.)"})
    blocks: str = field(default="auto", metadata={"help": "steered block(s): auto = all three, or one path"})
    seed: int = field(default=0, metadata={"help": "seed of prompts and noise"})
    threads: int = field(default=1, metadata={"help": "torch CPU threads"})
    skip_steering: bool = field(default=False, metadata={"help": "stop after composition (no steering runs)"})


class ToyPaperError(SAEConceptsError, ValueError):
    pass


# -- prompts and masks ----------------------------------------------------------------------

def split_prompts(cfg: ToyPaperConfig, split: str, n: int) -> list[str]:
    """Free-position prompts (1-2 objects, style named), one rng stream per split."""
    rng = np.random.default_rng([cfg.seed, 7_000 + SPLITS[split]])
    return [sample_scene(rng, n_objects=1 + i % 2).prompt for i in range(n)]


def object_components(image: np.ndarray):
    """[(label, bool mask [H, W])] of the detector's objects (same-label objects merged), and the
    detection itself (its style and object mask)."""
    from .detect import detect
    d = detect(image)
    found: dict[str, np.ndarray] = {}
    for o in d.objects:
        found[o.label] = found.get(o.label, np.zeros_like(o.mask)) | o.mask
    return list(found.items()), d


def write_masks(split_dir: Path) -> tuple[Path, Path]:
    """masks/ (objects + background style, for the dictionary) and object_masks/ (objects only,
    for composition IoU) of every image of a collected split, from the detector."""
    from PIL import Image
    from scipy import ndimage
    from ..storage.masks import save_mask
    from .detect import OBJECT_MARGIN
    masks, objects = split_dir / "masks", split_dir / "object_masks"
    done = split_dir / "masks.done"
    if done.exists():
        return masks, objects
    pngs = sorted((split_dir / "images").glob("*.png"))
    found = 0
    for png in pngs:
        pid = int(png.stem)
        image = np.asarray(Image.open(png).convert("RGB"), dtype=np.float32) / 255
        comps, detection = object_components(image)
        found += len(comps)
        for label, m in comps:
            save_mask(masks, pid, label, torch.from_numpy(m))
            save_mask(objects, pid, label, torch.from_numpy(m))
        if detection.style in STYLES:   # the background as the detector reads its style: objects and margin out
            bg = ~ndimage.binary_dilation(detection.object_mask, iterations=OBJECT_MARGIN)
            save_mask(masks, pid, detection.style, torch.from_numpy(bg))
    if not found:
        raise ToyPaperError(f"{split_dir}: the detector found no object in any of its {len(pngs)} images: this "
                            f"model does not draw Toy World scenes (untrained weights?), so there is nothing to "
                            f"label concepts with")
    write_text_atomic(done, "ok\n")
    return masks, objects


# -- composition (stages 1-3) -----------------------------------------------------------------

def run_composition(cfg: ToyPaperConfig, model, clip, vae, progress: bool = True) -> dict:
    from ...sae_core import TrainConfig
    from ..collect.collect import CollectConfig, collect, write_prompt_index
    from ..dictionary.dictionary import DictionaryConfig, build_dictionary
    from ..evaluate.evaluate import EvaluateConfig, evaluate
    from ..train.train import TrainCommandConfig, train_saes
    out = Path(cfg.out)
    latent = model.model.model_config.unet_config["image_size"]
    splits = {}
    for split, n in (("train", cfg.train_images), ("heldout", cfg.heldout_images), ("eval", cfg.eval_images)):
        folder = out / "acts" / split
        prompts = split_prompts(cfg, split, n)
        if not (folder / "prompts.jsonl").exists():
            # collect's width/height are SD pixels (latent = 1/8): 8 * the toy latent side.
            collect(CollectConfig(out=str(folder), steps=cfg.steps, cfg=cfg.cfg, sampler=DEFAULT_SAMPLER["sampler_name"],
                                  scheduler=DEFAULT_SAMPLER["scheduler"], width=8 * latent, height=8 * latent,
                                  batch_size=16, prompts_per_shard=32, timesteps=",".join(f"{t:g}" for t in PAPER_T),
                                  seed=cfg.seed * 100_000 + SPLITS[split] * 10_000, checkpoint=cfg.weights),
                    model=model, clip=clip, vae=vae, prompts=prompts, progress=progress)
            write_prompt_index(folder)
        splits[split] = folder
    masks, _ = write_masks(splits["heldout"])
    _, eval_objects = write_masks(splits["eval"])
    sae_path = out / "sae_set.safetensors"
    if not sae_path.exists():
        train_saes(TrainCommandConfig(shards=str(splits["train"]), out=str(sae_path), expansion_factor=cfg.expansion_factor,
                                      k=cfg.k, batch_size=512, shuffle_window=1 << 16, epochs=cfg.epochs, device="cpu"),
                   TrainConfig(checkpoint_every=200, log_every=50), progress=progress)
    dict_path = out / "concept_dictionary.json"
    if not dict_path.exists():
        build_dictionary(DictionaryConfig(shards=str(splits["heldout"]), sae=str(sae_path), masks=str(masks),
                                          out=str(dict_path), iou=cfg.dictionary_iou), progress=progress)
    metrics = out / "metrics.json"
    if not metrics.exists():
        evaluate(EvaluateConfig(shards=str(splits["eval"]), sae=str(sae_path), dictionary=str(dict_path),
                                masks=str(eval_objects), out=str(metrics)))
    return {"splits": {k: str(v) for k, v in splits.items()}, "sae": str(sae_path), "dictionary": str(dict_path),
            "metrics": str(metrics), "eval_object_masks": str(eval_objects)}


# -- style concepts by association ------------------------------------------------------------

STYLE_CONCEPTS_PER_KEY = 3     # latents named after each style per (block, t, cond)
STYLE_RATIO = 2.0              # mean activation on that style's images >= this x on the others


def add_style_labels(sae_path, dict_path, shards_dir, masks_dir, out_path) -> Path:
    """A copy of the dictionary where style concepts are named by association, not IoU: the
    background mask is most of the image, so a style concept's map rarely passes IoU > 0.5 with
    it (the IoU rule named no style on the Toy World). Here a latent is named after style S when
    its mean activation over the images whose background the detector reads as S is the highest
    and at least STYLE_RATIO times its mean over the other images (top STYLE_CONCEPTS_PER_KEY per
    key). Object labels are kept as the dictionary stage gave them."""
    from ...sae_core import load_sae
    from ...sae_core.concept_dictionary import ConceptDictionary, SAEConcepts
    from ..dictionary.dictionary import image_codes
    from ..storage.shards import ShardSet, sae_key
    out_path = Path(out_path)
    if out_path.exists():
        return out_path
    sae_set = load_sae(sae_path)
    base = ConceptDictionary.load(dict_path)
    shards = ShardSet.open(shards_dir)
    style_of = {}
    for d in Path(masks_dir).iterdir():
        found = [st for st in STYLES if (d / f"{st}.png").exists()]
        if found:
            style_of[int(d.name)] = found[0]
    entries = []
    for e in sae_set:
        old = base.for_sae(e.info.block, e.info.t, e.info.cond)
        concepts = {cid: {"labels": list(c["labels"]), "counts": dict(c["counts"])}
                    for cid, c in (old.concepts.items() if old else [])}
        key = sae_key(e.info)
        means, styles = [], []
        for pid, rows, _ in image_codes(shards, key):
            if pid not in style_of:
                continue
            with torch.no_grad():
                code = e.sae.encode(rows)
            dense = torch.zeros(rows.shape[0], e.sae.n_latents)
            dense.scatter_(1, code.indices, code.values.clamp_min(0))
            means.append(dense.mean(0))
            styles.append(style_of[pid])
        if means:
            m = torch.stack(means)
            per_style = {st: m[[i for i, x in enumerate(styles) if x == st]].mean(0) for st in set(styles)
                         if sum(x == st for x in styles) >= 2}
            for st, mine in per_style.items():
                others = m[[i for i, x in enumerate(styles) if x != st]].mean(0)
                rivals = torch.stack([v for k, v in per_style.items() if k != st]).max(0).values \
                    if len(per_style) > 1 else torch.zeros_like(mine)
                ok = (mine > 0) & (mine >= STYLE_RATIO * others) & (mine > rivals)
                score = torch.where(ok, mine - others, torch.full_like(mine, -1.0))
                for cid in score.topk(STYLE_CONCEPTS_PER_KEY).indices.tolist():
                    if score[cid] > 0:
                        c = concepts.setdefault(int(cid), {"labels": [], "counts": {}})
                        n = sum(x == st for x in styles)
                        c["labels"].append(st)
                        c["counts"][st] = c["counts"].get(st, 0) + n
        entries.append(SAEConcepts(e.info.block, e.info.t, e.info.cond, concepts))
    ConceptDictionary.for_sae_set(sae_set, entries).save(out_path)
    return out_path


def style_edit_size(sae_path, shards_dir, beta: float = 10.0, t: float = 0.5, cond: str = "cond") -> list[dict]:
    """How big GlobalStyleSteer's edit is under each normalisation at the paper's middle beta, on
    the model's own Delta (eval split, bucket t): mean over positions of ||change_ij|| / ||Delta_ij||,
    one concept (the latent most active on the split) per block. Needs no sampling."""
    from ...sae_core import load_sae
    from ...sae_core.interventions import NORMALISATIONS, global_steer
    from ..dictionary.dictionary import image_codes
    from ..storage.shards import ShardSet, activation_key
    shards = ShardSet.open(shards_dir)
    out = []
    for e in load_sae(sae_path):
        if e.info.t != t or e.info.cond != cond:
            continue
        images = [rows for _, rows, _ in image_codes(shards, activation_key(e.info.block, t, cond))]
        if not images:
            continue
        with torch.no_grad():
            counts = torch.zeros(e.sae.n_latents)
            for rows in images:
                counts.index_add_(0, e.sae.encode(rows).indices.flatten(), torch.ones(rows.shape[0] * e.sae.cfg.k))
            cid = int(counts.argmax())
            row = {"block": e.info.block, "positions": images[0].shape[0]}
            for norm in NORMALISATIONS:
                ratios = [(global_steer(e.sae, rows, [cid], beta, norm).norm(dim=1) / rows.norm(dim=1).clamp_min(1e-8)).mean()
                          for rows in images]
                row[norm] = float(torch.stack(ratios).mean())
        out.append(row)
    return out


# -- steering (stage 4) -----------------------------------------------------------------------

def quadrant_of(centre: tuple[float, float], size: int) -> str:
    r, c = centre
    return ("top" if r < size / 2 else "bottom") + (" left" if c < size / 2 else " right")


def quadrant_masks(quadrants: list[str], size: int) -> torch.Tensor:
    m = torch.zeros(len(quadrants), size, size)
    for i, q in enumerate(quadrants):
        rows = slice(0, size // 2) if q.startswith("top") else slice(size // 2, size)
        cols = slice(0, size // 2) if q.endswith("left") else slice(size // 2, size)
        m[i, rows, cols] = 1
    return m


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of two images [H, W, 3] in [0, 1] (7x7 uniform windows, on the grey level)."""
    from scipy.ndimage import uniform_filter
    x, y = a.mean(2).astype(np.float64), b.mean(2).astype(np.float64)
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    mx, my = uniform_filter(x, 7), uniform_filter(y, 7)
    vx = uniform_filter(x * x, 7) - mx * mx
    vy = uniform_filter(y * y, 7) - my * my
    cxy = uniform_filter(x * y, 7) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(s.mean())


def labelled(dictionary, sae_set, word: str, blocks: list[str]) -> bool:
    """Whether some SAE of the steered blocks has a concept labelled `word`."""
    for e in sae_set:
        if e.info.block not in blocks:
            continue
        c = dictionary.for_sae(e.info.block, e.info.t, e.info.cond)
        if c and c.lookup(word):
            return True
    return False


class Steerer:
    """Samples groups of prompts unsteered and steered through the nodes' steer_model."""

    def __init__(self, cfg: ToyPaperConfig, model, clip, sae_path, dict_path):
        from ...sae_core import load_sae
        from ...sae_core.concept_dictionary import ConceptDictionary
        self.cfg, self.model, self.clip = cfg, model, clip
        self.sae_set = load_sae(sae_path)
        self.sae_set.dictionary = ConceptDictionary.load(dict_path)
        self.blocks = sorted({e.info.block for e in self.sae_set}) if cfg.blocks == "auto" else [cfg.blocks]
        self.size = 2 * model.model.model_config.unet_config["image_size"]

    def sample(self, model, prompts: list[str], seed: int) -> np.ndarray:
        from ...host.toyworld.sampling import sample_images
        imgs = sample_images(model, self.clip.text_encoder, prompts, seed=seed, steps=self.cfg.steps, cfg=self.cfg.cfg)
        if not torch.isfinite(imgs).all():
            raise FloatingPointError("toyworld paper: non-finite image from a steered model")
        return imgs.numpy()

    def blocks_for(self, concept: str) -> list[str]:
        """The steered blocks whose dictionary labels some concept with `concept` (a block without
        one would refuse the word, as the node does)."""
        return [b for b in self.blocks if labelled(self.sae_set.dictionary, self.sae_set, concept, [b])]

    def steered(self, prompts, seed, concept, kind, beta, window, rows="both", mask=None, normalisation=None):
        from ...nodes.steering import steer_model
        kw = {} if normalisation is None else {"normalisation": normalisation}
        m = self.model
        for block in self.blocks_for(concept):   # one steer node per block, chained
            m, _ = steer_model(m, self.sae_set, block, concept, kind, beta, window[0], window[1], rows, mask=mask, **kw)
        return self.sample(m, prompts, seed)


def steering_tasks(cfg: ToyPaperConfig, kind: str, steerer: Steerer) -> list[dict]:
    """One task per image: prompt, what to steer towards / away from, the quadrant (spatial)."""
    rng = np.random.default_rng([cfg.seed, 9_000 + ("spatial", "style", "suppress_object", "suppress_style").index(kind)])
    d, s = steerer.sae_set.dictionary, steerer.sae_set
    objects = [f"{c} {sh}" for c in COLOURS for sh in SHAPES if labelled(d, s, f"{c} {sh}", steerer.blocks)]
    styles = [st for st in STYLES if labelled(d, s, st, steerer.blocks)]
    tasks = []
    for i in range(cfg.steer_images):
        if kind == "spatial":
            if not objects:
                break
            target = objects[int(rng.integers(len(objects)))]
            tc, ts = target.split()
            while True:
                scene = sample_scene(rng, n_objects=1)
                o = scene.objects[0]
                if o.colour != tc and o.shape != ts:
                    break
            tasks.append({"prompt": scene.prompt, "concept": target})
        elif kind == "style":
            if not styles:
                break
            target = styles[int(rng.integers(len(styles)))]
            source = [st for st in STYLES if st != target][int(rng.integers(len(STYLES) - 1))]
            scene = sample_scene(rng, n_objects=1, style=source)
            tasks.append({"prompt": scene.prompt, "concept": target})
        elif kind == "suppress_object":
            if not objects:
                break
            target = objects[int(rng.integers(len(objects)))]
            tc, ts = target.split()
            while True:
                scene = sample_scene(rng, n_objects=1)
                if scene.objects[0].label != target:
                    break
            objs = (scene.objects[0], ToyObject(tc, ts, 16, 0, 0))
            tasks.append({"prompt": scene_prompt(objs, scene.style), "concept": target, "keep": scene.objects[0].label})
        else:
            if not styles:
                break
            target = styles[int(rng.integers(len(styles)))]
            scene = sample_scene(rng, n_objects=1, style=target)
            tasks.append({"prompt": scene.prompt, "concept": target, "keep": scene.objects[0].label})
    return tasks


def judge_steer(kind: str, task: dict, image: np.ndarray, reference: np.ndarray, quadrant: str | None) -> dict:
    from .detect import detect
    det = detect(image)
    row = {"rmse": float(np.sqrt(((image - reference) ** 2).mean())), "ssim": ssim(image, reference),
           "detected": [f"{o.colour} {o.shape}" for o in det.objects], "style": det.style}
    c = task["concept"]
    if kind == "spatial":
        colour, shape = c.split()
        size = image.shape[0]
        row["success"] = any(o.colour == colour and o.shape == shape and quadrant_of(o.centre, size) == quadrant
                             for o in det.objects)
        row["colour_in_quadrant"] = any(o.colour == colour and quadrant_of(o.centre, size) == quadrant
                                        for o in det.objects)
    elif kind == "style":
        row["success"] = det.style == c
    elif kind == "suppress_object":
        row["success"] = not det.has(*c.split())
        row["kept"] = det.has(*task["keep"].split())
    else:
        row["success"] = det.style != c
        row["kept"] = det.has(*task["keep"].split())
    return row


def run_condition(steerer: Steerer, kind: str, tasks: list[dict], name: str, beta: float, window, rows: str,
                  normalisation, refs: dict, out: Path) -> dict:
    """Steer every task (grouped by concept: one steer per concept) and judge it; cached in out/<name>.json."""
    path = out / f"{name}.json"
    if path.exists():
        return json.loads(path.read_text())
    rows_out, images = [], {}
    by_concept: dict[str, list[int]] = {}
    for i, t in enumerate(tasks):
        by_concept.setdefault(t["concept"], []).append(i)
    for gi, (concept, idx) in enumerate(sorted(by_concept.items())):
        prompts = [tasks[i]["prompt"] for i in idx]
        seed = steerer.cfg.seed * 1000 + hash_text(kind + concept)
        ref = refs[concept]
        if kind == "spatial":
            quads = [tasks[i]["quadrant"] for i in idx]
            mask = quadrant_masks(quads, steerer.size)
            imgs = steerer.steered(prompts, seed, concept, "spatial", beta, window, rows, mask=mask)
        elif kind == "suppress_object" and normalisation == "remove":
            # SpatialConceptSteer with an empty region: every position loses the concept's own part.
            mask = torch.zeros(len(idx), steerer.size, steerer.size)
            imgs = steerer.steered(prompts, seed, concept, "spatial", 0.0, window, rows, mask=mask)
        else:
            imgs = steerer.steered(prompts, seed, concept, "global", beta, window, rows,
                                   normalisation=None if normalisation == "remove" else normalisation)
        for j, i in enumerate(idx):
            r = judge_steer(kind, tasks[i], imgs[j], ref[j], tasks[i].get("quadrant"))
            rows_out.append({"task": i, **r})
            images[i] = imgs[j]
    result = {"name": name, "kind": kind, "beta": beta, "window": list(window), "rows": rows,
              "blocks": {c: steerer.blocks_for(c) for c in sorted(by_concept)},
              "normalisation": normalisation, "n": len(rows_out),
              "success": float(np.mean([r["success"] for r in rows_out])) if rows_out else None,
              "rmse": float(np.mean([r["rmse"] for r in rows_out])) if rows_out else None,
              "ssim": float(np.mean([r["ssim"] for r in rows_out])) if rows_out else None,
              "images": rows_out}
    if kind == "spatial" and rows_out:
        result["colour_in_quadrant"] = float(np.mean([r["colour_in_quadrant"] for r in rows_out]))
    if kind.startswith("suppress") and rows_out:
        result["kept"] = float(np.mean([r["kept"] for r in rows_out]))
    save_strip([images[i] for i in sorted(images)], out / f"{name}.png")
    write_text_atomic(path, json.dumps(result, indent=1))
    return result


def hash_text(text: str) -> int:
    import hashlib
    return int(hashlib.sha256(text.encode()).hexdigest()[:6], 16)


def save_strip(images: list[np.ndarray], path: Path, scale: int = 2) -> None:
    from .evaluate import save_grid
    if images:
        save_grid(images, path, columns=len(images), scale=scale)


def parse_style_betas(text: str) -> dict[str, list[float]]:
    out = {}
    for part in text.split(";"):
        if part.strip():
            norm, betas = part.split(":")
            out[norm.strip()] = [float(b) for b in betas.split(",")]
    return out


def run_steering(cfg: ToyPaperConfig, model, clip, sae_path, dict_path, progress: bool = True) -> dict:
    from tqdm import tqdm
    out = Path(cfg.out) / "steering"
    out.mkdir(parents=True, exist_ok=True)
    steerer = Steerer(cfg, model, clip, sae_path, dict_path)
    plan = []   # (kind, name, beta, window, rows, normalisation)
    for w, win in WINDOWS.items():
        for b in [float(x) for x in cfg.spatial_betas.split(",")]:
            plan.append(("spatial", f"spatial_{w}_b{b:g}_both", b, win, "both", None))
        for norm, betas in parse_style_betas(cfg.style_betas).items():
            for b in betas:
                plan.append(("style", f"style_{w}_{norm}_b{b:g}_both", b, win, "both", norm))
    # cond rows only (CFG then multiplies the edit by the guidance scale): every beta early, the
    # largest in the other windows.
    spatial = [float(x) for x in cfg.spatial_betas.split(",")]
    for w, win in WINDOWS.items():
        for b in (spatial if w == "early" else spatial[-1:]):
            plan.append(("spatial", f"spatial_{w}_b{b:g}_cond", b, win, "cond", None))
    full = (0.0, 1.0)
    for target in ("object", "style"):
        plan.append((f"suppress_{target}", f"suppress_{target}_remove_all", 0.0, full, "both", "remove"))
        for b in [float(x) for x in cfg.suppress_betas.split(",")]:
            plan.append((f"suppress_{target}", f"suppress_{target}_neg_b{b:g}", b, full, "both", "mean"))
    tasks = {k: steering_tasks(cfg, k, steerer) for k in ("spatial", "style", "suppress_object", "suppress_style")}
    refs: dict[str, dict] = {}
    from .detect import detect
    for kind, ts in tasks.items():
        # keyed by the tasks themselves: another dictionary (other labels) gives other tasks
        ref_path = out / f"unsteered_{kind}_{hash_text(json.dumps([[t['prompt'], t['concept']] for t in ts])):x}.npz"
        by_concept: dict[str, list[int]] = {}
        for i, t in enumerate(ts):
            by_concept.setdefault(t["concept"], []).append(i)
        if ref_path.exists():
            saved = np.load(ref_path)
            refs[kind] = {c: saved[c.replace(" ", "_")] for c in by_concept}
        else:
            refs[kind] = {}
            for concept, idx in sorted(by_concept.items()):
                refs[kind][concept] = steerer.sample(model, [ts[i]["prompt"] for i in idx],
                                                     cfg.seed * 1000 + hash_text(kind + concept))
            np.savez(ref_path, **{c.replace(" ", "_"): v for c, v in refs[kind].items()})
        if kind == "spatial":   # the region: the quadrant farthest from where the prompted object went
            for concept, idx in by_concept.items():
                for j, i in enumerate(idx):
                    det = detect(refs[kind][concept][j])
                    centre = det.objects[0].centre if det.objects else (steerer.size / 2, steerer.size / 2)
                    far = (steerer.size - centre[0], steerer.size - centre[1])
                    ts[i]["quadrant"] = quadrant_of(far, steerer.size)
        baseline = [judge_steer(kind, ts[i], refs[kind][c][j], refs[kind][c][j], ts[i].get("quadrant"))["success"]
                    for c, idx in by_concept.items() for j, i in enumerate(idx)]
        write_text_atomic(out / f"unsteered_{kind}.json", json.dumps(
            {"kind": kind, "n": len(baseline), "success": float(np.mean(baseline)) if baseline else None,
             "tasks": ts}, indent=1))
    results = []
    for kind, name, beta, win, rows, norm in tqdm(plan, desc="toyworld steering", disable=not progress):
        if not tasks[kind]:
            continue
        results.append(run_condition(steerer, kind, tasks[kind], name, beta, win, rows, norm, refs[kind], out))
    baselines = {k: json.loads((out / f"unsteered_{k}.json").read_text())["success"] for k in tasks}
    return {"conditions": results, "unsteered_success": baselines,
            "missing_labels": {k: not v for k, v in tasks.items()}}


# -- tables -----------------------------------------------------------------------------------

def pct(v) -> str:
    return "–" if v is None else f"{100 * v:.0f} %"


def num(v, fmt=".2f") -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def window_of(win) -> str:
    for name, w in WINDOWS.items():
        if tuple(win) == w:
            return name
    return f"{win[0]:g}-{win[1]:g}"


def tables_markdown(metrics_rows: list[dict], steering: dict | None, meta: dict, edit_size: list[dict] | None = None) -> str:
    lines = [f"Toy World model: {meta.get('weights')} (step {meta.get('step')}); {meta.get('images')}; "
             f"DDIM {meta.get('steps')} steps, CFG {meta.get('cfg')}. Measured on a shared 2-core CPU.", ""]
    lines += ["### (a) Composition emergence: concept-map IoU with the final image's objects",
              "", "| block | t | cond | IoU (ours) | objects | cohesion | inter-concept sim. | FVU | paper |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(metrics_rows, key=lambda r: (r["block"], -r["t"] if r["t"] is not None else 0, r["cond"])):
        paper = "0.26 (mid, t=1; saturating by t=0.5)" if r["block"] == "middle_block.1" and r["t"] == 1.0 and r["cond"] == "cond" else ""
        lines.append(f"| {r['block']} | {r['t']:g} | {r['cond']} | {num(r.get('composition_iou'))} | {r.get('objects', '–')} | "
                     f"{num(r.get('cohesion'))} | {num(r.get('inter_concept_similarity'))} | {num(r.get('fvu'))} | {paper} |")
    if not steering:
        return "\n".join(lines) + "\n"
    conds = steering["conditions"]
    base = steering["unsteered_success"]
    missing = steering.get("missing_labels", {})

    def none_labelled(kind: str) -> list[str]:
        what = "object (colour shape)" if kind in ("spatial", "suppress_object") else "style"
        return [f"Not measured: no concept of the steered blocks is labelled with any {what} in the dictionary."] \
            if missing.get(kind) else []
    lines += ["", "### (b) Spatial steering: an object not in the prompt, into a quadrant",
              f"Success = the detector finds that colour+shape centred in the quadrant (unsteered: {pct(base.get('spatial'))}).",
              "", *none_labelled("spatial"),
              "| window | beta | rows | success (ours) | colour in quadrant | RMSE | SSIM | paper |", "|---|---|---|---|---|---|---|---|"]
    for c in [c for c in conds if c["kind"] == "spatial"]:
        w = window_of(c["window"])
        lines.append(f"| {w} | {c['beta']:g} | {c['rows']} | {pct(c['success'])} ({c['n']}) | {pct(c.get('colour_in_quadrant'))} | "
                     f"{num(c['rmse'], '.3f')} | {num(c['ssim'])} | {pct(PAPER['spatial'][w])} |")
    lines += ["", "### (c) Global style steering: change the background style",
              f"Success = the detector's style is the target (unsteered: {pct(base.get('style'))}). Normalisation of "
              "beta * ||z_ij||: sum = / sum ||z|| (the paper as written), mean = / mean ||z||, none = no division.",
              *none_labelled("style"), "", "| window | normalisation | beta | success (ours) | RMSE | SSIM | paper |", "|---|---|---|---|---|---|---|"]
    for c in [c for c in conds if c["kind"] == "style"]:
        w = window_of(c["window"])
        lines.append(f"| {w} | {c['normalisation']} | {c['beta']:g} | {pct(c['success'])} ({c['n']}) | "
                     f"{num(c['rmse'], '.3f')} | {num(c['ssim'])} | {pct(PAPER['style'][w])} |")
    if edit_size:
        lines += ["", "Size of the style edit at the paper's middle beta = 10 on this model's own Delta (t = 0.5, cond; "
                  "mean over positions of ||change|| / ||Delta||):", "",
                  "| block | positions | sum (as written) | mean | none |", "|---|---|---|---|---|"]
        for r in edit_size:
            lines.append(f"| {r['block']} | {r['positions']} | {num(r['sum'], '.3f')} | {num(r['mean'], '.3f')} | "
                         f"{num(r['none'], '.3f')} |")
    lines += ["", "### (d) Negative steering (suppression), whole trajectory",
              f"Success = the prompted object is gone / the style is no longer the prompted one (unsteered: "
              f"object {pct(base.get('suppress_object'))}, style {pct(base.get('suppress_style'))}); kept = the "
              "other prompted object is still found.", *none_labelled("suppress_object"),
              *none_labelled("suppress_style"), "",
              "| target | method | beta | success | kept | RMSE | SSIM |", "|---|---|---|---|---|---|---|"]
    for c in [c for c in conds if c["kind"].startswith("suppress")]:
        method = ("remove the concept's own contribution (SpatialConceptSteer, empty region)" if c["normalisation"] == "remove"
                  else f"negative GlobalStyleSteer ({c['normalisation']})")
        lines.append(f"| {c['kind'].split('_')[1]} | {method} | {c['beta']:g} | {pct(c['success'])} ({c['n']}) | "
                     f"{pct(c.get('kept'))} | {num(c['rmse'], '.3f')} | {num(c['ssim'])} |")
    return "\n".join(lines) + "\n"


def markdown_to_html(md: str) -> str:
    """The tables above as HTML (pipes -> table rows), headings and paragraphs kept."""
    import html
    out, in_table = [], False
    for line in md.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if set("".join(cells)) <= set("-"):
                continue
            tag = "th" if not in_table else "td"
            if not in_table:
                out.append("<table>")
                in_table = True
            out.append("<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>")
            continue
        if in_table:
            out.append("</table>")
            in_table = False
        if line.startswith("### "):
            out.append(f"<h3>{html.escape(line[4:])}</h3>")
        elif line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        out.append("</table>")
    return "\n".join(out)


def add_to_report(index_html: Path, md: str, pictures: list[str]) -> None:
    text = index_html.read_text()
    imgs = "".join(f"<figure><img src='{p}' style='image-rendering:pixelated;max-width:100%'><figcaption>{p}</figcaption></figure>"
                   for p in pictures)
    section = "<h2>The paper on the Toy World</h2>" + markdown_to_html(md) + imgs
    write_text_atomic(index_html, text.replace("</body>", section + "</body>") if "</body>" in text else text + section)


# -- the command ------------------------------------------------------------------------------

def run_paper(cfg: ToyPaperConfig, progress: bool = True) -> dict:
    from ...host.toyworld.comfy_parts import load_toy_parts
    from ...host.toyworld.sampling import weights_metadata
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "paper_config.json", json.dumps(asdict(cfg), indent=1))
    model, clip, vae = load_toy_parts(cfg.weights)
    comp = run_composition(cfg, model, clip, vae, progress)
    steering = None
    if not cfg.skip_steering:
        heldout = Path(comp["splits"]["heldout"])
        steer_dict = add_style_labels(comp["sae"], comp["dictionary"], heldout, heldout / "masks",
                                      out / "concept_dictionary_with_styles.json")
        steering = run_steering(cfg, model, clip, comp["sae"], steer_dict, progress)
    meta = weights_metadata(cfg.weights)
    info = {"weights": Path(cfg.weights).name, "step": meta.get("step"), "steps": cfg.steps, "cfg": cfg.cfg,
            "images": f"{cfg.train_images} train / {cfg.heldout_images} dictionary / {cfg.eval_images} eval images, "
                      f"{cfg.steer_images} per steering condition"}
    rows = json.loads(Path(comp["metrics"]).read_text())["rows"]
    edit_size = style_edit_size(comp["sae"], comp["splits"]["eval"])
    md = tables_markdown(rows, steering, info, edit_size)
    write_text_atomic(out / "paper_tables.md", md)
    from ..report.report import build_report
    index = build_report(out / "report", comp["sae"], comp["dictionary"], comp["metrics"], comp["splits"]["eval"],
                         comp["eval_object_masks"])
    pics = []
    if steering:
        import shutil
        for c in steering["conditions"]:
            src = out / "steering" / f"{c['name']}.png"
            if src.exists():
                shutil.copy(src, out / "report" / src.name)
                pics.append(src.name)
    add_to_report(index, md, pics[:12])
    summary = {"tables": str(out / "paper_tables.md"), "report": str(index), "composition": rows,
               "steering": None if steering is None else [{k: v for k, v in c.items() if k != "images"}
                                                          for c in steering["conditions"]],
               "unsteered_success": None if steering is None else steering["unsteered_success"]}
    write_text_atomic(out / "paper_summary.json", json.dumps(summary, indent=1))
    return summary


def cmd_paper(a) -> int:
    from ...host.comfy_env import import_comfy
    from ..dataclass_cli import dataclass_from_args
    import_comfy(cpu=True)
    cfg = dataclass_from_args(ToyPaperConfig, a)
    summary = run_paper(cfg, progress=not a.quiet)
    print(Path(summary["tables"]).read_text())
    print(f"report: {summary['report']}")
    return 0


def register_paper(tsub) -> None:
    """`sae-concepts toyworld paper` (added to the toyworld subcommands)."""
    from ..dataclass_cli import add_dataclass_args
    p = tsub.add_parser("paper", help="the paper's findings on the Toy World: composition IoU by block and t, "
                                      "spatial / style / negative steering tables (resumable)")
    add_dataclass_args(p, ToyPaperConfig)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_paper)
