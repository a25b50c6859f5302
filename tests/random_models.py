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

# SD3's MMDiT (joint blocks, 2x2 patches, 16 latent channels) at depth 2: hidden 64 x depth = 128,
# 2 heads, 2.0M params. The text side takes what ComfyUI's SD3 text encoders give (context 4096-d,
# pooled 768 + 1280), so a random CLIP-L loaded with CLIPLoader(type="sd3") drives it.
SD3_DEPTH, SD3_POS_EMBED = 2, 16
TINY_SD3 = dict(in_channels=16, out_channels=16, patch_size=2, depth=SD3_DEPTH, input_size=None,
                adm_in_channels=2048, pos_embed_max_size=SD3_POS_EMBED, num_patches=SD3_POS_EMBED ** 2,
                pos_embed_scaling_factor=None, x_block_self_attn_layers=[],
                context_embedder_config={"target": "torch.nn.Linear",
                                         "params": {"in_features": 4096, "out_features": 64 * SD3_DEPTH}})


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


def build_random_sd3(seed: int = 0):
    """A tiny SD3 (ComfyUI's MMDiT and SD3 config: ModelSamplingSD3, shift 3) with random weights, as a
    ModelPatcher."""
    import torch
    import comfy.supported_models
    model_config = comfy.supported_models.SD3(dict(TINY_SD3))
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({})
    reset_torch_layers(model, seed)
    with torch.no_grad():   # the position table is a plain Parameter (torch.empty)
        model.diffusion_model.pos_embed.normal_(0.0, 0.02, generator=torch.Generator().manual_seed(seed))
    return _patcher(model)


def sd3_conditioning(text: str = "a dog", tokens: int = 8):
    """Random SD3 conditioning fixed by the text: context (1, tokens, 4096), pooled (1, 2048)."""
    return RandomText(context_dim=4096, pooled_dim=2048, tokens=tokens, guidance=None).encode_from_tokens_scheduled(text)


def write_tiny_sd3(path, seed: int = 0):
    """build_random_sd3's MMDiT as a diffusion-model file (fp32, ~7.5 MB) that UNETLoader detects as SD3."""
    from safetensors.torch import save_file
    dm = build_random_sd3(seed).model.diffusion_model
    save_file({k: v.contiguous() for k, v in dm.state_dict().items()}, str(path))
    return path


def write_random_clip_l(path, seed: int = 0):
    """A CLIP-L text-encoder file (fp16, 246 MB: its config is fixed, so it cannot be made small) with
    random weights, keyed as CLIPLoader reads it."""
    import torch
    import comfy.sd1_clip
    from safetensors.torch import save_file
    from sae_concepts.host.random_checkpoint import random_state
    with torch.device("meta"):
        clip = comfy.sd1_clip.SDClipModel(device="meta", dtype=torch.float16)
    shapes = {k: v.shape for k, v in clip.transformer.state_dict().items() if "logit_scale" not in k}
    norms = {f"{n}.weight" for n, m in clip.transformer.named_modules() if isinstance(m, torch.nn.LayerNorm)}
    save_file(random_state(shapes, norms, seed), str(path))
    return path


def write_random_taesd(folder, name: str, latent_channels: int, seed: int = 0):
    """<name>_encoder / _decoder.safetensors in `folder` (models/vae_approx), a random TAESD that
    VAELoader offers as `name` (taesd3: 16 latent channels)."""
    from safetensors.torch import save_file
    from comfy.taesd.taesd import TAESD
    tae = TAESD(latent_channels=latent_channels)
    reset_torch_layers(tae, seed)
    for part in ("encoder", "decoder"):
        save_file({k: v.contiguous() for k, v in getattr(tae, f"taesd_{part}").state_dict().items()},
                  str(folder / f"{name}_{part}.safetensors"))


class RandomText:
    """Stands in for a model's text encoders where the real ones cannot be made tiny (Flux's T5-XXL
    + CLIP-L) or do not fit a tiny U-Net (CLIP-L gives 768-d context, the tiny SD1.x takes 32): a
    prompt's conditioning is random but fixed by the prompt's text, with ComfyUI's CLIP interface.
    guidance=None leaves the Flux guidance key out (SD1.x conditioning has none)."""

    def __init__(self, context_dim: int = 32, pooled_dim: int = 32, tokens: int = 8, guidance: float | None = 3.5):
        self.context_dim, self.pooled_dim, self.tokens, self.guidance = context_dim, pooled_dim, tokens, guidance

    def tokenize(self, text: str):
        return text

    def encode_from_tokens_scheduled(self, text: str):
        import torch
        g = torch.Generator().manual_seed(int(hashlib.sha256(text.encode()).hexdigest()[:8], 16))
        context = torch.randn(1, self.tokens, self.context_dim, generator=g)   # drawn first, as it always was:
        extra = {"pooled_output": torch.randn(1, self.pooled_dim, generator=g)}  # tests' data depend on the order
        if self.guidance is not None:
            extra["guidance"] = self.guidance
        return [[context, extra]]


RandomFluxText = RandomText   # the defaults are Flux's tiny test settings


def tiny_sd1_text() -> RandomText:
    """The text-encoder stand-in for build_random_sd1(tiny=True): 77 tokens of its 32-d context."""
    return RandomText(context_dim=TINY_SD1_UNET["context_dim"], pooled_dim=TINY_SD1_UNET["context_dim"],
                      tokens=77, guidance=None)


def build_random_taesd_vae(seed: int = 0):
    """ComfyUI's VAE wrapping a TAESD (the tiny autoencoder ComfyUI ships as a preview/VAE choice) with
    random weights: decodes a 128 px SD1.x image in ~0.1 s on a CPU core, where the full SD VAE
    takes ~4 s and holds 330 MB."""
    import comfy.sd
    import comfy.taesd.taesd
    taesd = comfy.taesd.taesd.TAESD(latent_channels=4)
    reset_torch_layers(taesd, seed)
    return comfy.sd.VAE(sd=taesd.state_dict())


def flux_conditioning(text: str = "a dog", **kw):
    enc = RandomFluxText(**kw)
    return enc.encode_from_tokens_scheduled(text)
