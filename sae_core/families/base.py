"""What the rest of the code may ask about a model family (pure data, no ComfyUI import).

A family is one module in this package that builds one `ModelFamily`. Everything family-specific
lives there: block names and their aliases, the default blocks, how a block is patched in
ComfyUI, how the block's tokens lie on the latent grid, how a sampling step maps to the
paper's t, and which ComfyUI model configs belong to it.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable

from ..errors import ConfigError

# How the host patches a block (host/block_patch.py implements each kind once).
SPATIAL_TRANSFORMER = "spatial_transformer"   # U-Net: object patch with a SpatialTransformer subclass
DIT = "dit"                                   # transformer_options["patches_replace"]["dit"][(kind, i)]

# How a sampling step maps to the paper's t (1.0 = first step, pure noise; 0.0 = last).
MODEL_TIMESTEP = "model_timestep"   # t = model_sampling.timestep(sigma) / (len(sigmas) - 1) (DDPM models)
SCHEDULE = "schedule"               # t = 1 - step / (steps - 1), from the run's own sigma schedule
#   (flow models: robust to a ModelSamplingFlux shift applied anywhere in the graph)


class UnknownBlock(ConfigError):
    """A block name that the family does not have; the message lists what it has."""


@dataclass(frozen=True)
class DitStream:
    """One kind of DiT block (patch kind DIT): what the host needs to find, patch and read it."""
    name: str            # the model's ModuleList, also the canonical block prefix: "double_blocks"
    patch_kind: str      # its key in patches_replace["dit"]: ("double_block", i)
    alias: str           # diffusers' prefix: "transformer_blocks"
    released_depth: int  # blocks in the largest released model (lists offered in the UI)
    text_first: bool = False   # the block sees one stream cat(txt, img): image tokens follow the text


@dataclass(frozen=True)
class ModelFamily:
    name: str                                  # "sd1", "sdxl", "flux": stored in SAE files
    display: str                               # "SD1.x"
    comfy_configs: tuple[str, ...]             # class names in comfy.supported_models
    patch_kind: str
    time_axis: str
    default_blocks: tuple[str, ...]
    # Fixed block list {canonical name: (alias, width)}; empty for families whose depth varies
    # (then `parse_block` recognises the names and the loaded model says which exist).
    fixed_blocks: dict[str, tuple[str, int]] = field(default_factory=dict)
    parse_block: Callable[[str], str | None] | None = None
    alias_of: Callable[[str], str] | None = None   # canonical -> other name, for parsed blocks
    blocks_help: str = ""                          # what names parse_block takes
    block_width: int | None = None             # every block's width where it is one number
    tokens_per_latent_pixel: int = 1           # patch size: 2 for Flux (a token covers 2x2 latent pixels)
    image_tokens_only: bool = False            # DiT: the stream also holds text (and reference) tokens
    # Every later norm is a LayerNorm without affine (Flux): a direction's component along the
    # all-ones vector is removed by it, so steering directions are mean-centred.
    centre_directions: bool = False
    dit_streams: tuple[DitStream, ...] = ()    # DiT families: their block kinds
    # Widths of the released models: settle a block name two families share (diffusers'
    # transformer_blocks.<i> is Flux's double block and SD3's joint block) when a file names no family.
    known_widths: tuple[int, ...] = ()

    def canonical_block(self, name: str) -> str:
        """A block name as this family writes it (ComfyUI path), from a ComfyUI path or a diffusers
        name, with or without a model prefix; an unknown name raises with the family's blocks."""
        n = strip_prefix(name)
        if n in self.fixed_blocks:
            return n
        for canon, (alias, _) in self.fixed_blocks.items():
            if n == alias:
                return canon
        if self.parse_block is not None:
            parsed = self.parse_block(n)
            if parsed is not None:
                return parsed
        raise UnknownBlock(f"unknown {self.display} transformer block {name!r}; {self.block_names_help()}")

    def has_block_name(self, name: str) -> bool:
        try:
            self.canonical_block(name)
            return True
        except UnknownBlock:
            return False

    def alias(self, block: str) -> str:
        """The other name of a block (diffusers' for U-Nets / Flux), "" if none."""
        block = self.canonical_block(block)
        if block in self.fixed_blocks:
            return self.fixed_blocks[block][0]
        return self.alias_of(block) if self.alias_of else ""

    def width(self, block: str) -> int | None:
        block = self.canonical_block(block)
        if block in self.fixed_blocks:
            return self.fixed_blocks[block][1]
        return self.block_width

    def block_names_help(self) -> str:
        if self.fixed_blocks:
            return "known blocks (ComfyUI path = diffusers name): " + ", ".join(
                f"{c} = {d}" for c, (d, _) in self.fixed_blocks.items())
        return self.blocks_help

    def token_grid(self, latent_h: int, latent_w: int) -> tuple[int, int]:
        """(h, w) of the token grid a latent of (latent_h, latent_w) pixels gives (ceil division:
        ComfyUI pads the latent to the patch size)."""
        p = self.tokens_per_latent_pixel
        return math.ceil(latent_h / p), math.ceil(latent_w / p)

    def token_patch(self, token: int, grid_w: int) -> tuple[slice, slice]:
        """Latent rows and columns covered by image token `token` on a grid of width grid_w."""
        p = self.tokens_per_latent_pixel
        r, c = divmod(token, grid_w)
        return slice(p * r, p * r + p), slice(p * c, p * c + p)

    def dit_stream(self, block: str) -> tuple[DitStream, int]:
        """(stream, index) of a canonical DiT block name."""
        kind, i = self.canonical_block(block).rsplit(".", 1)
        return next(s for s in self.dit_streams if s.name == kind), int(i)

    def schedule_t(self, step: int, steps: int) -> float:
        """t of step `step` (0-based) of a run of `steps` steps under the SCHEDULE axis."""
        return 1.0 if steps <= 1 else 1.0 - step / (steps - 1)


def strip_prefix(name: str) -> str:
    n = name.strip()
    for prefix in ("model.diffusion_model.", "diffusion_model.", "unet.", "transformer."):
        if n.startswith(prefix):
            n = n[len(prefix):]
    return n


def dit_family(streams: tuple[DitStream, ...], **fields) -> ModelFamily:
    """A DiT family: block names `<stream>.<i>` (ComfyUI) or `<alias>.<i>` (diffusers), patched
    through patches_replace["dit"]."""
    by_alias = {s.alias: s.name for s in streams}
    parse = indexed_block_parser({**{re.escape(s.name) + r"\.(\d+)": s.name + ".{}" for s in streams},
                                  **{re.escape(s.alias) + r"\.(\d+)": s.name + ".{}" for s in streams}})

    def alias(block: str) -> str:
        kind, i = block.rsplit(".", 1)
        return next(f"{a}.{i}" for a, n in by_alias.items() if n == kind)
    display = fields["display"]
    help_text = f"{display} blocks are " + " and ".join(
        f"{s.name}.<i> (diffusers {s.alias}.<i>, 0-{s.released_depth - 1} in the largest release)" for s in streams)
    return ModelFamily(patch_kind=DIT, parse_block=parse, alias_of=alias, blocks_help=help_text,
                       image_tokens_only=True, dit_streams=streams, **fields)


def indexed_block_parser(patterns: dict[str, str]) -> Callable[[str], str | None]:
    """patterns {regex with one int group: canonical format}; the first match wins."""
    compiled = [(re.compile(rx + r"$"), fmt) for rx, fmt in patterns.items()]

    def parse(name: str) -> str | None:
        for rx, fmt in compiled:
            m = rx.match(name)
            if m:
                return fmt.format(int(m.group(1)))
        return None
    return parse
