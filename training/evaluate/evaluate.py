"""`sae-concepts evaluate`: per (block, t, cond): FVU, L0, dead fraction on held-out activations,
concept cohesion and inter-concept similarity of the dictionary, and composition-prediction IoU
from concept maps (method.md)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ...sae_core import SD1_BLOCKS, load_sae
from ...sae_core.atomic import write_text_atomic
from ...sae_core.concept_dictionary import ConceptDictionary
from ..dictionary.dictionary import concept_embeddings, image_codes, iou_matrix
from ..storage.masks import image_masks
from ..storage.shards import ShardSet, activation_key
from ..dictionary.word_vectors import cosine, embed_label, load_word_vectors


@dataclass
class EvaluateConfig:
    shards: str = field(default="", metadata={"help": "evaluation collection folder (all positions)"})
    sae: str = field(default="", metadata={"help": "SAE set file"})
    dictionary: str = field(default="", metadata={"help": "concept dictionary from `dictionary`"})
    masks: str = field(default="", metadata={"help": "masks folder of the evaluation images"})
    out: str = field(default="metrics.json", metadata={"help": "metrics file to write"})
    score_threshold: float = field(default=0.5, metadata={"help": "cosine above which a position is predicted"})
    mask_size: int = field(default=128, metadata={"help": "resolution at which IoU is computed"})
    word_vectors: str = field(default="", metadata={"help": "word vectors file (default: GloVe 6B 50d)"})


def reconstruction_metrics(sae, shards: ShardSet, key: str, chunk: int = 8192) -> dict:
    n, sum_x, sum_x2, sum_err, l0 = 0, None, 0.0, 0.0, 0.0
    fired = torch.zeros(sae.n_latents, dtype=torch.bool)
    for shard in shards.shards:
        if not shard["counts"].get(key):
            continue
        acts = shards.read(shard, key)["acts"]
        for s in range(0, acts.shape[0], chunk):
            x = acts[s:s + chunk].float()
            with torch.no_grad():
                code = sae.encode(x)
                err = (x - sae.decode(code)).double().pow(2).sum().item()
            n += x.shape[0]
            sum_x = x.double().sum(0) if sum_x is None else sum_x + x.double().sum(0)
            sum_x2 += x.double().pow(2).sum().item()
            sum_err += err
            l0 += (code.values > 0).sum().item()
            fired[code.indices[code.values > 0]] = True
    total_var = sum_x2 - (sum_x.pow(2).sum().item() / n)
    return {"vectors": n, "fvu": sum_err / total_var, "l0": l0 / n, "dead_fraction": 1 - fired.float().mean().item()}


def dictionary_quality(emb: dict[int, np.ndarray], labels: dict[int, list[str]], kv) -> dict:
    """Cohesion: mean cosine of a concept's label embeddings to their centre (up is better).
    Inter-concept similarity: mean off-diagonal cosine of concept centres (down is better)."""
    coh = []
    for cid, labs in labels.items():
        vecs = [v for v in (embed_label(kv, lab) for lab in labs) if v is not None]
        if vecs and cid in emb:
            coh.append(np.mean([cosine(v, emb[cid]) for v in vecs]))
    centres = np.stack([emb[c] for c in sorted(emb)]) if emb else np.zeros((0, 1))
    inter = float("nan")
    if len(centres) > 1:
        unit = centres / np.linalg.norm(centres, axis=1, keepdims=True).clip(1e-12)
        sim = unit @ unit.T
        inter = float((sim.sum() - np.trace(sim)) / (len(sim) * (len(sim) - 1)))
    return {"labelled_concepts": len(emb), "cohesion": float(np.mean(coh)) if coh else float("nan"),
            "inter_concept_similarity": inter}


def composition_iou(sae, shards, key, emb, masks_root, kv, threshold, size) -> dict:
    """The paper's composition prediction: top concept per position -> its embedding -> cosine
    with the object's word vector -> thresholded score map -> IoU with the object's mask."""
    ious = []
    ids_with = torch.tensor(sorted(emb), dtype=torch.long)
    table = torch.from_numpy(np.stack([emb[c] for c in sorted(emb)])).float() if emb else None
    for pid, rows, hw in image_codes(shards, key):
        masks = image_masks(masks_root, pid, size)
        if not masks or table is None:
            continue
        with torch.no_grad():
            code = sae.encode(rows)
        top = code.indices.gather(1, code.values.argmax(1, keepdim=True)).squeeze(1)
        lookup = torch.full((sae.n_latents,), -1, dtype=torch.long)
        lookup[ids_with] = torch.arange(len(ids_with))
        slot = lookup[top]
        for label, mask in masks.items():
            word = embed_label(kv, label)
            if word is None:
                continue   # method.md: words the vectors lack are skipped
            w = torch.from_numpy(word).float()
            sims = F.cosine_similarity(table, w[None], dim=1)
            score = torch.where(slot >= 0, sims[slot.clamp_min(0)], torch.zeros(()))
            up = F.interpolate(score.reshape(1, 1, *hw), size=(size, size), mode="bilinear", align_corners=False)[0, 0]
            ious.append(iou_matrix((up > threshold)[None], mask[None])[0, 0].item())
    return {"composition_iou": float(np.mean(ious)) if ious else float("nan"), "objects": len(ious)}


def evaluate(cfg: EvaluateConfig) -> list[dict]:
    shards = ShardSet.open(cfg.shards)
    sae_set = load_sae(cfg.sae)
    dictionary = ConceptDictionary.load(cfg.dictionary) if cfg.dictionary else None
    kv = load_word_vectors(cfg.word_vectors)
    rows = []
    for e in sae_set:
        key = activation_key(e.info.block, e.info.t if e.info.t is not None else 1.0, e.info.cond)
        if key not in shards.keys():
            continue
        row = {"block": e.info.block, "block_diffusers": e.info.block_diffusers, "t": e.info.t,
               "cond": e.info.cond, **reconstruction_metrics(e.sae, shards, key)}
        concepts = dictionary.for_sae(e.info.block, e.info.t, e.info.cond) if dictionary else None
        if concepts is not None:
            emb = concept_embeddings(concepts, kv)
            row.update(dictionary_quality(emb, {c: v["labels"] for c, v in concepts.concepts.items()}, kv))
            if cfg.masks:
                row.update(composition_iou(e.sae, shards, key, emb, cfg.masks, kv, cfg.score_threshold,
                                           cfg.mask_size))
        rows.append(row)
    if not rows:
        raise ValueError(f"no SAE of {cfg.sae} has activations in {cfg.shards} (keys {shards.keys()})")
    order = {b: i for i, b in enumerate(SD1_BLOCKS)}
    rows.sort(key=lambda r: (order.get(r["block"], 99), -(r["t"] if r["t"] is not None else 2), r["cond"]))
    write_text_atomic(cfg.out, json.dumps({"rows": rows}, indent=1))
    return rows


def format_table(rows: list[dict]) -> str:
    head = f"{'block':<18} {'t':>4} {'cond':<6} {'FVU':>6} {'L0':>5} {'dead':>5} {'cohes.':>7} {'inter':>6} {'IoU':>5}"
    lines = [head]
    for r in rows:
        f = lambda k: r.get(k, float("nan"))
        lines.append(f"{r['block']:<18} {r['t'] if r['t'] is not None else -1:>4.1f} {r['cond']:<6} {f('fvu'):>6.3f} "
                     f"{f('l0'):>5.1f} {f('dead_fraction'):>5.2f} {f('cohesion'):>7.3f} "
                     f"{f('inter_concept_similarity'):>6.3f} {f('composition_iou'):>5.2f}")
    return "\n".join(lines)
