"""`sae-concepts evaluate`: per (block, t, cond): FVU, L0, dead fraction on held-out activations,
concept cohesion and inter-concept similarity of the dictionary, and composition-prediction IoU
from concept maps (method.md)."""
from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ...sae_core import SD1_BLOCKS, load_sae
from ...sae_core.atomic import check_replaceable, check_writable, write_text_atomic
from ...sae_core.concept_dictionary import ConceptDictionary
from ...sae_core.fingerprint import sae_set_fingerprint
from ...sae_core.itda import ItdaDictionary
from ...sae_core.errors import ConfigError, finite, require
from ..dictionary.dictionary import concept_embeddings, image_codes, iou_matrix
from ..storage.masks import image_masks, image_size, mask_coverage
from ..storage.shards import ShardError, ShardSet
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
    itda: str = field(default="", metadata={"help": "ITDA set from `sae-concepts itda`: its FVU is reported "
                                                    "beside each SAE's, encoded at the SAE's L0 (k)"})


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
    if not total_var > 0:
        raise ShardError(f"{shards.root}: the {n} activation(s) of {key} do not vary, so FVU is undefined; "
                         f"evaluate on a collection with more than one distinct vector per key")
    return {"vectors": n, "fvu": sum_err / total_var, "l0": l0 / n, "dead_fraction": 1 - fired.float().mean().item()}


class _AtK:
    """An ITDA dictionary encoding with a given number of pursuit steps (the SAE's k: equal L0)."""

    def __init__(self, itda, k: int):
        self.itda, self.k, self.n_latents = itda, k, itda.n_latents

    def encode(self, x):
        return self.itda.encode(x, self.k)

    def decode(self, code):
        return self.itda.decode(code)


def itda_metrics(itda_set, sae_entry, shards: ShardSet, key: str) -> dict:
    """FVU / L0 of the ITDA dictionary of the SAE's (block, t, cond), at the SAE's k; {} if none."""
    at_block = [x for x in itda_set if x.info.block == sae_entry.info.block and x.info.t == sae_entry.info.t
                and x.info.cond == sae_entry.info.cond]
    if not at_block:
        return {}
    itda = at_block[0]
    m = reconstruction_metrics(_AtK(itda.sae, sae_entry.sae.k), shards, key)
    return {"itda_fvu": m["fvu"], "itda_l0": m["l0"], "itda_atoms": itda.sae.n_latents,
            "itda_seconds": itda.info.training.get("seconds")}


def dictionary_quality(emb: dict[int, np.ndarray], labels: dict[int, list[str]], kv) -> dict:
    """Cohesion: mean cosine of a concept's label embeddings to their centre (up is better).
    Inter-concept similarity: mean off-diagonal cosine of concept centres (down is better)."""
    coh = []
    for cid, labs in labels.items():
        vecs = [v for v in (embed_label(kv, lab) for lab in labs) if v is not None]
        if vecs and cid in emb:
            coh.append(np.mean([cosine(v, emb[cid]) for v in vecs]))
    centres = np.stack([emb[c] for c in sorted(emb)]) if emb else np.zeros((0, 1))
    inter = None   # undefined below two labelled concepts; written as null, never NaN
    if len(centres) > 1:
        unit = centres / np.linalg.norm(centres, axis=1, keepdims=True).clip(1e-12)
        sim = unit @ unit.T
        inter = float((sim.sum() - np.trace(sim)) / (len(sim) * (len(sim) - 1)))
    return {"labelled_concepts": len(emb), "cohesion": float(np.mean(coh)) if coh else None,
            "inter_concept_similarity": inter}


# A concept map "localises" when its IoU beats the whole-image map by more than this: a few dozen
# images put about this much noise on an IoU (the demo's 16 eval images, the paper run's 32-64).
LOCALISES_MARGIN = 0.05


def localises(row: dict) -> bool | None:
    """Whether a metrics row's concept maps beat a map of the whole image (None: not measured)."""
    iou, everywhere = row.get("composition_iou"), row.get("composition_iou_everywhere")
    if not all(isinstance(v, (int, float)) and not math.isnan(v) for v in (iou, everywhere)):
        return None
    return iou > everywhere + LOCALISES_MARGIN


def composition_iou(sae, shards, key, emb, masks_root, kv, threshold, size, labels=None) -> dict:
    """The paper's composition prediction: top concept per position -> its embedding -> cosine
    with the object's word vector -> thresholded score map -> IoU with the object's mask.
    Objects are counted per label; IoU is None (null) when no object could be scored.

    Beside it, two figures that say what the number is worth:
    - `composition_iou_label`: the same top-concept map, but a position is predicted only where the
      top concept's dictionary labels hold the object's own label (no word vectors). Where the
      vocabulary is small and related (the Toy World: "red circle" and "plain" have cosine 0.59 in
      GloVe), the word-vector map can call every labelled position the object;
    - `composition_iou_everywhere`: the IoU of predicting the whole image (the object's area
      fraction), the level a map that localises nothing reaches;
    and `predicted_fraction`: the mean share of the image the word-vector map predicts. All four are
    over the same objects: those whose label has a word vector."""
    ious, label_ious, everywhere, predicted = [], [], [], []
    per_label: Counter = Counter()
    no_vector: set = set()
    ids_with = torch.tensor(sorted(emb), dtype=torch.long)
    table = torch.from_numpy(np.stack([emb[c] for c in sorted(emb)])).float() if emb else None
    labels_of = [set(labels.get(c, [])) if labels else set() for c in sorted(emb)]
    images = Path(shards.root) / "images"
    for pid, rows, hw in image_codes(shards, key):
        if table is None:
            break
        masks = image_masks(masks_root, pid, size, expect_size=image_size(images, pid))
        if not masks:
            continue
        with torch.no_grad():
            code = sae.encode(rows)
        top = code.indices.gather(1, code.values.argmax(1, keepdim=True)).squeeze(1)
        lookup = torch.full((sae.n_latents,), -1, dtype=torch.long)
        lookup[ids_with] = torch.arange(len(ids_with))
        slot = lookup[top]

        def predicted_mask(score):
            up = F.interpolate(score.reshape(1, 1, *hw), size=(size, size), mode="bilinear", align_corners=False)
            return up[0, 0]

        for label, mask in masks.items():
            word = embed_label(kv, label)
            if word is None:
                no_vector.add(label)
                continue   # method.md: words the vectors lack are skipped
            w = torch.from_numpy(word).float()
            sims = F.cosine_similarity(table, w[None], dim=1)
            score = torch.where(slot >= 0, sims[slot.clamp_min(0)], torch.zeros(()))
            pred = predicted_mask(score) > threshold
            ious.append(iou_matrix(pred[None], mask[None])[0, 0].item())
            predicted.append(pred.float().mean().item())
            own = torch.tensor([label in labs for labs in labels_of] + [False])   # slot -1: unlabelled
            hit = own[torch.where(slot >= 0, slot, torch.full_like(slot, len(labels_of)))].float()
            label_ious.append(iou_matrix((predicted_mask(hit) > 0.5)[None], mask[None])[0, 0].item())
            everywhere.append(mask.float().mean().item())
            per_label[label] += 1

    def mean(xs):
        return float(np.mean(xs)) if xs else None
    return {"composition_iou": mean(ious), "composition_iou_label": mean(label_ious) if labels else None,
            "composition_iou_everywhere": mean(everywhere), "predicted_fraction": mean(predicted),
            "objects": len(ious), "objects_per_label": dict(sorted(per_label.items())),
            "labels_without_word_vector": sorted(no_vector)}


def check_config(cfg: EvaluateConfig) -> None:
    require(bool(cfg.shards), "evaluate needs --shards (an evaluation collection from `sae-concepts collect`)")
    require(bool(cfg.sae), "evaluate needs --sae (an SAE set file)")
    require(not cfg.masks or bool(cfg.dictionary),
            "--masks needs --dictionary: composition IoU compares concept maps, named by the dictionary, with masks")
    require(-1 <= finite("--score-threshold", cfg.score_threshold) < 1,
            f"--score-threshold is a cosine similarity, so it must be in [-1, 1), got {cfg.score_threshold}")
    require(cfg.mask_size > 0, f"--mask-size must be positive, got {cfg.mask_size}")


def no_nan(value):
    """NaN is never written as a result: undefined figures are null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: no_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [no_nan(v) for v in value]
    return value


def evaluate(cfg: EvaluateConfig) -> list[dict]:
    """Rows of metrics per SAE, also written to cfg.out with a "masks" summary (how many evaluation
    images had masks, objects scored per label; null without --masks)."""
    check_config(cfg)
    check_writable(Path(cfg.out).parent, "--out")
    check_replaceable(cfg.out, "--out", "json", inputs={"--sae": cfg.sae, "--dictionary": cfg.dictionary,
                                                        "--itda": cfg.itda, "--word-vectors": cfg.word_vectors})
    shards = ShardSet.open(cfg.shards)
    sae_set = load_sae(cfg.sae)
    dictionary = ConceptDictionary.load(cfg.dictionary) if cfg.dictionary else None
    # The set's fingerprint, recorded in the metrics (hashed once: the dictionary check computes it too).
    set_print = dictionary.check_built_from(sae_set) if dictionary is not None else sae_set_fingerprint(sae_set)
    masks = None
    if cfg.masks:
        masks = mask_coverage(cfg.masks, [pid for s in shards.shards for pid in s.get("prompt_ids", [])])
    kv = load_word_vectors(cfg.word_vectors)
    itda_set = load_sae(cfg.itda) if cfg.itda else None
    if itda_set is not None and not all(isinstance(x.sae, ItdaDictionary) for x in itda_set):
        raise ConfigError(f"--itda {cfg.itda}: not an ITDA set (it holds SAEs; `sae-concepts itda` writes ITDA sets). "
                          f"Give the SAE set as --sae")
    rows = []
    for _, e, key in shards.held_saes(sae_set, cfg.sae):
        row = {"block": e.info.block, "block_diffusers": e.info.block_diffusers, "t": e.info.t,
               "cond": e.info.cond, **reconstruction_metrics(e.sae, shards, key)}
        if itda_set is not None:
            row.update(itda_metrics(itda_set, e, shards, key))
        concepts = dictionary.for_sae(e.info.block, e.info.t, e.info.cond) if dictionary else None
        if concepts is not None:
            emb = concept_embeddings(concepts, kv)
            labels = {c: v["labels"] for c, v in concepts.concepts.items()}
            row.update(dictionary_quality(emb, labels, kv))
            if cfg.masks:
                row.update(composition_iou(e.sae, shards, key, emb, cfg.masks, kv, cfg.score_threshold,
                                           cfg.mask_size, labels))
        rows.append(row)
    if not rows:
        raise ConfigError(f"no SAE of {cfg.sae} has activations in {cfg.shards}: SAEs "
                          f"{[e.info.label() for e in sae_set]}, keys in the shards {shards.keys()}")
    if masks is not None:
        scored = sum(r.get("objects", 0) for r in rows)
        if not scored:
            unknown = sorted({lab for r in rows for lab in r.get("labels_without_word_vector", [])})
            raise ConfigError(
                f"--masks {cfg.masks}: {masks['images_with_masks']} of {masks['images']} images have masks, but no "
                f"object could be scored: " + (f"the word vectors know none of their labels {unknown}" if unknown
                                               else f"the dictionary {cfg.dictionary} labels no concept of these SAEs"))
        masks["objects_scored_per_label"] = dict(sorted(sum((Counter(r.get("objects_per_label", {}))
                                                             for r in rows), Counter()).items()))
    order = {b: i for i, b in enumerate(SD1_BLOCKS)}
    rows = [no_nan(r) for r in rows]
    rows.sort(key=lambda r: (order.get(r["block"], 99), -(r["t"] if r["t"] is not None else 2), r["cond"]))
    # The set the rows describe, so `report` can refuse metrics of another set beside this one's cards.
    made_from = {"sae_file": Path(cfg.sae).name, "fingerprint": set_print}
    write_text_atomic(cfg.out, json.dumps({"rows": rows, "masks": masks, "built_from": made_from}, indent=1,
                                          allow_nan=False))
    return rows


def format_masks(masks: dict) -> str:
    per = ", ".join(f"{lab} {n}" for lab, n in masks.get("objects_scored_per_label", {}).items()) or "none"
    return (f"masks: {masks['images_with_masks']} of {masks['images']} evaluation images have masks in "
            f"{masks['folder']}; objects scored per label (all SAEs): {per}")


def block_then_t_down(row: dict) -> tuple:
    """Table order: by block, then t from 1 (first step) to 0, then cond before uncond."""
    return row["block"], -(row["t"] if row["t"] is not None else -1), row["cond"]


METRICS_LEGEND = ("FVU: variance the SAE leaves unexplained; L0: active features per position; dead: share of "
                  "features never active on this split; cohes.: cosine of a concept's label embeddings to their "
                  "centre (up is better); inter: cosine between concepts' centres (down is better); IoU: "
                  "concept map against the object masks; IoU all: the same for a map of the whole image (what a "
                  "map that localises nothing scores).")


def format_table(rows: list[dict]) -> str:
    def cell(r, key, width, fmt):
        v = r.get(key)
        return f"{v:>{width}{fmt}}" if v is not None else f"{'-':>{width}}"   # undefined: shown as "-"
    # "IoU all": what predicting the whole image scores, the level a map that localises nothing reaches
    head = (f"{'block':<18} {'t':>4} {'cond':<6} {'FVU':>6} {'L0':>5} {'dead':>5} {'cohes.':>7} {'inter':>6} {'IoU':>5} "
            f"{'IoU all':>7}")
    lines = [head]
    for r in rows:
        lines.append(f"{r['block']:<18} {format(r['t'], 'g') if r['t'] is not None else '-':>4} {r['cond']:<6} "
                     f"{cell(r, 'fvu', 6, '.3f')} {cell(r, 'l0', 5, '.1f')} {cell(r, 'dead_fraction', 5, '.2f')} "
                     f"{cell(r, 'cohesion', 7, '.3f')} {cell(r, 'inter_concept_similarity', 6, '.3f')} "
                     f"{cell(r, 'composition_iou', 5, '.2f')} {cell(r, 'composition_iou_everywhere', 7, '.2f')}")
    return "\n".join(lines)
