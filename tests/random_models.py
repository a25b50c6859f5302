"""Random-weight models built from ComfyUI's own classes, for tests and benchmarks only.

No weights exist offline; these have the real architectures (or the real block layout at a
reduced width) so patch points, shapes and samplers are ComfyUI's own.
"""
from __future__ import annotations

import hashlib

from sae_concepts.host.random_checkpoint import SD15_UNET, reset_torch_layers

TINY_SD1_UNET = dict(model_channels=32, context_dim=32, num_heads=4)

SDXL_UNET = {'use_checkpoint': False, 'image_size': 32, 'out_channels': 4, 'use_spatial_transformer': True,
             'legacy': False, 'num_classes': 'sequential', 'adm_in_channels': 2816, 'in_channels': 4,
             'model_channels': 320, 'num_res_blocks': [2, 2, 2], 'transformer_depth': [0, 0, 2, 2, 10, 10],
             'channel_mult': [1, 2, 4], 'transformer_depth_middle': 10, 'use_linear_in_transformer': True,
             'context_dim': 2048, 'num_head_channels': 64, 'transformer_depth_output': [0, 0, 0, 2, 2, 2, 10, 10, 10],
             'use_temporal_attention': False, 'use_temporal_resblock': False}
# Same block layout as SDXL (so the same ComfyUI paths and diffusers names), reduced width/depth.
TINY_SDXL_UNET = dict(model_channels=32, num_head_channels=16, transformer_depth=[0, 0, 1, 1, 1, 1],
                      transformer_depth_middle=1, transformer_depth_output=[0, 0, 0, 1, 1, 1, 1, 1, 1])

# Flux.1's layout (double + single blocks, 2x2 patches, 16 latent channels, guidance embedding) at
# hidden 64 with 2 + 2 blocks: ComfyUI needs hidden % heads == 0 and sum(axes_dim) == hidden / heads.
TINY_FLUX = dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=32, context_in_dim=32,
                 hidden_size=64, mlp_ratio=4.0, num_heads=2, depth=2, depth_single_blocks=2, axes_dim=[8, 12, 12],
                 theta=10000, patch_size=2, qkv_bias=True, guidance_embed=True, txt_ids_dims=[])


def _patcher(model):
    import comfy.model_management
    import comfy.model_patcher
    model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


def build_random_sd1(tiny: bool = True, seed: int = 0, dtype=None):
    """An SD1.x U-Net (same block paths) with random weights, as a ModelPatcher.
    tiny: model_channels=32 / context_dim=32 (8.5M params); else the real SD1.5 size (859.5M)."""
    import torch
    import comfy.supported_models
    cfg = dict(SD15_UNET)
    if tiny:
        cfg.update(TINY_SD1_UNET)
    model_config = comfy.supported_models.SD15(cfg)
    model_config.set_inference_dtype(dtype or torch.float32, None)
    model = model_config.get_model({})
    reset_torch_layers(model, seed)
    return _patcher(model)


def build_random_sdxl(tiny: bool = True, seed: int = 0, device=None):
    """An SDXL U-Net with random weights, as a ModelPatcher. tiny keeps SDXL's block layout at
    model_channels 32 and depth 1; device="meta" builds the full size shape-only."""
    import torch
    import comfy.supported_models
    cfg = dict(SDXL_UNET)
    if tiny:
        cfg.update(TINY_SDXL_UNET)
    model_config = comfy.supported_models.SDXL(cfg)
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, device=device)
    if device != "meta":
        reset_torch_layers(model, seed)
    return _patcher(model)


def build_random_sdxl_clip(seed: int = 0):
    """ComfyUI's SDXL text encoders (CLIP-L + CLIP-G, real classes and tokenizers) with random weights."""
    import comfy.sd
    import comfy.sdxl_clip
    import comfy.supported_models_base
    clip = comfy.sd.CLIP(comfy.supported_models_base.ClipTarget(comfy.sdxl_clip.SDXLTokenizer,
                                                                comfy.sdxl_clip.SDXLClipModel))
    reset_torch_layers(clip.cond_stage_model, seed)
    return clip


def build_random_flux(seed: int = 0, **over):
    """A tiny Flux (ComfyUI's Flux classes and ModelSamplingFlux) with random weights, as a ModelPatcher."""
    import torch
    import comfy.supported_models
    cfg = dict(TINY_FLUX, **over)
    model_config = comfy.supported_models.Flux(cfg)
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({})
    reset_torch_layers(model, seed)
    with torch.no_grad():   # RMSNorm scales are plain Parameters (torch.empty): start them at 1
        for name, p in model.named_parameters():
            if name.endswith(".scale"):
                p.fill_(1.0)
    return _patcher(model)


class RandomFluxText:
    """Stands in for Flux's text encoders (T5-XXL + CLIP-L cannot be made tiny): a prompt's
    conditioning is random but fixed by the prompt's text, with ComfyUI's CLIP interface."""

    def __init__(self, context_dim: int = 32, pooled_dim: int = 32, tokens: int = 8, guidance: float = 3.5):
        self.context_dim, self.pooled_dim, self.tokens, self.guidance = context_dim, pooled_dim, tokens, guidance

    def tokenize(self, text: str):
        return text

    def encode_from_tokens_scheduled(self, text: str):
        import torch
        g = torch.Generator().manual_seed(int(hashlib.sha256(text.encode()).hexdigest()[:8], 16))
        return [[torch.randn(1, self.tokens, self.context_dim, generator=g),
                 {"pooled_output": torch.randn(1, self.pooled_dim, generator=g), "guidance": self.guidance}]]


def flux_conditioning(text: str = "a dog", **kw):
    enc = RandomFluxText(**kw)
    return enc.encode_from_tokens_scheduled(text)
