"""RAM-style image tagging without the prompt: zero-shot CLIP over a tag vocabulary.

RAM (Recognize Anything) tags an image with the words of a fixed open vocabulary. Its own
package needs torchvision and timm and its weights are not in a transformers class, so the
option built here does the same job with a CLIP the user gives (a local `CLIPModel` folder,
e.g. openai/clip-vit-large-patch14 saved locally): every vocabulary tag is embedded once as
"a photo of a <tag>."; an image gets the tags whose cosine with its embedding is among the top
k and above a floor. Nothing is downloaded.
"""
from __future__ import annotations

import torch

from .segmenters import _load, pick_device

TEMPLATE = "a photo of a {}."


class ClipTagger:
    def __init__(self, path: str, vocabulary, top_k: int = 5, min_score: float = 0.2,
                 device: str = "auto", batch: int = 256):
        from transformers import AutoProcessor, CLIPModel
        if top_k < 1:
            raise ValueError(f"CLIP tagger top_k must be >= 1, got {top_k}")
        self.device = pick_device(device)
        self.model, self.processor = _load("CLIP tagger", path, CLIPModel, AutoProcessor, "clip")
        self.model.to(self.device)
        self.tags = sorted(vocabulary)
        self.top_k, self.min_score = top_k, min_score
        with torch.no_grad():
            parts = []
            for i in range(0, len(self.tags), batch):
                enc = self.processor(text=[TEMPLATE.format(t) for t in self.tags[i:i + batch]],
                                     return_tensors="pt", padding=True).to(self.device)
                parts.append(_features(self.model.get_text_features(**enc)))
            self.text = torch.cat(parts)                                       # [n_tags, d], unit rows

    @torch.no_grad()
    def scores(self, image) -> torch.Tensor:
        """Cosine of the image with every vocabulary tag, [n_tags]."""
        enc = self.processor(images=image, return_tensors="pt").to(self.device)
        img = _features(self.model.get_image_features(pixel_values=enc["pixel_values"].to(self.model.dtype)))
        return (img @ self.text.t())[0].float().cpu()

    def __call__(self, image) -> list[str]:
        s = self.scores(image)
        top = s.topk(min(self.top_k, s.numel()))
        return [self.tags[i] for v, i in zip(top.values.tolist(), top.indices.tolist()) if v > self.min_score]


def _features(out) -> torch.Tensor:
    """Unit-norm embeddings; transformers 5 may return a model output instead of a tensor."""
    x = out if isinstance(out, torch.Tensor) else getattr(out, "pooler_output", None)
    if x is None:
        x = out[0]
    return torch.nn.functional.normalize(x.float(), dim=-1)
