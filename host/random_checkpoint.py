"""A random-weight SD1.5 checkpoint file, for the demo's smoke run and tests (no weights exist offline).

SD15_UNET is SD1.5's full U-Net config. ComfyUI keeps it only inside
comfy.model_detection.unet_config_from_diffusers_unet (a local of a function that needs a
diffusers state dict); it is written out once here and used by everything that builds SD1.5.
"""
from __future__ import annotations

import os
from pathlib import Path

SD15_UNET = {'use_checkpoint': False, 'image_size': 32, 'out_channels': 4, 'use_spatial_transformer': True,
             'legacy': False, 'adm_in_channels': None, 'in_channels': 4, 'model_channels': 320,
             'num_res_blocks': [2, 2, 2, 2], 'transformer_depth': [1, 1, 1, 1, 1, 1, 0, 0],
             'channel_mult': [1, 2, 4, 4], 'transformer_depth_middle': 1, 'use_linear_in_transformer': False,
             'context_dim': 768, 'num_heads': 8, 'transformer_depth_output': [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
             'use_temporal_attention': False, 'use_temporal_resblock': False}


def reset_torch_layers(module, seed: int) -> None:
    """ComfyUI's ops leave weights uninitialised: reset every torch layer from `seed`."""
    import torch
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            for base in (torch.nn.Linear, torch.nn.Conv2d, torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.Embedding):
                if isinstance(m, base):
                    base.reset_parameters(m)
                    break
    torch.random.set_rng_state(state)


def random_state(shapes: dict, norms: set, seed: int) -> dict:
    """fp16 tensors for {key: shape}: norm weights (`norms`) 1, other vectors N(0, 0.02^2), matrices
    and kernels scaled by 1/sqrt(fan_in), position ids 0..n-1."""
    import torch
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for k, shape in sorted(shapes.items()):
        if k.endswith("position_ids"):
            tensors[k] = torch.arange(shape[-1]).reshape(shape)
        elif k in norms:
            tensors[k] = torch.ones(shape, dtype=torch.float16)
        elif len(shape) == 1:
            tensors[k] = (0.02 * torch.randn(shape, generator=g)).half()
        else:
            fan_in = max(1, int(torch.tensor(shape[1:]).prod()))
            tensors[k] = (torch.randn(shape, generator=g) / fan_in ** 0.5).half()
    return tensors


def write_random_sd1_checkpoint(path, seed: int = 0) -> Path:
    """A single-file SD1.5 checkpoint (U-Net + CLIP-L + VAE; U-Net weights fp8, the rest fp16) with
    random weights, built from ComfyUI's own modules on the meta device, so real loaders detect and
    load it. For tests and the demo: no real weights exist offline. Written atomically; 1.2 GiB."""
    import torch
    from safetensors.torch import save_file
    import comfy.sd1_clip
    import comfy.supported_models
    from comfy.ldm.models.autoencoder import AutoencoderKL

    from ..sae_core.atomic import atomic_path

    path = Path(path)
    shapes: dict[str, tuple] = {}
    norms: set[str] = set()   # weights of normalisation layers start at 1, not random or 0

    def collect_norms(module, prefix):
        for name, m in module.named_modules():
            if isinstance(m, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
                norms.add(f"{prefix}{name}.weight")
    with torch.device("meta"):
        cfg = comfy.supported_models.SD15(dict(SD15_UNET))
        cfg.set_inference_dtype(torch.float16, None)
        unet = cfg.get_model({}, device="meta").diffusion_model
        shapes.update({f"model.diffusion_model.{k}": v.shape for k, v in unet.state_dict().items()})
        collect_norms(unet, "model.diffusion_model.")
        clip = comfy.sd1_clip.SD1ClipModel(device="meta", dtype=torch.float16)
        for k, v in clip.state_dict().items():
            if k.startswith("clip_l.transformer.") and "text_projection" not in k and "logit_scale" not in k:
                shapes["cond_stage_model." + k[len("clip_l."):]] = v.shape
        collect_norms(clip.clip_l, "cond_stage_model.")
        vae = AutoencoderKL(ddconfig={'double_z': True, 'z_channels': 4, 'resolution': 256, 'in_channels': 3,
                                      'out_ch': 3, 'ch': 128, 'ch_mult': [1, 2, 4, 4], 'num_res_blocks': 2,
                                      'attn_resolutions': [], 'dropout': 0.0}, embed_dim=4)
        shapes.update({f"first_stage_model.{k}": v.shape for k, v in vae.state_dict().items()})
        collect_norms(vae, "first_stage_model.")
    tensors = random_state(shapes, norms, seed)
    for k, v in tensors.items():
        # U-Net matrices and kernels stored in fp8, as fp8 checkpoints are shipped: loaded with
        # weight dtype fp8 (collect --weight-dtype, ComfyUI's --fp8_e4m3fn-unet) the weights are
        # used as stored, so a process holds the 1.2 GiB file and 0.8 GiB of U-Net, not 2 + 3.2 GiB.
        if k.startswith("model.diffusion_model.") and v.ndim >= 2:
            tensors[k] = v.to(torch.float8_e4m3fn)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"note": "random weights, for tests only (sae_concepts)"})
    return path


def cached_random_sd1_checkpoint(cache_dir=None) -> Path:
    """The random SD1.5 checkpoint in a cache outside any repo ($SAE_CONCEPTS_CACHE or
    ~/.cache/sae_concepts), written on first use. The name carries a version: bump it when
    the writer changes so stale files are not reused."""
    cache = Path(cache_dir or os.environ.get("SAE_CONCEPTS_CACHE") or Path.home() / ".cache" / "sae_concepts")
    path = cache / "random_sd15_v3_fp8unet_seed0.safetensors"
    if not path.exists():
        write_random_sd1_checkpoint(path, seed=0)
    return path
