"""Stages 1-3 of `toyworld paper`: prompts, collect, masks from the detector, SAEs, dictionary and
composition IoU; style concepts named by association; the size of one style edit."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ....sae_core.atomic import write_text_atomic
from ....host.toyworld.sampling import PAPER_SAMPLER
from ....host.toyworld.world import STYLES, sample_scene

from .config import PAPER_T, SPLITS, ToyPaperConfig, ToyPaperError


# -- prompts and masks ----------------------------------------------------------------------

def split_prompts(cfg: ToyPaperConfig, split: str, n: int) -> list[str]:
    """Free-position prompts (1-2 objects, style named), one rng stream per split."""
    rng = np.random.default_rng([cfg.seed, 7_000 + SPLITS[split]])
    return [sample_scene(rng, n_objects=1 + i % 2).prompt for i in range(n)]


def object_components(image: np.ndarray):
    """[(label, bool mask [H, W])] of the detector's objects (same-label objects merged), and the
    detection itself (its style and object mask)."""
    from ..detect import detect
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
    from ...storage.masks import save_mask
    from ..detect import OBJECT_MARGIN
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
    from ....sae_core import TrainConfig
    from ...collect.collect import CollectConfig, collect, write_prompt_index
    from ...dictionary.dictionary import DictionaryConfig, build_dictionary
    from ...evaluate.evaluate import EvaluateConfig, evaluate
    from ...train.train import TrainCommandConfig, train_saes
    out = Path(cfg.out)
    latent = model.model.model_config.unet_config["image_size"]
    splits = {}
    for split, n in (("train", cfg.train_images), ("heldout", cfg.heldout_images), ("eval", cfg.eval_images)):
        folder = out / "acts" / split
        prompts = split_prompts(cfg, split, n)
        if not (folder / "prompts.jsonl").exists():
            # collect's width/height are SD pixels (latent = 1/8): 8 * the toy latent side.
            collect(CollectConfig(out=str(folder), steps=cfg.steps, cfg=cfg.cfg, sampler=PAPER_SAMPLER["sampler_name"],
                                  scheduler=PAPER_SAMPLER["scheduler"], width=8 * latent, height=8 * latent,
                                  blocks=cfg.collect_blocks,
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
    from ....sae_core import load_sae
    from ....sae_core.concept_dictionary import ConceptDictionary, SAEConcepts
    from ...dictionary.dictionary import image_codes
    from ...storage.shards import ShardSet, sae_key
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
    from ....sae_core import load_sae
    from ....sae_core.interventions import NORMALISATIONS, global_steer
    from ...dictionary.dictionary import image_codes
    from ...storage.shards import ShardSet, activation_key
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
