"""Object masks for held-out images: tags -> Grounding DINO boxes -> SAM masks -> masks folder.

Reads the images and prompts `collect` saved (<shards>/images/<id>.png, the shard manifests)
and writes the masks layout the dictionary and evaluation read (training/masks.py), plus a
<id>/segment.json per image with its tags, boxes and scores. That file is written last, so it
marks the image done: a killed run resumes at the first image without one. A masks folder
remembers the settings it was made with and refuses to mix in results of other settings, and
never writes into a folder of user-supplied masks.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ...sae_core.atomic import check_writable, write_text_atomic
from ...sae_core.errors import finite
from ..storage.masks import save_mask
from .segmenters import SegmenterError
from ..storage.shards import ShardSet
from .tags import load_vocabulary, prompt_nouns

RUN_FILE = "segment_run.json"
DONE_FILE = "segment.json"


@dataclass
class SegmentConfig:
    grounding_dino: str = field(default="", metadata={"help": "local Grounding DINO folder (transformers format)"})
    sam: str = field(default="", metadata={"help": "local SAM folder (transformers SamModel) or original sam_vit_*.pth file"})
    tagger: str = field(default="prompt", metadata={"help": "tags per image: prompt (its nouns) or clip (RAM-style)"})
    clip: str = field(default="", metadata={"help": "local CLIPModel folder for --tagger clip"})
    tag_vocabulary: str = field(default="", metadata={"help": "tag list file, one per line (empty: the bundled object nouns)"})
    clip_top_k: int = field(default=5, metadata={"help": "clip tagger: most tags per image"})
    clip_min_score: float = field(default=0.2, metadata={"help": "clip tagger: cosine a tag must pass"})
    box_threshold: float = field(default=0.35, metadata={"help": "Grounding DINO box score threshold"})
    text_threshold: float = field(default=0.25, metadata={"help": "Grounding DINO tag score threshold"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N"})

    def enabled(self) -> bool:
        """Whether segmentation was asked for; tagging options alone are a mistake, not a no-op."""
        if self.grounding_dino or self.sam:
            return True
        if self.clip or self.tag_vocabulary or self.tagger != "prompt":
            raise SegmenterError("tagging options (--tagger, --clip, --tag-vocabulary) only apply when "
                                 "--grounding-dino and --sam are given")
        return False

    def check(self) -> None:
        if not (self.grounding_dino and self.sam):
            raise SegmenterError("segmentation needs both --grounding-dino and --sam (local model folders)")
        if self.tagger not in ("prompt", "clip"):
            raise SegmenterError(f"--tagger must be prompt or clip, got {self.tagger!r}")
        if self.tagger == "clip" and not self.clip:
            raise SegmenterError("--tagger clip needs --clip <local CLIPModel folder>")
        for name in ("box_threshold", "text_threshold"):
            if not 0 <= finite(f"--{name.replace('_', '-')}", getattr(self, name)) <= 1:
                raise SegmenterError(f"--{name.replace('_', '-')} is a score in [0, 1], got {getattr(self, name)}")
        if self.clip_top_k <= 0:
            raise SegmenterError(f"--clip-top-k must be positive, got {self.clip_top_k}")
        if not -1 <= finite("--clip-min-score", self.clip_min_score) <= 1:
            raise SegmenterError(f"--clip-min-score is a cosine in [-1, 1], got {self.clip_min_score}")


def run_settings(cfg: SegmentConfig) -> dict:
    d = asdict(cfg)
    d.pop("device")
    for k in ("grounding_dino", "sam", "clip", "tag_vocabulary"):
        d[k] = str(Path(d[k]).resolve()) if d[k] else ""
    return d


def open_masks_folder(masks: Path, cfg: SegmentConfig) -> None:
    """Create or reopen a segmenter masks folder; refuse one made otherwise or by hand."""
    run_file = masks / RUN_FILE
    settings = run_settings(cfg)
    if run_file.is_file():
        before = json.loads(run_file.read_text())
        if before != settings and not any(masks.glob(f"*/{DONE_FILE}")):
            # nothing was segmented under the old settings (a typo in a model path, say): take the new ones
            write_text_atomic(run_file, json.dumps(settings, indent=1))
            return
        if before != settings:
            diff = {k: (before.get(k), v) for k, v in settings.items() if before.get(k) != v}
            raise SegmenterError(f"{masks} was made with other segmenter settings {diff} (before, now); "
                                 f"give a new --masks folder")
        return
    if masks.is_dir() and any(masks.iterdir()):
        raise SegmenterError(f"{masks} already holds masks not made by the segmenter (no {RUN_FILE}); "
                             f"give an empty or new --masks folder, or use these masks without --grounding-dino/--sam")
    write_text_atomic(run_file, json.dumps(settings, indent=1))


def held_out_images(shards: ShardSet) -> list[tuple[int, str, Path]]:
    """(prompt id, prompt, image path) of every image the collection saved."""
    rows = []
    for shard in shards.shards:
        for pid, prompt in zip(shard["prompt_ids"], shard["prompts"]):
            rows.append((int(pid), prompt, Path(shards.root) / "images" / f"{int(pid):06d}.png"))
    missing = [str(p) for _, _, p in rows if not p.is_file()]
    if missing:
        raise SegmenterError(f"{len(missing)} image(s) the segmenter needs are missing, e.g. {missing[0]} "
                             f"(collect with --save-images)")
    return sorted(rows)


def segment_images(shards_dir: str, masks_dir: str, cfg: SegmentConfig, progress: bool = True) -> Path:
    """Write object masks for every held-out image (into masks_dir, default <shards>/masks);
    resumes where a killed run stopped. Returns the masks folder."""
    from PIL import Image

    from .segmenters import GroundingDino, Sam
    cfg.check()
    shards = ShardSet.open(shards_dir)
    images = held_out_images(shards)
    masks = Path(masks_dir) if masks_dir else Path(shards_dir) / "masks"
    check_writable(masks, "--masks")
    open_masks_folder(masks, cfg)
    todo = [row for row in images if not (masks / f"{row[0]:06d}" / DONE_FILE).is_file()]
    if not todo:
        return masks
    vocabulary = load_vocabulary(cfg.tag_vocabulary)
    detector = GroundingDino(cfg.grounding_dino, cfg.device, cfg.box_threshold, cfg.text_threshold)
    segmenter = Sam(cfg.sam, cfg.device)
    tagger = None
    if cfg.tagger == "clip":
        from .clip_tagger import ClipTagger
        tagger = ClipTagger(cfg.clip, vocabulary, cfg.clip_top_k, cfg.clip_min_score, cfg.device)
    it = todo
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(todo, desc="segment", unit="image", initial=len(images) - len(todo), total=len(images))
    for pid, prompt, path in it:
        image = Image.open(path).convert("RGB")
        tags = tagger(image) if tagger is not None else prompt_nouns(prompt, vocabulary)
        found = detector.detect(image, tags) if tags else []
        per_label = segmenter.masks(image, [d.box for d in found])
        folder = masks / f"{pid:06d}"
        for stale in folder.glob("*.png"):      # a killed run's partial output of this image
            stale.unlink()
        union: dict[str, torch.Tensor] = {}
        for d, m in zip(found, per_label):
            union[d.label] = union[d.label] | m if d.label in union else m
        for label, m in union.items():
            save_mask(masks, pid, label, m)
        write_text_atomic(folder / DONE_FILE, json.dumps({
            "prompt": prompt, "tags": tags, "labels": sorted(union),
            "detections": [asdict(d) for d in found]}, indent=1))
    return masks
