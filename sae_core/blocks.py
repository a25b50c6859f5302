"""SD1.x block names and the paper's defaults, as the rest of the code imports them.

They are defined once, in the family registry (families/sd1.py); this module only names them.
"""
from __future__ import annotations

from .families import get_family
from .families.sd1 import PAPER_BLOCKS, SD1_BLOCKS

PAPER_TIMESTEPS = (1.0, 0.5, 0.0)
CONDITIONS = ("cond", "uncond", "both")


def canonical_block(name: str) -> str:
    """An SD1.x ComfyUI path from a ComfyUI path or diffusers name; unknown names raise (ValueError)."""
    return get_family("sd1").canonical_block(name)


__all__ = ["PAPER_BLOCKS", "PAPER_TIMESTEPS", "SD1_BLOCKS", "CONDITIONS", "canonical_block"]
