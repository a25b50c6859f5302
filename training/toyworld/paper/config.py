"""The Toy World paper run's settings, constants and the paper's own numbers."""
from __future__ import annotations

from dataclasses import dataclass, field

from ....sae_core.errors import SAEConceptsError
from ....host.toyworld.sampling import DEFAULT_SAMPLER, SHIPPED_WEIGHTS


PAPER_T = (1.0, 0.5, 0.0)
SPLITS = {"train": 0, "heldout": 1, "eval": 2}
# ComfyUI percent windows of the paper's early / middle / late steering (t = 1 - percent).
WINDOWS = {"early": (0.0, 0.4), "middle": (0.4, 0.8), "late": (0.8, 1.0)}
# The paper (Tinaz et al. 2025) on SD1.4, for the tables.
PAPER = {
    "composition_mid_t1": 0.26,
    "spatial": {"early": 0.80, "middle": 0.23, "late": 0.25},
    "style": {"early": 0.78, "middle": 0.93, "late": 0.69},
}


@dataclass
class ToyPaperConfig:
    out: str = field(default="toyworld_paper", metadata={"help": "output folder (resumes if it exists)"})
    weights: str = field(default=str(SHIPPED_WEIGHTS), metadata={"help": "toy world weights file"})
    train_images: int = field(default=96, metadata={"help": "images whose Delta trains the SAEs"})
    heldout_images: int = field(default=32, metadata={"help": "images for the concept dictionary"})
    eval_images: int = field(default=32, metadata={"help": "images for composition IoU"})
    steps: int = field(default=DEFAULT_SAMPLER["steps"], metadata={"help": "sampler steps (DDIM)"})
    cfg: float = field(default=DEFAULT_SAMPLER["cfg"], metadata={"help": "classifier-free guidance scale"})
    expansion_factor: int = field(default=4, metadata={"help": "SAE latents = expansion_factor * channels"})
    k: int = field(default=10, metadata={"help": "SAE active latents per vector"})
    epochs: int = field(default=30, metadata={"help": "SAE training passes over the train split"})
    dictionary_iou: float = field(default=0.5, metadata={"help": "dictionary: IoU above which a mask's label is given"})
    steer_images: int = field(default=8, metadata={"help": "images per steering condition"})
    spatial_betas: str = field(default="4,16,64,256,1024,4096", metadata={"help": "beta sweep of the spatial steer"})
    style_betas: str = field(default="sum:10,1000;mean:2,8;none:2,8",
                             metadata={"help": "beta sweep of the style steer per normalisation"})
    suppress_betas: str = field(default="-8,-64,-512", metadata={"help": "betas of the negative global steer (mean norm.)"})
    blocks: str = field(default="auto", metadata={"help": "steered block(s): auto = all three, or one path"})
    seed: int = field(default=0, metadata={"help": "seed of prompts and noise"})
    threads: int = field(default=1, metadata={"help": "torch CPU threads"})
    skip_steering: bool = field(default=False, metadata={"help": "stop after composition (no steering runs)"})


class ToyPaperError(SAEConceptsError, ValueError):
    pass
