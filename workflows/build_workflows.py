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
    "SolidMask": ([], [("MASK", "MASK")]),
    "MaskComposite": ([("destination", "MASK"), ("source", "MASK")], [("MASK", "MASK")]),
    "MaskToImage": ([("mask", "MASK")], [("IMAGE", "IMAGE")]),
    "Note": ([], []),
    "LoadSAE": ([], [("sae", "SAE")]),
    "SpatialConceptSteer": ([("model", "MODEL"), ("sae", "SAE"), ("mask", "MASK")], [("MODEL", "MODEL")]),
    "GlobalStyleSteer": ([("model", "MODEL"), ("sae", "SAE")], [("MODEL", "MODEL")]),
    "ConceptMapPreview": ([("model", "MODEL"), ("sae", "SAE"), ("positive", "CONDITIONING"),
                           ("negative", "CONDITIONING"), ("latent_image", "LATENT")],
                          [("concept_map", "IMAGE"), ("concept_mask", "MASK"), ("top_concepts", "STRING")]),
}


class Graph:
    def __init__(self):
        self.nodes, self.links = [], []

    def add(self, type_, widgets, pos, title=None, size=(320, 130)):
        nid = len(self.nodes) + 1
        ins, outs = SOCKETS[type_]
        node = {"id": nid, "type": type_, "pos": list(pos), "size": list(size), "flags": {}, "order": nid - 1,
                "mode": 0, "inputs": [{"name": n, "type": t, "link": None} for n, t in ins],
                "outputs": [{"name": n, "type": t, "links": [], "slot_index": i} for i, (n, t) in enumerate(outs)],
                "properties": {"Node name for S&R": type_}, "widgets_values": widgets}
        if title:
            node["title"] = title
        if type_ == "Note":
            node["color"], node["bgcolor"] = "#432", "#653"
        self.nodes.append(node)
        return nid

    def link(self, src, slot, dst, input_name):
        lid = len(self.links) + 1
        s, d = self.nodes[src - 1], self.nodes[dst - 1]
        inp = next(i for i, x in enumerate(d["inputs"]) if x["name"] == input_name)
        typ = s["outputs"][slot]["type"]
        self.links.append([lid, src, slot, dst, inp, typ])
        s["outputs"][slot]["links"].append(lid)
        d["inputs"][inp]["link"] = lid

    def save(self, name):
        data = {"last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": self.nodes,
                "links": self.links, "groups": [], "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}},
                "version": 0.4}
        (HERE / f"{name}.json").write_text(json.dumps(data, indent=1) + "\n")


def base(g: Graph, prompt: str, seed: int, width=512, height=512):
    ckpt = g.add("CheckpointLoaderSimple", [CHECKPOINT], (20, 160), size=(320, 100))
    pos = g.add("CLIPTextEncode", [prompt], (380, 60), title="Positive prompt", size=(400, 160))
    neg = g.add("CLIPTextEncode", [NEG], (380, 260), title="Negative prompt", size=(400, 120))
    lat = g.add("EmptyLatentImage", [width, height, 1], (380, 420), size=(320, 110))
    g.link(ckpt, 1, pos, "clip")
    g.link(ckpt, 1, neg, "clip")
    return ckpt, pos, neg, lat


def sample_and_save(g: Graph, model_src, ckpt, pos, neg, lat, seed, prefix, y, title,
                    sampler=(30, 7.5, "ddim", "ddim_uniform")):
    ks = g.add("KSampler", [seed, "fixed", *sampler, 1.0], (1260, y), title=title, size=(320, 260))
    g.link(model_src[0], model_src[1], ks, "model")
    g.link(pos, 0, ks, "positive")
    g.link(neg, 0, ks, "negative")
    g.link(lat, 0, ks, "latent_image")
    dec = g.add("VAEDecode", [], (1620, y), size=(200, 50))
    g.link(ks, 0, dec, "samples")
    g.link(ckpt, 2, dec, "vae")
    save = g.add("SaveImage", [prefix], (1860, y), size=(320, 300))
    g.link(dec, 0, save, "images")
    return ks


def quadrant_mask(g: Graph, x, y, w=512, h=512):
    """Top-left quadrant of a 512 x 512 image, from core mask nodes (swap in a painted or loaded mask)."""
    empty = g.add("SolidMask", [0.0, w, h], (20, 640), title="Canvas (empty mask)", size=(260, 110))
    block = g.add("SolidMask", [1.0, w // 2, h // 2], (20, 780), title="Region size", size=(260, 110))
    comp = g.add("MaskComposite", [x, y, "add"], (320, 700), title="Region S (where the concept goes)", size=(300, 130))
    g.link(empty, 0, comp, "destination")
    g.link(block, 0, comp, "source")
    return comp


def composition():
    g = Graph()
    ckpt, pos, neg, lat = base(g, "a photo of a dog in a park, detailed, natural light", 42)
    sae = g.add("LoadSAE", [SAE_FILE, DICTIONARY, "from file"], (20, 420), size=(320, 130))
    mask = quadrant_mask(g, 0, 0)
    steer = g.add("SpatialConceptSteer", ["dog", 4000.0, "middle_block.1", 0.0, 0.4, "both", "paper"], (840, 160),
                  title="Put the dog in the region (early window)", size=(360, 230))
    g.link(ckpt, 0, steer, "model")
    g.link(sae, 0, steer, "sae")
    g.link(mask, 0, steer, "mask")
    sample_and_save(g, (steer, 0), ckpt, pos, neg, lat, 42, "sae_concepts/composition_steered", 60, "Steered")
    sample_and_save(g, (ckpt, 0), ckpt, pos, neg, lat, 42, "sae_concepts/composition_unsteered", 420, "Unsteered (same seed)")
    g.add("Note", ["Composition steering (Tinaz et al., NeurIPS 2025).\n\nSpatialConceptSteer adds the concept's SAE "
                   "directions inside the mask and removes them outside, at the mid block, only during the EARLY "
                   "window (start 0.0 - end 0.4 = the paper's t in [0.6, 1]): that is where the layout is decided. "
                   "The paper reports 80 % placement success there vs 23-35 % later.\n\nbeta 4000 is the paper's "
                   "early value (it is scaled by each position's SAE code norm). Concept: a word from the concept "
                   "dictionary (all concepts labelled with it) or ids like '12, 40'.\n\nReplace the two SolidMask "
                   "nodes with a painted or loaded mask (any size; it is resized). Both samplers share the seed, so "
                   "the two saved images differ only by the steering."], (840, 440), size=(360, 330))
    g.save("composition_spatial_steer")


def style():
    g = Graph()
    ckpt, pos, neg, lat = base(g, "a cottage by a lake, landscape", 7)
    sae = g.add("LoadSAE", [SAE_FILE, "none", "from file"], (20, 420), size=(320, 130))
    steer = g.add("GlobalStyleSteer", ["1234", 10.0, "middle_block.1", 0.4, 0.8, "both", "paper"], (840, 160),
                  title="Style in the middle window", size=(360, 210))
    g.link(ckpt, 0, steer, "model")
    g.link(sae, 0, steer, "sae")
    sample_and_save(g, (steer, 0), ckpt, pos, neg, lat, 7, "sae_concepts/style_steered", 60, "Steered")
    sample_and_save(g, (ckpt, 0), ckpt, pos, neg, lat, 7, "sae_concepts/style_unsteered", 420, "Unsteered (same seed)")
    g.add("Note", ["Style steering. GlobalStyleSteer adds beta * ||z_ij|| / sum ||z|| * f_c at every position of the "
                   "block during the MIDDLE window (start 0.4 - end 0.8 = the paper's t in [0.2, 0.6]), where the "
                   "paper finds style edits succeed 93 % of the time without moving objects. Earlier the same edit "
                   "changes the composition; later, only texture.\n\nPut the id of a style concept from your "
                   "report (or a word, with a dictionary in Load SAE). beta 10 is the paper's middle value."],
          (840, 420), size=(360, 260))
    g.save("style_global_steer")


def concept_map():
    g = Graph()
    ckpt, pos, neg, lat = base(g, "a cat sitting on a red sofa next to a window", 3)
    sae = g.add("LoadSAE", [SAE_FILE, DICTIONARY, "from file"], (20, 420), size=(320, 130))
    cmp_ = g.add("ConceptMapPreview", [3, "fixed", 30, 7.5, "ddim", "ddim_uniform", 0.0, "middle_block.1", True, 10, "cat"],
                 (840, 60), title="Concept map at the first step", size=(360, 400))
    for name, src in (("model", (ckpt, 0)), ("sae", (sae, 0)), ("positive", (pos, 0)), ("negative", (neg, 0)),
                      ("latent_image", (lat, 0))):
        g.link(src[0], src[1], cmp_, name)
    m2i = g.add("MaskToImage", [], (1260, 700), size=(200, 50))
    g.link(cmp_, 1, m2i, "mask")
    prev = g.add("PreviewImage", [], (1500, 700), title="Where 'cat' is at t = 1.0", size=(300, 300))
    g.link(m2i, 0, prev, "images")
    sample_and_save(g, (ckpt, 0), ckpt, pos, neg, lat, 3, "sae_concepts/concept_map_final", 60, "Final image (same seed)")
    g.add("Note", ["Concept map. ConceptMapPreview samples like the KSampler (same seed, steps, sampler) but stops at "
                   "at_percent (0 = the first step, pure noise: the paper's t = 1.0) and shows the strongest SAE "
                   "concept at each position of the mid block. The paper's finding: the layout is already there "
                   "before the image is visible (IoU ~0.26 at the first step). Compare the map with the final "
                   "image. The MASK output is where the chosen concept ('cat') is active; the text output lists "
                   "the top concepts with their dictionary labels."], (840, 500), size=(360, 250))
    g.save("concept_map_first_step")


def combined():
    g = Graph()
    ckpt, pos, neg, lat = base(g, "a horse on a beach at sunset", 11)
    sae = g.add("LoadSAE", [SAE_FILE, DICTIONARY, "from file"], (20, 420), size=(320, 130))
    mask = quadrant_mask(g, 256, 0)
    spatial = g.add("SpatialConceptSteer", ["horse", 4000.0, "middle_block.1", 0.0, 0.4, "both", "paper"], (700, 100),
                    title="Composition: horse top-right (early)", size=(360, 230))
    g.link(ckpt, 0, spatial, "model")
    g.link(sae, 0, spatial, "sae")
    g.link(mask, 0, spatial, "mask")
    style_ = g.add("GlobalStyleSteer", ["1234", 10.0, "middle_block.1", 0.4, 0.8, "both", "paper"], (700, 380),
                   title="Style (middle)", size=(360, 210))
    g.link(spatial, 0, style_, "model")
    g.link(sae, 0, style_, "sae")
    sample_and_save(g, (style_, 0), ckpt, pos, neg, lat, 11, "sae_concepts/combined_steered", 60, "Both steers")
    sample_and_save(g, (ckpt, 0), ckpt, pos, neg, lat, 11, "sae_concepts/combined_unsteered", 420, "Unsteered (same seed)")
    g.add("Note", ["Two steers in a row: the spatial steer decides WHERE (early window), the style steer HOW it looks "
                   "(middle window). Steer nodes chain: each wraps the model the previous one returned, so both "
                   "apply; the windows do not overlap, following the paper's finding that composition is fixed "
                   "early and style in the middle."], (700, 640), size=(360, 200))
    g.save("combined_spatial_and_style")


def sdxl_turbo():
    g = Graph()
    ckpt = g.add("CheckpointLoaderSimple", ["sd_xl_turbo_1.0_fp16.safetensors"], (20, 160), size=(320, 100))
    pos = g.add("CLIPTextEncode", ["a photo of a cat on a beach"], (380, 60), title="Prompt", size=(400, 160))
    neg = g.add("CLIPTextEncode", [""], (380, 260), title="Negative (unused at cfg 1)", size=(400, 100))
    lat = g.add("EmptyLatentImage", [512, 512, 1], (380, 400), size=(320, 110))
    g.link(ckpt, 1, pos, "clip")
    g.link(ckpt, 1, neg, "clip")
    sae = g.add("LoadSAE", ["sdlens/up_blocks.0.attentions.1_k10/state_dict.pth", "none",
                            "sdxl up_blocks.0.attentions.1"], (20, 420), size=(340, 130))
    mask = quadrant_mask(g, 0, 256)
    steer = g.add("SpatialConceptSteer", ["2301", 10.0, "auto", 0.0, 1.0, "cond", "sdlens"], (840, 160),
                  title="SDLens paint (bottom-left)", size=(360, 250))
    g.link(ckpt, 0, steer, "model")
    g.link(sae, 0, steer, "sae")
    g.link(mask, 0, steer, "mask")
    turbo = (1, 1.0, "euler_ancestral", "sgm_uniform")
    sample_and_save(g, (steer, 0), ckpt, pos, neg, lat, 5, "sae_concepts/sdxl_turbo_steered", 60, "Steered", turbo)
    sample_and_save(g, (ckpt, 0), ckpt, pos, neg, lat, 5, "sae_concepts/sdxl_turbo_unsteered", 420,
                    "Unsteered (same seed)", turbo)
    g.add("Note", ["SDXL-Turbo with an SDLens SAE (Surkov et al., 'One-Step is Enough'). Put the SDLens folder for "
                   "up_blocks.0.attentions.1 (config.json, state_dict.pth, mean.pt, std.pt) under models/sae/sdlens/ "
                   "and pick its block in Load SAE (SDLens files do not record it).\n\nTurbo samples in 1-4 steps at "
                   "cfg 1: then there is no negative (uncond) half of the batch, so rows = cond. mode sdlens paints "
                   "like SDLens: strength (beta, -40..40, default 10) times the feature's mean activation times its "
                   "decoder direction, inside the mask pooled to the block's grid. The window 0-1 covers the single "
                   "step. SDLens SAEs also transfer to SDXL base."], (840, 460), size=(360, 300))
    g.save("sdxl_turbo_sdlens_paint")


if __name__ == "__main__":
    sdxl_turbo()
    composition()
    style()
    concept_map()
    combined()
    print("wrote", sorted(p.name for p in HERE.glob("*.json")))
