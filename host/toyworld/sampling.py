"""The Toy World model as ComfyUI objects, and sampling it without the server.

- `load_toy_model(path)` -> (ModelPatcher, ToyTextEncoder): a `comfy.model_base.BaseModel`
  (ε-prediction, SD1.x's scaled-linear ModelSamplingDiscrete) around ComfyUI's own UNetModel,
  so KSampler / `comfy.sample.sample`, object patches and our block wrappers work unchanged.
- `encode_prompt(text_encoder, text)` -> CONDITIONING (`[[cond [1, 8, 64], {}]]`), "" = uncond.
- The "VAE" is the pixel unshuffle: `decode(latent)` -> IMAGE [B, 48, 48, 3] in [0, 1],
  `encode(image)` -> latent; `PixelUnshuffleAutoencoder` is the same as an nn.Module with the
  encode/decode-in-[-1, 1] interface that ComfyUI's `comfy.sd.VAE` wraps.
- An empty SD latent (EmptyLatentImage: 4 channels, H/8) is widened to 12 channels by
  ComfyUI itself (`fix_empty_latent_channels`); EmptyLatentImage at 192x192 gives the 24x24
  latent of a 48x48 image.
Import ComfyUI first (`sae_concepts.host.comfy_env.import_comfy`).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ...sae_core.errors import ConfigError
from ...sae_core.native_format import read_safetensors

from .model import ToyModelConfig, ToyTextEncoder, image_to_latent, latent_to_image, UNSHUFFLE
from .world import tokenize

FORMAT = "sae-concepts-toyworld-v1"
SHIPPED_WEIGHTS = Path(__file__).parent / "weights" / "toyworld_v5.safetensors"
# Drawing a prompt well: the sampler of the model card's quality figures (`toyworld evaluate`),
# chosen on a validation stream of prompts (model card: ancestral samplers draw the asked objects
# more often than DDIM at the same 25 steps).
DEFAULT_SAMPLER = dict(steps=25, cfg=6.0, sampler_name="euler_ancestral", scheduler="normal")
# Measuring and steering (`toyworld paper`, the toy workflows, whose settings come from its tables):
# deterministic DDIM, no fresh noise on the way, so the final image, and where its objects land, is
# a function of the starting noise, the premise of "does Delta at t = 1 already predict the
# composition?", and a steered image differs from the unsteered one by the steer alone.
PAPER_SAMPLER = dict(steps=25, cfg=6.0, sampler_name="ddim", scheduler="ddim_uniform")


def toy_latent_format(cfg: ToyModelConfig):
    """ComfyUI LatentFormat of the unshuffled pixels: 12 channels; the model works on
    (latent - shift) * scale (process_in, as SD3's format shifts and scales its latents); the
    preview factors average each colour's 4 sub-pixels, so latent previews show the image."""
    from comfy.latent_formats import LatentFormat
    shift, scale = cfg.latent_shift, cfg.latent_scale

    class ToyWorldLatent(LatentFormat):
        latent_channels = 3 * UNSHUFFLE * UNSHUFFLE
        scale_factor = scale
        shift_factor = shift

        def __init__(self):
            # preview rgb in [-1, 1] from the model-space x0: mean of 4 sub-pixels, undone scale + shift
            self.latent_rgb_factors = [[0.25 / scale if c == k // (UNSHUFFLE * UNSHUFFLE) else 0.0 for c in range(3)]
                                       for k in range(self.latent_channels)]
            self.latent_rgb_factors_bias = [shift] * 3

        def process_in(self, latent):
            return cfg.to_model_space(latent)

        def process_out(self, latent):
            return cfg.from_model_space(latent)
    return ToyWorldLatent


def toy_model_config(cfg: ToyModelConfig):
    """A comfy.supported_models_base.BASE for the toy U-Net (SD1.x sampling settings)."""
    import comfy.supported_models_base

    class ToyWorldModel(comfy.supported_models_base.BASE):
        unet_config = {}
        unet_extra_config = {}          # keep the config's own num_heads
        latent_format = toy_latent_format(cfg)
        memory_usage_factor = 1.0
        sampling_settings = {"beta_schedule": "linear", "linear_start": 0.00085, "linear_end": 0.012}

        def inpaint_model(self):        # BASE reads in_channels > 4 as inpainting; 12 = RGB unshuffled
            return False

    model_config = ToyWorldModel(cfg.unet_config())
    model_config.set_inference_dtype(torch.float32, None)
    return model_config


def read_toy_weights(path) -> tuple[ToyModelConfig, dict[str, torch.Tensor], dict[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"toy world weights not found: {path}")
    meta, tensors = read_safetensors(path)   # a truncated or corrupt file: one clear error
    if meta.get("format") != FORMAT:
        raise ConfigError(f"{path}: not a toy world weights file (format {meta.get('format')!r}, expected {FORMAT!r})")
    return ToyModelConfig.from_json(meta["model_config"]), tensors, meta


def weights_digest(path) -> str:
    """sha256 of a weights file: what a run was made from, wherever the file is now."""
    import hashlib
    if not Path(path).is_file():
        raise FileNotFoundError(f"toy world weights not found: {path}")
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_toy_model(path=SHIPPED_WEIGHTS):
    """(ModelPatcher, ToyTextEncoder) from a toy world weights file (fp16 on disk, fp32 here)."""
    import comfy.model_base
    import comfy.model_management
    import comfy.model_patcher

    cfg, tensors, _ = read_toy_weights(path)
    model = comfy.model_base.BaseModel(toy_model_config(cfg), model_type=comfy.model_base.ModelType.EPS)
    unet_sd = {k[len("diffusion_model."):]: v.float() for k, v in tensors.items() if k.startswith("diffusion_model.")}
    model.diffusion_model.load_state_dict(unet_sd, strict=True)
    model.eval()
    text_encoder = ToyTextEncoder(cfg)
    text_encoder.load_state_dict({k[len("text_encoder."):]: v.float() for k, v in tensors.items()
                                  if k.startswith("text_encoder.")}, strict=True)
    text_encoder.eval()
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                               offload_device=comfy.model_management.unet_offload_device())
    return patcher, text_encoder


@torch.no_grad()
def encode_prompt(text_encoder: ToyTextEncoder, text: str | list[str]):
    """ComfyUI CONDITIONING for one prompt (cond [1, 8, 64]) or a list (cond [B, 8, 64],
    one row per latent of a batch). "" is the unconditional prompt (all padding)."""
    texts = [text] if isinstance(text, str) else list(text)
    ids = torch.tensor([tokenize(t) for t in texts], dtype=torch.long)
    device = next(text_encoder.parameters()).device
    return [[text_encoder(ids.to(device)).float().cpu(), {}]]


def decode(latent: torch.Tensor) -> torch.Tensor:
    """Latent [B, 12, h, w] -> IMAGE [B, 2h, 2w, 3] in [0, 1]."""
    return latent_to_image(latent.float())


def encode(image: torch.Tensor) -> torch.Tensor:
    """IMAGE [B, H, W, 3] in [0, 1] -> latent [B, 12, H/2, W/2]."""
    return image_to_latent(image.float())


class PixelUnshuffleAutoencoder(nn.Module):
    """The toy "VAE" with the first-stage interface ComfyUI's VAE wraps (pixels in [-1, 1])."""

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pixel_unshuffle(x, UNSHUFFLE)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pixel_shuffle(z, UNSHUFFLE)


def empty_latent(cfg: ToyModelConfig, batch_size: int = 1) -> torch.Tensor:
    return torch.zeros(batch_size, cfg.latent_channels, cfg.latent_size, cfg.latent_size)


def sample_images(patcher, text_encoder, prompts: list[str], seed: int, steps: int = DEFAULT_SAMPLER["steps"],
                  cfg: float = DEFAULT_SAMPLER["cfg"], sampler_name: str = DEFAULT_SAMPLER["sampler_name"],
                  scheduler: str = DEFAULT_SAMPLER["scheduler"], negative: str = "",
                  disable_pbar: bool = True) -> torch.Tensor:
    """IMAGE [B, 48, 48, 3] for a batch of prompts, through comfy.sample.sample (KSampler's path).
    Noise: comfy.sample.prepare_noise(latent, seed), as the KSampler node makes it."""
    import comfy.sample
    size = patcher.model.model_config.unet_config["image_size"]
    latent = torch.zeros(len(prompts), patcher.model.latent_format.latent_channels, size, size)
    noise = comfy.sample.prepare_noise(latent, seed)
    positive = encode_prompt(text_encoder, prompts)
    negative_c = encode_prompt(text_encoder, negative)
    samples = comfy.sample.sample(patcher, noise, steps, cfg, sampler_name, scheduler, positive, negative_c,
                                  latent, seed=seed, disable_pbar=disable_pbar)
    return decode(samples)


def weights_metadata(path=SHIPPED_WEIGHTS) -> dict:
    """The shipped file's recipe: model config, train config, step, training seconds."""
    _, _, meta = read_toy_weights(path)
    out = dict(meta)
    for k in ("model_config", "train_config"):
        if k in out:
            out[k] = json.loads(out[k])
    return out
