"""Stage 4 of `toyworld paper`: spatial, style and negative steering with the nodes' own code, judged
by the detector, with the distance to the unsteered image beside it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ....sae_core.atomic import write_text_atomic
from ....host.toyworld.world import COLOURS, SHAPES, STYLES, Scene, sample_scene, scene_prompt, ToyObject

from .config import ToyPaperConfig, WINDOWS, parse_betas, parse_style_betas


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
        from ....sae_core import load_sae
        from ....sae_core.concept_dictionary import ConceptDictionary
        self.cfg, self.model, self.clip = cfg, model, clip
        self.sae_set = load_sae(sae_path)
        self.sae_set.dictionary = ConceptDictionary.load(dict_path)
        self.blocks = sorted({e.info.block for e in self.sae_set}) if cfg.blocks == "auto" else [cfg.blocks]
        self.size = 2 * model.model.model_config.unet_config["image_size"]

    def sample(self, model, prompts: list[str], seed: int) -> np.ndarray:
        from ....host.toyworld.sampling import PAPER_SAMPLER, sample_images
        imgs = sample_images(model, self.clip.text_encoder, prompts, seed=seed, steps=self.cfg.steps, cfg=self.cfg.cfg,
                             sampler_name=PAPER_SAMPLER["sampler_name"], scheduler=PAPER_SAMPLER["scheduler"])
        if not torch.isfinite(imgs).all():
            raise FloatingPointError("toyworld paper: non-finite image from a steered model")
        return imgs.numpy()

    def blocks_for(self, concept: str) -> list[str]:
        """The steered blocks whose dictionary labels some concept with `concept` (a block without
        one would refuse the word, as the node does)."""
        return [b for b in self.blocks if labelled(self.sae_set.dictionary, self.sae_set, concept, [b])]

    def steered(self, prompts, seed, concept, kind, beta, window, rows="both", mask=None, normalisation=None):
        from ....nodes.steering import steer_model
        kw = {} if normalisation is None else {"normalisation": normalisation}
        m = self.model
        for block in self.blocks_for(concept):   # one steer node per block, chained
            m, _ = steer_model(m, self.sae_set, block, concept, kind, beta, window[0], window[1], rows, mask=mask, **kw)
        return self.sample(m, prompts, seed)


def single_object_scene(rng: np.random.Generator, acceptable) -> Scene:
    """A one-object scene whose object passes `acceptable` (drawn again until it does)."""
    while True:
        scene = sample_scene(rng, n_objects=1)
        if acceptable(scene.objects[0]):
            return scene


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
            scene = single_object_scene(rng, lambda o: o.colour != tc and o.shape != ts)
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
            scene = single_object_scene(rng, lambda o: o.label != target)
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
    from ..detect import detect
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
    """Steer every task (grouped by concept: one steer per concept) and judge it; cached in
    out/<name>.json with the key of its tasks and the blocks each concept is steered at, so a
    resume with other tasks (another --steer-images) or other blocks (another --blocks) runs the
    condition again instead of reusing it."""
    path = out / f"{name}.json"
    key = tasks_key(tasks)
    by_concept: dict[str, list[int]] = {}
    for i, t in enumerate(tasks):
        by_concept.setdefault(t["concept"], []).append(i)
    blocks = {c: steerer.blocks_for(c) for c in sorted(by_concept)}
    if path.exists():
        cached = json.loads(path.read_text())
        # a file from before the key was kept: the same n means the same deterministic draw
        same_tasks = cached.get("tasks_key", key if cached.get("n") == len(tasks) else None) == key
        if same_tasks and cached.get("blocks") == blocks:
            return cached
    rows_out, images = [], {}
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
    result = {"name": name, "tasks_key": key, "kind": kind, "beta": beta, "window": list(window), "rows": rows,
              "blocks": blocks,
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


def tasks_key(tasks: list[dict]) -> str:
    """What identifies a list of steering tasks: their prompts and concepts, in order."""
    return f"{hash_text(json.dumps([[t['prompt'], t['concept']] for t in tasks])):x}"


def unsteered_path(folder: Path, kind: str, tasks: list[dict]) -> Path:
    """Where the unsteered images of these tasks are kept (keyed by the tasks themselves: another
    dictionary gives other tasks, so another file)."""
    return Path(folder) / f"unsteered_{kind}_{tasks_key(tasks)}.npz"


def hash_text(text: str) -> int:
    import hashlib
    return int(hashlib.sha256(text.encode()).hexdigest()[:6], 16)


def save_strip(images: list[np.ndarray], path: Path, scale: int = 2) -> None:
    from ..evaluate import save_grid
    if images:
        save_grid(images, path, columns=len(images), scale=scale)


def run_steering(cfg: ToyPaperConfig, model, clip, sae_path, dict_path, progress: bool = True) -> dict:
    from tqdm import tqdm
    out = Path(cfg.out) / "steering"
    out.mkdir(parents=True, exist_ok=True)
    steerer = Steerer(cfg, model, clip, sae_path, dict_path)
    spatial = parse_betas(cfg.spatial_betas, "--spatial-betas")
    style = parse_style_betas(cfg.style_betas)
    suppress = parse_betas(cfg.suppress_betas, "--suppress-betas")
    plan = []   # (kind, name, beta, window, rows, normalisation)
    for w, win in WINDOWS.items():
        for b in spatial:
            plan.append(("spatial", f"spatial_{w}_b{b:g}_both", b, win, "both", None))
        for norm, betas in style.items():
            for b in betas:
                plan.append(("style", f"style_{w}_{norm}_b{b:g}_both", b, win, "both", norm))
    # cond rows only (CFG then multiplies the edit by the guidance scale): every beta early, the
    # largest in the other windows.
    for w, win in WINDOWS.items():
        for b in (spatial if w == "early" else spatial[-1:]):
            plan.append(("spatial", f"spatial_{w}_b{b:g}_cond", b, win, "cond", None))
    full = (0.0, 1.0)
    for target in ("object", "style"):
        plan.append((f"suppress_{target}", f"suppress_{target}_remove_all", 0.0, full, "both", "remove"))
        for b in suppress:
            plan.append((f"suppress_{target}", f"suppress_{target}_neg_b{b:g}", b, full, "both", "mean"))
    tasks = {k: steering_tasks(cfg, k, steerer) for k in ("spatial", "style", "suppress_object", "suppress_style")}
    refs: dict[str, dict] = {}
    from ..detect import detect
    for kind, ts in tasks.items():
        # keyed by the tasks themselves: another dictionary (other labels) gives other tasks
        ref_path = unsteered_path(out, kind, ts)
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
