"""Open-set boxes (Grounding DINO) and box-prompted masks (SAM) for the dictionary stage.

Both run through Hugging Face transformers' own model classes (`GroundingDinoForObjectDetection`,
`SamModel`), loaded from a local folder the user gives (config.json + weights + processor files,
as `save_pretrained` writes them, e.g. IDEA-Research/grounding-dino-tiny and facebook/sam-vit-base
saved locally). Loading is local-only: nothing is ever downloaded. The original repositories'
packages are not used: both need torchvision at import and groundingdino-py pins transformers < 5.

Labels come from our own reading of Grounding DINO's token logits rather than the processor's
phrase decoding: every tag's token span is known from the tokenizer's offsets, so a box gets
the tag whose tokens score highest, never a fragment of a neighbouring tag.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ...sae_core.errors import SAEConceptsError


class SegmenterError(SAEConceptsError, ValueError):
    pass


@dataclass
class Detection:
    label: str
    box: tuple[float, float, float, float]   # x0, y0, x1, y1 in image pixels
    score: float


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _load(kind: str, path: str, model_cls, processor_cls, model_type: str):
    """(model, processor) from a local save_pretrained folder; clear errors, never a download.

    transformers fills weights a checkpoint lacks with random ones and only warns; a wrong
    folder would then segment with noise. So the folder's model_type is checked first and any
    missing weight is an error."""
    p = Path(path)
    config = p / "config.json"
    if not p.is_dir() or not config.is_file():
        raise SegmenterError(f"{kind} weights {p}: expected a local model folder with config.json "
                             f"(a save_pretrained / Hugging Face snapshot folder)")
    try:
        found = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (ValueError, UnicodeDecodeError) as e:
        raise SegmenterError(f"{kind} weights {p}: config.json is not valid JSON ({e})") from e
    if found != model_type:
        raise SegmenterError(f"{kind} weights {p}: config.json says model_type {found!r}, "
                             f"expected {model_type!r} ({model_cls.__name__})")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        model, info = model_cls.from_pretrained(str(p), local_files_only=True, output_loading_info=True)
        processor = processor_cls.from_pretrained(str(p), local_files_only=True)
    except Exception as e:  # transformers raises many kinds; the user needs the path
        raise SegmenterError(f"{kind} weights {p} cannot be loaded as {model_cls.__name__} "
                             f"({type(e).__name__}: {e})") from e
    bad = list(info.get("missing_keys") or []) + [str(k) for k in info.get("mismatched_keys") or []]
    if bad:
        raise SegmenterError(f"{kind} weights {p}: {len(bad)} weight(s) of {model_cls.__name__} missing or of "
                             f"the wrong shape, e.g. {sorted(bad)[:3]}")
    return model.eval(), processor


def tag_token_spans(offsets: list[tuple[int, int]], text: str, tags: list[str]) -> list[list[int]]:
    """Token indices of each tag in `text` ("tag1. tag2. ..."), from the tokenizer's char offsets."""
    spans, start = [], 0
    for tag in tags:
        begin = text.index(tag, start)
        end = begin + len(tag)
        spans.append([i for i, (a, b) in enumerate(offsets) if b > a >= begin and b <= end])
        start = end
    return spans


def grounded_detections(probs: torch.Tensor, boxes_cxcywh: torch.Tensor, spans: list[list[int]],
                        tags: list[str], size: tuple[int, int], box_threshold: float,
                        text_threshold: float) -> list[Detection]:
    """Detections from one image's Grounding DINO output.

    probs [Q, T] sigmoid token scores, boxes [Q, 4] normalised (cx, cy, w, h), size (H, W).
    A query is kept when its best token score passes box_threshold (as in Grounding DINO's own
    inference); its label is the tag whose span scores highest, kept if that passes text_threshold.
    """
    if not tags:
        return []
    tag_scores = torch.stack([probs[:, s].max(1).values if s else torch.zeros(probs.shape[0])
                              for s in spans], 1)                                  # [Q, n_tags]
    best, which = tag_scores.max(1)
    keep = (probs.max(1).values > box_threshold) & (best > text_threshold)
    h, w = size
    cx, cy, bw, bh = boxes_cxcywh.unbind(1)
    xyxy = torch.stack([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h], 1)
    xyxy[:, 0::2] = xyxy[:, 0::2].clamp(0, w)
    xyxy[:, 1::2] = xyxy[:, 1::2].clamp(0, h)
    return [Detection(tags[int(which[q])], tuple(float(v) for v in xyxy[q]), float(best[q]))
            for q in keep.nonzero().flatten().tolist()]


class GroundingDino:
    """Open-set detector: image + tags -> labelled boxes."""

    def __init__(self, path: str, device: str = "auto", box_threshold: float = 0.35,
                 text_threshold: float = 0.25):
        from transformers import AutoProcessor, GroundingDinoForObjectDetection
        self.device = pick_device(device)
        self.model, self.processor = _load("Grounding DINO", path, GroundingDinoForObjectDetection, AutoProcessor,
                                            "grounding-dino")
        self.model.to(self.device)
        self.box_threshold, self.text_threshold = box_threshold, text_threshold
        self.max_tokens = int(getattr(self.model.config, "max_text_len", 256))

    def _chunks(self, tags: list[str]) -> list[list[str]]:
        """Tags split so that each prompt fits the text encoder's max_text_len tokens."""
        chunks, current = [], []
        for tag in tags:
            trial = current + [tag]
            if current and len(self.processor.tokenizer(". ".join(trial) + ".")["input_ids"]) > self.max_tokens:
                chunks.append(current)
                trial = [tag]
            current = trial
        return chunks + ([current] if current else [])

    @torch.no_grad()
    def detect(self, image, tags: list[str]) -> list[Detection]:
        tags = [t.lower().strip() for t in tags if t.strip()]
        found = []
        for chunk in self._chunks(tags):
            text = ". ".join(chunk) + "."
            enc = self.processor(images=image, text=text, return_tensors="pt").to(self.device)
            offsets = self.processor.tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
            out = self.model(**enc)
            found += grounded_detections(out.logits[0].sigmoid().float().cpu(), out.pred_boxes[0].float().cpu(),
                                         tag_token_spans(offsets, text, chunk), chunk,
                                         (image.height, image.width), self.box_threshold, self.text_threshold)
        return found


class Sam:
    """Box-prompted segmenter: image + boxes -> one mask per box at the image's size.

    `path`: a transformers SamModel folder, or an original-format checkpoint file (.pth / .pt /
    .safetensors, as segment_anything and ComfyUI's SAM nodes use)."""

    def __init__(self, path: str, device: str = "auto", boxes_per_pass: int = 16):
        from transformers import AutoProcessor, SamModel
        self.device = pick_device(device)
        if Path(path).is_file():    # the original repository's checkpoint (sam_vit_h_4b8939.pth)
            from .sam_checkpoint import load_original_sam
            self.model, self.processor = load_original_sam(Path(path))
        else:
            self.model, self.processor = _load("SAM", path, SamModel, AutoProcessor, "sam")
        self.model.to(self.device)
        self.boxes_per_pass = boxes_per_pass

    @torch.no_grad()
    def masks(self, image, boxes: list[tuple[float, float, float, float]]) -> torch.Tensor:
        """bool [n, H, W]; the image is encoded once for all its boxes."""
        if not boxes:
            return torch.zeros(0, image.height, image.width, dtype=torch.bool)
        enc = self.processor(images=image, input_boxes=[[list(b) for b in boxes]], return_tensors="pt")
        embeddings = self.model.get_image_embeddings(enc["pixel_values"].to(self.device, self.model.dtype))
        out = []
        for i in range(0, len(boxes), self.boxes_per_pass):
            part = enc["input_boxes"][:, i:i + self.boxes_per_pass].to(self.device, self.model.dtype)
            pred = self.model(image_embeddings=embeddings, input_boxes=part, multimask_output=False).pred_masks
            masks = self.processor.image_processor.post_process_masks(
                pred.float().cpu(), enc["original_sizes"], enc["reshaped_input_sizes"])[0]
            out.append(masks[:, 0].bool())
        return torch.cat(out)
