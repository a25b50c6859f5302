"""The Toy World model in ComfyUI: load it as MODEL + CLIP + VAE, and its empty latent.

The toy model (host/toyworld; trained by training/toyworld) is ComfyUI's own SD1.x UNetModel trained here on drawn scenes
(48x48 px, 1-2 coloured shapes on a plain / striped / checkered / dotted background). Its CLIP
works with the core CLIP Text Encode node (closed vocabulary: colours, shapes, styles, "and",
"on", "background"); its VAE is the lossless 2x2 pixel unshuffle, so the core VAE Decode /
VAE Encode take it. KSampler, SaveImage and every SAE Concepts node run on it, on any CPU in
seconds.
"""
from __future__ import annotations

import os

import folder_paths
import torch
from comfy_api.latest import io

from ..host.toyworld.comfy_parts import load_toy_parts
from ..host.toyworld.sampling import SHIPPED_WEIGHTS
from ..host.toyworld.world import IMAGE_SIZE, VOCAB
from .sae_type import CATEGORY, node_id

FOLDER = "toyworld"


# The shipped SAE set and concept dictionary of the toy model (listed by Load SAE beside models/sae).
SHIPPED_SAE_DIR = SHIPPED_WEIGHTS.parent / "sae"


def _add_paths(key: str, paths: list[str], exts: set[str]) -> None:
    if key in folder_paths.folder_names_and_paths:
        old, old_exts = folder_paths.folder_names_and_paths[key]
        folder_paths.folder_names_and_paths[key] = (old + [p for p in paths if p not in old], set(old_exts) | exts)
    else:
        folder_paths.folder_names_and_paths[key] = (list(paths), set(exts))


def register_folder() -> None:
    """models/toyworld (user weights) plus the weights shipped inside the pack; the shipped SAE
    set and dictionary join the SAE folders."""
    _add_paths(FOLDER, [os.path.join(folder_paths.models_dir, FOLDER), str(SHIPPED_WEIGHTS.parent)], {".safetensors"})
    _add_paths("sae", [str(SHIPPED_SAE_DIR)], {".safetensors"})
    _add_paths("sae_dictionaries", [str(SHIPPED_SAE_DIR)], {".json"})


register_folder()   # at import, so Load SAE lists the shipped toy SAE from the first request on


def toy_weight_files() -> list[str]:
    register_folder()
    return folder_paths.get_filename_list(FOLDER)


class LoadToyWorld(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        files = toy_weight_files()
        return io.Schema(
            node_id=node_id("LoadToyWorld"),
            display_name="Load Toy World Model",
            category=CATEGORY,
            description="The Toy World: a small text-to-image model with SD1.x's U-Net topology, trained by "
                        "this pack on drawn scenes (48x48 px). Runs on any CPU in seconds; every SAE Concepts "
                        "node works on it. Prompt words: " + ", ".join(VOCAB[1:]) + ".",
            inputs=[io.Combo.Input("weights", options=files, default=SHIPPED_WEIGHTS.name if SHIPPED_WEIGHTS.name in files
                                   else (files[0] if files else None),
                                   tooltip="Toy World weights: the shipped toyworld_v5.safetensors, or a file in "
                                           "models/toyworld from `sae-concepts toyworld train`.")],
            outputs=[io.Model.Output(display_name="MODEL", tooltip="The U-Net, for KSampler and the steer nodes."),
                     io.Clip.Output(display_name="CLIP", tooltip="Its tiny text encoder, for CLIP Text Encode."),
                     io.Vae.Output(display_name="VAE", tooltip="The 2x2 pixel unshuffle (lossless), for VAE Decode.")],
        )

    @classmethod
    def execute(cls, weights) -> io.NodeOutput:
        path = folder_paths.get_full_path_or_raise(FOLDER, weights)
        return io.NodeOutput(*load_toy_parts(path))

    @classmethod
    def validate_inputs(cls, weights):
        if folder_paths.get_full_path(FOLDER, weights) is None:
            return (f"Load Toy World Model: {weights!r} not found in {', '.join(folder_paths.get_folder_paths(FOLDER))}")
        return True


class ToyWorldEmptyLatent(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=node_id("ToyWorldEmptyLatent"),
            display_name="Empty Toy World Latent",
            category=CATEGORY,
            description="An empty 12-channel latent at half the image size (the Toy World's 2x2 unshuffle). "
                        "The core Empty Latent Image also works, at 4x the wanted size (192 for 48 px).",
            inputs=[io.Int.Input("width", default=IMAGE_SIZE, min=8, max=1024, step=8,
                                 tooltip="Image width in pixels (the model was trained at 48)."),
                    io.Int.Input("height", default=IMAGE_SIZE, min=8, max=1024, step=8,
                                 tooltip="Image height in pixels (the model was trained at 48)."),
                    io.Int.Input("batch_size", default=1, min=1, max=256, tooltip="Images sampled together.")],
            outputs=[io.Latent.Output(tooltip="Zeros [batch, 12, height/2, width/2].")],
        )

    @classmethod
    def execute(cls, width, height, batch_size) -> io.NodeOutput:
        return io.NodeOutput({"samples": torch.zeros(batch_size, 12, height // 2, width // 2)})


QUADRANTS = ("top left", "top right", "bottom left", "bottom right")


def quadrant_mask(quadrant: str, width: int, height: int) -> torch.Tensor:
    """[1, H, W] float mask, 1 inside the quadrant."""
    if quadrant not in QUADRANTS:
        raise ValueError(f"quadrant must be one of {QUADRANTS}, got {quadrant!r}")
    m = torch.zeros(1, height, width)
    rows = slice(0, height // 2) if quadrant.startswith("top") else slice(height // 2, height)
    cols = slice(0, width // 2) if quadrant.endswith("left") else slice(width // 2, width)
    m[:, rows, cols] = 1.0
    return m


class QuadrantMask(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=node_id("QuadrantMask"),
            display_name="Quadrant Mask",
            category=CATEGORY,
            description="A mask covering one quarter of the image: the region S for Spatial Concept Steer "
                        "(the Toy World's placement experiments use the four quadrants).",
            inputs=[io.Combo.Input("quadrant", options=list(QUADRANTS), default="top left",
                                   tooltip="Which quarter of the image is inside the mask."),
                    io.Int.Input("width", default=IMAGE_SIZE, min=8, max=8192, step=8,
                                 tooltip="Mask width in pixels (any size works: steering resizes it)."),
                    io.Int.Input("height", default=IMAGE_SIZE, min=8, max=8192, step=8,
                                 tooltip="Mask height in pixels.")],
            outputs=[io.Mask.Output(tooltip="1 inside the quadrant, 0 elsewhere.")],
        )

    @classmethod
    def execute(cls, quadrant, width, height) -> io.NodeOutput:
        return io.NodeOutput(quadrant_mask(quadrant, width, height))


NODES = [LoadToyWorld, ToyWorldEmptyLatent, QuadrantMask]
