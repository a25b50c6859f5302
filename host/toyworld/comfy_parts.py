"""The Toy World model as the three objects ComfyUI's core nodes take: MODEL, CLIP, VAE.

- `ToyClip` has the two methods CLIPTextEncode calls (`tokenize`, `encode_from_tokens_scheduled`),
  so the core text-encode node, our collector and every CONDITIONING consumer take it as is.
- `ToyVAE` is a `comfy.sd.VAE` whose first stage is the pixel unshuffle (2x2, 12 channels,
  lossless): VAEDecode / VAEEncode / tiled variants run ComfyUI's own code on it.
- `load_toy_parts(path)` -> (ModelPatcher, ToyClip, ToyVAE). Import ComfyUI first.
"""
from __future__ import annotations

import torch

from .model import UNSHUFFLE
from .sampling import PixelUnshuffleAutoencoder, SHIPPED_WEIGHTS, encode_prompt, load_toy_model
from .world import tokenize


class ToyClip:
    """CLIP-like wrapper of the tiny text encoder (closed vocabulary; unknown words are an error)."""

    def __init__(self, text_encoder):
        self.text_encoder = text_encoder

    def tokenize(self, text: str, **kwargs) -> dict:
        tokenize(text)                      # refuse unknown words here, naming the vocabulary
        return {"toyworld": text}

    def encode_from_tokens_scheduled(self, tokens: dict, unprojected=False, add_dict: dict | None = None,
                                     show_pbar=True):
        cond = encode_prompt(self.text_encoder, tokens["toyworld"])
        if add_dict:
            cond[0][1].update(add_dict)
        return cond

    def encode_from_tokens(self, tokens: dict, return_pooled=False, return_dict=False):
        cond = encode_prompt(self.text_encoder, tokens["toyworld"])[0][0]
        if return_dict:
            return {"cond": cond, "pooled_output": None}
        return (cond, None) if return_pooled else cond

    def clone(self):
        return ToyClip(self.text_encoder)


def make_toy_vae():
    """A comfy.sd.VAE around the pixel unshuffle (built without a state dict: it has no weights)."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.sd

    class ToyVAE(comfy.sd.VAE):
        def __init__(self):   # noqa: D401 - comfy.sd.VAE.__init__ detects weights; there are none
            self.first_stage_model = PixelUnshuffleAutoencoder().eval()
            self.memory_used_encode = lambda shape, dtype: 64 * shape[-1] * shape[-2] * mm.dtype_size(dtype)
            self.memory_used_decode = lambda shape, dtype: 64 * shape[-1] * shape[-2] * 4 * mm.dtype_size(dtype)
            self.downscale_ratio = self.upscale_ratio = UNSHUFFLE
            self.latent_channels = 3 * UNSHUFFLE * UNSHUFFLE
            self.latent_dim = 2
            self.output_channels = 3
            self.pad_channel_value = None
            self.process_input = lambda image: image * 2.0 - 1.0
            self.process_output = lambda image: torch.clamp((image + 1.0) / 2.0, min=0.0, max=1.0)
            self.working_dtypes = [torch.float32]
            self.disable_offload = False
            self.not_video = False
            self.size = None
            self.downscale_index_formula = self.upscale_index_formula = None
            self.extra_1d_channel = None
            self.crop_input = True
            self.device = mm.vae_device()
            self.vae_dtype = torch.float32
            self.output_device = mm.intermediate_device()
            self.patcher = comfy.model_patcher.ModelPatcher(self.first_stage_model, load_device=self.device,
                                                            offload_device=mm.vae_offload_device())
            self.model_size()

    return ToyVAE()


def load_toy_parts(path=SHIPPED_WEIGHTS):
    """(MODEL ModelPatcher, ToyClip, ToyVAE) from a toy world weights file."""
    patcher, text_encoder = load_toy_model(path)
    return patcher, ToyClip(text_encoder), make_toy_vae()
