"""Writes the example workflows in ComfyUI's UI format (what its web UI saves and users drag in).

Run `python workflows/build_workflows.py` after changing a node's inputs; the host test converts
every shipped workflow to API format through a live server's /object_info and runs it, so a
workflow that no longer matches the nodes fails there.
"""
from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).parent
CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
SAE_FILE = "sd15_paper_sae_set.safetensors"
DICTIONARY = "sd15_paper_concept_dictionary.json"
NEG = "blurry, low quality"

BY_ID = "(concept ids)"   # nodes/concept_choice.BY_ID: the concept combo's "use concept_ids" choice
NO_CONCEPT = "(none)"     # nodes/concept_choice.NO_CONCEPT
LOAD, SPATIAL, STYLE, CMAP = ("SAEConcepts_LoadSAE", "SAEConcepts_SpatialConceptSteer", "SAEConcepts_GlobalStyleSteer",
                              "SAEConcepts_ConceptMapPreview")
SAE_TYPE = "SAE_CONCEPTS_SAE"

# Socket inputs / outputs of each node type: (name, type).
SOCKETS = {
    "CheckpointLoaderSimple": ([], [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")]),
    "CLIPTextEncode": ([("clip", "CLIP")], [("CONDITIONING", "CONDITIONING")]),
    "EmptyLatentImage": ([], [("LATENT", "LATENT")]),
    "KSampler": ([("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                  ("latent_image", "LATENT")], [("LATENT", "LATENT")]),
    "VAEDecode": ([("samples", "LATENT"), ("vae", "VAE")], [("IMAGE", "IMAGE")]),
    "SaveImage": ([("images", "IMAGE")], []),
    "PreviewImage": ([("images", "IMAGE")], []),
    "PreviewAny": ([("source", "*")], []),
    "SolidMask": ([], [("MASK", "MASK")]),
    "MaskComposite": ([("destination", "MASK"), ("source", "MASK")], [("MASK", "MASK")]),
    "MaskToImage": ([("mask", "MASK")], [("IMAGE", "IMAGE")]),
    "Note": ([], []),
    "UNETLoader": ([], [("MODEL", "MODEL")]),
    "DualCLIPLoader": ([], [("CLIP", "CLIP")]),
    "VAELoader": ([], [("VAE", "VAE")]),
    "FluxGuidance": ([("conditioning", "CONDITIONING")], [("CONDITIONING", "CONDITIONING")]),
    "EmptySD3LatentImage": ([], [("LATENT", "LATENT")]),
    LOAD: ([], [("sae", SAE_TYPE)]),
    SPATIAL: ([("model", "MODEL"), ("sae", SAE_TYPE), ("mask", "MASK")], [("MODEL", "MODEL")]),
    STYLE: ([("model", "MODEL"), ("sae", SAE_TYPE)], [("MODEL", "MODEL")]),
    CMAP: ([("model", "MODEL"), ("sae", SAE_TYPE), ("positive", "CONDITIONING"),
            ("negative", "CONDITIONING"), ("latent_image", "LATENT")],
           [("concept_map", "IMAGE"), ("concept_mask", "MASK"), ("top_concepts", "STRING")]),
}

# Width x height of each node as ComfyUI's frontend (1.35.9) draws it with these widgets (its
# computeSize, measured in Chromium), rounded up; nodes that show images get room for them, so
# the preview never grows a node over its neighbours. Heights exclude the 30 px title bar.
SIZES = {"CheckpointLoaderSimple": (320, 100), "CLIPTextEncode": (400, 160), "EmptyLatentImage": (320, 110),
         "KSampler": (320, 270), "VAEDecode": (210, 50), "SaveImage": (320, 330), "PreviewImage": (320, 330),
         "PreviewAny": (320, 200), "SolidMask": (260, 110), "MaskComposite": (300, 130), "MaskToImage": (240, 30),
         "Note": (400, 200), "UNETLoader": (320, 80), "DualCLIPLoader": (320, 130), "VAELoader": (320, 60),
         "FluxGuidance": (320, 60), "EmptySD3LatentImage": (320, 110), LOAD: (360, 110), SPATIAL: (380, 270), STYLE: (380, 250), CMAP: (380, 700)}
TITLE_H = 30
GAP = 40


class Graph:
    """Nodes are placed in columns (left to right, following the data flow) and stacked in each
    column with a gap, at their real sizes, so no two overlap (tests/test_workflow_layout.py)."""

    def __init__(self):
        self.nodes, self.links, self.columns = [], [], {}

    def add(self, type_, widgets, col, title=None, size=None):
        nid = len(self.nodes) + 1
        ins, outs = SOCKETS[type_]
        size = list(size or SIZES[type_])
        node = {"id": nid, "type": type_, "pos": [0, 0], "size": size, "flags": {}, "order": nid - 1,
                "mode": 0, "inputs": [{"name": n, "type": t, "link": None} for n, t in ins],
                "outputs": [{"name": n, "type": t, "links": [], "slot_index": i} for i, (n, t) in enumerate(outs)],
                "properties": {"Node name for S&R": type_}, "widgets_values": widgets}
        if title:
            node["title"] = title
        if type_ == "Note":
            node["color"], node["bgcolor"] = "#432", "#653"
        self.nodes.append(node)
        self.columns.setdefault(col, []).append(node)
        return nid

    def link(self, src, slot, dst, input_name):
        lid = len(self.links) + 1
        s, d = self.nodes[src - 1], self.nodes[dst - 1]
        inp = next(i for i, x in enumerate(d["inputs"]) if x["name"] == input_name)
        typ = s["outputs"][slot]["type"]
        self.links.append([lid, src, slot, dst, inp, typ])
        s["outputs"][slot]["links"].append(lid)
        d["inputs"][inp]["link"] = lid

    def layout(self):
        x = 20
        for col in sorted(self.columns):
            y = 20 + TITLE_H
            for node in self.columns[col]:
                node["pos"] = [x, y]
                y += node["size"][1] + TITLE_H + GAP
            x += max(n["size"][0] for n in self.columns[col]) + GAP

    def save(self, name):
        self.layout()
        data = {"last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": self.nodes,
                "links": self.links, "groups": [], "config": {}, "extra": {"ds": {"scale": 0.7, "offset": [0, 0]}},
                "version": 0.4}
        (HERE / f"{name}.json").write_text(json.dumps(data, indent=1) + "\n")


def base(g: Graph, prompt: str):
    ckpt = g.add("CheckpointLoaderSimple", [CHECKPOINT], 0)
    pos = g.add("CLIPTextEncode", [prompt], 1, title="Positive prompt")
    neg = g.add("CLIPTextEncode", [NEG], 1, title="Negative prompt")
    lat = g.add("EmptyLatentImage", [512, 512, 1], 1)
    g.link(ckpt, 1, pos, "clip")
    g.link(ckpt, 1, neg, "clip")
    return ckpt, pos, neg, lat


def sample_and_save(g: Graph, model_src, ckpt, pos, neg, lat, seed, prefix, title,
                    sampler=(30, 7.5, "ddim", "ddim_uniform"), col=3, vae_src=None):
    ks = g.add("KSampler", [seed, "fixed", *sampler, 1.0], col, title=title)
    g.link(model_src[0], model_src[1], ks, "model")
    g.link(pos, 0, ks, "positive")
    g.link(neg, 0, ks, "negative")
    g.link(lat, 0, ks, "latent_image")
    dec = g.add("VAEDecode", [], col + 1)
    g.link(ks, 0, dec, "samples")
    g.link(*(vae_src or (ckpt, 2)), dec, "vae")
    save = g.add("SaveImage", [prefix], col + 2, title=title)
    g.link(dec, 0, save, "images")
    return ks


def quadrant_mask(g: Graph, x, y, w=512, h=512, col=0):
    """A quadrant of a 512 x 512 image, from core mask nodes (swap in a painted or loaded mask)."""
    empty = g.add("SolidMask", [0.0, w, h], col, title="Canvas (empty mask)")
    block = g.add("SolidMask", [1.0, w // 2, h // 2], col, title="Region size")
    comp = g.add("MaskComposite", [x, y, "add"], col + 1, title="Region S (where the concept goes)")
    g.link(empty, 0, comp, "destination")
    g.link(block, 0, comp, "source")
    return comp


def note(g: Graph, text: str, col: int, height: int):
    return g.add("Note", [text], col, size=(SIZES["Note"][0], height))


def composition():
    g = Graph()
    ckpt, pos, neg, lat = base(g, "a photo of a dog in a park, detailed, natural light")
    sae = g.add(LOAD, [SAE_FILE, DICTIONARY, "from file"], 0)
    mask = quadrant_mask(g, 0, 0)
    steer = g.add(SPATIAL, ["dog", "0", 4000.0, "middle_block.1", 0.0, 0.4, "both", "paper"], 2,
                  title="Put the dog in the region (early window)")
    g.link(ckpt, 0, steer, "model")
    g.link(sae, 0, steer, "sae")
    g.link(mask, 0, steer, "mask")
    note(g, "Composition steering (Tinaz et al., NeurIPS 2025).\n\nSpatialConceptSteer adds the concept's SAE "
            "directions inside the mask and removes them outside, at the mid block, only during the EARLY "
            "window (start 0.0 - end 0.4 = the paper's t in [0.6, 1]): that is where the layout is decided. "
            "The paper reports 80 % placement success there vs 23-35 % later.\n\nbeta 4000 is the paper's "
            "early value (it is scaled by each position's SAE code norm). Concept: a label from the concept "
            "dictionary (all concepts labelled with it), or '(concept ids)' and ids like '12, 40'.\n\n"
            "Replace the two SolidMask nodes with a painted or loaded mask (any size; it is resized). Both "
            "samplers share the seed, so the two saved images differ only by the steering.", 2, 330)
    sample_and_save(g, (steer, 0), ckpt, pos, neg, lat, 42, "sae_concepts/composition_steered", "Steered")
    sample_and_save(g, (ckpt, 0), ckpt, pos, neg, lat, 42, "sae_concepts/composition_unsteered",
                    "Unsteered (same seed)")
    g.save("composition_spatial_steer")


def style():
    g = Graph()
    ckpt, pos, neg, lat = base(g, "a cottage by a lake, landscape")
    sae = g.add(LOAD, [SAE_FILE, "none", "from file"], 0)
    steer = g.add(STYLE, [BY_ID, "1234", 10.0, "middle_block.1", 0.4, 0.8, "both", "paper"], 2,
                  title="Style in the middle window")
    g.link(ckpt, 0, steer, "model")
    g.link(sae, 0, steer, "sae")
    note(g, "Style steering. GlobalStyleSteer adds beta * ||z_ij|| / sum ||z|| * f_c at every position of the "
            "block during the MIDDLE window (start 0.4 - end 0.8 = the paper's t in [0.2, 0.6]), where the "
            "paper finds style edits succeed 93 % of the time without moving objects. Earlier the same edit "
            "changes the composition; later, only texture.\n\nPut the id of a style concept from your "
            "report in concept_ids (or pick a label, with a dictionary in Load SAE). beta 10 is the paper's "
            "middle value.", 2, 260)
    sample_and_save(g, (steer, 0), ckpt, pos, neg, lat, 7, "sae_concepts/style_steered", "Steered")
    sample_and_save(g, (ckpt, 0), ckpt, pos, neg, lat, 7, "sae_concepts/style_unsteered", "Unsteered (same seed)")
    g.save("style_global_steer")


def concept_map():
    g = Graph()
    ckpt, pos, neg, lat = base(g, "a cat sitting on a red sofa next to a window")
    sae = g.add(LOAD, [SAE_FILE, DICTIONARY, "from file"], 0)
    cmp_ = g.add(CMAP, [3, "fixed", 30, 7.5, "ddim", "ddim_uniform", 0.0, "middle_block.1", "cat", "0", True, 10, True],
                 2, title="Concept map at the first step")
    for name, src in (("model", (ckpt, 0)), ("sae", (sae, 0)), ("positive", (pos, 0)), ("negative", (neg, 0)),
                      ("latent_image", (lat, 0))):
        g.link(src[0], src[1], cmp_, name)
    m2i = g.add("MaskToImage", [], 3)
    g.link(cmp_, 1, m2i, "mask")
    text = g.add("PreviewAny", [], 3, title="Top concepts (text)")
    g.link(cmp_, 2, text, "source")
    prev = g.add("PreviewImage", [], 4, title="Where 'cat' is at t = 1.0")
    g.link(m2i, 0, prev, "images")
    note(g, "Concept map. ConceptMapPreview samples like the KSampler (same seed, steps, sampler) but stops at "
            "at_percent (0 = the first step, pure noise: the paper's t = 1.0) and shows the strongest SAE "
            "concept at each position of the mid block. The paper's finding: the layout is already there "
            "before the image is visible (IoU ~0.26 at the first step). Compare the map with the final "
            "image. The MASK output is where the chosen concept ('cat') is active; the text output lists "
            "the top concepts with their dictionary labels. With live_preview on, the node's step preview "
            "is each step's concept map (raise at_percent to watch it evolve).", 0, 300)
    sample_and_save(g, (ckpt, 0), ckpt, pos, neg, lat, 3, "sae_concepts/concept_map_final",
                    "Final image (same seed)", col=5)
    g.save("concept_map_first_step")


def combined():
    g = Graph()
    ckpt, pos, neg, lat = base(g, "a horse on a beach at sunset")
    sae = g.add(LOAD, [SAE_FILE, DICTIONARY, "from file"], 0)
    mask = quadrant_mask(g, 256, 0)
    spatial = g.add(SPATIAL, ["horse", "0", 4000.0, "middle_block.1", 0.0, 0.4, "both", "paper"], 2,
                    title="Composition: horse top-right (early)")
    g.link(ckpt, 0, spatial, "model")
    g.link(sae, 0, spatial, "sae")
    g.link(mask, 0, spatial, "mask")
    style_ = g.add(STYLE, [BY_ID, "1234", 10.0, "middle_block.1", 0.4, 0.8, "both", "paper"], 2,
                   title="Style (middle)")
    g.link(spatial, 0, style_, "model")
    g.link(sae, 0, style_, "sae")
    note(g, "Two steers in a row: the spatial steer decides WHERE (early window), the style steer HOW it looks "
            "(middle window). Steer nodes chain: each wraps the model the previous one returned, so both "
            "apply; the windows do not overlap, following the paper's finding that composition is fixed "
            "early and style in the middle.", 2, 200)
    sample_and_save(g, (style_, 0), ckpt, pos, neg, lat, 11, "sae_concepts/combined_steered", "Both steers")
    sample_and_save(g, (ckpt, 0), ckpt, pos, neg, lat, 11, "sae_concepts/combined_unsteered", "Unsteered (same seed)")
    g.save("combined_spatial_and_style")


def sdxl_turbo():
    g = Graph()
    ckpt = g.add("CheckpointLoaderSimple", ["sd_xl_turbo_1.0_fp16.safetensors"], 0)
    pos = g.add("CLIPTextEncode", ["a photo of a cat on a beach"], 1, title="Prompt")
    neg = g.add("CLIPTextEncode", [""], 1, title="Negative (unused at cfg 1)")
    lat = g.add("EmptyLatentImage", [512, 512, 1], 1)
    g.link(ckpt, 1, pos, "clip")
    g.link(ckpt, 1, neg, "clip")
    sae = g.add(LOAD, ["sdlens/up_blocks.0.attentions.1_k10/state_dict.pth", "none", "from file"], 0)
    mask = quadrant_mask(g, 0, 256)
    steer = g.add(SPATIAL, [BY_ID, "2301", 10.0, "auto", 0.0, 1.0, "cond", "sdlens"], 2,
                  title="SDLens paint (bottom-left)")
    g.link(ckpt, 0, steer, "model")
    g.link(sae, 0, steer, "sae")
    g.link(mask, 0, steer, "mask")
    note(g, "SDXL-Turbo with an SDLens SAE (Surkov et al., 'One-Step is Enough'). Put the SDLens folder for "
            "up_blocks.0.attentions.1 (config.json, state_dict.pth, mean.pt, std.pt) under models/sae/sdlens/; "
            "Load SAE reads the block from the folder name (as SDLens names them, e.g. "
            "'unet.up_blocks.0.attentions.1_k10_hidden5120_.../final'), or pick it in block_for_foreign.\n\n"
            "Turbo samples in 1-4 steps at cfg 1: then there is no negative (uncond) half of the batch, so "
            "rows = cond. mode sdlens paints like SDLens: strength (beta, -40..40, default 10) times the "
            "feature's mean activation times its decoder direction, inside the mask pooled to the block's "
            "grid. The window 0-1 covers the single step. SDLens SAEs also transfer to SDXL base.", 2, 330)
    turbo = (1, 1.0, "euler_ancestral", "sgm_uniform")
    sample_and_save(g, (steer, 0), ckpt, pos, neg, lat, 5, "sae_concepts/sdxl_turbo_steered", "Steered", turbo)
    sample_and_save(g, (ckpt, 0), ckpt, pos, neg, lat, 5, "sae_concepts/sdxl_turbo_unsteered",
                    "Unsteered (same seed)", turbo)
    g.save("sdxl_turbo_sdlens_paint")


def flux():
    """Flux.1-dev with its own loaders (UNETLoader + DualCLIPLoader + VAELoader, as ComfyUI's Flux
    examples), guidance 3.5 through FluxGuidance and cfg 1, so only the positive (cond) half exists."""
    g = Graph()
    unet = g.add("UNETLoader", ["flux1-dev.safetensors", "default"], 0)
    clip = g.add("DualCLIPLoader", ["clip_l.safetensors", "t5xxl_fp16.safetensors", "flux"], 0)
    vae = g.add("VAELoader", ["ae.safetensors"], 0)
    pos = g.add("CLIPTextEncode", ["a photo of a dog in a garden"], 1, title="Prompt")
    neg = g.add("CLIPTextEncode", [""], 1, title="Negative (unused at cfg 1)")
    guide = g.add("FluxGuidance", [3.5], 2)
    lat = g.add("EmptySD3LatentImage", [1024, 1024, 1], 1)
    g.link(clip, 0, pos, "clip")
    g.link(clip, 0, neg, "clip")
    g.link(pos, 0, guide, "conditioning")
    sae = g.add(LOAD, ["flux_double18_sae_set.safetensors", "none", "from file"], 0)
    mask = quadrant_mask(g, 512, 0, 1024, 1024)
    steer = g.add(SPATIAL, [BY_ID, "120", 0.8, "auto", 0.0, 1.0, "cond", "activation_addition"], 2,
                  title="Activation addition (top-right)")
    g.link(unet, 0, steer, "model")
    g.link(sae, 0, steer, "sae")
    g.link(mask, 0, steer, "mask")
    note(g, "Flux.1-dev steered through an SAE (Shabalin et al., 'Interpreting Large Text-to-Image Diffusion "
            "Models with Dictionary Learning'). Put flux1-dev.safetensors in models/diffusion_models, clip_l and "
            "t5xxl in models/text_encoders, ae.safetensors in models/vae, and an SAE set for a Flux block in "
            "models/sae (`sae-concepts collect --diffusion-model ... --text-encoders ... --blocks "
            "double_blocks.18`, then `train`; an ITDA set from `sae-concepts itda` works the same way).\n\n"
            "cfg 1 with FluxGuidance 3.5: there is no negative (uncond) half, so rows = cond. Mode "
            "activation_addition adds beta (0.8) x the mean token norm x the concept's unit direction "
            "(mean-centred) inside the mask, pooled to Flux's 2x2-patch token grid (16 px per token); 'auto' "
            "steers the block the SAE set was trained at.", 2, 330)
    flux_sampler = (20, 1.0, "euler", "simple")
    sample_and_save(g, (steer, 0), None, guide, neg, lat, 7, "sae_concepts/flux_steered", "Steered", flux_sampler,
                    vae_src=(vae, 0))
    sample_and_save(g, (unet, 0), None, guide, neg, lat, 7, "sae_concepts/flux_unsteered", "Unsteered (same seed)",
                    flux_sampler, vae_src=(vae, 0))
    g.save("flux_activation_addition")


def toy_world_workflows() -> tuple:
    """The Toy World workflows (toy_workflows.py), built with this module's layout helpers."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("toy_workflows", Path(__file__).with_name("toy_workflows.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.builders(globals())


WORKFLOWS = (sdxl_turbo, composition, style, concept_map, combined, flux, *toy_world_workflows())

if __name__ == "__main__":
    for build in WORKFLOWS:
        build()
    print("wrote", sorted(p.name for p in HERE.glob("*.json")))
