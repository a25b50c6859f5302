"""`sae-concepts demo --world toy`: the paper's loop on the shipped Toy World model, small.

Sampling (ComfyUI's own sampler on ComfyUI's own SD1.x UNetModel) -> collection through the
block patch the nodes steer with -> SAE training -> concept dictionary from the detector's
masks -> composition IoU by block and t -> a small steering table -> the HTML report with
images. The same code as `sae-concepts toyworld paper` (training/toyworld/paper/), at a
size that fits a few minutes of a CPU. The toy model is ComfyUI's class, so ComfyUI's code is
needed: where it cannot be imported (or the weights are missing) `toy_world_unavailable` says
why in one line and the caller runs the synthetic world instead.
"""
from __future__ import annotations

from pathlib import Path

from ..toyworld.paper import ToyPaperConfig, run_paper
from ...host.toyworld.sampling import SHIPPED_WEIGHTS

# Small enough for a few CPU minutes; big enough that every (block, t, cond) key gets concepts.
DEMO_SIZES = dict(train_images=48, heldout_images=16, eval_images=16, steps=15, epochs=20, steer_images=4,
                  spatial_betas="4096", style_betas="mean:8", suppress_betas="-64")


def toy_world_unavailable(weights: Path = SHIPPED_WEIGHTS) -> str | None:
    """None when the toy world can run here, else one line saying why not."""
    from ...host.comfy_env import GET_COMFYUI, find_comfyui, import_comfy
    if find_comfyui() is None:
        return f"ComfyUI not found (set COMFYUI_PATH, or get ComfyUI v0.8.0: {GET_COMFYUI})"
    if not Path(weights).is_file():
        return f"the Toy World weights {weights} are missing"
    try:
        import_comfy(cpu=True)
        import comfy.model_base  # noqa: F401  (ComfyUI's model code; torchvision, if missing, gets the stand-in)
    except Exception as e:  # noqa: BLE001 - any import failure means: no toy world here
        return f"ComfyUI cannot be imported here ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    return None


def toy_demo_intro(out: Path, weights: Path = SHIPPED_WEIGHTS) -> str:
    """The demo's first line: what it is about to do, and where the result goes."""
    d = DEMO_SIZES
    images = d["train_images"] + d["heldout_images"] + d["eval_images"]
    return (f"Toy World demo on {Path(weights).name}: sample {images} images ({d['steps']} steps), record Delta at the "
            f"paper's three blocks, train their SAEs, label them with the detector's masks, measure composition IoU, "
            f"steer and measure block sensitivity (a few minutes on a CPU); report: {Path(out) / 'report' / 'index.html'}")


def run_toy_demo(out: Path, weights: Path = SHIPPED_WEIGHTS, progress: bool = True, **sizes) -> dict:
    cfg = ToyPaperConfig(out=str(out), weights=str(weights), **{**DEMO_SIZES, **sizes})
    return run_paper(cfg, progress=progress)
