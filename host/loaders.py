"""Load models with ComfyUI's own loaders, as the CLI needs them (inside ComfyUI, its loader nodes do this).

Two layouts: a single checkpoint file (SD1.x / SDXL, also all-in-one Flux or SD3 files), or a
diffusion model file (what UNETLoader reads, e.g. flux1-dev.safetensors, sd3.5_large.safetensors)
with text encoders and a VAE given by path (CLIPLoader / DualCLIPLoader / TripleCLIPLoader / VAELoader). The family is checked against the registry.
"""
from __future__ import annotations

from pathlib import Path

from ..sae_core.errors import SAEConceptsError
from ..sae_core.families import ModelFamily


class ModelLoadError(SAEConceptsError, ValueError):
    pass


# ComfyUI's text-encoder type for each family's DualCLIPLoader / CLIPLoader ("type" input).
CLIP_TYPES = {"sd1": "STABLE_DIFFUSION", "sdxl": "STABLE_DIFFUSION", "flux": "FLUX", "sd3": "SD3"}


# The diffusion model's weight dtype, by the names ComfyUI's UNETLoader offers (plus the float types its
# --bf16-unet / --fp16-unet / --fp32-unet flags choose). "default" leaves the choice to ComfyUI: float32 on a
# CPU, fp16 or bf16 on most GPUs. fp8 stores the weights in 8 bits and casts each layer to the compute dtype
# as it runs: a quarter of float32's memory, some speed and precision lost.
WEIGHT_DTYPES = ("default", "fp32", "fp16", "bf16", "fp8_e4m3fn", "fp8_e5m2")


def model_options(weight_dtype: str) -> dict:
    """ComfyUI's model_options for a WEIGHT_DTYPES name."""
    import torch
    if weight_dtype not in WEIGHT_DTYPES:
        raise ModelLoadError(f"weight dtype {weight_dtype!r} is not one of {', '.join(WEIGHT_DTYPES)}")
    if weight_dtype == "default":
        return {}
    return {"dtype": {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
                      "fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}[weight_dtype]}


def _first_line(e: Exception) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]


def _require_file(path: str, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"{what} {p} not found")
    return p


def check_family(model, name: str) -> ModelFamily:
    from .model_blocks import config_name, family_of, known_families
    fam = family_of(model)
    if fam is None:
        unet = getattr(model.model.model_config, "unet_config", {})
        raise ModelLoadError(f"{name} is detected as {config_name(model)} (context_dim={unet.get('context_dim')}, "
                             f"model_channels={unet.get('model_channels')}, hidden_size={unet.get('hidden_size')}), "
                             f"not one of the {known_families()} models SAE Concepts knows")
    return fam


def load_checkpoint(path: str, weight_dtype: str = "default"):
    """(ModelPatcher, CLIP, VAE) from one checkpoint file through ComfyUI's loader."""
    import comfy.sd
    p = _require_file(path, "checkpoint")
    options = model_options(weight_dtype)
    try:
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(p), output_vae=True, output_clip=True,
                                                                    model_options=options)
    except Exception as e:  # noqa: BLE001 - ComfyUI raises RuntimeError or loader-specific errors
        raise ModelLoadError(f"checkpoint {p} cannot be loaded as a diffusion model: {_first_line(e)}") from e
    check_family(model, str(p))
    return model, clip, vae


def load_parts(diffusion_model: str, text_encoders: list[str], vae: str = "", weight_dtype: str = "default"):
    """(ModelPatcher, CLIP, VAE or None) from a diffusion-model file, text-encoder files and a VAE file."""
    import comfy.sd
    import comfy.utils
    p = _require_file(diffusion_model, "diffusion model")
    options = model_options(weight_dtype)
    try:
        model = comfy.sd.load_diffusion_model(str(p), model_options=options)
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"diffusion model {p} cannot be loaded: {_first_line(e)}") from e
    fam = check_family(model, str(p))
    if not text_encoders:
        raise ModelLoadError(f"{p} is a bare diffusion model: give its text encoders (--text-encoders, "
                             f"comma-separated; Flux: clip_l and t5xxl; SD3: any of clip_l, clip_g, t5xxl)")
    paths = [str(_require_file(t, "text encoder")) for t in text_encoders]
    try:
        clip = comfy.sd.load_clip(paths, clip_type=getattr(comfy.sd.CLIPType, CLIP_TYPES[fam.name]))
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"text encoders {paths} cannot be loaded for {fam.display}: {_first_line(e)}") from e
    vae_model = None
    if vae:
        v = _require_file(vae, "VAE")
        try:
            vae_model = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(v)))
        except Exception as e:  # noqa: BLE001
            raise ModelLoadError(f"VAE {v} cannot be loaded: {_first_line(e)}") from e
    return model, clip, vae_model
