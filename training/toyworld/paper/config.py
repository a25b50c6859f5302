"""The Toy World paper run's settings, constants and the paper's own numbers."""
from __future__ import annotations

from dataclasses import dataclass, field

from ....sae_core.blocks import PAPER_BLOCKS
from ....sae_core.errors import SAEConceptsError
from ....host.toyworld.sampling import PAPER_SAMPLER, SHIPPED_WEIGHTS, weights_digest


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
    steps: int = field(default=PAPER_SAMPLER["steps"], metadata={"help": "sampler steps (DDIM)"})
    cfg: float = field(default=PAPER_SAMPLER["cfg"], metadata={"help": "classifier-free guidance scale"})
    expansion_factor: int = field(default=4, metadata={"help": "SAE latents = expansion_factor * channels"})
    k: int = field(default=10, metadata={"help": "SAE active latents per vector"})
    epochs: int = field(default=30, metadata={"help": "SAE training passes over the train split"})
    dictionary_iou: float = field(default=0.5, metadata={"help": "dictionary: IoU above which a mask's label is given"})
    steer_images: int = field(default=8, metadata={"help": "images per steering condition"})
    spatial_betas: str = field(default="4,16,64,256,1024,4096", metadata={"help": "beta sweep of the spatial steer"})
    style_betas: str = field(default="sum:10,1000;mean:2,8;none:2,8",
                             metadata={"help": "beta sweep of the style steer per normalisation"})
    suppress_betas: str = field(default="-8,-64,-512", metadata={"help": "betas of the negative global steer (mean norm.)"})
    collect_blocks: str = field(default="", metadata={"help": "blocks whose Delta is collected, SAE-trained, labelled "
                                                              "and steered (comma-separated ComfyUI paths; empty = the "
                                                              f"paper's three: {', '.join(PAPER_BLOCKS)})"})
    blocks: str = field(default="auto", metadata={"help": "steered block(s): auto = every collected block, or one path"})
    seed: int = field(default=0, metadata={"help": "seed of prompts and noise"})
    threads: int = field(default=1, metadata={"help": "torch CPU threads"})
    skip_steering: bool = field(default=False, metadata={"help": "stop after composition (no steering runs)"})


# What the collected Delta, the SAEs and the dictionary depend on: a run resumed with any of these
# changed would mix stages made under different settings, so it is refused (steering settings may change).
FIXED_ON_RESUME = ("weights", "train_images", "heldout_images", "eval_images", "steps", "cfg", "seed",
                   "collect_blocks", "expansion_factor", "k", "epochs", "dictionary_iou")


class ToyPaperError(SAEConceptsError, ValueError):
    pass


def collected_blocks(text: str) -> frozenset[str]:
    """The blocks a --collect-blocks value collects, as ComfyUI paths ("" = the paper's three;
    diffusers names, order and spaces do not matter)."""
    from ....sae_core.families import get_family
    names = [b.strip() for b in text.split(",") if b.strip()] or list(PAPER_BLOCKS)
    family = get_family("toyworld")
    try:
        return frozenset(family.canonical_block(b) for b in names)
    except ValueError as e:
        raise ToyPaperError(f"--collect-blocks {text!r}: {e}") from None


def parse_betas(text: str, option: str) -> list[float]:
    """A comma-separated beta list ("4,16,64"), or a ToyPaperError naming the option."""
    import math
    try:
        betas = [float(b) for b in text.split(",") if b.strip()]
    except ValueError:
        betas = []
    if not betas or not all(math.isfinite(b) for b in betas):
        raise ToyPaperError(f"{option} {text!r}: expected comma-separated finite numbers, e.g. 4,16,64")
    return betas


def parse_style_betas(text: str) -> dict[str, list[float]]:
    """"sum:10,1000;mean:2,8" -> {normalisation: betas}, or a ToyPaperError."""
    from ....sae_core.interventions import NORMALISATIONS
    out = {}
    for part in text.split(";"):
        if part.strip():
            norm, _, betas = part.partition(":")
            if norm.strip() not in NORMALISATIONS or not betas:
                raise ToyPaperError(f"--style-betas {text!r}: expected normalisation:betas parts separated by ';', "
                                    f"normalisation one of {', '.join(NORMALISATIONS)} (e.g. sum:10,1000;mean:2,8)")
            out[norm.strip()] = parse_betas(betas, "--style-betas")
    if not out:
        raise ToyPaperError(f"--style-betas {text!r}: no normalisation:betas part (e.g. sum:10,1000;mean:2,8)")
    return out


STAGE_OUTPUTS = ("sae_set.safetensors", "concept_dictionary.json", "metrics.json", "acts")


def check_paper_config(cfg: ToyPaperConfig) -> None:
    """Every setting usable, before any work: a bad beta list or block would otherwise fail (or
    measure the wrong thing) after the collection and SAE training."""
    from pathlib import Path
    for option, value in (("--train-images", cfg.train_images), ("--heldout-images", cfg.heldout_images),
                          ("--eval-images", cfg.eval_images), ("--steer-images", cfg.steer_images),
                          ("--steps", cfg.steps), ("--threads", cfg.threads)):
        if value < 1:
            raise ToyPaperError(f"{option} must be 1 or more, got {value}")
    parse_betas(cfg.spatial_betas, "--spatial-betas")
    parse_betas(cfg.suppress_betas, "--suppress-betas")
    parse_style_betas(cfg.style_betas)
    collected = collected_blocks(cfg.collect_blocks)
    if cfg.blocks != "auto":
        from ....sae_core.families import get_family
        try:
            block = get_family("toyworld").canonical_block(cfg.blocks)
        except ValueError as e:
            raise ToyPaperError(f"--blocks {cfg.blocks!r}: {e}") from None
        if block not in collected:
            raise ToyPaperError(f"--blocks {cfg.blocks!r}: not a collected block (collected: {', '.join(sorted(collected))}; "
                                f"give one of them, or auto)")
    out = Path(cfg.out)
    if out.is_dir() and not (out / "paper_config.json").exists() and any((out / n).exists() for n in STAGE_OUTPUTS):
        raise ToyPaperError(f"--out {out} holds another run's outputs (e.g. {next(n for n in STAGE_OUTPUTS if (out / n).exists())}) "
                            f"but no paper_config.json: it is not a toyworld paper run; use a new --out folder")


def check_resume(cfg: ToyPaperConfig, config_path) -> None:
    """Refuse to resume a run folder made with different FIXED_ON_RESUME settings (a setting the
    folder's paper_config.json predates counts as its default). The weights are compared by
    content (weights_sha256) where the folder recorded it, else by resolved path."""
    import json
    from pathlib import Path
    from ...dataclass_cli import saved_setting
    config_path = Path(config_path)
    if not config_path.exists():
        return
    old = json.loads(config_path.read_text())
    for key in FIXED_ON_RESUME:
        was, now = saved_setting(old, ToyPaperConfig, key), getattr(cfg, key)
        if key == "weights" and "weights_sha256" in old:
            same = old["weights_sha256"] == weights_digest(now)
        elif key == "weights":
            same = Path(was).resolve() == Path(now).resolve()
        elif key == "collect_blocks":
            same = collected_blocks(was) == collected_blocks(now)
        else:
            same = was == now
        if not same:
            raise ToyPaperError(f"{config_path}: this run folder was made with {key}={was!r}, asked now {key}={now!r}"
                                f"{' (another file)' if key == 'weights' else ''}; its collected Delta, SAEs and "
                                f"dictionary depend on it. Use a new --out folder (or the old setting to resume)")
