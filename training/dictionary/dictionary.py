"""`sae-concepts dictionary`: label each concept id with the objects its activation map covers.

For each held-out image and each SAE: every concept active in the image gets its activation
map (block grid), upsampled to the mask resolution, normalised to [0, 1], thresholded
(default 0.1); where its IoU with an object's mask exceeds 0.5 (default), the object's label is
appended to the concept's label list (the paper's vision-only pipeline, no LLM). Concept
embeddings = mean word vector of the labels.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ...sae_core import load_sae
from ...sae_core.atomic import check_replaceable, check_writable
from ...sae_core.concept_dictionary import FORMAT_NAME, ConceptDictionary, SAEConcepts
from ...sae_core.errors import ConfigError, finite, require
from ..storage.masks import LAYOUT, image_masks, image_size, mask_coverage
from ..segment.segment import SegmentConfig, segment_images
from ..storage.shards import ShardSet
from .word_vectors import WordVectorError, embed_label, load_word_vectors


@dataclass
class DictionaryConfig:
    shards: str = field(default="", metadata={"help": "held-out collection folder (all positions kept)"})
    sae: str = field(default="", metadata={"help": "SAE set file"})
    masks: str = field(default="", metadata={"help": "masks folder: <id>/<label>.png per image (made by the "
                                                      "segmenter when its weights are given)"})
    out: str = field(default="concept_dictionary.json", metadata={"help": "dictionary file to write"})
    threshold: float = field(default=0.1, metadata={"help": "activation threshold after [0, 1] normalisation"})
    iou: float = field(default=0.5, metadata={"help": "IoU above which a mask's label is given"})
    mask_size: int = field(default=128, metadata={"help": "resolution at which IoU is computed"})
    word_vectors: str = field(default="", metadata={"help": "word vectors file (default: GloVe 6B 50d)"})


def image_codes(shards: ShardSet, key: str):
    """Yield (prompt id, [h*w, d] rows in grid order, (h, w)) for every image of a key."""
    for shard in shards.shards:
        if not shard["counts"].get(key):
            continue
        data = shards.read(shard, key)
        block = key.split("|")[0]
        h, w = shard["grids"][block]
        for pid in shard["prompt_ids"]:
            sel = data["prompt"] == pid
            pos = data["pos"][sel].long()
            if pos.numel() != h * w:
                raise ConfigError(f"{shards.root}: image {pid} has {pos.numel()} of {h * w} positions for {key}; "
                                 f"the dictionary needs every position (collect with --positions 0)")
            rows = torch.empty(h * w, data["acts"].shape[1])
            rows[pos] = data["acts"][sel].float()
            yield pid, rows, (h, w)


def concept_maps(sae, rows: torch.Tensor, hw) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [c], maps [c, h, w]) of every concept active somewhere in the image."""
    with torch.no_grad():
        code = sae.encode(rows)
    active = code.values > 0
    ids = torch.unique(code.indices[active])
    dense = torch.zeros(rows.shape[0], sae.n_latents)
    dense.scatter_(1, code.indices, code.values * active)
    return ids, dense[:, ids].t().reshape(-1, *hw)


def binarise(maps: torch.Tensor, size: int, threshold: float) -> torch.Tensor:
    """[c, h, w] -> bool [c, size, size]: bilinear upsampling, per-map [0, 1] normalisation, threshold."""
    up = F.interpolate(maps[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0].clamp_min(0)
    top = up.flatten(1).max(1).values.clamp_min(1e-12)
    return (up / top[:, None, None]) > threshold


def iou_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of every bool mask in a [n, H, W] with every one in b [m, H, W] -> [n, m]."""
    af, bf = a.flatten(1).float(), b.flatten(1).float()
    inter = af @ bf.t()
    union = af.sum(1, keepdim=True) + bf.sum(1)[None] - inter
    return inter / union.clamp_min(1)


def check_config(cfg: DictionaryConfig) -> None:
    require(bool(cfg.shards), "dictionary needs --shards (a held-out collection from `sae-concepts collect`)")
    require(bool(cfg.sae), "dictionary needs --sae (an SAE set file)")
    require(0 <= finite("--threshold", cfg.threshold) < 1,
            f"--threshold applies to maps normalised to [0, 1], so it must be in [0, 1), got {cfg.threshold}")
    require(0 < finite("--iou", cfg.iou) < 1, f"--iou must be in (0, 1), got {cfg.iou}")
    require(cfg.mask_size > 0, f"--mask-size must be positive, got {cfg.mask_size}")


def build_dictionary(cfg: DictionaryConfig, progress: bool = True,
                     segment: SegmentConfig | None = None) -> ConceptDictionary:
    """With segmenter weights in `segment`, masks are made first (into --masks, default
    <shards>/masks); otherwise --masks must hold the user's own."""
    check_config(cfg)
    check_writable(Path(cfg.out).parent, "--out")
    check_replaceable(cfg.out, "--out", "json", FORMAT_NAME, inputs={"--sae": cfg.sae, "--word-vectors": cfg.word_vectors})
    shards = ShardSet.open(cfg.shards)
    sae_set = load_sae(cfg.sae)
    if segment is not None and segment.enabled():
        cfg.masks = str(segment_images(cfg.shards, cfg.masks, segment, progress=progress))
    if not cfg.masks or not Path(cfg.masks).is_dir():
        raise ConfigError(f"masks folder {cfg.masks!r} not found: give --masks with object masks laid out as "
                          f"{LAYOUT}, or --grounding-dino and --sam weight folders to make them")
    mask_coverage(cfg.masks, [pid for s in shards.shards for pid in s.get("prompt_ids", [])])
    kv = load_word_vectors(cfg.word_vectors)   # a bad vectors file is found now, not after the work
    images_dir = Path(cfg.shards) / "images"
    entries = []
    for _, e, key in shards.held_saes(sae_set, cfg.sae):
        labels: dict[int, list[str]] = defaultdict(list)
        images = list(image_codes(shards, key))
        it = images
        if progress:
            from tqdm.auto import tqdm
            it = tqdm(images, desc=f"dictionary {key}", unit="image")
        for pid, rows, hw in it:
            masks = image_masks(cfg.masks, pid, cfg.mask_size, expect_size=image_size(images_dir, pid))
            if not masks:
                continue
            ids, maps = concept_maps(e.sae, rows, hw)
            if ids.numel() == 0:
                continue
            names = list(masks)
            ious = iou_matrix(binarise(maps, cfg.mask_size, cfg.threshold), torch.stack([masks[n] for n in names]))
            for ci, mi in (ious > cfg.iou).nonzero().tolist():
                labels[int(ids[ci])].append(names[mi])
        concepts = {cid: {"labels": labs, "counts": dict(Counter(labs))} for cid, labs in sorted(labels.items())}
        entries.append(SAEConcepts(e.info.block, e.info.t, e.info.cond, concepts))
    if not entries:
        raise ConfigError(f"none of the SAE set's (block, t, cond) are in {cfg.shards}: "
                          f"SAEs {[x.info.label() for x in sae_set]}, shards {shards.keys()}")
    if not any(e.concepts for e in entries):
        raise ConfigError(f"no concept of {cfg.sae} overlaps any mask in {cfg.masks} with IoU > {cfg.iou} (activation "
                          f"threshold {cfg.threshold}): the dictionary would be empty. Check that the masks belong "
                          f"to the images of {cfg.shards}, or lower --iou / --threshold")
    labels = sorted({lab for e in entries for c in e.concepts.values() for lab in c["labels"]})
    if not any(embed_label(kv, lab) is not None for lab in labels):
        raise WordVectorError(f"--word-vectors {cfg.word_vectors or '(GloVe 6B 50d)'}: none of the dictionary's labels "
                              f"({', '.join(labels[:5])}{', ...' if len(labels) > 5 else ''}) has a word vector, so no "
                              f"concept could be looked up by word; give vectors that know these words")
    dictionary = ConceptDictionary.for_sae_set(sae_set, entries)
    dictionary.save(cfg.out)
    save_embeddings(dictionary, kv, Path(cfg.out).with_suffix(".embeddings.npz"))
    return dictionary


def concept_embeddings(concepts: SAEConcepts, kv) -> dict[int, np.ndarray]:
    from .word_vectors import embed_labels
    out = {}
    for cid, entry in concepts.concepts.items():
        v = embed_labels(kv, entry["labels"])
        if v is not None:
            out[cid] = v
    return out


def save_embeddings(dictionary: ConceptDictionary, kv, path: Path) -> None:
    """Each concept's label embedding beside the dictionary (kv: the loaded word vectors)."""
    from ...sae_core.atomic import atomic_path
    arrays = {}
    for i, e in enumerate(dictionary.entries):
        emb = concept_embeddings(e, kv)
        ids = sorted(emb)
        arrays[f"{i}_ids"] = np.array(ids, dtype=np.int64)
        arrays[f"{i}_vectors"] = np.stack([emb[c] for c in ids]) if ids else np.zeros((0, kv.vector_size), np.float32)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
