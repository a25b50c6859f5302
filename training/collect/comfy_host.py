"""Run ComfyUI's own SD1.x model code without the server.

ComfyUI is not on PyPI; it is found at $COMFYUI_PATH, else as the ComfyUI that holds this
plugin in custom_nodes/, else at ~/comfy/ComfyUI (comfy-cli's default).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

PLUGIN_ROOT = Path(__file__).resolve().parents[2]


class ComfyUINotFound(RuntimeError):
    pass


def candidate_paths() -> list[Path]:
    paths = []
    if os.environ.get("COMFYUI_PATH"):
        paths.append(Path(os.environ["COMFYUI_PATH"]).expanduser())
    if PLUGIN_ROOT.parent.name == "custom_nodes":
        paths.append(PLUGIN_ROOT.parent.parent)
    paths.append(Path.home() / "comfy" / "ComfyUI")
    return paths


def find_comfyui() -> Path | None:
    for p in candidate_paths():
        if (p / "comfy" / "model_patcher.py").is_file() and (p / "nodes.py").is_file():
            return p.resolve()
    return None


def import_comfy(cpu: bool | None = None, extra_sys_paths: tuple[str, ...] = ()) -> Path:
    """Put ComfyUI on sys.path and configure it for in-process use; returns its folder."""
    root = find_comfyui()
    if root is None:
        raise ComfyUINotFound(
            "ComfyUI not found: set COMFYUI_PATH to a ComfyUI checkout, or export one to "
            f"~/comfy/ComfyUI (looked in: {', '.join(map(str, candidate_paths()))})")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    for extra in extra_sys_paths:
        if extra not in sys.path:
            sys.path.append(extra)
    if "comfy.model_management" not in sys.modules:
        from comfy.cli_args import args
        import torch
        args.cpu = (not torch.cuda.is_available()) if cpu is None else cpu
        args.use_pytorch_cross_attention = True
        args.disable_all_custom_nodes = True
    import comfy.model_management  # noqa: F401  (initialises devices with the args above)
    return root


TINY_SD1_UNET = dict(model_channels=32, context_dim=32, num_heads=4)


def build_random_sd1(tiny: bool = True, seed: int = 0, dtype=None):
    """An SD1.x U-Net (ComfyUI's classes, same block paths) with random weights, as a ModelPatcher.

    tiny: model_channels=32 / context_dim=32 (8.5M params); else the real SD1.5 size (859.5M).
    ComfyUI's ops leave weights uninitialised, so every torch layer is reset from `seed`.
    """
    import torch
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    cfg = {'use_checkpoint': False, 'image_size': 32, 'out_channels': 4, 'use_spatial_transformer': True,
           'legacy': False, 'adm_in_channels': None, 'in_channels': 4, 'model_channels': 320,
           'num_res_blocks': [2, 2, 2, 2], 'transformer_depth': [1, 1, 1, 1, 1, 1, 0, 0],
           'channel_mult': [1, 2, 4, 4], 'transformer_depth_middle': 1, 'use_linear_in_transformer': False,
           'context_dim': 768, 'num_heads': 8, 'transformer_depth_output': [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
           'use_temporal_attention': False, 'use_temporal_resblock': False}
    if tiny:
        cfg.update(TINY_SD1_UNET)
    model_config = comfy.supported_models.SD15(cfg)
    model_config.set_inference_dtype(dtype or torch.float32, None)
    model = model_config.get_model({})
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            for base in (torch.nn.Linear, torch.nn.Conv2d, torch.nn.GroupNorm, torch.nn.LayerNorm):
                if isinstance(m, base):
                    base.reset_parameters(m)
                    break
    torch.random.set_rng_state(gen_state)
    model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


def write_random_sd1_checkpoint(path, seed: int = 0) -> Path:
    """A single-file SD1.5 checkpoint (U-Net + CLIP-L + VAE, fp16) with random weights, built
    from ComfyUI's own modules on the meta device, so real loaders detect and load it. For
    tests and the demo: no real weights exist offline. Written atomically; ~2 GiB."""
    import torch
    from safetensors.torch import save_file
    import comfy.sd1_clip
    import comfy.supported_models
    from comfy.ldm.models.autoencoder import AutoencoderKL

    from ...sae_core.atomic import atomic_path

    path = Path(path)
    shapes: dict[str, tuple] = {}
    norms: set[str] = set()   # weights of normalisation layers start at 1, not random or 0

    def collect_norms(module, prefix):
        for name, m in module.named_modules():
            if isinstance(m, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
                norms.add(f"{prefix}{name}.weight")
    with torch.device("meta"):
        cfg = comfy.supported_models.SD15({'use_checkpoint': False, 'image_size': 32, 'out_channels': 4,
            'use_spatial_transformer': True, 'legacy': False, 'adm_in_channels': None, 'in_channels': 4,
            'model_channels': 320, 'num_res_blocks': [2, 2, 2, 2], 'transformer_depth': [1, 1, 1, 1, 1, 1, 0, 0],
            'channel_mult': [1, 2, 4, 4], 'transformer_depth_middle': 1, 'use_linear_in_transformer': False,
            'context_dim': 768, 'num_heads': 8, 'transformer_depth_output': [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
            'use_temporal_attention': False, 'use_temporal_resblock': False})
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
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"note": "random weights, for tests only (sae_concepts)"})
    return path


def cached_random_sd1_checkpoint(cache_dir=None) -> Path:
    """The random SD1.5 checkpoint in a cache outside any repo ($SAE_CONCEPTS_CACHE or
    ~/.cache/sae_concepts), written on first use. The name carries a version: bump it when
    the writer changes so stale files are not reused."""
    cache = Path(cache_dir or os.environ.get("SAE_CONCEPTS_CACHE") or Path.home() / ".cache" / "sae_concepts")
    path = cache / "random_sd15_v2_seed0.safetensors"
    if not path.exists():
        write_random_sd1_checkpoint(path, seed=0)
    return path


SDXL_UNET = {'use_checkpoint': False, 'image_size': 32, 'out_channels': 4, 'use_spatial_transformer': True,
             'legacy': False, 'num_classes': 'sequential', 'adm_in_channels': 2816, 'in_channels': 4,
             'model_channels': 320, 'num_res_blocks': [2, 2, 2], 'transformer_depth': [0, 0, 2, 2, 10, 10],
             'channel_mult': [1, 2, 4], 'transformer_depth_middle': 10, 'use_linear_in_transformer': True,
             'context_dim': 2048, 'num_head_channels': 64, 'transformer_depth_output': [0, 0, 0, 2, 2, 2, 10, 10, 10],
             'use_temporal_attention': False, 'use_temporal_resblock': False}
# Same block layout as SDXL (so the same ComfyUI paths and diffusers names), reduced width/depth.
TINY_SDXL_UNET = dict(model_channels=32, num_head_channels=16, transformer_depth=[0, 0, 1, 1, 1, 1],
                      transformer_depth_middle=1, transformer_depth_output=[0, 0, 0, 1, 1, 1, 1, 1, 1])


def _reset_torch_layers(module, seed: int) -> None:
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


def build_random_sdxl(tiny: bool = True, seed: int = 0, device=None):
    """An SDXL U-Net (ComfyUI's classes) with random weights, as a ModelPatcher. tiny keeps SDXL's
    block layout at model_channels 32 and depth 1; device="meta" builds the full size shape-only."""
    import torch
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models
    cfg = dict(SDXL_UNET)
    if tiny:
        cfg.update(TINY_SDXL_UNET)
    model_config = comfy.supported_models.SDXL(cfg)
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, device=device)
    if device != "meta":
        _reset_torch_layers(model, seed)
    model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


def build_random_sdxl_clip(seed: int = 0):
    """ComfyUI's SDXL text encoders (CLIP-L + CLIP-G, real classes and tokenizers) with random weights."""
    import comfy.sd
    import comfy.sdxl_clip
    import comfy.supported_models_base
    clip = comfy.sd.CLIP(comfy.supported_models_base.ClipTarget(comfy.sdxl_clip.SDXLTokenizer,
                                                                comfy.sdxl_clip.SDXLClipModel))
    _reset_torch_layers(clip.cond_stage_model, seed)
    return clip
