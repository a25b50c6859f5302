"""The Toy World network: ComfyUI's own SD1.x `UNetModel` (small widths) + a tiny text encoder.

The "latent" is the image itself, pixel-unshuffled (lossless): [B, 3, 48, 48] in [-1, 1] ->
[B, 12, 24, 24]. With SD1.x's channel_mult (1, 2, 4, 4) the paper's three blocks sit at
down input_blocks.8.1 6x6, mid middle_block.1 3x3, up output_blocks.3.1 6x6: latent/4, /8, /4,
the same relative resolutions as SD1.x at 512 px (64 -> 16, 8, 16).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .world import CONTEXT_LENGTH, IMAGE_SIZE, VOCAB

UNSHUFFLE = 2


@dataclass
class ToyModelConfig:
    image_size: int = IMAGE_SIZE
    model_channels: int = 32          # the smallest width GroupNorm(32) allows
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    num_heads: int = 2
    context_dim: int = 64
    text_layers: int = 2
    text_heads: int = 4
    vocab: tuple[str, ...] = field(default_factory=lambda: VOCAB)
    context_length: int = CONTEXT_LENGTH
    # The model works on (latent - shift) * scale, as SD works on VAE latents x 0.18215: centred
    # and of unit variance over the world's scenes (pixel mean 0.36, std 0.40 in [-1, 1]).
    # Uncentred data made the starting noise (mean 0) look like a dark, tinted image to the
    # model at t = 999, where SD1.x's schedule still keeps 6.8 % of the signal (v1's tint).
    latent_shift: float = 0.36
    latent_scale: float = 2.5

    def to_model_space(self, latent: torch.Tensor) -> torch.Tensor:
        """Unshuffled latent -> what the U-Net works on (ComfyUI's process_in)."""
        return (latent - self.latent_shift) * self.latent_scale

    def from_model_space(self, x: torch.Tensor) -> torch.Tensor:
        """The inverse (ComfyUI's process_out)."""
        return x / self.latent_scale + self.latent_shift

    @property
    def latent_channels(self) -> int:
        return 3 * UNSHUFFLE * UNSHUFFLE

    @property
    def latent_size(self) -> int:
        return self.image_size // UNSHUFFLE

    def unet_config(self) -> dict:
        """Keyword arguments of ComfyUI's UNetModel: SD1.x topology (16 SpatialTransformers)."""
        n = len(self.channel_mult)
        return dict(image_size=self.latent_size, in_channels=self.latent_channels,
                    out_channels=self.latent_channels, model_channels=self.model_channels,
                    num_res_blocks=[self.num_res_blocks] * n, channel_mult=list(self.channel_mult),
                    num_heads=self.num_heads, num_head_channels=-1, use_spatial_transformer=True,
                    transformer_depth=[1, 1] * (n - 1) + [0, 0], transformer_depth_middle=1,
                    transformer_depth_output=[1, 1, 1] * (n - 1) + [0, 0, 0],
                    context_dim=self.context_dim, use_linear_in_transformer=False, legacy=False,
                    adm_in_channels=None, use_temporal_attention=False, use_temporal_resblock=False,
                    use_checkpoint=False)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "ToyModelConfig":
        d = json.loads(text)
        d["channel_mult"] = tuple(d["channel_mult"])
        d["vocab"] = tuple(d["vocab"])
        d.setdefault("latent_shift", 0.0)   # v1 weights: the raw [-1, 1] latent
        d.setdefault("latent_scale", 1.0)
        return cls(**d)


class ToyTextEncoder(nn.Module):
    """Token ids [B, L] -> cross-attention context [B, L, context_dim].

    A causal width-2 convolution first mixes each word with the one before it, so a shape
    token carries its colour from the first step (binding is then a per-token lookup for the
    U-Net's cross-attention); two small transformer layers add the rest of the prompt.
    """

    def __init__(self, cfg: ToyModelConfig):
        super().__init__()
        d = cfg.context_dim
        self.token = nn.Embedding(len(cfg.vocab), d)
        self.position = nn.Embedding(cfg.context_length, d)
        self.pair = nn.Conv1d(d, d, kernel_size=2)
        layer = nn.TransformerEncoderLayer(d, cfg.text_heads, dim_feedforward=2 * d, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, cfg.text_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device)
        h = self.token(ids) + self.position(pos)
        pair = self.pair(F.pad(h.transpose(1, 2), (1, 0))).transpose(1, 2)
        return self.norm(self.layers(h + pair))


def image_to_latent(image: torch.Tensor) -> torch.Tensor:
    """[B, H, W, 3] in [0, 1] (ComfyUI IMAGE layout) -> [B, 12, H/2, W/2] in [-1, 1]."""
    return F.pixel_unshuffle(image.movedim(-1, 1) * 2 - 1, UNSHUFFLE)


def latent_to_image(latent: torch.Tensor) -> torch.Tensor:
    """[B, 12, h, w] -> [B, 2h, 2w, 3] in [0, 1] (ComfyUI IMAGE layout), clamped."""
    return ((F.pixel_shuffle(latent, UNSHUFFLE) + 1) / 2).clamp(0, 1).movedim(1, -1)


INITS = ("torch", "unit")


def build_unet(cfg: ToyModelConfig, init: str = "torch"):
    """ComfyUI's UNetModel with cfg's widths, initialised from the current torch rng.

    ComfyUI's ops skip weight init (weights are normally loaded), so every layer is reset here;
    output convolutions of residual branches start at zero (the usual DDPM init), so the
    network starts as the identity plus small updates and learns faster.
    init "torch": PyTorch's default for the other layers (the shipped recipe). Its weights have
    variance 1 / (3 fan_in), so each convolution passes on ~0.58 of its input's size; with the
    residual branches at zero, what comes up from a lower grid crosses a chain of such convs (the
    1x1 skip convolutions of every decoder ResBlock, the upsamplers) while the skip connections
    enter fresh, and the 6x6 / 3x3 path reaches the output at ~0 % (measured: an edit of 4x the
    residual stream at the mid block changes the features entering the last conv by < 0.1 %).
    init "unit": the convolutions' and linear layers' weights get variance 1 / fan_in instead
    (size-preserving; biases and norms as PyTorch's), so every grid reaches the output from the
    first step. The text encoder is built elsewhere and keeps PyTorch's init either way.
    """
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    import comfy.ops
    from comfy.ldm.modules.attention import SpatialTransformer
    from comfy.ldm.modules.diffusionmodules.openaimodel import ResBlock, UNetModel

    unet = UNetModel(**cfg.unet_config(), operations=comfy.ops.disable_weight_init)
    for m in unet.modules():
        for base in (nn.Linear, nn.Conv2d, nn.GroupNorm, nn.LayerNorm):
            if isinstance(m, base):
                base.reset_parameters(m)
                if init == "unit" and base in (nn.Linear, nn.Conv2d):
                    fan_in = m.weight[0].numel()
                    nn.init.normal_(m.weight, std=fan_in ** -0.5)
                break
    with torch.no_grad():
        for m in unet.modules():
            if isinstance(m, ResBlock):
                _zero(m.out_layers[-1])
            elif isinstance(m, SpatialTransformer):
                _zero(m.proj_out)
        _zero(unet.out[-1])
    return unet


def _zero(layer: nn.Module):
    for p in layer.parameters():
        p.zero_()
