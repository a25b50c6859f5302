"""SAEs with what they were trained on, and sets of them keyed by (block, t, cond/uncond)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from .blocks import CONDITIONS
from .errors import ConfigError
from .families import FAMILIES, canonical_block
from .sae import TopKSAE
from .selection import nearest


@dataclass
class SAEInfo:
    """Where an SAE's inputs come from. `t` is the paper's diffusion time (1.0 = first reverse
    step, 0.0 = last); None means the SAE was not trained for one timestep bucket."""

    model_family: str = "sd1"
    block: str = ""                # ComfyUI path, e.g. "input_blocks.8.1"
    block_diffusers: str = ""      # e.g. "down_blocks.2.attentions.1"
    t: float | None = None
    cond: str = "both"             # "cond", "uncond" or "both"
    quantity: str = "delta"        # what the SAE reads: "delta" (output - input) or "output" (the block's output)
    source_format: str = "sae_concepts"
    training: dict = field(default_factory=dict)  # vectors_seen, fvu, l0, dead_fraction, ...

    def __post_init__(self) -> None:
        if self.cond not in CONDITIONS:
            raise ConfigError(f"cond must be one of {CONDITIONS}, got {self.cond!r}")
        if self.quantity not in ("delta", "output"):
            raise ConfigError(f"quantity must be 'delta' or 'output', got {self.quantity!r}")
        if self.t is not None and not 0.0 <= float(self.t) <= 1.0:
            raise ConfigError(f"t must be in [0, 1] (1.0 = first reverse step), got {self.t}")
        family = FAMILIES.get(self.model_family)
        if family is not None and (self.block or self.block_diffusers):
            self.block = family.canonical_block(self.block or self.block_diffusers)
            self.block_diffusers = family.alias(self.block)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SAEInfo":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def label(self) -> str:
        t = "any t" if self.t is None else f"t={self.t:g}"
        return f"{self.block or '?'} ({self.block_diffusers or '?'}), {t}, {self.cond}"


@dataclass
class SAEEntry:
    sae: TopKSAE
    info: SAEInfo
    latent_mean: torch.Tensor | None = None   # [n_f] mean activation per latent (SDLens stats)
    latent_std: torch.Tensor | None = None


def select_entry(entries: list[SAEEntry], t: float | None, cond: str) -> SAEEntry:
    """Among SAEs of one block: the condition that fits (else any), then the nearest t bucket."""
    return nearest(entries, t, cond, t_of=lambda e: e.info.t, cond_of=lambda e: e.info.cond)


class SAESet:
    """Several SAEs loaded as one object; a node picks the one for its block and timestep."""

    def __init__(self, entries: list[SAEEntry], source: str = ""):
        if not entries:
            raise ValueError("an SAE set needs at least one SAE")
        self.entries = list(entries)
        self.source = source
        self.dictionary = None   # a ConceptDictionary attached by whoever loads one beside the set

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self):
        return iter(self.entries)

    @property
    def blocks(self) -> list[str]:
        return sorted({e.info.block or e.info.block_diffusers for e in self.entries})

    def select(self, block: str, t: float | None = None, cond: str = "cond") -> SAEEntry:
        """The SAE for `block` whose condition fits and whose timestep bucket is nearest to t."""
        block = canonical_block(block, self.entries[0].info.model_family)
        at_block = [e for e in self.entries if block in (e.info.block, e.info.block_diffusers)]
        if not at_block:
            raise KeyError(f"no SAE for block {block!r} in {self.source or 'this set'}; "
                           f"it has {self.blocks}")
        return select_entry(at_block, t, cond)

    def describe(self) -> str:
        return "\n".join(
            f"{e.info.label()}: d={e.sae.d_in}, n_f={e.sae.n_latents}, k={e.sae.k}" for e in self.entries
        )
