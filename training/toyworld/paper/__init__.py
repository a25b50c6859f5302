"""`sae-concepts toyworld paper`: the paper's findings measured on the Toy World model.

Every stage runs the project's own code, so what is measured is what users run:
1. collect: free-position prompts (the noise decides where objects go) sampled through
   `training/collect` (ComfyUI's sampler, the block patch the nodes steer with), Delta at the
   paper's three blocks, t = 1.0 / 0.5 / 0.0, cond and uncond, into the standard shards;
   three splits: train (SAEs), heldout (dictionary), eval (composition IoU).
2. masks: the final image's objects as the detector sees them (`<id>/<colour_shape>.png`) plus
   the background as its detected style (`<id>/<style>.png`); evaluation uses objects only.
3. train -> dictionary -> evaluate -> report: the standard commands' functions, unchanged.
4. steering (SpatialConceptSteer / GlobalStyleSteer's code, `nodes/steering.steer_model`):
   (b) put an object that is not in the prompt into a quadrant, (c) change the background
   style, (d) suppress a prompted object or style; windows early / middle / late (ComfyUI
   percent 0-0.4 / 0.4-0.8 / 0.8-1), beta sweeps; success judged by the detector, distance to
   the unsteered image (RMSE, SSIM) beside it.
Every stage writes atomically and is skipped when its output exists (resume = run again).

Modules, in the order the stages run: config (settings, windows, the paper's numbers),
composition (stages 1-3), steering (stage 4), tables (markdown and the report), run (the command).
"""
from .config import PAPER, PAPER_T, SPLITS, WINDOWS, ToyPaperConfig, ToyPaperError
from .composition import object_components
from .run import cmd_paper, register_paper, run_paper
from .steering import quadrant_masks, quadrant_of, ssim
from .tables import markdown_to_html, tables_markdown

__all__ = ["PAPER", "PAPER_T", "SPLITS", "WINDOWS", "ToyPaperConfig", "ToyPaperError", "cmd_paper", "markdown_to_html",
           "object_components", "quadrant_masks", "quadrant_of", "register_paper", "run_paper", "ssim",
           "tables_markdown"]
